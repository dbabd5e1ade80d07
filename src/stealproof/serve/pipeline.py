"""Dynamic batching and group commit: one thread per worker runs the model and decides.

Requests of all clients queue for the worker's pipeline thread. Each turn, it takes every
request waiting (up to ``max_rows`` rows; while other requests are still being received it waits
up to ``max_wait`` for them, never when none is), runs **one** victim forward and **one**
defense call per model for them — defenses are batch-invariant, so each request gets the rows it
would get alone — and then decides them all in **one** database transaction
(:meth:`Gateway.decide_batch <stealproof.serve.gateway.Gateway.decide_batch>`), each client's
requests in arrival order. A lone request therefore never waits for company, and under load
the per-request cost of the model and of the commit is shared, as with Triton's dynamic
batcher. ``max_rows=1`` turns batching off (one request per turn).

Between turns the thread writes pending "delivered" marks of answers already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from stealproof.serve.gateway import Answer, ClientRef, Decision, Gateway, ServedModel

log = logging.getLogger(__name__)

#: seconds the idle thread waits before writing pending delivered marks
IDLE_FLUSH = 0.02


@dataclass(eq=False)
class _Job:
    client: ClientRef
    served: ServedModel
    x: Tensor
    future: Future[Answer]


class Pipeline:
    """The worker's pipeline thread (module doc). ``close()`` stops it."""

    def __init__(self, gateway: Gateway, *, max_wait: float = 0.002, max_rows: int = 64) -> None:
        if max_wait < 0 or max_rows < 1:
            raise ValueError(f"max_wait ≥ 0 and max_rows ≥ 1 expected, got {max_wait}, {max_rows}")
        self.gateway = gateway
        self.max_wait = max_wait
        self.max_rows = max_rows
        self.batches = 0  # turns that ran the model (for tests)
        self.waits = 0  # turns that waited for requests still being received
        self.arriving = 0  # requests being received (changed on the event loop only)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._held: _Job | None = None  # taken from the queue, too big for the current turn
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="stealproof-pipeline", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """Count a request as on its way while it is read and checked (so a turn may wait)."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def submit(self, client: ClientRef, served: ServedModel, x: Tensor) -> Future[Answer]:
        """Queue a checked request; the future gets its :class:`Answer` or its error."""
        if self._closed:
            raise RuntimeError("the pipeline is closed")
        fut: Future[Answer] = Future()
        self._queue.put(_Job(client, served, x, fut))
        return fut

    async def answer(self, client: ClientRef, served: ServedModel, x: Tensor) -> Answer:
        """:meth:`submit` and wait (a cancelled wait drops a request not yet taken)."""
        return await asyncio.wrap_future(self.submit(client, served, x))

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued requests, write pending delivered marks, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        try:
            self.gateway.flush_delivered()
        except Exception:  # shutting down: the marks stay unwritten (rows read undelivered)
            log.exception("could not write delivered marks at shutdown")

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            job = self._held
            self._held = None
            if job is None:
                try:
                    job = self._queue.get(timeout=IDLE_FLUSH)
                except queue.Empty:
                    self._flush_marks()
                    continue
            if job is None:
                return
            batch, stop = self._collect(job)
            try:
                self._run(batch)
            except BaseException as e:  # a bug must fail its requests, never stop the thread
                log.exception("a pipeline turn failed")
                for j in batch:
                    _fail(j.future, e)
            if stop:
                return

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and the requests that join its turn; True when the sentinel was seen."""
        batch: list[_Job] = []
        rows = 0
        deadline = time.monotonic() + self.max_wait
        waited = False
        job: _Job | None = first
        while True:
            if job is None:
                return batch, True
            if job.future.set_running_or_notify_cancel():  # False: its caller went away
                n = int(job.x.shape[0])
                if batch and rows + n > self.max_rows:
                    self._held = job
                    return batch, False
                batch.append(job)
                rows += n
            if rows >= self.max_rows:
                return batch, False
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if self.arriving <= 0 or left <= 0:
                    return batch, False
                if not waited:
                    waited = True
                    self.waits += 1
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    return batch, False

    def _run(self, batch: list[_Job]) -> None:
        if not batch:
            return
        self.batches += 1
        order = {id(j): i for i, j in enumerate(batch)}
        decisions: list[tuple[_Job, Decision]] = []
        groups: dict[str, list[_Job]] = {}
        for job in batch:
            groups.setdefault(job.served.key, []).append(job)
        for jobs in groups.values():
            served = jobs[0].served
            try:
                x = jobs[0].x if len(jobs) == 1 else torch.cat([j.x for j in jobs])
                t0 = time.perf_counter()
                clean, logits, normal = Gateway.forward(served, x)
                seconds = time.perf_counter() - t0
            except BaseException as e:
                for j in jobs:
                    _fail(j.future, e)
                continue
            offset = 0
            for j in jobs:
                n = int(j.x.shape[0])
                part = slice(offset, offset + n)
                offset += n
                d = Decision(
                    j.client, served, j.x, clean[part], logits[part], normal[part], seconds
                )
                decisions.append((j, d))
        if not decisions:
            return
        decisions.sort(key=lambda jd: order[id(jd[0])])  # arrival order across models
        try:
            results = self.gateway.decide_batch([d for _, d in decisions])
        except BaseException as e:
            log.exception("deciding a batch of %d requests failed", len(decisions))
            for j, _ in decisions:
                _fail(j.future, e)
            return
        for (j, _), r in zip(decisions, results, strict=True):
            if isinstance(r, BaseException):
                _fail(j.future, r)
            else:
                with contextlib.suppress(InvalidStateError):  # futures are ours until here
                    j.future.set_result(r)

    def _flush_marks(self) -> None:
        try:
            self.gateway.flush_delivered()
        except Exception:  # the marks are kept and written with the next turn
            log.exception("could not write delivered marks")


def _fail(fut: Future[Answer], e: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # futures are ours until here
        fut.set_exception(e)
