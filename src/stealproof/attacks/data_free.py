"""What the data-free attacks (DFME, MAZE, DaST) share.

They train a generator and the clone against each other, with no natural images at all: every
query is a generator output. The pieces here:

* :class:`DataFreeConfig` — seed, batch size, learning rates, generator size, schedule,
  ``label_only``, trace frequency, ``keep_queries``, device;
* :class:`DataFreeResult` — :class:`~stealproof.attacks.base.AttackResult` plus the trained
  ``generator`` (an :class:`~stealproof.attacks.generators.ImageGenerator`);
* :class:`QueryMeter` — the black box as the attack sees it: counts rows against the budget,
  advances the progress bar and keeps the last ``keep_queries`` rows;
* :class:`ReplayBuffer` — a bounded reservoir of past (image, answer) pairs (MAZE's replay);
* :class:`ZerothOrderAttack` — the DFME/MAZE loop, parametrised by the disagreement loss.

Conventions, common to all three attacks:

* **Budget**: the number of iterations is derived from ``budget`` (``budget // rows per
  iteration``); a query is sent only when it fits, so the black box's budget is never exceeded
  and :class:`~stealproof.errors.BudgetExhaustedError` is never raised. Rows left over (fewer
  than one iteration needs) are not spent.
* **Memory**: data-free budgets are large (10⁵–10⁷ rows), so queries are not stored: the
  result's :class:`~stealproof.attacks.base.TransferSet` holds only the *last*
  ``keep_queries`` rows sent (default 0: empty), in the order sent, including the
  zeroth-order perturbation points.
* **Refusals**: when the black box refuses a query (a detection policy blocked the client, or
  the box's own budget ran out) the iteration in progress is abandoned, a last trace point is
  taken and the attack returns the clone as it is, with ``stopped`` / ``blocked_at`` set (see
  :class:`~stealproof.attacks.base.QueryGuard`).
* **Clone selection**: a data-free thief has no held-out natural data, so the clone is the last
  one (no selection). ``eval_data`` only scores the trace.
* **Answers**: log-probabilities are clamped below at ``log_prob_min`` (defended answers may
  contain exact zeros). ``label_only`` replaces every answer by the one-hot of its argmax
  before anything uses it.
* **Randomness**: model initialisation and dropout run under ``torch.random.fork_rng`` seeded
  with ``seed``; latent codes, directions, labels and replay draws come from one CPU
  ``torch.Generator`` seeded with ``seed``. Same seed, same device → same numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof.attacks.base import (
    AttackResult,
    BlackBoxLike,
    CloneFactory,
    QueryGuard,
    TracePoint,
    TransferSet,
    check_budget,
    evaluate_trace_point,
)
from stealproof.attacks.generators import GeneratorKind, ImageGenerator, create_generator
from stealproof.attacks.zeroth_order import DEFAULT_MU, zeroth_order_gradient
from stealproof.errors import InputValidationError

log = logging.getLogger(__name__)

Schedule = Literal["cosine", "step", "constant"]


class DataFreeConfig(BaseModel):
    """Options shared by :class:`~stealproof.attacks.dfme.DFME`, MAZE and DaST."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(256, ge=2, description="generator samples per step (rows per query)")
    clone_optimizer: Literal["sgd", "adam"] = Field("adam", description="optimiser of the clone")
    clone_lr: float = Field(1e-3, gt=0, description="clone learning rate")
    clone_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the clone")
    clone_weight_decay: float = Field(0.0, ge=0, description="clone weight decay")
    generator_lr: float = Field(1e-3, gt=0, description="generator learning rate (Adam)")
    latent_dim: int | None = Field(None, ge=1, description="generator latent size (None: by size)")
    generator_kind: GeneratorKind = Field("auto", description="mlp, conv or auto (by image size)")
    generator_width: int | None = Field(None, ge=1, description="generator width (None: by size)")
    schedule: Schedule = Field(
        "cosine",
        description="learning-rate schedule over the iterations (step: DFME's 0.3× at 10/30/50%)",
    )
    label_only: bool = Field(False, description="use argmax of the answers only")
    log_prob_min: float = Field(-20.0, lt=0, description="clamp for log-probabilities")
    trace_points: int = Field(10, ge=1, description="trace points over the run (plus the end)")
    keep_queries: int = Field(0, ge=0, description="keep the last N rows sent in the result")
    device: str | None = Field(None, description="torch device (run's device argument wins)")
    seed: int = 0


