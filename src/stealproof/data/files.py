"""Load image-classification datasets from local files into tensors.

Every loader returns an :class:`ArrayData`: float32 images of shape ``[N, C, H, W]`` with
values in ``[0, 1]`` and int64 labels of shape ``[N]``. Supported sources:

* IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), raw or gzip-compressed:
  :func:`read_idx`, :func:`load_idx`, :func:`load_mnist_like`;
* NumPy ``.npz`` archives: :func:`load_npz`;
* the CIFAR-10 / CIFAR-100 "python version" pickles: :func:`load_cifar`;
* an ImageFolder directory tree (``root/<class>/<image>``): :func:`load_image_folder`;
* :func:`load_file_dataset` picks one of the above from what a path looks like;
  :func:`load_file_splits` returns the labelled train/test splits found at a path and
  :func:`load_file_images` a thief's images (labels optional; also ``.npy`` and a flat
  folder of images).

Nothing is downloaded. Every missing or malformed file raises
:class:`~stealproof.errors.DataFileError` whose message starts with the offending path and
says what was expected. CIFAR pickles are read with a restricted unpickler that only
rebuilds NumPy arrays, so a hostile pickle cannot run code. Decompression is streamed and
capped (:data:`MAX_DATA_BYTES`, and for gzip IDX the size its header declares), so a
compression bomb is refused instead of filling memory.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from stealproof.errors import DataFileError, InputValidationError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DATA_BYTES",
    "ArrayData",
    "find_idx_files",
    "load_cifar",
    "load_cifar_splits",
    "load_file_dataset",
    "load_file_images",
    "load_file_splits",
    "load_idx",
    "load_image_folder",
    "load_mnist_like",
    "load_npz",
    "npz_has_split",
    "read_idx",
]

PathLike = str | os.PathLike[str]
Split = Literal["train", "test"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
"""File suffixes (lower case) that :func:`load_image_folder` treats as images."""

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

MAX_DATA_BYTES: int = 4 * 2**30
"""Most bytes one data file may hold once decompressed (4 GiB; loaders take ``max_bytes``).

Compressed IDX files are also refused once they yield more than their header declares, and
``.npz``/``.npy`` arrays whose header declares more than this are refused before any read.
"""


def _limit(max_bytes: int | None) -> int:
    """The byte limit to apply: ``max_bytes`` if given, else :data:`MAX_DATA_BYTES`."""
    return MAX_DATA_BYTES if max_bytes is None else max_bytes


# IDX type code -> big-endian NumPy dtype and a human-readable name.
_IDX_DTYPES: dict[int, tuple[np.dtype[Any], str]] = {
    0x08: (np.dtype(">u1"), "uint8"),
    0x09: (np.dtype(">i1"), "int8"),
    0x0B: (np.dtype(">i2"), "int16"),
    0x0C: (np.dtype(">i4"), "int32"),
    0x0D: (np.dtype(">f4"), "float32"),
    0x0E: (np.dtype(">f8"), "float64"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim
_IDX_KINDS = ("images", "labels")

_CIFAR_SIDE = 32
_CIFAR_ROW = 3 * _CIFAR_SIDE * _CIFAR_SIDE
_CIFAR_DIRS: dict[int, str] = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
_CIFAR_FILES: dict[tuple[int, str], tuple[str, ...]] = {
    (10, "train"): tuple(f"data_batch_{i}" for i in range(1, 6)),
    (10, "test"): ("test_batch",),
    (100, "train"): ("train",),
    (100, "test"): ("test",),
}
_CIFAR_LABEL_KEYS: dict[int, str] = {10: "labels", 100: "fine_labels"}

_GRAY_MODES = frozenset({"1", "L", "LA"})
_CHANNEL_COUNTS = (1, 3, 4)
_UNNAMED = re.compile(r"arr_\d+")

# What parsing a corrupt zip / .npy stream can raise (numpy evaluates the header text).
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)


@dataclass(frozen=True, eq=False)
class ArrayData:
    """An in-memory labelled image set: float32 ``[N, C, H, W]`` in [0, 1], int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        """Check dtypes, shapes, value range and that images and labels have the same N."""
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise InputValidationError("ArrayData: images and labels must be torch.Tensor")
        if images.dtype != torch.float32 or images.dim() != 4:
            raise InputValidationError(
                "ArrayData: expected float32 images of shape [N, C, H, W], "
                f"got {images.dtype} with shape {list(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise InputValidationError(
                "ArrayData: expected int64 labels of shape [N], "
                f"got {labels.dtype} with shape {list(labels.shape)}"
            )
        if images.shape[0] != labels.shape[0]:
            raise InputValidationError(
                f"ArrayData: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
            raise InputValidationError("ArrayData: image values must be finite and in [0, 1]")
        if labels.numel() and int(labels.min()) < 0:
            raise InputValidationError("ArrayData: labels must be non-negative")

    @property
    def num_classes(self) -> int:
        """Number of classes implied by the labels: ``max(label) + 1``, or 0 when empty."""
        return int(self.labels.max()) + 1 if self.labels.numel() else 0


# ----------------------------------------------------------------------------- helpers


def _require_file(path: Path) -> None:
    """Raise DataFileError unless ``path`` is an existing regular file."""
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    if not path.is_file():
        raise DataFileError(f"{path}: expected a file, found a directory or special file")


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, turning a missing or unreadable file into DataFileError."""
    _require_file(path)
    try:
        size = path.stat().st_size
        if size > _limit(None):
            raise DataFileError(
                f"{path}: file has {size} bytes, over the limit of {_limit(None)} bytes "
                "for one data file"
            )
        return path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read file ({exc})") from exc


def _check_split(split: str) -> None:
    """Reject a split name other than "train" or "test"."""
    if split not in ("train", "test"):
        raise InputValidationError(f"split must be 'train' or 'test', got {split!r}")


def _check_image_dims(where: str, shape: tuple[int, ...]) -> None:
    """Refuse images with a zero-sized channel, height or width (N = 0 is allowed here)."""
    if len(shape) > 1 and 0 in shape[1:]:
        raise DataFileError(f"{where}: image shape {list(shape)} has an empty dimension")


def _uint8_to_tensor(images: NDArray[np.uint8]) -> torch.Tensor:
    """Convert uint8 pixels (any shape) to a new float32 tensor in [0, 1]."""
    scaled = images.astype(np.float32)
    scaled /= np.float32(255.0)
    return torch.from_numpy(scaled)


def _labels_to_tensor(path: Path, labels: NDArray[Any], count: int) -> torch.Tensor:
    """Validate 1-D non-negative integer labels of length ``count`` and return int64."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(
            f"{path}: expected 1-D integer labels, got {labels.dtype} "
            f"with shape {list(labels.shape)}"
        )
    if labels.shape[0] != count:
        raise DataFileError(f"{path}: has {count} images but {labels.shape[0]} labels")
    if labels.size and int(labels.min()) < 0:
        raise DataFileError(f"{path}: labels must be non-negative, found {int(labels.min())}")
    if labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        raise DataFileError(f"{path}: label {int(labels.max())} does not fit in int64")
    return torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------- IDX


