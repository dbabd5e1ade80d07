"""Secret grouped key sets for ownership verification, and their tamper-evident file format.

A key set is ``n`` out-of-distribution images in ``G`` groups. Every key of a group carries the
group's one secret label, drawn uniformly from the classes other than ``avoid[g]`` (the
victim's majority answer on the group, or -1 when no victim was given). A watermark taught
through a model-stealing API reaches the thief's clone as a per-*group* behaviour ("images like
this prototype → this label"), which is why the test (:mod:`stats`) counts groups, not keys.

The file stores the images, labels, groups and avoided classes with JSON metadata and a
SHA-256 checksum over their canonical bytes: loading recomputes it and refuses a file that was
edited or corrupted. Key sets never leave the owner's disk: their ``repr`` and log lines show
only the size and the fingerprint, never images or labels.

File format version 2 (grouped keys). Version-1 files (one label per key, no groups) are
refused with a message naming the version: their avoided classes were per key and are not
stored, so they cannot be turned into a valid grouped test; make a new key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from stealproof._io import write_atomic
from stealproof._validate import check_images, check_labels
from stealproof.errors import ConfigError, DataFileError, InputValidationError
from stealproof.fingerprint import canonical_json
from stealproof.ownership.stats import min_p_value

__all__ = [
    "BLOB_NOISE",
    "DEFAULT_GROUPS",
    "FORMAT",
    "GENERATORS",
    "VERSION",
    "KeyFileError",
    "KeySet",
    "generate_key_set",
    "key_set_from_tensors",
    "load_key_set",
    "save_key_set",
]

log = logging.getLogger(__name__)

FORMAT = "stealproof-ownership-key"
#: 2: grouped keys (``groups``, ``avoid``). 1 (one label per key) is refused.
VERSION = 2
#: Kinds of generated key images.
GENERATORS = ("blobs", "shapes", "noise", "mixed")
#: Groups of a generated key unless chosen.
DEFAULT_GROUPS = 6
#: Standard deviation of the per-key Gaussian noise around a blob group's prototype.
BLOB_NOISE = 0.15
#: Hex digits of the checksum shown as the key's fingerprint.
FINGERPRINT_DIGITS = 16

KeyKind = Literal["generated", "given"]


class KeyFileError(DataFileError):
    """A key file is missing, not a key file, or fails its checksum; the message names it."""


def _header(
    num_classes: int,
    seed: int | None,
    kind: str,
    metadata: dict[str, Any],
    tensors: dict[str, Tensor],
) -> dict[str, Any]:
    """Everything the checksum covers besides the raw tensor bytes."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "num_classes": num_classes,
        "seed": seed,
        "kind": kind,
        "metadata": metadata,
        **{name: {"dtype": str(t.dtype), "shape": list(t.shape)} for name, t in tensors.items()},
    }