@dataclass
class DataFreeResult(AttackResult):
    """The last clone, the trained generator, the trace and (bounded) kept queries.

    ``history`` has one entry per trace point: queries, mean clone loss and mean generator
    loss since the previous point. ``iterations`` counts the iterations completed (one cut
    short by a refusal is not counted).
    """

    generator: ImageGenerator = field(kw_only=True)
    iterations: int = field(default=0, kw_only=True)
    history: list[dict[str, float]] = field(default_factory=list, kw_only=True)


def log_probs(answers: Tensor, floor: float) -> Tensor:
    """``max(log ỹ, floor)``: finite even where an answer holds exact zeros."""
    return torch.log(answers.clamp_min(math.exp(floor)))


def one_hot_answers(answers: Tensor) -> Tensor:
    """One-hot rows of the answers' argmax (the label-only view)."""
    return F.one_hot(answers.argmax(dim=1), answers.shape[1]).to(answers.dtype)


class QueryMeter:
    """The black box seen by a data-free attack: rows against ``budget``, progress, kept rows.

    Satisfies :class:`~stealproof.attacks.base.BlackBoxLike`; every :meth:`query` is one call to
    the wrapped box. ``label_only`` turns answers into one-hot labels.
    """

    def __init__(
        self,
        blackbox: BlackBoxLike,
        budget: int,
        *,
        keep: int = 0,
        label_only: bool = False,
        step: _progress._Step | None = None,
    ) -> None:
        self.blackbox = blackbox
        self.budget = budget
        self.keep = keep
        self.label_only = label_only
        self._step = step
        self._start = blackbox.queries_used
        self._rows = 0
        self._kept: list[tuple[Tensor, Tensor]] = []
        self._kept_rows = 0

    @property
    def queries_used(self) -> int:
        """Rows sent through this meter."""
        return self._rows

    @property
    def budget_left(self) -> int | None:
        """Rows of the attack's budget not yet spent."""
        return self.budget - self._rows

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.blackbox.input_shape

    @property
    def num_classes(self) -> int | None:
        return self.blackbox.num_classes

    @property
    def charged(self) -> int:
        """Rows the wrapped box counted since this meter was made."""
        return self.blackbox.queries_used - self._start

    def fits(self, rows: int) -> bool:
        """Whether ``rows`` more rows stay within the budget."""
        return self._rows + rows <= self.budget

    def query(self, x: Tensor) -> Tensor:
        n = int(x.shape[0])
        if not self.fits(n):  # the attacks check first; this guards the invariant
            raise InputValidationError(
                f"budget: {n} more rows would exceed the attack's budget of {self.budget}"
            )
        answers = self.blackbox.query(x.detach()).detach().float()
        self._rows += n
        if self._step is not None:
            self._step(n)
        if self.keep > 0:
            self._remember(x.detach().cpu(), answers.cpu())
        if self.label_only:
            answers = one_hot_answers(answers)
        return answers.to(x.device)

    def _remember(self, x: Tensor, y: Tensor) -> None:
        self._kept.append((x[-self.keep :], y[-self.keep :]))
        self._kept_rows += min(x.shape[0], self.keep)
        while self._kept and self._kept_rows - self._kept[0][0].shape[0] >= self.keep:
            self._kept_rows -= self._kept.pop(0)[0].shape[0]

    def transfer(self, image_shape: tuple[int, ...], num_classes: int) -> TransferSet:
        """The last ``keep`` rows sent (raw answers), oldest first; empty when ``keep`` is 0."""
        if not self._kept:
            return TransferSet(torch.empty(0, *image_shape), torch.empty(0, num_classes))
        images = torch.cat([k[0] for k in self._kept])[-self.keep :]
        answers = torch.cat([k[1] for k in self._kept])[-self.keep :]
        return TransferSet(images, answers)


