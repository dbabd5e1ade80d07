"""MAZE — data-free model stealing with zeroth-order gradient estimation (Kariyappa et al.,
CVPR 2021).

DFME's game (see :mod:`stealproof.attacks.dfme`) with three changes: the disagreement is the
KL divergence ``KL(ỹ ‖ softmax(clone))``; the zeroth-order estimate uses m = 10 directions
(``11·B`` rows per generator step); and *experience replay*: every query and its answer go
into a bounded reservoir (``replay_size`` rows, uniform over everything seen so far), and each
iteration ends with 10 clone steps on batches drawn from it, which costs no queries and keeps
the clone from forgetting the generator's earlier samples. Budget, memory, clone selection
(the last clone) and seeding follow :mod:`stealproof.attacks.data_free`.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from stealproof.attacks.data_free import (
    DataFreeResult,
    ZerothOrderAttack,
    ZerothOrderConfig,
    cast_config,
    log_probs,
)
from stealproof.attacks.zeroth_order import MAZE_DIRECTIONS

__all__ = ["MAZE", "DataFreeResult", "MAZEConfig"]


class MAZEConfig(ZerothOrderConfig):
    """Parameters of :class:`MAZE` (see :class:`~stealproof.attacks.data_free.DataFreeConfig`)."""

    directions: int = Field(MAZE_DIRECTIONS, ge=1, description="random directions m per estimate")
    replay_steps: int = Field(10, ge=0, description="clone steps on replayed queries per iteration")


class MAZE(ZerothOrderAttack[MAZEConfig]):
    """MAZE: KL disagreement, m = 10, experience replay; one entry point, :meth:`run`."""

    name: ClassVar[str] = "maze"

    def __init__(self, config: MAZEConfig | None = None, /, **params: object) -> None:
        super().__init__(cast_config(config, MAZEConfig, params))

    def row_loss(self, clone_logits: Tensor, answers: Tensor) -> Tensor:
        """``KL(ỹ ‖ softmax(clone))`` per row, with log ỹ clamped at ``log_prob_min``."""
        log_y = log_probs(answers, self.config.log_prob_min)
        return (answers * (log_y - F.log_softmax(clone_logits, dim=1))).sum(dim=1)
