"""Thief query pools: unlabeled images an attacker sends to the black box.

A pool is a fixed set of images (with optional coarse *groups*, the actions of KnockoffNets'
adaptive policy). :meth:`Pool.draw` samples without replacement and, once every image has been
used, continues with randomly augmented copies so that a pool can serve more queries than it
has images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from stealproof._names import unknown_name_message
from stealproof.data.datasets import (
    digits_images,
    file_dataset_names,
    load_file_dataset_images,
    load_unlabeled,
    mnist5k_images,
)
from stealproof.data.files import load_file_images
from stealproof.data.synthetic import make_noise, make_shapes
from stealproof.data.transforms import fit_glyphs, match_channels, random_affine, resize
from stealproof.errors import ConfigError, InputValidationError, UnknownNameError

#: Images generated for a synthetic pool (the pool is then sampled like any other).
SYNTHETIC_SIZE = 10_000


@dataclass(frozen=True, eq=False)
class Pool:
    """An unlabeled image pool; ``groups`` are coarse categories used by adaptive sampling."""

    name: str
    images: Tensor
    groups: Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[0] == 0:
            raise InputValidationError(
                f"pool {self.name!r}: expected a non-empty [N, C, H, W] image batch, "
                f"got shape {list(self.images.shape)}"
            )
        if self.groups.shape != (self.images.shape[0],):
            raise InputValidationError(f"pool {self.name!r}: groups must have one entry per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_groups(self) -> int:
        """Number of distinct groups (1 for an ungrouped pool)."""
        return int(self.groups.max()) + 1

    def draw(
        self, n: int, generator: torch.Generator, *, augment: bool = True
    ) -> tuple[Tensor, Tensor]:
        """``n`` images and their pool indices: a permutation first, then augmented repeats."""
        if n < 0:
            raise InputValidationError(f"draw: n must be ≥ 0, got {n}")
        size = len(self)
        rounds = max(1, -(-n // size))
        idx = torch.cat([torch.randperm(size, generator=generator) for _ in range(rounds)])[:n]
        images = self.images[idx]
        if augment and n > size:
            images[size:] = random_affine(images[size:], generator)
        return images, idx

    def draw_from_groups(
        self, groups: Tensor, generator: torch.Generator, *, augment: bool = True
    ) -> tuple[Tensor, Tensor]:
        """One image per entry of ``groups`` (uniform within the group), augmented if asked."""
        counts = torch.bincount(self.groups, minlength=self.num_groups)
        if bool((counts[groups] == 0).any()):
            raise InputValidationError(f"pool {self.name!r}: asked for an empty group")
        order = torch.argsort(self.groups, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pick = (torch.rand(len(groups), generator=generator) * counts[groups]).long()
        idx = order[starts[groups] + pick]
        images = self.images[idx]
        if augment:
            images = random_affine(images, generator)
        return images, idx


def _shape_to(images: Tensor, channels: int, size: tuple[int, int], name: str) -> Tensor:
    """Resize and convert channels to the victim's input, naming the pool when impossible."""
    if images.shape[0] == 0:
        raise InputValidationError(f"pool {name!r}: holds no images")
    try:
        return match_channels(resize(images, size), channels)
    except InputValidationError as exc:
        raise InputValidationError(f"pool {name!r}: {exc}") from exc


