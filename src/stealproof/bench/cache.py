"""On-disk cache of trained victims and defense models, keyed by everything that shapes them.

Layout under ``DIR/cache/``::

    victims/<key>.pt                     a checkpoint (weights, spec, test accuracy, stamp)
    defenses/<key>/manifest.json         defense name, the config fields that built the models,
    defenses/<key>/<role>.pt             the stamp, and one checkpoint per model it names

A victim's key hashes (dataset name, a fingerprint of the dataset's contents, model, training
config, seed). A defense bundle's key hashes the victim's key, the defense name, the config
fields its ``prepare()`` reads (``Defense.prepare_params``), the seed of the global RNG around
``prepare()`` and a fingerprint of the query sample it was given (the defender's log of earlier
queries, drawn from the cell's thief pool) — so a sweep over a knob shares one bundle, and two
scenarios with different pools never do.

Every entry records a stamp (:func:`stealproof.fingerprint.make_stamp`): the fingerprint of the
victim (for a victim entry, of its own weights), a hash of its key content and the package
version; a defense manifest also records each model's fingerprint. An entry whose stamp does not
match (corrupt, hand-edited, made by another version, put under the wrong name) is never used:
:func:`~stealproof.bench.runner.prepare_artifacts` logs a warning and rebuilds it, and loading
one anyway raises :class:`~stealproof.errors.ArtifactMismatchError` naming both stamps. Files a
manifest does not name (``backup.pt``) are ignored. Every write goes to a temporary name and is
renamed into place, so a crash or a concurrent writer never exposes a partial file.
Cached models are rebuilt with ``cls(config, **models)``, exactly what ``replace()`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import Tensor, nn

import stealproof
from stealproof._io import atomic_target, tmp_name, write_text_atomic
from stealproof.data.datasets import Dataset
from stealproof.defenses.base import Defense
from stealproof.errors import ArtifactMismatchError, StealproofError
from stealproof.experiment import Scenario, train_victim
from stealproof.fingerprint import check_stamp, make_stamp, model_fingerprint, stable_hash
from stealproof.models.base import Classifier
from stealproof.models.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REBUILD_HINT = "the benchmark rebuilds it (or delete the cache entry)"


class CacheError(StealproofError):
    """A cache entry cannot be written or read."""


def tensor_fingerprint(*tensors: Tensor) -> str:
    """SHA-256 (first 32 hex digits) of tensors' dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update(c.numpy().tobytes())
    return h.hexdigest()[:32]


def data_fingerprint(ds: Dataset) -> str:
    """Fingerprint of what a victim learns from and is scored on (train and test splits)."""
    return tensor_fingerprint(ds.train.images, ds.train.labels, ds.test.images, ds.test.labels)


def victim_key_content(
    spec: Scenario, seed: int, data: str, victim: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Everything that shapes a victim: dataset (name and contents), model, training, seed.

    ``victim`` (a cell's resolved victim setting; None: the scenario's plain training) adds
    InI's config and OOD pool, or names a checkpoint by the hash of its bytes (then neither the
    training nor the seed shapes it).
    """
    content: dict[str, Any] = {"kind": "victim", "dataset": spec.dataset, "data": data}
    if victim is not None and victim.get("checkpoint"):
        return {**content, "checkpoint_sha256": victim["sha256"]}
    content.update(
        model=spec.model, training=spec.victim_training.model_dump(mode="json"), seed=seed
    )
    if victim is not None:
        content["victim"] = {k: victim[k] for k in sorted(victim) if k != "label"}
    return content


def victim_key(
    spec: Scenario, seed: int, data: str, victim: Mapping[str, Any] | None = None
) -> str:
    """Key of the victim a scenario trains with ``seed`` on data with fingerprint ``data``."""
    return stable_hash(victim_key_content(spec, seed, data, victim))[:32]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a checkpoint victim's identity)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checkpoint_victim(path: str, dataset: Dataset) -> tuple[Classifier, float]:
    """A user's victim checkpoint, checked to take the dataset's images and classes, and its
    accuracy on the dataset's test split."""
    from stealproof.metrics import clone_accuracy

    model, _ = load_checkpoint(path)
    if tuple(model.input_shape) != tuple(dataset.input_shape):
        raise CacheError(
            f"victim checkpoint {path}: takes images {tuple(model.input_shape)}, the dataset "
            f"has {tuple(dataset.input_shape)}"
        )
    if model.num_classes != dataset.num_classes:
        raise CacheError(
            f"victim checkpoint {path}: has {model.num_classes} classes, the dataset "
            f"{dataset.num_classes}"
        )
    return model.eval(), clone_accuracy(model, dataset.test.images, dataset.test.labels)


