"""Jacobian-based dataset augmentation: JBDA (Papernot et al., 2017), JB-self and JB-top3 (PRADA).

All three start from a small seed set of real images (100–150 in the papers; the caller passes
them) and run rounds of

1. train a substitute from scratch on every (image, answer) pair collected so far (with
   :func:`~stealproof.attacks.base.train_clone`: selected on the thief's own held-out answers);
2. derive new points from *every* point collected so far (see below), clamped to [0, 1];
3. query the new points and add them, exactly as sent, to the transfer set.

They differ only in step 2. With ``label(x)`` the argmax of the answer stored for ``x``,
``sub`` the substitute, CE the cross-entropy and ``s_ρ = (−1)^⌊ρ/τ⌋`` the step sign of round
ρ = 0, 1, … (``+`` for rounds 0..τ−1, ``−`` for τ..2τ−1, and so on):

* **JBDA**: ``x' = clip(x + s_ρ·λ·sign(∇ₓ CE(sub(x), label(x))))`` — one new point per point.
  (Papernot et al. write it as ``x + λ_ρ·sign(J_sub(x)[label(x)])``, the gradient of the
  label's output; that is the opposite sign of the CE gradient, so the two differ only in which
  half-period comes first.)
* **JB-self**: the same step, but the label in the CE is the substitute's *own* prediction
  ``argmax sub(x)`` instead of the black box's answer — the step pushes away from (or, with the
  other sign, towards) what the substitute currently believes, without looking at the victim.
  Where the substitute agrees with the answer the two are identical; they differ on exactly
  the points the substitute gets wrong. (The PRADA/Prediction-Poisoning reference instead
  queries ``x − δ`` with δ computed on the victim's label and then stores ``x + δ``, an image
  it never sent; here the stored image is always the queried one.)
* **JB-top3**: for each point, the substitute's ``top_k`` = 3 highest-scoring classes other
  than ``label(x)`` are targets; for each target a targeted PGD (``steps`` = 8 steps of
  ``step_size`` = 0.01 descending CE(sub(x'), target), projected onto the L∞ ball of radius 0.1
  around ``x`` and onto [0, 1]) gives one new point — 3 queries per point, point-major order
  (point 0's three targets, then point 1's, …). The direction is set by the targets, so there
  is no alternating sign.

Budget: counted in rows of the black box and never exceeded. The seed set is queried first
(only its first ``budget`` images if it is larger). When a round's new points do not fit in
what is left, only the first ones that fit are queried and the attack stops after training on
them. ``rounds`` caps the augmentation rounds (``None``: until the budget is spent; the set
doubles — JB-top3: quadruples — every round). The clone is the substitute of the last round;
the trace has one point per round (queries so far, clone accuracy on ``eval_data`` if given,
which never influences training or selection). Left out from the reference: reservoir
sampling of the points to augment (κ, σ) and the final longer training run.

Refusals: when the black box refuses a query (the client was blocked, or its budget ran out)
the answered part of the round joins the transfer set, the substitute is trained once more on
everything answered (unless nothing new came in) and the attack returns with ``stopped`` set.
"""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn

from stealproof import _progress
from stealproof._validate import check_images
from stealproof.attacks.base import (
    AttackResult,
    BlackBoxLike,
    CloneFactory,
    QueryGuard,
    TracePoint,
    TransferSet,
    check_budget,
    evaluate_trace_point,
    fit_clone,
)
from stealproof.attacks.knockoff import default_clone_training
from stealproof.errors import InputValidationError
from stealproof.train import TrainConfig, TrainResult


