"""Pixel quantisation: a cue that tells stored images from generated ones, and its removal.

Stored natural images have quantised pixels: ``digits`` pixels are multiples of 1/16, MNIST's
multiples of 1/255. Generators (GAN, DDPM, a DFME generator's ``tanh``) emit continuous values,
so almost none of their pixels sit on that grid — and exact zeros and ones (saturated
background / strokes) are rare. Model-Guardian does not use this; it is **our** choice, and it
is a cue an adaptive attacker removes for free by rounding every query to the grid
(:func:`snap_to_grid`). The guardian therefore (i) only reads it as one extra input channel
next to the gradient representation and the image, (ii) trains every sub-detector with part
of its synthetic side snapped to the grid, so that it also has to use the other channels, and
(iii) reports its held-out AUCs on snapped source samples as well.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stealproof.errors import InputValidationError

#: Largest number of levels :func:`detect_levels` tries (8-bit images: 255).
MAX_LEVELS = 255


def detect_levels(images: Tensor, *, tolerance: float = 1e-3, max_pixels: int = 200_000) -> int:
    """The smallest ``L`` in 1..255 such that every pixel of ``images`` (in [0, 1]) is a multiple
    of ``1/L`` (within ``tolerance`` grid steps), or 0 when there is none.

    At most ``max_pixels`` pixels are checked (an evenly spaced subset).
    """
    flat = images.detach().reshape(-1).to(torch.float64).cpu()
    if flat.numel() == 0:
        raise InputValidationError("images: empty")
    step = max(1, flat.numel() // max_pixels)
    v = flat[::step]
    levels = torch.arange(1, MAX_LEVELS + 1, dtype=torch.float64)
    scaled = v.view(1, -1) * levels.view(-1, 1)
    fits = ((scaled - scaled.round()).abs() <= tolerance).all(dim=1)
    hits = torch.nonzero(fits).flatten()
    return int(levels[hits[0]]) if hits.numel() else 0


def quantization_residual(x: Tensor, levels: int) -> Tensor:
    """Per-pixel distance to the ``1/levels`` grid, scaled to [0, 1] (0: on the grid, 1: halfway
    between two levels); all zeros when ``levels`` is 0 (no grid)."""
    if levels < 0:
        raise InputValidationError(f"levels: expected ≥ 0, got {levels}")
    if levels == 0:
        return torch.zeros_like(x)
    scaled = x * levels
    return (2 * (scaled - scaled.round()).abs()).clamp(0.0, 1.0)


def snap_to_grid(x: Tensor, levels: int) -> Tensor:
    """Round every pixel to the nearest multiple of ``1/levels`` (identity for ``levels`` 0):
    what an adaptive attacker does to remove the quantisation cue."""
    if levels < 0:
        raise InputValidationError(f"levels: expected ≥ 0, got {levels}")
    if levels == 0:
        return x
    return ((x * levels).round() / levels).clamp(0.0, 1.0)
