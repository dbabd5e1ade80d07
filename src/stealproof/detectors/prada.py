"""PRADA (Juuti et al., EuroS&P 2019): flag a client whose query distances stop looking normal.

Natural queries sit at roughly normally distributed distances from the queries a client sent
before; synthetic streams (JBDA's small sign steps around a seed set) do not. Per client and
per predicted class ``c = argmax y`` PRADA keeps a growing set ``G_c``, a threshold ``T_c``, the
*recorded* distances (those that grew ``G_c``; only their count, mean and sum of squared
deviations are kept — Welford's sums, all ``T_c`` needs) and the distance list ``D_c``. For
each query x:

* ``G_c`` empty: add x to ``G_c``, ``T_c = 0`` (no distance);
* otherwise ``d = min_{g ∈ G_c} ‖x − g‖₂`` on the raw inputs; append d to ``D_c``; if
  ``d > T_c``: add x to ``G_c``, record d and set ``T_c ← max(T_c, mean − std)`` of the recorded
  distances (population std).

Every ``check_every`` (10) queries of the client, the lists ``D_c`` with at least
``min_class_distances`` (10) entries are pooled (each divided by its own median first: see
below), values more than ``outlier_sigma`` (3) standard
deviations from the pooled mean are dropped, and when more than ``min_pooled`` (100) remain the
Shapiro–Wilk statistic W is computed (``scipy.stats.shapiro``). The client is flagged while
``W < delta`` — the flag changes only at a check and holds in between. Every row answered
while the client is flagged is reported flagged; its score is ``1 − W`` (0 before the first W).

**Our one change** (``class_scale="median"``, the default): before pooling, each class's list
is divided by its median. Classes differ in how far apart their natural images are (thin 1s
sit much closer together than 8s), so the paper's raw pool is a mixture of per-class scales
and a benign stream's early W is low and noisy; that forces a low calibrated δ that JBDA
streams stay above. Scaled lists keep the shape inside a class — where JBDA's small steps
around its seeds show up — and drop the scale between classes. ``class_scale="none"`` is the
paper's pooling exactly. On mnist5k (seed 1) the smallest W of 5 benign streams rose from
0.930–0.993 to 0.970–0.988, and a JBDA stream's W after its 150 seeds fell from ~0.955 to ~0.88.

**Bounds** (ours; both off by default, which is the paper's algorithm). Without them a client's
memory and per-query cost grow with its history: every query that joins a ``G_c`` stores D
values, and every test pools all distances. ``max_growing`` caps the rows stored in all growing
sets of one client together: at the cap a query that would join ``G_c`` (``d > T_c``) is not
stored, but its distance is recorded and ``T_c`` updates as before; only a class whose ``G_c``
is still empty stores its first row, so the cap is passed by at most the number of classes.
``max_distances`` keeps the latest N distances of each ``D_c``, so the normality test looks at
a recent window. With both set a client holds at most about
``(max_growing + classes)·D·itemsize + classes·max_distances·16`` bytes, and a query costs at
most one distance to each of ``max_growing + classes`` rows plus a test over
``classes·max_distances`` distances every ``check_every`` queries.

The distance step is vectorised: one ``torch.cdist`` (float64, no matrix-multiplication
shortcut, so each distance is computed the same way whatever the batch) from the batch's rows
to the ``G_c`` they find at the batch start, then the rows are processed in order and only the
rows that join ``G_c`` inside the batch are compared, one at a time, with the later rows of
their class. Decisions are therefore identical to a per-query implementation and independent
of how a stream is split into batches. The distance step reads a float64 copy of each ``G_c``
(exact: the stored rows converted), extended row by row; such copies are kept for the
clients observed most recently, up to :attr:`PradaDetector.hot_bytes` bytes in all, and
rebuilt on a client's next query once dropped.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from stealproof._validate import check_images, check_posteriors
from stealproof.data.pools import Pool
from stealproof.defenses.base import format_validation_error
from stealproof.detectors.base import Detection, Detector
from stealproof.errors import InputValidationError

_CDIST_MODE = "donot_use_mm_for_euclid_dist"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: 2: Welford sums of the recorded distances ("welford") instead of the list ("recorded")
STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: rows of G_c added since its last merge stay separate until they are this many (or as many
#: as the merged block): merging is then amortised O(D) per row
_MIN_MERGE = 64


class PradaConfig(BaseModel):
    """PRADA's parameters (ALGORITHMS.md §3.2); the defaults are the paper's."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    delta: float = Field(
        0.9, ge=0.0, le=1.0, description="flag the client while Shapiro–Wilk W < delta"
    )
    check_every: int = Field(10, ge=1, description="queries between two normality tests")
    min_class_distances: int = Field(
        10, ge=1, description="a class's distance list joins the test once it has this many"
    )
    min_pooled: int = Field(
        100, ge=3, description="W is computed only when more than this many distances remain"
    )
    outlier_sigma: float | None = Field(
        3.0, gt=0.0, description="drop pooled distances beyond this many std (None: keep all)"
    )
    storage_dtype: Literal["float32", "float64"] = Field(
        "float32", description="dtype the queries are stored (and compared) in"
    )
    class_scale: Literal["median", "none"] = Field(
        "median",
        description="divide each class's distance list by its median before pooling "
        "(ours: classes have different typical distances); 'none' pools raw distances "
        "as the paper does",
    )
    max_growing: int | None = Field(
        None,
        ge=1,
        description="cap on the rows stored in all growing sets of one client together; at "
        "the cap a query that would join G_c is not stored, but its distance is still "
        "recorded and T_c updates (a class with an empty G_c still stores its first row); "
        "None: no cap (the paper)",
    )
    max_distances: int | None = Field(
        None,
        ge=1,
        description="keep only the latest this many distances per class, so the normality "
        "test looks at a recent window; None: keep all (the paper)",
    )


