"""One benchmark cell: the plan of a run, the workspace of cached models, and running a cell.

Shared by both backends: the serial runner (:mod:`stealproof.bench.runner`) and the Ray backend
(:mod:`stealproof.bench.ray_backend`) run cells with :func:`run_cell` in a :class:`Workspace`
whose victims and defense models :func:`prepare_artifacts` built in the driver.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import __version__, _progress, defenses, metrics
from stealproof.attacks import DATA_FREE_ATTACKS, AveragingBlackBox, create_jacobian_attack
from stealproof.attacks.base import BlackBoxLike, CloneFactory, QueryGuard, clone_factory_like
from stealproof.attacks.knockoff import KnockoffConfig, KnockoffNets
from stealproof.bench.cache import (
    ArtifactCache,
    builds_models,
    data_fingerprint,
    defense_key_content,
    tensor_fingerprint,
    victim_key,
)
from stealproof.bench.config import BenchConfig, Cell, expand
from stealproof.bench.policies import auto_delta, benign_view, build_policy, guardian_settings
from stealproof.bench.store import ResultStore, row_version
from stealproof.data.datasets import Dataset, load_dataset
from stealproof.data.pools import Pool, load_pool
from stealproof.defenses.base import Defense
from stealproof.demo import QUERY_LOG_SIZE
from stealproof.detectors.guardian import GuardianConfig, GuardianDetector
from stealproof.errors import StealproofError
from stealproof.experiment import CloneCache, defense_cost
from stealproof.fingerprint import stable_hash
from stealproof.models.base import Classifier
from stealproof.oracle import BlackBox

RowCallback = Callable[[dict[str, Any]], None]


class BenchBackendError(StealproofError):
    """A backend cannot run (e.g. Ray is not installed or the cluster is unreachable)."""


def cache_dir(out_dir: str | Path) -> Path:
    """Where a run keeps its victims and defense models: ``DIR/cache``."""
    return Path(out_dir) / "cache"


@dataclass
class RunPlan:
    """The cells of a config and which of them still need to run in ``out_dir``.

    ``stale`` are finished cells whose row was made by another package version (``versions``
    lists those versions); they are re-run only with ``rerun_stale``.
    """

    config: BenchConfig
    out_dir: Path
    cells: list[Cell]
    pending: list[Cell]
    stale: list[Cell] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    rerun_stale: bool = False

    @property
    def skipped(self) -> int:
        """Cells that already have a row in ``results.jsonl`` and are not re-run."""
        return len(self.cells) - len(self.pending)

    @property
    def reused_stale(self) -> int:
        """Cells whose row of another package version is kept (no ``rerun_stale``)."""
        return 0 if self.rerun_stale else len(self.stale)


def plan_run(config: BenchConfig, out_dir: str | Path, *, rerun_stale: bool = False) -> RunPlan:
    """Expand the grid and drop the cells whose rows are already in ``DIR/results.jsonl``.

    A row made by another package version is kept (and counted in ``stale``) unless
    ``rerun_stale``; then its cell runs again and the new row supersedes the old one.
    """
    out = Path(out_dir)
    store = ResultStore(out).open()
    done = store.index()
    cells = expand(config)
    stale = [
        c
        for c in cells
        if c.cell_hash() in done and row_version(done[c.cell_hash()]) != __version__
    ]
    stale_hashes = {c.cell_hash() for c in stale}
    pending = [
        c
        for c in cells
        if c.cell_hash() not in done or (rerun_stale and c.cell_hash() in stale_hashes)
    ]
    versions = sorted({row_version(done[c.cell_hash()]) for c in stale})
    return RunPlan(
        config=config,
        out_dir=out,
        cells=cells,
        pending=pending,
        stale=stale,
        versions=versions,
        rerun_stale=rerun_stale,
    )


@dataclass
class Workspace:
    """What one process has loaded: datasets, pools, victims, defense models, clones.

    Everything here is read-only once loaded, so cells can share it; clones are shared only
    within a (scenario, seed) group and dropped when the group changes.
    """

    cache: ArtifactCache
    device: torch.device | str | None = None
    _datasets: dict[tuple[str, str | None], Dataset] = field(default_factory=dict)
    _data_fps: dict[tuple[str, str | None], str] = field(default_factory=dict)
    _pools: dict[tuple[Any, ...], Pool] = field(default_factory=dict)
    _query_logs: dict[tuple[Any, ...], tuple[Tensor, str]] = field(default_factory=dict)
    _victims: dict[str, tuple[Classifier, dict[str, Any]]] = field(default_factory=dict)
    _models: dict[str, dict[str, Any]] = field(default_factory=dict)
    _group: tuple[Any, ...] | None = None
    _deltas: dict[tuple[str, str], float] = field(default_factory=dict)
    _guardians: dict[str, GuardianDetector] = field(default_factory=dict)
    clones: CloneCache = field(default_factory=CloneCache)

    def guardian_key(self, cell: Cell) -> str | None:
        """Cache key of the cell's Model-Guardian bundle (None: its policy has no guardian)."""
        cfg = guardian_for(cell)
        if cfg is None:
            return None
        content = {"kind": "guardian", "victim": self.victim_key(cell),
                   "config": cfg.model_dump(mode="json")}  # fmt: skip
        return stable_hash(content)[:32]

    def guardian(self, cell: Cell) -> GuardianDetector | None:
        """The cell's Model-Guardian detector, its bundle checked against the cell's victim."""
        key = self.guardian_key(cell)
        if key is None:
            return None
        if key not in self._guardians:
            bundle = self.cache.load_guardian(key, self.victim_fingerprint(self.victim_key(cell)))
            if self.device is not None:
                bundle.to(self.device)
            self._guardians[key] = GuardianDetector(bundle)
        return self._guardians[key]

    def prada_delta(self, cell: Cell) -> float:
        """PRADA's δ of the cell's policy: as configured, or calibrated once per victim."""
        assert cell.policy is not None and "prada" in cell.policy["detectors"]
        delta = cell.policy["prada"]["delta"]
        if delta != "auto":
            return float(delta)
        vkey = self.victim_key(cell)
        key = (vkey, stable_hash({k: cell.policy[k] for k in ("prada", "margin")}))
        if key not in self._deltas:
            victim, _ = self.victim(vkey)
            ds = self.dataset(cell.spec.dataset, cell.data_dir)
            self._deltas[key] = auto_delta(victim, ds, cell.policy, cell.seed)
        return self._deltas[key]

    def dataset(self, name: str, data_dir: str | None) -> Dataset:
        key = (name, data_dir)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(name, data_dir)
        return self._datasets[key]

    def data_fingerprint(self, name: str, data_dir: str | None) -> str:
        """Fingerprint of a dataset's contents (part of every victim key)."""
        key = (name, data_dir)
        if key not in self._data_fps:
            self._data_fps[key] = data_fingerprint(self.dataset(name, data_dir))
        return self._data_fps[key]

    def pool(self, cell: Cell, ds: Dataset, name: str | None = None) -> Pool:
        """A pool at the dataset's image shape, drawn with the cell's seed (default: the
        scenario's pool)."""
        c, h, w = ds.input_shape
        name = name or cell.spec.pool
        key = (name, c, h, w, cell.seed, cell.data_dir)
        if key not in self._pools:
            self._pools[key] = load_pool(
                name,
                channels=c,
                image_size=(h, w),
                seed=cell.seed,
                data_dir=cell.data_dir,
            )
        return self._pools[key]

    def victim_key(self, cell: Cell) -> str:
        """Cache key of the cell's victim (scenario, seed and the dataset's contents)."""
        fp = self.data_fingerprint(cell.spec.dataset, cell.data_dir)
        return victim_key(cell.spec, cell.seed, fp, cell.victim)

    def query_log(self, cell: Cell) -> tuple[Tensor, str]:
        """The defender's log of earlier queries and its fingerprint.

        As in the demo: another draw from the thief's population (the cell's pool, seeded from
        the cell's seed), which GRAD² distils its surrogate on.
        """
        ds = self.dataset(cell.spec.dataset, cell.data_dir)
        c, h, w = ds.input_shape
        key = (cell.spec.pool, c, h, w, cell.seed, cell.data_dir)
        if key not in self._query_logs:
            images, _ = self.pool(cell, ds).draw(
                QUERY_LOG_SIZE, torch.Generator().manual_seed(cell.seed + 1)
            )
            self._query_logs[key] = (images, tensor_fingerprint(images))
        return self._query_logs[key]

    def bundle(self, cell: Cell) -> tuple[str, dict[str, Any]] | None:
        """Cache key and key content of the models the cell's defense needs (None: none)."""
        cls = defenses.get_defense_class(cell.defense)
        if not builds_models(cls):
            return None
        _, query = self.query_log(cell)
        content = defense_key_content(
            self.victim_key(cell), cls, cell.defense_config, query=query, seed=cell.seed
        )
        return stable_hash(content)[:32], content

    def bundle_key(self, cell: Cell) -> str | None:
        """Cache key of the models the cell's defense needs (``None``: it needs none)."""
        b = self.bundle(cell)
        return None if b is None else b[0]

    def victim(self, key: str) -> tuple[Classifier, dict[str, Any]]:
        if key not in self._victims:
            model, meta = self.cache.load_victim(key)  # its stamp is checked
            if self.device is not None:
                model.to(self.device)
            self._victims[key] = (model, meta)
        return self._victims[key]

    def victim_fingerprint(self, key: str) -> str:
        """Fingerprint of the cached victim ``key`` (from its verified stamp)."""
        _, meta = self.victim(key)
        return str(meta["stamp"]["victim"])

    def defense_models(self, key: str, vkey: str) -> dict[str, Any]:
        """The cached models of bundle ``key``, checked to be made for victim ``vkey``."""
        if key not in self._models:
            self._models[key] = self.cache.load_defense_models(key, self.victim_fingerprint(vkey))
        return self._models[key]

    def enter_group(self, group: tuple[Any, ...]) -> None:
        """Drop shared clones (and defense models) when moving to another (scenario, seed)."""
        if group != self._group:
            self._group = group
            self.clones = CloneCache()
            self._models.clear()


