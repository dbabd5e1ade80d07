"""Watermarked serving: GRAD² redirection toward a secret key set, for ownership verification.

Every answer is steered, within an L1 budget and keeping top-1 by default, so that the thief's
training step teaches its clone a behaviour the owner chose: key images like group ``g``'s
secret prototype → the group's secret label. The target direction in the surrogate's
parameter space is ``a = Σ_g ∇θ Σ_{j∈g} log p_{y_g}(x_j) / ‖·‖`` (each group's gradient
normalised, so no group drowns the others); the scores ``s = G a`` and the exact LP solver are
GRAD²'s (:mod:`stealproof.defenses.grad2`). :mod:`stealproof.ownership` holds the key set and
the test that a suspect model carries the behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from stealproof.defenses.base import Defense, DefenseConfig, model_io
from stealproof.defenses.grad2 import Grad2, ScoreEngine, watermark_direction
from stealproof.defenses.registry import register
from stealproof.errors import ConfigError

if TYPE_CHECKING:
    from stealproof.ownership.keys import KeySet

KeyKind = Literal["blobs", "shapes", "noise", "mixed"]


def key_direction(
    model: nn.Module, images: Tensor, labels: Tensor, groups: Tensor
) -> dict[str, Tensor]:
    """``Σ_g ∇θ Σ_{j∈g} log p_{y_g}(x_j) / ‖∇θ …‖``: one unit-norm update per key group, summed.

    ``labels`` [n] must be constant within each group of ``groups`` [n].
    """
    total: dict[str, Tensor] | None = None
    for g in torch.unique(groups).tolist():
        rows = groups == g
        label = int(labels[rows][0])
        if bool((labels[rows] != label).any()):
            raise ConfigError(f"watermark: key group {g} has more than one label")
        d = watermark_direction(model, images[rows], label)
        norm = sum(float((t.double() ** 2).sum()) for t in d.values()) ** 0.5
        scale = 1.0 / max(norm, 1e-30)
        if total is None:
            total = {n: t * scale for n, t in d.items()}
        else:
            for n, t in d.items():
                total[n] += t * scale
    if total is None:
        raise ConfigError("watermark: the key set is empty")
    return total


class WatermarkConfig(DefenseConfig):
    eps: float = Field(2.0, ge=0.0, le=2.0, description="L1 budget ‖ỹ − y‖₁ ≤ eps")
    preserve_argmax: bool = Field(True, description="cap the mass so top-1 is kept")
    key_file: str | None = Field(
        None, description="the owner's key file (stealproof verify keygen); None: key_seed"
    )
    key_seed: int = Field(0, ge=0, description="secret seed of a generated key set")
    keys: int = Field(96, ge=1, le=100_000, description="key inputs of a generated key set")
    groups: int = Field(6, ge=1, description="key groups (one secret label each)")
    key_kind: KeyKind = Field("blobs", description="key images: blobs, shapes, noise, mixed")
    engine: ScoreEngine = Field("jvp", description="jvp, finite_difference or double_backward")
    seed: int = Field(0, description="seed of the surrogate built by prepare()")


@register
class Watermark(Defense):
    """GRAD² toward a secret key set, so stolen clones can be identified later.

    The key set is read from ``key_file`` or generated from ``key_seed`` (its labels avoid
    the surrogate's own majority answer on each group). ``.key`` is the key set in use: keep
    it (``stealproof.ownership.save_key_set``) to verify suspects with ``stealproof verify``.
    """

    name: ClassVar[str] = "watermark"
    Config: ClassVar[type[DefenseConfig]] = WatermarkConfig
    demo_params: ClassVar[dict[str, Any]] = {"eps": 2.0}
    # an ownership tool rather than a protection: the demo's table leaves it out
    in_demo: ClassVar[bool] = False
    prepare_params: ClassVar[frozenset[str] | None] = frozenset(
        {"seed", "key_file", "key_seed", "keys", "groups", "key_kind"}
    )

    def __init__(
        self,
        config: DefenseConfig | None = None,
        /,
        surrogate: nn.Module | None = None,
        key: KeySet | None = None,
        **params: Any,
    ) -> None:
        super().__init__(config, **params)
        cfg = self.config
        assert isinstance(cfg, WatermarkConfig)
        if surrogate is None:
            raise ConfigError(
                "watermark: needs a surrogate model: pass surrogate=..., or build one with "
                "Watermark.prepare(victim, images) (distilled, 10 of 50 epochs)"
            )
        self.surrogate = surrogate.eval()
        self._given_key = key
        self.key = key if key is not None else self._load_key(cfg, self.surrogate)
        shape, classes = model_io(self.surrogate)
        if shape is not None and tuple(self.key.input_shape) != tuple(shape):
            raise ConfigError(
                f"watermark: the key set holds {tuple(self.key.input_shape)} images, the model "
                f"takes {tuple(shape)}"
            )
        if classes is not None and self.key.num_classes != classes:
            raise ConfigError(
                f"watermark: the key set has {self.key.num_classes} classes, the model {classes}"
            )
        direction = key_direction(self.surrogate, self.key.images, self.key.labels, self.key.groups)
        inner = Grad2.make_config(
            eps=cfg.eps, target="direction", engine=cfg.engine,
            preserve_argmax=cfg.preserve_argmax, seed=cfg.seed,
        )  # fmt: skip
        self._grad2 = Grad2(inner, surrogate=self.surrogate, direction=direction)

    @staticmethod
    def _load_key(cfg: WatermarkConfig, surrogate: nn.Module) -> KeySet:
        from stealproof.ownership.keys import generate_key_set, load_key_set

        if cfg.key_file is not None:
            return load_key_set(cfg.key_file)
        shape, classes = model_io(surrogate)
        if shape is None or classes is None:
            raise ConfigError(
                "watermark: a generated key set needs a stealproof Classifier surrogate (its "
                "input shape and classes); pass key=... or key_file=..."
            )
        c, h, w = (int(v) for v in shape)
        return generate_key_set(
            cfg.keys, (c, h, w), int(classes), cfg.key_seed,
            groups=min(cfg.groups, cfg.keys), kind=cfg.key_kind, victim=surrogate,
        )  # fmt: skip

    @classmethod
    def prepare(
        cls,
        victim: nn.Module,
        images: Tensor,
        *,
        query_sample: Tensor | None = None,
        **params: Any,
    ) -> Defense:
        """A surrogate distilled from the victim (as GRAD²'s), and the key set."""
        from stealproof.surrogate import distill_surrogate

        cfg = cls.make_config(**params)
        assert isinstance(cfg, WatermarkConfig)
        data = query_sample if query_sample is not None else images
        surrogate = distill_surrogate(victim, data, epochs=10, schedule_epochs=50, seed=cfg.seed)
        return cls(cfg, surrogate=surrogate)

    def models(self) -> dict[str, Any]:
        # a generated or key-file key set is rebuilt from the config; only a key passed in
        # by hand travels with the models
        out: dict[str, Any] = {"surrogate": self.surrogate}
        if self._given_key is not None:
            out["key"] = self._given_key
        return out

    def expected_input(self) -> tuple[tuple[int, ...] | None, int | None]:
        return model_io(self.surrogate)

    def to(self, device: torch.device | str) -> Defense:
        self._grad2.to(device)
        return self

    def l1_budget(self) -> float | None:
        assert isinstance(self.config, WatermarkConfig)
        return self.config.eps

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        return self._grad2.perturb(x, y, logits)
