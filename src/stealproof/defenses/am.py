"""Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020).

A victim trained with Outlier Exposure (OE: cross-entropy on in-distribution data plus λ·CE to
the uniform distribution on outliers) is confident in-distribution and unsure elsewhere. A
misinformation model, trained jointly to put *low* probability on the true class
(``−log(1 − p_y)``), answers the queries that look out-of-distribution:
``ỹ = (1 − α)y + α·ŷ_mis`` with ``α = sigmoid(ν(τ − max y))``, ν = 1e4.

Our generalisation: when the served victim was not trained with OE, the defense can hold its own
OE-trained *scorer* (same architecture) and take ``max`` of the scorer's posteriors instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof.defenses.base import Defense, DefenseConfig, model_io
from stealproof.defenses.registry import register
from stealproof.errors import ConfigError, InputValidationError
from stealproof.models.base import Classifier
from stealproof.models.registry import create_model
from stealproof.train import TrainConfig


def adaptive_alpha(confidence: Tensor, tau: float, nu: float) -> Tensor:
    """α = sigmoid(ν(τ − confidence)) — torch.sigmoid, so no overflow for large ν."""
    return torch.sigmoid(nu * (tau - confidence))


def misinform(y: Tensor, y_mis: Tensor, alpha: Tensor) -> Tensor:
    """(1 − α)y + α·y_mis, row by row."""
    return (1 - alpha[:, None]) * y + alpha[:, None] * y_mis


def misinformation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean of −log(1 − p_y), computed as −(logsumexp_{k≠y} z_k − logsumexp_k z_k)."""
    masked = logits.scatter(1, labels[:, None], -float("inf"))
    return -(torch.logsumexp(masked, dim=1) - torch.logsumexp(logits, dim=1)).mean()


def outlier_exposure_loss(
    logits_id: Tensor, labels: Tensor, logits_ood: Tensor, lam: float
) -> Tensor:
    """CE on in-distribution rows + λ · CE to the uniform distribution on outliers."""
    uniform_ce = -F.log_softmax(logits_ood, dim=1).mean(dim=1).mean()
    return F.cross_entropy(logits_id, labels) + lam * uniform_ce