def _read_upto(stream: io.BufferedIOBase | gzip.GzipFile, n: int) -> bytes:
    """Read at most ``n`` bytes from a stream in 1 MiB chunks (fewer at end of stream)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(min(_CHUNK, n - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _idx_declared_size(head: bytes) -> int | None:
    """Total bytes (header + payload) a complete, well-formed IDX header declares, else None."""
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES or head[3] == 0:
        return None
    ndim = head[3]
    header = 4 + 4 * ndim
    if len(head) < header:
        return None
    count = 1
    for i in range(ndim):
        count *= int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big")
    return header + count * _IDX_DTYPES[head[2]][0].itemsize


def _gunzip_idx(path: Path, fh: io.BufferedIOBase, max_bytes: int) -> bytes:
    """Stream-decompress a gzip IDX file, never holding more than its header declares."""
    try:
        with gzip.GzipFile(fileobj=fh) as gz:
            head = _read_upto(gz, 4)
            if len(head) == 4 and not head[0] and not head[1]:
                head += _read_upto(gz, 4 * head[3])
            declared = _idx_declared_size(head)
            if declared is None:
                return head  # the parser names what is wrong with the header
            if declared > max_bytes:
                raise DataFileError(
                    f"{path}: IDX header declares {declared} bytes, over the limit of "
                    f"{max_bytes} bytes for one data file"
                )
            body = _read_upto(gz, declared - len(head) + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    if len(head) + len(body) > declared:
        raise DataFileError(
            f"{path}: gzip data decompresses to more than the {declared} bytes its IDX "
            "header declares; refused"
        )
    return head + body


def _read_idx_bytes(path: Path, max_bytes: int) -> bytes:
    """Bytes of an IDX file, gunzipped (by magic) as a stream capped by header and limit."""
    _require_file(path)
    try:
        with path.open("rb") as fh:
            if fh.read(2) == _GZIP_MAGIC:
                fh.seek(0)
                return _gunzip_idx(path, fh, max_bytes)
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise DataFileError(
                    f"{path}: file has {size} bytes, over the limit of {max_bytes} bytes "
                    "for one data file"
                )
            fh.seek(0)
            return fh.read()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read file ({exc})") from exc


def _parse_idx(path: Path, max_bytes: int | None = None) -> tuple[int, NDArray[Any]]:
    """Parse an IDX file (raw or gzip) into (magic number, native-endian array)."""
    data = _read_idx_bytes(path, _limit(max_bytes))
    if len(data) < 4:
        raise DataFileError(
            f"{path}: expected a 4-byte IDX magic number, file has only {len(data)} bytes"
        )
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataFileError(
            f"{path}: expected IDX magic 0x0000TTDD (two zero bytes, a type code in "
            f"{{08,09,0B,0C,0D,0E}} and at least one dimension), got 0x{magic:08X}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(
            f"{path}: expected a {header}-byte IDX header for {ndim} dimensions, "
            f"file has only {len(data)} bytes"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype, _ = _IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    expected = count * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        raise DataFileError(
            f"{path}: expected {expected} payload bytes for shape {dims} of "
            f"{_IDX_DTYPES[code][1]}, got {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return magic, array.astype(dtype.newbyteorder("="))


def read_idx(path: PathLike, *, max_bytes: int | None = None) -> NDArray[Any]:
    """Read an IDX file (raw or gzip, detected by magic bytes) into a native-endian array.

    A gzip file is decompressed as a stream and refused (``DataFileError``) as soon as it
    yields more than its header declares; the declared size must be at most ``max_bytes``
    (default :data:`MAX_DATA_BYTES`).
    """
    return _parse_idx(Path(path), max_bytes)[1]


def _idx_images(path: Path, *, transpose: bool = False) -> NDArray[np.uint8]:
    """Read a uint8 IDX image file ``[N, H, W]``; a labels file gets a message saying so."""
    magic, images = _parse_idx(path)
    if magic == _IDX_LABELS_MAGIC:
        raise DataFileError(
            f"{path}: this is an IDX labels file (magic 0x{magic:08X}); expected the images "
            f"file (magic 0x{_IDX_IMAGES_MAGIC:08X}, e.g. train-images-idx3-ubyte.gz)"
        )
    if magic != _IDX_IMAGES_MAGIC:
        raise DataFileError(
            f"{path}: expected IDX magic 0x{_IDX_IMAGES_MAGIC:08X} for uint8 images, "
            f"got 0x{magic:08X}"
        )
    _check_image_dims(str(path), images.shape)
    if transpose:
        images = images.transpose(0, 2, 1)
    return np.ascontiguousarray(images)


def _idx_labels(path: Path, count: int, images_path: Path) -> torch.Tensor:
    """Read an IDX label file whose length must match ``count`` images of ``images_path``."""
    lmagic, labels = _parse_idx(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(
            f"{path}: expected IDX magic 0x{_IDX_LABELS_MAGIC:08X} (1-D integer labels), "
            f"got 0x{lmagic:08X}"
        )
    if labels.shape[0] != count:
        raise DataFileError(
            f"{path}: has {labels.shape[0]} labels but {images_path} has {count} images"
        )
    return _labels_to_tensor(path, labels, count)


def load_idx(images_path: PathLike, labels_path: PathLike, *, transpose: bool = False) -> ArrayData:
    """Load a uint8 IDX image file and its IDX label file (MNIST format) as ArrayData.

    ``transpose`` swaps H and W of every image (EMNIST stores images transposed).
    """
    ipath, lpath = Path(images_path), Path(labels_path)
    images = _idx_images(ipath, transpose=transpose)
    labels = _idx_labels(lpath, images.shape[0], ipath)
    return ArrayData(_uint8_to_tensor(images).unsqueeze(1), labels)


def _first_existing(root: Path, stems: Sequence[str], tried: list[str]) -> Path | None:
    """Return the first of ``stem`` / ``stem.gz`` that exists under root, recording names."""
    for stem in stems:
        for name in (stem, stem + ".gz"):
            tried.append(name)
            candidate = root / name
            if candidate.is_file():
                return candidate
    return None


def _idx_stems(split: str, kind: str, prefix: str) -> list[str]:
    """File stems of an MNIST-style split: ``train-images-idx3-ubyte`` then the dotted form."""
    words = ("train",) if split == "train" else ("t10k", "test")
    dims = "idx3" if kind == "images" else "idx1"
    return [f"{prefix}{w}-{kind}{sep}{dims}-ubyte" for sep in ("-", ".") for w in words]


def find_idx_files(
    root: PathLike, split: Split, *, prefix: str = ""
) -> tuple[Path | None, Path | None]:
    """The (images, labels) IDX files of one split in ``root``; None for each one absent.

    Names tried: ``{prefix}{train|t10k|test}-{images-idx3|labels-idx1}-ubyte`` and the dotted
    ``train-images.idx3-ubyte`` form, each raw or ``.gz``.
    """
    _check_split(split)
    rpath = Path(root)
    found = [_first_existing(rpath, _idx_stems(split, kind, prefix), []) for kind in _IDX_KINDS]
    return found[0], found[1]


def load_mnist_like(
    root: PathLike,
    split: Split = "train",
    *,
    prefix: str = "",
    transpose: bool = False,
) -> ArrayData:
    """Load MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST) from a directory.

    Looks for ``{prefix}{train|t10k|test}-{images-idx3|labels-idx1}-ubyte[.gz]`` (or the
    dotted ``train-images.idx3-ubyte`` form) in ``root``; for EMNIST pass e.g.
    ``prefix="emnist-balanced-", transpose=True``.
    """
    _check_split(split)
    rpath = Path(root)
    if not rpath.is_dir():
        raise DataFileError(f"{rpath}: expected a directory of IDX files, not found")
    found: list[Path] = []
    for kind in _IDX_KINDS:
        tried: list[str] = []
        hit = _first_existing(rpath, _idx_stems(split, kind, prefix), tried)
        if hit is None:
            raise DataFileError(f"{rpath}: no {split} {kind} file found; tried {', '.join(tried)}")
        found.append(hit)
    return load_idx(found[0], found[1], transpose=transpose)


# ----------------------------------------------------------------------------- NPZ / NPY


class _Member(NamedTuple):
    """One array of an .npz archive as its header declares it (nothing read yet)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Read the magic and header of an .npy stream: (shape, dtype)."""
    major, _ = np.lib.format.read_magic(fp)
    if major == 1:
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    return tuple(int(d) for d in shape), dtype


def _check_declared(path: Path, key: str, member: _Member, max_bytes: int) -> None:
    """Refuse object arrays and arrays whose declared size is over ``max_bytes``."""
    if member.dtype.hasobject:
        raise DataFileError(f"{path}: array {key!r} holds Python objects; pickles are not loaded")
    declared = member.dtype.itemsize
    for d in member.shape:
        declared *= d
    if declared > max_bytes:
        raise DataFileError(
            f"{path}: array {key!r} declares shape {list(member.shape)} of {member.dtype} "
            f"({declared} bytes), over the limit of {max_bytes} bytes for one data file"
        )


def _npz_index(path: Path) -> dict[str, _Member]:
    """Shapes and dtypes of every array in an .npz archive, read from the headers only."""
    _require_file(path)
    index: dict[str, _Member] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                with zf.open(info) as fp:
                    shape, dtype = _npy_header(fp)
                index[info.filename.removesuffix(".npy")] = _Member(info.filename, shape, dtype)
    except _PARSE_ERRORS as exc:
        raise DataFileError(f"{path}: expected a NumPy .npz archive of arrays ({exc})") from exc
    return index


def _npz_read(path: Path, index: dict[str, _Member], key: str) -> NDArray[Any]:
    """Read one array of an .npz archive after checking its declared size."""
    member = index[key]
    _check_declared(path, key, member, _limit(None))
    try:
        with zipfile.ZipFile(path) as zf, zf.open(member.name) as fp:
            array: NDArray[Any] = np.lib.format.read_array(fp, allow_pickle=False)
    except _PARSE_ERRORS as exc:
        raise DataFileError(f"{path}: cannot read array {key!r} ({exc})") from exc
    return array


def _npz_key_pairs(split: str) -> list[tuple[str, str]]:
    """Candidate (images, labels) key pairs for an .npz archive, most specific first."""
    generic = [("x", "y"), ("X", "Y"), ("X", "y"), ("images", "labels"), ("data", "labels")]
    return [*_npz_split_pairs(split), *generic]


def _npz_split_pairs(split: str) -> list[tuple[str, str]]:
    """Key pairs that name one split (``x_train``/``y_train`` ...)."""
    return [
        (f"x_{split}", f"y_{split}"),
        (f"X_{split}", f"Y_{split}"),
        (f"X_{split}", f"y_{split}"),
        (f"{split}_images", f"{split}_labels"),
        (f"images_{split}", f"labels_{split}"),
    ]


def _npz_image_keys(split: str) -> list[str]:
    """Candidate images-only keys (a thief's pool needs no labels), most specific first."""
    named = [f"x_{split}", f"X_{split}", f"{split}_images", f"images_{split}"]
    return [*named, "x", "X", "images", "data"]


def _describe(index: dict[str, _Member]) -> str:
    """``key dtype[shape]`` for every array, for error messages."""
    return ", ".join(f"{k} {m.dtype}{list(m.shape)}" for k, m in index.items())


def _select_unnamed(
    path: Path, index: dict[str, _Member], need_labels: bool
) -> tuple[str, str | None]:
    """Keys of an archive written by ``np.savez(path, images[, labels])`` (arr_0, arr_1)."""
    resave = "re-save with names, e.g. np.savez(path, x_train=images, y_train=labels)"
    first = index.get("arr_0")
    if first is not None and len(index) == 1:
        if need_labels:
            raise DataFileError(
                f"{path}: holds one unnamed array ({_describe(index)}) and no labels, which a "
                f"dataset needs; {resave}"
            )
        return "arr_0", None
    second = index.get("arr_1")
    if (
        first is not None
        and second is not None
        and len(index) == 2
        and first.shape
        and second.shape in ((first.shape[0],), (first.shape[0], 1))
        and second.dtype.kind in "iu"
    ):
        return "arr_0", "arr_1"
    raise DataFileError(
        f"{path}: cannot tell images from labels among unnamed arrays ({_describe(index)}); "
        f"expected arr_0 = images and optionally arr_1 = one integer label per image; {resave}"
    )


def _select_npz(
    path: Path,
    index: dict[str, _Member],
    images_key: str | None,
    labels_key: str | None,
    split: str,
    need_labels: bool,
) -> tuple[str, str | None]:
    """Pick (images, labels) keys: explicit, a named pair, arr_0/arr_1, or images alone."""
    keys = list(index)
    for key in (images_key, labels_key):
        if key is not None and key not in index:
            raise DataFileError(f"{path}: missing key {key!r}; keys present: {keys}")
    if images_key is not None and labels_key is not None:
        return images_key, labels_key
    for cand_i, cand_l in _npz_key_pairs(split):
        ikey, lkey = images_key or cand_i, labels_key or cand_l
        if ikey in index and lkey in index:
            return ikey, lkey
    explicit = images_key is not None or labels_key is not None
    if keys and not explicit and all(_UNNAMED.fullmatch(k) for k in keys):
        return _select_unnamed(path, index, need_labels)
    if not need_labels and labels_key is None:
        if images_key is not None:
            return images_key, None
        for cand in _npz_image_keys(split):
            if cand in index:
                return cand, None
        if len(keys) == 1:
            return keys[0], None
    pairs = ", ".join(f"{a}/{b}" for a, b in _npz_key_pairs(split))
    raise DataFileError(
        f"{path}: no images/labels key pair found; keys present: {keys}; tried {pairs} "
        "and unnamed arr_0/arr_1"
    )


def _images_to_nchw(path: Path, key: str, images: NDArray[Any]) -> torch.Tensor:
    """Convert uint8 or [0, 1] float images in NHW / NHWC / NCHW layout to float32 NCHW."""
    where = f"{path}: array {key!r}"
    _check_image_dims(where, images.shape)
    if images.dtype == np.uint8:
        tensor = _uint8_to_tensor(images)
    elif np.issubdtype(images.dtype, np.floating):
        if images.size:
            if not bool(np.isfinite(images).all()):
                raise DataFileError(f"{where}: float images contain NaN or infinity")
            lo, hi = float(images.min()), float(images.max())
            if lo < 0.0 or hi > 1.0:
                raise DataFileError(
                    f"{where}: expected float images in [0, 1], got range "
                    f"[{lo:g}, {hi:g}] (store uint8 0..255 or rescale)"
                )
        tensor = torch.from_numpy(np.array(images, dtype=np.float32))
    else:
        raise DataFileError(
            f"{where}: expected uint8 (0..255) or float ([0, 1]) images, got {images.dtype}"
        )
    if tensor.dim() == 3:
        return tensor.unsqueeze(1)
    if tensor.dim() == 4:
        last, second = tensor.shape[3], tensor.shape[1]
        if last in _CHANNEL_COUNTS and (second not in _CHANNEL_COUNTS or last < second):
            return tensor.permute(0, 3, 1, 2).contiguous()
        return tensor
    raise DataFileError(
        f"{where}: expected images of shape [N, H, W], [N, H, W, C] or [N, C, H, W], "
        f"got {list(images.shape)}"
    )


def load_npz(
    path: PathLike,
    images_key: str | None = None,
    labels_key: str | None = None,
    *,
    split: Split = "train",
) -> ArrayData:
    """Load images and labels from a NumPy .npz archive (no pickles), guessing keys if unset.

    Without explicit keys the first present pair among ``x_{split}/y_{split}``,
    ``X_{split}/Y_{split}``, ``{split}_images/{split}_labels``, ``x/y``, ``X/Y``,
    ``images/labels`` and ``data/labels`` is used; an archive of unnamed arrays (as
    ``np.savez(path, images, labels)`` writes) is read as ``arr_0`` = images and ``arr_1`` =
    labels when ``arr_1`` holds one integer per image. Images may be uint8 (0..255) or float
    in [0, 1], laid out ``[N, H, W]``, ``[N, H, W, C]`` (C in 1, 3, 4) or ``[N, C, H, W]``;
    when both axis 1 and axis 3 could be channels, the smaller one is taken as C
    (``[N, C, H, W]`` on a tie). Arrays declaring more than :data:`MAX_DATA_BYTES` are refused.
    """
    _check_split(split)
    npath = Path(path)
    index = _npz_index(npath)
    ikey, lkey = _select_npz(npath, index, images_key, labels_key, split, need_labels=True)
    assert lkey is not None  # need_labels guarantees a labels key
    images = _images_to_nchw(npath, ikey, _npz_read(npath, index, ikey))
    labels = _labels_to_tensor(npath, _npz_read(npath, index, lkey), images.shape[0])
    return ArrayData(images, labels)


def npz_has_split(path: PathLike, split: Split) -> bool:
    """Whether an .npz archive names arrays of ``split`` (``x_test``/``y_test`` ...)."""
    index = _npz_index(Path(path))
    return any(i in index and lbl in index for i, lbl in _npz_split_pairs(split))


def _npz_images(path: Path, split: Split = "train") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images of an .npz archive, with labels when the archive has them."""
    index = _npz_index(path)
    ikey, lkey = _select_npz(path, index, None, None, split, need_labels=False)
    images = _images_to_nchw(path, ikey, _npz_read(path, index, ikey))
    if lkey is None:
        return images, None
    return images, _labels_to_tensor(path, _npz_read(path, index, lkey), images.shape[0])


def _npy_images(path: Path) -> torch.Tensor:
    """Images stored as one .npy array (no pickles), its declared size checked first."""
    _require_file(path)
    try:
        with path.open("rb") as fp:
            shape, dtype = _npy_header(fp)
            _check_declared(path, "(npy)", _Member(path.name, shape, dtype), _limit(None))
            fp.seek(0)
            array: NDArray[Any] = np.lib.format.read_array(fp, allow_pickle=False)
    except _PARSE_ERRORS as exc:
        raise DataFileError(f"{path}: expected a NumPy .npy array ({exc})") from exc
    return _images_to_nchw(path, "(npy)", array)


# ----------------------------------------------------------------------------- CIFAR


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays, dtypes and scalars (no arbitrary code)."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        (module, name)
        for core in ("numpy.core", "numpy._core")
        for module, name in (
            (f"{core}.multiarray", "_reconstruct"),
            (f"{core}.multiarray", "scalar"),
            (f"{core}.numeric", "_frombuffer"),
        )
    ) | frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol < 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only allow-listed NumPy globals."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _find_cifar_dir(root: Path, variant: int) -> Path:
    """Return the extracted CIFAR directory given it or its parent."""
    dirname = _CIFAR_DIRS[variant]
    first = _CIFAR_FILES[(variant, "test")][0]
    if root.is_dir() and (root.name == dirname or (root / first).is_file()):
        return root
    if (root / dirname).is_dir():
        return root / dirname
    if not root.exists():
        raise DataFileError(f"{root}: directory not found")
    raise DataFileError(f"{root}: expected CIFAR-{variant} directory {dirname!r} or its parent")


def _dict_get(batch: dict[Any, Any], key: str) -> Any:
    """Look a key up as bytes (Python 2 pickles) or str (Python 3 pickles)."""
    if key.encode() in batch:
        return batch[key.encode()]
    if key in batch:
        return batch[key]
    raise KeyError(key)


def _load_cifar_batch(path: Path, variant: int) -> tuple[NDArray[np.uint8], NDArray[Any]]:
    """Read one CIFAR pickle and return its uint8 [N, 3072] data and labels array."""
    data = _read_bytes(path)
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataFileError(f"{path}: cannot unpickle CIFAR batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataFileError(f"{path}: expected a dict, got {type(batch).__name__}")
    label_key = _CIFAR_LABEL_KEYS[variant]
    try:
        pixels = _dict_get(batch, "data")
        labels = _dict_get(batch, label_key)
    except KeyError as exc:
        present = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
        raise DataFileError(
            f"{path}: missing key {exc.args[0]!r}; keys present: {present}"
        ) from exc
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 2
        or pixels.shape[1] != _CIFAR_ROW
    ):
        desc = (
            f"{pixels.dtype} array of shape {list(pixels.shape)}"
            if isinstance(pixels, np.ndarray)
            else type(pixels).__name__
        )
        raise DataFileError(f"{path}: expected 'data' as uint8 [N, {_CIFAR_ROW}], got {desc}")
    try:
        label_array = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DataFileError(f"{path}: {label_key!r} is not a list of integers") from exc
    if label_array.ndim != 1 or not np.issubdtype(label_array.dtype, np.integer):
        raise DataFileError(
            f"{path}: expected {label_key!r} as {pixels.shape[0]} integers, "
            f"got {label_array.dtype} with shape {list(label_array.shape)}"
        )
    if label_array.shape[0] != pixels.shape[0]:
        raise DataFileError(
            f"{path}: has {pixels.shape[0]} images but {label_array.shape[0]} labels"
        )
    if label_array.size and (int(label_array.min()) < 0 or int(label_array.max()) >= variant):
        raise DataFileError(
            f"{path}: labels must be in [0, {variant - 1}], found "
            f"[{int(label_array.min())}, {int(label_array.max())}]"
        )
    return pixels, label_array


def load_cifar(root: PathLike, split: Split = "train", variant: int = 10) -> ArrayData:
    """Load CIFAR-10 or CIFAR-100 (python pickle version) from the extracted dir or its parent.

    CIFAR-100 uses the fine (100-class) labels.
    """
    _check_split(split)
    if variant not in _CIFAR_DIRS:
        raise InputValidationError(f"CIFAR variant must be 10 or 100, got {variant!r}")
    directory = _find_cifar_dir(Path(root), variant)
    pixel_parts: list[NDArray[np.uint8]] = []
    label_parts: list[NDArray[Any]] = []
    for name in _CIFAR_FILES[(variant, split)]:
        pixels, labels = _load_cifar_batch(directory / name, variant)
        pixel_parts.append(pixels)
        label_parts.append(labels)
    pixels_all = np.concatenate(pixel_parts, axis=0)
    labels_all = np.concatenate(label_parts, axis=0).astype(np.int64)
    images = _uint8_to_tensor(pixels_all).reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
    return ArrayData(images, torch.from_numpy(labels_all))


# ----------------------------------------------------------------------------- image folder


def _list_images(folder: Path) -> list[Path]:
    """Image files (by extension, case-insensitive) directly inside folder, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _open_image(path: Path, mode: str | None) -> Image.Image:
    """Decode an image fully, convert it to ``mode`` (if given) and return it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode) if mode is not None else im.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataFileError(f"{path}: cannot read image ({exc})") from exc


def _decode_images(
    paths: list[Path], image_size: tuple[int, int] | None, channels: int | None
) -> torch.Tensor:
    """Decode image files into float32 ``[N, C, H, W]``: same size, or resized to image_size."""
    mode: str | None = {1: "L", 3: "RGB", None: None}[channels]
    first = _open_image(paths[0], mode)
    if mode is None:
        mode = "L" if first.mode in _GRAY_MODES else "RGB"
        first = first.convert(mode)
    height, width = image_size if image_size is not None else (first.height, first.width)
    n_channels = 1 if mode == "L" else 3
    pixels = np.empty((len(paths), height, width, n_channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        im = first if i == 0 else _open_image(path, mode)
        if image_size is not None:
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BILINEAR)
        elif im.size != (width, height):
            raise DataFileError(
                f"{path}: image is {im.height}x{im.width} (HxW) but {paths[0].name} is "
                f"{height}x{width}; pass image_size to resize"
            )
        pixels[i] = np.asarray(im, dtype=np.uint8).reshape(height, width, n_channels)
    return _uint8_to_tensor(pixels).permute(0, 3, 1, 2).contiguous()


def load_image_folder(
    root: PathLike,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> tuple[ArrayData, list[str]]:
    """Load an ImageFolder tree ``root/<class>/<image>``; returns the data and class names.

    Classes are the sub-directories sorted by name (label i = i-th name). ``channels`` 1 or
    3 forces grayscale or RGB; None infers it from the first image (grayscale stays 1
    channel, anything else becomes RGB). ``image_size=(H, W)`` resizes bilinearly; when
    None every image must already have the same size.
    """
    rpath = Path(root)
    if channels not in (None, 1, 3):
        raise InputValidationError(f"channels must be None, 1 or 3, got {channels!r}")
    if image_size is not None and (
        len(image_size) != 2 or image_size[0] <= 0 or image_size[1] <= 0
    ):
        raise InputValidationError(f"image_size must be (H, W) > 0, got {image_size!r}")
    if not rpath.is_dir():
        raise DataFileError(f"{rpath}: expected an image-folder directory, not found")
    classes = sorted(p.name for p in rpath.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataFileError(f"{rpath}: expected one sub-directory per class, found none")
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        found = _list_images(rpath / name)
        if not found:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DataFileError(f"{rpath / name}: class folder has no image files ({exts})")
        files.extend((p, index) for p in found)

    images = _decode_images([p for p, _ in files], image_size, channels)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ArrayData(images, labels), classes


# ----------------------------------------------------------------------------- dispatcher


def load_file_dataset(path: PathLike, **kwargs: Any) -> ArrayData:
    """Load a dataset from ``path``, choosing the loader from what the path is.

    * a ``.npz`` file -> :func:`load_npz`;
    * a directory with ``*images-idx3-ubyte[.gz]`` files -> :func:`load_mnist_like`;
    * a CIFAR directory (``cifar-10-batches-py`` / ``cifar-100-python``, or the parent of
      one), or any directory when ``variant`` is passed -> :func:`load_cifar` (variant
      inferred when not given, CIFAR-10 first);
    * any other directory -> :func:`load_image_folder` (class names are dropped).

    Keyword arguments go unchanged to the chosen loader.
    """
    ppath = Path(path)
    if ppath.is_file():
        if ppath.suffix.lower() == ".npz":
            return load_npz(ppath, **kwargs)
        raise DataFileError(f"{ppath}: unsupported file type; expected a .npz archive")
    if not ppath.is_dir():
        raise DataFileError(f"{ppath}: no such file or directory")
    if any(ppath.glob("*images-idx3-ubyte")) or any(ppath.glob("*images-idx3-ubyte.gz")):
        return load_mnist_like(ppath, **kwargs)
    if "variant" in kwargs:
        return load_cifar(ppath, **kwargs)
    for variant in _CIFAR_DIRS:
        try:
            _find_cifar_dir(ppath, variant)
        except DataFileError:
            continue
        return load_cifar(ppath, variant=variant, **kwargs)
    return load_image_folder(ppath, **kwargs)[0]


# ----------------------------------------------------------------------------- pools and splits

_IDX_IMAGES_NAME = re.compile(r"(.*)images([-.])idx3-ubyte(\.gz)?")


def _idx_labels_beside(images_path: Path) -> Path | None:
    """The labels file named like an IDX images file (``...labels-idx1-ubyte[.gz]``), if any."""
    m = _IDX_IMAGES_NAME.fullmatch(images_path.name)
    if m is None:
        return None
    stem = f"{m[1]}labels{m[2]}idx1-ubyte"
    candidates = (images_path.with_name(stem), images_path.with_name(stem + ".gz"))
    return next((p for p in candidates if p.is_file()), None)


def _idx_images_in(root: Path) -> Path | None:
    """The IDX images file of a directory: a train one first, else any (t10k, test, EMNIST)."""
    found = sorted(p for p in root.iterdir() if p.is_file() and _IDX_IMAGES_NAME.fullmatch(p.name))
    train = [p for p in found if "train" in p.name]
    return next(iter(train or found), None)


def _idx_file_images(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images of one IDX file, with labels when a matching labels file sits beside it."""
    images = _idx_images(path)
    lpath = _idx_labels_beside(path)
    labels = None if lpath is None else _idx_labels(lpath, images.shape[0], path)
    return _uint8_to_tensor(images).unsqueeze(1), labels


def _require_idx_like(path: Path) -> None:
    """Refuse a file that starts like neither IDX (two zero bytes) nor gzip, naming the types."""
    try:
        with path.open("rb") as fh:
            start = fh.read(2)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read file ({exc})") from exc
    if start not in (b"\x00\x00", _GZIP_MAGIC):
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataFileError(
            f"{path}: unsupported file; expected an IDX images file (raw or .gz), .npz, .npy "
            f"or an image ({exts})"
        )


def _cifar_variant(root: Path) -> int | None:
    """10 or 100 when ``root`` is (or holds) an extracted CIFAR directory, else None."""
    for variant in _CIFAR_DIRS:
        try:
            _find_cifar_dir(root, variant)
        except DataFileError:
            continue
        return variant
    return None


def _class_dirs(root: Path) -> list[Path]:
    """Visible sub-directories of root, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_file_images(
    path: PathLike, *, image_size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load a thief's images from a file or directory; labels only where the files have them.

    Accepts an IDX images file (raw or gzip, any name), an ``.npz`` (a labelled pair, an
    images-only key such as ``x_train``/``images``, or unnamed ``arr_0``), an ``.npy`` array,
    an IDX directory (the train split, else the test/t10k split; the labels file is optional),
    a CIFAR directory (train split), an image folder with class sub-directories, or a flat
    folder of images. ``image_size`` resizes folder images (else they must share a size).
    Returns float32 ``[N, C, H, W]`` images in [0, 1] and int64 labels or None.
    """
    ppath = Path(path)
    if ppath.is_file():
        suffix = ppath.suffix.lower()
        if suffix == ".npz":
            return _npz_images(ppath)
        if suffix == ".npy":
            return _npy_images(ppath), None
        if suffix in IMAGE_EXTENSIONS:
            return _decode_images([ppath], image_size, None), None
        _require_idx_like(ppath)
        return _idx_file_images(ppath)
    if not ppath.is_dir():
        raise DataFileError(f"{ppath}: no such file or directory")
    idx = _idx_images_in(ppath)
    if idx is not None:
        return _idx_file_images(idx)
    variant = _cifar_variant(ppath)
    if variant is not None:
        data = load_cifar(ppath, "train", variant)
        return data.images, data.labels
    if _class_dirs(ppath):
        data = load_image_folder(ppath, image_size)[0]
        return data.images, data.labels
    flat = _list_images(ppath)
    if flat:
        return _decode_images(flat, image_size, None), None
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    raise DataFileError(
        f"{ppath}: no images found; expected IDX files (train-images-idx3-ubyte[.gz]), a CIFAR "
        f"directory, class sub-directories or image files ({exts})"
    )


Splits = tuple[ArrayData | None, ArrayData | None]


def load_cifar_splits(root: PathLike, variant: int) -> Splits:
    """CIFAR (train, test) from the extracted directory or its parent; None for a split absent."""
    directory = _find_cifar_dir(Path(root), variant)
    train, test = [
        load_cifar(directory, split, variant)
        if (directory / _CIFAR_FILES[(variant, split)][0]).is_file()
        else None
        for split in ("train", "test")
    ]
    return train, test


def _idx_splits(root: Path) -> Splits:
    """Labelled IDX (train, test) of a directory; a split whose labels are missing is an error."""
    splits: list[ArrayData | None] = []
    for split in ("train", "test"):
        ipath, lpath = find_idx_files(root, split)
        if ipath is None:
            splits.append(None)
            continue
        if lpath is None:
            stems = ", ".join(_idx_stems(split, "labels", ""))
            raise DataFileError(
                f"{root}: has {ipath.name} but no labels file for it ({stems}, raw or .gz); "
                "a dataset needs labels (a file: pool does not)"
            )
        splits.append(load_idx(ipath, lpath))
    return splits[0], splits[1]


def load_file_splits(path: PathLike) -> Splits:
    """Labelled (train, test) splits found at ``path``; None for a split that is absent.

    * ``.npz``: ``x_train``/``y_train`` and ``x_test``/``y_test`` (or the other names
      :func:`load_npz` knows); one unsplit pair (``x``/``y``, unnamed ``arr_0``/``arr_1``)
      is returned as train;
    * an IDX images file with its labels file beside it: returned as train;
    * an IDX directory: ``train-*`` and ``t10k-*``/``test-*`` files (raw or gzip);
    * a CIFAR directory: its train and test batches;
    * an image folder: ``train/<class>/`` and ``test/<class>/`` (or ``val/``) when present,
      else ``<class>/`` returned as train.

    At least one split is returned; every returned split is labelled.
    """
    ppath = Path(path)
    if ppath.is_file():
        if ppath.suffix.lower() == ".npz":
            has_train, has_test = npz_has_split(ppath, "train"), npz_has_split(ppath, "test")
            test = load_npz(ppath, split="test") if has_test else None
            if has_test and not has_train:
                return None, test
            return load_npz(ppath, split="train"), test
        if ppath.suffix.lower() in IMAGE_EXTENSIONS | {".npy"}:
            raise DataFileError(
                f"{ppath}: holds images without labels, which a dataset needs (use it as a "
                "file: pool, or save images and labels together in an .npz)"
            )
        _require_idx_like(ppath)
        images = _idx_images(ppath)
        lpath = _idx_labels_beside(ppath)
        if lpath is None:
            raise DataFileError(
                f"{ppath}: no labels file beside it (e.g. train-labels-idx1-ubyte.gz for "
                "train-images-idx3-ubyte.gz); a dataset needs labels (a file: pool does not)"
            )
        labels = _idx_labels(lpath, images.shape[0], ppath)
        return ArrayData(_uint8_to_tensor(images).unsqueeze(1), labels), None
    if not ppath.is_dir():
        raise DataFileError(f"{ppath}: no such file or directory")
    train, test = _idx_splits(ppath)
    if train is not None or test is not None:
        return train, test
    variant = _cifar_variant(ppath)
    if variant is not None:
        return load_cifar_splits(ppath, variant)
    held_out = next((ppath / n for n in ("test", "val") if (ppath / n).is_dir()), None)
    if (ppath / "train").is_dir() and held_out is not None and _class_dirs(ppath / "train"):
        train, classes = load_image_folder(ppath / "train")
        test, test_classes = load_image_folder(held_out)
        if test_classes != classes:
            raise DataFileError(
                f"{held_out}: class folders {test_classes} differ from train's {classes}"
            )
        return train, test
    return load_image_folder(ppath)[0], None
