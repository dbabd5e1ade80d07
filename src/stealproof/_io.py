"""Output locations checked before any work, and artifacts written through a rename.

Every artifact (checkpoint, bundle, result, report) is written to a temporary file in the same
directory and renamed into place, so a crash or a full disk never leaves half a file under the
real name; and commands check their output locations up front, so an unwritable path fails in
milliseconds instead of after minutes of training.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from stealproof.errors import OutputPathError


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists():
        if q.parent == q:
            break
        q = q.parent
    return q


def _check_dir_writable(d: Path, what: str, shown: Path) -> None:
    anchor = _nearest_existing(d)
    if not anchor.is_dir():
        raise OutputPathError(f"{what}: {shown}: {anchor} is a file, not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what}: {shown}: directory {anchor} is not writable")
    if anchor == d:
        # os.access trusts mode bits; root and read-only mounts need a real try
        try:
            fd, probe = tempfile.mkstemp(prefix=".stealproof-probe-", dir=d)
        except OSError as e:
            raise OutputPathError(f"{what}: {shown}: cannot write in {d} ({e.strerror})") from None
        os.close(fd)
        os.unlink(probe)


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """Raise :class:`OutputPathError` unless a file can be written at ``path``."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise OutputPathError(f"{what}: {p} is a directory; expected a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{what}: {p} exists and is not writable")
    _check_dir_writable(p.parent if str(p.parent) else Path("."), what, p)
    return p


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """Raise :class:`OutputPathError` unless ``path`` is (or can become) a writable directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{what}: {p} is a file; expected a directory")
    _check_dir_writable(p, what, p)
    return p


def tmp_name(path: Path) -> Path:
    """A unique hidden temporary name next to ``path`` (same directory, so rename is atomic).

    The suffix is kept (``.x.1234.ab12cd34.tmp.png``) so writers that infer a format from it work.
    """
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.stem}.{tag}.tmp{path.suffix}")


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it into place, else remove it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(p)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` and rename ``tmp`` to ``path``; nothing is left at ``path`` on error."""
    p = Path(path)
    with atomic_target(p) as tmp:
        write(tmp)
    return p


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
