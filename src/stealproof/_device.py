"""One check of a ``--device`` value, up front, with a message that says what is available."""

from __future__ import annotations

import torch

from stealproof.errors import DeviceError


def available_devices() -> list[str]:
    """Device names this torch build can use now: ``cpu`` plus ``cuda:N`` / ``mps`` if present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device, what: str = "--device") -> torch.device:
    """Parse and check a device; raise :class:`DeviceError` naming what is available."""
    avail = available_devices()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"{what}: {name!r} is not a device name (available here: {', '.join(avail)})"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA support"
                if not torch.backends.cuda.is_built()
                else "no CUDA GPU is visible"
            )
            raise DeviceError(f"{what}: {name!r}: {why} (available here: {', '.join(avail)})")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"{what}: {name!r}: there are {torch.cuda.device_count()} CUDA device(s) "
                f"(available here: {', '.join(avail)})"
            )
        return dev
    if str(dev) in avail or dev.type in avail:
        return dev
    raise DeviceError(f"{what}: {name!r} is not available here (available: {', '.join(avail)})")
