"""Zeroth-order (forward-difference) gradient estimates through a black box (DFME, MAZE).

For a per-row loss ``L`` that depends on the black box's answer, row ``i`` of a batch gets

    ĝ_i = (d / m) Σ_j [L(x_i + μ u_ij) − L(x_i)] / μ · u_ij

with ``m`` random unit directions ``u_ij`` (Gaussian, normalised over all ``d = C·H·W``
entries) and step ``μ``. For ``μ → 0`` its mean is the true gradient (``E[d (u·g) u] = g`` for
``u`` uniform on the unit sphere); its variance falls as ``1/m``.

Space: ``x`` is the generator's *pre-activation* ``a`` (see
:func:`stealproof.attacks.generators.squash`), the point DFME's reference perturbs (before its
``tanh``). The images actually queried are ``to_pixels(a + μu)`` = ``(1 + tanh(a + μu)) / 2``,
so every point lies inside [0, 1] without clamping and the estimate is the gradient of
``L ∘ to_pixels`` with respect to ``a`` — exactly what back-propagating into the generator
needs. (Pass ``to_pixels=lambda t: t.clamp(0, 1)`` to estimate in pixel space instead; the
clamp then biases the estimate at the borders.)

All ``(m + 1)·B`` points go to the black box as **one** ``query`` call, charged ``(m + 1)·B``
rows: first the ``B`` unperturbed rows, then direction ``j = 1..m`` for every row
(direction-major). The answers at the unperturbed points come back so the caller can reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from stealproof.attacks.base import BlackBoxLike
from stealproof.attacks.generators import squash
from stealproof.errors import InputValidationError

#: Per-row loss from (queried images [N, C, H, W], answers [N, K]) to [N].
RowLoss = Callable[[Tensor, Tensor], Tensor]

#: Defaults from ALGORITHMS.md §4: DFME uses m = 1, MAZE m = 10; both μ = 1e-3.
DFME_DIRECTIONS = 1
MAZE_DIRECTIONS = 10
DEFAULT_MU = 1e-3


def sample_directions(
    batch: int, m: int, shape: tuple[int, ...], generator: torch.Generator
) -> Tensor:
    """``[batch, m, *shape]`` directions, each of unit L2 norm over its ``prod(shape)`` entries.

    Drawn on the CPU from ``generator`` (normalised Gaussians: uniform on the sphere).
    """
    if batch < 1 or m < 1:
        raise InputValidationError(f"sample_directions: need batch ≥ 1 and m ≥ 1, got {batch}, {m}")
    d = math.prod(shape)
    u = torch.randn(batch, m, d, generator=generator)
    u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)
    out: Tensor = u.reshape(batch, m, *shape)
    return out


def estimate_from_losses(
    loss_at_x: Tensor, loss_at_dirs: Tensor, directions: Tensor, mu: float
) -> Tensor:
    """``ĝ_i = (d/m) Σ_j (L_ij − L_i)/μ · u_ij``.

    Losses ``[B]`` at x and ``[B, m]`` at the perturbed points; directions ``u [B, m, ...]``.
    """
    if mu <= 0:
        raise InputValidationError(f"mu: expected > 0, got {mu}")
    b, m = directions.shape[:2]
    if loss_at_x.shape != (b,) or loss_at_dirs.shape != (b, m):
        raise InputValidationError(
            f"losses: expected shapes [{b}] and [{b}, {m}] to match the directions, got "
            f"{list(loss_at_x.shape)} and {list(loss_at_dirs.shape)}"
        )
    d = math.prod(directions.shape[2:])
    coef = (loss_at_dirs - loss_at_x[:, None]) * (d / (m * mu))  # [B, m]
    flat = directions.reshape(b, m, d)
    return torch.einsum("bm,bmd->bd", coef.to(flat.dtype), flat).reshape(
        directions.shape[:1] + directions.shape[2:]
    )


@dataclass
class ZerothOrderEstimate:
    """One estimate: gradient w.r.t. the input, and what was queried and answered at ``x``."""

    grad: Tensor  #: ĝ [B, C, H, W], same space as the input ``x``
    images: Tensor  #: the pixels queried at ``x`` [B, C, H, W]
    answers: Tensor  #: the black box's answers at ``x`` [B, K]
    loss: Tensor  #: L at ``x`` [B]
    rows: int  #: rows charged: (m + 1)·B


def zeroth_order_gradient(
    blackbox: BlackBoxLike,
    x: Tensor,
    loss_fn: RowLoss,
    *,
    generator: torch.Generator,
    directions: int = DFME_DIRECTIONS,
    mu: float = DEFAULT_MU,
    to_pixels: Callable[[Tensor], Tensor] = squash,
) -> ZerothOrderEstimate:
    """Estimate ∇ₓ L(to_pixels(x)) per row with ONE batched black-box call of ``(m+1)·B`` rows.

    ``x`` [B, C, H, W] is the generator's pre-activation (detached here); ``loss_fn`` maps the
    queried pixels and their answers to a per-row loss and must be batch-invariant (e.g.
    evaluate the clone in eval mode). Directions come from ``generator`` (CPU).
    """
    if directions < 1:
        raise InputValidationError(f"directions: expected ≥ 1, got {directions}")
    if mu <= 0:
        raise InputValidationError(f"mu: expected > 0, got {mu}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise InputValidationError(f"x: expected a batch [B, ...], got shape {list(x.shape)}")
    x = x.detach()
    b, shape = int(x.shape[0]), tuple(int(s) for s in x.shape[1:])
    u = sample_directions(b, directions, shape, generator).to(device=x.device, dtype=x.dtype)
    # direction-major: [x; x + μ u_·1; …; x + μ u_·m]
    points = torch.cat([x[None], x[None] + mu * u.transpose(0, 1)]).reshape(-1, *shape)
    pixels = to_pixels(points)
    answers = blackbox.query(pixels).to(x.device)
    with torch.no_grad():
        losses = loss_fn(pixels, answers).reshape(directions + 1, b)
    grad = estimate_from_losses(losses[0], losses[1:].T, u, mu)
    return ZerothOrderEstimate(
        grad=grad,
        images=pixels[:b],
        answers=answers[:b],
        loss=losses[0],
        rows=(directions + 1) * b,
    )