def check_inputs(cells: list[Cell], ws: Workspace) -> None:
    """Load every dataset and pool the cells use, so a bad one fails before any training."""
    for cell in cells:
        ds = ws.dataset(cell.spec.dataset, cell.data_dir)
        ws.pool(cell, ds)
        thief = thief_pool(cell)
        if thief is not None:
            ws.pool(cell, ds, thief)


def prepare_artifacts(
    cells: list[Cell], ws: Workspace, *, progress: Progress | None = None
) -> None:
    """Train (or find cached) every victim and defense model bundle the cells need.

    Datasets and pools are loaded first (:func:`check_inputs`); a cached entry that does not
    match its stamp is rebuilt with a logged warning (see :mod:`stealproof.bench.cache`).
    """
    check_inputs(cells, ws)
    victims: dict[str, Cell] = {}
    for cell in cells:
        victims.setdefault(ws.victim_key(cell), cell)
    todo = [k for k in victims if not ws.cache.has_victim(k)]
    if todo:
        with _progress.task(progress, "victims", total=len(todo)) as step:
            for key in todo:
                cell = victims[key]
                ds = ws.dataset(cell.spec.dataset, cell.data_dir)
                ws.cache.ensure_victim(
                    cell.spec,
                    cell.seed,
                    ds,
                    victim=cell.victim,
                    data_dir=cell.data_dir,
                    device=ws.device,
                    progress=progress,
                )
                step(1)
    _prepare_guardians(cells, ws, progress)
    bundles: dict[str, tuple[Cell, dict[str, Any]]] = {}
    for cell in cells:
        b = ws.bundle(cell)
        if b is not None:
            bundles.setdefault(b[0], (cell, b[1]))
    todo_b = [
        k
        for k, (cell, _) in bundles.items()
        if not ws.cache.has_defense(k, ws.victim_fingerprint(ws.victim_key(cell)))
    ]
    if not todo_b:
        return
    with _progress.task(progress, "defense models", total=len(todo_b)) as step:
        for key in todo_b:
            cell, content = bundles[key]
            ds = ws.dataset(cell.spec.dataset, cell.data_dir)
            victim, _ = ws.victim(ws.victim_key(cell))
            cls = defenses.get_defense_class(cell.defense)
            query_log, _ = ws.query_log(cell)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cell.seed)
                ws.cache.ensure_defense(
                    key,
                    cls,
                    cell.defense_config,
                    victim,
                    ds.train.images,
                    query_log,
                    content=content,
                )
            step(1)


