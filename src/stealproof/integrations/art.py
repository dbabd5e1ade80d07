"""ART interoperability: stealproof defenses, black boxes and attacks in the Adversarial Robustness
Toolbox, and ART's extraction attacks as stealproof attacks.

- :func:`as_art_postprocessor` serves any stealproof defense from an ART classifier
  (``postprocessing_defences=[pp]``; defenses that read the inputs also need
  ``preprocessing_defences=[pp.input_tap]``). The answers equal those of
  :class:`~stealproof.oracle.BlackBox`.
- :func:`as_art_classifier` exposes a metered black box as an ART ``BlackBoxClassifier``: every
  row ART asks for goes through the box's ``query``, its meter and its budget.
- :func:`art_attack` wraps ART's ``KnockoffNets`` and ``CopycatCNN`` as stealproof attacks with
  the usual entry point ``run(blackbox, pool, budget, make_clone)``.

Needs ``pip install 'stealproof[art]'``; importing this module without ART raises
:class:`ArtNotInstalledError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof.attacks.base import (
    AttackResult,
    BlackBoxLike,
    CloneFactory,
    QueryGuard,
    TransferSet,
    check_budget,
    empty_transfer,
    evaluate_trace_point,
)
from stealproof.data.pools import Pool
from stealproof.defenses.base import Defense, one_hot_argmax
from stealproof.defenses.identity import NoDefense
from stealproof.defenses.registry import get_defense_class, resolve_defense
from stealproof.errors import InputValidationError, StealproofError, UnknownNameError
from stealproof.integrations import ART_ATTACKS
from stealproof.oracle import OutputMode, apply_output_mode
from stealproof.train import TrainConfig, effective_epochs, optimizer_for


class ArtNotInstalledError(StealproofError, ImportError):
    """The Adversarial Robustness Toolbox is not installed (``pip install 'stealproof[art]'``)."""


try:
    from art.attacks.extraction import (  # type: ignore[import-untyped]
        CopycatCNN as _ArtCopycatCNN,
    )
    from art.attacks.extraction import (
        KnockoffNets as _ArtKnockoffNets,
    )
    from art.defences.postprocessor import Postprocessor  # type: ignore[import-untyped]
    from art.defences.preprocessor.preprocessor import (  # type: ignore[import-untyped]
        PreprocessorPyTorch,
    )
    from art.estimators.classification import (  # type: ignore[import-untyped]
        BlackBoxClassifier,
        PyTorchClassifier,
    )
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ArtNotInstalledError(
        "stealproof.integrations.art needs the Adversarial Robustness Toolbox: "
        f"pip install 'stealproof[art]' ({_err})"
    ) from _err

PredsKind = Literal["logits", "probs"]

#: Registered defenses whose answer is a function of the posteriors alone (no inputs, no keys).
POSTERIOR_ONLY: frozenset[str] = frozenset({"none", "top1", "topk", "rounding", "reverse_sigmoid"})


def reads_inputs(defense: Defense) -> bool:
    """Whether ``defense``'s answer depends on the inputs x.

    True for defenses that run models on x (MAD, GRAD², AM) and for keyed-random ones, whose
    randomness is a hash of the row's pixels (random, noise, deceptive); False only for the
    registered posterior-only defenses of :data:`POSTERIOR_ONLY` (an unknown defense is assumed
    to read x).
    """
    name = getattr(type(defense), "name", None)
    if not isinstance(name, str) or name not in POSTERIOR_ONLY:
        return True
    try:
        return get_defense_class(name) is not type(defense)
    except UnknownNameError:
        return True


# ----------------------------------------------------------------------------- postprocessor


class InputTap(PreprocessorPyTorch):  # type: ignore[misc]
    """An identity ART preprocessor that keeps the last batch it passed on.

    ART hands a postprocessor only the predictions; its ``PyTorchClassifier.predict`` runs the
    preprocessors once on the whole input, then the model batch by batch, then the
    postprocessors once on all the rows, so the batch kept here is the one the predictions
    belong to. Put it last in ``preprocessing_defences`` so it sees what the model sees.
    """

    def __init__(self) -> None:
        super().__init__(device_type="cpu", is_fitted=True, apply_fit=False, apply_predict=True)
        self._batch: Tensor | None = None

    def forward(self, x: Tensor, y: Any = None) -> tuple[Tensor, Any]:
        """Keep a copy of ``x`` and return ``(x, y)`` unchanged."""
        self._batch = torch.as_tensor(x).detach().clone()
        return x, y

    def take(self) -> Tensor | None:
        """The last batch seen (once: it is forgotten so a later call cannot reuse it)."""
        batch, self._batch = self._batch, None
        return batch


class DefensePostprocessor(Postprocessor):  # type: ignore[misc]
    """A stealproof defense as an ART ``Postprocessor`` (made by :func:`as_art_postprocessor`)."""

    params: ClassVar[list[str]] = []

    def __init__(
        self,
        defense: Defense,
        *,
        preds: PredsKind,
        output: OutputMode,
        top_k: int,
        batch_size: int,
        device: torch.device,
        needs_inputs: bool,
    ) -> None:
        super().__init__(is_fitted=True, apply_fit=False, apply_predict=True)
        self.defense = defense
        self.preds: PredsKind = preds
        self.output: OutputMode = output
        self.top_k = top_k
        self.batch_size = batch_size
        self.device = device
        self.needs_inputs = needs_inputs
        #: Pass this to the classifier as ``preprocessing_defences=[pp.input_tap]`` (last).
        self.input_tap = InputTap()

    def __call__(self, preds: np.ndarray) -> np.ndarray:
        """Released posteriors [N, K] (float32) for the classifier's outputs ``preds``."""
        arr = np.asarray(preds)
        x = self.input_tap.take()
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise InputValidationError(
                f"preds: expected [N, K ≥ 2] model outputs, got shape {list(arr.shape)}"
            )
        n = int(arr.shape[0])
        if n == 0:
            return arr.astype(np.float32)
        out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(self.device)
        logits = out if self.preds == "logits" else None
        y = torch.softmax(out, dim=1) if self.preds == "logits" else out
        xs = self._inputs(x, n) if self.needs_inputs else None
        parts = []
        for i in range(0, n, self.batch_size):
            sl = slice(i, i + self.batch_size)
            parts.append(
                self.defense(
                    None if xs is None else xs[sl],
                    y[sl],
                    None if logits is None else logits[sl],
                )
            )
        released = apply_output_mode(torch.cat(parts), self.output, self.top_k)
        return released.cpu().numpy().astype(np.float32, copy=False)

    def _inputs(self, x: Tensor | None, n: int) -> Tensor:
        """The tapped inputs for ``n`` predictions, or a clear error."""
        if x is None:
            raise InputValidationError(
                f"{self.defense.name}: this defense needs the inputs x, which an ART "
                "postprocessor does not receive: pass the classifier "
                "preprocessing_defences=[pp.input_tap] (last in the list) alongside "
                "postprocessing_defences=[pp]"
            )
        if x.shape[0] != n:
            raise InputValidationError(
                f"{self.defense.name}: the input tap saw {x.shape[0]} rows but the predictions "
                f"have {n}: the tap must belong to the classifier that made them"
            )
        return x.to(self.device, torch.float32)

    def __repr__(self) -> str:
        return (
            f"DefensePostprocessor({self.defense!r}, preds={self.preds!r}, "
            f"output={self.output!r}, needs_inputs={self.needs_inputs})"
        )


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputValidationError(f"{name}: expected an int ≥ 1, got {value!r}")
    return value


