"""Label watermark: a secret class map on the queries the victim is unsure of.

A query whose largest victim logit is below ``threshold`` (set by :meth:`prepare` so that only a
share ``fpr`` of the owner's own images fall below it) is answered with its top-1 class ``a``
replaced by the owner's secret label ``m[a]``: the probabilities of ``a`` and ``m[a]`` swap, so
the answer looks like any other. ``m[a]`` is drawn uniformly from the classes other than ``a``
from the secret ``seed``. Every query the victim is unsure of is relabelled the same way, so a
thief's clone learns the map as a rule rather than memorising single points — and its answers
on such inputs then carry the owner's secret labels, which no independently trained model can
know (``stealproof.ownership`` tests exactly that). Thieves whose queries look unlike the
owner's data (surrogate pools, synthetic images) send many such queries; users sending the
owner's kind of data almost none (the defender's cost is about ``fpr`` of top-1 accuracy).

With ``record_dir`` set, every relabelled query is written there (one file per batch), and
``stealproof verify collect`` turns the directory into the key set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from stealproof import _rng
from stealproof.defenses.base import Defense, DefenseConfig, keep_top1
from stealproof.defenses.registry import register
from stealproof.errors import ConfigError, InputValidationError

if TYPE_CHECKING:
    from stealproof.ownership.keys import KeySet

#: File names of the records ``record_dir`` receives (``verify collect`` reads these).
RECORD_GLOB = "relabelled-*.pt"


def secret_label_map(num_classes: int, seed: int) -> Tensor:
    """``m[a]``: for each class ``a``, a label drawn uniformly from the other classes (int64)."""
    if num_classes < 2:
        raise InputValidationError(f"label map: needs at least 2 classes, got {num_classes}")
    g = torch.Generator().manual_seed(_rng.salt_from_seed(seed))
    r = torch.randint(0, num_classes - 1, (num_classes,), generator=g)
    return r + (r >= torch.arange(num_classes)).long()


def relabel_mask(logits: Tensor, threshold: float) -> Tensor:
    """Rows whose largest logit is below ``threshold`` (the victim is unsure of them)."""
    return logits.amax(dim=1) < threshold


def relabel(y: Tensor, mask: Tensor, label_map: Tensor, min_top: float = 0.0) -> Tensor:
    """Swap, in the rows of ``mask``, the top-1 probability with that of ``label_map[top-1]``.

    Masked rows come out with ``label_map[top-1]`` as their strict argmax, at probability at
    least ``min_top`` (the other classes scaled down to make room); other rows unchanged.
    """
    top = y.argmax(dim=1, keepdim=True)
    new = label_map.to(y.device)[top]
    p_top, p_new = y.gather(1, top), y.gather(1, new)
    m = mask[:, None]
    out = y.scatter(1, top, torch.where(m, p_new, p_top))
    out = out.scatter(1, new, torch.where(m, p_top, p_new))
    if min_top > 0.0:
        raise_top = m & (p_top < min_top)
        rest = (1.0 - min_top) / (1.0 - p_top).clamp_min(1e-12)
        out = torch.where(raise_top, out * rest, out)
        out = out.scatter(1, new, torch.where(raise_top, torch.full_like(p_top, min_top),
                                              out.gather(1, new)))  # fmt: skip
    # a tie between the two classes would leave the old argmax: make the target strict
    target = torch.where(m, new, top)
    return keep_top1(out, torch.zeros_like(y).scatter(1, target, 1.0))


def calibrate_threshold(victim: nn.Module, images: Tensor, fpr: float) -> float:
    """The ``fpr`` quantile of the victim's largest logit on the owner's ``images``."""
    from stealproof.oracle import victim_posteriors

    if images.shape[0] < 1:
        raise InputValidationError("label_watermark: prepare() needs at least one image")
    _, logits = victim_posteriors(victim, images)
    return float(torch.quantile(logits.amax(dim=1).double().cpu(), fpr))


class LabelWatermarkConfig(DefenseConfig):
    threshold: float | None = Field(
        None, description="largest logit below which a query is relabelled; prepare() sets it"
    )
    fpr: float = Field(
        0.004, gt=0.0, lt=0.5, description="prepare(): share of the owner's images relabelled"
    )
    min_top: float = Field(
        0.9, ge=0.0, lt=1.0, description="least probability of the secret label in answers"
    )
    seed: int = Field(0, ge=0, description="the owner's secret: seeds the class map")
    record_dir: str | None = Field(
        None, description="directory that receives every relabelled query (the key set)"
    )


@register
class LabelWatermark(Defense):
    """Answers low-confidence queries with a secret class map that a thief's clone learns."""

    name: ClassVar[str] = "label_watermark"
    Config: ClassVar[type[DefenseConfig]] = LabelWatermarkConfig
    demo_params: ClassVar[dict[str, Any]] = {}
    # an ownership tool rather than a protection: the demo's table leaves it out
    in_demo: ClassVar[bool] = False
    prepare_params: ClassVar[frozenset[str] | None] = frozenset({"fpr", "threshold"})

    def __init__(self, config: DefenseConfig | None = None, /, **params: Any) -> None:
        super().__init__(config, **params)
        cfg = self.config
        assert isinstance(cfg, LabelWatermarkConfig)
        if cfg.threshold is None:
            raise ConfigError(
                "label_watermark: needs a threshold: pass threshold=..., or build the defense "
                "with LabelWatermark.prepare(victim, images) (the fpr quantile of the victim's "
                "largest logit on your images)"
            )
        self.threshold = cfg.threshold
        self._maps: dict[int, Tensor] = {}

    @classmethod
    def prepare(
        cls,
        victim: nn.Module,
        images: Tensor,
        *,
        query_sample: Tensor | None = None,
        **params: Any,
    ) -> Defense:
        """Set ``threshold`` from ``fpr`` on the owner's own ``images`` (unless it is given)."""
        del query_sample  # the threshold is about the owner's data, not the queries
        cfg = cls.make_config(**params)
        assert isinstance(cfg, LabelWatermarkConfig)
        if cfg.threshold is not None:
            return cls(cfg)
        threshold = calibrate_threshold(victim, images, cfg.fpr)
        return cls(cfg.model_copy(update={"threshold": threshold}))

    def label_map(self, num_classes: int) -> Tensor:
        """The secret class map for ``num_classes`` classes."""
        if num_classes not in self._maps:
            assert isinstance(self.config, LabelWatermarkConfig)
            self._maps[num_classes] = secret_label_map(num_classes, self.config.seed)
        return self._maps[num_classes]

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        if logits is None:
            raise InputValidationError(
                "label_watermark: needs the victim's logits (its threshold is on the largest logit)"
            )
        assert isinstance(self.config, LabelWatermarkConfig)
        mask = relabel_mask(logits, self.threshold)
        label_map = self.label_map(y.shape[1])
        out = relabel(y, mask, label_map, self.config.min_top)
        if self.config.record_dir is not None and bool(mask.any()):
            if x is None:
                raise InputValidationError(
                    "label_watermark: record_dir needs the query images (x), got none"
                )
            top = y.argmax(dim=1)
            save_record(Path(self.config.record_dir), x[mask], top[mask], label_map)
        return out

    def key_set(self, victim: nn.Module, images: Tensor) -> KeySet:
        """The key set this watermark makes of ``images`` (the owner's): the ones it relabels."""
        from stealproof.oracle import victim_posteriors
        from stealproof.ownership.keys import class_map_key_set

        y, logits = victim_posteriors(victim, images)
        mask = relabel_mask(logits, self.threshold).cpu()
        label_map = self.label_map(y.shape[1])
        top = y.argmax(dim=1).cpu()
        return class_map_key_set(
            images[mask].cpu(), top[mask], label_map, metadata={"source": "label_watermark"}
        )


def save_record(directory: Path, images: Tensor, classes: Tensor, label_map: Tensor) -> Path:
    """Write relabelled queries (images, the victim's classes, the map) as one file, atomically.

    The name is a hash of the content, so a repeated batch rewrites the same file.
    """
    from stealproof._io import write_atomic

    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "images": images.detach().to("cpu", torch.float32).contiguous(),
        "classes": classes.detach().to("cpu", torch.int64).contiguous(),
        "label_map": label_map.detach().to("cpu", torch.int64).contiguous(),
    }
    digest = hashlib.sha256()
    for t in payload.values():
        digest.update(t.numpy().tobytes())
    path = directory / RECORD_GLOB.replace("*", digest.hexdigest()[:32])
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))
