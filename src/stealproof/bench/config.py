"""Benchmark configs: pydantic models, YAML/TOML loading, expansion into cells, cell hashes.

A config is a grid::

    scenarios: [{name: digits, clone_training: {epochs: 5}}]
    attacks: {knockoff: {policy: [random], label_only: [false, true]}}
    defenses: {none: [{}], mad: {eps: [0.5, 0.8]}, reverse_sigmoid: {beta: [0.3], gamma: [0.2]}}
    budgets: [1000]
    seeds: [0, 1]

Every scenario × seed × budget × attack setting × defense setting is one *cell*. A defense's
strengths are either a mapping of parameter lists (their cartesian product) or an explicit list
of settings. Everything is checked when the config is loaded — names against the registries,
parameters against each defense's ``Config``, ``file:`` pools against the file system, keys
listed twice in one mapping, NaN and ±infinity anywhere — so a malformed config fails before
any work, with one line that names the offending key.

A cell's hash is the SHA-256 of the canonical JSON of everything that determines its numbers
(resolved scenario, attack, defense config, budget, seed) and *not* the package version, so
results survive upgrades that change nothing; rows carry the version separately.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stealproof._names import unknown_name_message
from stealproof.bench.errors import BenchConfigError as BenchConfigError
from stealproof.errors import StealproofError
from stealproof.experiment import SCENARIOS, Scenario, scenario_for
from stealproof.fingerprint import stable_hash
from stealproof.train import TrainConfig

# --------------------------------------------------------------------------- the YAML schema


def _unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} is listed twice")
        seen.append(v)
    return values


Policy = Literal["random", "adaptive"]


def _default_policies() -> list[Policy]:
    return ["random"]


class ScenarioSpec(BaseModel):
    """A built-in scenario by ``name`` (with optional overrides), or explicit fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="built-in scenario (digits, mnist5k) or a label")
    dataset: str | None = None
    model: str | None = None
    pool: str | None = Field(None, description="the thief's query pool")
    victim_training: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig fields overriding the victim's training"
    )
    clone_training: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig fields overriding the clones' training"
    )


