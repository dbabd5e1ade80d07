"""Saved defense models: the manifest ``prepare-defense`` writes and rebuilding a defense from it.

The ``attack`` command and the gateway build defenses the same way: from a models directory whose
manifest binds the models to the victim (fingerprint), the defense and its model-building
parameters, or afresh with the defense's ``prepare``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "defense.json"


def defense_stamp(cls: Any, params: dict[str, Any], victim: Any) -> dict[str, Any]:
    """The stamp of a defense's saved models: victim, defense name and the params that built
    them (``prepare_params``; the other knobs may change at load time)."""
    from stealproof.fingerprint import make_stamp

    fields = cls.prepare_params
    built_by = {k: v for k, v in sorted(params.items()) if fields is None or k in fields}
    return make_stamp(victim, {"defense": cls.name, "prepare": built_by})


def build_defense(
    name: str,
    params: dict[str, Any],
    victim: Any,
    images: Any,
    models_dir: Path | None,
    query_sample: Any = None,
) -> Any:
    """A defense from saved models when ``models_dir`` is given, else ``prepare()``-d afresh.

    Saved models are used only when the directory's manifest says they were made for this
    defense, this victim (fingerprint), the same model-building parameters and this package
    version; files the manifest does not name are ignored.
    """
    from stealproof import defenses
    from stealproof.errors import ArtifactMismatchError, DataFileError
    from stealproof.fingerprint import check_stamp
    from stealproof.models import load_checkpoint
    from stealproof.surrogate import freeze

    cls = defenses.get_defense_class(name)
    if models_dir is None:
        return cls.prepare(victim, images, query_sample=query_sample, **params)
    if not models_dir.is_dir():
        raise DataFileError(f"--models: {models_dir} is not a directory")
    manifest = models_dir / MANIFEST
    if not manifest.is_file():
        raise DataFileError(
            f"--models: {models_dir} has no {MANIFEST}; create the directory with "
            f"`stealproof prepare-defense --defense {name} --out {models_dir}`"
        )
    try:
        saved = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFileError(f"--models: {manifest} is not valid JSON ({e})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("models", {}), dict):
        raise DataFileError(f"--models: {manifest} is not a defense manifest")
    if saved.get("defense") != name:
        raise ArtifactMismatchError(
            f"--models: {models_dir} holds models for {saved.get('defense')!r}, not {name!r}"
        )
    merged = cls.make_config(**{**saved.get("params", {}), **params}).model_dump(mode="json")
    check_stamp(
        saved.get("stamp"),
        defense_stamp(cls, merged, victim),
        f"--models: {models_dir}",
        hint=f"re-create it with `stealproof prepare-defense --defense {name}`",
    )
    loaded = {}
    for role, file in saved.get("models", {}).items():
        path = models_dir / str(file)
        if path.parent != models_dir:
            raise DataFileError(f"--models: {manifest} names a file outside the directory")
        loaded[role] = freeze(load_checkpoint(path)[0])
    return cls(**{**saved.get("params", {}), **params}, **loaded)
