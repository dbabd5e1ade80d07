"""DaST — Data-free Substitute Training (Zhou et al., CVPR 2020).

A label-controllable generator (one first-layer branch per class, see
:func:`~stealproof.attacks.generators.create_generator` with ``num_classes``) and the
substitute (the clone) are trained against each other; unlike DFME/MAZE the generator never
needs the victim's gradient, so there is **no zeroth-order estimate**: one query of ``B`` rows
per iteration.

Per iteration, with balanced labels ``l`` and ``x = G(z, l)``, answers ``ỹ = V(x)`` and the
substitute's per-row loss ``d(x) = CE(D(x), argmax ỹ) + β·‖softmax(D(x)) − ỹ‖²``:

* generator step: minimise ``mean exp(−d(x)) + α·CE(D(x), l)`` — the imitation term pushes
  towards samples the substitute gets wrong (the answers are constants; the gradient flows
  through the substitute, whose weights are not updated here), the label-control term makes
  branch ``l`` produce samples the substitute calls ``l`` (class balance);
* substitute step: minimise ``mean d(x)`` on the same (detached) samples and answers.

``label_only`` drops the β term (the answers are one-hot labels then). Defaults: α = 0.2,
β = 1; Adam for both (the reference: Adam, lr 1e-4). Budget, memory, clone selection (the last
clone) and seeding follow :mod:`stealproof.attacks.data_free`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from stealproof.attacks.data_free import (
    DataFreeAttack,
    DataFreeConfig,
    DataFreeResult,
    QueryMeter,
    cast_config,
    eval_mode,
)
from stealproof.attacks.generators import ImageGenerator, create_generator

__all__ = ["DaST", "DaSTConfig", "DataFreeResult"]


class DaSTConfig(DataFreeConfig):
    """Parameters of :class:`DaST` (see :class:`~stealproof.attacks.data_free.DataFreeConfig`)."""

    alpha: float = Field(0.2, ge=0, description="weight of the generator's label-control CE")
    beta: float = Field(1.0, ge=0, description="weight of the MSE on probabilities")


class DaST(DataFreeAttack[DaSTConfig]):
    """DaST: per-class generator branches, substitute on labels (+β·MSE); :meth:`run`."""

    name: ClassVar[str] = "dast"

    def __init__(self, config: DaSTConfig | None = None, /, **params: object) -> None:
        super().__init__(cast_config(config, DaSTConfig, params))

    def rows_per_iteration(self) -> int:
        return self.config.batch_size

    def make_generator(self, shape: tuple[int, int, int], num_classes: int) -> ImageGenerator:
        cfg = self.config
        return create_generator(
            shape,
            cfg.latent_dim,
            kind=cfg.generator_kind,
            width=cfg.generator_width,
            num_classes=num_classes,
        )

    def substitute_loss(self, logits: Tensor, answers: Tensor) -> Tensor:
        """``d`` per row: CE on the answers' labels + β·squared L2 between probabilities."""
        d = F.cross_entropy(logits, answers.argmax(dim=1), reduction="none")
        if self.config.beta > 0 and not self.config.label_only:
            d = d + self.config.beta * (logits.softmax(dim=1) - answers).square().sum(dim=1)
        return d

    def iteration(self, meter: QueryMeter, rng: torch.Generator) -> tuple[float, float]:
        cfg, gen, clone, dev = self.config, self.generator, self.clone, self.device
        gen.train()
        labels = gen.sample_labels(cfg.batch_size, rng).to(dev)
        x = gen(gen.sample_latent(cfg.batch_size, rng, dev), labels)
        y = meter.query(x.detach())
        # generator: imitation (seek disagreement) + label control, through the substitute
        with eval_mode(clone):
            logits = clone(x)
            imitation = torch.exp(-self.substitute_loss(logits, y)).mean()
            g_loss = imitation + cfg.alpha * F.cross_entropy(logits, labels)
        self.gen_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.gen_opt.step()
        # substitute: learn the victim on the queried samples
        clone.train()
        c_loss = self.substitute_loss(clone(x.detach()), y).mean()
        self.clone_opt.zero_grad(set_to_none=True)
        c_loss.backward()
        self.clone_opt.step()
        self.end_iteration()
        return float(c_loss.detach()), float(g_loss.detach())
