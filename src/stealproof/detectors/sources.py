"""The synthetic image sources Model-Guardian's sub-detectors learn to tell from real data.

Three sources, as in the paper: (i) a data-free stealing attack's generator, (ii) a GAN and
(iii) a diffusion model. The paper names the kinds, not the models; ours:

- ``dfme`` — the defender runs DFME (:mod:`stealproof.attacks.dfme`) against its *own*
  undefended victim and records a uniform sample (reservoir) of every row the attack sends over
  its whole run. An attacker's generator changes during the attack — from an untrained network
  to one adapted to the victim — and the recorded stream covers all of those stages, including
  the zeroth-order perturbation points, exactly as a gateway would see them.
- ``gan`` — a small GAN trained on the defender's data (:mod:`stealproof.detectors.gan`).
- ``ddpm`` — a small DDPM trained on the defender's data (:mod:`stealproof.detectors.ddpm`).

Held-out samples of ``dfme`` come from an *independent* attack run (another seed: another
attacker); held-out samples of ``gan`` / ``ddpm`` are fresh draws (other noise) from the same
trained model.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

import torch
from rich.progress import Progress
from torch import Tensor, nn

from stealproof.attacks.base import BlackBoxLike, CloneFactory, clone_factory_like
from stealproof.attacks.data_free import ReplayBuffer
from stealproof.errors import InputValidationError
from stealproof.oracle import BlackBox

SourceName = Literal["dfme", "gan", "ddpm"]
#: All source names, in the paper's order.
SOURCE_NAMES: tuple[SourceName, ...] = get_args(SourceName)
SOURCES: dict[str, str] = {
    "dfme": "queries of a DFME attack run against the defender's own undefended victim",
    "gan": "samples of a small GAN trained on the defender's data",
    "ddpm": "samples of a small DDPM trained on the defender's data",
}


class ImageSampler(Protocol):
    """Anything that draws images in [0, 1]: ``sample(n, generator) → [n, C, H, W]``."""

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` images in [0, 1], all randomness from ``generator``."""
        ...


class RecordingBlackBox:
    """A black box that keeps a uniform sample of ``capacity`` rows of its whole query stream.

    Wraps another :class:`~stealproof.attacks.base.BlackBoxLike`; answers pass through
    unchanged. The reservoir (Algorithm R) keeps every row sent so far with equal probability,
    so the sample spans the attack from its first query to its last.
    """

    def __init__(self, blackbox: BlackBoxLike, capacity: int, generator: torch.Generator):
        self.blackbox = blackbox
        self._reservoir = ReplayBuffer(capacity)
        self._generator = generator

    @property
    def queries_used(self) -> int:
        return self.blackbox.queries_used

    @property
    def budget_left(self) -> int | None:
        return self.blackbox.budget_left

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.blackbox.input_shape

    @property
    def num_classes(self) -> int | None:
        return self.blackbox.num_classes

    def query(self, x: Tensor) -> Tensor:
        answers = self.blackbox.query(x)
        self._reservoir.add(x.detach().cpu(), answers.detach().cpu(), self._generator)
        return answers

    @property
    def seen(self) -> int:
        """Rows offered to the reservoir."""
        return self._reservoir.seen

    def recorded(self) -> Tensor:
        """The kept rows [min(capacity, seen), C, H, W], in reservoir order (no time order)."""
        if self._reservoir.images is None:
            raise InputValidationError("recording: no query was sent")
        return self._reservoir.images[: len(self._reservoir)].clone()


def dfme_queries(
    victim: nn.Module,
    n: int,
    *,
    budget: int,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    make_clone: CloneFactory | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """``n`` rows drawn uniformly from the queries of one DFME run (``budget`` rows, ``seed``)
    against the undefended ``victim``; the clone is the victim's architecture by default."""
    from stealproof.attacks.dfme import DFME

    if n < 1:
        raise InputValidationError(f"n: expected ≥ 1 samples, got {n}")
    if budget < n:
        raise InputValidationError(f"dfme_budget: expected ≥ the {n} samples asked for")
    box = BlackBox(victim, None, budget=budget, client_id="guardian-dfme")
    rec = RecordingBlackBox(box, n, torch.Generator().manual_seed(seed))
    attack = DFME(**{**(params or {}), "seed": seed})
    attack.run(
        rec, budget, make_clone or clone_factory_like(victim), device=device, progress=progress
    )
    out = rec.recorded()
    if out.shape[0] < n:
        raise InputValidationError(
            f"dfme_budget: the attack sent {rec.seen} rows, fewer than the {n} samples asked for"
        )
    return out.clamp(0.0, 1.0)