def _checksum(header: dict[str, Any], tensors: list[Tensor]) -> str:
    """SHA-256 over the canonical header JSON and the tensors' little-endian bytes."""
    h = hashlib.sha256()
    h.update(canonical_json(header).encode("utf-8"))
    for t in tensors:
        arr = t.detach().cpu().contiguous().numpy()
        h.update(b"\x00")
        h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def _index_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputValidationError(f"{name}: expected a tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or x.ndim != 1:
        raise InputValidationError(
            f"{name}: expected a 1-D integer tensor, got {x.dtype} {list(x.shape)}"
        )
    return x.detach().to("cpu", torch.int64).contiguous()


@dataclass(frozen=True, repr=False, eq=False)
class KeySet:
    """``n`` key images ``[n, C, H, W]`` in [0, 1] (float32) in ``G`` groups, with labels.

    ``labels`` int64 ``[n]``; ``groups`` int64 ``[n]`` (group id ``0..G-1`` per key, every group
    non-empty); ``avoid`` int64 ``[G]`` (the class each group's label was drawn away from, -1 if
    none). Validated: all keys of a group share one label, and it differs from the group's
    ``avoid``. ``kind`` is ``"generated"`` (from ``seed``) or ``"given"`` (the owner's inputs);
    ``metadata`` says how it was made (generator, the victim's fingerprint).
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    groups: Tensor
    avoid: Tensor
    seed: int | None = None
    kind: KeyKind = "generated"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise InputValidationError(f"num_classes: expected an integer ≥ 2, got {k!r}")
        images = check_images(self.images, "key images")
        if images.ndim != 4:
            raise InputValidationError(
                f"key images: expected [n, C, H, W], got shape {list(images.shape)}"
            )
        n = int(images.shape[0])
        labels = check_labels(self.labels, "key labels", k, batch=n).to("cpu", torch.int64)
        groups = _index_tensor(self.groups, "key groups")
        avoid = _index_tensor(self.avoid, "key avoid")
        if groups.shape[0] != n:
            raise InputValidationError(f"key groups: expected {n} group ids, got {groups.shape[0]}")
        num_groups = int(avoid.shape[0])
        if num_groups < 1 or int(groups.min()) < 0 or int(groups.max()) >= num_groups:
            raise InputValidationError(
                f"key groups: ids must lie in [0, {num_groups - 1}] (one avoid entry per group)"
            )
        sizes = torch.bincount(groups, minlength=num_groups)
        if bool((sizes == 0).any()):
            empty = int((sizes == 0).nonzero()[0, 0])
            raise InputValidationError(f"key groups: group {empty} has no keys")
        if int(avoid.min()) < -1 or int(avoid.max()) >= k:
            raise InputValidationError(f"key avoid: classes must lie in [-1, {k - 1}]")
        first = torch.full((num_groups,), n, dtype=torch.int64)
        first.scatter_reduce_(0, groups, torch.arange(n), reduce="amin")
        group_labels = labels[first]
        mixed = labels != group_labels[groups]
        if bool(mixed.any()):
            g = int(groups[mixed][0])
            raise InputValidationError(f"key labels: group {g} has more than one label")
        if bool((group_labels == avoid).any()):
            g = int((group_labels == avoid).nonzero()[0, 0])
            raise InputValidationError(f"key labels: group {g}'s label is the class it avoids")
        if self.kind not in ("generated", "given"):
            raise InputValidationError(f"kind: expected 'generated' or 'given', got {self.kind!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise InputValidationError(f"seed: expected an integer or None, got {self.seed!r}")
        try:
            meta = json.loads(canonical_json(self.metadata))
        except (TypeError, ValueError) as e:
            raise InputValidationError(f"metadata: not JSON-able ({e})") from None
        object.__setattr__(self, "images", images.detach().to("cpu", torch.float32).contiguous())
        object.__setattr__(self, "labels", labels.contiguous())
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "avoid", avoid.contiguous())
        object.__setattr__(self, "metadata", meta)
        object.__setattr__(self, "_group_labels", group_labels.contiguous())

    @property
    def n(self) -> int:
        """Number of key inputs."""
        return int(self.images.shape[0])

    @property
    def num_groups(self) -> int:
        """Number of groups ``G``."""
        return int(self.avoid.shape[0])

    @property
    def group_labels(self) -> Tensor:
        """The secret label of each group, int64 ``[G]``."""
        labels: Tensor = object.__getattribute__(self, "_group_labels")
        return labels.clone()

    @property
    def group_sizes(self) -> Tensor:
        """Keys per group, int64 ``[G]``."""
        return torch.bincount(self.groups, minlength=self.num_groups)

    @property
    def min_p(self) -> float:
        """The smallest p-value this key can give (``Π_g 1/|allowed_g|``), see :mod:`stats`."""
        return min_p_value(self.avoid, self.num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the key images."""
        c, h, w = (int(d) for d in self.images.shape[1:])
        return (c, h, w)

    def _named(self) -> dict[str, Tensor]:
        return {
            "images": self.images,
            "labels": self.labels,
            "groups": self.groups,
            "avoid": self.avoid,
        }

    @property
    def checksum(self) -> str:
        """SHA-256 (hex) over the canonical bytes of images, labels, groups, avoid, metadata."""
        named = self._named()
        header = _header(self.num_classes, self.seed, self.kind, self.metadata, named)
        return _checksum(header, list(named.values()))

    @property
    def fingerprint(self) -> str:
        """Short hex of the checksum: names the key in outputs and binds calibrations to it."""
        return self.checksum[:FINGERPRINT_DIGITS]

    def __repr__(self) -> str:  # never the images or labels: keys stay secret
        c, h, w = self.input_shape
        return (
            f"KeySet(n={self.n}, groups={self.num_groups}, shape=({c}, {h}, {w}), "
            f"num_classes={self.num_classes}, kind={self.kind!r}, "
            f"fingerprint={self.fingerprint!r})"
        )


def _check_shape(input_shape: object) -> tuple[int, int, int]:
    dims = list(input_shape) if isinstance(input_shape, tuple | list) else []
    if len(dims) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims
    ):
        raise InputValidationError(
            f"input_shape: expected (C, H, W) of three positive integers, got {input_shape!r}"
        )
    return (int(dims[0]), int(dims[1]), int(dims[2]))


