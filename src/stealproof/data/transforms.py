"""Batched image transforms in pixel space: resizing, framing, random affine augmentation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stealproof.errors import InputValidationError


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a batch [N, C, H, W] to ``size`` (antialiased bilinear), staying in [0, 1]."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def match_channels(images: Tensor, channels: int) -> Tensor:
    """Repeat grayscale to ``channels``, average colour to one channel, drop RGBA's alpha."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 4 and channels in (1, 3):  # RGBA: drop the alpha channel
        return match_channels(images[:, :3], channels)
    if c == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise InputValidationError(f"cannot convert {c}-channel images to {channels} channels")


def fit_glyphs(
    images: Tensor, size: tuple[int, int], src_margin: float, dst_margin: float
) -> Tensor:
    """Resize digit images so the glyph keeps the framing convention of the target.

    ``src_margin`` / ``dst_margin`` are the fractions of the frame left empty on each side
    (MNIST: 4/28; sklearn digits: 0). The source is cropped to its glyph box, resized to the
    target's glyph box and padded with zeros.
    """
    h, w = images.shape[-2:]
    ch, cw = round(h * src_margin), round(w * src_margin)
    glyph = images[..., ch : h - ch, cw : w - cw]
    th, tw = size
    ph, pw = round(th * dst_margin), round(tw * dst_margin)
    inner = resize(glyph, (th - 2 * ph, tw - 2 * pw))
    return F.pad(inner, (pw, pw, ph, ph))


def random_affine(
    images: Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
    brightness: float = 0.1,
) -> Tensor:
    """Independent random rotation, scaling, translation and brightness for every image."""
    n = images.shape[0]
    if n == 0:
        return images
    u = torch.rand(n, 5, generator=generator, device=images.device)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    tx = (u[:, 2] * 2 - 1) * translate * 2  # affine_grid coordinates span [-1, 1]
    ty = (u[:, 3] * 2 - 1) * translate * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = 1.0 + (u[:, 4] * 2 - 1) * brightness
    return (out * gain.to(images.dtype)[:, None, None, None]).clamp(0.0, 1.0)