def as_art_postprocessor(
    defense: Defense | str | None,
    *,
    preds: PredsKind = "logits",
    output: OutputMode = "probs",
    top_k: int = 1,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    needs_inputs: bool | None = None,
) -> DefensePostprocessor:
    """``defense`` as an ART postprocessor that answers exactly as a ``BlackBox`` would.

    ``preds``: what the ART classifier's model returns — ``"logits"`` (stealproof models; the
    posteriors are their softmax, and the defense also sees the logits) or ``"probs"``.
    ``output`` / ``top_k``: the API's output mode, as in ``BlackBox``. ``batch_size``: rows the
    defense sees at once (never changes the answers). ``device``: where the defense runs.
    ``needs_inputs``: whether the defense reads x (default: :func:`reads_inputs`); when it does,
    pass ``preprocessing_defences=[pp.input_tap]`` to the classifier too, or calling it raises.
    """
    resolved = resolve_defense(defense, "defense")
    d = resolved if resolved is not None else NoDefense()
    if preds not in ("logits", "probs"):
        raise InputValidationError(f"preds: expected 'logits' or 'probs', got {preds!r}")
    if output not in ("probs", "topk", "label"):
        raise InputValidationError(f"output: expected probs, topk or label, got {output!r}")
    if needs_inputs is not None and not isinstance(needs_inputs, bool):
        raise InputValidationError(
            f"needs_inputs: expected True, False or None, got {needs_inputs!r}"
        )
    return DefensePostprocessor(
        d,
        preds=preds,
        output=output,
        top_k=_positive(top_k, "top_k"),
        batch_size=_positive(batch_size, "batch_size"),
        device=torch.device(device),
        needs_inputs=reads_inputs(d) if needs_inputs is None else needs_inputs,
    )