def builds_models(cls: type[Defense]) -> bool:
    """True when the defense's ``prepare()`` builds models (it overrides the base one)."""
    return getattr(cls.prepare, "__func__", None) is not getattr(Defense.prepare, "__func__", None)


def defense_key_content(
    vkey: str,
    cls: type[Defense],
    defense_config: Mapping[str, Any],
    *,
    query: str | None,
    seed: int,
) -> dict[str, Any]:
    """Everything that shapes the models ``cls.prepare`` builds.

    ``vkey`` covers the victim and the defender's training images; ``query`` is the fingerprint
    of the query sample handed to ``prepare`` (``None``: none); ``seed`` seeds the global RNG
    around ``prepare``.
    """
    fields = cls.prepare_params
    used = {k: v for k, v in sorted(defense_config.items()) if fields is None or k in fields}
    return {
        "kind": "defense",
        "victim": vkey,
        "defense": cls.name,
        "params": used,
        "query_sample": query,
        "seed": seed,
    }


def defense_key(
    vkey: str,
    cls: type[Defense],
    defense_config: Mapping[str, Any],
    *,
    query: str | None,
    seed: int,
) -> str:
    """Key of the models ``cls.prepare`` builds (see :func:`defense_key_content`)."""
    return stable_hash(defense_key_content(vkey, cls, defense_config, query=query, seed=seed))[:32]


