"""Generic corruptions of real images: what "not a natural image" looks like, source-agnostic.

Model-Guardian's transformation network and sub-detectors need a notion of "real" that is not
tied to one generator. We build it from the defender's own real images only: each image gets
one randomly chosen corruption of random strength —

0. additive Gaussian noise (σ from 0.02 to 0.22), clamped to [0, 1];
1. a blend with its own 3×3 box blur;
2. a blend with another image of the batch (ghosting, λ from 0.3 to 0.7);
3. small uniform pixel jitter (at most ±0.06), which also breaks the pixel quantisation;
4. speckle: up to 10 % of the pixels replaced by uniform noise;
5. a draw of a *Gaussian model of the batch*: the batch mean plus a random Gaussian
   combination of the centred batch images (same mean and covariance as the batch) — the
   simplest generative model, whose samples are plausible on average but not real;
6. resolution loss: a blend with the image average-pooled 2×2 and bilinearly upsampled;
7. an intensity warp ``x^γ`` (γ from 0.5 to 2);
8. cut-and-paste: a random rectangle replaced by the same region of another image.

None of these is one of the three synthetic sources, so leave-one-source-out evaluation stays
honest when they are used (they are our choice; the paper does not use them). Kinds 5–8 were
added to make the negatives more diverse (see the guardian module's "Our choices");
``kinds=5`` gives the original five.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stealproof.errors import InputValidationError

#: Number of corruption kinds :func:`corrupt` draws from by default.
KINDS = 9


def corrupt(images: Tensor, generator: torch.Generator, kinds: int = KINDS) -> Tensor:
    """One random corruption per image [N, C, H, W] in [0, 1], of a kind drawn uniformly from
    the first ``kinds`` (see the module docstring); all randomness from ``generator`` (drawn on
    the CPU); the result stays in [0, 1]."""
    if not 1 <= kinds <= KINDS:
        raise InputValidationError(f"kinds: expected 1 to {KINDS}, got {kinds}")
    n, _, h, w = images.shape
    z = images
    dev = z.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator).to(dev)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).to(dev)

    kind = torch.randint(0, kinds, (n,), generator=generator).to(dev).view(-1, 1, 1, 1)
    s = rand(n, 1, 1, 1)
    noise = (z + randn(*z.shape) * (0.02 + 0.2 * s)).clamp(0, 1)
    blur = F.avg_pool2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    blurred = s * blur + (1 - s) * z
    other = z[torch.randperm(n, generator=generator).to(dev)]
    lam = 0.3 + 0.4 * s
    ghost = lam * z + (1 - lam) * other
    jitter = (z + (rand(*z.shape) - 0.5) * 0.1 * (0.2 + s)).clamp(0, 1)
    speckle = torch.where(rand(*z.shape) < 0.1 * s, rand(*z.shape), z)
    out = torch.where(kind == 0, noise, z)
    out = torch.where(kind == 1, blurred, out)
    out = torch.where(kind == 2, ghost, out)
    out = torch.where(kind == 3, jitter, out)
    out = torch.where(kind == 4, speckle, out)
    if kinds > 5:
        flat = z.reshape(n, -1)
        mean = flat.mean(dim=0, keepdim=True)
        weights = randn(n, n) / max(n - 1, 1) ** 0.5
        gauss = (mean + weights @ (flat - mean)).reshape(z.shape).clamp(0, 1)
        out = torch.where(kind == 5, gauss, out)
    if kinds > 6 and min(h, w) >= 2:
        low = F.interpolate(F.avg_pool2d(z, 2), size=(h, w), mode="bilinear", align_corners=False)
        out = torch.where(kind == 6, s * low + (1 - s) * z, out)
    if kinds > 7:
        gamma = torch.exp((2 * s - 1) * 0.6931471805599453)  # 0.5 to 2, log-uniform
        out = torch.where(kind == 7, z.clamp_min(0).pow(gamma), out)
    if kinds > 8:
        ys = torch.arange(h, device=dev).view(1, 1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, 1, w)
        size = rand(n, 2) * 0.4 + 0.2  # 20–60 % of each side
        hh, ww = (
            (size[:, 0] * h).ceil().view(-1, 1, 1, 1),
            (size[:, 1] * w).ceil().view(-1, 1, 1, 1),
        )
        top = (rand(n).view(-1, 1, 1, 1) * (h - hh + 1)).floor()
        left = (rand(n).view(-1, 1, 1, 1) * (w - ww + 1)).floor()
        box = (ys >= top) & (ys < top + hh) & (xs >= left) & (xs < left + ww)
        out = torch.where((kind == 8) & box, other, out)
    return out.clamp(0.0, 1.0)
