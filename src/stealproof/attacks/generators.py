"""Small image generators ``z → image in [0, 1]`` for the data-free attacks (DFME, MAZE, DaST).

Every generator ends in the same squashing map ``pixels = (1 + tanh(a)) / 2`` applied to a
pre-activation ``a`` (:meth:`ImageGenerator.pre_images`). The data-free attacks estimate the
black box's gradient with respect to ``a`` (DFME perturbs the generator's pre-``tanh`` output),
so every point they query lies inside [0, 1] without clamping.

Sizes (picked by :func:`create_generator` from the image shape):

* ``mlp`` — two hidden layers, for tiny images such as the 8×8 ``digits`` scenario;
* ``conv`` — DFME's DCGAN-like generator: a linear layer to a ``H/4 × W/4`` map, two
  nearest-neighbour upsamplings with 3×3 convolutions, batch norm, LeakyReLU, and a final
  affine-free batch norm on the image channels. Width 64 for 28×28 (``mnist5k``), 128 with a
  256-dimensional latent for CIFAR-size 32×32×3 images (DFME's CIFAR setting; for GPUs).

With ``num_classes`` the first layer has one branch per class (DaST's label-controllable
generator): ``forward(z, labels)`` sends row ``i`` through branch ``labels[i]``; the rest is
shared.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from torch import Tensor, nn

from stealproof.errors import InputValidationError

GeneratorKind = Literal["auto", "mlp", "conv"]


def squash(a: Tensor) -> Tensor:
    """Map a pre-activation to pixels in [0, 1]: ``(1 + tanh(a)) / 2``."""
    return 0.5 * (torch.tanh(a) + 1.0)


class ClassBranches(nn.Module):
    """One linear layer per class: row ``i`` goes through branch ``labels[i]``.

    Looping over the (few) classes keeps the cost of one linear layer; each branch sees only
    its own rows.
    """

    def __init__(self, num_classes: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Linear(in_features, out_features) for _ in range(num_classes)
        )
        self.out_features = out_features

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        out = z.new_empty(z.shape[0], self.out_features)
        for k, branch in enumerate(self.branches):
            idx = (labels == k).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = branch(z[idx])
        return out


class ImageGenerator(nn.Module):
    """``z [B, latent_dim] → images [B, *image_shape]`` in [0, 1].

    ``head`` maps the latent code to features (a :class:`ClassBranches` for a per-class
    generator), ``body`` maps them to the pre-activation image ``a`` and
    ``forward(z) = (1 + tanh(a)) / 2``.
    """

    def __init__(
        self,
        head: nn.Module,
        body: nn.Module,
        *,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        self.body = body
        self.latent_dim = latent_dim
        self.image_shape = image_shape
        self.num_classes = num_classes

    def pre_images(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The pre-activation ``a`` [B, C, H, W]; the images are ``squash(a)``."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise InputValidationError(
                f"z: expected shape [batch, {self.latent_dim}], got {list(z.shape)}"
            )
        if self.num_classes is None:
            h = self.head(z)
        else:
            if labels is None or labels.shape != (z.shape[0],):
                raise InputValidationError(
                    f"labels: a per-class generator needs one label per row of z "
                    f"({z.shape[0]}), got {None if labels is None else list(labels.shape)}"
                )
            h = self.head(z, labels)
        return cast(Tensor, self.body(h)).reshape(z.shape[0], *self.image_shape)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images in [0, 1]; ``labels`` pick the branches of a per-class generator."""
        return squash(self.pre_images(z, labels))

    def sample_latent(
        self, n: int, generator: torch.Generator, device: torch.device | str | None = None
    ) -> Tensor:
        """``n`` standard normal latent codes, drawn on the CPU from ``generator``."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        return z if device is None else z.to(device)

    def sample_labels(self, n: int, generator: torch.Generator) -> Tensor:
        """Balanced class labels for a per-class generator (each class ⌊n/K⌋ or ⌈n/K⌉ times),
        in a random order drawn from ``generator``."""
        if self.num_classes is None:
            raise InputValidationError("labels: this generator has no class branches")
        labels = torch.arange(n) % self.num_classes
        return labels[torch.randperm(n, generator=generator)]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` images in eval mode, without gradients, seeded by ``generator``.

        A per-class generator draws balanced labels. The images are on the generator's device.
        """
        if n < 1:
            raise InputValidationError(f"n: expected ≥ 1 images, got {n}")
        device = next(self.parameters()).device
        z = self.sample_latent(n, generator, device)
        labels = None
        if self.num_classes is not None:
            labels = self.sample_labels(n, generator).to(device)
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            return self.forward(z, labels)
        finally:
            for m, mode in modes:
                m.training = mode


