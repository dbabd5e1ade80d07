"""The key set from the records the ``label_watermark`` defense wrote (``record_dir``).

Each record file holds a batch of relabelled queries: the images, the victim's class of each and
the secret class map. All files of one directory must come from one map (one secret); the key
set groups the images by victim class (:func:`stealproof.ownership.keys.class_map_key_set`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from stealproof.defenses.label_watermark import RECORD_GLOB
from stealproof.errors import DataFileError
from stealproof.ownership.keys import KeySet, class_map_key_set


def _read(path: Path) -> tuple[Tensor, Tensor, Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataFileError(f"{path}: not a label_watermark record ({e})") from None
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: not a label_watermark record (images, classes, label_map)")
    parts = data.get("images"), data.get("classes"), data.get("label_map")
    if not all(isinstance(t, Tensor) for t in parts):
        raise DataFileError(f"{path}: not a label_watermark record (images, classes, label_map)")
    images, classes, label_map = parts
    assert images is not None and classes is not None and label_map is not None
    k = int(label_map.shape[0])
    if (
        images.ndim != 4
        or classes.shape != (images.shape[0],)
        or label_map.ndim != 1
        or (classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= k))
    ):
        raise DataFileError(f"{path}: a damaged label_watermark record (shapes or classes)")
    return images, classes.long(), label_map.long()


def key_set_from_records(directory: str | Path, max_keys: int | None = None) -> KeySet:
    """Every relabelled query in ``directory`` as one key set (the first ``max_keys`` files' rows,
    in file-name order, when given)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataFileError(f"{d}: not a directory of label_watermark records")
    files = sorted(d.glob(RECORD_GLOB))
    if not files:
        raise DataFileError(
            f"{d}: holds no label_watermark records ({RECORD_GLOB}); serve with "
            "--defense label_watermark --param record_dir=DIR to collect them"
        )
    images: list[Tensor] = []
    classes: list[Tensor] = []
    label_map: Tensor | None = None
    n = read = 0
    for f in files:
        x, c, m = _read(f)
        if label_map is None:
            label_map = m
        elif m.shape != label_map.shape or not bool((m == label_map).all()):
            raise DataFileError(
                f"{f}: its class map differs from {files[0].name}'s: the directory mixes the "
                "records of two secrets (seeds); keep one directory per secret"
            )
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DataFileError(f"{f}: images of shape {tuple(x.shape[1:])}, others differ")
        images.append(x)
        classes.append(c)
        n += x.shape[0]
        read += 1
        if max_keys is not None and n >= max_keys:
            break
    assert label_map is not None
    x, c = torch.cat(images), torch.cat(classes)
    if max_keys is not None:
        x, c = x[:max_keys], c[:max_keys]
    return class_map_key_set(x, c, label_map, metadata={"source": "records", "files": read})