class ThiefSpec(BaseModel):
    """The counter-moves every attack takes, each a grid axis.

    ``label_only``: train the clone on the answers' top-1 labels; ``average``: answer each
    query with the mean over that many augmented copies (each copy costs a row of the budget);
    ``clone_model``: the clone's architecture (``same``: the victim's); ``pool``: the thief's
    data (default: the scenario's pool for KnockoffNets, ``<dataset>-unlabeled`` — seed images
    like the victim's — for the Jacobian attacks; data-free attacks use none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label_only: list[bool] = Field(default_factory=lambda: [False], min_length=1)
    average: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [1], min_length=1
    )
    clone_model: list[str] = Field(default_factory=lambda: ["same"], min_length=1)
    pool: list[str] = Field(default_factory=list, description="thief pools (default: see above)")

    @field_validator("label_only", "average", "clone_model", "pool")
    @classmethod
    def _no_repeats(cls, v: list[Any]) -> list[Any]:
        return _unique(v)

    @field_validator("clone_model")
    @classmethod
    def _known_models(cls, v: list[str]) -> list[str]:
        from stealproof.models import available_models

        known = available_models()
        for name in v:
            if name != "same" and name not in known:
                raise ValueError(unknown_name_message("clone model", name, ["same", *known]))
        return v


class KnockoffSpec(ThiefSpec):
    """KnockoffNets options; ``policy`` is a grid axis, ``label_only`` picks the clones trained.

    Every cell trains its clones on one transfer set: ``label_only: [false, true]`` (default)
    trains both the soft-label clone and the label-only counter-attack's clone.
    """

    policy: list[Policy] = Field(default_factory=_default_policies, min_length=1)
    label_only: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    query_batch: int = Field(128, ge=1, description="rows per black-box call")
    augment: bool = Field(True, description="augmented repeats once the pool is used up")

    @field_validator("policy")
    @classmethod
    def _no_repeated_policy(cls, v: list[Any]) -> list[Any]:
        return _unique(v)


def _until_the_budget() -> list[int | None]:
    return [None]


class JacobianSpec(ThiefSpec):
    """JBDA, JB-self and JB-top3: seed images from the pool, then Jacobian augmentation rounds.

    Each ``label_only`` value is its own cell (the substitute that picks the next queries is
    trained on what the thief keeps, so the two runs query differently).
    """

    rounds: list[Annotated[int, Field(ge=0)] | None] = Field(
        default_factory=_until_the_budget, min_length=1, description="None: until the budget"
    )
    seed_images: int = Field(150, ge=1, description="seed images drawn from the pool")


class DataFreeSpec(ThiefSpec):
    """DFME, MAZE and DaST: a generator synthesises every query; no pool.

    Each ``label_only`` value is its own cell, as for the Jacobian attacks.
    """

    batch_size: int = Field(256, ge=2, description="generator samples per step")

    @field_validator("pool")
    @classmethod
    def _no_pool(cls, v: list[str]) -> list[str]:
        if v:
            raise ValueError("data-free attacks use no pool")
        return v


class VictimSpec(BaseModel):
    """How the scenario's victim is made: the scenario's plain training (default), InI
    training (``training: ini`` with ``ini:`` options of :class:`stealproof.ini.IniConfig` and
    its OOD proxy pool ``ood``), or a user's trained model (``checkpoint: PATH``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    training: Literal["plain", "ini"] = "plain"
    ini: dict[str, Any] = Field(default_factory=dict, description="IniConfig fields (ini only)")
    ood: str = Field("shapes", description="InI's OOD proxy pool (ini only)")
    checkpoint: str | None = Field(None, description="a trained victim's checkpoint file")
    label: str | None = Field(None, description="its name in the report (default: from above)")

    @model_validator(mode="after")
    def _consistent(self) -> VictimSpec:
        if self.checkpoint is not None and self.training != "plain":
            raise ValueError("a checkpoint victim is already trained: drop training")
        if self.training != "ini" and (self.ini or self.ood != "shapes"):
            raise ValueError("ini and ood apply to training: ini only")
        return self

    def resolved(self, where: str) -> dict[str, Any] | None:
        """The cell's victim setting (None: plain training), checked; InI's config in full."""
        if self.checkpoint is not None:
            from stealproof.bench.cache import file_sha256

            path = Path(self.checkpoint)
            if not path.is_file():
                raise BenchConfigError(f"{where}.checkpoint: {path}: no such file")
            return {"checkpoint": str(path.resolve()), "sha256": file_sha256(path),
                    "label": self.label or f"victim:{path.stem}"}  # fmt: skip
        if self.training == "plain":
            return None
        from stealproof.ini import IniConfig

        try:
            cfg = IniConfig.model_validate(self.ini)
        except ValidationError as e:
            raise BenchConfigError(
                format_validation_error(e, prefix=f"{where}.ini", model=IniConfig)
            ) from None
        check_pool(f"{where}.ood", self.ood)
        shown = ",".join(f"{k}={v}" for k, v in self.ini.items())
        label = self.label or (f"ini({shown})" if shown else "ini")
        return {"training": "ini", "ini": cfg.model_dump(mode="json"), "ood": self.ood,
                "label": label}  # fmt: skip


DetectorName = Literal["prada", "guardian"]


def _prada_only() -> list[DetectorName]:
    return ["prada"]