def _mlp_parts(
    latent_dim: int, shape: tuple[int, int, int], width: int, num_classes: int | None
) -> tuple[nn.Module, nn.Module]:
    d = math.prod(shape)
    first: nn.Module = (
        nn.Linear(latent_dim, width)
        if num_classes is None
        else ClassBranches(num_classes, latent_dim, width)
    )
    head = first
    body = nn.Sequential(
        nn.BatchNorm1d(width),
        nn.LeakyReLU(0.2),
        nn.Linear(width, 2 * width),
        nn.BatchNorm1d(2 * width),
        nn.LeakyReLU(0.2),
        nn.Linear(2 * width, d),
        nn.BatchNorm1d(d, affine=False),
    )
    return head, body


def _conv_parts(
    latent_dim: int, shape: tuple[int, int, int], width: int, num_classes: int | None
) -> tuple[nn.Module, nn.Module]:
    c, h, w = shape
    h0, w0 = h // 4, w // 4
    feat = 2 * width * h0 * w0
    head: nn.Module = (
        nn.Linear(latent_dim, feat)
        if num_classes is None
        else ClassBranches(num_classes, latent_dim, feat)
    )
    body = nn.Sequential(
        nn.Unflatten(1, (2 * width, h0, w0)),
        nn.BatchNorm2d(2 * width),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.LeakyReLU(0.2),
        nn.Upsample(size=(h, w), mode="nearest"),
        nn.Conv2d(2 * width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, c, 3, padding=1),
        nn.BatchNorm2d(c, affine=False),
    )
    return head, body


def default_latent_dim(image_shape: tuple[int, int, int]) -> int:
    """32 for images up to 16×16, 100 up to 28×28, 256 above (DFME's CIFAR setting)."""
    side = max(image_shape[1], image_shape[2])
    return 32 if side <= 16 else 100 if side <= 28 else 256


def default_width(image_shape: tuple[int, int, int], kind: Literal["mlp", "conv"]) -> int:
    """Hidden width: 128 for the MLP; 32/64/128 conv channels for ≤16 / ≤28 / larger images."""
    if kind == "mlp":
        return 128
    side = max(image_shape[1], image_shape[2])
    return 32 if side <= 16 else 64 if side <= 28 else 128


def create_generator(
    image_shape: tuple[int, ...],
    latent_dim: int | None = None,
    *,
    kind: GeneratorKind = "auto",
    width: int | None = None,
    num_classes: int | None = None,
) -> ImageGenerator:
    """A generator for images of ``image_shape`` (C, H, W).

    ``kind="auto"`` picks the MLP for images up to 16×16 (``digits``) and the DCGAN-like conv
    net above (``mnist5k``, CIFAR). ``latent_dim`` and ``width`` default by size (see
    :func:`default_latent_dim`, :func:`default_width`). ``num_classes`` gives one first-layer
    branch per class (DaST). Initialise under ``torch.random.fork_rng`` + ``manual_seed`` for
    seeded weights.
    """
    if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
        raise InputValidationError(
            f"image_shape: expected (channels, height, width), got {tuple(image_shape)}"
        )
    shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
    if kind not in ("auto", "mlp", "conv"):
        raise InputValidationError(f"kind: expected auto, mlp or conv, got {kind!r}")
    resolved: Literal["mlp", "conv"] = (
        ("mlp" if max(shape[1:]) <= 16 else "conv") if kind == "auto" else kind
    )
    if resolved == "conv" and min(shape[1:]) < 4:
        raise InputValidationError(f"image_shape: the conv generator needs ≥ 4×4, got {shape}")
    latent = default_latent_dim(shape) if latent_dim is None else latent_dim
    if latent < 1:
        raise InputValidationError(f"latent_dim: expected ≥ 1, got {latent}")
    wid = default_width(shape, resolved) if width is None else width
    if wid < 1:
        raise InputValidationError(f"width: expected ≥ 1, got {wid}")
    if num_classes is not None and num_classes < 2:
        raise InputValidationError(f"num_classes: expected ≥ 2, got {num_classes}")
    parts = _mlp_parts if resolved == "mlp" else _conv_parts
    head, body = parts(latent, shape, wid, num_classes)
    return ImageGenerator(head, body, latent_dim=latent, image_shape=shape, num_classes=num_classes)