class ReplayBuffer:
    """A bounded reservoir of (image, answer) pairs: every row seen so far is kept with equal
    probability ``capacity / seen`` (Vitter's algorithm R, vectorised per batch)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InputValidationError(f"replay_size: expected ≥ 1, got {capacity}")
        self.capacity = capacity
        self.images: Tensor | None = None
        self.answers: Tensor | None = None
        self.seen = 0

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """Offer a batch; rows replace random slots once the buffer is full."""
        x, y = x.detach(), y.detach()
        n = int(x.shape[0])
        if self.images is None or self.answers is None:
            self.images = x.new_empty(self.capacity, *x.shape[1:])
            self.answers = y.new_empty(self.capacity, *y.shape[1:])
        pos = torch.arange(self.seen, self.seen + n)  # 0-based arrival index of each row
        draw = (torch.rand(n, generator=generator, dtype=torch.float64) * (pos + 1)).long()
        slots = torch.where(pos < self.capacity, pos, draw)
        accept = slots < self.capacity
        rows, slots = accept.nonzero(as_tuple=True)[0], slots[accept]
        if rows.numel():
            # several rows of one batch may pick the same slot: the latest one wins
            winner = torch.full((self.capacity,), -1, dtype=torch.long)
            winner.scatter_reduce_(0, slots, rows, reduce="amax")
            keep = winner[slots] == rows
            rows, slots = rows[keep].to(x.device), slots[keep].to(x.device)
            self.images[slots] = x[rows]
            self.answers[slots] = y[rows]
        self.seen += n

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` pairs drawn uniformly (with replacement) from the buffer."""
        if self.images is None or self.answers is None or len(self) == 0:
            raise InputValidationError("replay: the buffer is empty")
        idx = torch.randint(len(self), (n,), generator=generator).to(self.images.device)
        return self.images[idx], self.answers[idx]


def infer_shapes(blackbox: BlackBoxLike, clone: nn.Module) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and class count from the black box, else from the clone's attributes."""
    shape = blackbox.input_shape or getattr(clone, "input_shape", None)
    k = blackbox.num_classes or getattr(clone, "num_classes", None)
    if shape is None or len(tuple(shape)) != 3:
        raise InputValidationError(
            "blackbox: the input shape (C, H, W) is unknown; neither the black box nor the "
            "clone says it"
        )
    if k is None:
        raise InputValidationError(
            "blackbox: the class count is unknown; neither the black box nor the clone says it"
        )
    c, h, w = (int(s) for s in tuple(shape))
    return (c, h, w), int(k)


def make_optimizer(params: Iterator[nn.Parameter], cfg: DataFreeConfig) -> torch.optim.Optimizer:
    """The clone's optimiser from the config."""
    if cfg.clone_optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.clone_lr,
            momentum=cfg.clone_momentum,
            weight_decay=cfg.clone_weight_decay,
        )
    return torch.optim.Adam(params, lr=cfg.clone_lr, weight_decay=cfg.clone_weight_decay)


def make_scheduler(
    opt: torch.optim.Optimizer, schedule: Schedule, iterations: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: cosine to 0, DFME's ×0.3 steps at 10/30/50 %, or constant."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iterations))
    if schedule == "step":
        marks = sorted({max(1, round(f * iterations)) for f in (0.1, 0.3, 0.5)})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.3)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every module's previous mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _resolve_device(device: torch.device | str | None, cfg: DataFreeConfig) -> torch.device:
    return torch.device(device if device is not None else cfg.device or "cpu")


C = TypeVar("C", bound=DataFreeConfig)