class PolicySpec(BaseModel):
    """A detection policy in front of the cell's defense (ALGORITHMS.md §3): detectors flag
    rows, flagged rows get the ``deceptive`` answer, and a client is blocked once a termination
    rule fires. The thief's stream and a benign client's stream (the defender's test images)
    both go through it; the row's ``defender_acc`` is the benign client's accuracy, a refused
    row counting as wrong. PRADA's ``delta: auto`` is calibrated on benign streams of the
    defender's training images (the largest δ with no flag, less ``margin``). The Model-Guardian
    detector (``guardian``) is trained once per victim on the defender's training images (the
    built-in scenario's settings, ``guardian:`` overrides) and cached."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detectors: list[DetectorName] = Field(default_factory=_prada_only, min_length=1)
    prada: dict[str, Any] = Field(default_factory=dict, description="PradaConfig fields")
    guardian: dict[str, Any] = Field(
        default_factory=dict,
        description="GuardianConfig fields over the scenario's defaults (guardian only)",
    )
    margin: float = Field(0.02, ge=0, lt=1, description="subtracted from an auto δ")
    max_flagged: int | None = Field(1000, ge=1, description="block after this many flags")
    window: int | None = Field(None, ge=1, description="rows of the flagged-share rule")
    ratio: float | None = Field(None, gt=0, le=1, description="block at this flagged share")
    deceptive: str | None = Field(None, description="defense for flagged rows (None: deceptive)")
    benign_batch: int = Field(10, ge=1, description="rows per call of the benign client")
    label: str | None = Field(None, description="its name in the report")

    @field_validator("detectors")
    @classmethod
    def _no_repeated_detector(cls, v: list[str]) -> list[str]:
        return _unique(v)

    def resolved(self, where: str) -> dict[str, Any]:
        """The cell's policy setting, every part checked (δ may stay ``"auto"``)."""
        from stealproof import defenses
        from stealproof.detectors.prada import PradaConfig
        from stealproof.policy import PolicyConfig

        rules = {"max_flagged": self.max_flagged, "window": self.window, "ratio": self.ratio}
        try:
            PolicyConfig(**rules)
        except ValidationError as e:
            raise BenchConfigError(
                format_validation_error(e, prefix=where, model=PolicyConfig)
            ) from None
        prada = dict(self.prada)
        auto = prada.get("delta", "auto") == "auto"
        try:
            checked = PradaConfig.model_validate(
                {k: v for k, v in prada.items() if k != "delta"}
                | ({} if auto else {"delta": prada["delta"]})
            )
        except ValidationError as e:
            raise BenchConfigError(
                format_validation_error(e, prefix=f"{where}.prada", model=PradaConfig)
            ) from None
        prada_full = checked.model_dump(mode="json") | ({"delta": "auto"} if auto else {})
        if self.guardian and "guardian" not in self.detectors:
            raise BenchConfigError(f"{where}.guardian: set, but detectors has no guardian")
        if self.prada and "prada" not in self.detectors:
            raise BenchConfigError(f"{where}.prada: set, but detectors has no prada")
        if "guardian" in self.detectors:
            from stealproof.detectors.guardian import GuardianConfig, guardian_config

            try:
                guardian_config("digits", **self.guardian)
            except ValidationError as e:
                raise BenchConfigError(
                    format_validation_error(e, prefix=f"{where}.guardian", model=GuardianConfig)
                ) from None
        if self.deceptive is not None and self.deceptive not in defenses.available():
            raise BenchConfigError(
                f"{where}.deceptive: "
                + unknown_name_message("defense", self.deceptive, defenses.available())
            )
        given = self.model_dump(exclude_defaults=True, exclude={"label", "detectors"})
        shown = ",".join(f"{k}={v}" for k, v in given.items() if k not in ("prada", "guardian"))
        nested = [f"{k}={v}" for k, v in [*prada.items(), *self.guardian.items()]]
        shown = ",".join(x for x in [shown, *nested] if x)
        label = self.label or "+".join(self.detectors) + (f"({shown})" if shown else "")
        return {
            "detectors": list(self.detectors),
            "prada": prada_full,
            "guardian": dict(self.guardian),
            "margin": self.margin,
            "rules": rules,
            "deceptive": self.deceptive,
            "benign_batch": self.benign_batch,
            "label": label,
        }


class ArtSpec(ThiefSpec):
    """ART's extraction attacks (``art:copycat``, and ``art:knockoffnets`` below; needs
    ``stealproof[art]``) through :mod:`stealproof.integrations.art`: ART queries the box and
    trains the clone with its own ``fit`` — the scenario's clone training without its schedule,
    which ART's ``fit`` lacks. Each ``label_only`` value is its own cell."""

    query_batch: int = Field(128, ge=1, description="rows per black-box call")
    augment: bool = Field(True, description="augmented repeats once the pool is used up")


class ArtKnockoffSpec(ArtSpec):
    """ART's KnockoffNets; its sampling ``policy`` is a grid axis (adaptive: one row a query)."""

    policy: list[Policy] = Field(default_factory=_default_policies, min_length=1)

    @field_validator("policy")
    @classmethod
    def _no_repeated_policy(cls, v: list[Any]) -> list[Any]:
        return _unique(v)


#: Largest query budget of a cell (a larger one would not fit in memory anyway).
MAX_BUDGET = 100_000_000
#: Largest seed (every RNG the benchmark seeds accepts it, ``seed + 1`` included).
MAX_SEED = 2**31 - 2

#: Attacks a config may name, with the model of their options.
ATTACK_SPECS: dict[str, type[ThiefSpec]] = {
    "knockoff": KnockoffSpec,
    "jbda": JacobianSpec,
    "jb-self": JacobianSpec,
    "jb-top3": JacobianSpec,
    "dfme": DataFreeSpec,
    "maze": DataFreeSpec,
    "dast": DataFreeSpec,
    "art:knockoffnets": ArtKnockoffSpec,
    "art:copycat": ArtSpec,
}


