"""Tiny dataset files in the standard formats (IDX, CIFAR pickles), written for tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

_IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in IDX format (big-endian) with struct."""
    header = struct.pack(">BBBB", 0, 0, _IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write an IDX file, gzip-compressed when compress (default: name ends in .gz)."""
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_cifar(
    root: Path, variant: int, per_batch: int = 4, protocol: int = pickle.HIGHEST_PROTOCOL
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write a tiny fake CIFAR directory under root and return what each file holds."""
    rng = np.random.default_rng(variant)
    if variant == 10:
        directory = root / "cifar-10-batches-py"
        names, label_key = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"], b"labels"
    else:
        directory = root / "cifar-100-python"
        names, label_key = ["train", "test"], b"fine_labels"
    directory.mkdir(parents=True)
    contents = {}
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, variant, size=per_batch)]
        batch: dict[bytes, Any] = {b"data": data, label_key: labels, b"batch_label": b"x"}
        if variant == 100:
            batch[b"coarse_labels"] = [0] * per_batch
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        contents[name] = (data, labels)
    return contents


def write_mnist_like(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """An MNIST-format directory (gzipped IDX, train and t10k) of learnable 28×28 images.

    Class ``k`` is a bright bar at row ``2k + 4`` over noise, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        images[np.arange(n), 2 * labels + 4, 4:24] = 255
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def write_paper_data_dir(root: Path, *, mnist_train: int = 600, cifar_per_batch: int = 40) -> Path:
    """A ``--data-dir`` for the ``paper-*`` suites: MNIST, FashionMNIST and KMNIST IDX files,
    CIFAR-10 and CIFAR-100 pickles, each small."""
    for i, sub in enumerate(("MNIST", "FashionMNIST", "KMNIST")):
        write_mnist_like(root / sub / "raw", mnist_train, mnist_train // 5, seed=i)
    write_cifar(root, 10, per_batch=cifar_per_batch)
    write_cifar(root, 100, per_batch=cifar_per_batch * 5)
    return root
