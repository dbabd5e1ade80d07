"""The black box: all an attack may touch.

``BlackBox.query(x)`` runs the victim, applies the defense and the output mode, meters the rows
against a budget and records the distortion it released. Attacks in the benchmark and attacks
over HTTP against the gateway go through this same interface.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from stealproof._validate import check_images
from stealproof.defenses.base import Defense, normalize_rows, one_hot_argmax
from stealproof.defenses.identity import NoDefense
from stealproof.defenses.registry import resolve_defense
from stealproof.defenses.topk import topk_mask
from stealproof.errors import BudgetExhaustedError, InputValidationError
from stealproof.metrics import kl_divergence, l1_distance

if TYPE_CHECKING:
    from stealproof.policy import ClientStatus, DetectionPolicy

OutputMode = Literal["probs", "topk", "label"]


def input_dtype(model: nn.Module | None) -> torch.dtype:
    """The floating dtype ``model`` computes in: its first floating parameter's (float32 if none).

    Every stealproof model is float32; floating inputs of another precision are cast to this
    dtype before they reach the model, so a float64 or float16 batch is answered, not refused.
    """
    if model is not None:
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


@torch.no_grad()
def victim_posteriors(victim: nn.Module, x: Tensor, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Clean (posteriors, logits) of ``victim`` on ``x``, in eval mode, batched.

    Floating ``x`` of any precision is cast to the victim's dtype (:func:`input_dtype`).
    """
    was_training = victim.training
    if was_training:  # switching costs a walk over every module: only when needed
        victim.eval()
    try:
        dev = next(victim.parameters()).device
        dtype = input_dtype(victim)
        if x.shape[0] <= batch_size:
            logits = victim(x.to(dev, dtype)).float()
        else:
            logits = torch.cat(
                [
                    victim(x[i : i + batch_size].to(dev, dtype)).float()
                    for i in range(0, x.shape[0], batch_size)
                ]
            )
    finally:
        if was_training:
            victim.train(True)
    return torch.softmax(logits, dim=1), logits


def apply_output_mode(released: Tensor, output: OutputMode, top_k: int) -> Tensor:
    """Restrict released posteriors to what the API exposes: all, the top k, or the label."""
    if output == "probs":
        return released
    if output == "label":
        return one_hot_argmax(released)
    mask = topk_mask(released, min(top_k, released.shape[1]))
    return normalize_rows(torch.where(mask, released, torch.zeros_like(released)))