def _no_policy() -> list[PolicySpec | None]:
    return [None]


class BenchConfig(BaseModel):
    """A benchmark grid; validating it checks every name and parameter (see module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "bench"
    description: str = ""
    scenarios: list[ScenarioSpec] = Field(min_length=1)
    attacks: dict[str, Any] = Field(default_factory=lambda: {"knockoff": {}}, min_length=1)
    victims: list[VictimSpec] = Field(default_factory=lambda: [VictimSpec()], min_length=1)
    policies: list[PolicySpec | None] = Field(
        default_factory=_no_policy, min_length=1, description="None: no detection policy"
    )
    defenses: dict[str, Any] = Field(min_length=1)
    budgets: list[Annotated[int, Field(ge=1, le=MAX_BUDGET)]] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [0], min_length=1
    )
    data_dir: str | None = Field(None, description="directory of dataset files (file datasets)")

    @field_validator("budgets", "seeds")
    @classmethod
    def _no_repeats(cls, v: list[int]) -> list[int]:
        return _unique(v)

    @model_validator(mode="after")
    def _check_grid(self) -> BenchConfig:
        expand(self)  # raises BenchConfigError naming the key
        return self


# --------------------------------------------------------------------------- cells


class Cell(BaseModel):
    """One experiment of the grid: everything that determines its numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str
    spec: Scenario
    attack: str
    attack_params: dict[str, Any]
    label_only: tuple[bool, ...]
    defense: str
    params: dict[str, Any] = Field(description="the setting as written (the swept knobs)")
    defense_config: dict[str, Any] = Field(description="the full defense config, seed included")
    budget: int
    seed: int
    victim: dict[str, Any] | None = Field(None, description="None: the scenario's training")
    policy: dict[str, Any] | None = Field(None, description="None: no detection policy")
    data_dir: str | None = Field(None, description="where data files live (not hashed)")

    def key(self) -> dict[str, Any]:
        """The hashed content: everything except where the data files happen to live (and the
        victim and policy settings at their defaults, so older cells keep their hashes)."""
        exclude = {"data_dir"} | {k for k in ("victim", "policy") if getattr(self, k) is None}
        return self.model_dump(mode="json", exclude=exclude)

    def cell_hash(self) -> str:
        """Stable SHA-256 of :meth:`key` (independent of the package version)."""
        return stable_hash(self.key())

    @property
    def attack_label(self) -> str:
        """``knockoff-random``, ``knockoff-adaptive``: the attack and its sampling policy."""
        return attack_label(self.attack, self.attack_params)


def attack_label(attack: str, attack_params: Mapping[str, Any]) -> str:
    """Human label of an attack setting: its name, the sampling policy (if any) and the
    counter-moves that differ from the default (``knockoff-random avg8 clone=mlp``)."""
    policy = attack_params.get("policy")
    label = f"{attack}-{policy}" if policy else attack
    if attack_params.get("rounds") is not None:
        label += f" rounds={attack_params['rounds']}"
    if attack_params.get("average", 1) != 1:
        label += f" avg{attack_params['average']}"
    if attack_params.get("clone_model", "same") != "same":
        label += f" clone={attack_params['clone_model']}"
    if attack_params.get("pool"):
        label += f" pool={attack_params['pool']}"
    return label


