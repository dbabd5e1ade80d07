"""Check a suspect model against a secret grouped key set: answers per group, exact p-value.

A suspect is an ``nn.Module``, a black box with ``.query(x) -> posteriors`` (``BlackBox``,
``HTTPBlackBox``: only the key images are sent, once), or any callable ``x -> logits or
posteriors``. Its top-1 answers become a table ``counts[group, class]`` and the exact test of
:mod:`stealproof.ownership.stats` decides. A *calibration* records how independently trained
reference models (the owner's own, never exposed to the watermark) score on the key, each with
its own exact p-value; it is stored as JSON bound to the key's fingerprint and is reported as
context next to a verdict. It does not change the p-value, which is exact without it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from stealproof._io import write_text_atomic
from stealproof.errors import (
    ArtifactMismatchError,
    ConfigError,
    DataFileError,
    InputValidationError,
)
from stealproof.ownership.keys import KeySet, module_outputs
from stealproof.ownership.stats import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIDENCE,
    Verdict,
    check_alpha,
    decide,
    group_p_value,
    null_rate_upper,
)

if TYPE_CHECKING:
    from stealproof.data import Dataset
    from stealproof.train import TrainConfig

__all__ = [
    "CALIBRATION_FORMAT",
    "Calibration",
    "QueryBox",
    "Suspect",
    "answer_counts",
    "calibrate",
    "check_calibration",
    "default_calibration_path",
    "load_calibration",
    "load_suspect",
    "match_rate",
    "predict_labels",
    "save_calibration",
    "train_reference_models",
    "verify",
]

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = "stealproof-ownership-calibration"
CALIBRATION_VERSION = 2
#: Rows per forward pass of an in-process suspect.
BATCH_SIZE = 256


@runtime_checkable
class QueryBox(Protocol):
    """Anything with the black box's ``query``: images in, posteriors out."""

    def query(self, x: Tensor) -> Tensor: ...


Suspect = nn.Module | QueryBox | Callable[[Tensor], Tensor]


def _check_input_shape(suspect: object, key: KeySet) -> None:
    want = getattr(suspect, "input_shape", None)
    if want is not None and tuple(want) != key.input_shape:
        raise InputValidationError(
            f"suspect: expects {tuple(want)} images, the key has {key.input_shape}"
        )


def _module_outputs(model: nn.Module, images: Tensor) -> Tensor:
    return module_outputs(model, images, BATCH_SIZE)


def predict_labels(suspect: Suspect, key: KeySet) -> Tensor:
    """The suspect's top-1 answer on each key image (int64 ``[n]``), checking its output shape.

    A query box gets the key images in one call (it chunks them itself) and nothing else.
    """
    _check_input_shape(suspect, key)
    images = key.images
    out: object
    if isinstance(suspect, nn.Module):
        out = _module_outputs(suspect, images)
    elif isinstance(suspect, QueryBox):
        out = suspect.query(images.clone())
    elif callable(suspect):
        with torch.no_grad():
            out = suspect(images.clone())
    else:
        raise InputValidationError(
            "suspect: expected an nn.Module, an object with .query(x) or a callable, got "
            f"{type(suspect).__name__}"
        )
    if not isinstance(out, Tensor):
        raise InputValidationError(f"suspect: answered {type(out).__name__}, not a tensor")
    if out.ndim != 2 or out.shape[0] != key.n:
        raise InputValidationError(
            f"suspect: answered shape {list(out.shape)}, expected [{key.n}, {key.num_classes}]"
        )
    if out.shape[1] != key.num_classes:
        raise InputValidationError(
            f"suspect: answers {out.shape[1]} classes, the key has {key.num_classes}"
        )
    if not bool(torch.isfinite(out).all()):
        raise InputValidationError("suspect: answered non-finite values on the key inputs")
    return out.argmax(dim=1).cpu()


def answer_counts(suspect: Suspect, key: KeySet) -> Tensor:
    """``counts[g, c]``: how many keys of group ``g`` the suspect answers with class ``c``.

    int64 ``[G, K]``; one query of the key images (see :func:`predict_labels`).
    """
    return _counts(predict_labels(suspect, key), key)


def _counts(pred: Tensor, key: KeySet) -> Tensor:
    g, k = key.num_groups, key.num_classes
    flat = torch.bincount(key.groups * k + pred.to(torch.int64), minlength=g * k)
    return flat.view(g, k)


def match_rate(suspect: Suspect, key: KeySet) -> tuple[int, int]:
    """(matches, n): how many key images the suspect answers with the secret key label."""
    pred = predict_labels(suspect, key)
    return int((pred == key.labels).sum()), key.n


