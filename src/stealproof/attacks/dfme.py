"""DFME — Data-Free Model Extraction (Truong et al., CVPR 2021).

A generator ``z → image`` and the clone play a game through the black box: the clone minimises
the L1 distance between its logits and the victim's *mean-centred log-probabilities* (the
victim's logits up to a per-row shift, recovered from the answers); the generator maximises
the same distance. The victim gives no gradient, so the generator's gradient is the
zeroth-order estimate of :mod:`stealproof.attacks.zeroth_order` (m = 1 random direction,
μ = 1e-3, taken on the generator's pre-``tanh`` output as in the reference). Per iteration:
1 generator step (``2·B`` rows) and 5 clone steps on fresh samples (``B`` rows each).

Differences from the reference, all documented options: the clone uses Adam (lr 1e-3) and a
cosine schedule by default (the reference: SGD lr 0.1, ``schedule="step"``), the generator's
lr is 1e-3, and log-probabilities are clamped at ``log_prob_min`` (the reference reads the
victim's logits directly). Budget, memory, clone selection (the last clone) and seeding follow
:mod:`stealproof.attacks.data_free`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor

from stealproof.attacks.data_free import (
    DataFreeResult,
    ZerothOrderAttack,
    ZerothOrderConfig,
    cast_config,
    centred_log_probs,
)
from stealproof.attacks.zeroth_order import DFME_DIRECTIONS

__all__ = ["DFME", "DFMEConfig", "DataFreeResult"]


class DFMEConfig(ZerothOrderConfig):
    """Parameters of :class:`DFME` (see :class:`~stealproof.attacks.data_free.DataFreeConfig`)."""

    directions: int = Field(DFME_DIRECTIONS, ge=1, description="random directions m per estimate")


class DFME(ZerothOrderAttack[DFMEConfig]):
    """DFME: L1 on mean-centred log-probabilities; one entry point, :meth:`run`."""

    name: ClassVar[str] = "dfme"

    def __init__(self, config: DFMEConfig | None = None, /, **params: object) -> None:
        super().__init__(cast_config(config, DFMEConfig, params))

    def row_loss(self, clone_logits: Tensor, answers: Tensor) -> Tensor:
        """Mean absolute difference between the clone's logits and ``centred log ỹ``."""
        target = centred_log_probs(answers, self.config.log_prob_min)
        return (clone_logits - target).abs().mean(dim=1)
