"""Issue 11 (#9, #12): real data from files as a new user has it, bounded decompression, and
every user-caused data error is a StealproofError (a hypothesis fuzz over file contents)."""

from __future__ import annotations

import gzip
import io
import math
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stealproof.data import files
from stealproof.data.datasets import load_dataset, load_unlabeled, stratified_split
from stealproof.data.files import (
    load_file_images,
    load_file_splits,
    load_idx,
    load_npz,
    read_idx,
)
from stealproof.data.pools import Pool, load_pool
from stealproof.data.transforms import match_channels
from stealproof.errors import (
    ConfigError,
    DataFileError,
    InputValidationError,
    StealproofError,
)

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding (big-endian) of an array."""
    header = struct.pack(">BBBB", 0, 0, _CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write an IDX file, gzip-compressed when the name ends in .gz."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def numbered(n: int, side: int = 6) -> np.ndarray:
    """``n`` distinct uint8 images: image i holds i in its first two pixels."""
    images = np.zeros((n, side, side), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    return images


def ids(images: torch.Tensor) -> set[int]:
    """Recover the numbers written by :func:`numbered` from float images."""
    px = (images[:, 0, 0, :2] * 255).round().long()
    return set((px[:, 0] + 256 * px[:, 1]).tolist())


LABELS = (np.arange(200) % 4).astype(np.uint8)


@pytest.fixture
def train_only(tmp_path: Path) -> Path:
    """An MNIST-style directory holding only the train split (200 images, 4 classes)."""
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", numbered(200))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", LABELS)
    return tmp_path


# ----------------------------------------------------------------- #12 file: pools


def test_file_pool_accepts_an_images_only_idx_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", numbered(30))
    pool = load_pool(f"file:{path}", channels=1, image_size=(6, 6))
    assert len(pool) == 30 and pool.num_groups == 1
    assert ids(pool.images) == set(range(30))


def test_file_pool_accepts_a_directory_with_only_unlabelled_t10k_images(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", numbered(25))
    pool = load_pool(f"file:{tmp_path}", channels=3, image_size=(8, 8))
    assert pool.images.shape == (25, 3, 8, 8) and pool.num_groups == 1


def test_file_pool_uses_labels_as_groups_when_present(train_only: Path) -> None:
    pool = load_pool(f"file:{train_only}", channels=1, image_size=(6, 6))
    assert pool.groups.tolist() == LABELS.tolist()


def test_file_pool_finds_kaggle_dotted_idx_names(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images.idx3-ubyte", numbered(12))
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", LABELS[:12])
    pool = load_pool(f"file:{tmp_path}", channels=1, image_size=(6, 6))
    assert pool.num_groups == 4 and len(pool) == 12


def test_file_pool_accepts_npy_and_images_only_npz(tmp_path: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (7, 5, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", rgba)
    np.savez(tmp_path / "named.npz", x_train=rgba)
    for name in ("x.npy", "named.npz"):
        pool = load_pool(f"file:{tmp_path / name}", channels=3, image_size=(5, 5))
        assert pool.images.shape == (7, 3, 5, 5)  # RGBA: alpha dropped
        expected = torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(pool.images, expected)


def test_file_pool_accepts_a_flat_folder_of_mixed_size_images(tmp_path: Path) -> None:
    Image.new("L", (6, 6), 200).save(tmp_path / "a.png")
    Image.new("RGB", (10, 8), (0, 255, 0)).save(tmp_path / "b.png")
    pool = load_pool(f"file:{tmp_path}", channels=1, image_size=(6, 6))
    assert pool.images.shape == (2, 1, 6, 6)


def test_file_pool_labels_become_contiguous_groups(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", numbered(4), np.array([7, 1_000_000, 7, 3]))
    pool = load_pool(f"file:{tmp_path / 'p.npz'}", channels=1, image_size=(6, 6))
    assert pool.groups.tolist() == [1, 2, 1, 0] and pool.num_groups == 3


def test_file_pool_errors_name_the_path(tmp_path: Path) -> None:
    labels_file = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", LABELS)
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte.gz: this is an IDX labels"):
        load_pool(f"file:{labels_file}", channels=1, image_size=(6, 6))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError, match=r"empty: no images found"):
        load_pool(f"file:{empty}", channels=1, image_size=(6, 6))
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(InputValidationError, match=r"none.npz'.*holds no images"):
        load_pool(f"file:{tmp_path / 'none.npz'}", channels=1, image_size=(4, 4))
    np.save(tmp_path / "two.npy", np.zeros((3, 2, 5, 5), np.uint8))
    with pytest.raises(InputValidationError, match=r"two.npy'.*2-channel images to 3"):
        load_pool(f"file:{tmp_path / 'two.npy'}", channels=3, image_size=(4, 4))
    with pytest.raises(ConfigError, match=r"path after 'file:'"):
        load_pool("file:", channels=1, image_size=(4, 4))


# ----------------------------------------------------------------- #12 unnamed npz


def test_npz_with_unnamed_arrays_loads_as_images_and_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", numbered(8), LABELS[:8].astype(np.int64).reshape(8, 1))
    data = load_npz(tmp_path / "d.npz")
    assert ids(data.images) == set(range(8)) and data.labels.tolist() == LABELS[:8].tolist()


@pytest.mark.parametrize(
    "arrays",
    [
        (numbered(8), np.zeros((8, 2), np.float32)),  # arr_1 is not labels
        (numbered(8), LABELS[:5]),  # wrong length
        (numbered(8), LABELS[:8], numbered(3), LABELS[:3]),  # train and test, unnamed
    ],
    ids=["not-labels", "wrong-length", "four-arrays"],
)
def test_ambiguous_unnamed_npz_is_refused_clearly(
    tmp_path: Path, arrays: tuple[np.ndarray, ...]
) -> None:
    path = tmp_path / "amb.npz"
    np.savez(path, *arrays)
    for load in (load_npz, load_file_images):
        with pytest.raises(DataFileError, match=r"amb.npz: cannot tell images from labels.*arr_0"):
            load(path)


def test_unnamed_npz_without_labels_is_a_pool_not_a_dataset(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", numbered(8))
    images, labels = load_file_images(tmp_path / "x.npz")
    assert images.shape == (8, 1, 6, 6) and labels is None
    with pytest.raises(DataFileError, match=r"x.npz: holds one unnamed array.*no labels"):
        load_npz(tmp_path / "x.npz")


# ----------------------------------------------------------------- #12 split_test


def test_single_split_needs_split_test_and_names_it(train_only: Path) -> None:
    with pytest.raises(DataFileError, match=r"no test split; pass split_test"):
        load_dataset("mnist", train_only)


def test_split_test_is_stratified_seeded_and_disjoint(train_only: Path) -> None:
    ds = load_dataset("mnist", train_only, split_test=0.25)
    assert ds.unlabeled is not None
    train, test, unl = ids(ds.train.images), ids(ds.test.images), ids(ds.unlabeled.images)
    assert (len(unl), len(test), len(train)) == (20, 45, 135)
    assert train | test | unl == set(range(200))
    assert not (train & test or train & unl or test & unl)
    counts = torch.bincount(ds.test.labels, minlength=4).tolist()
    assert max(counts) - min(counts) <= 1  # stratified
    again = load_dataset("mnist", train_only, split_test=0.25)
    assert torch.equal(again.test.images, ds.test.images)
    assert ds.num_classes == 4 and ds.input_shape == (1, 6, 6)


def test_split_test_works_from_a_lone_test_split_and_an_npz_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", numbered(40))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", LABELS[:40])
    with pytest.raises(DataFileError, match=r"found a test split but no train split"):
        load_dataset("fashionmnist", tmp_path)
    ds = load_dataset("fashionmnist", tmp_path, split_test=0.5)
    assert len(ds.train.labels) + len(ds.test.labels) == 36  # 4 held back as unlabeled
    np.savez(tmp_path / "mine.npz", numbered(50), (np.arange(50) % 5).astype(np.int32))
    own = load_dataset(f"file:{tmp_path / 'mine.npz'}", split_test=0.2)
    assert (len(own.train.labels), len(own.test.labels), own.num_classes) == (36, 9, 5)


def test_keras_style_npz_as_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    np.savez(
        path, x_train=numbered(100), y_train=LABELS[:100], x_test=numbered(10), y_test=LABELS[:10]
    )
    ds = load_dataset("mnist", path)
    assert (len(ds.train.labels), len(ds.test.labels)) == (90, 10)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, math.nan, math.inf, True, "0.2"])
def test_bad_split_test_is_a_config_error(train_only: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"split_test"):
        load_dataset("mnist", train_only, split_test=bad)  # type: ignore[arg-type]


def test_split_test_edge_cases(train_only: Path) -> None:
    with pytest.raises(ConfigError, match=r"split_test: built-in dataset 'digits'"):
        load_dataset("digits", split_test=0.2)
    with pytest.raises(ConfigError, match=r"leaves an empty train or test split"):
        load_dataset("mnist", train_only, split_test=0.001)


# ----------------------------------------------------------------- #12 <file dataset>-unlabeled


def test_unlabeled_pool_of_a_file_dataset_is_disjoint_from_victim_data(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", numbered(200))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", LABELS)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", numbered(250)[200:])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", LABELS[:50])
    ds = load_dataset("mnist", tmp_path)
    pool = load_pool("mnist-unlabeled", channels=1, image_size=(6, 6), data_dir=tmp_path)
    assert len(pool) == 20 and pool.num_groups == 4
    assert not ids(pool.images) & (ids(ds.train.images) | ids(ds.test.images))
    assert ids(ds.train.images) | ids(pool.images) == set(range(200))
    # the same images whether or not the dataset is split with split_test
    assert ids(load_unlabeled("mnist", tmp_path).images) == ids(pool.images)
    split = load_dataset("mnist", tmp_path, split_test=0.3)
    assert split.unlabeled is not None and ids(split.unlabeled.images) == ids(pool.images)


def test_unlabeled_pool_without_a_test_split_or_images_to_spare(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", numbered(30))
    write_idx(tmp_path / "train-labels-idx1-ubyte", LABELS[:30])
    assert len(load_pool("mnist-unlabeled", channels=1, image_size=(6, 6), data_dir=tmp_path)) == 3
    small = tmp_path / "small"
    small.mkdir()
    write_idx(small / "train-images-idx3-ubyte", numbered(9))
    write_idx(small / "train-labels-idx1-ubyte", LABELS[:9])
    with pytest.raises(DataFileError, match=r"too few.*pass --pool file:PATH"):
        load_pool("mnist-unlabeled", channels=1, image_size=(6, 6), data_dir=small)


# ----------------------------------------------------------------- #9 decompression bombs


def test_gzip_bomb_is_streamed_and_refused_past_its_declared_size(tmp_path: Path) -> None:
    header = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 10, 10, 10)  # declares 1,000 bytes
    bomb = tmp_path / "bomb-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(header + bytes(64 * 2**20), compresslevel=9))
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(DataFileError, match=r"bomb-images.*more than the 1016 bytes"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # never held the 64 MiB


def test_gzip_idx_declaring_more_than_the_cap_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_DATA_BYTES", 2**20)
    big = np.zeros((4, 1024, 1024), np.uint8)  # 4 MiB of zeros: a small gzip file
    bomb = write_idx(tmp_path / "train-images-idx3-ubyte.gz", big)
    with pytest.raises(DataFileError, match=r"declares 4194320 bytes, over the limit of 1048576"):
        read_idx(bomb)
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.gz: IDX header declares"):
        load_pool(f"file:{bomb}", channels=1, image_size=(8, 8))
    raw = write_idx(tmp_path / "raw-images-idx3-ubyte", big)
    with pytest.raises(DataFileError, match=r"raw-images-idx3-ubyte: file has 4194320 bytes"):
        read_idx(raw)
    assert read_idx(raw, max_bytes=8 * 2**20).shape == (4, 1024, 1024)


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    """An .npy stream whose header declares ``shape`` of uint8 but holds no data."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return out.getvalue()


