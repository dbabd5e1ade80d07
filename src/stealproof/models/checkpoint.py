"""Checkpoints that carry their own config and load with ``torch.load(weights_only=True)``.

A checkpoint is written through a temporary file and a rename, so a crash never leaves half a
file under the real name. Loading checks every key before using it: a file of the right format
with the wrong contents (another architecture's weights, a missing or ill-typed key, metadata
that is not a JSON object) is refused with a :class:`~stealproof.errors.DataFileError` naming
the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stealproof._io import write_atomic
from stealproof.errors import DataFileError, InputValidationError, StealproofError
from stealproof.models.base import Classifier
from stealproof.models.registry import create_model

FORMAT = "stealproof-checkpoint"
VERSION = 1
#: Keys of a checkpoint payload and the type each must have.
_KEYS: dict[str, type] = {
    "model": str,
    "kwargs_json": str,
    "meta_json": str,
    "state_dict": dict,
}
#: At most this many key names are shown per kind of state-dict mismatch.
_SHOWN_KEYS = 4


def _plain(value: Any) -> Any:
    """Convert tuples to lists recursively so the metadata is plain JSON."""
    return json.loads(json.dumps(value))


def save_checkpoint(
    model: Classifier, path: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Write weights, the model spec and JSON-able ``meta`` (e.g. test accuracy) to ``path``.

    The file is written under a temporary name in the same directory and renamed into place.
    """
    spec = getattr(model, "spec", None)
    if spec is None or not spec.name:
        raise InputValidationError(
            "model: save_checkpoint needs a model built by create_model (it has no spec)"
        )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": spec.name,
        "kwargs_json": json.dumps(_plain(spec.kwargs)),
        "meta_json": json.dumps(_plain(meta or {})),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def _shown(keys: list[str]) -> str:
    more = len(keys) - _SHOWN_KEYS
    return ", ".join(keys[:_SHOWN_KEYS]) + (f" and {more} more" if more > 0 else "")


def state_dict_mismatch(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """A short summary of how ``state`` does not fit ``model`` (``None`` when it fits).

    Names up to a few missing, unexpected and mis-shaped keys (with both shapes) and entries
    that are not tensors.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [str(k) for k in state if k not in own]
    not_tensor = [k for k in own if k in state and not isinstance(state[k], Tensor)]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], Tensor) and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_shown(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_shown(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} mis-shaped (saved vs expected: {_shown(shapes)})")
    if not_tensor:
        parts.append(f"{len(not_tensor)} not tensors ({_shown(not_tensor)})")
    return "; ".join(parts) if parts else None


def load_state_checked(model: nn.Module, state: object, where: str) -> None:
    """``model.load_state_dict(state)``, refusing a mismatch with a :class:`DataFileError`.

    ``where`` names the file (and the part of it) in the message.
    """
    if not isinstance(state, Mapping):
        raise DataFileError(f"{where}: state_dict: expected a dict, got {type(state).__name__}")
    problem = state_dict_mismatch(model, state)
    if problem is not None:
        spec = getattr(model, "spec", None)
        name, kwargs = getattr(spec, "name", None), getattr(spec, "kwargs", None)
        arch = f" for {name} {kwargs}" if isinstance(name, str) and name else ""
        raise DataFileError(f"{where}: the weights do not fit the model{arch}: {problem}")
    try:
        model.load_state_dict(dict(state))
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataFileError(f"{where}: the weights do not fit the model: {first}") from None


def _json_object(payload: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """``payload[key]`` parsed as JSON, which must be an object."""
    try:
        value = json.loads(payload[key])
    except json.JSONDecodeError as e:
        raise DataFileError(f"{where}: {key}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise DataFileError(f"{where}: {key}: expected a JSON object, got {type(value).__name__}")
    return value


def model_from_payload(payload: object, where: str) -> Classifier:
    """Rebuild a model from ``{"model", "kwargs_json", "state_dict"}``, checking each key."""
    if not isinstance(payload, Mapping):
        raise DataFileError(f"{where}: expected a dict, got {type(payload).__name__}")
    for key in ("model", "kwargs_json", "state_dict"):
        if key not in payload:
            raise DataFileError(f"{where}: missing key {key!r}")
        if not isinstance(payload[key], _KEYS[key]):
            raise DataFileError(
                f"{where}: {key}: expected {_KEYS[key].__name__}, got {type(payload[key]).__name__}"
            )
    kwargs = _json_object(payload, "kwargs_json", where)
    try:
        model = create_model(payload["model"], **kwargs)
    except StealproofError as e:
        raise DataFileError(f"{where}: {e}") from None
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataFileError(
            f"{where}: model {payload['model']!r} cannot be built from kwargs {kwargs} "
            f"({type(e).__name__}: {e})"
        ) from None
    load_state_checked(model, payload["state_dict"], where)
    return model


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model from a checkpoint (weights-only unpickling) and return it with meta.

    Raises :class:`~stealproof.errors.DataFileError` naming the file and the problem for a
    missing, unreadable or foreign file and for a checkpoint whose contents do not fit
    (missing or ill-typed keys, an unknown model name, bad constructor arguments, weights of
    another architecture, metadata that is not a JSON object).
    """
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{p}: checkpoint file not found")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        raise DataFileError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataFileError(f"{p}: not a stealproof checkpoint (missing format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise DataFileError(f"{p}: unsupported checkpoint version {payload.get('version')!r}")
    where = str(p)
    if "meta_json" not in payload:
        raise DataFileError(f"{where}: missing key 'meta_json'")
    if not isinstance(payload["meta_json"], str):
        raise DataFileError(
            f"{where}: meta_json: expected str, got {type(payload['meta_json']).__name__}"
        )
    meta = _json_object(payload, "meta_json", where)
    model = model_from_payload(payload, where)
    model.eval()
    return model, meta