# ----------------------------------------------------------------------------- black box


class BoxPredict:
    """The ``predict_fn`` of an ART ``BlackBoxClassifier``: every row goes through the box.

    Refusals of the box (``BudgetExhaustedError``, ``ClientBlockedError``) propagate: ART's
    ``predict`` calls this once per ``batch_size`` chunk, so the chunks before the refused one
    stay answered and charged. With ``record`` it keeps each answered (batch, answers) pair.
    """

    def __init__(
        self,
        blackbox: BlackBoxLike,
        *,
        record: bool = False,
        on_rows: Callable[[int], None] | None = None,
    ) -> None:
        self.blackbox = blackbox
        self.record = record
        self.on_rows = on_rows
        self._images: list[Tensor] = []
        self._answers: list[Tensor] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        answers = self.blackbox.query(batch).detach().cpu().float()
        if self.record:
            self._images.append(batch.clone())
            self._answers.append(answers)
        if self.on_rows is not None:
            self.on_rows(int(batch.shape[0]))
        return answers.numpy()

    def transcript(self) -> TransferSet:
        """The recorded queries and answers, in order (empty without ``record``)."""
        if not self._answers:
            return empty_transfer(self.blackbox.input_shape, self.blackbox.num_classes)
        return TransferSet(torch.cat(self._images), torch.cat(self._answers))


def _box_io(
    blackbox: BlackBoxLike, input_shape: tuple[int, ...] | None, nb_classes: int | None
) -> tuple[tuple[int, ...], int]:
    shape = input_shape if input_shape is not None else blackbox.input_shape
    classes = nb_classes if nb_classes is not None else blackbox.num_classes
    if shape is None:
        raise InputValidationError(
            "input_shape: the black box does not declare its input shape; "
            "pass input_shape=(C, H, W)"
        )
    if classes is None:
        raise InputValidationError(
            "nb_classes: the black box does not declare its class count; pass nb_classes=K"
        )
    return tuple(int(s) for s in shape), int(classes)


def as_art_classifier(
    blackbox: BlackBoxLike,
    *,
    input_shape: tuple[int, ...] | None = None,
    nb_classes: int | None = None,
    record: bool = False,
) -> Any:
    """A ``BlackBox`` / ``HTTPBlackBox`` as an ART ``BlackBoxClassifier`` (pixels in [0, 1]).

    Every row ART predicts is a row of the box: metered, defended, and refused past the budget
    with :class:`~stealproof.errors.BudgetExhaustedError` before the refused chunk is answered
    (the chunks of ART's ``predict`` before it stay answered and charged; ART's own attacks then
    stop with that error and discard what they had). The classifier's ``predict_fn`` is a
    :class:`BoxPredict`; with ``record`` its ``transcript()`` holds what was answered.
    """
    shape, classes = _box_io(blackbox, input_shape, nb_classes)
    return BlackBoxClassifier(
        predict_fn=BoxPredict(blackbox, record=record),
        input_shape=shape,
        nb_classes=classes,
        clip_values=(0.0, 1.0),
    )


# ----------------------------------------------------------------------------- attacks


ArtMethod = Literal["knockoffnets", "copycat"]


def art_clone_training() -> TrainConfig:
    """Clone training of the ART attacks by default: Adam lr 1e-3, 15 epochs, batch 64, no
    schedule (ART's ``fit`` has none)."""
    return TrainConfig(epochs=15, batch_size=64, optimizer="adam", lr=1e-3, schedule="none")