def test_npz_and_npy_declaring_huge_arrays_are_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", _npy_header_only((10**6, 1000, 1000)))
        zf.writestr("y_train.npy", _npy_header_only((10**6,)))
    with pytest.raises(DataFileError, match=r"huge.npz: array 'x_train' declares shape .*over"):
        load_npz(path)
    npy = tmp_path / "huge.npy"
    npy.write_bytes(_npy_header_only((10**6, 1000, 1000)))
    with pytest.raises(DataFileError, match=r"huge.npy: array .*over the limit"):
        load_file_images(npy)


# ----------------------------------------------------------------- user errors are typed


def test_pool_and_transform_errors_are_stealproof_errors() -> None:
    with pytest.raises(InputValidationError, match=r"non-empty"):
        Pool("p", torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))
    pool = Pool("p", torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputValidationError, match=r"n must be"):
        pool.draw(-1, torch.Generator())
    with pytest.raises(InputValidationError, match=r"cannot convert 2-channel"):
        match_channels(torch.zeros(1, 2, 2, 2), 3)
    with pytest.raises(InputValidationError, match=r"exceed"):
        stratified_split(np.zeros(4, np.int64), (3, 3))


def test_zero_sized_image_dimensions_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "flat.npz", x=np.zeros((3, 0, 4), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(DataFileError, match=r"flat.npz: array 'x': image shape \[3, 0, 4\]"):
        load_npz(tmp_path / "flat.npz")


# ----------------------------------------------------------------- fuzz over file contents


def _idx_like() -> st.SearchStrategy[bytes]:
    """IDX-ish byte strings: valid, truncated, wrong magic, random; raw or gzip."""
    dims = st.lists(st.integers(0, 6), min_size=1, max_size=4)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        shape = draw(dims)
        code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0D, 0x07, 0xFF]))
        prefix = draw(st.sampled_from([b"\x00\x00", b"\x01\x00", b"\x1f\x8b"]))
        body = prefix + bytes([code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
        body += draw(st.binary(max_size=300))
        body = body[: draw(st.integers(0, len(body)))]  # truncate anywhere
        return gzip.compress(body) if draw(st.booleans()) else body

    return st.one_of(build(), st.binary(max_size=200))


_DTYPES = [np.uint8, np.int64, np.float32, np.float64, np.bool_, np.int8, np.complex64]


@st.composite
def _npz_bytes(draw: st.DrawFn) -> bytes:
    """Archives of odd arrays under named or unnamed keys, or a damaged archive."""
    out = io.BytesIO()
    arrays = {}
    n = draw(st.integers(0, 4))  # most arrays share the leading N, as images and labels do
    for i in range(draw(st.integers(0, 3))):
        lead = draw(st.sampled_from([(n,), (n,), ()]))
        shape = lead + tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        dtype = draw(st.sampled_from(_DTYPES))
        fill = draw(st.sampled_from([0.0, 0.5, 1.0, 7.0, -1.0, math.nan]))
        key = draw(st.sampled_from([f"arr_{i}", "x", "y", "x_train", "y_train", "images", "z"]))
        with np.errstate(invalid="ignore"):
            arrays[key] = np.full(shape, fill).astype(dtype)
    np.savez(out, **arrays)
    data = out.getvalue()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=20))
    return data


_FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _loads_or_refuses(path: Path) -> None:
    """Every file loader either returns or raises a StealproofError."""
    loaders = [
        lambda: read_idx(path),
        lambda: load_idx(path, path),
        lambda: load_file_images(path),
        lambda: load_file_splits(path),
        lambda: load_pool(f"file:{path}", channels=3, image_size=(4, 4)),
    ]
    if path.suffix == ".npz":
        loaders.append(lambda: load_npz(path))
    for load in loaders:
        try:
            load()
        except StealproofError as exc:
            assert str(exc) and "\n" not in str(exc)


@_FUZZ
@given(data=_idx_like())
def test_fuzz_idx_contents_load_or_raise_a_stealproof_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f-images-idx3-ubyte"
    path.write_bytes(data)
    _loads_or_refuses(path)


@_FUZZ
@given(data=_npz_bytes())
def test_fuzz_npz_contents_load_or_raise_a_stealproof_error(tmp_path: Path, data: bytes) -> None:
    for suffix in (".npz", ".npy"):
        path = tmp_path / f"f{suffix}"
        path.write_bytes(data)
        _loads_or_refuses(path)


def test_unlabeled_pool_of_a_file_path_dataset_and_unsupported_files(tmp_path: Path) -> None:
    path = tmp_path / "mine.npz"
    np.savez(path, numbered(50), (np.arange(50) % 5).astype(np.int32))
    pool = load_pool(f"file:{path}-unlabeled", channels=1, image_size=(6, 6))  # jbda's default
    ds = load_dataset(f"file:{path}", split_test=0.2)
    assert ds.unlabeled is not None and ids(pool.images) == ids(ds.unlabeled.images)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataFileError, match=r"notes.txt: unsupported file; expected an IDX"):
        load_pool(f"file:{text}", channels=1, image_size=(6, 6))
    with pytest.raises(DataFileError, match=r"notes.txt: unsupported file"):
        load_dataset(f"file:{text}", split_test=0.5)
