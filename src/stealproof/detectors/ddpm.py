"""A small DDPM trained on the defender's data: synthetic source (iii) of Model-Guardian.

The paper trains a sub-detector on real images against diffusion-model images; it does not say
which model. Ours is the plain DDPM of Ho et al. (ε-prediction, MSE loss, ancestral sampling
with σ_t² = β_t), kept small enough to train on a CPU in minutes:

- T = 100 steps with a linear β schedule from 1e-3 to 0.2 (the usual 1e-4…0.02 over 1,000
  steps, rescaled to 100 steps; ᾱ_T ≈ 3e-5, so x_T is essentially pure noise);
- the denoiser is a residual MLP on flattened pixels (three blocks, LayerNorm, SiLU, the
  sinusoidal time embedding added in every block) for tiny images (8×8), and a two-level
  convolutional U-Net (GroupNorm, SiLU, additive time embedding) for images whose sides are
  multiples of 4 and at least 16 px (28×28) — ``denoiser="mlp"`` picks the MLP there too
  (the ``mnist5k`` default: the U-Net costs ~0.2 s per step on one CPU thread);
- pixels are scaled to [-1, 1] for the model; samples come back clamped to [0, 1].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof._validate import check_images
from stealproof.errors import InputValidationError


class DDPMConfig(BaseModel):
    """Noise schedule, denoiser size and training schedule of :func:`train_ddpm`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    timesteps: int = Field(100, ge=2)
    beta_start: float = Field(1e-3, gt=0, lt=1)
    beta_end: float = Field(0.2, gt=0, lt=1)
    denoiser: Literal["auto", "mlp", "unet"] = Field(
        "auto", description="auto: the U-Net for sides ≥ 16 px that are multiples of 4, else MLP"
    )
    width: int = Field(32, ge=4, description="denoiser base width (U-Net channels; MLP ×8)")
    steps: int = Field(3000, ge=1, description="optimiser updates")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    sample_steps: int | None = Field(
        None, ge=2, description="respaced sampling steps (None: all timesteps)"
    )
    seed: int = 0


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [B, dim] of integer timesteps ``t`` [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / max(1, half))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


