"""The defense protocol: a batch of clean posteriors in, released posteriors out.

A defense is a small object with a typed, frozen pydantic config. ``defense(x, y, logits)``
validates its inputs, never mutates them, and returns a new ``[B, K]`` tensor on the probability
simplex.
Every defense is batch-invariant: a row's answer does not depend on the other rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from stealproof._names import field_names_hint
from stealproof._validate import check_images, check_logits, check_posteriors
from stealproof.errors import InputValidationError


class DefenseConfig(BaseModel):
    """Base of every defense's parameters; unknown fields and NaN / ±inf values are errors.

    No defense parameter has a meaning at infinity (an unbounded budget is spelled with a large
    finite number), and refusing them keeps every config strict JSON.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def format_validation_error(
    owner: str, err: ValidationError, model: type[BaseModel] | None = None
) -> str:
    """One line per pydantic error, naming the field: ``owner: field: message (got value)``.

    An unknown field's message lists the valid names of ``model``.
    """
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<config>"
        got = e.get("input")
        if e["type"] == "extra_forbidden" and model is not None:
            parts.append(f"{owner}: unknown parameter {loc!r}{field_names_hint(model)}")
            continue
        suffix = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        parts.append(f"{owner}: {loc}: {e['msg']}{suffix}")
    return "; ".join(parts)


class Defense(ABC):
    """Base class: subclasses set ``name`` and ``Config`` and implement :meth:`perturb`."""

    name: ClassVar[str]
    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    #: True when the released top-1 class always equals the victim's top-1 class.
    preserves_top1: ClassVar[bool] = False
    #: True when the answer involves randomness (keyed by seed and row content).
    randomized: ClassVar[bool] = False
    #: Parameters ``stealproof demo`` uses: a sensible strength at ~1 point defender cost.
    demo_params: ClassVar[dict[str, Any]] = {}
    #: False for defenses that are a detection policy's answer to flagged rows rather than a
    #: defense for every row (``deceptive``); ``stealproof demo`` leaves them out.
    in_demo: ClassVar[bool] = True
    #: Config fields :meth:`prepare` reads to build the defense's models; the other fields are
    #: knobs that :meth:`replace` changes while sharing the models. ``None`` = every field.
    prepare_params: ClassVar[frozenset[str] | None] = None

    @classmethod
    def prepare(
        cls,
        victim: torch.nn.Module,
        images: Tensor,
        *,
        query_sample: Tensor | None = None,
        **params: Any,
    ) -> Defense:
        """Build the defense for ``victim``; defenses that need models (surrogates) build them.

        ``images`` are the defender's own training data; ``query_sample`` is optional unlabeled
        data from the query distribution (e.g. a defender's log of past queries), which GRAD²
        distils its surrogate on.
        """
        del victim, images, query_sample
        return cls(**params)

    @classmethod
    def make_config(cls, **params: Any) -> DefenseConfig:
        """Validate keyword parameters into the defense's config (errors name the field)."""
        try:
            return cls.Config(**params)
        except ValidationError as e:
            raise InputValidationError(format_validation_error(cls.name, e, cls.Config)) from None

    def __init__(self, config: DefenseConfig | None = None, /, **params: Any) -> None:
        if config is not None and params:
            raise InputValidationError(f"{self.name}: pass either a config or keyword parameters")
        if config is None:
            config = self.make_config(**params)
        elif not isinstance(config, self.Config):
            raise InputValidationError(
                f"{self.name}: expected a {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config

    @property
    def params(self) -> dict[str, Any]:
        """The defense's parameters as plain JSON-able values."""
        return self.config.model_dump(mode="json")

    def l1_budget(self) -> float | None:
        """The per-row L1 bound ``‖ỹ − y‖₁ ≤ ε`` this defense guarantees, if it has one."""
        return None

    def expected_input(self) -> tuple[tuple[int, ...] | None, int | None]:
        """(per-example input shape, class count) the defense's models need; None = any."""
        return None, None

    def __call__(self, x: Tensor | None, y: Tensor, logits: Tensor | None = None) -> Tensor:
        """Validate the batch and return released posteriors of the same shape as ``y``."""
        shape, classes = self.expected_input()
        y = check_posteriors(y, "y", num_classes=classes)
        if x is not None:
            x = check_images(x, "x", shape=shape, batch=y.shape[0])
        if logits is not None:
            logits = check_logits(logits, "logits", like=y)
        with torch.no_grad():
            out = self.perturb(x, y, logits)
        return out

    @abstractmethod
    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        """The defense's math on an already-validated batch; must not modify its inputs."""

    def to(self, device: torch.device | str) -> Defense:
        """Move any models the defense holds to ``device`` (baselines hold none)."""
        return self

    def models(self) -> dict[str, Any]:
        """The models (and other non-config objects) the constructor was given, by keyword."""
        return {}

    def replace(self, **params: Any) -> Defense:
        """The same defense with some parameters changed, sharing the models it holds.

        A sweep over a knob uses this so that surrogates are trained once, not per setting.
        """
        config = self.make_config(**{**self.config.model_dump(), **params})
        return type(self)(config, **self.models())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def normalize_rows(t: Tensor) -> Tensor:
    """Divide each row by its sum (rows must have a positive sum)."""
    return t / t.sum(dim=1, keepdim=True)


def one_hot_argmax(y: Tensor) -> Tensor:
    """One-hot rows at each row's own argmax (first index on ties)."""
    out = torch.zeros_like(y)
    return out.scatter_(1, y.argmax(dim=1, keepdim=True), 1.0)


def keep_top1(out: Tensor, y: Tensor) -> Tensor:
    """Make each row's original top class the strict argmax of ``out`` again.

    Renormalising in float can merge values that were one ulp apart; where that flipped the
    argmax, the top entry is raised to the next float above the largest other entry.
    """
    top = y.argmax(dim=1, keepdim=True)
    flipped = out.argmax(dim=1, keepdim=True) != top
    if not bool(flipped.any()):
        return out
    others = out.scatter(1, top, float("-inf")).amax(dim=1, keepdim=True)
    bumped = torch.nextafter(others, torch.full_like(others, float("inf")))
    return torch.where(flipped, out.scatter(1, top, bumped), out)


def model_io(model: torch.nn.Module | None) -> tuple[tuple[int, ...] | None, int | None]:
    """(input shape, class count) declared by a stealproof Classifier; (None, None) otherwise."""
    shape = getattr(model, "input_shape", None)
    classes = getattr(model, "num_classes", None)
    return (tuple(shape) if shape is not None else None, int(classes) if classes else None)
