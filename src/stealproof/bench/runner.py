"""Run a benchmark grid: plan (what is finished), prepare (victims, defense models), execute.

One cell = one transfer set: the thief spends the budget through a metered black box in front
of the defended victim, then trains the soft-label clone and/or the label-only clone on the
answers. A cell's numbers depend only on its config and seed: the victim and the defense's
models come from the on-disk cache (trained once, in the driver, before any cell runs), every
random choice is seeded from the cell, and clones are shared through
:class:`~stealproof.experiment.CloneCache` only where their training inputs coincide. So the
serial backend and the Ray backend (:mod:`stealproof.bench.ray_backend`) produce the same rows.
What one cell needs (plan, workspace, artifacts, :func:`run_cell`) is in
:mod:`stealproof.bench.cell`, which both backends import; this module adds the serial loop and
:func:`execute`.

The library never prints: progress goes to an optional rich ``Progress``; the CLI reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from rich.progress import Progress

from stealproof import _progress
from stealproof.bench.cache import ArtifactCache
from stealproof.bench.cell import (
    BenchBackendError,
    RowCallback,
    RunPlan,
    Workspace,
    build_defense,
    cache_dir,
    check_inputs,
    plan_run,
    prepare_artifacts,
    run_cell,
)
from stealproof.bench.store import ResultStore

__all__ = [
    "Backend",
    "BenchBackendError",
    "RowCallback",
    "RunPlan",
    "RunSummary",
    "Workspace",
    "build_defense",
    "cache_dir",
    "check_inputs",
    "execute",
    "plan_run",
    "prepare_artifacts",
    "run_cell",
    "run_serial",
]

Backend = Literal["serial", "ray"]


def run_serial(
    plan: RunPlan,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    on_row: RowCallback | None = None,
) -> int:
    """Run the plan's pending cells in this process; return how many ran."""
    store = ResultStore(plan.out_dir).open()
    ws = Workspace(ArtifactCache(cache_dir(plan.out_dir)), device=device)
    prepare_artifacts(plan.pending, ws, progress=progress)
    ran = 0
    with _progress.task(progress, "cells", total=len(plan.pending)) as step:
        for cell in plan.pending:
            ws.enter_group((cell.scenario, cell.seed))
            what = " ".join([cell.defense, *(f"{k}={v}" for k, v in cell.params.items())])
            step(0, description=f"cells: {what}, seed {cell.seed}")
            row = run_cell(cell, ws, progress=progress)
            store.append(row)
            ran += 1
            if on_row is not None:
                on_row(row)
            step(1)
    return ran


@dataclass(frozen=True)
class RunSummary:
    """What :func:`execute` did."""

    total: int
    skipped: int
    ran: int
    seconds: float
    backend: str


def execute(
    plan: RunPlan,
    *,
    backend: Backend = "serial",
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    on_row: RowCallback | None = None,
) -> RunSummary:
    """Run the pending cells on the chosen backend, streaming rows into ``DIR/results.jsonl``.

    ``address``/``workers``/``threads`` are for Ray: the cluster to join (``None`` starts a
    local Ray with ``workers`` CPUs), and torch threads per task.
    """
    start = time.perf_counter()
    if backend == "serial":
        ran = run_serial(plan, device=device, progress=progress, on_row=on_row)
    elif backend == "ray":
        from stealproof.bench.ray_backend import run_ray

        ran = run_ray(
            plan,
            address=address,
            workers=workers,
            threads=threads,
            device=device,
            progress=progress,
            on_row=on_row,
        )
    else:
        raise BenchBackendError(f"--backend: expected serial or ray, got {backend!r}")
    return RunSummary(
        total=len(plan.cells),
        skipped=plan.skipped,
        ran=ran,
        seconds=time.perf_counter() - start,
        backend=backend,
    )