def guardian_for(cell: Cell) -> GuardianConfig | None:
    """The Model-Guardian config of the cell's policy, seeded by the cell (None: no guardian)."""
    if cell.policy is None or "guardian" not in cell.policy["detectors"]:
        return None
    return guardian_settings(cell.policy, cell.spec.dataset).model_copy(update={"seed": cell.seed})


def _prepare_guardians(cells: list[Cell], ws: Workspace, progress: Progress | None) -> None:
    """Train (or find cached) the Model-Guardian bundle of every guardian policy's victim."""
    needed: dict[str, Cell] = {}
    for cell in cells:
        key = ws.guardian_key(cell)
        if key is not None:
            needed.setdefault(key, cell)
    todo = {
        k: c
        for k, c in needed.items()
        if not ws.cache.has_guardian(k, ws.victim_fingerprint(ws.victim_key(c)))
    }
    if not todo:
        return
    with _progress.task(progress, "guardian detectors", total=len(todo)) as step:
        for key, cell in todo.items():
            cfg = guardian_for(cell)
            assert cfg is not None
            ds = ws.dataset(cell.spec.dataset, cell.data_dir)
            victim, _ = ws.victim(ws.victim_key(cell))
            ws.cache.ensure_guardian(
                key, victim, ds.train.images, cfg, device=ws.device, progress=progress
            )
            step(1)


