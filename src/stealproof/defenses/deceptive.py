"""``deceptive``: Model-Guardian's DPreds — keep the top-1 class, replace the soft information.

The answer a detection policy gives to flagged rows. The victim's top-1 class keeps the
highest probability, but its value is drawn uniformly from ``[top_min, top_max]`` and the
remaining mass is spread over the other classes with Dirichlet(1, …, 1) weights. Nothing
except the top-1 index depends on the victim's probabilities, so a thief training on these
answers learns labels only (the label-only counter-attack is what remains; see ALGORITHMS §4).

The randomness is keyed by (secret seed, row content) through :mod:`stealproof._rng`: the
same query always gets the same answer (no averaging of repeats) and a row's answer does not
depend on the other rows of its batch. ``top_min > 1/2`` makes the top class a strict maximum.
The distribution (uniform top value, flat Dirichlet) is our choice; the paper gives none.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from pydantic_core.core_schema import ValidationInfo
from torch import Tensor

from stealproof import _rng
from stealproof.defenses.base import Defense, DefenseConfig, keep_top1
from stealproof.defenses.registry import register


class DeceptiveConfig(DefenseConfig):
    top_min: float = Field(
        0.6, gt=0.5, le=1.0, description="smallest probability given to the top-1 class"
    )
    top_max: float = Field(
        0.9, gt=0.5, le=1.0, description="largest probability given to the top-1 class"
    )
    seed: int = Field(0, description="seed of the secret salt that keys the randomness")

    @field_validator("top_max")
    @classmethod
    def _ordered(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("top_min")
        if lo is not None and v < lo:
            raise ValueError(f"must be ≥ top_min ({lo})")
        return v


def deceptive_posteriors(y: Tensor, keys: Tensor, top_min: float, top_max: float) -> Tensor:
    """Top-1 of ``y`` at a keyed uniform value in [top_min, top_max]; the rest keyed Dirichlet."""
    k = y.shape[1]
    top = y.argmax(dim=1, keepdim=True)
    p_top = top_min + (top_max - top_min) * _rng.uniform(keys, 1, stream=0)
    expo = -torch.log(_rng.uniform(keys, k, stream=1))  # Exp(1): normalised → Dirichlet(1)
    expo = expo.scatter(1, top, 0.0)
    weights = expo / expo.sum(dim=1, keepdim=True)
    out = (weights * (1.0 - p_top)).scatter(1, top, p_top)
    return keep_top1(out.to(y.dtype), y)


@register
class Deceptive(Defense):
    """DPreds: top-1 kept at a random value, the other classes' mass random (for flagged rows)."""

    name: ClassVar[str] = "deceptive"
    Config: ClassVar[type[DefenseConfig]] = DeceptiveConfig
    preserves_top1: ClassVar[bool] = True
    randomized: ClassVar[bool] = True
    demo_params: ClassVar[dict[str, Any]] = {}
    in_demo: ClassVar[bool] = False

    def __init__(self, config: DefenseConfig | None = None, /, **params: object) -> None:
        super().__init__(config, **params)
        assert isinstance(self.config, DeceptiveConfig)
        self._salt = _rng.salt_from_seed(self.config.seed)

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        assert isinstance(self.config, DeceptiveConfig)
        keys = _rng.row_keys(self._salt, y if x is None else x)
        return deceptive_posteriors(y, keys, self.config.top_min, self.config.top_max)
