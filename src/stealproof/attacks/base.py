"""What every attack shares: the result type, clone construction and clone training.

An attack takes a black box, a query budget, a way to build the clone and its own data, and
returns the clone plus a trace of clone accuracy against queries used. The clone is selected on
the thief's *own* held-out queries, never on the victim's test set.

Refusals: when the black box refuses a query — a detection policy blocked the client
(:class:`~stealproof.errors.ClientBlockedError`) or its budget ran out under the attack
(:class:`~stealproof.errors.BudgetExhaustedError`) — every attack stops querying, keeps what it
was answered, trains the clone on that and returns normally. :class:`QueryGuard` is that logic
for all attacks; the result says why and where it stopped (:class:`AttackResult`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

import torch
from rich.progress import Progress
from torch import Tensor, nn

from stealproof.errors import BudgetExhaustedError, ClientBlockedError, InputValidationError
from stealproof.metrics import clone_accuracy
from stealproof.models.base import Classifier
from stealproof.models.registry import create_model
from stealproof.train import TrainConfig, TrainResult, train_model

log = logging.getLogger(__name__)

CloneFactory = Callable[[], nn.Module]

#: Why an attack ended before its plan: the client was blocked, or the box's budget ran out.
StopReason = Literal["blocked", "budget"]


class BlackBoxLike(Protocol):
    """All an attack may touch: ``query`` and the meter.

    :class:`~stealproof.oracle.BlackBox` and the counter-attack wrappers of
    :mod:`stealproof.attacks.counter` (e.g. ``AveragingBlackBox``) satisfy it.
    """

    @property
    def queries_used(self) -> int:
        """Rows answered so far."""
        ...

    @property
    def budget_left(self) -> int | None:
        """Rows left (``None`` when unlimited)."""
        ...

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) the box expects, when known."""
        ...

    @property
    def num_classes(self) -> int | None:
        """Classes per answer, when known."""
        ...

    def query(self, x: Tensor) -> Tensor:
        """Answer a batch of images [B, C, H, W] in [0, 1] with released posteriors [B, K]."""
        ...


@dataclass
class TracePoint:
    """Clone accuracy (on the evaluator's test set, if one was given) after ``queries`` rows."""

    queries: int
    clone_acc: float | None


@dataclass
class TransferSet:
    """The thief's queries and the answers it received, in the order they were sent.

    ``pool_index`` is, for pool-based attacks, the pool row each query was drawn from (before
    augmentation); ``None`` otherwise.
    """

    images: Tensor
    answers: Tensor
    pool_index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def prefix(self, n: int) -> TransferSet:
        """The first ``n`` query/answer pairs (what a smaller budget would have bought)."""
        index = None if self.pool_index is None else self.pool_index[:n]
        return TransferSet(self.images[:n], self.answers[:n], index)


@dataclass
class AttackResult:
    """The clone, the transfer set it was trained on, the accuracy trace and how the run ended.

    ``stopped`` is ``None`` when the attack ran its plan, ``"blocked"`` when the black box
    blocked the client, ``"budget"`` when the box's budget ran out under it; ``blocked_at`` is
    ``queries_used`` at the moment of the block (``None`` otherwise) and ``stop_message`` the
    refusal's text. ``flagged_rows`` counts rows the box's detection policy flagged during the
    run (``None`` when the box has no policy meter). ``train_result`` is ``None`` when the clone
    was never trained (no answer at all: it is the freshly initialised clone).
    """

    clone: nn.Module
    transfer: TransferSet
    queries_used: int
    trace: list[TracePoint] = field(default_factory=list)
    train_result: TrainResult | None = None
    stopped: StopReason | None = None
    blocked_at: int | None = None
    stop_message: str | None = None
    flagged_rows: int | None = None


class StopFields(TypedDict):
    """The fields of :class:`AttackResult` that :meth:`QueryGuard.outcome` fills."""

    queries_used: int
    stopped: StopReason | None
    blocked_at: int | None
    stop_message: str | None
    flagged_rows: int | None


@dataclass(frozen=True)
class Stop:
    """A refusal: why, after how many of the attack's rows, and the black box's message."""

    reason: StopReason
    rows: int
    message: str


def _flagged(blackbox: BlackBoxLike) -> int | None:
    value = getattr(blackbox, "flagged_rows", None)
    return int(value) if value is not None else None


