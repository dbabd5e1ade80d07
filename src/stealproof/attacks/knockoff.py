"""KnockoffNets (Orekondy et al., CVPR 2019): query a pool of natural images, train on answers.

Two sampling policies: ``random`` (the pool without replacement, then augmented repeats) and
``adaptive`` (a gradient bandit over the pool's groups, rewarded by answer certainty, answer
diversity and the online clone's loss). The clone is trained from scratch on all answers with
soft cross-entropy (or on argmax of the answers for the label-only counter-attack) and selected
on the thief's own held-out answers. When the black box refuses a query (the client was blocked,
or its budget ran out) the attack stops querying and trains on what it was answered (see
:class:`~stealproof.attacks.base.QueryGuard`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

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
    TransferSet,
    check_budget,
    empty_transfer,
    evaluate_trace_point,
    fit_clone,
)
from stealproof.data.pools import Pool
from stealproof.errors import InputValidationError
from stealproof.train import TrainConfig

Reward = Literal["cert", "div", "loss"]


def default_clone_training() -> TrainConfig:
    """Clone training used by default: Adam, cosine schedule, 15 epochs, batch 64.

    (The reference uses SGD lr 0.01, momentum 0.5, batch 64 for many more epochs; pass
    ``TrainConfig(optimizer="sgd", lr=0.01, momentum=0.5, batch_size=64, epochs=...)`` for it.)
    """
    return TrainConfig(epochs=15, batch_size=64, optimizer="adam", lr=1e-3, schedule="cosine")


class KnockoffConfig(BaseModel):
    """Parameters of :class:`KnockoffNets`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["random", "adaptive"] = "random"
    rewards: tuple[Reward, ...] = ("cert", "div", "loss")
    label_only: bool = Field(False, description="train on argmax of the answers")
    query_batch: int = Field(128, ge=1, description="rows per black-box call")
    holdout: float = Field(0.1, ge=0, lt=1, description="thief's own validation share")
    augment: bool = Field(True, description="augmented repeats once the pool is used up")
    bandit_lr: float = Field(0.1, gt=0, description="step size of the gradient bandit")
    train: TrainConfig = Field(default_factory=default_clone_training)
    seed: int = 0


def certainty(answers: Tensor) -> Tensor:
    """Top-1 minus top-2 probability per row."""
    top2 = answers.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def diversity(answers: Tensor, running_mean: Tensor) -> Tensor:
    """Σ_k max(0, ỹ_k − ȳ_k): how much an answer departs upward from the mean answer."""
    return (answers - running_mean[None, :]).clamp_min(0).sum(dim=1)


def clone_loss(clone: nn.Module, x: Tensor, answers: Tensor) -> Tensor:
    """Per-row soft cross-entropy of the online clone, with log clamped for safety."""
    with torch.no_grad():
        logp = F.log_softmax(clone(x), dim=1).clamp_min(-30.0)
    return -(answers * logp).sum(dim=1)