def _test(counts: Tensor, key: KeySet) -> tuple[int, float]:
    return group_p_value(counts, key.group_labels, key.avoid)


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Reference models on the key ``key_fingerprint``: each one's ``T`` and exact p-value.

    Reported as context next to a verdict (how innocents trained on the owner's data score);
    it does not change the suspect's p-value, which is exact without it.
    """

    key_fingerprint: str
    n: int
    groups: int
    names: tuple[str, ...]
    matches: tuple[int, ...]
    p_values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.names or not len(self.names) == len(self.matches) == len(self.p_values):
            raise InputValidationError(
                "calibration: expected one match count and p-value per reference model, at "
                "least one"
            )
        for what, v in (("n", self.n), ("groups", self.groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputValidationError(
                    f"calibration: {what}: expected an integer ≥ 1, got {v!r}"
                )
        for name, m, p in zip(self.names, self.matches, self.p_values, strict=True):
            if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= self.n:
                raise InputValidationError(
                    f"calibration: {name}: matches must be an integer in [0, {self.n}], got {m!r}"
                )
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
                raise InputValidationError(
                    f"calibration: {name}: p_value must be a number in (0, 1], got {p!r}"
                )

    @property
    def total_matches(self) -> int:
        """Matches of all reference models together."""
        return sum(self.matches)

    @property
    def total_trials(self) -> int:
        """Key queries of all reference models together."""
        return self.n * len(self.matches)

    @property
    def rates(self) -> tuple[float, ...]:
        """Each reference model's match rate ``T / n``."""
        return tuple(m / self.n for m in self.matches)

    @property
    def rate(self) -> float:
        """The reference models' pooled per-key match rate (point estimate)."""
        return self.total_matches / self.total_trials

    def upper(self, confidence: float = DEFAULT_CONFIDENCE) -> float:
        """Clopper–Pearson upper bound of the pooled per-key rate (context: keys of a group are
        not independent trials, so this is indicative, not a guarantee)."""
        return null_rate_upper(self.total_matches, self.total_trials, confidence)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document saved by :func:`save_calibration`."""
        return {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "key": self.key_fingerprint,
            "n": self.n,
            "groups": self.groups,
            "models": [
                {"name": name, "matches": m, "p_value": p}
                for name, m, p in zip(self.names, self.matches, self.p_values, strict=True)
            ],
        }


def calibrate(
    key: KeySet, reference_models: Mapping[str, Suspect] | Sequence[Suspect]
) -> Calibration:
    """Score each reference model on the key (``T`` and the exact p-value); they must never
    have seen the owner's answers on it (e.g. :func:`train_reference_models`)."""
    items = (
        list(reference_models.items())
        if isinstance(reference_models, Mapping)
        else [(f"reference-{i}", m) for i, m in enumerate(reference_models)]
    )
    if not items:
        raise ConfigError("calibrate: expected at least one reference model")
    matches, pvals = [], []
    for name, model in items:
        t, p = _test(answer_counts(model, key), key)
        log.info("reference %s: %d of %d key matches, p = %.3g", name, t, key.n, p)
        matches.append(t)
        pvals.append(p)
    return Calibration(
        key.fingerprint,
        key.n,
        key.num_groups,
        tuple(str(n) for n, _ in items),
        tuple(matches),
        tuple(pvals),
    )


def train_reference_models(
    dataset: Dataset | str,
    model_name: str | None,
    seeds: Sequence[int],
    *,
    train_config: TrainConfig | None = None,
    data_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    on_trained: Callable[[int, float], None] | None = None,
) -> list[nn.Module]:
    """Independently trained innocents: one model per seed on the owner's own training data.

    ``dataset``: a loaded :class:`Dataset` or a name for ``load_dataset(name, data_dir)``;
    ``model_name`` and ``train_config`` default to ``scenario_for(dataset)`` (the architecture
    and training the victim gets). Use seeds other than the victim's own (the CLI uses 1..N).
    ``on_trained(seed, test_accuracy)`` is called after each model. None of them ever sees the
    key, so their scores on it are what innocents look like.
    """
    from stealproof.data import load_dataset
    from stealproof.experiment import scenario_for, train_victim

    if isinstance(dataset, str):
        dataset = load_dataset(dataset, data_dir)
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds: expected at least one integer seed, got {seeds!r}")
    scenario = scenario_for(dataset.name)
    config = train_config if train_config is not None else scenario.victim_training
    arch = model_name if model_name is not None else scenario.model
    models: list[nn.Module] = []
    for seed in seeds:
        net, acc = train_victim(dataset, arch, config, seed=seed, device=device)
        net.eval()
        log.info(
            "reference model seed %d: %s on %s, test accuracy %.4f", seed, arch, dataset.name, acc
        )
        if on_trained is not None:
            on_trained(seed, acc)
        models.append(net.cpu())
    return models


def default_calibration_path(key_path: str | Path) -> Path:
    """Where a key's calibration lives by default: next to it, ``KEY.calibration.json``."""
    p = Path(key_path)
    return p.with_name(p.name + ".calibration.json")


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write ``cal`` as JSON through a temporary file and a rename."""
    return write_text_atomic(Path(path), json.dumps(cal.as_dict(), indent=2) + "\n")


def load_calibration(path: str | Path, key: KeySet | None = None) -> Calibration:
    """Read a calibration file; with ``key``, refuse one that was made for another key."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{p}: calibration file not found")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFileError(f"{p}: not a calibration file (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise DataFileError(f"{p}: not a calibration file (missing format={CALIBRATION_FORMAT!r})")
    if doc.get("version") != CALIBRATION_VERSION:
        raise DataFileError(
            f"{p}: unsupported calibration version {doc.get('version')!r} (expected "
            f"{CALIBRATION_VERSION}); calibrate again"
        )
    models = doc.get("models")
    if not isinstance(models, list) or not all(
        isinstance(m, dict) and {"name", "matches", "p_value"} <= m.keys() for m in models
    ):
        raise DataFileError(f"{p}: models: expected a list of {{name, matches, p_value}} objects")
    fp, n, groups = doc.get("key"), doc.get("n"), doc.get("groups")
    if not isinstance(fp, str):
        raise DataFileError(f"{p}: key: expected the key's fingerprint, got {fp!r}")
    try:
        cal = Calibration(
            fp,
            n,  # type: ignore[arg-type]
            groups,  # type: ignore[arg-type]
            tuple(str(m["name"]) for m in models),
            tuple(m["matches"] for m in models),
            tuple(m["p_value"] for m in models),
        )
    except InputValidationError as e:
        raise DataFileError(f"{p}: {e}") from None
    if key is not None:
        check_calibration(cal, key, str(p))
    return cal


def check_calibration(cal: Calibration, key: KeySet, where: str = "calibration") -> None:
    """Refuse a calibration made for another key (fingerprint or size differ)."""
    if cal.key_fingerprint != key.fingerprint or cal.n != key.n or cal.groups != key.num_groups:
        raise ArtifactMismatchError(
            f"{where}: was made for key {cal.key_fingerprint} ({cal.n} inputs), this key is "
            f"{key.fingerprint} ({key.n} inputs); calibrate again with this key"
        )


# ----------------------------------------------------------------------------- verification


def verify(
    suspect: Suspect,
    key: KeySet,
    calibration: Calibration | None = None,
    alpha: float = DEFAULT_ALPHA,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Verdict:
    """Query the suspect once on the key and run the exact group test at level ``alpha``.

    The p-value is exact for any model that never saw the owner's answers (see
    :mod:`stats`); a ``calibration`` is checked against the key and only adds the reference
    models' scores (and a Clopper–Pearson bound of their pooled rate at ``confidence``) to the
    verdict as context.
    """
    alpha = check_alpha(alpha)
    if calibration is not None:
        check_calibration(calibration, key)
    counts = answer_counts(suspect, key)
    if calibration is None:
        return decide(counts, key.group_labels, key.avoid, alpha=alpha)
    return decide(
        counts,
        key.group_labels,
        key.avoid,
        alpha=alpha,
        reference_names=calibration.names,
        reference_matches=calibration.matches,
        reference_p_values=calibration.p_values,
        confidence=confidence,
    )


def load_suspect(
    spec: str | Path,
    *,
    api_key: str | None = None,
    model: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    transport: Any = None,
) -> Suspect:
    """A suspect from the command line: a checkpoint path, or an ``http(s)://`` gateway URL.

    A URL needs ``api_key`` and ``model`` and gives an ``HTTPBlackBox`` (close it when done)
    sending ``batch_size`` rows per request; ``transport`` is passed to it (tests use
    ``httpx.MockTransport``).
    """
    text = str(spec)
    if text.startswith(("http://", "https://")):
        if not api_key or not model:
            raise ConfigError(
                "--suspect: a gateway URL needs --api-key and --model (the served model's name)"
            )
        from stealproof.http_box import HTTPBlackBox

        return HTTPBlackBox(text, api_key, model, batch_size=batch_size, transport=transport)
    if api_key is not None or model is not None:
        raise ConfigError("--api-key/--model: only for a suspect given as an http(s):// URL")
    from stealproof.models import load_checkpoint

    net, _ = load_checkpoint(Path(text), map_location=device)
    return net
