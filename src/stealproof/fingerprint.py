"""Fingerprints that bind a saved artifact to what made it.

Every artifact built *for* a victim (defense models, guardian bundles, bench cache entries)
records a :class:`Stamp`: the victim's fingerprint, a hash of the artifact's own config and the
package version. Loading compares the saved stamp with the one expected now and refuses a
mismatch with a message that names both, instead of silently using a surrogate, a bundle or a
cache entry made for another model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from stealproof.errors import ArtifactMismatchError


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def stable_hash(obj: Any) -> str:
    """SHA-256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 32 hex digits) of a model's architecture spec and every weight and buffer.

    Two models get the same fingerprint exactly when they compute the same function by
    construction: same registry name and constructor keywords, same tensors bit for bit.
    """
    h = hashlib.sha256()
    spec = getattr(model, "spec", None)
    if spec is not None:
        h.update(canonical_json({"name": spec.name, "kwargs": spec.kwargs}).encode())
    else:
        h.update(type(model).__qualname__.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def make_stamp(victim: nn.Module | str | None, config: Any) -> dict[str, str | None]:
    """The stamp to store with an artifact: victim fingerprint, config hash, package version.

    ``victim`` is a model, or its fingerprint already computed, or ``None`` for an artifact
    that does not depend on a victim.
    """
    from stealproof import __version__

    fp = victim if isinstance(victim, str) or victim is None else model_fingerprint(victim)
    return {"victim": fp, "config": stable_hash(config)[:32], "version": __version__}


_LABELS = {"victim": "victim", "config": "config", "version": "package version"}


def check_stamp(
    saved: Mapping[str, Any] | None,
    expected: Mapping[str, Any],
    what: str,
    *,
    hint: str = "re-create it",
) -> None:
    """Refuse an artifact whose saved stamp differs from ``expected`` (or that has none).

    ``what`` names the artifact in the message (usually its path). Keys whose expected value is
    ``None`` are not compared.
    """
    if not isinstance(saved, Mapping):
        raise ArtifactMismatchError(
            f"{what}: has no fingerprint of the victim it was made for (made by an older "
            f"stealproof?); {hint}"
        )
    for key in ("victim", "config", "version"):
        want = expected.get(key)
        if want is None:
            continue
        got = saved.get(key)
        if got != want:
            raise ArtifactMismatchError(
                f"{what}: was made for {_LABELS[key]} {got}, this run has {want}; {hint}"
            )