class _RunningStat:
    """Running mean and variance (Welford) for reward normalisation."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: Tensor) -> None:
        for v in values.double().tolist():  # a few hundred scalars per round: cheap
            self.n += 1
            d = v - self.mean
            self.mean += d / self.n
            self.m2 += d * (v - self.mean)

    def normalize(self, values: Tensor) -> Tensor:
        std = (self.m2 / self.n) ** 0.5 if self.n > 1 else 1.0
        return (values - self.mean) / max(std, 1e-8)


class KnockoffNets:
    """The KnockoffNets attack; one entry point: :meth:`run`."""

    name: ClassVar[str] = "knockoff"

    def __init__(self, config: KnockoffConfig | None = None, /, **params: object) -> None:
        self.config = config if config is not None else KnockoffConfig.model_validate(params)

    def collect(
        self,
        blackbox: BlackBoxLike,
        pool: Pool,
        budget: int,
        make_clone: CloneFactory | None = None,
        *,
        progress: Progress | None = None,
        guard: QueryGuard | None = None,
    ) -> TransferSet:
        """Spend ``budget`` rows of queries from ``pool`` and return the transfer set.

        With a ``guard``, a refusal of the black box ends the collection quietly (the transfer
        set holds what was answered; ``guard.stop`` says why); without one it is raised.
        """
        cfg = self.config
        check_budget(blackbox, budget)
        if cfg.policy == "adaptive" and make_clone is None:
            raise InputValidationError("policy='adaptive' needs make_clone for the online clone")
        g = torch.Generator().manual_seed(cfg.seed)
        images: list[Tensor] = []
        answers: list[Tensor] = []
        index: list[Tensor] = []
        if guard is None:
            self._collect(blackbox, pool, budget, make_clone, g, progress, images, answers, index)
        else:
            with guard.refusals():
                self._collect(
                    blackbox, pool, budget, make_clone, g, progress, images, answers, index
                )
        if not answers:
            empty = empty_transfer(blackbox.input_shape, blackbox.num_classes)
            empty.pool_index = torch.empty(0, dtype=torch.long)
            return empty
        return TransferSet(torch.cat(images), torch.cat(answers), torch.cat(index))

    def _collect(
        self,
        blackbox: BlackBoxLike,
        pool: Pool,
        budget: int,
        make_clone: CloneFactory | None,
        g: torch.Generator,
        progress: Progress | None,
        images: list[Tensor],
        answers: list[Tensor],
        index: list[Tensor],
    ) -> None:
        """Query in batches, appending each answered batch (images, answers, pool rows)."""
        cfg = self.config
        if cfg.policy == "random":
            drawn, idx = pool.draw(budget, g, augment=cfg.augment)
            with _progress.task(progress, "querying", total=budget) as step:
                for i in range(0, budget, cfg.query_batch):
                    batch = drawn[i : i + cfg.query_batch]
                    answers.append(blackbox.query(batch))
                    images.append(batch)
                    index.append(idx[i : i + cfg.query_batch])
                    step(batch.shape[0])
            return
        assert make_clone is not None  # checked by collect
        self._collect_adaptive(
            blackbox, pool, budget, make_clone, g, progress, images, answers, index
        )

    def _collect_adaptive(
        self,
        blackbox: BlackBoxLike,
        pool: Pool,
        budget: int,
        make_clone: CloneFactory,
        g: torch.Generator,
        progress: Progress | None,
        images: list[Tensor],
        answers: list[Tensor],
        index: list[Tensor],
    ) -> None:
        cfg = self.config
        n_groups = pool.num_groups
        h = torch.zeros(n_groups, dtype=torch.float64)
        baseline = 0.0
        stats = {r: _RunningStat() for r in cfg.rewards}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            clone = make_clone()
        opt = torch.optim.Adam(clone.parameters(), lr=1e-3)
        mean_answer: Tensor | None = None
        used, rounds = 0, 0
        with _progress.task(progress, "querying (adaptive)", total=budget) as step:
            while used < budget:
                b = min(cfg.query_batch, budget - used)
                pi = torch.softmax(h, dim=0)
                actions = torch.multinomial(pi, b, replacement=True, generator=g)
                x, idx = pool.draw_from_groups(actions, g, augment=cfg.augment)
                y = blackbox.query(x)
                images.append(x)
                answers.append(y)
                index.append(idx)
                mean_answer = (
                    y.mean(0) if mean_answer is None else 0.9 * mean_answer + 0.1 * y.mean(0)
                )
                parts = []
                for r in cfg.rewards:
                    raw = (
                        certainty(y)
                        if r == "cert"
                        else diversity(y, mean_answer)
                        if r == "div"
                        else clone_loss(clone, x, y)
                    )
                    stats[r].update(raw)
                    parts.append(stats[r].normalize(raw))
                reward = torch.stack(parts).mean(0).double()
                one_hot = F.one_hot(actions, n_groups).double()
                h += cfg.bandit_lr * ((reward - baseline)[:, None] * (one_hot - pi[None, :])).mean(
                    0
                )
                rounds += 1
                baseline += (float(reward.mean()) - baseline) / rounds
                clone.train()
                loss = -(y * F.log_softmax(clone(x), dim=1)).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                used += b
                step(b)

    def run(
        self,
        blackbox: BlackBoxLike,
        pool: Pool,
        budget: int,
        make_clone: CloneFactory,
        *,
        eval_data: tuple[Tensor, Tensor] | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> AttackResult:
        """Query, then train the clone; ``eval_data`` only scores the trace, never selects.

        A refusal of the black box ends the querying; the clone is trained on what was answered
        and the result's ``stopped`` / ``blocked_at`` say so.
        """
        cfg = self.config
        guard = QueryGuard(blackbox, self.name)
        transfer = self.collect(blackbox, pool, budget, make_clone, progress=progress, guard=guard)
        clone, tr = fit_clone(
            make_clone,
            transfer,
            cfg.train,
            label_only=cfg.label_only,
            holdout=cfg.holdout,
            seed=cfg.seed,
            device=device,
            progress=progress,
            description="clone (labels)" if cfg.label_only else "clone",
        )
        outcome = guard.outcome()
        return AttackResult(
            clone=clone,
            transfer=transfer,
            trace=[evaluate_trace_point(clone, outcome["queries_used"], eval_data)],
            train_result=tr,
            **outcome,
        )
