"""Output-perturbation defenses behind one protocol and a registry.

>>> from stealproof import defenses
>>> d = defenses.create("reverse_sigmoid", beta=0.5, gamma=0.2)
"""

from stealproof.defenses import (  # noqa: F401  (imported to register the defenses)
    am,
    deceptive,
    grad2,
    identity,
    label_watermark,
    mad,
    noise,
    random_mass,
    reverse_sigmoid,
    rounding,
    top1,
    topk,
    watermark,
)
from stealproof.defenses.base import Defense, DefenseConfig
from stealproof.defenses.registry import available, create, get_defense_class, register

__all__ = ["Defense", "DefenseConfig", "available", "create", "get_defense_class", "register"]
