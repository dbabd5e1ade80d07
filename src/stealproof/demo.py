"""``stealproof demo``: every registered defense against KnockoffNets, in minutes on a CPU.

Trains a victim (LeNet on ``mnist5k``; an MLP on ``digits`` with ``quick=True``), then for each
registered defense at its demo strength spends a query budget through a metered black box and
trains a soft-label clone and a label-only clone on the answers. Defenses registered later show
up here automatically, except those with ``in_demo = False``: ``deceptive`` (a detection policy's
answer to flagged rows) and ``watermark`` (an ownership tool, see ``stealproof verify``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from stealproof import defenses, metrics
from stealproof.attacks.base import clone_factory_like
from stealproof.attacks.knockoff import KnockoffNets
from stealproof.data.datasets import load_dataset
from stealproof.data.pools import load_pool
from stealproof.experiment import SCENARIOS, CloneCache, defense_cost, train_victim
from stealproof.oracle import BlackBox

log = logging.getLogger(__name__)

#: Past queries a defender has logged (GRAD² distils its surrogate on them).
QUERY_LOG_SIZE = 2000


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo's table and of ``results.json``."""

    defense: str
    params: dict[str, Any]
    defender_acc: float
    l1_mean: float
    clone_acc: float
    clone_fidelity: float
    label_only_clone_acc: float


@dataclass
class DemoReport:
    """Rows plus the context needed to read them."""

    scenario: str
    victim_acc: float
    budget: int
    pool: str
    rows: list[DemoRow]
    seconds: float


def demo_defenses() -> list[str]:
    """The defenses the demo runs: every registered one with ``in_demo`` (``none`` first)."""
    names = [n for n in defenses.available() if defenses.get_defense_class(n).in_demo]
    return sorted(names, key=lambda n: (n != "none", n))


def run_demo(
    *,
    quick: bool = False,
    budget: int = 5000,
    pool: str | None = None,
    seed: int = 0,
    defense_names: list[str] | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> DemoReport:
    """Run the demo and return its rows; writes nothing (see :func:`write_demo_outputs`)."""
    start = time.perf_counter()
    scenario = SCENARIOS["digits" if quick else "mnist5k"]
    ds = load_dataset(scenario.dataset)
    c, h, w = ds.input_shape
    pool_name = pool or scenario.pool
    thief_pool = load_pool(pool_name, channels=c, image_size=(h, w), seed=seed)  # fails early
    victim, victim_acc = train_victim(
        ds, scenario.model, scenario.victim_training, seed=seed, device=device, progress=progress
    )
    log.info("victim %s on %s: test accuracy %.4f", scenario.model, ds.name, victim_acc)
    make_clone = clone_factory_like(victim)
    attack = KnockoffNets(policy="random", seed=seed, train=scenario.clone_training)
    cache = CloneCache()
    names = defense_names or demo_defenses()
    rows: list[DemoRow] = []
    test_x, test_y = ds.test.images, ds.test.labels
    task = progress.add_task("defenses", total=len(names)) if progress is not None else None
    # the defender's log of earlier queries: another draw from the thief's population
    query_log, _ = thief_pool.draw(QUERY_LOG_SIZE, torch.Generator().manual_seed(seed + 1))
    for name in names:
        cls = defenses.get_defense_class(name)
        defense = cls.prepare(victim, ds.train.images, query_sample=query_log, **cls.demo_params)
        box = BlackBox(victim, defense, budget=budget, client_id=f"thief-{name}")
        transfer = attack.collect(box, thief_pool, budget, make_clone, progress=progress)
        clones = {
            label_only: cache.get(
                make_clone,
                transfer,
                scenario.clone_training,
                label_only=label_only,
                seed=seed,
                device=device,
                progress=progress,
                description=f"{name}: {'label-only ' if label_only else ''}clone",
            )
            for label_only in (False, True)
        }
        cost = defense_cost(victim, defense, test_x, test_y)
        rows.append(
            DemoRow(
                defense=name,
                params=defense.params,
                defender_acc=cost.defender_acc,
                l1_mean=box.meter().mean_l1,
                clone_acc=metrics.clone_accuracy(clones[False], test_x, test_y),
                clone_fidelity=metrics.clone_fidelity(clones[False], victim, test_x),
                label_only_clone_acc=metrics.clone_accuracy(clones[True], test_x, test_y),
            )
        )
        if progress is not None and task is not None:
            progress.update(task, advance=1)
    return DemoReport(
        scenario=ds.name,
        victim_acc=victim_acc,
        budget=budget,
        pool=pool_name,
        rows=rows,
        seconds=time.perf_counter() - start,
    )


def write_demo_outputs(report: DemoReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` (the rows) and ``tradeoff.png`` (each through a rename)."""
    from stealproof._io import write_atomic, write_text_atomic
    from stealproof.plots import tradeoff_scatter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in report.rows]
    results = write_text_atomic(
        out / "results.json", json.dumps(rows, indent=2, allow_nan=False) + "\n"
    )
    png = write_atomic(
        out / "tradeoff.png",
        lambda tmp: tradeoff_scatter(
            [r.defense for r in report.rows],
            [r.defender_acc for r in report.rows],
            [r.clone_acc for r in report.rows],
            [r.label_only_clone_acc for r in report.rows],
            victim_acc=report.victim_acc,
            title=f"KnockoffNets on {report.scenario}: {report.budget} queries from {report.pool}",
            path=tmp,
        ),
    )
    return results, png
