"""Building blocks shared by the demo, the CLI and (later) the benchmark.

Each block is one step of the standard experiment: train a victim on a scenario, defend it,
attack it through a metered black box, and measure the result with :mod:`stealproof.metrics`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import metrics
from stealproof.attacks.base import CloneFactory, TransferSet, train_clone
from stealproof.data.datasets import Dataset
from stealproof.defenses.base import Defense
from stealproof.models.base import Classifier
from stealproof.models.registry import create_model
from stealproof.oracle import defended_posteriors
from stealproof.train import TrainConfig, train_model


class Scenario(BaseModel):
    """A victim dataset, its architecture and training, and the thief's pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    model: str
    pool: str
    victim_training: TrainConfig
    clone_training: TrainConfig


#: The built-in scenarios (DESIGN.md): ``mnist5k`` (LeNet) and ``digits`` (MLP, seconds long).
#: Clone training has a step floor equal to what the default budget gets (5,000 rows on mnist5k,
#: 1,000 on digits, less the thief's 10 % holdout), so a smaller budget trains as many optimizer
#: steps (more epochs over fewer rows) instead of measuring an under-trained clone.
SCENARIOS: dict[str, Scenario] = {
    "mnist5k": Scenario(
        dataset="mnist5k",
        model="lenet",
        pool="digits28",
        victim_training=TrainConfig(epochs=15, batch_size=128, lr=1e-3, augment=True),
        clone_training=TrainConfig(epochs=10, batch_size=128, lr=1e-3, min_steps=360),
    ),
    "digits": Scenario(
        dataset="digits",
        model="mlp",
        pool="mnist8",
        victim_training=TrainConfig(epochs=40, batch_size=64, lr=3e-3),
        clone_training=TrainConfig(epochs=30, batch_size=64, lr=3e-3, min_steps=450),
    ),
}

#: Defaults for the datasets users bring as files, by the built-in scenario they resemble:
#: 28×28 grey digits and clothes train like mnist5k; CIFAR trains a ResNet-18 for longer.
FILE_SCENARIOS: dict[str, Scenario] = {
    **{
        name: SCENARIOS["mnist5k"].model_copy(update={"dataset": name, "pool": pool})
        for name, pool in (("mnist", "digits28"), ("fashionmnist", "shapes"), ("kmnist", "shapes"))
    },
    **{
        name: Scenario(
            dataset=name,
            model="resnet18",
            pool="noise",
            victim_training=TrainConfig(epochs=30, batch_size=128, lr=1e-3, augment=True),
            clone_training=TrainConfig(epochs=20, batch_size=128, lr=1e-3, min_steps=700),
        )
        for name in ("cifar10", "cifar100")
    },
}


def scenario_for(dataset: str) -> Scenario:
    """The one set of defaults (model, pool, victim and clone training) for ``dataset``.

    Every entry point (``train-victim``, ``attack``, ``demo``, the benchmark) takes its
    defaults from here, so the same dataset is trained the same way everywhere. A dataset with
    no scenario of its own gets mnist5k's training settings.
    """
    if dataset in SCENARIOS:
        return SCENARIOS[dataset]
    if dataset in FILE_SCENARIOS:
        return FILE_SCENARIOS[dataset]
    return SCENARIOS["mnist5k"].model_copy(update={"dataset": dataset})


def train_victim(
    dataset: Dataset,
    model: str,
    config: TrainConfig,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    **model_kwargs: Any,
) -> tuple[Classifier, float]:
    """Train a victim on ``dataset.train`` and return it with its test accuracy."""
    c, h, w = dataset.input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        victim = create_model(
            model,
            in_channels=c,
            image_size=(h, w),
            num_classes=dataset.num_classes,
            **model_kwargs,
        )
    cfg = config.model_copy(update={"seed": seed})
    train_model(
        victim,
        dataset.train.images,
        dataset.train.labels,
        cfg,
        device=device,
        progress=progress,
        description="victim",
    )
    acc = metrics.clone_accuracy(victim, dataset.test.images, dataset.test.labels)
    return victim, acc


@dataclass(frozen=True)
class DefenseCost:
    """What a defense costs the defender on its own test set."""

    defender_acc: float
    l1_mean: float
    kl_mean: float


def defense_cost(
    victim: nn.Module, defense: Defense | None, x: Tensor, labels: Tensor
) -> DefenseCost:
    """Defender accuracy and distortion of the released posteriors on (x, labels)."""
    released, clean = defended_posteriors(victim, defense, x)
    return DefenseCost(
        defender_acc=metrics.defender_accuracy(released, labels),
        l1_mean=metrics.mean_l1(released, clean),
        kl_mean=metrics.mean_kl(released, clean),
    )


def _digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class CloneCache:
    """Train each distinct (transfer set, label-only) clone once.

    Many defenses keep top-1, so their label-only thieves see identical targets; and a
    ``top1`` defense's soft answers are the labels themselves. Identical inputs give identical
    clones (training is seeded), so the cache changes no number, only the wall time.
    """

    def __init__(self) -> None:
        self._clones: dict[str, nn.Module] = {}
        self.hits = 0

    def get(
        self,
        make_clone: CloneFactory,
        transfer: TransferSet,
        config: TrainConfig,
        *,
        label_only: bool,
        seed: int,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
        description: str = "clone",
        architecture: str = "",
    ) -> nn.Module:
        """The clone trained on ``transfer`` (``architecture`` names what ``make_clone``
        builds, when clones of several architectures share this cache)."""
        targets = transfer.answers.argmax(dim=1) if label_only else transfer.answers
        if not label_only and bool((transfer.answers.max(dim=1).values == 1.0).all()):
            targets = transfer.answers.argmax(dim=1)  # one-hot answers: same as label-only
        key = _digest(transfer.images, targets) + config.model_dump_json() + str(seed)
        key += "|" + architecture
        if key in self._clones:
            self.hits += 1
            return self._clones[key]
        clone, _ = train_clone(
            make_clone,
            TransferSet(transfer.images, transfer.answers),
            config,
            label_only=label_only or targets.ndim == 1,
            seed=seed,
            device=device,
            progress=progress,
            description=description,
        )
        self._clones[key] = clone
        return clone
