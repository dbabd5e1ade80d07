"""A small GAN trained on the defender's data: synthetic source (ii) of Model-Guardian.

The paper trains a sub-detector on real images against GAN images; it does not say which GAN.
Ours is deliberately small and CPU-friendly: a DCGAN-like pair (transposed-conv generator,
strided-conv discriminator) for images whose sides are multiples of 4 and at least 16 px
(28×28 MNIST), and an MLP pair for tiny images (8×8 digits). Non-saturating GAN loss, Adam
(lr 2e-4, β = (0.5, 0.999)), seeded; sampling runs the generator in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof._validate import check_images
from stealproof.errors import InputValidationError


class GANConfig(BaseModel):
    """Size and training schedule of :func:`train_gan`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    latent_dim: int = Field(32, ge=1)
    width: int = Field(64, ge=4, description="base width (conv channels or MLP units / 2)")
    steps: int = Field(3000, ge=1, description="discriminator + generator updates")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-4, gt=0)
    seed: int = 0


def _conv_ok(h: int, w: int) -> bool:
    return min(h, w) >= 16 and h % 4 == 0 and w % 4 == 0


def _mlp_generator(latent: int, width: int, out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(latent, 2 * width),
        nn.BatchNorm1d(2 * width),
        nn.ReLU(),
        nn.Linear(2 * width, 4 * width),
        nn.BatchNorm1d(4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, out),
    )


def _mlp_discriminator(inp: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inp, 4 * width),
        nn.LeakyReLU(0.2),
        nn.Dropout(0.3),
        nn.Linear(4 * width, 2 * width),
        nn.LeakyReLU(0.2),
        nn.Dropout(0.3),
        nn.Linear(2 * width, 1),
    )


def _conv_generator(latent: int, width: int, c: int, h: int, w: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(latent, 2 * width * (h // 4) * (w // 4)),
        nn.Unflatten(1, (2 * width, h // 4, w // 4)),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.ConvTranspose2d(width, c, 4, 2, 1),
    )


def _conv_discriminator(width: int, c: int, h: int, w: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, width, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1),
        nn.BatchNorm2d(2 * width),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(2 * width * (h // 4) * (w // 4), 1),
    )


class ImageGAN(nn.Module):
    """A GAN's generator and discriminator; :meth:`sample` returns images in [0, 1]."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (int(c), int(h), int(w))
        self.latent_dim = latent_dim
        if _conv_ok(h, w):
            self.generator: nn.Module = _conv_generator(latent_dim, width, c, h, w)
            self.discriminator: nn.Module = _conv_discriminator(width, c, h, w)
        else:
            self.generator = _mlp_generator(latent_dim, width, c * h * w)
            self.discriminator = _mlp_discriminator(c * h * w, width)

    def generate(self, z: Tensor) -> Tensor:
        """Images [B, C, H, W] in [0, 1] from latents ``z`` [B, latent_dim]."""
        return torch.sigmoid(self.generator(z)).reshape(z.shape[0], *self.image_shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, batch_size: int = 512) -> Tensor:
        """``n`` images in [0, 1] (generator in eval mode; latents from ``generator``)."""
        if n < 1:
            raise InputValidationError(f"n: expected ≥ 1 samples, got {n}")
        dev = next(self.parameters()).device
        was = self.training
        self.eval()
        try:
            z = torch.randn(n, self.latent_dim, generator=generator)
            out = [self.generate(z[i : i + batch_size].to(dev)) for i in range(0, n, batch_size)]
        finally:
            self.train(was)
        return torch.cat(out).cpu()


def train_gan(
    images: Tensor,
    config: GANConfig | None = None,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> ImageGAN:
    """Train a small GAN on ``images`` [N, C, H, W] in [0, 1]; returns it in eval mode."""
    cfg = config or GANConfig()
    images = check_images(images, "images")
    if images.shape[0] < 2:
        raise InputValidationError(f"images: a GAN needs ≥ 2 images, got {images.shape[0]}")
    c, h, w = (int(s) for s in images.shape[1:])
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gan = ImageGAN((c, h, w), cfg.latent_dim, cfg.width)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gan.to(dev)
    data = images.to(dev)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    n, bs = data.shape[0], min(cfg.batch_size, data.shape[0])
    ones, zeros = torch.ones(bs, 1, device=dev), torch.zeros(bs, 1, device=dev)
    gan.train()
    forked = [dev.index or 0] if dev.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=forked),  # the discriminator's dropout
        _progress.task(progress, "GAN", total=cfg.steps) as step,
    ):
        torch.manual_seed(cfg.seed)
        for _ in range(cfg.steps):
            real = data[torch.randint(0, n, (bs,), generator=g).to(dev)]
            z = torch.randn(bs, cfg.latent_dim, generator=g).to(dev)
            fake = gan.generate(z)
            d_loss = F.binary_cross_entropy_with_logits(
                gan.discriminator(real), ones
            ) + F.binary_cross_entropy_with_logits(gan.discriminator(fake.detach()), zeros)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = F.binary_cross_entropy_with_logits(gan.discriminator(fake), ones)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            step(1)
    gan.eval()
    return gan