class ArtAttackConfig(BaseModel):
    """Parameters of :class:`ArtExtraction`: which ART attack, how it queries, how it trains.

    ``label_only`` is ART's ``use_probability=False`` (train on one-hot labels of the answers);
    ``query_batch`` its ``batch_size_query``; ``train`` gives ``nb_epochs`` (``epochs``, raised
    by ``min_steps`` as in stealproof's own training), ``batch_size_fit`` and the optimizer.
    ART's training loop has no schedule, augmentation or model selection, so ``train`` must not
    ask for them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: ArtMethod = "knockoffnets"
    policy: Literal["random", "adaptive"] = Field(
        "random", description="KnockoffNets' sampling strategy (adaptive: one row per query)"
    )
    reward: Literal["cert", "div", "loss", "all"] = Field(
        "all", description="adaptive KnockoffNets' reward"
    )
    label_only: bool = Field(False, description="train on one-hot labels of the answers")
    query_batch: int = Field(128, ge=1, description="rows per black-box call")
    augment: bool = Field(True, description="augmented repeats once the pool is used up")
    train: TrainConfig = Field(default_factory=art_clone_training)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ArtAttackConfig:
        if self.policy == "adaptive" and self.method != "knockoffnets":
            raise ValueError("policy='adaptive' is KnockoffNets' only (copycat samples at random)")
        t = self.train
        unsupported = {
            "train.schedule": (t.schedule, "none"),
            "train.augment": (t.augment, False),
            "train.stop_after": (t.stop_after, None),
            "train.val_fraction": (t.val_fraction, 0.0),
        }
        for field, (value, allowed) in unsupported.items():
            if value != allowed:
                raise ValueError(
                    f"{field}: ART's training loop cannot do it (got {value!r}, use {allowed!r})"
                )
        return self


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators (ART draws from both), restore them after.

    ART's attacks sample with numpy's legacy global functions, so there is no generator to
    pass them; the global state is seeded for the call and put back as it was.
    """
    state = np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        try:
            yield
        finally:
            np.random.set_state(state)  # noqa: NPY002


def art_pytorch_classifier(
    model: nn.Module,
    train: TrainConfig,
    input_shape: tuple[int, ...],
    nb_classes: int,
    device: torch.device | str | None = None,
) -> Any:
    """``model`` (logits, pixels in [0, 1]) as an ART ``PyTorchClassifier`` ART can train.

    ART places it on the CPU, or on ``torch.cuda.current_device()`` for any CUDA ``device``.
    """
    dev = torch.device(device if device is not None else "cpu")
    model.to(dev)
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        optimizer=optimizer_for(model, train),
        input_shape=tuple(input_shape),
        nb_classes=int(nb_classes),
        clip_values=(0.0, 1.0),
        device_type="cpu" if dev.type == "cpu" else "gpu",
    )


def _fit_labels(answers: Tensor, one_hot: bool) -> np.ndarray:
    labels = one_hot_argmax(answers) if one_hot else answers
    return labels.numpy().astype(np.float32)


