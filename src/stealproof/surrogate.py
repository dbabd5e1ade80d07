"""Surrogates: the defender's stand-in for the thief's model.

MAD uses a *fixed, randomly initialised* copy of the victim architecture; GRAD² a copy
*distilled* on the victim's clean posteriors over the query distribution and stopped early
(10 of a 50-epoch schedule), because the thief's clone is early in its training.
Both are kept in eval mode, so a row's scores never depend on other rows (no BN batch stats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import Tensor, nn

from stealproof.errors import ConfigError
from stealproof.models.base import Classifier
from stealproof.models.checkpoint import load_checkpoint, save_checkpoint
from stealproof.models.registry import create_model
from stealproof.oracle import victim_posteriors
from stealproof.train import TrainConfig, train_model


def _like(victim: nn.Module) -> Classifier:
    if not isinstance(victim, Classifier) or not victim.spec.name:
        raise ConfigError("surrogates need a stealproof Classifier victim built by create_model")
    return create_model(victim.spec.name, **victim.spec.kwargs)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: a fixed function of its input."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_surrogate(victim: nn.Module, seed: int = 0) -> Classifier:
    """A fixed random-init copy of the victim's architecture (MAD's surrogate)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _like(victim)
    dev = next(victim.parameters()).device
    model.to(dev)
    freeze(model)
    return model


def distill_surrogate(
    victim: nn.Module,
    images: Tensor,
    *,
    epochs: int = 10,
    schedule_epochs: int = 50,
    train: TrainConfig | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> Classifier:
    """Distil the victim's clean posteriors on ``images`` into a fresh copy, stopped early.

    The learning-rate schedule is laid out for ``schedule_epochs``; training stops after
    ``epochs`` (GRAD²'s default: 10 of 50).
    """
    if epochs > schedule_epochs:
        raise ValueError(f"epochs ({epochs}) must be ≤ schedule_epochs ({schedule_epochs})")
    soft, _ = victim_posteriors(victim, images)
    base = train or TrainConfig(batch_size=128, lr=1e-3, optimizer="adam", schedule="cosine")
    cfg = base.model_copy(update={"epochs": schedule_epochs, "stop_after": epochs, "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _like(victim)
    train_model(
        model, images, soft.cpu(), cfg, device=device, progress=progress, description="surrogate"
    )
    freeze(model)
    return model


def save_surrogate(model: Classifier, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save a surrogate as an ordinary checkpoint."""
    return save_checkpoint(model, path, {"role": "surrogate", **(meta or {})})


def load_surrogate(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """Load a surrogate checkpoint, frozen and in eval mode."""
    model, _ = load_checkpoint(path, map_location)
    freeze(model)
    return model
