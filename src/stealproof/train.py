"""One training loop for victims, clones and surrogates.

Hard targets (class indices ``[N]``) use cross-entropy; soft targets (``[N, K]`` rows on the
simplex, e.g. a black box's answers) use soft cross-entropy ``−Σ_k t_k log f(x)_k``. Model
selection uses a validation split: the caller's own (a thief validates on its *own* held-out
queries, never on the victim's test set) or a seeded fraction of the training data.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof._validate import check_images
from stealproof.data.transforms import random_affine
from stealproof.errors import InputValidationError
from stealproof.metrics import clone_accuracy

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Optimiser, schedule and data options of :func:`train_model`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1, description="length of the schedule, in epochs")
    stop_after: int | None = Field(
        None, ge=1, description="stop after this many epochs (early stop within the schedule)"
    )
    min_steps: int | None = Field(
        None,
        ge=1,
        description="train at least this many optimizer steps: epochs grow for small training "
        "sets, so a small query budget is not also a few hundred steps of training",
    )
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = Field(20, ge=1, description="epochs between decays for schedule='step'")
    step_gamma: float = Field(0.1, gt=0, le=1)
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="held out of the training data when no val set is given"
    )
    augment: bool = Field(False, description="random affine augmentation of training batches")
    seed: int = 0


def effective_epochs(config: TrainConfig, rows: int) -> int:
    """Epochs the schedule spans for ``rows`` training rows: ``epochs``, or more to reach
    ``min_steps`` optimizer steps."""
    if config.min_steps is None or rows <= 0:
        return config.epochs
    steps = -(-rows // config.batch_size)
    return max(config.epochs, -(-config.min_steps // steps))


def describe_training(config: TrainConfig, rows: int) -> str:
    """``"E epochs × S steps (batch B)"``: what training on ``rows`` rows will do."""
    steps = -(-rows // config.batch_size)
    epochs = min(effective_epochs(config, rows), config.stop_after or 10**9)
    return f"{epochs} epochs × {steps} steps (batch {config.batch_size}, {epochs * steps} steps)"


@dataclass
class TrainResult:
    """What training did: best epoch by validation accuracy and per-epoch history."""

    best_epoch: int
    best_val_acc: float | None
    history: list[dict[str, float]] = field(default_factory=list)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean of ``−Σ_k t_k log softmax(logits)_k`` over the batch."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _loss(logits: Tensor, targets: Tensor) -> Tensor:
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    return soft_cross_entropy(logits, targets)


def _check_targets(targets: Tensor, n: int, name: str) -> Tensor:
    if targets.shape[0] != n:
        raise InputValidationError(
            f"{name}: expected {n} rows to match the images, got {targets.shape[0]}"
        )
    if targets.ndim == 1:
        if targets.is_floating_point():
            raise InputValidationError(f"{name}: 1-D targets must be integer class indices")
        return targets.long()
    if targets.ndim == 2:
        if not targets.is_floating_point():
            raise InputValidationError(f"{name}: 2-D targets must be float probabilities")
        return targets.float()
    raise InputValidationError(f"{name}: expected [N] labels or [N, K] probabilities")


def optimizer_for(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            opt, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.step_gamma
        )
    return None


def train_model(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    config: TrainConfig | None = None,
    *,
    val: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` in place on (x, targets); keep the weights of the best validation epoch."""
    cfg = config or TrainConfig()
    x = check_images(x, "x")
    if cfg.min_steps is not None:
        rows = x.shape[0] - (
            max(1, round(cfg.val_fraction * x.shape[0])) if val is None and cfg.val_fraction else 0
        )
        cfg = cfg.model_copy(update={"epochs": effective_epochs(cfg, rows), "min_steps": None})
    targets = _check_targets(targets, x.shape[0], "targets")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    g = torch.Generator().manual_seed(cfg.seed)
    if val is None and cfg.val_fraction > 0:
        n_val = max(1, round(cfg.val_fraction * x.shape[0]))
        perm = torch.randperm(x.shape[0], generator=g)
        val = (x[perm[:n_val]], targets[perm[:n_val]])
        x, targets = x[perm[n_val:]], targets[perm[n_val:]]
        if x.shape[0] == 0:
            raise InputValidationError(
                f"val_fraction={cfg.val_fraction} leaves no training rows out of {n_val}"
            )
    if val is not None:
        vx = check_images(val[0], "val images").to(dev)
        vt = _check_targets(val[1], vx.shape[0], "val targets").to(dev)
    model.to(dev)
    x, targets = x.to(dev), targets.to(dev)
    n = x.shape[0]
    steps = -(-n // cfg.batch_size)
    opt = optimizer_for(model, cfg)
    sched = _scheduler(opt, cfg, steps)
    best_state: dict[str, Tensor] | None = None
    result = TrainResult(
        best_epoch=min(cfg.epochs, cfg.stop_after or cfg.epochs), best_val_acc=None
    )
    with _progress.task(
        progress, description, total=min(cfg.epochs, cfg.stop_after or cfg.epochs)
    ) as step:
        last = min(cfg.epochs, cfg.stop_after or cfg.epochs)
        for epoch in range(1, last + 1):
            model.train()
            perm = torch.randperm(n, generator=g).to(dev)
            total = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                xb = x[idx]
                if cfg.augment:
                    xb = random_affine(xb, g)
                loss = _loss(model(xb), targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * idx.shape[0]
            row = {"epoch": float(epoch), "loss": total / n}
            if val is not None:
                model.eval()
                acc = clone_accuracy(model, vx, vt if vt.ndim == 1 else vt.argmax(dim=1))
                row["val_acc"] = acc
                if result.best_val_acc is None or acc > result.best_val_acc:
                    result.best_val_acc, result.best_epoch = acc, epoch
                    best_state = copy.deepcopy(model.state_dict())
            result.history.append(row)
            log.debug("%s epoch %d: %s", description, epoch, row)
            step(1, description=f"{description} (loss {row['loss']:.3f})")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
