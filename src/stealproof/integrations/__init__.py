"""Bridges to other toolkits; each lives in its own module and imports its toolkit there.

``stealproof.integrations.art`` needs the Adversarial Robustness Toolbox
(``pip install 'stealproof[art]'``); importing this package never does.
"""

from __future__ import annotations

#: ART's extraction attacks as stealproof attack names (``stealproof attack --attack NAME``).
ART_ATTACKS: dict[str, str] = {
    "art:knockoffnets": "ART's KnockoffNets (random or adaptive) through a metered ART "
    "BlackBoxClassifier; needs stealproof[art] (parameters: ArtAttackConfig, docs/art.md)",
    "art:copycat": "ART's CopycatCNN through a metered ART BlackBoxClassifier; "
    "needs stealproof[art] (parameters: ArtAttackConfig, docs/art.md)",
}

__all__ = ["ART_ATTACKS"]