@torch.no_grad()
def module_outputs(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """The model's outputs on ``images``: eval mode, batched, on the model's device and dtype."""
    was_training = model.training
    model.eval()
    try:
        params = list(model.parameters())
        dev = params[0].device if params else torch.device("cpu")
        dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
        out = [
            model(images[i : i + batch_size].to(dev, dtype)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out)


def _top1(model: nn.Module, images: Tensor, num_classes: int, batch_size: int = 256) -> Tensor:
    """The model's top-1 labels on ``images`` (eval mode, batched), checking its class count."""
    logits = module_outputs(model, images, batch_size)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise InputValidationError(
            f"victim: answers shape {list(logits.shape)}, expected [{images.shape[0]}, "
            f"{num_classes}] (the key has {num_classes} classes)"
        )
    return logits.argmax(dim=1)


def _blobs(groups: Tensor, num_groups: int, c: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """Per group a smooth secret prototype in [0, 1]; each key = prototype + N(0, 0.15²)."""
    k = max(1, h // 8)
    proto = torch.rand(num_groups, c, h, w, generator=g)
    mode = "reflect" if k < h and k < w else "replicate"  # reflect needs pad < size
    smooth = nn.functional.avg_pool2d(
        nn.functional.pad(proto, (k, k, k, k), mode=mode), kernel_size=2 * k + 1, stride=1
    )
    lo = smooth.amin(dim=(1, 2, 3), keepdim=True)
    hi = smooth.amax(dim=(1, 2, 3), keepdim=True)
    smooth = (smooth - lo) / (hi - lo).clamp_min(1e-6)
    noise = torch.randn(groups.shape[0], c, h, w, generator=g)
    return (smooth[groups] + BLOB_NOISE * noise).clamp(0.0, 1.0)


def generate_key_set(
    n: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    *,
    groups: int = DEFAULT_GROUPS,
    kind: str = "blobs",
    victim: nn.Module | None = None,
) -> KeySet:
    """``n`` out-of-distribution keys in ``groups`` groups with secret labels, all from ``seed``.

    Groups are near-equal (sizes differ by at most 1) and the keys are ordered by group.
    ``kind``: ``"blobs"`` (default: per group a secret smooth prototype, each key the prototype
    plus Gaussian noise, so a group is one learnable "concept"), ``"shapes"``, ``"noise"`` or
    ``"mixed"`` (each key drawn from that generator). Each group gets one label: with a
    ``victim`` (any ``nn.Module``, e.g. a distilled surrogate of it), ``avoid[g]`` is the
    victim's majority top-1 on the group and the label is uniform over the other ``K − 1``
    classes, so the watermark is a behaviour the clean model does not have; without one,
    ``avoid = -1`` and the label is uniform over all ``K``. ``groups = n`` gives one key per
    group. More groups lower the floor of the p-value (:attr:`KeySet.min_p`).
    """
    from stealproof.data.synthetic import make_noise, make_shapes

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputValidationError(f"n: expected a positive number of key inputs, got {n!r}")
    c, h, w = _check_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InputValidationError(f"num_classes: expected an integer ≥ 2, got {num_classes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InputValidationError(f"seed: expected an integer in [0, 2^63), got {seed!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= n:
        raise InputValidationError(f"groups: expected an integer in [1, n = {n}], got {groups!r}")
    if kind not in GENERATORS:
        raise ConfigError(f"kind: expected one of {', '.join(GENERATORS)}, got {kind!r}")
    sizes = torch.full((groups,), n // groups, dtype=torch.int64)
    sizes[: n % groups] += 1
    group_ids = torch.repeat_interleave(torch.arange(groups), sizes)
    g = torch.Generator().manual_seed(seed)
    if kind == "blobs":
        images = _blobs(group_ids, groups, c, h, w, g)
    elif kind == "shapes":
        images, _ = make_shapes(n, c, (h, w), g)
    elif kind == "noise":
        images, _ = make_noise(n, c, (h, w), g)
    else:
        pick = torch.rand(n, generator=g) < 0.5
        shapes, _ = make_shapes(n, c, (h, w), g)
        noise, _ = make_noise(n, c, (h, w), g)
        images = torch.where(pick[:, None, None, None], shapes, noise)
    metadata: dict[str, Any] = {"generator": kind, "avoids_victim_top1": victim is not None}
    if victim is None:
        group_labels = torch.randint(0, num_classes, (groups,), generator=g)
        avoid = torch.full((groups,), -1, dtype=torch.int64)
        metadata["victim"] = None
    else:
        from stealproof import fingerprint

        want = getattr(victim, "input_shape", None)
        if want is not None and tuple(want) != (c, h, w):
            raise InputValidationError(
                f"victim: expects {tuple(want)} images, the key has {(c, h, w)}"
            )
        top = _top1(victim, images, num_classes)
        votes = torch.bincount(group_ids * num_classes + top, minlength=groups * num_classes)
        avoid = votes.view(groups, num_classes).argmax(dim=1)  # ties: the smallest class
        r = torch.randint(0, num_classes - 1, (groups,), generator=g)
        group_labels = r + (r >= avoid).long()  # uniform over the classes other than avoid
        metadata["victim"] = fingerprint.model_fingerprint(victim)
    return KeySet(
        images,
        group_labels[group_ids],
        num_classes,
        group_ids,
        avoid,
        seed,
        "generated",
        metadata,
    )


def key_set_from_tensors(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    groups: Tensor | None = None,
    avoid: Tensor | None = None,
    metadata: dict[str, Any] | None = None,
) -> KeySet:
    """A ``"given"`` key set from the owner's own images and labels (validated, copied).

    ``groups`` defaults to one group per key, ``avoid`` to -1 (no avoided class) per group.
    The test is valid only if each group's label was drawn uniformly from its allowed
    classes, independently of the suspect: hand-picked labels void its guarantee.
    """
    n = int(images.shape[0]) if isinstance(images, Tensor) and images.ndim > 0 else 0
    grp = torch.arange(n) if groups is None else groups.clone()
    if avoid is None:
        size = int(grp.max()) + 1 if isinstance(grp, Tensor) and grp.numel() else 0
        avoid = torch.full((size,), -1, dtype=torch.int64)
    return KeySet(
        images.clone(),
        labels.clone(),
        num_classes,
        grp,
        avoid.clone(),
        None,
        "given",
        dict(metadata or {}),
    )


def class_map_key_set(
    images: Tensor,
    classes: Tensor,
    label_map: Tensor,
    metadata: dict[str, Any] | None = None,
) -> KeySet:
    """Keys relabelled by a secret class map: image ``i`` (victim class ``c_i``) → ``m[c_i]``.

    One group per victim class present, avoiding that class: the test randomises over the map's
    entries, each uniform over the other classes (``label_watermark.secret_label_map``).
    Identical images are kept once (the first of them, in the given order).
    """
    if images.shape[0] < 1:
        raise InputValidationError(
            "key set: no relabelled images (the watermark relabelled none of them)"
        )
    n = images.shape[0]
    flat = images.detach().to(torch.float32).reshape(n, -1).cpu()
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, torch.arange(n), reduce="amin")
    keep = first.sort().values
    images, classes = images[keep], classes[keep].long()
    present = torch.unique(classes)
    groups = torch.searchsorted(present, classes)
    return key_set_from_tensors(
        images,
        label_map.long()[classes],
        int(label_map.shape[0]),
        groups=groups,
        avoid=present,
        metadata={"groups_by": "victim class", **(metadata or {})},
    )


def save_key_set(key: KeySet, path: str | Path) -> Path:
    """Write ``key`` with its checksum to ``path`` (owner-only mode 0600, through a rename)."""
    named = key._named()
    header = _header(key.num_classes, key.seed, key.kind, key.metadata, named)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        **named,
        "header_json": canonical_json(header),
        "checksum": _checksum(header, list(named.values())),
    }

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)

    out = write_atomic(Path(path), write)
    log.info(
        "wrote key set %s (%d inputs, %d groups) to %s", key.fingerprint, key.n, key.num_groups, out
    )
    return out


def load_key_set(path: str | Path) -> KeySet:
    """Read a key file, verify its checksum and rebuild the :class:`KeySet`.

    Raises :class:`KeyFileError` for a missing or unreadable file, a file that is not a key
    file, an old format version, a checksum mismatch (the file was modified or is corrupt) and
    content that breaks the key's invariants (e.g. a group with two labels).
    """
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"{p}: key file not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or corrupt files
        raise KeyFileError(
            f"{p}: not a readable key file ({type(e).__name__}); it may be corrupt"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise KeyFileError(f"{p}: not a stealproof key file (missing format={FORMAT!r})")
    version = payload.get("version")
    if version == 1:
        raise KeyFileError(
            f"{p}: key file version 1 (one label per key, no groups) is no longer supported; "
            f"this version reads version {VERSION} (grouped keys): make a new key with "
            "`stealproof verify keygen`"
        )
    if version != VERSION:
        raise KeyFileError(f"{p}: unsupported key file version {version!r} (expected {VERSION})")
    names = ("images", "labels", "groups", "avoid")
    tensors = [payload.get(name) for name in names]
    text, saved = payload.get("header_json"), payload.get("checksum")
    if not (
        all(isinstance(t, Tensor) for t in tensors)
        and isinstance(text, str)
        and isinstance(saved, str)
    ):
        raise KeyFileError(
            f"{p}: key file is incomplete (images, labels, groups, avoid, header or checksum)"
        )
    try:
        header = json.loads(text)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict):
        raise KeyFileError(f"{p}: checksum mismatch: the key file was modified or is corrupt")
    try:
        actual = _checksum(header, tensors)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        actual = ""
    if actual != saved:
        raise KeyFileError(f"{p}: checksum mismatch: the key file was modified or is corrupt")
    images, labels, groups, avoid = tensors
    try:
        key = KeySet(
            images,  # type: ignore[arg-type]
            labels,  # type: ignore[arg-type]
            header["num_classes"],
            groups,  # type: ignore[arg-type]
            avoid,  # type: ignore[arg-type]
            header["seed"],
            header["kind"],
            header["metadata"],
        )
    except (KeyError, InputValidationError) as e:
        raise KeyFileError(f"{p}: key file content is invalid ({e})") from None
    if key.checksum != saved:  # the header's own fields must describe these tensors
        raise KeyFileError(f"{p}: checksum mismatch: the key file was modified or is corrupt")
    return key
