"""LGrad gradient representations through a frozen transformation network.

Model-Guardian (following LGrad) does not look at a query's pixels but at the gradient
``g(x) = ∂ Σ_k f_T(x)_k / ∂x`` of a frozen "transformation" network ``f_T`` — a network that
is *not* the victim. Synthetic images leave traces in that gradient that real images do not
have. Each gradient is min-max normalised per sample to [0, 1], so the representation is itself
an image.

Our choice of ``f_T`` (LGrad uses the discriminator of a pre-trained StyleGAN, which we do not
have): a small convolutional **discriminator** with one output, trained on the defender's own
images against generic corruptions of them (:mod:`stealproof.detectors.corruptions`). With one
output, ``Σ_k f_T(x)_k`` is a trained quantity — for a softmax classifier the sum of logits is
a direction the loss never constrains, and its gradient carries little information (we measured
that on ``digits``). Smooth activations (SiLU) and average pooling make ``g(x)`` vary smoothly
with ``x`` instead of being piecewise constant as with ReLU and max-pooling.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof._validate import check_images
from stealproof.detectors.corruptions import KINDS, corrupt
from stealproof.errors import DataFileError, InputValidationError
from stealproof.models.base import Normalize


def normalize_per_sample(g: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max normalise each row of ``g`` to [0, 1]; a constant row becomes all zeros."""
    flat = g.reshape(g.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.reshape(g.shape)


def gradient_representation(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 256,
    normalize: bool = True,
) -> Tensor:
    """LGrad representation of ``x`` [B, C, H, W]: ``∂ Σ_k f_T(x)_k / ∂x``, per sample in [0, 1].

    ``model`` runs in eval mode (restored afterwards), so a row never depends on the other rows
    of its chunk; the gradient of the chunk's summed outputs is therefore every row's own
    gradient, and one backward pass per chunk suffices. Parameter gradients are not touched.
    """
    x = check_images(x, "x")
    if batch_size < 1:
        raise InputValidationError(f"batch_size: expected ≥ 1, got {batch_size}")
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[Tensor] = []
    try:
        with torch.enable_grad():
            for i in range(0, x.shape[0], batch_size):
                xb = x[i : i + batch_size].detach().to(dev).float().requires_grad_(True)
                total = model(xb).sum()
                (g,) = torch.autograd.grad(total, xb)
                parts.append(g.detach())
    finally:
        model.train(was_training)
    out = torch.cat(parts)
    return normalize_per_sample(out) if normalize else out


class TransformNet(nn.Module):
    """``f_T``: conv(W) → SiLU → avg-pool → conv(2W) → SiLU → avg-pool → fc(4W) → SiLU → 1.

    Pixels in [0, 1] are normalised inside (mean 0.5, std 0.5). Sides that are not multiples
    of 4 are handled by the pooling's floor; images must be at least 4×4.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        if min(h, w) < 4:
            raise InputValidationError(f"image_shape: f_T needs ≥ 4×4 images, got {image_shape}")
        self.input_shape = (c, h, w)
        self.width = width
        self.normalize = Normalize([0.5] * c, [0.5] * c)
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (h // 4) * (w // 4), 4 * width),
            nn.SiLU(),
            nn.Linear(4 * width, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """One logit per image, ``[B, 1]`` (high = looks like the defender's real images)."""
        return self.body(self.normalize(x))  # type: ignore[no-any-return]

    def spec(self) -> dict[str, Any]:
        """Constructor arguments, JSON-able (for saving)."""
        return {"image_shape": list(self.input_shape), "width": self.width}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TransformNet:
        """Rebuild (untrained) from :meth:`spec`."""
        c, h, w = (int(s) for s in spec["image_shape"])
        return cls((c, h, w), int(spec["width"]))


class TransformConfig(BaseModel):
    """Size and training of the transformation network (:func:`train_transformation_net`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    width: int = Field(32, ge=1, description="channels of the first conv layer")
    epochs: int = Field(80, ge=1, description="passes over the real images")
    batch_size: int = Field(64, ge=1, description="real images per step (plus as many corrupted)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    corruption_kinds: int = Field(
        KINDS, ge=1, le=KINDS, description="corruption kinds drawn for the fake side"
    )
    seed: int = 0


def train_transformation_net(
    images: Tensor,
    config: TransformConfig | None = None,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> TransformNet:
    """Train ``f_T`` to tell ``images`` (real, label 1) from fresh corruptions of them (label 0).

    Every step corrupts the batch anew (seeded), so the network sees a different corruption of
    each image every epoch. Returns it frozen (eval mode, no parameter gradients).
    """
    cfg = config or TransformConfig()
    images = check_images(images, "images")
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = TransformNet(shape, cfg.width)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    net.to(dev)
    data = images.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = data.shape[0]
    net.train()
    with _progress.task(progress, "f_T", total=cfg.epochs) as step:
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=g).to(dev)
            for i in range(0, n, cfg.batch_size):
                real = data[perm[i : i + cfg.batch_size]]
                fake = corrupt(real, g, cfg.corruption_kinds)
                logits = net(torch.cat([real, fake]))[:, 0]
                target = torch.cat([torch.ones(real.shape[0]), torch.zeros(fake.shape[0])])
                loss = F.binary_cross_entropy_with_logits(logits, target.to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step(1)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def transform_payload(net: TransformNet) -> dict[str, Any]:
    """A weights-only-loadable dict holding ``net``'s spec and weights."""
    return {
        "spec_json": json.dumps(net.spec()),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }


def transform_from_payload(payload: object, where: str = "transform") -> TransformNet:
    """Inverse of :func:`transform_payload`; frozen, in eval mode.

    A payload whose keys, spec or weights do not fit raises
    :class:`~stealproof.errors.DataFileError` naming ``where``.
    """
    from stealproof.models.checkpoint import load_state_checked

    if not isinstance(payload, dict) or not isinstance(payload.get("spec_json"), str):
        raise DataFileError(f"{where}: expected a dict with a spec_json string")
    try:
        spec = json.loads(payload["spec_json"])
        net = TransformNet.from_spec(spec)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DataFileError(
            f"{where}: spec_json: not a transformation-network spec ({type(e).__name__}: {e})"
        ) from None
    load_state_checked(net, payload.get("state_dict"), where)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
