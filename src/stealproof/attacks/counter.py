"""Counter-attacks a thief can combine with every attack.

* **Label-only training** — every attack config has ``label_only``: the clone (and, for the
  Jacobian attacks, every intermediate substitute) trains on argmax of the answers. Against
  defenses that keep top-1 this discards the perturbation entirely.
* **Query averaging** — :class:`AveragingBlackBox` wraps a black box and answers each row with
  the mean answer over ``copies`` slightly augmented versions of it (copy 0 is the row itself).
  Randomised defenses in stealproof draw their noise from a hash of the row content, so sending
  the *same* row twice gets the same answer; small augmentations give different rows, hence
  independent noise, whose mean is closer to the clean posterior.
* **A different clone architecture** — every attack takes any ``make_clone`` factory, e.g.
  ``clone_factory_like(victim, "lenet")`` for an MLP victim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from stealproof._validate import check_images
from stealproof.attacks.base import BlackBoxLike
from stealproof.data.transforms import random_affine
from stealproof.errors import BudgetExhaustedError, InputValidationError

if TYPE_CHECKING:
    from stealproof.policy import ClientStatus

#: ``augment(images, generator) -> images``: a batched, seeded pixel-space transform.
Augment = Callable[[Tensor, torch.Generator], Tensor]


def small_affine(images: Tensor, generator: torch.Generator) -> Tensor:
    """A small random affine: ±5° rotation, ±5% shift and scale, ±5% brightness."""
    return random_affine(
        images, generator, degrees=5.0, translate=0.05, scale=(0.95, 1.05), brightness=0.05
    )


class AveragingBlackBox:
    """Answer each row with the mean answer over ``copies`` augmented versions of it.

    Each :meth:`query` of ``B`` rows sends ONE batch of ``copies × B`` rows to the inner box
    (copy 0 is ``x`` itself, copies 1.. are ``augment(x)``; copy-major order) and returns the
    per-row mean, which stays on the simplex (for a label-only API it is the vote share).

    Accounting: every row answered here costs ``copies`` rows of the inner box's budget. This
    wrapper presents itself in units of *its own* rows, so an attack sees a box with a budget of
    ``inner.budget_left // copies``: :attr:`queries_used` counts rows answered by this wrapper,
    :attr:`budget_left` is ``inner.budget_left // copies``, and :attr:`rows_charged` (=
    ``copies × queries_used``) is what the inner box was charged through it. A batch that does
    not fit raises :class:`~stealproof.errors.BudgetExhaustedError` before anything is sent
    (nothing charged, no random numbers drawn). The augmentations come from a generator seeded
    with ``seed``: the same sequence of calls gives the same answers.

    A refusal of the inner box (e.g. :class:`~stealproof.errors.ClientBlockedError` from its
    detection policy) passes through unchanged, with nothing counted here; every attack stops
    cleanly on it. :attr:`flagged_rows` and :meth:`policy_status` are the inner box's (in its
    rows), so a result says how many of the rows sent were flagged.
    """

    def __init__(
        self,
        blackbox: BlackBoxLike,
        copies: int = 8,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        if copies < 1:
            raise InputValidationError(f"copies: expected ≥ 1, got {copies}")
        self.inner = blackbox
        self.copies = int(copies)
        self.augment: Augment = augment if augment is not None else small_affine
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._rows = 0

    @property
    def queries_used(self) -> int:
        """Rows answered by this wrapper (each cost ``copies`` rows of the inner box)."""
        return self._rows

    @property
    def rows_charged(self) -> int:
        """Rows of the inner box's budget spent through this wrapper."""
        return self._rows * self.copies

    @property
    def budget_left(self) -> int | None:
        """Rows this wrapper can still answer: ``inner.budget_left // copies``."""
        left = self.inner.budget_left
        return None if left is None else left // self.copies

    @property
    def flagged_rows(self) -> int | None:
        """Rows of the inner box its policy flagged (inner rows; ``None`` if it has no meter)."""
        value = getattr(self.inner, "flagged_rows", None)
        return None if value is None else int(value)

    def policy_status(self) -> ClientStatus | None:
        """The inner box's client standing with its policy (``None`` without one)."""
        status = getattr(self.inner, "policy_status", None)
        return None if status is None else cast("ClientStatus | None", status())

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The inner box's input shape."""
        return self.inner.input_shape

    @property
    def num_classes(self) -> int | None:
        """The inner box's class count."""
        return self.inner.num_classes

    def query(self, x: Tensor) -> Tensor:
        """Mean answer [B, K] over ``copies`` augmented versions of each row of ``x``."""
        x = check_images(x, "x", shape=self.input_shape).detach().cpu()
        n = int(x.shape[0])
        left = self.inner.budget_left
        if left is not None and n * self.copies > left:
            used = self.inner.queries_used
            raise BudgetExhaustedError(used, used + left, n * self.copies)
        versions = [x] + [self.augment(x, self._generator) for _ in range(self.copies - 1)]
        answers = self.inner.query(torch.cat(versions))
        self._rows += n
        return answers.reshape(self.copies, n, -1).mean(dim=0)

    def __repr__(self) -> str:
        return (
            f"AveragingBlackBox({self.inner!r}, copies={self.copies}, used={self._rows}, "
            f"seed={self.seed})"
        )