def build_defense(cell: Cell, ws: Workspace) -> Defense:
    """The cell's defense, its models (if any) loaded from the cache: ``cls(config, **models)``."""
    cls = defenses.get_defense_class(cell.defense)
    bkey = ws.bundle_key(cell)
    if bkey is None:
        defense = cls(cls.make_config(**cell.defense_config))
    else:
        models = ws.defense_models(bkey, ws.victim_key(cell))
        # fields the cell leaves unset (None) that prepare() set: label_watermark's threshold
        params = dict(cell.defense_config)
        for k, v in ws.cache.prepared_params(bkey).items():
            if params.get(k) is None:
                params[k] = v
        defense = cls(cls.make_config(**params), **models)
    if ws.device is not None:
        defense.to(ws.device)
    return defense


#: Attacks whose thief draws seed images from a pool and grows them by Jacobian steps.
_JACOBIAN = ("jbda", "jb-self", "jb-top3")
#: What ART's ``fit`` cannot do, switched off in the clone training of the ``art:`` attacks.
ART_TRAINING: dict[str, Any] = {
    "schedule": "none",
    "augment": False,
    "stop_after": None,
    "val_fraction": 0.0,
}
#: Attacks whose queries a generator synthesises (no pool).
_DATA_FREE = ("dfme", "maze", "dast")


def thief_pool(cell: Cell) -> str | None:
    """The pool the cell's thief draws from: its ``pool`` axis, else the attack's default
    (the scenario's pool for KnockoffNets, ``<dataset>-unlabeled`` for the Jacobian attacks);
    None for the data-free attacks."""
    if cell.attack in _DATA_FREE:
        return None
    chosen = cell.attack_params.get("pool")
    if chosen:
        return str(chosen)
    return f"{cell.spec.dataset}-unlabeled" if cell.attack in _JACOBIAN else cell.spec.pool


def _steal(
    cell: Cell,
    ws: Workspace,
    box: BlackBox,
    make_clone: CloneFactory,
    ds: Dataset,
    progress: Progress | None,
) -> dict[bool, nn.Module]:
    """Run the cell's thief against ``box``: its clone per ``label_only`` value."""
    train_cfg = cell.spec.clone_training.model_copy(update={"seed": cell.seed})
    average = int(cell.attack_params.get("average", 1))
    thief: BlackBoxLike = box
    if average > 1:
        thief = AveragingBlackBox(box, copies=average, seed=cell.seed)
    budget = cell.budget // average
    pool_name = thief_pool(cell)
    pool = ws.pool(cell, ds, pool_name) if pool_name is not None else None
    arch = cell.attack_params.get("clone_model")
    if cell.attack == "knockoff":
        assert pool is not None
        attack = KnockoffNets(
            KnockoffConfig(
                policy=cell.attack_params["policy"],
                query_batch=cell.attack_params["query_batch"],
                augment=cell.attack_params["augment"],
                train=train_cfg,
                seed=cell.seed,
            )
        )
        # a detection policy may block the thief: it keeps what it was answered
        guard = QueryGuard(thief, attack.name)
        transfer = attack.collect(thief, pool, budget, make_clone, progress=progress, guard=guard)
        return {
            lo: ws.clones.get(
                make_clone,
                transfer,
                train_cfg,
                label_only=lo,
                seed=cell.seed,
                device=ws.device,
                progress=progress,
                description=f"{cell.defense}: {'label-only ' if lo else ''}clone",
                architecture=str(arch or ""),
            )
            for lo in cell.label_only
        }
    (label_only,) = cell.label_only
    if cell.attack in _JACOBIAN:
        assert pool is not None
        jb = create_jacobian_attack(
            cell.attack,
            rounds=cell.attack_params.get("rounds"),
            label_only=label_only,
            seed=cell.seed,
            train=train_cfg,
        )
        g = torch.Generator().manual_seed(cell.seed)
        n = int(cell.attack_params.get("seed_images", 150))
        seeds = pool.images[torch.randperm(len(pool), generator=g)[:n]]
        result = jb.run(thief, seeds, budget, make_clone, device=ws.device, progress=progress)
    elif cell.attack.startswith("art:"):
        from stealproof.integrations.art import art_attack

        assert pool is not None
        art = art_attack(
            cell.attack,
            policy=cell.attack_params.get("policy", "random"),
            query_batch=int(cell.attack_params.get("query_batch", 128)),
            augment=bool(cell.attack_params.get("augment", True)),
            label_only=label_only,
            seed=cell.seed,
            train=train_cfg.model_copy(update=ART_TRAINING),
        )
        result = art.run(thief, pool, budget, make_clone, device=ws.device, progress=progress)
    else:
        attack_cls = DATA_FREE_ATTACKS[cell.attack]
        free = attack_cls(
            label_only=label_only,
            seed=cell.seed,
            batch_size=int(cell.attack_params.get("batch_size", 256)),
        )
        result = free.run(thief, budget, make_clone, device=ws.device, progress=progress)
    return {label_only: result.clone}


