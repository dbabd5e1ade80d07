"""Find the Python examples in the README and the docs, and the options written before them.

Every fenced ``python`` block in ``README.md`` and ``docs/**/*.md`` is an example the test suite
runs (``tests/test_doc_examples.py``). A block runs on its own, in a fresh namespace and an
empty working directory, so each example must carry its own imports. One HTML comment on the
line right before the opening fence sets options, separated by spaces::

    <!-- test: slow -->                 run in the slow set (``pytest -m slow``)
    <!-- test: continue -->             run after the previous block, in its namespace
    <!-- test: fixture=gateway_demo --> run with a fixture of tests/test_doc_examples.py

Output listings use another fence language (``text``), so they are not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = re.compile(r"^\s*<!--\s*test:(?P<opts>.*?)-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>```+|~~~+)\s*(?P<lang>[\w+-]*)")
PYTHON = {"python", "py", "python3"}
FLAGS = {"slow", "continue"}
KEYS = {"fixture"}


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it is, its source and the options before it."""

    path: Path
    line: int  # 1-based line of the opening fence
    source: str
    slow: bool = False
    cont: bool = False
    fixtures: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


def _rel(path: Path) -> str:
    """The path as shown in test ids and errors: relative to the repository when inside it."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def markdown_files() -> list[Path]:
    """The README and every page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_options(text: str, where: str) -> dict[str, object]:
    """``slow continue fixture=a,b`` → options; an unknown word is an error, not ignored."""
    out: dict[str, object] = {"slow": False, "continue": False, "fixture": ()}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not eq and key in FLAGS:
            out[key] = True
        elif eq and key in KEYS and value:
            out[key] = tuple(v for v in value.split(",") if v)
        else:
            known = sorted(FLAGS) + [f"{k}=NAME" for k in sorted(KEYS)]
            raise ValueError(f"{where}: unknown test option {word!r} (known: {', '.join(known)})")
    return out


def blocks_in(path: Path) -> list[Block]:
    """The Python blocks of one Markdown file, with their options checked."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    pending: tuple[int, dict[str, object]] | None = None  # options waiting for their fence
    i = 0
    while i < len(lines):
        where = f"{_rel(path)}:{i + 1}"
        m_opt = OPTIONS.match(lines[i])
        m_fence = FENCE.match(lines[i])
        if m_opt:
            pending = (i, parse_options(m_opt.group("opts"), where))
            i += 1
            continue
        if m_fence is None:
            if pending is not None:
                raise ValueError(f"{where}: a test option must be on the line right before a fence")
            i += 1
            continue
        ticks, indent = m_fence.group("ticks"), len(m_fence.group("indent"))
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(ticks):
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        lang = m_fence.group("lang").lower()
        if lang in PYTHON:
            opts = pending[1] if pending is not None else {}
            fixtures = opts.get("fixture", ())
            assert isinstance(fixtures, tuple)
            if opts.get("continue") and not found:
                raise ValueError(f"{where}: 'continue' on the first Python block of the file")
            slow, cont = bool(opts.get("slow")), bool(opts.get("continue"))
            found.append(Block(path, i + 1, body, slow, cont, fixtures))
        elif pending is not None:
            raise ValueError(f"{where}: test options before a {lang or 'plain'} block")
        pending = None
        i = end + 1
    return found


@dataclass(frozen=True)
class Example:
    """What one test runs: a block and the blocks it continues, in order."""

    chain: tuple[Block, ...]

    @property
    def block(self) -> Block:
        return self.chain[-1]

    @property
    def slow(self) -> bool:
        return any(b.slow for b in self.chain)

    @property
    def fixtures(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for b in self.chain for f in b.fixtures))


def examples() -> list[Example]:
    """Every example of the README and the docs."""
    out: list[Example] = []
    for path in markdown_files():
        chain: list[Block] = []
        for block in blocks_in(path):
            chain = [*chain, block] if block.cont else [block]
            out.append(Example(tuple(chain)))
    return out


SHELL = {"bash", "sh", "console", "shell"}


def shell_commands() -> list[tuple[str, list[str]]]:
    """Every ``stealproof …`` command line in the shell blocks: (where, its arguments).

    Continuation lines are joined; ``&&``/``;``/``|`` split a line into commands; ``$ `` prompts
    and comments are dropped. Output lines (which do not start with the command) are skipped.
    """
    import shlex

    found: list[tuple[str, list[str]]] = []
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if m is None:
                i += 1
                continue
            ticks, lang = m.group("ticks"), m.group("lang").lower()
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(ticks):
                end += 1
            if lang in SHELL:
                text = "\n".join(lines[i + 1 : end]).replace("\\\n", " ")
                for n, line in enumerate(text.splitlines()):
                    line = line.strip().removeprefix("$ ")
                    try:
                        words = shlex.split(line, comments=True)
                    except ValueError:
                        continue  # not a command (an output line with a stray quote)
                    cmd: list[str] = []
                    for w in [*words, "&&"]:
                        if w in ("&&", ";", "|", "||"):
                            if cmd and cmd[0] == "stealproof":
                                found.append((f"{_rel(path)}:{i + 2 + n}", cmd[1:]))
                            cmd = []
                        else:
                            cmd.append(w)
            i = end + 1
    return found
