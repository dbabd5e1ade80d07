"""On-disk cache of trained victims and defense models, keyed by the hash of their config.

Layout under ``DIR/cache/``::

    victims/<key>.pt                     a checkpoint (weights + spec + test accuracy)
    defenses/<key>/manifest.json         defense name, the config fields that built the models,
    defenses/<key>/<role>.pt             and one checkpoint per model (surrogate, scorer, ...)

A victim's key hashes (dataset, model, training config, seed); a defense bundle's key hashes the
victim's key, the defense name and the config fields its ``prepare()`` reads
(``Defense.prepare_params``) — so a sweep over a knob shares one bundle. Every write goes to a
temporary name and is renamed into place, so concurrent writers never expose a partial file.
Cached models are rebuilt with ``cls(config, **models)``, exactly what ``replace()`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import nn

from stealproof.data.datasets import Dataset
from stealproof.defenses.base import Defense
from stealproof.errors import StealproofError
from stealproof.experiment import Scenario, train_victim
from stealproof.fingerprint import stable_hash
from stealproof.models.base import Classifier
from stealproof.models.checkpoint import load_checkpoint, save_checkpoint


class CacheError(StealproofError):
    """A cache entry cannot be written or read."""


def victim_key(spec: Scenario, seed: int) -> str:
    """Key of the victim a scenario trains with ``seed``."""
    return stable_hash(
        {
            "kind": "victim",
            "dataset": spec.dataset,
            "model": spec.model,
            "training": spec.victim_training.model_dump(mode="json"),
            "seed": seed,
        }
    )[:32]


def builds_models(cls: type[Defense]) -> bool:
    """True when the defense's ``prepare()`` builds models (it overrides the base one)."""
    return getattr(cls.prepare, "__func__", None) is not getattr(Defense.prepare, "__func__", None)


def defense_key(vkey: str, cls: type[Defense], defense_config: dict[str, Any]) -> str:
    """Key of the models ``cls.prepare`` builds for victim ``vkey`` with this config."""
    fields = cls.prepare_params
    used = {k: v for k, v in sorted(defense_config.items()) if fields is None or k in fields}
    return stable_hash({"kind": "defense", "victim": vkey, "defense": cls.name, "params": used})[
        :32
    ]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _is_frozen(model: nn.Module) -> bool:
    return all(not p.requires_grad for p in model.parameters())


class ArtifactCache:
    """Victims and defense models under one root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------- victims

    def victim_path(self, key: str) -> Path:
        return self.root / "victims" / f"{key}.pt"

    def has_victim(self, key: str) -> bool:
        return self.victim_path(key).is_file()

    def ensure_victim(
        self,
        spec: Scenario,
        seed: int,
        dataset: Dataset,
        *,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Train and store the victim unless it is cached; return its key."""
        key = victim_key(spec, seed)
        if self.has_victim(key):
            return key
        victim, acc = train_victim(
            dataset, spec.model, spec.victim_training, seed=seed, device=device, progress=progress
        )
        meta = {
            "dataset": spec.dataset,
            "model": spec.model,
            "seed": seed,
            "test_acc": acc,
            "training": spec.victim_training.model_dump(mode="json"),
        }
        path = self.victim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(path)
        save_checkpoint(victim.cpu(), tmp, meta)
        os.replace(tmp, path)
        return key

    def load_victim(self, key: str) -> tuple[Classifier, dict[str, Any]]:
        """The cached victim (eval mode, on CPU) and its metadata."""
        return load_checkpoint(self.victim_path(key))

    # ----------------------------------------------------------------- defense models

    def defense_dir(self, key: str) -> Path:
        return self.root / "defenses" / key

    def has_defense(self, key: str) -> bool:
        return (self.defense_dir(key) / "manifest.json").is_file()

    def ensure_defense(
        self,
        key: str,
        cls: type[Defense],
        defense_config: dict[str, Any],
        victim: nn.Module,
        images: torch.Tensor,
        query_sample: torch.Tensor | None = None,
    ) -> None:
        """Run ``cls.prepare`` and store the models it built, unless they are cached."""
        if self.has_defense(key):
            return
        defense = cls.prepare(victim, images, query_sample=query_sample, **defense_config)
        final = self.defense_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(final)
        tmp.mkdir()
        roles: dict[str, str | None] = {}
        try:
            for role, value in defense.models().items():
                if value is None:
                    roles[role] = None
                    continue
                if not isinstance(value, Classifier) or not value.spec.name:
                    raise CacheError(
                        f"{cls.name}: model {role!r} is not a stealproof Classifier and cannot "
                        "be cached"
                    )
                save_checkpoint(
                    value.cpu(), tmp / f"{role}.pt", {"role": role, "frozen": _is_frozen(value)}
                )
                roles[role] = f"{role}.pt"
            manifest = {"defense": cls.name, "config": defense_config, "models": roles}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.has_defense(key):  # another writer won the race: keep theirs
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def load_defense_models(self, key: str) -> dict[str, Any]:
        """The cached models by constructor keyword (``None`` where the defense had none)."""
        from stealproof.surrogate import freeze

        d = self.defense_dir(key)
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{d}: unreadable defense cache entry ({e})") from None
        models: dict[str, Any] = {}
        for role, name in manifest["models"].items():
            if name is None:
                models[role] = None
                continue
            model, meta = load_checkpoint(d / name)
            models[role] = freeze(model) if meta.get("frozen") else model.eval()
        return models

    # ----------------------------------------------------------------- shipping (Ray)

    def files(self, relpaths: list[str]) -> dict[str, bytes]:
        """The bytes of cache files by path relative to the root (to ship to other hosts)."""
        return {rel: (self.root / rel).read_bytes() for rel in relpaths}

    def victim_files(self, key: str) -> dict[str, bytes]:
        return self.files([f"victims/{key}.pt"])

    def defense_files(self, key: str) -> dict[str, bytes]:
        d = self.defense_dir(key)
        rels = sorted(f"defenses/{key}/{p.name}" for p in d.iterdir() if p.is_file())
        return self.files(rels)

    def materialize(self, files: dict[str, bytes]) -> None:
        """Write shipped files that are missing here (each through a temporary name).

        Manifests go last, so a reader that finds one also finds the models it lists.
        """
        for rel, data in sorted(files.items(), key=lambda kv: kv[0].endswith("manifest.json")):
            path = self.root / rel
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_name(path)
            tmp.write_bytes(data)
            os.replace(tmp, path)
