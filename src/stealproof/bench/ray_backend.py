"""The Ray backend: one Ray task per cell, rows streamed into the driver's result store.

Install with ``pip install 'stealproof[ray]'``; Ray is imported only when this backend runs.
The driver first trains every victim and defense model the pending cells need (into
``DIR/cache``, exactly as the serial backend does), then ships those cache files to the tasks
through Ray's object store — so a task runs on any node of a cluster, needs no shared file
system, and computes from the very same weights as a serial run. A task that cannot see the
driver's cache writes the files it was sent into a private directory of its own
(``tempfile.mkdtemp``: mode 0700, a fresh name) and removes it when the cell is done; it never
reads a fixed path that another run or user could have filled. Each task sets torch's thread
count (``threads``, 1 by default) before it computes anything.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from rich.progress import Progress

from stealproof import _progress
from stealproof.bench.cache import ArtifactCache
from stealproof.bench.cell import (
    BenchBackendError,
    RowCallback,
    RunPlan,
    Workspace,
    cache_dir,
    prepare_artifacts,
    run_cell,
)
from stealproof.bench.config import Cell
from stealproof.bench.store import ResultStore

#: One workspace per worker process and device: datasets, pools and loaded models are kept
#: across tasks (everything in it is keyed by content, so tasks of any run can share it).
_WORKSPACES: dict[str | None, Workspace] = {}


def import_ray() -> ModuleType:
    """Import ray, or fail with the install hint."""
    try:
        import ray
    except ImportError:
        raise BenchBackendError(
            "--backend ray needs Ray: pip install 'stealproof[ray]' (or pip install ray)"
        ) from None
    return ray


@contextmanager
def task_cache(cache_root: str, files: dict[str, bytes]) -> Iterator[ArtifactCache]:
    """The cache a task reads: the driver's when this host sees all the files it was sent
    (same machine or shared disk), else a private temporary directory holding exactly those
    files, removed when the task ends (also on error)."""
    root = Path(cache_root)
    if all((root / rel).is_file() for rel in files):
        yield ArtifactCache(root)
        return
    private = Path(tempfile.mkdtemp(prefix="stealproof-bench-cache-"))
    try:
        cache = ArtifactCache(private)
        cache.materialize(files)
        yield cache
    finally:
        shutil.rmtree(private, ignore_errors=True)


def run_cell_task(
    cell_data: dict[str, Any],
    cache_root: str,
    victim_files: dict[str, bytes],
    defense_files: dict[str, bytes] | None,
    threads: int,
    device: str | None,
) -> dict[str, Any]:
    """Body of a Ray task: materialize the cache files it was sent, then run the cell."""
    if threads > 0:
        torch.set_num_threads(threads)
    cell = Cell.model_validate(cell_data)
    files = {**victim_files, **(defense_files or {})}
    with task_cache(cache_root, files) as cache:
        ws = _WORKSPACES.get(device)
        if ws is None:
            ws = _WORKSPACES[device] = Workspace(cache, device=device)
        ws.cache = cache
        ws.enter_group((cell.scenario, cell.seed, cell.cell_hash()))  # no clones across tasks
        return run_cell(cell, ws)


def run_ray(
    plan: RunPlan,
    *,
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    on_row: RowCallback | None = None,
) -> int:
    """Run the plan's pending cells as Ray tasks; return how many ran.

    Uses the Ray already initialised in this process if there is one; otherwise starts a local
    Ray (``address=None``, ``workers`` CPUs) or joins ``address`` (``auto``,
    ``ray://HOST:10001``), and shuts it down afterwards. ``workers`` also caps the tasks in
    flight.
    """
    ray = import_ray()
    store = ResultStore(plan.out_dir).open()
    root = cache_dir(plan.out_dir)
    ws = Workspace(ArtifactCache(root), device=device)
    prepare_artifacts(plan.pending, ws, progress=progress)
    if not plan.pending:
        return 0
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
        except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError, ...
            where = address or "a local Ray"
            raise BenchBackendError(f"--address: cannot start or join {where}: {e}") from None
        started = True
    try:
        return _dispatch(ray, plan, store, ws, threads, device, progress, on_row, workers)
    finally:
        if started:
            ray.shutdown()


def _dispatch(
    ray: ModuleType,
    plan: RunPlan,
    store: ResultStore,
    ws: Workspace,
    threads: int,
    device: torch.device | str | None,
    progress: Progress | None,
    on_row: RowCallback | None,
    workers: int | None,
) -> int:
    task = ray.remote(num_cpus=max(1, threads), max_retries=1)(run_cell_task)
    refs_v: dict[str, Any] = {}
    refs_d: dict[str, Any] = {}
    dev = None if device is None else str(device)
    queue = list(plan.pending)
    limit = workers if workers else len(queue)
    in_flight: list[Any] = []
    ran = 0

    cache = ws.cache

    def submit(cell: Cell) -> None:
        vkey = ws.victim_key(cell)
        gkey = ws.guardian_key(cell)
        shipped = f"{vkey}+{gkey}"  # the victim's file, and its guardian bundle if the cell has one
        if shipped not in refs_v:
            files = cache.victim_files(vkey)
            if gkey is not None:
                files.update(cache.guardian_files(gkey))
            refs_v[shipped] = ray.put(files)
        bkey = ws.bundle_key(cell)
        if bkey is not None and bkey not in refs_d:
            refs_d[bkey] = ray.put(cache.defense_files(bkey))
        ref_d = refs_d[bkey] if bkey is not None else None
        in_flight.append(
            task.remote(
                cell.model_dump(mode="json"), str(cache.root), refs_v[shipped], ref_d, threads, dev
            )
        )

    with _progress.task(progress, "cells (ray)", total=len(queue)) as step:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                submit(queue.pop(0))
            done, rest = ray.wait(in_flight, num_returns=1)
            in_flight[:] = rest
            row = ray.get(done[0])
            store.append(row)
            ran += 1
            if on_row is not None:
                on_row(row)
            step(1)
    return ran