def train_adaptive_misinformation(
    make_model: Any,
    images: Tensor,
    labels: Tensor,
    outliers: Tensor,
    config: TrainConfig | None = None,
    *,
    lam: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Jointly train an OE model and a misinformation model; both returned in eval mode.

    ``make_model()`` builds a fresh model (called twice). Each step draws an in-distribution
    batch and an outlier batch of the same size.
    """
    cfg = config or TrainConfig(epochs=8, batch_size=128, lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        oe, mis = make_model(), make_model()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    oe.to(dev)
    mis.to(dev)
    params = list(oe.parameters()) + list(mis.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = images.shape[0]
    steps = -(-n // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    with _progress.task(progress, "adaptive misinformation", total=cfg.epochs) as step:
        for _ in range(cfg.epochs):
            oe.train()
            mis.train()
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                o_idx = torch.randint(0, outliers.shape[0], (idx.shape[0],), generator=g)
                x, yb, xo = images[idx].to(dev), labels[idx].to(dev), outliers[o_idx].to(dev)
                loss = outlier_exposure_loss(oe(x), yb, oe(xo), lam) + misinformation_loss(
                    mis(x), yb
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            step(1)
    return oe.eval(), mis.eval()


class AMConfig(DefenseConfig):
    tau: float = Field(0.8, ge=0.0, le=1.0, description="confidence threshold τ")
    nu: float = Field(1e4, gt=0.0, description="steepness ν of the switch")
    own_scorer: bool = Field(
        True,
        description="prepare(): train an own OE scorer (True) or trust max y (False, for "
        "victims already trained with outlier exposure)",
    )
    lam: float = Field(1.0, ge=0.0, description="outlier-exposure weight λ (prepare())")
    epochs: int = Field(8, ge=1, description="training epochs of prepare()")
    seed: int = 0


@register
class AdaptiveMisinformation(Defense):
    """Answers low-confidence (likely out-of-distribution) queries with misinformation."""

    name: ClassVar[str] = "am"
    Config: ClassVar[type[DefenseConfig]] = AMConfig
    demo_params: ClassVar[dict[str, Any]] = {"tau": 0.4}
    prepare_params: ClassVar[frozenset[str] | None] = frozenset(
        {"lam", "epochs", "seed", "own_scorer"}
    )

    def __init__(
        self,
        config: DefenseConfig | None = None,
        /,
        misinformation: nn.Module | None = None,
        scorer: nn.Module | None = None,
        **params: Any,
    ) -> None:
        super().__init__(config, **params)
        if misinformation is None:
            raise ConfigError(
                "am: needs a misinformation model: pass misinformation=..., or build it with "
                "AdaptiveMisinformation.prepare(victim, images)"
            )
        self.misinformation = misinformation.eval()
        self.scorer = scorer.eval() if scorer is not None else None

    @classmethod
    def prepare(
        cls,
        victim: nn.Module,
        images: Tensor,
        *,
        query_sample: Tensor | None = None,
        **params: Any,
    ) -> Defense:
        """Train the misinformation model (and an OE scorer) on ``images`` labelled by the victim.

        Outliers are the synthetic ``noise`` and ``shapes`` pools at the victim's input shape.
        """
        from stealproof.data.synthetic import make_noise, make_shapes
        from stealproof.oracle import victim_posteriors

        cfg = cls.make_config(**params)
        assert isinstance(cfg, AMConfig)
        if not isinstance(victim, Classifier):
            raise ConfigError(
                f"am: prepare needs a stealproof Classifier victim, got {type(victim).__name__}"
            )
        c, h, w = victim.input_shape
        g = torch.Generator().manual_seed(cfg.seed)
        n_out = max(1000, images.shape[0])
        noise, _ = make_noise(n_out // 2, c, (h, w), g)
        shapes, _ = make_shapes(n_out - n_out // 2, c, (h, w), g)
        probs, _ = victim_posteriors(victim, images)
        labels = probs.argmax(dim=1).cpu()
        spec = victim.spec

        def make() -> nn.Module:
            return create_model(spec.name, **spec.kwargs)

        oe, mis = train_adaptive_misinformation(
            make,
            images,
            labels,
            torch.cat([noise, shapes]),
            TrainConfig(epochs=cfg.epochs, batch_size=128, lr=1e-3),
            lam=cfg.lam,
            seed=cfg.seed,
        )
        return cls(cfg, misinformation=mis, scorer=oe if cfg.own_scorer else None)

    def models(self) -> dict[str, Any]:
        return {"misinformation": self.misinformation, "scorer": self.scorer}

    def expected_input(self) -> tuple[tuple[int, ...] | None, int | None]:
        return model_io(self.misinformation)

    def to(self, device: torch.device | str) -> Defense:
        self.misinformation.to(device)
        if self.scorer is not None:
            self.scorer.to(device)
        return self

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        cfg = self.config
        assert isinstance(cfg, AMConfig)
        if x is None:
            raise InputValidationError("am: needs the inputs x for the misinformation model")
        dev = next(self.misinformation.parameters()).device
        xs = x.to(dev)
        y_mis = torch.softmax(self.misinformation(xs).double(), dim=1).to(y.device)
        if y_mis.shape != y.shape:
            raise InputValidationError(
                f"am: the misinformation model has {y_mis.shape[1]} classes, y has {y.shape[1]}"
            )
        if self.scorer is not None:
            conf = torch.softmax(self.scorer(xs).double(), dim=1).amax(dim=1).to(y.device)
        else:
            conf = y.double().amax(dim=1)
        alpha = adaptive_alpha(conf, cfg.tau, cfg.nu)
        return misinform(y.double(), y_mis, alpha).to(y.dtype)