class QueryGuard:
    """An attack's account with its black box: rows since the start, and a clean stop.

    Run querying code inside :meth:`refusals`: a ``ClientBlockedError`` or
    ``BudgetExhaustedError`` from the box ends the block (not the attack) and is recorded in
    :attr:`stop` (the first one only); the attack then trains on what it has and returns.
    """

    def __init__(self, blackbox: BlackBoxLike, name: str = "attack") -> None:
        self.blackbox = blackbox
        self.name = name
        self.start = blackbox.queries_used
        self._flagged_start = _flagged(blackbox)
        self.stop: Stop | None = None

    @property
    def used(self) -> int:
        """Rows the black box answered since this guard was made."""
        return self.blackbox.queries_used - self.start

    @property
    def stopped(self) -> bool:
        """Whether the box refused a query."""
        return self.stop is not None

    @contextmanager
    def refusals(self) -> Iterator[None]:
        """Run a querying block; a refusal ends the block quietly and is recorded."""
        try:
            yield
        except ClientBlockedError as err:
            self._record("blocked", err)
        except BudgetExhaustedError as err:
            self._record("budget", err)

    def _record(self, reason: StopReason, err: Exception) -> None:
        if self.stop is None:
            self.stop = Stop(reason, self.used, str(err))
            log.info("%s: stopped after %d rows: %s", self.name, self.used, err)

    def outcome(self) -> StopFields:
        """``queries_used``, ``stopped``, ``blocked_at``, ``stop_message``, ``flagged_rows``."""
        stop = self.stop
        now = _flagged(self.blackbox)
        flagged = None if now is None or self._flagged_start is None else now - self._flagged_start
        return StopFields(
            queries_used=self.used,
            stopped=None if stop is None else stop.reason,
            blocked_at=stop.rows if stop is not None and stop.reason == "blocked" else None,
            stop_message=None if stop is None else stop.message,
            flagged_rows=flagged,
        )


def clone_factory_like(
    victim: nn.Module, architecture: str | None = None, **overrides: object
) -> CloneFactory:
    """A factory of fresh clones: the victim's own architecture by default, or another one.

    The input shape and class count are taken from the victim; ``overrides`` go to the model.
    """
    if not isinstance(victim, Classifier):
        raise TypeError("clone_factory_like needs a stealproof Classifier victim")
    spec = victim.spec
    c, h, w = victim.input_shape

    def make() -> nn.Module:
        if architecture is None or architecture == spec.name:
            kwargs = {**spec.kwargs, **overrides}
            return create_model(spec.name, **kwargs)
        kwargs = {
            "in_channels": c,
            "image_size": (h, w),
            "num_classes": victim.num_classes,
            **overrides,
        }
        return create_model(architecture, **kwargs)

    return make


def check_budget(blackbox: BlackBoxLike, budget: int) -> None:
    """Reject a budget below one row or above what the black box has left, before any query."""
    if budget < 1:
        raise InputValidationError(f"budget: expected ≥ 1 rows, got {budget}")
    left = blackbox.budget_left
    if left is not None and left < budget:
        raise InputValidationError(
            f"budget: the black box has {left} rows left, the attack asks for {budget}"
        )


def split_holdout(n: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices (train, held-out) for the thief's own validation split."""
    perm = torch.randperm(n, generator=generator)
    n_val = round(fraction * n) if n >= 10 else 0
    return perm[n_val:], perm[:n_val]


def train_clone(
    make_clone: CloneFactory,
    transfer: TransferSet,
    train_config: TrainConfig,
    *,
    label_only: bool = False,
    holdout: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    description: str = "clone",
) -> tuple[nn.Module, TrainResult]:
    """Train a fresh clone on the transfer set; select it on the thief's held-out answers.

    ``label_only`` trains on argmax of the answers (the label-only counter-attack).
    """
    g = torch.Generator().manual_seed(seed)
    targets = transfer.answers.argmax(dim=1) if label_only else transfer.answers
    tr, va = split_holdout(len(transfer), holdout, g)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG state
        torch.manual_seed(seed)
        clone = make_clone()
    if device is not None:
        clone.to(device)
    val = (transfer.images[va], targets[va]) if len(va) else None
    result = train_model(
        clone,
        transfer.images[tr],
        targets[tr],
        train_config,
        val=val,
        device=device,
        progress=progress,
        description=description,
    )
    return clone, result


def fit_clone(
    make_clone: CloneFactory,
    transfer: TransferSet,
    train_config: TrainConfig,
    *,
    label_only: bool = False,
    holdout: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    description: str = "clone",
) -> tuple[nn.Module, TrainResult | None]:
    """:func:`train_clone`, or with an empty transfer set (a client refused from its first query)
    the same seeded clone untrained, in eval mode, and ``None`` for the training result."""
    if len(transfer) > 0:
        return train_clone(
            make_clone,
            transfer,
            train_config,
            label_only=label_only,
            holdout=holdout,
            seed=seed,
            device=device,
            progress=progress,
            description=description,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clone = make_clone()
    if device is not None:
        clone.to(device)
    return clone.eval(), None


def empty_transfer(shape: tuple[int, ...] | None, num_classes: int | None) -> TransferSet:
    """A transfer set with no rows (images [0, *shape], answers [0, K])."""
    return TransferSet(torch.empty(0, *(shape or ())), torch.empty(0, num_classes or 0))


def evaluate_trace_point(
    clone: nn.Module, queries: int, eval_data: tuple[Tensor, Tensor] | None
) -> TracePoint:
    """Trace point with clone accuracy on ``eval_data`` when the evaluator supplied it."""
    acc = None if eval_data is None else clone_accuracy(clone, eval_data[0], eval_data[1])
    return TracePoint(queries, acc)
