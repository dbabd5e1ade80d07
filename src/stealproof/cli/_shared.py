"""What every command module of the CLI shares: the consoles, progress bars, error handling,
common options and the helpers several commands use. Command modules import this module and
the library, never each other.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stealproof._cli_errors import err_console, friendly_errors
from stealproof.errors import ConfigError

if TYPE_CHECKING:
    from stealproof.serve.settings import ServeSettings


__all__ = ["err_console", "friendly_errors"]

# piped output gets a fixed, wide layout instead of rich's 80-column default
console = Console(width=None if sys.stdout.isatty() else 132)


SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads",
        help="CPU threads for torch (0 = auto: the cores not busy with other work when the "
        "command starts, at least 1).",
        min=0,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
SplitTestOpt = Annotated[
    float | None,
    typer.Option(
        "--split-test",
        help="For a file dataset with one labelled split: hold out this fraction (seeded, "
        "stratified) as the test split.",
    ),
]


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Progress | None]:
    """A rich progress display on stderr, or None when quiet."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as p:
        yield p


def auto_threads() -> int:
    """Torch threads that do not oversubscribe: usable cores less the current load, ≥ 1.

    torch's own default takes every core even when other processes hold them, and small models
    then spend more time synchronising threads than computing (measured: the quick demo took
    300 s+ instead of 49 s next to one busy process on 2 cores).
    """
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _setup(threads: int, quiet: bool, device: str | None = None) -> torch.device:
    """Threads, logging and the device (checked before any work); returns the device."""
    from stealproof._device import resolve_device

    dev = resolve_device(device or "cpu")
    torch.set_num_threads(threads if threads > 0 else auto_threads())
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return dev


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """JSON text that is strict JSON: non-finite floats (NaN, ±inf) become ``null``."""
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def resolve_api_key(
    api_key: str | None, api_key_file: Path | None, *, api_key_given: bool, missing: str
) -> str:
    """The client's API key from ``--api-key`` or ``--api-key-file`` (one of them, not both).

    ``api_key_given``: ``--api-key`` came from the command line (not only from the environment);
    ``missing`` is the error when neither gives a key.
    """
    if api_key_file is not None:
        if api_key_given:
            raise ConfigError("--api-key, --api-key-file: pass one of them")
        try:
            api_key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(
                f"--api-key-file: cannot read {api_key_file} ({e.strerror})"
            ) from None
    if not api_key:
        raise ConfigError(missing)
    return api_key


def check_victim_data(model: Any, data_shape: tuple[int, ...], what: str) -> None:
    """Refuse data whose image shape is not the victim's, before any defense is built."""
    want = tuple(getattr(model, "input_shape", ()) or ())
    if want and tuple(data_shape) != want:
        raise ConfigError(
            f"{what}: images are {tuple(data_shape)} (C, H, W), the victim expects {want}"
        )


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items; values are read as JSON when they parse, else as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _split_kwargs(split_test: float | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``load_dataset`` for ``--split-test`` (none when not given).

    With a victim's checkpoint ``meta``, the split it was trained with is the default, and
    another one is refused: its test split would overlap the victim's training data.
    """
    trained = meta.get("split_test") if isinstance(meta, dict) else None
    if trained is not None:
        if split_test is None:
            split_test = float(trained)
        elif split_test != trained:
            raise ConfigError(
                f"--split-test: the victim was trained with --split-test {trained}; another "
                "split would score it on its own training images (omit --split-test)"
            )
    if split_test is None:
        return {}
    if not 0 < split_test < 1:
        raise ConfigError(f"--split-test: expected a fraction in (0, 1), got {split_test}")
    return {"split_test": split_test}


def resolve_dataset(dataset: str | None, meta: dict[str, Any], victim: Path) -> str:
    """The dataset to score on: ``--dataset`` or the checkpoint's; refuse a mismatch."""
    trained_on = meta.get("dataset") if isinstance(meta, dict) else None
    if dataset is None:
        return str(trained_on) if trained_on else "mnist5k"
    if trained_on and dataset != trained_on:
        raise ConfigError(
            f"--dataset: the victim {victim} was trained on {trained_on!r}, not {dataset!r}; "
            f"omit --dataset to use {trained_on!r}"
        )
    return dataset


QUERY_SAMPLE_SIZE = 2000


def sample_pool(pool: str | None, victim: Any, seed: int, data_dir: Path | None) -> Any:
    """2,000 images from ``pool`` shaped for ``victim`` (None when no pool is named)."""
    if pool is None:
        return None
    from stealproof.data import load_pool

    c, h, w = victim.input_shape
    p = load_pool(pool, channels=c, image_size=(h, w), seed=seed + 1, data_dir=data_dir)
    images, _ = p.draw(QUERY_SAMPLE_SIZE, torch.Generator().manual_seed(seed + 1))
    return images


# ----------------------------------------------------------------- the gateway's commands

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="Gateway YAML file (see docs/gateway.md).")
]


def _settings(config: Path) -> ServeSettings:
    from stealproof.serve.settings import load_settings

    return load_settings(config)


def _sessions(settings: ServeSettings) -> Any:
    """Write sessions on the configured database (refused when it is not migrated)."""
    return _gateway_for_admin(settings).sessions


def _gateway_for_admin(settings: ServeSettings, *, with_models: bool = False) -> Any:
    """A gateway over the configured database; models are loaded only when asked for (to lift
    policy blocks, the policies' state is needed)."""
    from stealproof.serve.app import build_gateway

    return build_gateway(settings, with_models=with_models)[0]


def _write_secret(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (mode 0600), through a rename."""
    from stealproof._io import tmp_name

    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