@torch.no_grad()
def defended_posteriors(
    victim: nn.Module,
    defense: Defense | None,
    x: Tensor,
    *,
    batch_size: int = 512,
    output: OutputMode = "probs",
    top_k: int = 1,
) -> tuple[Tensor, Tensor]:
    """(released, clean) posteriors for ``x`` without any metering (the defender's own view).

    Floating ``x`` is cast to the victim's dtype first (:func:`input_dtype`), for the victim
    and for the defense's own models alike.
    """
    y, logits = victim_posteriors(victim, x, batch_size)
    d = defense if defense is not None else NoDefense()
    parts = []
    dev = y.device
    dtype = input_dtype(victim)
    for i in range(0, x.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        parts.append(d(x[sl].to(dev, dtype), y[sl], logits[sl]))
    released = apply_output_mode(torch.cat(parts), output, top_k)
    return released, y


def _count(value: object, name: str, low: int, expected: str) -> int:
    """``value`` as an ``int`` ≥ ``low``; bools, floats and strings are refused by name."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputValidationError(
            f"{name}: expected {expected}, got {type(value).__name__} {value!r}"
        )
    if value < low:
        raise InputValidationError(f"{name}: expected {expected}, got {value}")
    return int(value)


@dataclass(frozen=True)
class MeterReading:
    """What a black box has answered so far."""

    client_id: str
    rows: int
    budget: int | None
    mean_l1: float
    mean_kl: float


class BlackBox:
    """Victim + defense + query meter + output mode, for one client.

    Parameters
    ----------
    victim: a pixel-space classifier returning logits.
    defense: applied to every answer: a :class:`~stealproof.defenses.base.Defense`, the name of
        a registered defense (built with its default parameters; defenses that need models,
        such as ``mad``, must be built with their ``prepare`` and passed as objects), or
        ``None`` (undefended).
    budget: maximum rows this black box answers (an ``int`` ≥ 0); ``None`` = unlimited.
    batch_size: rows the victim and the defense see at once (an ``int`` ≥ 1); it changes
        speed and memory, never the answers.
    client_id: the client this box answers for (a non-empty string).
    output: ``"probs"`` (released posteriors), ``"topk"`` (top ``top_k`` kept, renormalised)
        or ``"label"`` (one-hot of the released argmax).
    policy: a :class:`~stealproof.policy.DetectionPolicy` that decides every answer for this
        box's ``client_id`` (detectors, normal and deceptive defense, blocking). It carries its
        own defense, so ``defense`` must then be ``None`` (pass ``DetectionPolicy(defense=...)``).
        Several boxes may share one policy; clients are kept apart by ``client_id``.
    """

    def __init__(
        self,
        victim: nn.Module,
        defense: Defense | str | None = None,
        *,
        budget: int | None = None,
        output: OutputMode = "probs",
        top_k: int = 1,
        client_id: str = "default",
        batch_size: int = 512,
        policy: DetectionPolicy | None = None,
    ) -> None:
        if not isinstance(victim, nn.Module):
            raise InputValidationError(
                f"victim: expected a torch.nn.Module, got {type(victim).__name__}"
            )
        if budget is not None:
            budget = _count(budget, "budget", 0, "a non-negative row count (or None: unlimited)")
        top_k = _count(top_k, "top_k", 1, "an int ≥ 1")
        batch_size = _count(batch_size, "batch_size", 1, "an int ≥ 1")
        if not isinstance(output, str) or output not in ("probs", "topk", "label"):
            raise InputValidationError(f"output: expected probs, topk or label, got {output!r}")
        if not isinstance(client_id, str) or not client_id:
            raise InputValidationError(f"client_id: expected a non-empty string, got {client_id!r}")
        resolved = resolve_defense(defense, "defense")
        if policy is not None:
            from stealproof.policy import DetectionPolicy

            if not isinstance(policy, DetectionPolicy):
                raise InputValidationError(
                    f"policy: expected a DetectionPolicy, got {type(policy).__name__}"
                )
            if resolved is not None:
                raise InputValidationError(
                    "policy: a policy carries its own defense; pass "
                    "DetectionPolicy(..., defense=...) instead of both defense and policy"
                )
        self.victim = victim.eval()
        self.defense: Defense | None = resolved
        self.budget: int | None = budget
        self.output: OutputMode = output
        self.top_k = top_k
        self.client_id = client_id
        self.batch_size = batch_size
        self.policy = policy
        shape = getattr(victim, "input_shape", None)
        self.input_shape: tuple[int, ...] | None = tuple(shape) if shape is not None else None
        k = getattr(victim, "num_classes", None)
        self.num_classes: int | None = int(k) if k is not None else None
        self._rows = 0
        self._l1_sum = 0.0
        self._kl_sum = 0.0
        self._flagged = 0

    @property
    def queries_used(self) -> int:
        """Rows answered so far."""
        return self._rows

    @property
    def budget_left(self) -> int | None:
        """Rows left in the budget (``None`` when unlimited)."""
        return None if self.budget is None else self.budget - self._rows

    @property
    def flagged_rows(self) -> int:
        """Rows this box answered that its policy flagged (0 without a policy)."""
        return self._flagged

    def policy_status(self) -> ClientStatus | None:
        """This client's standing with the policy (all boxes of the client together)."""
        return None if self.policy is None else self.policy.status(self.client_id)

    def meter(self) -> MeterReading:
        """Rows answered and mean L1 / KL distortion released so far."""
        n = max(1, self._rows)
        return MeterReading(
            self.client_id, self._rows, self.budget, self._l1_sum / n, self._kl_sum / n
        )

    def query(self, x: Tensor) -> Tensor:
        """Answer a batch of images [B, C, H, W] in [0, 1] with released posteriors [B, K].

        Raises :class:`~stealproof.errors.BudgetExhaustedError` *before* answering when the
        batch does not fit in the budget left, and with a policy
        :class:`~stealproof.errors.ClientBlockedError` before answering when the client is
        blocked (nothing is charged then). The batch that gets a client blocked is answered.

        ``x`` must be a floating-point tensor; float64 / float16 / bfloat16 batches are cast to
        the victim's dtype (float32 for stealproof models). Integer or bool tensors (e.g. raw
        uint8 pixels) are refused with :class:`~stealproof.errors.InputValidationError`:
        scale them to [0, 1] first.
        """
        x = check_images(x, "x", shape=self.input_shape)
        x = x.to(dtype=input_dtype(self.victim))
        n = int(x.shape[0])
        if self.policy is not None:
            self.policy.ensure_allowed(self.client_id)
        if self.budget is not None and self._rows + n > self.budget:
            raise BudgetExhaustedError(self._rows, self.budget, n)
        if self.policy is None:
            released, clean = defended_posteriors(
                self.victim,
                self.defense,
                x,
                batch_size=self.batch_size,
                output=self.output,
                top_k=self.top_k,
            )
        else:
            clean, logits = victim_posteriors(self.victim, x, self.batch_size)
            response = self.policy.respond(self.client_id, x.to(clean.device), clean, logits)
            released = apply_output_mode(response.released, self.output, self.top_k)
            self._flagged += int(response.flags.sum())
        self._rows += n
        self._l1_sum += float(l1_distance(released, clean).sum())
        self._kl_sum += float(kl_divergence(released, clean).sum())
        return released.cpu()

    def __repr__(self) -> str:
        guard = (
            f"policy={self.policy!r}" if self.policy is not None else f"defense={self.defense!r}"
        )
        return (
            f"BlackBox({guard}, output={self.output!r}, "
            f"used={self._rows}, budget={self.budget}, client_id={self.client_id!r})"
        )