class JacobianConfig(BaseModel):
    """Options shared by :class:`JBDA`, :class:`JBSelf` and :class:`JBTop3`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int | None = Field(
        None, ge=0, description="augmentation rounds at most (None: until the budget is spent)"
    )
    label_only: bool = Field(False, description="train on argmax of the answers")
    query_batch: int = Field(128, ge=1, description="rows per black-box call")
    grad_batch: int = Field(1024, ge=1, description="rows per vectorised gradient pass")
    holdout: float = Field(0.1, ge=0, lt=1, description="thief's own validation share")
    train: TrainConfig = Field(default_factory=default_clone_training)
    seed: int = 0


class JBDAConfig(JacobianConfig):
    """Parameters of :class:`JBDA` and :class:`JBSelf`."""

    lam: float = Field(0.1, gt=0, description="step size λ of the sign step")
    tau: int = Field(5, ge=1, description="rounds between flips of the step's sign")


class JBTop3Config(JacobianConfig):
    """Parameters of :class:`JBTop3`."""

    top_k: int = Field(3, ge=1, description="target classes (new queries) per point")
    steps: int = Field(8, ge=1, description="PGD steps per target")
    step_size: float = Field(0.01, gt=0, description="PGD step (L∞)")
    radius: float = Field(0.1, gt=0, description="L∞ radius around the original point")


# ----------------------------------------------------------------------------- building blocks


def step_sign(round_index: int, tau: int) -> int:
    """``(−1)^⌊ρ/τ⌋``: +1 for rounds 0..τ−1, −1 for τ..2τ−1, +1 again from 2τ, …"""
    if round_index < 0 or tau < 1:
        raise InputValidationError(
            f"step_sign: need round ≥ 0 and tau ≥ 1, got round {round_index}, tau {tau}"
        )
    return -1 if (round_index // tau) % 2 else 1


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _ce_input_grad(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """∇ₓ of Σ_i CE(model(x_i), labels_i): row i's gradient is that of its own loss."""
    xg = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xg), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    return grad


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _EvalMode:
    """Put a model in eval mode for the block and restore every module's mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.train(mode)


def loss_gradient_sign(
    model: nn.Module, x: Tensor, labels: Tensor, *, batch_size: int = 1024
) -> Tensor:
    """``sign(∇ₓ CE(model(x), labels))`` per row, vectorised over batches of ``batch_size``."""
    dev = _device_of(model)
    out = torch.empty_like(x)
    with _EvalMode(model), torch.enable_grad():
        for sl in _chunks(x.shape[0], batch_size):
            g = _ce_input_grad(model, x[sl].to(dev), labels[sl].to(dev))
            out[sl] = g.sign().to(out.device)
    return out


def jacobian_step(
    model: nn.Module, x: Tensor, labels: Tensor, step: float, *, batch_size: int = 1024
) -> Tensor:
    """``clip_[0,1](x + step·sign(∇ₓ CE(model(x), labels)))`` (``step`` carries the sign)."""
    return (x + step * loss_gradient_sign(model, x, labels, batch_size=batch_size)).clamp(0.0, 1.0)


@torch.no_grad()
def predicted_labels(model: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """``argmax model(x)`` per row, in eval mode."""
    dev = _device_of(model)
    with _EvalMode(model):
        parts = [model(x[sl].to(dev)).argmax(dim=1).cpu() for sl in _chunks(x.shape[0], batch_size)]
    return torch.cat(parts).to(x.device)


@torch.no_grad()
def top_other_classes(
    model: nn.Module, x: Tensor, exclude: Tensor, k: int, *, batch_size: int = 1024
) -> Tensor:
    """[N, k] classes with the highest scores of ``model`` other than ``exclude`` (best first)."""
    dev = _device_of(model)
    with _EvalMode(model):
        parts = []
        for sl in _chunks(x.shape[0], batch_size):
            logits = model(x[sl].to(dev)).float()
            logits.scatter_(1, exclude[sl].to(dev)[:, None], float("-inf"))
            parts.append(logits.topk(k, dim=1).indices.cpu())
    return torch.cat(parts).to(x.device)


def targeted_pgd(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    *,
    steps: int = 8,
    step_size: float = 0.01,
    radius: float = 0.1,
    batch_size: int = 1024,
) -> Tensor:
    """Targeted L∞ PGD: ``steps`` sign steps descending CE(model(x'), targets).

    After every step x' is projected onto ``[x − radius, x + radius] ∩ [0, 1]``.
    """
    dev = _device_of(model)
    out = torch.empty_like(x)
    with _EvalMode(model), torch.enable_grad():
        for sl in _chunks(x.shape[0], batch_size):
            x0, t = x[sl].to(dev), targets[sl].to(dev)
            lo, hi = (x0 - radius).clamp_min(0.0), (x0 + radius).clamp_max(1.0)
            xa = x0.clone()
            for _ in range(steps):
                g = _ce_input_grad(model, xa, t)
                xa = torch.minimum(torch.maximum(xa - step_size * g.sign(), lo), hi)
            out[sl] = xa.detach().to(out.device)
    return out


# ----------------------------------------------------------------------------- the attacks

C = TypeVar("C", bound=JacobianConfig)


class _JacobianAttack(Generic[C]):
    """The shared round loop; subclasses define :meth:`augment`."""

    name: ClassVar[str]

    def __init__(self, config: C) -> None:
        self.config = config

    def augment(
        self, substitute: nn.Module, images: Tensor, answers: Tensor, round_index: int, limit: int
    ) -> Tensor:
        """New points derived from ``images`` (with their ``answers``) after round ``round_index``.

        Returns at most ``limit`` rows: the first ones of the full round, in order.
        """
        raise NotImplementedError

    def run(
        self,
        blackbox: BlackBoxLike,
        seed_images: Tensor,
        budget: int,
        make_clone: CloneFactory,
        *,
        eval_data: tuple[Tensor, Tensor] | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> AttackResult:
        """Spend at most ``budget`` rows; return the last substitute, transfer set and trace.

        ``eval_data`` only scores the trace, never trains or selects.
        """
        cfg = self.config
        seeds = check_images(seed_images, "seed_images", shape=blackbox.input_shape)
        check_budget(blackbox, budget)
        guard = QueryGuard(blackbox, self.name)
        k = blackbox.num_classes or 0
        trace: list[TracePoint] = []
        with _progress.task(progress, f"querying ({self.name})", total=budget) as step:

            def ask(x: Tensor) -> Tensor:
                """Answers to the rows of ``x`` in order: all of them, or the part answered
                before a refusal."""
                parts: list[Tensor] = []
                with guard.refusals():
                    for sl in _chunks(x.shape[0], cfg.query_batch):
                        parts.append(blackbox.query(x[sl]).detach().cpu().float())
                        step(sl.stop - sl.start)
                return torch.cat(parts) if parts else torch.empty(0, k)

            images = seeds[:budget].detach().to("cpu", torch.float32).contiguous()
            answers = ask(images)
            images = images[: answers.shape[0]]
            round_index = 0
            while True:
                clone, tr = self._train(make_clone, images, answers, round_index, device, progress)
                trace.append(evaluate_trace_point(clone, guard.used, eval_data))
                room = budget - images.shape[0]
                if guard.stopped or room <= 0:
                    break
                if cfg.rounds is not None and round_index >= cfg.rounds:
                    break
                new = self.augment(clone, images, answers, round_index, room)[:room]
                new = new.detach().to("cpu", torch.float32).contiguous()
                got = ask(new)
                if got.shape[0] == 0:  # refused at once: the last substitute saw everything
                    break
                answers = torch.cat([answers, got])
                images = torch.cat([images, new[: got.shape[0]]])
                round_index += 1
        return AttackResult(
            clone=clone,
            transfer=TransferSet(images, answers),
            trace=trace,
            train_result=tr,
            **guard.outcome(),
        )

    def _train(
        self,
        make_clone: CloneFactory,
        images: Tensor,
        answers: Tensor,
        round_index: int,
        device: torch.device | str | None,
        progress: Progress | None,
    ) -> tuple[nn.Module, TrainResult | None]:
        cfg = self.config
        labels = " (labels)" if cfg.label_only else ""
        return fit_clone(
            make_clone,
            TransferSet(images, answers),
            cfg.train,
            label_only=cfg.label_only,
            holdout=cfg.holdout,
            seed=cfg.seed,
            device=device,
            progress=progress,
            description=f"{self.name} substitute{labels}, round {round_index}",
        )


class JBDA(_JacobianAttack[JBDAConfig]):
    """JBDA (Papernot et al.): sign steps on the substitute's CE gradient at the answer's label."""

    name: ClassVar[str] = "jbda"

    def __init__(self, config: JBDAConfig | None = None, /, **params: object) -> None:
        super().__init__(config if config is not None else JBDAConfig.model_validate(params))

    def step_labels(self, substitute: nn.Module, images: Tensor, answers: Tensor) -> Tensor:
        """The label whose CE gradient gives the step: the black box's answer (argmax)."""
        return answers.argmax(dim=1)

    def augment(
        self, substitute: nn.Module, images: Tensor, answers: Tensor, round_index: int, limit: int
    ) -> Tensor:
        cfg = self.config
        x, y = images[:limit], answers[:limit]
        lam = step_sign(round_index, cfg.tau) * cfg.lam
        labels = self.step_labels(substitute, x, y)
        return jacobian_step(substitute, x, labels, lam, batch_size=cfg.grad_batch)


class JBSelf(JBDA):
    """JB-self (PRADA): JBDA's step, at the substitute's own predicted label."""

    name: ClassVar[str] = "jb-self"

    def step_labels(self, substitute: nn.Module, images: Tensor, answers: Tensor) -> Tensor:
        """The substitute's own prediction ``argmax sub(x)`` (the answers are not used)."""
        return predicted_labels(substitute, images, batch_size=self.config.grad_batch)


class JBTop3(_JacobianAttack[JBTop3Config]):
    """JB-top3 (PRADA): targeted PGD toward the substitute's top-3 classes other than the label."""

    name: ClassVar[str] = "jb-top3"

    def __init__(self, config: JBTop3Config | None = None, /, **params: object) -> None:
        super().__init__(config if config is not None else JBTop3Config.model_validate(params))

    def augment(
        self, substitute: nn.Module, images: Tensor, answers: Tensor, round_index: int, limit: int
    ) -> Tensor:
        cfg = self.config
        k = min(cfg.top_k, answers.shape[1] - 1)
        n_points = min(images.shape[0], -(-limit // k))
        x, y = images[:n_points], answers[:n_points].argmax(dim=1)
        targets = top_other_classes(substitute, x, y, k, batch_size=cfg.grad_batch)
        x_rep = x.repeat_interleave(k, dim=0)  # point-major: point i's k targets in a row
        return targeted_pgd(
            substitute,
            x_rep,
            targets.reshape(-1),
            steps=cfg.steps,
            step_size=cfg.step_size,
            radius=cfg.radius,
            batch_size=cfg.grad_batch,
        )


#: The Jacobian-family attacks by registered name.
JACOBIAN_ATTACKS: dict[str, type[JBDA] | type[JBTop3]] = {
    JBDA.name: JBDA,
    JBSelf.name: JBSelf,
    JBTop3.name: JBTop3,
}


def create_jacobian_attack(name: str, **params: object) -> JBDA | JBTop3:
    """``jbda``, ``jb-self`` or ``jb-top3`` with the given config parameters."""
    if name not in JACOBIAN_ATTACKS:
        from stealproof._names import unknown_name_message
        from stealproof.errors import UnknownNameError

        raise UnknownNameError(unknown_name_message("attack", name, list(JACOBIAN_ATTACKS)))
    return JACOBIAN_ATTACKS[name](**params)
