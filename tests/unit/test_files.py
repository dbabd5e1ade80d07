"""Tests for stealproof.data.files: every loader round-trips tiny files and names bad files."""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from data_files import idx_bytes, write_cifar, write_idx
from stealproof.data.files import (
    ArrayData,
    load_cifar,
    load_file_dataset,
    load_idx,
    load_image_folder,
    load_mnist_like,
    load_npz,
    read_idx,
)
from stealproof.errors import DataFileError, InputValidationError


def match(path: Path, text: str = "") -> str:
    """Regex that requires the file name and (optionally) a message fragment."""
    return re.escape(path.name) + ".*" + re.escape(text)


@pytest.fixture
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([3, 0, 9, 1, 3], dtype=np.uint8)
    return images, labels


# ----------------------------------------------------------------------------- ArrayData


def test_arraydata_num_classes_and_validation() -> None:
    data = ArrayData(torch.zeros(3, 1, 2, 2), torch.tensor([0, 4, 2]))
    assert data.num_classes == 5
    assert ArrayData(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64)).num_classes == 0
    with pytest.raises(InputValidationError, match="3 images but 2 labels"):
        ArrayData(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(InputValidationError, match="float32"):
        ArrayData(torch.zeros(1, 1, 2, 2, dtype=torch.float64), torch.tensor([0]))
    with pytest.raises(InputValidationError, match=r"\[0, 1\]"):
        ArrayData(torch.full((1, 1, 2, 2), 2.0), torch.tensor([0]))
    with pytest.raises(ValueError, match="int64"):
        ArrayData(torch.zeros(1, 1, 2, 2), torch.tensor([0], dtype=torch.int32))


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, dtype: Any, suffix: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = write_idx(tmp_path / f"a.idx{suffix}", array)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_detects_gzip_by_magic_not_extension(tmp_path: Path) -> None:
    array = np.array([1, 2, 3], dtype=np.int32)
    gz_without_ext = write_idx(tmp_path / "labels", array, compress=True)
    raw_with_gz_ext = write_idx(tmp_path / "labels.gz", array, compress=False)
    np.testing.assert_array_equal(read_idx(gz_without_ext), array)
    np.testing.assert_array_equal(read_idx(str(raw_with_gz_ext)), array)


def test_read_idx_errors(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    missing = tmp_path / "nope-idx3-ubyte"
    with pytest.raises(DataFileError, match=match(missing, "not found")):
        read_idx(missing)
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes(good[:-1])
    with pytest.raises(DataFileError, match=match(truncated, "expected 18 payload bytes")):
        read_idx(truncated)
    too_long = tmp_path / "long-idx3-ubyte"
    too_long.write_bytes(good + b"\x00")
    with pytest.raises(DataFileError, match=match(too_long, "got 19")):
        read_idx(too_long)
    short_header = tmp_path / "short-idx3-ubyte"
    short_header.write_bytes(good[:9])
    with pytest.raises(DataFileError, match=match(short_header, "16-byte IDX header")):
        read_idx(short_header)
    bad_magic = tmp_path / "magic-idx3-ubyte"
    bad_magic.write_bytes(b"\x01\x02\x08\x03" + good[4:])
    with pytest.raises(DataFileError, match=match(bad_magic, "got 0x01020803")):
        read_idx(bad_magic)
    bad_code = tmp_path / "code-idx3-ubyte"
    bad_code.write_bytes(b"\x00\x00\x07\x03" + good[4:])
    with pytest.raises(DataFileError, match=match(bad_code, "got 0x00000703")):
        read_idx(bad_code)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(DataFileError, match=match(tiny, "only 2 bytes")):
        read_idx(tiny)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DataFileError, match=match(broken_gz, "gzip")):
        read_idx(broken_gz)


def test_load_idx_round_trip(tmp_path: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist_arrays
    ipath = write_idx(tmp_path / "i-idx3-ubyte.gz", images)
    lpath = write_idx(tmp_path / "l-idx1-ubyte", labels)
    data = load_idx(ipath, lpath)
    assert data.images.shape == (5, 1, 4, 3)
    assert data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert data.images.min().item() == 0.0 and data.images.max().item() == 1.0
    expected = torch.from_numpy(images).float().div(255).unsqueeze(1)
    assert torch.equal(data.images, expected)
    assert data.labels.tolist() == [3, 0, 9, 1, 3]
    assert data.num_classes == 10

    transposed = load_idx(ipath, lpath, transpose=True)
    assert transposed.images.shape == (5, 1, 3, 4)
    assert torch.equal(transposed.images, expected.transpose(2, 3))


def test_load_idx_errors(tmp_path: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist_arrays
    ipath = write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    lpath = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(
        DataFileError,
        match=match(lpath, "this is an IDX labels file (magic 0x00000801); expected the images"),
    ):
        load_idx(lpath, lpath)
    int16 = write_idx(tmp_path / "int16-images", images.astype(np.int16))
    with pytest.raises(DataFileError, match=match(int16, "expected IDX magic 0x00000803")):
        load_idx(int16, lpath)
    with pytest.raises(DataFileError, match=match(ipath, "got 0x00000803")):
        load_idx(ipath, ipath)
    short_labels = write_idx(tmp_path / "short-labels-idx1-ubyte", labels[:4])
    with pytest.raises(DataFileError, match=match(short_labels, "4 labels") + ".*5 images"):
        load_idx(ipath, short_labels)


def test_load_mnist_like_finds_standard_names(
    tmp_path: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_arrays
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:2])
    train = load_mnist_like(tmp_path)
    test = load_mnist_like(str(tmp_path), split="test")
    assert train.images.shape == (5, 1, 4, 3) and test.images.shape == (2, 1, 4, 3)
    assert torch.equal(test.images, train.images[:2])
    assert test.labels.tolist() == [3, 0]
    via_dispatch = load_file_dataset(tmp_path, split="test")
    assert torch.equal(via_dispatch.images, test.images)


def test_load_mnist_like_emnist_prefix_and_transpose(
    tmp_path: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_arrays
    prefix = "emnist-balanced-"
    write_idx(tmp_path / f"{prefix}test-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / f"{prefix}test-labels-idx1-ubyte.gz", labels)
    data = load_mnist_like(tmp_path, "test", prefix=prefix, transpose=True)
    expected = torch.from_numpy(images.transpose(0, 2, 1).copy()).float().div(255)
    assert torch.equal(data.images[:, 0], expected)


def test_load_mnist_like_missing_lists_tried_names(tmp_path: Path) -> None:
    with pytest.raises(
        DataFileError,
        match=re.escape(tmp_path.name) + ".*t10k-images-idx3-ubyte, t10k-images-idx3-ubyte.gz, "
        "test-images-idx3-ubyte, test-images-idx3-ubyte.gz",
    ):
        load_mnist_like(tmp_path, "test")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataFileError, match=re.escape("train-labels-idx1-ubyte.gz")):
        load_mnist_like(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist_like(tmp_path, "val")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- NPZ


def test_load_npz_uint8_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nchw = rng.integers(0, 256, size=(4, 3, 5, 6), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2], dtype=np.int64)
    expected = torch.from_numpy(nchw).float() / 255
    cases: dict[str, dict[str, Any]] = {
        "nchw.npz": {"x": nchw, "y": labels},
        "nhwc.npz": {"images": nchw.transpose(0, 2, 3, 1), "labels": labels},
        "upper.npz": {"X": nchw, "Y": labels.reshape(-1, 1).astype(np.uint8)},
    }
    for name, arrays in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        data = load_npz(path)
        assert data.images.shape == (4, 3, 5, 6), name
        assert torch.equal(data.images, expected), name
        assert data.labels.dtype == torch.int64
        assert data.labels.tolist() == [0, 2, 1, 2], name

    tiny = tmp_path / "tiny.npz"  # axis 1 and axis 3 both look like channels
    np.savez(tiny, x=nchw[:, :, :4, :4], y=labels)
    assert torch.equal(load_npz(tiny).images, expected[:, :, :4, :4])

    gray = tmp_path / "gray.npz"
    np.savez(gray, x=nchw[:, 0], y=labels)
    data = load_npz(gray)
    assert data.images.shape == (4, 1, 5, 6)
    assert torch.equal(data.images, expected[:, :1])


def test_load_npz_float_and_split_keys(tmp_path: Path) -> None:
    train = np.linspace(0, 1, 2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4, 1)
    test = np.full((3, 4, 4, 1), 0.5, dtype=np.float32)
    path = tmp_path / "split.npz"
    np.savez_compressed(
        path, x_train=train, y_train=np.array([1, 0]), x_test=test, y_test=np.array([0, 0, 1])
    )
    tr = load_npz(path)
    te = load_npz(path, split="test")
    assert tr.images.dtype == torch.float32 and tr.images.shape == (2, 1, 4, 4)
    assert torch.allclose(tr.images[:, 0], torch.from_numpy(train[..., 0]).float())
    assert te.images.shape == (3, 1, 4, 4) and bool((te.images == 0.5).all())
    assert te.labels.tolist() == [0, 0, 1]
    explicit = load_npz(path, images_key="x_test", labels_key="y_test")
    assert torch.equal(explicit.images, te.images)
    assert torch.equal(load_file_dataset(path, split="test").labels, te.labels)


def test_load_npz_errors(tmp_path: Path) -> None:
    labels = np.array([0, 1])
    too_bright = tmp_path / "bright.npz"
    np.savez(too_bright, x=np.full((2, 3, 3), 1.5, dtype=np.float32), y=labels)
    with pytest.raises(DataFileError, match=match(too_bright, "[0, 1]") + ".*1.5"):
        load_npz(too_bright)
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((2, 3, 3), np.nan), y=labels)
    with pytest.raises(DataFileError, match=match(nan, "NaN")):
        load_npz(nan)
    no_keys = tmp_path / "nokeys.npz"
    np.savez(no_keys, foo=np.zeros((2, 3, 3), np.uint8), bar=labels)
    with pytest.raises(DataFileError, match=match(no_keys, "no images/labels key pair")):
        load_npz(no_keys)
    with pytest.raises(DataFileError, match=match(no_keys, "missing key 'baz'")):
        load_npz(no_keys, images_key="foo", labels_key="baz")
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=np.zeros((3, 3, 3), np.uint8), y=labels)
    with pytest.raises(DataFileError, match=match(mismatch, "3 images but 2 labels")):
        load_npz(mismatch)
    int_images = tmp_path / "int.npz"
    np.savez(int_images, x=np.zeros((2, 3, 3), np.int64), y=labels)
    with pytest.raises(DataFileError, match=match(int_images, "int64")):
        load_npz(int_images)
    float_labels = tmp_path / "flabels.npz"
    np.savez(float_labels, x=np.zeros((2, 3, 3), np.uint8), y=labels.astype(np.float32))
    with pytest.raises(DataFileError, match=match(float_labels, "integer labels")):
        load_npz(float_labels)
    not_npz = tmp_path / "junk.npz"
    not_npz.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataFileError, match=match(not_npz, ".npz")):
        load_npz(not_npz)
    missing = tmp_path / "missing.npz"
    with pytest.raises(DataFileError, match=match(missing, "not found")):
        load_npz(missing)


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_cifar10_round_trip(tmp_path: Path, protocol: int) -> None:
    contents = write_cifar(tmp_path, 10, protocol=protocol)
    train = load_cifar(tmp_path)  # parent directory
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.float32
    raw = np.concatenate([contents[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(train.images, torch.from_numpy(raw).float().div(255).view(-1, 3, 32, 32))
    expected_labels = [v for i in range(1, 6) for v in contents[f"data_batch_{i}"][1]]
    assert train.labels.tolist() == expected_labels
    # Channel-major layout: the first 1024 bytes are the red plane of image 0.
    assert train.images[0, 0, 0, 1].item() == pytest.approx(raw[0, 1] / 255)
    assert train.images[0, 1, 0, 0].item() == pytest.approx(raw[0, 1024] / 255)
    test = load_cifar(tmp_path / "cifar-10-batches-py", split="test")
    assert test.labels.tolist() == contents["test_batch"][1]
    assert torch.equal(load_file_dataset(tmp_path, split="test").images, test.images)


def test_load_cifar100_round_trip(tmp_path: Path) -> None:
    contents = write_cifar(tmp_path, 100)
    data = load_cifar(tmp_path, "test", variant=100)
    assert data.images.shape == (4, 3, 32, 32)
    assert data.labels.tolist() == contents["test"][1]
    assert torch.equal(
        data.images, torch.from_numpy(contents["test"][0]).float().div(255).view(-1, 3, 32, 32)
    )
    assert load_file_dataset(tmp_path / "cifar-100-python").labels.tolist() == contents["train"][1]


def test_load_cifar_errors(tmp_path: Path) -> None:
    write_cifar(tmp_path, 10)
    directory = tmp_path / "cifar-10-batches-py"
    batch3 = directory / "data_batch_3"
    batch3.unlink()
    with pytest.raises(DataFileError, match=match(batch3, "not found")):
        load_cifar(tmp_path)

    test_batch = directory / "test_batch"
    test_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DataFileError, match=match(test_batch, "missing key 'labels'")):
        load_cifar(tmp_path, "test")
    test_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataFileError, match=match(test_batch, "[N, 3072]")):
        load_cifar(tmp_path, "test")
    test_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(DataFileError, match=match(test_batch, "2 images but 1 labels")):
        load_cifar(tmp_path, "test")
    test_batch.write_bytes(
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    )
    with pytest.raises(DataFileError, match=match(test_batch, "labels must be in [0, 9]")):
        load_cifar(tmp_path, "test")
    test_batch.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataFileError, match=match(test_batch, "cannot unpickle")):
        load_cifar(tmp_path, "test")
    with pytest.raises(DataFileError, match="cifar-100-python"):
        load_cifar(tmp_path, "test", variant=100)