class ArtExtraction:
    """ART's ``KnockoffNets`` or ``CopycatCNN`` with a stealproof attack's entry point :meth:`run`.

    ART queries the black box through :func:`as_art_classifier` and trains the clone (a
    stealproof model from ``make_clone``) as an ART ``PyTorchClassifier``. Random sampling
    (KnockoffNets random, CopycatCNN) is given exactly ``budget`` candidate rows drawn from the
    pool as stealproof's KnockoffNets draws them (a seeded permutation, then augmented repeats),
    which ART sends in its own random order; adaptive KnockoffNets samples the pool's groups one
    row per query and, as ART does, trains on one-hot labels. ART's global numpy and torch
    randomness is seeded from ``seed`` and restored afterwards.

    When the box refuses a query (budget spent, client blocked) ART's ``extract`` stops with
    the error and keeps nothing; this adapter then trains a fresh clone the same way on what
    was answered and returns normally (``stopped`` says why), like every stealproof attack.
    """

    def __init__(self, config: ArtAttackConfig | None = None, /, **params: object) -> None:
        self.config = config if config is not None else ArtAttackConfig.model_validate(params)
        self.name = f"art:{self.config.method}"

    def _art_attack(self, victim: Any, budget: int, epochs: int) -> Any:
        cfg = self.config
        common: dict[str, Any] = {
            "classifier": victim,
            "batch_size_fit": cfg.train.batch_size,
            "batch_size_query": cfg.query_batch,
            "nb_epochs": epochs,
            "nb_stolen": budget,
            "use_probability": not cfg.label_only,
        }
        if cfg.method == "copycat":
            return _ArtCopycatCNN(**common)
        return _ArtKnockoffNets(
            **common, sampling_strategy=cfg.policy, reward=cfg.reward, verbose=False
        )

    def _candidates(self, pool: Pool, budget: int) -> tuple[np.ndarray, np.ndarray | None]:
        """What ART's ``extract`` gets: (x, y) — y only for adaptive sampling (pool groups)."""
        cfg = self.config
        if cfg.policy == "adaptive":
            groups = torch.unique(pool.groups, return_inverse=True)[1]
            return pool.images.numpy().astype(np.float32), groups.numpy()
        g = torch.Generator().manual_seed(cfg.seed)
        drawn, _ = pool.draw(budget, g, augment=cfg.augment)
        return drawn.numpy().astype(np.float32), None

    def run(
        self,
        blackbox: BlackBoxLike,
        pool: Pool,
        budget: int,
        make_clone: CloneFactory,
        *,
        eval_data: tuple[Tensor, Tensor] | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> AttackResult:
        """Let ART spend ``budget`` rows of ``blackbox`` and train the clone; score it on
        ``eval_data`` when given (the trace only, never selection)."""
        cfg = self.config
        check_budget(blackbox, budget)
        pool_shape = tuple(int(s) for s in pool.images.shape[1:])
        if blackbox.input_shape is not None and tuple(blackbox.input_shape) != pool_shape:
            raise InputValidationError(
                f"pool {pool.name!r}: images are {pool_shape}, the black box takes "
                f"{tuple(blackbox.input_shape)}"
            )
        shape, classes = _box_io(blackbox, pool_shape, None)
        guard = QueryGuard(blackbox, self.name)
        x, y = self._candidates(pool, budget)
        epochs = effective_epochs(cfg.train, budget)
        with _progress.task(progress, f"{self.name}: query and train", total=budget) as step:
            predict = BoxPredict(blackbox, record=True, on_rows=step)
            victim = BlackBoxClassifier(
                predict_fn=predict, input_shape=shape, nb_classes=classes, clip_values=(0.0, 1.0)
            )
            with _seeded(cfg.seed):
                clone = make_clone()
                thief = art_pytorch_classifier(clone, cfg.train, shape, classes, device)
                attack = self._art_attack(victim, budget, epochs)
                with guard.refusals():
                    attack.extract(x, y, thieved_classifier=thief)
        transfer = predict.transcript()
        if guard.stopped:
            clone = self._fit_answered(make_clone, transfer, shape, classes, device)
        clone.eval()
        outcome = guard.outcome()
        return AttackResult(
            clone=clone,
            transfer=transfer,
            trace=[evaluate_trace_point(clone, outcome["queries_used"], eval_data)],
            train_result=None,
            **outcome,
        )

    def _fit_answered(
        self,
        make_clone: CloneFactory,
        transfer: TransferSet,
        shape: tuple[int, ...],
        classes: int,
        device: torch.device | str | None,
    ) -> nn.Module:
        """A fresh clone trained by ART's ``fit`` on the rows answered before a refusal."""
        cfg = self.config
        with _seeded(cfg.seed):
            clone = make_clone()
            if len(transfer) == 0:
                return clone.to(device) if device is not None else clone
            thief = art_pytorch_classifier(clone, cfg.train, shape, classes, device)
            one_hot = cfg.label_only or cfg.policy == "adaptive"
            thief.fit(
                transfer.images.numpy(),
                _fit_labels(transfer.answers, one_hot),
                batch_size=cfg.train.batch_size,
                nb_epochs=effective_epochs(cfg.train, len(transfer)),
            )
        return clone


def art_attack(method: str, /, **params: Any) -> ArtExtraction:
    """ART's extraction attack ``method`` as a stealproof attack.

    ``method``: ``"knockoffnets"`` or ``"copycat"`` (an ``art:`` prefix is accepted, as on the
    command line); ``params``: the fields of :class:`ArtAttackConfig`.
    """
    name = method.removeprefix("art:") if isinstance(method, str) else method
    known = [n.removeprefix("art:") for n in ART_ATTACKS]
    if name not in known:
        from stealproof._names import unknown_name_message

        raise UnknownNameError(unknown_name_message("ART attack", str(method), known))
    return ArtExtraction(ArtAttackConfig.model_validate({**params, "method": name}))


__all__ = [
    "POSTERIOR_ONLY",
    "ArtAttackConfig",
    "ArtExtraction",
    "ArtNotInstalledError",
    "BoxPredict",
    "DefensePostprocessor",
    "InputTap",
    "art_attack",
    "art_clone_training",
    "art_pytorch_classifier",
    "as_art_classifier",
    "as_art_postprocessor",
    "reads_inputs",
]