class DataFreeAttack(Generic[C]):
    """The frame of a data-free attack: setup, budget, trace, result. Subclasses define
    :meth:`rows_per_iteration` and :meth:`iteration`."""

    name: ClassVar[str]
    config: C
    clone: nn.Module
    generator: ImageGenerator
    device: torch.device
    num_classes: int
    clone_opt: torch.optim.Optimizer
    gen_opt: torch.optim.Optimizer
    clone_sched: torch.optim.lr_scheduler.LRScheduler
    gen_sched: torch.optim.lr_scheduler.LRScheduler

    def __init__(self, config: C) -> None:
        self.config = config

    # -- what subclasses define
    def rows_per_iteration(self) -> int:
        """Black-box rows one iteration spends."""
        raise NotImplementedError

    def make_generator(self, shape: tuple[int, int, int], num_classes: int) -> ImageGenerator:
        """The generator for this attack (seeded by the caller)."""
        cfg = self.config
        return create_generator(
            shape, cfg.latent_dim, kind=cfg.generator_kind, width=cfg.generator_width
        )

    def setup(self, clone: nn.Module, generator: ImageGenerator, iterations: int) -> None:
        """Optimisers (clone: the config's; generator: Adam) and per-iteration schedules."""
        cfg = self.config
        self.clone_opt = make_optimizer(clone.parameters(), cfg)
        self.gen_opt = torch.optim.Adam(generator.parameters(), lr=cfg.generator_lr)
        self.clone_sched = make_scheduler(self.clone_opt, cfg.schedule, iterations)
        self.gen_sched = make_scheduler(self.gen_opt, cfg.schedule, iterations)

    def end_iteration(self) -> None:
        """Advance both learning-rate schedules by one iteration."""
        self.clone_sched.step()
        self.gen_sched.step()

    def iteration(self, meter: QueryMeter, rng: torch.Generator) -> tuple[float, float]:
        """One iteration; returns (clone loss, generator loss)."""
        raise NotImplementedError

    # -- the shared loop
    def run(
        self,
        blackbox: BlackBoxLike,
        budget: int,
        make_clone: CloneFactory,
        *,
        eval_data: tuple[Tensor, Tensor] | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> DataFreeResult:
        """Spend at most ``budget`` rows; return the last clone, the generator and the trace.

        ``eval_data`` (the evaluator's labelled test set) only scores the trace; it never
        influences training or selection.
        """
        cfg = self.config
        check_budget(blackbox, budget)
        per_iter = self.rows_per_iteration()
        iterations = budget // per_iter
        if iterations < 1:
            raise InputValidationError(
                f"budget: {self.name} spends {per_iter} rows per iteration "
                f"(batch_size {cfg.batch_size}); got a budget of {budget}"
            )
        dev = _resolve_device(device, cfg)
        forked = [] if dev.type != "cuda" else [dev.index if dev.index is not None else 0]
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(cfg.seed)
            clone = make_clone().to(dev)
            shape, k = infer_shapes(blackbox, clone)
            torch.manual_seed(cfg.seed + 1)
            generator = self.make_generator(shape, k).to(dev)
            torch.manual_seed(cfg.seed + 2)  # dropout etc. inside the loop
            self.clone, self.generator, self.device = clone, generator, dev
            self.num_classes = k
            self.setup(clone, generator, iterations)
            rng = torch.Generator().manual_seed(cfg.seed)
            every = max(1, math.ceil(iterations / cfg.trace_points))
            trace: list[TracePoint] = []
            history: list[dict[str, float]] = []
            losses: list[tuple[float, float]] = []
            with _progress.task(progress, f"querying ({self.name})", total=budget) as step:
                meter = QueryMeter(
                    blackbox, budget, keep=cfg.keep_queries, label_only=cfg.label_only, step=step
                )
                guard = QueryGuard(blackbox, self.name)
                done = 0
                while done < iterations and meter.fits(per_iter):
                    with guard.refusals():
                        losses.append(self.iteration(meter, rng))
                        done += 1
                    at_end = done % every == 0 or done == iterations
                    if guard.stopped:  # a last point, unless the previous one is already here
                        at_end = not trace or trace[-1].queries != meter.charged
                    if at_end:
                        point = evaluate_trace_point(clone, meter.charged, eval_data)
                        trace.append(point)
                        cl = sum(c for c, _ in losses) / max(1, len(losses))
                        gl = sum(g for _, g in losses) / max(1, len(losses))
                        history.append(
                            {
                                "queries": float(point.queries),
                                "clone_loss": cl,
                                "generator_loss": gl,
                            }
                        )
                        losses.clear()
                        log.debug(
                            "%s: %d rows, clone loss %.4f, generator loss %.4f, clone acc %s",
                            self.name,
                            point.queries,
                            cl,
                            gl,
                            point.clone_acc,
                        )
                    if guard.stopped:
                        break
        clone.eval()
        generator.eval()
        return DataFreeResult(
            clone=clone,
            transfer=meter.transfer(shape, k),
            trace=trace,
            generator=generator,
            iterations=done,
            history=history,
            **guard.outcome(),
        )


# ----------------------------------------------------------------------------- DFME / MAZE


class ZerothOrderConfig(DataFreeConfig):
    """Options of the zeroth-order attacks (DFME, MAZE)."""

    directions: int = Field(1, ge=1, description="random directions m per zeroth-order estimate")
    mu: float = Field(DEFAULT_MU, gt=0, description="finite-difference step μ")
    generator_steps: int = Field(1, ge=1, description="generator steps per iteration")
    clone_steps: int = Field(5, ge=1, description="clone steps (fresh queries) per iteration")
    replay_steps: int = Field(0, ge=0, description="clone steps on replayed queries per iteration")
    replay_size: int = Field(
        50_000, ge=1, description="replay reservoir capacity in rows (used when replay_steps > 0)"
    )


ZC = TypeVar("ZC", bound=ZerothOrderConfig)


class ZerothOrderAttack(DataFreeAttack[ZC]):
    """DFME's loop: per iteration ``generator_steps`` generator steps through a zeroth-order
    estimate (``(m + 1)·B`` rows each), ``clone_steps`` clone steps on fresh generator samples
    (``B`` rows each) and ``replay_steps`` clone steps on replayed past queries (no rows).

    Subclasses define the per-row disagreement :meth:`row_loss` between the clone's logits and
    the answers; the clone minimises its batch mean and the generator maximises it.
    """

    def row_loss(self, clone_logits: Tensor, answers: Tensor) -> Tensor:
        """Disagreement per row [B] between clone logits [B, K] and answers [B, K]."""
        raise NotImplementedError

    def rows_per_iteration(self) -> int:
        cfg = self.config
        return cfg.batch_size * (cfg.generator_steps * (cfg.directions + 1) + cfg.clone_steps)

    def setup(self, clone: nn.Module, generator: ImageGenerator, iterations: int) -> None:
        super().setup(clone, generator, iterations)
        cfg = self.config
        self.replay = ReplayBuffer(cfg.replay_size) if cfg.replay_steps > 0 else None

    def _clone_loss_fn(self, pixels: Tensor, answers: Tensor) -> Tensor:
        with eval_mode(self.clone):
            return self.row_loss(self.clone(pixels), answers)

    def _clone_step(self, x: Tensor, answers: Tensor) -> float:
        self.clone.train()
        loss = self.row_loss(self.clone(x), answers).mean()
        self.clone_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.clone_opt.step()
        return float(loss.detach())

    def iteration(self, meter: QueryMeter, rng: torch.Generator) -> tuple[float, float]:
        cfg, gen, dev = self.config, self.generator, self.device
        gen.train()
        g_loss = 0.0
        for _ in range(cfg.generator_steps):
            a = gen.pre_images(gen.sample_latent(cfg.batch_size, rng, dev))
            est = zeroth_order_gradient(
                meter, a, self._clone_loss_fn, generator=rng, directions=cfg.directions, mu=cfg.mu
            )
            self.gen_opt.zero_grad(set_to_none=True)
            a.backward(-est.grad / cfg.batch_size)  # ascend the disagreement
            self.gen_opt.step()
            g_loss += float(est.loss.mean())
            if self.replay is not None:
                self.replay.add(est.images, est.answers, rng)
        c_loss = 0.0
        for _ in range(cfg.clone_steps):
            with torch.no_grad():
                x = gen(gen.sample_latent(cfg.batch_size, rng, dev))
            y = meter.query(x)
            c_loss += self._clone_step(x, y)
            if self.replay is not None:
                self.replay.add(x, y, rng)
        if self.replay is not None:
            for _ in range(cfg.replay_steps):
                xr, yr = self.replay.sample(cfg.batch_size, rng)
                self._clone_step(xr, yr)
        self.end_iteration()
        return c_loss / cfg.clone_steps, g_loss / cfg.generator_steps


def centred_log_probs(answers: Tensor, floor: float) -> Tensor:
    """DFME's stand-in for victim logits: clamped log-probabilities minus their row mean."""
    lp = log_probs(answers, floor)
    return lp - lp.mean(dim=1, keepdim=True)


def cast_config(config: BaseModel | None, cls: type[C], params: dict[str, object]) -> C:
    """``config`` when given (it must be a ``cls``), else ``cls`` validated from ``params``."""
    if config is None:
        return cls.model_validate(params)
    if params:
        raise InputValidationError(
            f"config: pass either a {cls.__name__} or keyword parameters, not both"
        )
    if not isinstance(config, cls):
        raise InputValidationError(
            f"config: expected a {cls.__name__}, got {type(config).__name__}"
        )
    return config