def _median_scaled(distances: np.ndarray) -> np.ndarray:
    """A class's distances divided by their median (unchanged when the median is 0)."""
    median = float(np.median(distances))
    return distances / median if median > 0 else distances


def _cdist(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances [len(a), len(b)] in float64, each computed the same way at any size."""
    return torch.cdist(a, b, p=2.0, compute_mode=_CDIST_MODE)


class _Distances:
    """D_c as a float64 buffer (amortised doubling), keeping the latest ``limit`` values if set.

    The values are ``buf[start:end]`` in arrival order; a full window drops its oldest value by
    moving ``start``, and the live values are moved to the front once the buffer is full and at
    most half of it is live, so appending is amortised O(1) and the window is one slice.
    """

    __slots__ = ("buf", "end", "limit", "start")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.buf = np.empty(16 if limit is None else min(16, 2 * limit), dtype=np.float64)
        self.start = 0
        self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, d: float) -> None:
        if self.end == self.buf.shape[0]:
            self._make_room()
        self.buf[self.end] = d
        self.end += 1
        if self.limit is not None and self.end - self.start > self.limit:
            self.start += 1

    def _make_room(self) -> None:
        live = self.end - self.start
        cap = int(self.buf.shape[0])
        if 2 * live <= cap:  # only reachable with a limit: reuse the buffer
            self.buf[:live] = self.buf[self.start : self.end]
        else:
            new = 2 * cap if self.limit is None else min(2 * cap, 2 * self.limit)
            buf = np.empty(new, dtype=np.float64)
            buf[:live] = self.buf[self.start : self.end]
            self.buf = buf
        self.start, self.end = 0, live

    def values(self) -> np.ndarray:
        """The kept distances in arrival order (a view: do not modify)."""
        return self.buf[self.start : self.end]

    @classmethod
    def of(cls, values: np.ndarray, limit: int | None) -> _Distances:
        """A buffer holding ``values`` (the latest ``limit`` of them when a limit is set)."""
        kept = values if limit is None else values[max(0, values.shape[0] - limit) :]
        out = cls(limit)
        out.buf = np.empty(max(out.buf.shape[0], kept.shape[0]), dtype=np.float64)
        out.buf[: kept.shape[0]] = kept
        out.end = int(kept.shape[0])
        return out


class _Growing:
    """G_c: its rows in the storage dtype and, while its client is hot, a float64 copy.

    Added rows wait in ``tail`` and are merged into ``block`` once they are as many as the
    block (at least ``_MIN_MERGE``), so storing costs amortised O(D) per row and no more than
    the rows themselves at rest. The float64 copy is a buffer with amortised doubling that
    every added row extends; the distance step reads it without converting G_c again.
    """

    __slots__ = ("block", "size", "tail", "tail_rows", "work")

    def __init__(self) -> None:
        self.block: Tensor | None = None
        self.tail: list[Tensor] = []
        self.tail_rows = 0
        self.size = 0
        self.work: Tensor | None = None

    def add(self, rows: Tensor, rows64: Tensor) -> None:
        """Store ``rows`` (storage dtype, not shared with the caller); ``rows64`` is them in
        float64 (copied into the working copy when there is one)."""
        n = int(rows.shape[0])
        self.tail.append(rows)
        self.tail_rows += n
        if self.tail_rows >= max(_MIN_MERGE, 0 if self.block is None else self.block.shape[0]):
            self.stored()
        if self.work is not None:
            if self.size + n > self.work.shape[0]:
                grown = torch.empty(
                    max(2 * int(self.work.shape[0]), self.size + n),
                    rows64.shape[1],
                    dtype=torch.float64,
                )
                grown[: self.size] = self.work[: self.size]
                self.work = grown
            self.work[self.size : self.size + n] = rows64
        self.size += n

    def stored(self) -> Tensor | None:
        """G_c in the storage dtype as one [n, D] tensor (None when empty)."""
        if self.tail:
            parts = self.tail if self.block is None else [self.block, *self.tail]
            self.block = parts[0] if len(parts) == 1 else torch.cat(parts)
            self.tail = []
            self.tail_rows = 0
        return self.block

    def float64(self) -> Tensor | None:
        """G_c in float64 (the working copy, built now if there is none; None when empty)."""
        if self.size == 0:
            return None
        if self.work is None:
            g = self.stored()
            assert g is not None
            self.work = g.to(torch.float64, copy=True)
        return self.work[: self.size]

    def work_bytes(self) -> int:
        w = self.work
        return 0 if w is None else w.nelement() * w.element_size()


@dataclass
class _ClassState:
    """One class of one client: G_c, T_c, Welford's sums of the recorded distances and D_c."""

    growing: _Growing = field(default_factory=_Growing)
    threshold: float = 0.0
    distances: _Distances = field(default_factory=_Distances)
    # Welford accumulators of the recorded distances (those that grew, or would have grown, G_c)
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def record(self, d: float) -> None:
        """Record a distance that grew G_c and raise T_c to mean − std if that is larger."""
        self.count += 1
        n = self.count
        delta = d - self.mean
        self.mean += delta / n
        self.m2 += delta * (d - self.mean)
        std = math.sqrt(max(self.m2, 0.0) / n)
        self.threshold = max(self.threshold, self.mean - std)


@dataclass
class _ClientState:
    """Everything PRADA keeps about one client."""

    classes: dict[int, _ClassState] = field(default_factory=dict)
    queries: int = 0
    last_w: float | None = None
    tests: int = 0
    flagged: bool = False
    dim: int | None = None
    #: rows stored in all growing sets together
    stored: int = 0

    def work_bytes(self) -> int:
        return sum(cs.growing.work_bytes() for cs in self.classes.values())

    def drop_work(self) -> None:
        for cs in self.classes.values():
            cs.growing.work = None


class PradaDetector(Detector):
    """PRADA as a :class:`~stealproof.detectors.base.Detector`: ``PradaDetector(delta=0.9)``.

    Pass a :class:`PradaConfig` or its fields as keywords (``delta``, ``check_every``, …);
    unknown keywords fail naming the field.
    """

    name: ClassVar[str] = "prada"
    #: float64 working copies of the growing sets are kept for the most recently observed
    #: clients up to this many bytes in all (always for the client being observed); a client
    #: whose copies were dropped gets them rebuilt (one conversion) at its next query
    hot_bytes: int = 256 * 2**20

    def __init__(self, config: PradaConfig | None = None, /, **params: Any) -> None:
        if config is not None and params:
            raise InputValidationError("prada: pass either a config or keyword parameters")
        if config is None:
            try:
                config = PradaConfig(**params)
            except ValidationError as e:
                raise InputValidationError(
                    format_validation_error(self.name, e, PradaConfig)
                ) from None
        elif not isinstance(config, PradaConfig):
            raise InputValidationError(
                f"prada: expected a PradaConfig, got {type(config).__name__}"
            )
        self.config = config
        self._dtype = _DTYPES[config.storage_dtype]
        self._clients: dict[str, _ClientState] = {}
        # clients holding float64 working copies (oldest first) → bytes they hold
        self._hot: OrderedDict[str, int] = OrderedDict()
        self._hot_total = 0

    @property
    def delta(self) -> float:
        """The flag threshold: a client is flagged while W < delta."""
        return self.config.delta

    # ------------------------------------------------------------------ observing

    def observe(self, client_id: str, x: Tensor, y: Tensor) -> Detection:
        """Process the batch row by row (in order) and return ``1 − W`` and the flag per row."""
        y = check_posteriors(y, "y")
        x = check_images(x, "x", batch=y.shape[0])
        b = int(x.shape[0])
        flat = x.detach().reshape(b, -1).to("cpu", self._dtype)
        st = self._clients.get(client_id)
        if st is None:
            st = self._clients[client_id] = _ClientState()
        if st.dim is None:
            st.dim = int(flat.shape[1])
        elif st.dim != flat.shape[1]:
            raise InputValidationError(
                f"x: client {client_id!r} sent inputs of {st.dim} values before, "
                f"this batch has {flat.shape[1]} per row"
            )
        flat64 = flat.to(torch.float64)
        labels: list[int] = y.detach().argmax(dim=1).tolist()

        # distances from every row to the G_c it finds at the batch start (inf: G_c empty)
        nearest = [math.inf] * b
        if b == 1:
            members = {labels[0]: [0]}
        else:
            members = {}
            for i, c in enumerate(labels):
                members.setdefault(c, []).append(i)
        for c, idx in members.items():
            g = self._class(st, c).growing.float64()
            if g is not None:
                rows = flat64 if len(idx) == b else flat64[idx]
                for i, d in zip(idx, _cdist(rows, g).amin(dim=1).tolist(), strict=True):
                    nearest[i] = d

        cfg = self.config
        cap = cfg.max_growing
        seen = dict.fromkeys(members, 0)  # rows of each class processed so far
        scores: list[float] = []
        flags: list[bool] = []
        for i, c in enumerate(labels):
            cs = st.classes[c]
            store = cs.growing.size == 0
            if not store:
                d = nearest[i]
                cs.distances.append(d)
                if d > cs.threshold:
                    cs.record(d)
                    store = cap is None or st.stored < cap
            if store:
                cs.growing.add(flat[i : i + 1].clone(), flat64[i : i + 1])
                st.stored += 1
                later = members[c][seen[c] + 1 :]
                if later:
                    dl = _cdist(flat64[i : i + 1], flat64[later])[0].tolist()
                    for j, dj in zip(later, dl, strict=True):
                        if dj < nearest[j]:
                            nearest[j] = dj
            seen[c] += 1
            st.queries += 1
            if st.queries % cfg.check_every == 0:
                self._check(st)
            flags.append(st.flagged)
            scores.append(0.0 if st.last_w is None else 1.0 - st.last_w)
        self._touch(client_id, st)
        return Detection(
            scores=torch.tensor(scores, dtype=torch.float64),
            flags=torch.tensor(flags, dtype=torch.bool),
        )

    def _class(self, st: _ClientState, c: int) -> _ClassState:
        cs = st.classes.get(c)
        if cs is None:
            cs = st.classes[c] = self._new_class()
        return cs

    def _new_class(self, distances: np.ndarray | None = None) -> _ClassState:
        limit = self.config.max_distances
        kept = _Distances(limit) if distances is None else _Distances.of(distances, limit)
        return _ClassState(distances=kept)

    def _touch(self, client_id: str, st: _ClientState) -> None:
        """Mark the client most recently observed and drop the float64 copies of the least
        recently observed others while all copies together exceed ``hot_bytes``."""
        used = st.work_bytes()
        self._hot_total += used - self._hot.pop(client_id, 0)
        if used:
            self._hot[client_id] = used
        while self._hot_total > self.hot_bytes and self._hot:
            cid = next(iter(self._hot))
            if cid == client_id:  # the client just observed (the newest) keeps its copies
                break
            held = self._hot.pop(cid)
            self._hot_total -= held
            other = self._clients.get(cid)
            if other is not None:
                other.drop_work()

    def _forget_hot(self, client_id: str) -> None:
        self._hot_total -= self._hot.pop(client_id, 0)

    def pooled_distances(self, client_id: str) -> np.ndarray:
        """The distances the next normality test would use (after the outlier cut)."""
        st = self._clients.get(client_id)
        return np.empty(0) if st is None else self._pooled(st)

    def _pooled(self, st: _ClientState) -> np.ndarray:
        cfg = self.config
        arrays = [
            st.classes[c].distances.values()
            for c in sorted(st.classes)
            if len(st.classes[c].distances) >= cfg.min_class_distances
        ]
        if not arrays:
            return np.empty(0)
        if cfg.class_scale == "median":
            arrays = [_median_scaled(a) for a in arrays]
        pooled = np.concatenate(arrays)  # a copy: the buffers are never handed out
        if cfg.outlier_sigma is not None and pooled.size:
            mu, sd = pooled.mean(), pooled.std()
            pooled = pooled[np.abs(pooled - mu) <= cfg.outlier_sigma * sd]
        return pooled

    def _check(self, st: _ClientState) -> None:
        pooled = self._pooled(st)
        if pooled.size <= self.config.min_pooled:
            return
        from scipy.stats import shapiro  # imported here: scipy.stats is slow to import

        with warnings.catch_warnings():
            # constant data ("range zero") and N > 5000 only affect the p-value we do not use
            warnings.simplefilter("ignore", UserWarning)
            w = float(shapiro(pooled).statistic)
        st.last_w = w
        st.tests += 1
        st.flagged = w < self.config.delta

    # ------------------------------------------------------------------ inspection

    def last_w(self, client_id: str) -> float | None:
        """The client's latest Shapiro–Wilk W (None before the first test)."""
        st = self._clients.get(client_id)
        return None if st is None else st.last_w

    def is_flagged(self, client_id: str) -> bool:
        """Whether the client is flagged now."""
        st = self._clients.get(client_id)
        return bool(st is not None and st.flagged)

    def tests_run(self, client_id: str) -> int:
        """Normality tests of the client that computed W so far."""
        st = self._clients.get(client_id)
        return 0 if st is None else st.tests

    def queries_seen(self, client_id: str) -> int:
        """Rows of the client observed so far."""
        st = self._clients.get(client_id)
        return 0 if st is None else st.queries

    def clients(self) -> list[str]:
        return sorted(self._clients)

    # ------------------------------------------------------------------ state

    def client_state(self, client_id: str) -> dict[str, Any]:
        """G_c (storage dtype), T_c, Welford's sums ``[count, mean, m2]`` of the recorded
        distances (float64) and D_c (the kept window) per class, the query count, the last W
        (NaN: none yet), the number of tests that computed W, the flag and the input size
        (−1: none yet)."""
        st = self._clients.get(client_id)
        if st is None:
            return {}
        classes: dict[int, dict[str, Any]] = {}
        for c in sorted(st.classes):
            cs = st.classes[c]
            g = cs.growing.stored()
            classes[c] = {
                "growing": g.clone() if g is not None else torch.empty(0, st.dim or 0),
                "threshold": cs.threshold,
                "welford": torch.tensor([cs.count, cs.mean, cs.m2], dtype=torch.float64),
                "distances": torch.tensor(cs.distances.values(), dtype=torch.float64),
            }
        return {
            "version": STATE_VERSION,
            "queries": st.queries,
            "last_w": math.nan if st.last_w is None else st.last_w,
            "tests": st.tests,
            "flagged": st.flagged,
            "dim": -1 if st.dim is None else st.dim,
            "classes": classes,
        }

    def load_client_state(self, client_id: str, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`client_state` (``{}`` forgets the client).

        Version-1 states (the recorded distances as a list) load too: the list is replayed
        into Welford's sums exactly as the detector computed them. A state saved with fewer
        distances kept (or none dropped) loads into a ``max_distances`` detector cut to the
        latest ones; growing sets above ``max_growing`` are kept and simply stop growing.
        """
        self._forget_hot(client_id)
        if not state:
            self._clients.pop(client_id, None)
            return
        try:
            version = int(state["version"])
            if version not in _READABLE_VERSIONS:
                raise ValueError(f"version {state['version']} (expected one of 1, 2)")
            dim = int(state["dim"])
            st = _ClientState(
                queries=int(state["queries"]),
                last_w=None if math.isnan(float(state["last_w"])) else float(state["last_w"]),
                tests=int(state["tests"]),
                flagged=bool(state["flagged"]),
                dim=None if dim < 0 else dim,
            )
            for c, raw in state["classes"].items():
                g = torch.as_tensor(raw["growing"]).to(self._dtype)
                if g.ndim != 2 or (g.shape[0] and g.shape[1] != dim):
                    raise ValueError(f"class {c}: growing set of shape {tuple(g.shape)}")
                distances = torch.as_tensor(raw["distances"], dtype=torch.float64)
                if distances.ndim != 1:
                    raise ValueError(f"class {c}: distances of shape {tuple(distances.shape)}")
                cs = self._new_class(distances.numpy(force=True))
                if g.shape[0]:
                    cs.growing.add(g.clone(), g)
                    st.stored += int(g.shape[0])
                if version == 1:
                    for d in torch.as_tensor(raw["recorded"], dtype=torch.float64).tolist():
                        cs.record(d)  # replays the Welford sums exactly
                else:
                    wf = torch.as_tensor(raw["welford"], dtype=torch.float64)
                    if wf.shape != (3,) or not float(wf[0]).is_integer() or float(wf[0]) < 0:
                        raise ValueError(f"class {c}: welford sums {wf.tolist()}")
                    count, mean, m2 = wf.tolist()
                    cs.count, cs.mean, cs.m2 = int(count), mean, m2
                cs.threshold = float(raw["threshold"])
                st.classes[int(c)] = cs
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputValidationError(f"state: not a PRADA client state ({e})") from None
        self._clients[client_id] = st

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"PradaDetector({args})"


# ---------------------------------------------------------------------- streams and calibration

Answer = Callable[[Tensor], Tensor]


def _answer_fn(answer: nn.Module | Answer) -> Answer:
    if isinstance(answer, nn.Module):
        from stealproof.oracle import victim_posteriors

        victim = answer
        return lambda x: victim_posteriors(victim, x)[0]
    return answer


@dataclass(frozen=True)
class StreamTrace:
    """What PRADA saw on one stream: every normality test and the first flagged query."""

    queries: int
    #: (queries seen, W) at every test that computed W
    checks: list[tuple[int, float]]
    #: 1-based index of the first flagged query (None: never flagged at this delta)
    first_flag: int | None

    @property
    def min_w(self) -> float | None:
        """The smallest W of the stream (None when no test computed W)."""
        return min((w for _, w in self.checks), default=None)

    def first_flag_at(self, delta: float) -> int | None:
        """The query at which a detector with this delta would first flag (flag: W < delta)."""
        return next((q for q, w in self.checks if w < delta), None)


def trace_stream(
    stream: Tensor,
    answer: nn.Module | Answer,
    *,
    detector: PradaDetector | None = None,
    batch_size: int = 100,
    client_id: str = "stream",
) -> StreamTrace:
    """Feed ``stream`` (images in query order) to a fresh client of ``detector`` and trace it.

    ``answer`` gives the victim's posteriors (PRADA needs the predicted class): the victim
    itself or any callable ``images -> [B, K] posteriors``. The detector's state for
    ``client_id`` is reset before and after (default detector: ``PradaDetector()``).
    """
    det = detector if detector is not None else PradaDetector()
    det.reset_client(client_id)
    ask = _answer_fn(answer)
    x = check_images(stream, "stream")
    if batch_size < 1:
        raise InputValidationError(f"batch_size: expected ≥ 1, got {batch_size}")
    checks: list[tuple[int, float]] = []
    first: int | None = None
    every = det.config.check_every
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = ask(xb)
        lo = 0
        while lo < xb.shape[0]:
            # observe in chunks that end at the test points, so that every W can be read off
            hi = min(int(xb.shape[0]), lo + every - det.queries_seen(client_id) % every)
            tests = det.tests_run(client_id)
            out = det.observe(client_id, xb[lo:hi], yb[lo:hi])
            w = det.last_w(client_id)
            if det.tests_run(client_id) > tests and w is not None:
                checks.append((det.queries_seen(client_id), w))
            if first is None and bool(out.flags.any()):
                first = start + lo + int(out.flags.nonzero()[0, 0]) + 1
            lo = hi
    det.reset_client(client_id)
    return StreamTrace(queries=int(x.shape[0]), checks=checks, first_flag=first)


def benign_streams(images: Tensor, n: int, length: int, seed: int) -> list[Tensor]:
    """``n`` benign query streams of ``length`` images for :func:`calibrate_delta`.

    Each is a random permutation of ``images`` followed, past one pass, by randomly augmented
    repeats (small affine jitter, :meth:`~stealproof.data.Pool.draw`); stream ``i`` is seeded
    with ``seed + i``.
    """
    x = check_images(images, "images")
    if n < 1 or length < 1:
        raise InputValidationError(f"n, length: expected ≥ 1, got {n}, {length}")
    pool = Pool("benign", x, torch.zeros(x.shape[0], dtype=torch.long))
    return [pool.draw(length, torch.Generator().manual_seed(seed + i))[0] for i in range(n)]


def calibrate_delta(
    streams: Sequence[Tensor],
    answer: nn.Module | Answer,
    *,
    config: PradaConfig | None = None,
    batch_size: int = 100,
    margin: float = 0.0,
) -> float:
    """The largest delta that raises no flag on any of the benign ``streams``, minus ``margin``.

    That is the smallest W any test computed on them: the flag rule is ``W < delta``, so a
    stream whose smallest W equals delta exactly is *not* flagged (ties go to "benign"). The
    ``delta`` of ``config`` is ignored; its other fields (test spacing, pooling) are used.
    ``margin`` (≥ 0) lowers the result for streams the calibration did not see: with n
    calibration streams a fresh benign stream dips below all of them with chance about
    1/(n + 1), so ``margin=0`` suits a check on the calibration streams themselves only.
    Raises :class:`~stealproof.errors.InputValidationError` when no test computed W (streams
    too short: W needs more than ``min_pooled`` pooled distances).
    """
    if len(streams) == 0:
        raise InputValidationError("streams: expected at least one benign stream")
    if not 0.0 <= margin < 1.0:
        raise InputValidationError(f"margin: expected a value in [0, 1), got {margin}")
    cfg = config if config is not None else PradaConfig()
    det = PradaDetector(cfg)
    minima = []
    for i, s in enumerate(streams):
        tr = trace_stream(s, answer, detector=det, batch_size=batch_size, client_id=f"cal-{i}")
        if tr.min_w is not None:
            minima.append(tr.min_w)
    if not minima:
        raise InputValidationError(
            f"streams: no Shapiro–Wilk test ran on any stream (W needs more than "
            f"{cfg.min_pooled} pooled distances; the longest stream has "
            f"{max(int(s.shape[0]) for s in streams)} queries)"
        )
    return max(0.0, float(min(minima)) - margin)
