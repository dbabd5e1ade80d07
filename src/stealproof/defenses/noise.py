"""``noise``: random noise of fixed norm on per-class logits (Prediction Poisoning's baseline)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from stealproof import _rng
from stealproof.defenses.base import Defense, DefenseConfig
from stealproof.defenses.registry import register

#: Posteriors are clipped to [CLIP, 1 − CLIP] before taking logits (computed in float64).
CLIP = 1e-9


def per_class_logit(y: Tensor) -> Tensor:
    """z_k = log(y_k / (1 − y_k)) in float64, after clipping y to [1e-9, 1 − 1e-9]."""
    y64 = y.to(torch.float64).clamp(CLIP, 1.0 - CLIP)
    return torch.log(y64) - torch.log1p(-y64)


def noisy_posteriors(y: Tensor, direction: Tensor, eps_z: float) -> Tensor:
    """normalise(sigmoid(z + δ)) where δ is ``direction`` scaled to norm ``eps_z``."""
    return torch.nn.functional.normalize(
        torch.sigmoid(per_class_logit(y) + eps_z * direction), p=1.0, dim=1
    ).to(y.dtype)


class NoiseConfig(DefenseConfig):
    eps_z: float = Field(1.0, ge=0.0, description="norm of the logit-space noise δ")
    norm: Literal["l1", "l2"] = Field("l2", description="which norm of δ equals eps_z")
    seed: int = Field(0, description="seed of the secret salt that keys the randomness")


@register
class LogitNoise(Defense):
    """Adds a random direction of norm ``eps_z`` to the per-class logits; may change top-1."""

    name: ClassVar[str] = "noise"
    Config: ClassVar[type[DefenseConfig]] = NoiseConfig
    demo_params: ClassVar[dict[str, Any]] = {"eps_z": 2.0}
    randomized: ClassVar[bool] = True

    def __init__(self, config: DefenseConfig | None = None, /, **params: object) -> None:
        super().__init__(config, **params)
        assert isinstance(self.config, NoiseConfig)
        self._salt = _rng.salt_from_seed(self.config.seed)

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        cfg = self.config
        assert isinstance(cfg, NoiseConfig)
        keys = _rng.row_keys(self._salt, y if x is None else x)
        k = y.shape[1]
        if cfg.norm == "l2":
            d = _rng.normal(keys, k)
            d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-300)
        else:
            d = _rng.laplace(keys, k)
            d = d / d.abs().sum(dim=1, keepdim=True).clamp_min(1e-300)
        return noisy_posteriors(y, d, cfg.eps_z)
