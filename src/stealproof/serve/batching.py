"""Dynamic batching: concurrent requests share one victim forward pass and one defense call.

Requests that arrive within ``max_wait`` seconds of the first pending one (or until
``max_rows`` rows are pending) are concatenated, run once, and split back. Defenses are
batch-invariant (a row's answer does not depend on the other rows), so every request gets the
rows it would get alone; what stays per request — the client's detectors, deceptive answers and
termination — runs afterwards, under the client's lock, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor

#: What one batched call returns for a batch: clean posteriors, logits, normal answers.
Outputs = tuple[Tensor, Tensor, Tensor]


@dataclass
class _Pending:
    x: Tensor
    future: asyncio.Future[tuple[Outputs, float]]


@dataclass
class ForwardBatcher:
    """Collects concurrent submissions and runs ``run`` once per batch (in a worker thread).

    ``submit(x)`` returns this request's slice of ``run(concatenated)`` and the seconds the
    batch's call took. ``max_wait`` 0 runs every submission alone.
    """

    run: Callable[[Tensor], Outputs]
    max_wait: float = 0.002
    max_rows: int = 64
    batches: int = 0  # calls made (for tests and metrics)
    _pending: list[_Pending] = field(default_factory=list)
    _rows: int = 0
    _timer: asyncio.TimerHandle | None = None

    async def submit(self, x: Tensor) -> tuple[Outputs, float]:
        """This request's (clean, logits, normal) rows, and the batch call's duration."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Outputs, float]] = loop.create_future()
        self._pending.append(_Pending(x, fut))
        self._rows += int(x.shape[0])
        if self.max_wait <= 0 or self._rows >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._rows = self._pending, [], 0
        if batch:
            self.batches += 1
            asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: list[_Pending]) -> None:
        sizes = [int(p.x.shape[0]) for p in batch]
        try:
            x = batch[0].x if len(batch) == 1 else torch.cat([p.x for p in batch])
            start = asyncio.get_running_loop().time()
            clean, logits, normal = await run_in_threadpool(self.run, x)
            seconds = asyncio.get_running_loop().time() - start
        except BaseException as e:  # every waiting request gets the failure
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        offset = 0
        for p, n in zip(batch, sizes, strict=True):
            part = (
                clean[offset : offset + n],
                logits[offset : offset + n],
                normal[offset : offset + n],
            )
            offset += n
            if not p.future.done():
                p.future.set_result((part, seconds))