def _resolve_training(where: str, base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as e:
        raise BenchConfigError(
            format_validation_error(e, prefix=where, model=TrainConfig)
        ) from None


def _resolve_scenario(i: int, spec: ScenarioSpec) -> tuple[str, Scenario]:
    from stealproof.data import available_datasets
    from stealproof.models import available_models

    where = f"scenarios[{i}]"
    base = SCENARIOS.get(spec.name) if spec.name is not None else None
    if base is None:
        missing = [k for k in ("dataset", "model", "pool") if getattr(spec, k) is None]
        if missing:
            if spec.name is not None:
                unknown = unknown_name_message("scenario", spec.name, sorted(SCENARIOS))
                raise BenchConfigError(
                    f"{where}.name: {unknown}; or give dataset, model and pool "
                    f"(missing: {', '.join(missing)})"
                )
            raise BenchConfigError(
                f"{where}: give name (one of {', '.join(sorted(SCENARIOS))}) or dataset, model "
                f"and pool (missing: {', '.join(missing)})"
            )
        # a dataset's own defaults (experiment.scenario_for), as every other entry point uses
        fallback = scenario_for(spec.dataset or "")
        victim_base, clone_base = fallback.victim_training, fallback.clone_training
    else:
        victim_base, clone_base = base.victim_training, base.clone_training
    dataset = spec.dataset or (base.dataset if base else "")
    model = spec.model or (base.model if base else "")
    pool = spec.pool or (base.pool if base else "")
    datasets = sorted(d for d in available_datasets() if d != "file:PATH")
    if dataset.startswith("file:"):
        _check_file_pool(f"{where}.dataset", dataset.removeprefix("file:"))
    elif dataset not in datasets:
        raise BenchConfigError(
            f"{where}.dataset: {unknown_name_message('dataset', dataset, datasets)} or file:PATH"
        )
    models = available_models()
    if model not in models:
        raise BenchConfigError(f"{where}.model: {unknown_name_message('model', model, models)}")
    check_pool(f"{where}.pool", pool)
    scenario = Scenario(
        dataset=dataset,
        model=model,
        pool=pool,
        victim_training=_resolve_training(
            f"{where}.victim_training", victim_base, spec.victim_training
        ),
        clone_training=_resolve_training(
            f"{where}.clone_training", clone_base, spec.clone_training
        ),
    )
    return spec.name or dataset, scenario


def check_pool(where: str, pool: str) -> None:
    """A pool name: built-in, a file dataset's name, ``<dataset>-unlabeled``, ``file:PATH``
    (checked on disk) or a mixture of them joined by ``+``."""
    from stealproof.data import available_datasets, available_pools

    if "+" in pool and not pool.startswith("file:"):
        parts = pool.split("+")
        if any(not p for p in parts) or len(set(parts)) != len(parts):
            raise BenchConfigError(
                f"{where}: {pool!r}: a mixture names two or more different pools joined by "
                "'+', e.g. shapes+noise"
            )
        for part in parts:
            check_pool(where, part)
        return
    datasets = [d for d in available_datasets() if d != "file:PATH"]
    placeholders = ("file:PATH", "<dataset>-unlabeled", "<file dataset>", "<pool>+<pool>")
    pools = [p for p in available_pools() if p not in placeholders]
    pools += [d for d in datasets if available_datasets()[d] == "files"]
    held_back = pool.removesuffix("-unlabeled") if pool.endswith("-unlabeled") else None
    if pool.startswith("file:"):
        path = pool.removeprefix("file:")
        if held_back is not None and not Path(path).exists():
            # file:PATH-unlabeled: the held-back split of dataset file:PATH
            path = held_back.removeprefix("file:")
        _check_file_pool(where, path)
    elif not (pool in pools or (held_back is not None and held_back in datasets)):
        raise BenchConfigError(
            f"{where}: {unknown_name_message('pool', pool, pools)}, "
            "<dataset>-unlabeled or file:PATH"
        )


def _check_file_pool(where: str, path: str) -> None:
    """A ``file:`` pool must name an existing file or a directory with files in it.

    Its contents are read (and checked) by the runner before any victim trains; this catches the
    common mistakes (a typo, a missing download) while the config is still being loaded.
    """
    if not path:
        raise BenchConfigError(f"{where}: file: needs a path (file:PATH, a .npz or a directory)")
    p = Path(path)
    try:
        if p.is_file():
            return
        if not p.exists():
            raise BenchConfigError(
                f"{where}: {path}: no such file or directory (file:PATH takes a .npz file or a "
                "directory of IDX, CIFAR or image files; relative paths start at the current "
                "directory)"
            )
        if not p.is_dir() or not any(q.is_file() for q in p.rglob("*")):
            raise BenchConfigError(f"{where}: {path}: the directory holds no files")
    except OSError as e:
        raise BenchConfigError(f"{where}: {path}: cannot read it ({e.strerror})") from None


def _string_keys(where: str, params: dict[Any, Any]) -> dict[str, Any]:
    """Parameter names must be strings (YAML reads ``1: 2`` as an integer key)."""
    for k in params:
        if not isinstance(k, str):
            raise BenchConfigError(f"{where}: parameter names must be strings, got {k!r}")
    return params


def _expand_strengths(where: str, value: Any) -> list[dict[str, Any]]:
    """A defense's settings: a mapping of value lists (cartesian product) or a list of settings."""
    if value is None:
        return [{}]
    if isinstance(value, list):
        if not value:
            raise BenchConfigError(f"{where}: expected at least one setting, got an empty list")
        for j, item in enumerate(value):
            if item is not None and not isinstance(item, dict):
                raise BenchConfigError(
                    f"{where}[{j}]: expected a mapping of parameters like {{eps: 0.5}}, "
                    f"got {item!r}"
                )
        return [_string_keys(f"{where}[{j}]", dict(item or {})) for j, item in enumerate(value)]
    if isinstance(value, dict):
        _string_keys(where, value)
        keys = list(value)
        for k in keys:
            v = value[k]
            if not isinstance(v, list):
                raise BenchConfigError(
                    f"{where}.{k}: expected a list of values like [{v!r}], got {v!r}"
                )
            if not v:
                raise BenchConfigError(f"{where}.{k}: expected a non-empty list of values")
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*value.values())]
    raise BenchConfigError(
        f"{where}: expected parameter lists like {{eps: [0.5, 1.0]}} or a list of settings "
        f"like [{{}}], got {value!r}"
    )