class MLPDenoiser(nn.Module):
    """ε-prediction residual MLP on flattened pixels; the time embedding enters every block."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, blocks: int = 3) -> None:
        super().__init__()
        d = image_shape[0] * image_shape[1] * image_shape[2]
        hidden = 8 * width
        self.temb = 64
        self.time = nn.Sequential(
            nn.Linear(self.temb, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.inp = nn.Linear(d, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
            )
            for _ in range(blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time(timestep_embedding(t, self.temb))
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h).reshape(x.shape)  # type: ignore[no-any-return]


class _Block(nn.Module):
    """conv → GroupNorm → SiLU, plus the time embedding, twice, with a residual path."""

    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.time = nn.Linear(temb, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.skip: nn.Module = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)  # type: ignore[no-any-return]


class UNetDenoiser(nn.Module):
    """A two-level U-Net (H → H/2 → H/4 and back) for ε-prediction."""

    def __init__(self, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c = image_shape[0]
        w1, w2 = width, 2 * width
        self.temb = 4 * width
        self.time = nn.Sequential(
            nn.Linear(width, self.temb), nn.SiLU(), nn.Linear(self.temb, self.temb)
        )
        self.width = width
        self.inp = nn.Conv2d(c, w1, 3, padding=1)
        self.down1 = _Block(w1, w1, self.temb)
        self.pool1 = nn.Conv2d(w1, w2, 4, 2, 1)
        self.down2 = _Block(w2, w2, self.temb)
        self.pool2 = nn.Conv2d(w2, w2, 4, 2, 1)
        self.mid = _Block(w2, w2, self.temb)
        self.up2 = nn.ConvTranspose2d(w2, w2, 4, 2, 1)
        self.dec2 = _Block(2 * w2, w2, self.temb)
        self.up1 = nn.ConvTranspose2d(w2, w1, 4, 2, 1)
        self.dec1 = _Block(2 * w1, w1, self.temb)
        self.out = nn.Conv2d(w1, c, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time(timestep_embedding(t, self.width))
        h1 = self.down1(self.inp(x), emb)
        h2 = self.down2(self.pool1(h1), emb)
        m = self.mid(self.pool2(h2), emb)
        d2 = self.dec2(torch.cat([self.up2(m), h2], dim=1), emb)
        d1 = self.dec1(torch.cat([self.up1(d2), h1], dim=1), emb)
        return self.out(d1)  # type: ignore[no-any-return]


class DDPM(nn.Module):
    """Denoiser + linear-β schedule; :meth:`sample` runs T ancestral steps to images in [0, 1]."""

    betas: Tensor
    alpha_bars: Tensor

    def __init__(self, image_shape: tuple[int, int, int], config: DDPMConfig) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        self.image_shape = (c, h, w)
        self.timesteps = config.timesteps
        self.sample_steps = min(config.sample_steps or config.timesteps, config.timesteps)
        unet_ok = min(h, w) >= 16 and h % 4 == 0 and w % 4 == 0
        if config.denoiser == "unet" and not unet_ok:
            raise InputValidationError(
                f"denoiser: the U-Net needs sides ≥ 16 px and multiples of 4, got {h}×{w}"
            )
        if config.denoiser == "unet" or (config.denoiser == "auto" and unet_ok):
            self.denoiser: nn.Module = UNetDenoiser(self.image_shape, config.width)
        else:
            self.denoiser = MLPDenoiser(self.image_shape, config.width)
        betas = torch.linspace(config.beta_start, config.beta_end, config.timesteps)
        self.register_buffer("betas", betas)
        self.register_buffer("alpha_bars", torch.cumprod(1.0 - betas, dim=0))

    def loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        """ε-prediction MSE at uniformly drawn timesteps; ``x0`` in [-1, 1]."""
        b = x0.shape[0]
        t = torch.randint(0, self.timesteps, (b,), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        ab = self.alpha_bars[t].view(b, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
        return F.mse_loss(self.denoiser(xt, t), eps)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, batch_size: int = 512) -> Tensor:
        """``n`` images in [0, 1]; all noise (x_T and every step's) drawn from ``generator``."""
        if n < 1:
            raise InputValidationError(f"n: expected ≥ 1 samples, got {n}")
        dev = self.betas.device
        was = self.training
        self.eval()
        try:
            out = [
                self._sample_chunk(min(batch_size, n - i), generator, dev)
                for i in range(0, n, batch_size)
            ]
        finally:
            self.train(was)
        return torch.cat(out).cpu()

    def _schedule(self) -> tuple[list[int], Tensor]:
        """Timesteps visited when sampling and their (respaced) β.

        With fewer sampling steps than timesteps, the visited steps ``s_0 < … < s_{n-1}`` are
        evenly spaced and ``β'_i = 1 − ᾱ_{s_i} / ᾱ_{s_{i−1}}`` (respacing, Nichol & Dhariwal
        2021), so the forward process restricted to those steps is unchanged.
        """
        n = self.sample_steps
        if n >= self.timesteps:
            return list(range(self.timesteps)), self.betas
        steps = torch.linspace(0, self.timesteps - 1, n).round().long().unique()
        ab = self.alpha_bars[steps.to(self.alpha_bars.device)]
        prev = torch.cat([ab.new_ones(1), ab[:-1]])
        return steps.tolist(), 1.0 - ab / prev

    def _sample_chunk(self, b: int, generator: torch.Generator, dev: torch.device) -> Tensor:
        steps, betas = self._schedule()
        alpha_bars = torch.cumprod(1.0 - betas, dim=0)
        x = torch.randn(b, *self.image_shape, generator=generator).to(dev)
        for i in reversed(range(len(steps))):
            t = torch.full((b,), steps[i], dtype=torch.long, device=dev)
            beta, ab = betas[i], alpha_bars[i]
            eps = self.denoiser(x, t)
            x = (x - beta / (1.0 - ab).sqrt() * eps) / (1.0 - beta).sqrt()
            if i > 0:
                x = x + beta.sqrt() * torch.randn(x.shape, generator=generator).to(dev)
        return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).clamp(0.0, 1.0)


def train_ddpm(
    images: Tensor,
    config: DDPMConfig | None = None,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> DDPM:
    """Train a small DDPM on ``images`` [N, C, H, W] in [0, 1]; returns it in eval mode."""
    cfg = config or DDPMConfig()
    if cfg.beta_end <= cfg.beta_start:
        raise InputValidationError(
            f"beta_end: expected > beta_start ({cfg.beta_start}), got {cfg.beta_end}"
        )
    images = check_images(images, "images")
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = DDPM(tuple(images.shape[1:]), cfg)  # type: ignore[arg-type]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model.to(dev)
    data = images.to(dev) * 2.0 - 1.0
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    n, bs = data.shape[0], min(cfg.batch_size, data.shape[0])
    model.train()
    with _progress.task(progress, "DDPM", total=cfg.steps) as step:
        for _ in range(cfg.steps):
            x0 = data[torch.randint(0, n, (bs,), generator=g).to(dev)]
            loss = model.loss(x0, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step(1)
    model.eval()
    return model