def test_load_cifar_refuses_arbitrary_globals(tmp_path: Path) -> None:
    write_cifar(tmp_path, 100)
    evil = tmp_path / "cifar-100-python" / "test"
    evil.write_bytes(pickle.dumps({b"data": Path("x"), b"fine_labels": []}))
    with pytest.raises(DataFileError, match=match(evil, "refusing to load global")):
        load_cifar(tmp_path, "test", variant=100)


# ----------------------------------------------------------------------------- image folder


def make_rgb(seed: int, size: tuple[int, int] = (5, 4)) -> np.ndarray:
    """A deterministic RGB uint8 image array of shape (H, W, 3)."""
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def test_load_image_folder_rgb_round_trip(tmp_path: Path) -> None:
    arrays = {("cat", "b.png"): make_rgb(1), ("cat", "a.PNG"): make_rgb(2)}
    arrays[("ant", "z.bmp")] = make_rgb(3)
    for (cls, name), array in arrays.items():
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.fromarray(array).save(tmp_path / cls / name)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    data, classes = load_image_folder(tmp_path)
    assert classes == ["ant", "cat"]
    assert data.labels.tolist() == [0, 1, 1]
    assert data.images.shape == (3, 3, 5, 4) and data.images.dtype == torch.float32
    order = [("ant", "z.bmp"), ("cat", "a.PNG"), ("cat", "b.png")]
    expected = torch.stack(
        [torch.from_numpy(arrays[key]).permute(2, 0, 1).float() / 255 for key in order]
    )
    assert torch.equal(data.images, expected)
    assert data.num_classes == 2
    assert torch.equal(load_file_dataset(tmp_path).images, data.images)