def resolve_defenses(raw: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each defense's settings, checked against the registry and the defense's ``Config``."""
    from stealproof import defenses

    known = defenses.available()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, value in raw.items():
        where = f"defenses.{name}"
        if name not in known:
            raise BenchConfigError(f"{where}: {unknown_name_message('defense', name, known)}")
        cls = defenses.get_defense_class(name)
        settings: list[dict[str, Any]] = []
        for params in _expand_strengths(where, value):
            try:
                cls.Config.model_validate(params)
            except ValidationError as e:
                raise BenchConfigError(
                    format_validation_error(
                        e, prefix=where, model=cls.Config, unknown="unknown parameter"
                    )
                ) from None
            try:
                cfg = cls.make_config(**params)
            except StealproofError as e:
                raise BenchConfigError(f"{where}: {e}") from None
            dumped = cfg.model_dump(mode="json")
            normal = {k: dumped[k] for k in params}
            if normal in settings:
                raise BenchConfigError(f"{where}: the setting {normal} is listed twice")
            settings.append(normal)
        out[name] = settings
    return out


def resolve_attacks(raw: Mapping[str, Any]) -> dict[str, ThiefSpec]:
    """Each attack's options, checked against :data:`ATTACK_SPECS`."""
    out: dict[str, ThiefSpec] = {}
    for name, value in raw.items():
        where = f"attacks.{name}"
        if name not in ATTACK_SPECS:
            raise BenchConfigError(
                f"{where}: {unknown_name_message('attack', name, sorted(ATTACK_SPECS))}"
            )
        model = ATTACK_SPECS[name]
        if value is not None and not isinstance(value, dict):
            raise BenchConfigError(f"{where}: expected a mapping of options, got {value!r}")
        try:
            out[name] = spec = model.model_validate(value or {})
        except ValidationError as e:
            raise BenchConfigError(format_validation_error(e, prefix=where, model=model)) from None
        for j, pool in enumerate(spec.pool):
            check_pool(f"{where}.pool[{j}]", pool)
    return out


def _full_defense_config(name: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The defense's whole config; its ``seed`` (when it has one) follows the cell's seed."""
    from stealproof import defenses

    cls = defenses.get_defense_class(name)
    full = dict(params)
    if "seed" in cls.Config.model_fields and "seed" not in full:
        full["seed"] = seed
    return cls.make_config(**full).model_dump(mode="json")


def attack_settings(
    attack: str, options: ThiefSpec
) -> list[tuple[dict[str, Any], tuple[bool, ...]]]:
    """Every (attack parameters, label-only clones) of one attack's axes.

    Counter-moves at their defaults are left out of the parameters, so a cell's hash (and the
    rows of an earlier run) do not change when an axis is added to the grid later. KnockoffNets
    trains all its ``label_only`` clones in one cell, from one transfer set; the other attacks
    run once per value.
    """
    moves = []
    pools: list[str | None] = [*options.pool] or [None]
    for average, clone_model, pool in itertools.product(
        options.average, options.clone_model, pools
    ):
        extra: dict[str, Any] = {}
        if average != 1:
            extra["average"] = average
        if clone_model != "same":
            extra["clone_model"] = clone_model
        if pool is not None:
            extra["pool"] = pool
        moves.append(extra)
    out: list[tuple[dict[str, Any], tuple[bool, ...]]] = []
    if isinstance(options, KnockoffSpec):
        for policy in options.policy:
            base = {
                "policy": policy,
                "query_batch": options.query_batch,
                "augment": options.augment,
            }
            out += [({**base, **m}, tuple(options.label_only)) for m in moves]
    elif isinstance(options, JacobianSpec):
        for rounds, m, lo in itertools.product(options.rounds, moves, options.label_only):
            out.append(({"rounds": rounds, "seed_images": options.seed_images, **m}, (lo,)))
    elif isinstance(options, ArtSpec):
        policies = options.policy if isinstance(options, ArtKnockoffSpec) else [None]
        for policy, m, lo in itertools.product(policies, moves, options.label_only):
            base = {"query_batch": options.query_batch, "augment": options.augment}
            if policy is not None:
                base = {"policy": policy, **base}
            out.append(({**base, **m}, (lo,)))
    else:
        assert isinstance(options, DataFreeSpec)
        for m, lo in itertools.product(moves, options.label_only):
            out.append(({"batch_size": options.batch_size, **m}, (lo,)))
    return out


def _check_data_free_budgets(attacks: Mapping[str, ThiefSpec], budgets: list[int]) -> None:
    """A data-free attack needs at least one iteration's rows (per averaged copy)."""
    from stealproof.attacks import DATA_FREE_ATTACKS

    for name, options in attacks.items():
        if not isinstance(options, DataFreeSpec):
            continue
        per_iter = DATA_FREE_ATTACKS[name](batch_size=options.batch_size).rows_per_iteration()
        need = per_iter * max(options.average)
        if min(budgets) < need:
            raise BenchConfigError(
                f"attacks.{name}: one iteration spends {per_iter} rows (batch_size "
                f"{options.batch_size}, average {max(options.average)}: {need}); the smallest "
                f"budget is {min(budgets)} (lower batch_size or raise the budget)"
            )


def _labels_unique(key: str, kind: str, labels: list[str]) -> None:
    """Two settings of one axis may not share a name: the report could not tell them apart."""
    for i, name in enumerate(labels):
        if name in labels[:i]:
            raise BenchConfigError(f"{key}[{i}]: a {kind} labelled {name!r} is already listed")


def expand(config: BenchConfig) -> list[Cell]:
    """All cells of the grid, grouped by scenario and seed (the order they run in serially)."""
    scenarios: list[tuple[str, Scenario]] = []
    for i, spec in enumerate(config.scenarios):
        label, scenario = _resolve_scenario(i, spec)
        if any(label == other for other, _ in scenarios):
            raise BenchConfigError(
                f"scenarios[{i}].name: a scenario labelled {label!r} is already listed"
            )
        scenarios.append((label, scenario))
    attacks = resolve_attacks(config.attacks)
    settings = resolve_defenses(config.defenses)
    _check_data_free_budgets(attacks, config.budgets)
    victims = [v.resolved(f"victims[{i}]") for i, v in enumerate(config.victims)]
    _labels_unique("victims", "victim", [v["label"] if v else "plain" for v in victims])
    policies = [p.resolved(f"policies[{i}]") if p else None for i, p in enumerate(config.policies)]
    _labels_unique("policies", "policy", [p["label"] if p else "none" for p in policies])
    cells: list[Cell] = []
    for (label, scenario), seed, budget, victim, policy in itertools.product(
        scenarios, config.seeds, config.budgets, victims, policies
    ):
        for attack, options in attacks.items():
            for attack_params, label_only in attack_settings(attack, options):
                for defense, params_list in settings.items():
                    for params in params_list:
                        cells.append(
                            Cell(
                                scenario=label,
                                spec=scenario,
                                attack=attack,
                                attack_params=attack_params,
                                label_only=label_only,
                                defense=defense,
                                params=params,
                                defense_config=_full_defense_config(defense, params, seed),
                                budget=budget,
                                seed=seed,
                                victim=victim,
                                policy=policy,
                                data_dir=config.data_dir,
                            )
                        )
    return cells


# --------------------------------------------------------------------------- errors, loading


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """Field names of the model that holds ``loc``'s last key, when it is a known model."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = field.annotation
        args = [a for a in typing.get_args(current) if a is not type(None)]
        while typing.get_origin(current) is not None and args:
            current = args[0]
            args = [a for a in typing.get_args(current) if a is not type(None)]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _loc_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.isprintable() or not part.strip() or part != part.strip():
            out += f"[{part!r}]"  # a key of blanks or control characters, shown quoted
        else:
            out += f".{part}" if out else part
    return out


def format_validation_error(
    err: ValidationError,
    *,
    prefix: str = "",
    model: type[BaseModel] = BenchConfig,
    unknown: str = "unknown key",
) -> str:
    """One line for all of pydantic's errors, each naming its key (``scenarios[0].model``)."""
    parts = []
    for e in err.errors():
        ctx = e.get("ctx") or {}
        cause = ctx.get("error")
        if isinstance(cause, BenchConfigError):
            parts.append(str(cause))
            continue
        loc = tuple(e["loc"])
        key = _loc_text(loc)
        key = f"{prefix}.{key}" if prefix and key else (prefix or key or "<config>")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            parts.append(f"{key}: {unknown}{hint}")
            continue
        msg = str(e["msg"]).removeprefix("Value error, ")
        got = e.get("input")
        show = e["type"] != "missing" and not isinstance(got, dict | list)
        parts.append(f"{key}: {msg}" + (f" (got {got!r})" if show else ""))
    return "; ".join(parts)


def parse_config(data: Any, *, source: str = "config") -> BenchConfig:
    """Validate plain data (from YAML/TOML/JSON or Python) into a :class:`BenchConfig`."""
    if not isinstance(data, dict):
        raise BenchConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    bad = _non_finite(data)
    if bad is not None:
        key, value = bad
        raise BenchConfigError(
            f"{source}: {key or '<config>'}: expected a finite number, got {value!r} (NaN and "
            "infinity have no meaning in a benchmark config)"
        )
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as e:
        raise BenchConfigError(f"{source}: {format_validation_error(e)}") from None
    except BenchConfigError as e:
        raise BenchConfigError(f"{source}: {e}") from None
    except RecursionError:
        raise BenchConfigError(
            f"{source}: the config refers to itself (a YAML alias loop)"
        ) from None


def _non_finite(data: Any) -> tuple[str, float] | None:
    """The key path and value of the first NaN or ±infinity in plain config data, if any.

    Shared sub-objects (YAML aliases) are visited once, so alias loops and alias bombs end.
    """
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return where, value
            continue
        if not isinstance(value, dict | list):
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            items = [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
        else:
            items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        stack.extend(reversed(items))
    return None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key listed twice in one mapping is an error.

    Plain PyYAML keeps the last value silently, so ``mad: ...`` written twice would drop a sweep.
    Merge keys (``<<: *base``) still override as YAML specifies.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if line is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {line})",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _json_object_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BenchConfigError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_config_file(path: str | Path) -> Any:
    """The plain data of a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file (YAML otherwise)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BenchConfigError(f"{p}: cannot read the config ({e.strerror})") from None
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text, object_pairs_hook=_json_object_no_duplicates)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except BenchConfigError as e:
        raise BenchConfigError(f"{p}: not valid JSON ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise BenchConfigError(f"{p}: not valid TOML ({e})") from None
    except json.JSONDecodeError as e:
        raise BenchConfigError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise BenchConfigError(f"{p}: not valid YAML ({problem}{where})") from None
    except (RecursionError, ValueError, OverflowError) as e:  # e.g. an absurdly nested document
        raise BenchConfigError(f"{p}: cannot read the config ({type(e).__name__})") from None


def load_config(source: str | Path, *, data_dir: str | Path | None = None) -> BenchConfig:
    """A config file (YAML/TOML/JSON) or the name of a built-in suite, fully validated.

    ``data_dir`` (``bench run --data-dir``) replaces the config's ``data_dir``: where the file
    datasets it names (``mnist``, ``cifar10``, ...) are read; the ``paper-*`` suites need it.
    """
    from stealproof.bench.suites import SUITES, suite_data

    if data_dir is not None and not Path(data_dir).is_dir():
        raise BenchConfigError(f"--data-dir: {data_dir}: no such directory")

    def parse(data: Any, where: str) -> BenchConfig:
        if data_dir is not None and isinstance(data, dict):
            data = {**data, "data_dir": str(data_dir)}
        return parse_config(data, source=where)

    p = Path(source)
    if p.is_file():
        return parse(read_config_file(p), str(p))
    if str(source) in SUITES:
        return parse(suite_data(str(source)), f"suite {source}")
    raise BenchConfigError(
        f"CONFIG_OR_SUITE: {str(source)!r} is neither a config file nor a built-in suite "
        f"(suites: {', '.join(SUITES)})"
    )


def config_to_yaml(config: BenchConfig) -> str:
    """The config as YAML (a starting point for your own)."""
    data = config.model_dump(mode="json", exclude_defaults=False)
    return yaml.safe_dump(data, sort_keys=False)
