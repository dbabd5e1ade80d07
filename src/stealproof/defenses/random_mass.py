"""``random``: move ε/2 of probability mass to one random non-argmax class (GRAD²'s baseline)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from stealproof import _rng
from stealproof.defenses.base import Defense, DefenseConfig
from stealproof.defenses.registry import register


def random_receivers(y: Tensor, keys: Tensor) -> Tensor:
    """One uniformly random class per row among those other than the row's argmax."""
    k = y.shape[1]
    u = _rng.uniform(keys, 1)[:, 0]
    pick = torch.clamp((u * (k - 1)).long(), max=k - 2)  # index among the K-1 non-top classes
    top = y.argmax(dim=1)
    return pick + (pick >= top).long()


def move_mass(y: Tensor, receiver: Tensor, eps: Tensor | float) -> Tensor:
    """Move m = min(ε/2, 1 − y_r) to class r, taken from the others in proportion to their mass.

    The result stays on the simplex and ``‖ỹ − y‖₁ = 2m ≤ ε``.
    """
    y64 = y.to(torch.float64)
    eps_t = torch.as_tensor(eps, dtype=torch.float64, device=y.device).expand(y.shape[0])
    r = receiver[:, None]
    y_r = y64.gather(1, r)
    rest = (1.0 - y_r).clamp_min(0.0)
    m = torch.minimum(eps_t[:, None] / 2.0, rest)
    scale = torch.where(rest > 0, 1.0 - m / rest.clamp_min(1e-300), torch.ones_like(rest))
    out = y64 * scale
    out = out.scatter(1, r, y_r + m)
    return out.to(y.dtype)


class RandomConfig(DefenseConfig):
    eps: float = Field(0.5, ge=0.0, le=2.0, description="L1 budget ‖ỹ − y‖₁ ≤ ε")
    seed: int = Field(0, description="seed of the secret salt that keys the randomness")


@register
class RandomMass(Defense):
    """Random receiver class; the receiver may overtake top-1 when ε is large."""

    name: ClassVar[str] = "random"
    Config: ClassVar[type[DefenseConfig]] = RandomConfig
    demo_params: ClassVar[dict[str, Any]] = {"eps": 0.5}
    randomized: ClassVar[bool] = True

    def __init__(self, config: DefenseConfig | None = None, /, **params: object) -> None:
        super().__init__(config, **params)
        assert isinstance(self.config, RandomConfig)
        self._salt = _rng.salt_from_seed(self.config.seed)

    def l1_budget(self) -> float | None:
        assert isinstance(self.config, RandomConfig)
        return self.config.eps

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        assert isinstance(self.config, RandomConfig)
        keys = _rng.row_keys(self._salt, y if x is None else x)
        return move_mass(y, random_receivers(y, keys), self.config.eps)