def test_load_image_folder_grayscale_and_channels(tmp_path: Path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(5, 4) * 12
    for cls in ("one", "two"):
        (tmp_path / cls).mkdir()
        Image.fromarray(gray).save(tmp_path / cls / "g.png")
    data, _ = load_image_folder(tmp_path)
    assert data.images.shape == (2, 1, 5, 4)
    assert torch.equal(data.images[0, 0], torch.from_numpy(gray).float() / 255)
    rgb, _ = load_image_folder(tmp_path, channels=3)
    assert rgb.images.shape == (2, 3, 5, 4)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, channels=2)


def test_load_image_folder_resize_and_size_mismatch(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((8, 6, 3), 200, np.uint8)).save(tmp_path / "a" / "big.png")
    Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(tmp_path / "b" / "odd.jpg")
    with pytest.raises(DataFileError, match=r"odd\.jpg.*4x4.*big\.png.*8x6"):
        load_image_folder(tmp_path)
    data, _ = load_image_folder(tmp_path, image_size=(3, 2), channels=1)
    assert data.images.shape == (2, 1, 3, 2)
    big = data.images[0]
    assert bool((big - 200 / 255).abs().max() < 1e-6)
    assert bool((data.images[1] - 100 / 255).abs().max() < 3 / 255)  # jpeg is lossy


