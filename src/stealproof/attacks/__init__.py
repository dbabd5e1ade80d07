"""Model-stealing attacks, each one small class with one entry point (``run``)."""

from stealproof.attacks.base import (
    AttackResult,
    BlackBoxLike,
    QueryGuard,
    Stop,
    StopReason,
    TracePoint,
    TransferSet,
    clone_factory_like,
    fit_clone,
    train_clone,
)
from stealproof.attacks.counter import AveragingBlackBox, small_affine
from stealproof.attacks.dast import DaST, DaSTConfig
from stealproof.attacks.data_free import DataFreeConfig, DataFreeResult
from stealproof.attacks.dfme import DFME, DFMEConfig
from stealproof.attacks.generators import ImageGenerator, create_generator
from stealproof.attacks.jbda import (
    JACOBIAN_ATTACKS,
    JBDA,
    JacobianConfig,
    JBDAConfig,
    JBSelf,
    JBTop3,
    JBTop3Config,
    create_jacobian_attack,
)
from stealproof.attacks.knockoff import KnockoffConfig, KnockoffNets
from stealproof.attacks.maze import MAZE, MAZEConfig
from stealproof.attacks.zeroth_order import ZerothOrderEstimate, zeroth_order_gradient

ATTACKS: dict[str, str] = {
    "knockoff": "KnockoffNets: natural-image pool, random or adaptive (bandit) sampling",
    "knockoff-labels": "KnockoffNets trained on argmax of the answers (label-only counter-attack)",
    "jbda": "JBDA (Papernot): seed set + Jacobian sign steps at the victim's label, λ=0.1, τ=5",
    "jb-self": "JB-self (PRADA): JBDA's step at the substitute's own predicted label",
    "jb-top3": "JB-top3 (PRADA): targeted PGD toward the substitute's top-3 other classes",
    "dfme": "DFME (data-free): generator vs clone, L1 on centred log-probs, zeroth-order m=1",
    "maze": "MAZE (data-free): generator vs clone, KL, zeroth-order m=10, experience replay",
    "dast": "DaST (data-free): per-class generator branches, substitute on labels (+β·MSE)",
}

#: The data-free attacks by registered name.
DATA_FREE_ATTACKS: dict[str, type[DFME] | type[MAZE] | type[DaST]] = {
    "dfme": DFME,
    "maze": MAZE,
    "dast": DaST,
}

__all__ = [
    "ATTACKS",
    "DATA_FREE_ATTACKS",
    "DFME",
    "JACOBIAN_ATTACKS",
    "JBDA",
    "MAZE",
    "AttackResult",
    "AveragingBlackBox",
    "BlackBoxLike",
    "DFMEConfig",
    "DaST",
    "DaSTConfig",
    "DataFreeConfig",
    "DataFreeResult",
    "ImageGenerator",
    "JBDAConfig",
    "JBSelf",
    "JBTop3",
    "JBTop3Config",
    "JacobianConfig",
    "KnockoffConfig",
    "KnockoffNets",
    "MAZEConfig",
    "QueryGuard",
    "Stop",
    "StopReason",
    "TracePoint",
    "TransferSet",
    "ZerothOrderEstimate",
    "clone_factory_like",
    "create_generator",
    "create_jacobian_attack",
    "fit_clone",
    "small_affine",
    "train_clone",
    "zeroth_order_gradient",
]