def run_cell(cell: Cell, ws: Workspace, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run one cell and return its result row (see ``store.ROW_FIELDS``)."""
    spec = cell.spec
    ds = ws.dataset(spec.dataset, cell.data_dir)
    victim, meta = ws.victim(ws.victim_key(cell))
    start = time.perf_counter()  # the cell's own work; loading shared data is not counted
    defense = build_defense(cell, ws)
    test_x, test_y = ds.test.images, ds.test.labels
    arch = cell.attack_params.get("clone_model")
    make_clone = clone_factory_like(victim, arch)
    policy, delta = None, None
    if cell.policy is None:
        box = BlackBox(victim, defense, budget=cell.budget, client_id=f"thief-{cell.defense}")
    else:
        delta = ws.prada_delta(cell) if "prada" in cell.policy["detectors"] else None
        policy = build_policy(cell.policy, defense, delta, ws.guardian(cell))
        box = BlackBox(victim, policy=policy, budget=cell.budget, client_id="thief")
    accs: dict[bool, tuple[float, float]] = {}
    with torch.random.fork_rng(devices=[]):  # any stray use of the global RNG is seeded too
        torch.manual_seed(cell.seed)
        for label_only, clone in _steal(cell, ws, box, make_clone, ds, progress).items():
            accs[label_only] = (
                metrics.clone_accuracy(clone, test_x, test_y),
                metrics.clone_fidelity(clone, victim, test_x),
            )
    cost = defense_cost(victim, defense, test_x, test_y)
    reading = box.meter()
    defender_acc = cost.defender_acc
    extra_policy: dict[str, Any] = {}
    if policy is not None and cell.policy is not None:
        thief = box.policy_status()
        assert thief is not None
        benign = benign_view(victim, policy, ds, cell.policy["benign_batch"], cell.seed)
        defender_acc = benign.accuracy
        extra_policy = {
            "policy": cell.policy["label"],
            "prada_delta": delta,
            "thief_flagged_rows": thief.flagged_rows,
            "thief_blocked_at": thief.blocked_at,
            "benign_flagged_rows": benign.flagged_rows,
            "benign_blocked_at": benign.blocked_at,
            "defender_acc_unpoliced": cost.defender_acc,
        }
    soft, hard = accs.get(False), accs.get(True)
    # an InI victim is a defense of the scenario's victim (its own curves against the plain
    # undefended one); a user's checkpoint is another victim (its own section of the report)
    scenario, extra = cell.scenario, {}
    if cell.victim is not None and cell.victim.get("checkpoint"):
        scenario = f"{cell.scenario}/{cell.victim['label']}"
    elif cell.victim is not None:
        extra = {"victim": cell.victim["label"]}
    extra.update(extra_policy)
    return {
        **extra,
        "scenario": scenario,
        "dataset": spec.dataset,
        "model": victim.spec.name,
        "pool": thief_pool(cell) or "none (data-free)",
        "attack": cell.attack,
        "attack_params": dict(cell.attack_params),
        "defense": cell.defense,
        "params": dict(cell.params),
        "seed": cell.seed,
        "budget": cell.budget,
        "queries_used": reading.rows,
        "victim_acc": meta.get("test_acc"),
        "defender_acc": defender_acc,
        "l1_queries": reading.mean_l1,
        "kl_queries": reading.mean_kl,
        "l1_test": cost.l1_mean,
        "kl_test": cost.kl_mean,
        "clone_acc": soft[0] if soft else None,
        "clone_fidelity": soft[1] if soft else None,
        "label_only_clone_acc": hard[0] if hard else None,
        "label_only_clone_fidelity": hard[1] if hard else None,
        "defense_config": dict(cell.defense_config),
        "wall_time": round(time.perf_counter() - start, 3),
        "host": socket.gethostname(),
        "version": __version__,
        "config_hash": cell.cell_hash(),
    }