def load_pool(
    name: str,
    *,
    channels: int,
    image_size: tuple[int, int],
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> Pool:
    """Build a pool shaped for a victim with the given input channels and size.

    Names: ``digits28`` (sklearn digits framed like MNIST), ``mnist8`` (MNIST-5k framed like
    sklearn digits), ``noise``, ``shapes`` (synthetic), ``<dataset>-unlabeled`` (the held-back
    split of a dataset, see :func:`stealproof.data.datasets.load_unlabeled`; file datasets read
    ``data_dir``; ``file:PATH-unlabeled`` is that of dataset ``file:PATH``), a file dataset's
    name (``kmnist``, ``cifar100``, ...: every image of its train split, from ``data_dir``;
    the papers' thieves query another dataset than the victim's), ``a+b`` (a mixture: every
    image of each pool, e.g. ``shapes+noise`` as an OOD proxy), ``file:PATH``
    (your own images, labels optional: an IDX images file or directory (train or t10k split),
    .npz, .npy, a CIFAR directory, an image folder with class sub-directories or a flat folder
    of images).
    """
    size = (int(image_size[0]), int(image_size[1]))
    if "+" in name and not name.startswith("file:"):
        return _mixture(name, channels=channels, size=size, seed=seed, data_dir=data_dir)
    g = torch.Generator().manual_seed(seed)
    if name == "digits28":
        x, y = digits_images()
        return Pool(name, match_channels(fit_glyphs(x, size, 0.0, 4 / 28), channels), y)
    if name == "mnist8":
        x, y = mnist5k_images()
        return Pool(name, match_channels(fit_glyphs(x, size, 4 / 28, 0.0), channels), y)
    if name == "noise":
        x, kind = make_noise(SYNTHETIC_SIZE, channels, size, g)
        return Pool(name, x, kind)
    if name == "shapes":
        x, kind = make_shapes(SYNTHETIC_SIZE, channels, size, g)
        return Pool(name, x, kind)
    if name in file_dataset_names():
        whole = load_file_dataset_images(name, data_dir)
        return Pool(name, _shape_to(whole.images, channels, size, name), whole.labels)
    own_file = name.startswith("file:") and Path(name.removeprefix("file:")).exists()
    if name.endswith("-unlabeled") and not own_file:  # also file:PATH-unlabeled
        unlabeled = load_unlabeled(name.removesuffix("-unlabeled"), data_dir)
        # labels are kept only as groups (the thief does not learn them from the pool)
        return Pool(name, _shape_to(unlabeled.images, channels, size, name), unlabeled.labels)
    if name.startswith("file:"):
        path = name.removeprefix("file:")
        if not path:
            raise ConfigError("pool 'file:': expected a path after 'file:'")
        images, labels = load_file_images(path, image_size=size)
        # labels (when the files have them) only become contiguous group ids
        groups = (
            torch.zeros(len(images), dtype=torch.int64)
            if labels is None
            else torch.unique(labels, return_inverse=True)[1]
        )
        return Pool(name, _shape_to(images, channels, size, name), groups)
    known = [
        "digits28",
        "mnist8",
        "noise",
        "shapes",
        "digits-unlabeled",
        "mnist5k-unlabeled",
        *file_dataset_names(),
    ]
    raise UnknownNameError(unknown_name_message("pool", name, known) + " or file:PATH")


def _mixture(
    name: str, *, channels: int, size: tuple[int, int], seed: int, data_dir: str | Path | None
) -> Pool:
    """``a+b+...``: every image of each named pool, each pool's groups kept apart."""
    parts = name.split("+")
    if any(not p for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(
            f"pool {name!r}: a mixture names two or more different pools joined by '+', "
            "e.g. shapes+noise"
        )
    images, groups, offset = [], [], 0
    for part in parts:
        pool = load_pool(part, channels=channels, image_size=size, seed=seed, data_dir=data_dir)
        images.append(pool.images)
        groups.append(pool.groups + offset)
        offset += pool.num_groups
    return Pool(name, torch.cat(images), torch.cat(groups))


def available_pools() -> dict[str, str]:
    """Pool names with a one-line description."""
    return {
        "digits28": "sklearn digits resized and framed like MNIST (same task, other source)",
        "mnist8": "MNIST-5k cropped and resized to 8×8 (same task, other source, for digits)",
        "noise": "synthetic noise images: uniform, smoothed, sparse (off-distribution)",
        "shapes": "synthetic ellipses, rectangles and strokes (off-distribution)",
        "mnist5k-unlabeled": "500 MNIST-5k images disjoint from the victim's data",
        "digits-unlabeled": "300 sklearn digits disjoint from the victim's data",
        "<dataset>-unlabeled": "held-back split of a file dataset (needs --data-dir)",
        "<file dataset>": "every train image of a file dataset: mnist, fashionmnist, kmnist, "
        "cifar10, cifar100 (needs --data-dir)",
        "file:PATH": "your own images, labels optional (IDX, .npz, .npy, CIFAR, image folder)",
        "<pool>+<pool>": "a mixture: every image of each pool, e.g. shapes+noise",
    }