def expected_stamp(victim_fp: str, key: str) -> dict[str, str]:
    """The stamp an entry stored under ``key`` must carry.

    Its config hash is the key itself: both are the first 32 hex digits of the SHA-256 of the
    key content, so an entry copied under another entry's name is caught too.
    """
    return {"victim": victim_fp, "config": key, "version": stealproof.__version__}


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
        """True when a usable entry is stored under ``key`` (see :meth:`victim_problem`)."""
        return self.victim_problem(key) is None

    def victim_problem(self, key: str) -> str | None:
        """Why the victim entry ``key`` cannot be used (``"missing"`` when absent), or None."""
        path = self.victim_path(key)
        if not path.is_file():
            return "missing"
        try:
            self.load_victim(key)
        except StealproofError as e:
            return str(e)
        return None

    def ensure_victim(
        self,
        spec: Scenario,
        seed: int,
        dataset: Dataset,
        *,
        victim: Mapping[str, Any] | None = None,
        data_dir: str | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Train (or copy in) and store the victim unless a valid entry is cached; return its key.

        ``victim`` is a cell's resolved victim setting (None: the scenario's plain training;
        ``training: ini``: :func:`stealproof.ini.train_ini_victim`; ``checkpoint``: the file,
        checked against the dataset). An entry that is present but unusable (stamp mismatch,
        corrupt file) is rebuilt, with a logged warning that says why.
        """
        content = victim_key_content(spec, seed, data_fingerprint(dataset), victim)
        key = stable_hash(content)[:32]
        problem = self.victim_problem(key)
        if problem is None:
            return key
        if problem != "missing":
            log.warning("cache: %s; rebuilding it", problem)
        meta: dict[str, Any] = {"dataset": spec.dataset, "seed": seed}
        if victim is not None and victim.get("checkpoint"):
            model, acc = _checkpoint_victim(str(victim["checkpoint"]), dataset)
            meta.update(model=model.spec.name, checkpoint=str(victim["checkpoint"]))
        elif victim is not None and victim.get("training") == "ini":
            from stealproof.ini import IniConfig, train_ini_victim

            model, acc, _ = train_ini_victim(
                dataset,
                spec.model,
                IniConfig.model_validate(victim["ini"]),
                str(victim["ood"]),
                seed=seed,
                data_dir=data_dir,
                device=device,
                progress=progress,
            )
            meta.update(model=spec.model, training="ini", ini=dict(victim["ini"]))
        else:
            model, acc = train_victim(
                dataset, spec.model, spec.victim_training, seed=seed, device=device,
                progress=progress,
            )  # fmt: skip
            meta.update(model=spec.model, training=spec.victim_training.model_dump(mode="json"))
        model = model.cpu()
        meta.update(test_acc=acc, stamp=make_stamp(model, content))
        with atomic_target(self.victim_path(key)) as tmp:
            save_checkpoint(model, tmp, meta)
        return key

    def load_victim(self, key: str) -> tuple[Classifier, dict[str, Any]]:
        """The cached victim (eval mode, on CPU) and its metadata, its stamp checked."""
        path = self.victim_path(key)
        model, meta = load_checkpoint(path)
        stamp = meta.get("stamp")
        check_stamp(
            stamp,
            expected_stamp(model_fingerprint(model), key),
            f"cached victim {path}",
            hint=REBUILD_HINT,
        )
        return model, meta

    # ----------------------------------------------------------------- defense models

    def defense_dir(self, key: str) -> Path:
        return self.root / "defenses" / key

    def has_defense(self, key: str, victim_fp: str) -> bool:
        """True when a usable bundle for the victim ``victim_fp`` is stored under ``key``."""
        return self.defense_problem(key, victim_fp) is None

    def defense_problem(self, key: str, victim_fp: str) -> str | None:
        """Why the bundle ``key`` cannot be used (``"missing"`` when absent), or None."""
        if not (self.defense_dir(key) / MANIFEST).is_file():
            return "missing"
        try:
            self.load_defense_models(key, victim_fp)
        except StealproofError as e:
            return str(e)
        return None

    def ensure_defense(
        self,
        key: str,
        cls: type[Defense],
        defense_config: dict[str, Any],
        victim: nn.Module,
        images: Tensor,
        query_sample: Tensor | None = None,
        *,
        content: Mapping[str, Any] | None = None,
    ) -> None:
        """Run ``cls.prepare`` and store the models it built, unless a valid bundle is cached.

        ``content`` is the key content (:func:`defense_key_content`) recorded in the stamp; its
        hash must be ``key``.
        """
        victim_fp = model_fingerprint(victim)
        problem = self.defense_problem(key, victim_fp)
        if problem is None:
            return
        if problem != "missing":
            log.warning("cache: %s; rebuilding it", problem)
        if content is None or stable_hash(dict(content))[:32] != key:
            raise CacheError(f"{cls.name}: the key content given does not hash to key {key}")
        defense = cls.prepare(victim, images, query_sample=query_sample, **defense_config)
        final = self.defense_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_name(final)
        tmp.mkdir()
        roles: dict[str, str | None] = {}
        prints: dict[str, str] = {}
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
                model = value.cpu()
                meta = {"role": role, "frozen": _is_frozen(model)}
                save_checkpoint(model, tmp / f"{role}.pt", meta)
                roles[role] = f"{role}.pt"
                prints[role] = model_fingerprint(model)
            manifest = {
                "defense": cls.name,
                "config": defense_config,
                "params": defense.params,
                "models": roles,
                "fingerprints": prints,
                "stamp": make_stamp(victim_fp, dict(content)),
            }
            write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            self._replace_dir(tmp, final, key, victim_fp)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _replace_dir(self, tmp: Path, final: Path, key: str, victim_fp: str) -> None:
        """Rename the finished bundle ``tmp`` to ``final``, moving a stale one out of the way."""
        if final.exists():
            stale = tmp_name(final.with_name(final.name + "-stale"))
            try:
                os.rename(final, stale)
            except OSError:
                pass  # another writer moved or replaced it meanwhile
            else:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not self.has_defense(key, victim_fp):  # another writer won the race: keep theirs
                raise

    def read_manifest(self, key: str) -> dict[str, Any]:
        """The bundle's manifest, its shape checked (a ``CacheError`` names the problem)."""
        path = self.defense_dir(key) / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CacheError(f"cached defense models {path}: unreadable ({e})") from None
        models = manifest.get("models") if isinstance(manifest, dict) else None
        prints = manifest.get("fingerprints") if isinstance(manifest, dict) else None
        ok = (
            isinstance(models, dict)
            and isinstance(prints, dict)
            and all(
                isinstance(r, str)
                and (n is None or (isinstance(n, str) and Path(n).name == n and r in prints))
                for r, n in models.items()
            )
        )
        if not ok:
            raise CacheError(f"cached defense models {path}: not a bundle manifest")
        assert isinstance(manifest, dict)
        return manifest

    def prepared_params(self, key: str) -> dict[str, Any]:
        """The config the bundle's ``prepare()`` returned (its own values, e.g. a threshold)."""
        params = self.read_manifest(key).get("params", {})
        if not isinstance(params, dict):
            raise CacheError(f"cached defense models {self.defense_dir(key)}: bad params")
        return params

    def load_defense_models(self, key: str, victim_fp: str) -> dict[str, Any]:
        """The cached models by constructor keyword (``None`` where the defense had none).

        Refuses (``ArtifactMismatchError``) a bundle made for another victim, config or package
        version, and a model file whose weights are not the ones the manifest recorded.
        """
        from stealproof.surrogate import freeze

        d = self.defense_dir(key)
        manifest = self.read_manifest(key)
        check_stamp(
            manifest.get("stamp"),
            expected_stamp(victim_fp, key),
            f"cached defense models {d}",
            hint=REBUILD_HINT,
        )
        models: dict[str, Any] = {}
        for role, name in manifest["models"].items():
            if name is None:
                models[role] = None
                continue
            model, meta = load_checkpoint(d / name)
            got, want = model_fingerprint(model), manifest["fingerprints"][role]
            if got != want:
                raise ArtifactMismatchError(
                    f"cached defense model {d / name}: has weights {got}, the manifest recorded "
                    f"{want}; {REBUILD_HINT}"
                )
            models[role] = freeze(model) if meta.get("frozen") else model.eval()
        return models

    # ----------------------------------------------------------------- shipping (Ray)

    def files(self, relpaths: list[str]) -> dict[str, bytes]:
        """The bytes of cache files by path relative to the root (to ship to other hosts)."""
        return {rel: (self.root / rel).read_bytes() for rel in relpaths}

    # ----------------------------------------------------------------- guardian bundles

    def guardian_path(self, key: str) -> Path:
        return self.root / "guardians" / f"{key}.pt"

    def load_guardian(self, key: str, victim_fp: str) -> Any:
        """The cached Model-Guardian bundle ``key``, refused unless made for ``victim_fp``."""
        from stealproof.detectors.guardian import GuardianBundle

        return GuardianBundle.load(self.guardian_path(key), victim=victim_fp)

    def has_guardian(self, key: str, victim_fp: str) -> bool:
        """True when a usable bundle for the victim ``victim_fp`` is stored under ``key``."""
        if not self.guardian_path(key).is_file():
            return False
        try:
            self.load_guardian(key, victim_fp)
        except StealproofError as e:
            log.warning("cache: guardian bundle %s: %s; rebuilding it", key, e)
            return False
        return True

    def ensure_guardian(
        self,
        key: str,
        victim: nn.Module,
        images: Tensor,
        config: Any,
        *,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Train the Model-Guardian bundle for ``victim`` on the defender's ``images`` (its
        stamp binds it to the victim) unless a usable one is cached under ``key``."""
        from stealproof.detectors.guardian import train_guardian

        if self.has_guardian(key, model_fingerprint(victim)):
            return
        bundle, _ = train_guardian(victim, images, config, device=device, progress=progress)
        self.guardian_path(key).parent.mkdir(parents=True, exist_ok=True)
        bundle.save(self.guardian_path(key))

    def guardian_files(self, key: str) -> dict[str, bytes]:
        return self.files([f"guardians/{key}.pt"])

    def victim_files(self, key: str) -> dict[str, bytes]:
        return self.files([f"victims/{key}.pt"])

    def defense_files(self, key: str) -> dict[str, bytes]:
        """The manifest and the model files it names (nothing else in the directory)."""
        manifest = self.read_manifest(key)
        names = [MANIFEST, *(n for n in manifest["models"].values() if n is not None)]
        return self.files([f"defenses/{key}/{n}" for n in sorted(names)])

    def materialize(self, files: dict[str, bytes]) -> None:
        """Write shipped files that are missing here (each through a temporary name).

        Manifests go last, so a reader that finds one also finds the models it lists.
        """
        for rel, data in sorted(files.items(), key=lambda kv: kv[0].endswith(MANIFEST)):
            path = self.root / rel
            if path.is_file():
                continue
            with atomic_target(path) as tmp:
                tmp.write_bytes(data)
