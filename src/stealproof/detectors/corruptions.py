"""Generic corruptions of real images: what "not a natural image" looks like, source-agnostic.

Model-Guardian's transformation network and sub-detectors need a notion of "real" that is not
tied to one generator. We build it from the defender's own real images only: each image gets
one randomly chosen corruption of random strength —

0. additive Gaussian noise (σ from 0.02 to 0.22), clamped to [0, 1];
1. a blend with its own 3×3 box blur;
2. a blend with another image of the batch (ghosting, λ from 0.3 to 0.7);
3. small uniform pixel jitter (at most ±0.06), which also breaks the pixel quantisation;
4. speckle: up to 10 % of the pixels replaced by uniform noise.

None of these is one of the three synthetic sources, so leave-one-source-out evaluation stays
honest when they are used (they are our choice; the paper does not use them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Number of corruption kinds :func:`corrupt` draws from.
KINDS = 5


def corrupt(images: Tensor, generator: torch.Generator) -> Tensor:
    """One random corruption per image [N, C, H, W] in [0, 1]; all randomness from
    ``generator`` (drawn on the CPU); the result stays in [0, 1]."""
    n = images.shape[0]
    z = images
    dev = z.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator).to(dev)

    kind = torch.randint(0, KINDS, (n,), generator=generator).to(dev).view(-1, 1, 1, 1)
    s = rand(n, 1, 1, 1)
    noise = (z + torch.randn(z.shape, generator=generator).to(dev) * (0.02 + 0.2 * s)).clamp(0, 1)
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
    return out.clamp(0.0, 1.0)
