"""A worker's cache of its clients' policy states, kept current from the database's journal.

The database holds each client's state as a checkpoint plus a journal of the requests decided
after it (``ClientModelState``, ``StateJournal``). A worker keeps the states it used last in its
policy objects, tagged with their version. Before deciding, it compares that version with the
database's (read under the client's lock):

* equal — the state in memory is current: nothing is read;
* behind, and not before the checkpoint — another worker decided since: the journal rows in
  between are replayed (a handful of rows, whatever the client's history);
* anything else (not cached, evicted, or an administrator rewrote the state) — the checkpoint is
  loaded and the journal after it replayed (at most ``checkpoint_rows`` rows).

Replaying ``(inputs, clean posteriors)`` through :meth:`DetectionPolicy.replay
<stealproof.policy.DetectionPolicy.replay>` reproduces the state exactly: detectors and
termination rules do not depend on how a stream was split into batches. At most ``capacity``
clients per model are held; the least recently used is dropped first. Not thread-safe: the
gateway serialises decisions of a worker.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from stealproof.detectors.base import loads_state
from stealproof.oracle import input_dtype
from stealproof.serve.db import ledger
from stealproof.serve.db.ledger import Executor, Head, JournalEntry

if TYPE_CHECKING:
    from stealproof.serve.served import ServedModel

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}


def policy_key(client_id: int) -> str:
    """The id under which a policy holds a client's state."""
    return str(client_id)


def encode_rows(x: Tensor, y: Tensor) -> dict[str, object]:
    """A journal row's payload: inputs as float32 bytes, clean posteriors in their own dtype."""
    xb = x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    yc = y.detach().cpu().contiguous()
    return {
        "rows": int(x.shape[0]),
        "x": xb,
        "y": yc.numpy().tobytes(),
        "y_dtype": str(yc.dtype).removeprefix("torch."),
    }


def decode_rows(
    entries: list[JournalEntry], shape: tuple[int, ...], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Journal rows → one batch of inputs [N, *shape] (float32) and posteriors [N, K]."""
    xs, ys = [], []
    for e in entries:
        if e.y_dtype not in _DTYPES:
            raise ValueError(f"journal version {e.version}: unknown dtype {e.y_dtype!r}")
        xs.append(np.frombuffer(e.x, dtype=np.float32).reshape(e.rows, *shape))
        ys.append(
            torch.frombuffer(bytearray(e.y), dtype=_DTYPES[e.y_dtype]).reshape(e.rows, num_classes)
        )
    x = torch.from_numpy(np.concatenate(xs)) if len(xs) > 1 else torch.from_numpy(xs[0].copy())
    y = torch.cat(ys) if len(ys) > 1 else ys[0]
    return x, y


class ClientStates:
    """Which clients' states a worker's policies hold, at which version (see the module doc)."""

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected ≥ 1, got {capacity}")
        self.capacity = capacity
        self._versions: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._models: dict[str, ServedModel] = {}
        #: what ensure() did, for tests and metrics: hits, journal catch-ups, full loads
        self.hits = 0
        self.catch_ups = 0
        self.loads = 0

    def __len__(self) -> int:
        return len(self._versions)

    def version(self, served: ServedModel, client_id: int) -> int | None:
        """The version of the client's state held in memory (None: not held)."""
        return self._versions.get((served.key, client_id))

    def ensure(self, s: Executor, served: ServedModel, client_id: int, head: Head) -> None:
        """Make ``served.policy`` hold the client's state at ``head.version`` (module doc)."""
        key = (served.key, client_id)
        cached = self._versions.get(key)
        if cached is not None and cached == head.version:
            self._versions.move_to_end(key)
            self.hits += 1
            return
        if cached is not None and head.checkpoint_version <= cached < head.version:
            entries = ledger.journal(s, client_id, served.key, cached, head.version)
            if _contiguous(entries, cached, head.version):
                self._replay(served, client_id, entries)
                self._set(served, client_id, head.version)
                self.catch_ups += 1
                return
        self.forget(served, client_id)
        restore(s, served, client_id, head, policy_key(client_id))
        self._set(served, client_id, head.version)
        self.loads += 1

    def advanced(self, served: ServedModel, client_id: int, version: int) -> None:
        """The policy decided a request of the client: its state is now at ``version``."""
        self._set(served, client_id, version)

    def forget(self, served: ServedModel, client_id: int) -> None:
        """Drop the client's state from memory (it is read again from the database when used)."""
        self._versions.pop((served.key, client_id), None)
        served.policy.reset_client(policy_key(client_id))

    def _set(self, served: ServedModel, client_id: int, version: int) -> None:
        key = (served.key, client_id)
        self._versions[key] = version
        self._versions.move_to_end(key)
        self._models[served.key] = served
        while len(self._versions) > self.capacity:
            (model, cid), _ = self._versions.popitem(last=False)
            self._models[model].policy.reset_client(policy_key(cid))

    @staticmethod
    def _replay(served: ServedModel, client_id: int, entries: list[JournalEntry]) -> None:
        _replay(served, policy_key(client_id), entries)


def restore(s: Executor, served: ServedModel, client_id: int, head: Head, key: str) -> None:
    """Load the client's checkpoint and replay the journal after it into ``served.policy``
    under ``key`` (the state at ``head.version``); nothing is held under ``key`` on failure."""
    state = {}
    if head.exists:
        blob = ledger.checkpoint_of(s, client_id, served.key)
        state = loads_state(blob) if blob else {}
    served.policy.load_client_state(key, state)
    try:
        if head.version > head.checkpoint_version:
            entries = ledger.journal(
                s, client_id, served.key, head.checkpoint_version, head.version
            )
            if not _contiguous(entries, head.checkpoint_version, head.version):
                raise RuntimeError(
                    f"client {client_id} on {served.key}: the journal after checkpoint "
                    f"{head.checkpoint_version} does not reach version {head.version}"
                )
            _replay(served, key, entries)
    except BaseException:
        served.policy.reset_client(key)
        raise


def _replay(served: ServedModel, key: str, entries: list[JournalEntry]) -> None:
    if not entries:
        return
    x, y = decode_rows(entries, served.spec.shape, served.num_classes)
    # the dtype and device the policy saw when it decided these rows
    device = next((p.device for p in served.victim.parameters()), torch.device("cpu"))
    x = x.to(device=device, dtype=input_dtype(served.victim))
    served.policy.replay(key, x, y.to(device))


def _contiguous(entries: list[JournalEntry], after: int, upto: int) -> bool:
    """Whether ``entries`` are exactly the versions ``after + 1 .. upto``."""
    return [e.version for e in entries] == list(range(after + 1, upto + 1))