def test_load_image_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(DataFileError, match=match(missing, "not found")):
        load_image_folder(missing)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataFileError, match=match(root, "one sub-directory per class")):
        load_image_folder(root)
    (root / "full").mkdir()
    Image.fromarray(make_rgb(0)).save(root / "full" / "ok.png")
    empty = root / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataFileError, match=match(empty, "no image files")):
        load_image_folder(root)
    (empty / "readme.txt").unlink()
    corrupt = empty / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    with pytest.raises(DataFileError, match=match(corrupt, "cannot read image")):
        load_image_folder(root)


def test_load_file_dataset_unsupported_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")
    with pytest.raises(DataFileError, match=match(path, "unsupported")):
        load_file_dataset(path)
    with pytest.raises(DataFileError, match="no such file"):
        load_file_dataset(tmp_path / "nothing")


# ----------------------------------------------------------------------------- splits


def test_load_file_splits_cifar_and_image_folder_layouts(tmp_path: Path) -> None:
    from stealproof.data.datasets import load_dataset
    from stealproof.data.files import load_file_splits

    write_cifar(tmp_path / "c", 10, per_batch=10)
    train, test = load_file_splits(tmp_path / "c")
    assert train is not None and test is not None and len(train.labels) == 50
    ds = load_dataset("cifar10", tmp_path / "c")
    assert ds.num_classes == 10 and len(ds.train.labels) == 45 and ds.unlabeled is not None
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / "f" / split / cls / f"{i}.png")
    train, test = load_file_splits(tmp_path / "f")
    assert train is not None and test is not None
    assert (len(train.labels), len(test.labels)) == (6, 4)
    (tmp_path / "f" / "test" / "bird").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "f" / "test" / "bird" / "0.png")
    with pytest.raises(DataFileError, match=r"test: class folders .* differ from train's"):
        load_file_splits(tmp_path / "f")


def test_load_file_splits_needs_labels_that_a_pool_does_not(
    tmp_path: Path, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> None:
    from stealproof.data.files import load_file_images, load_file_splits

    images, labels = mnist_arrays
    ipath = write_idx(tmp_path / "train-images.idx3-ubyte", images)  # Kaggle's dotted name
    with pytest.raises(DataFileError, match=r"has train-images.idx3-ubyte but no labels file"):
        load_file_splits(tmp_path)
    with pytest.raises(DataFileError, match=r"idx3-ubyte: no labels file beside it"):
        load_file_splits(ipath)
    assert load_file_images(tmp_path)[1] is None
    write_idx(tmp_path / "train-labels.idx1-ubyte", labels)
    train, test = load_file_splits(ipath)
    assert train is not None and test is None and train.labels.tolist() == labels.tolist()
    assert torch.equal(load_mnist_like(tmp_path).images, train.images)
    np.save(tmp_path / "x.npy", images)
    with pytest.raises(DataFileError, match=r"x.npy: holds images without labels"):
        load_file_splits(tmp_path / "x.npy")
