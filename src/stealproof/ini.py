"""InI — Isolation and Induction (Guo et al., ACM MM 2023): a training-time defense.

The victim V (parameters θ) is trained so that a thief who distils it learns little. A clone C
(parameters φ) of the same architecture, **randomly initialised and frozen** (eval mode), stands
in for the thief's model at the start of its training. Per step, on an in-distribution batch
(x, y) and an out-of-distribution batch x̃ (a proxy for the thief's queries)::

    L = CE(V(x), y) + γ·L_ood + δ·L_iso + ε·L_gind + β·L_id

- ``L_ood = mean|C(x̃) − T(V(x̃))|`` with C detached and ``T(z) = log_softmax(z) − mean_k
  log_softmax(z)_k`` (*induction*: on OOD queries V answers like an untrained clone);
  ``induction="max_entropy"`` maximises the entropy of V on x̃ instead (``L_ood = −mean H``);
- ``L_iso = cos(g_adv, g_exp)``: ``g_adv = ∇_φ D(C(x), V(x))`` is the update the thief's
  distillation would make (a function of θ), ``g_exp = ∇_φ CE(C(x), y)`` the update true labels
  would make (a constant); cosine over the flattened φ (*isolation*: V's answers teach the thief
  nothing useful even on in-distribution queries);
- ``L_gind = mean_j |∇_φ D(C(x̃), V(x̃))_j|`` (*gradient induction*: shrink what the thief learns
  from OOD queries);
- ``L_id = −mean|C(x) − T(V(x))|`` (C detached; the reference's in-distribution distance term,
  off by default: β = 0).

D is the thief's distillation loss, the forward ``KL(p_V ‖ p_C)`` averaged over the batch
(``divergence="forward"``, the default); ``divergence="reference"`` is the reference code's
swapped order ``KL(p_C ‖ p_V)``.

Two engines compute the same θ-gradients:

- ``engine="reference"``: second-order autograd — ``g`` by ``torch.autograd.grad(...,
  create_graph=True)`` w.r.t. φ, then backward through that graph.
- ``engine="fast"`` (default): no second-order autograd. ``∇_φ D = (1/B) Σᵢ Jᵢᵀ rᵢ`` with
  ``Jᵢ = ∂C(xᵢ)/∂φ`` (C's logits) and ``rᵢ = ∂Dᵢ/∂C(xᵢ)``: ``rᵢ = p_C,ᵢ − p_V,ᵢ`` for the
  forward KL, ``rᵢ = p_C ⊙ (a − ⟨p_C, a⟩)`` with ``a = log p_C − log p_V`` for the reference
  order. C is frozen, so ``g`` depends on θ only through ``rᵢ``. For a scalar ``F(g)``: ``g`` by
  one VJP through C, ``v = ∂F/∂g`` in closed form (cosine: ``e/(‖g‖‖e‖) − F·g/‖g‖²``;
  mean-abs: ``sign(g)/P``), ``uᵢ = Jᵢ v`` by one batched JVP through C, and
  ``S(θ) = (1/B) Σᵢ ⟨stopgrad(uᵢ), rᵢ(θ)⟩`` has ``∇_θ S = (1/B) Σᵢ (∂rᵢ/∂θ)ᵀ Jᵢ v =
  ∇_θ F(g(θ))`` exactly (chain rule). The term returned is ``F + S − stopgrad(S)``: F's value,
  S's gradient. Cost: one backward and one JVP through C per term, instead of a
  double-backward graph.

Training (:func:`train_ini`): SGD lr 0.1, momentum 0.5, weight decay 1e-3, StepLR ×0.1 every
20 epochs over 50 for MNIST-like data (every 50 over 150 otherwise), batch 128 ID + 128 OOD,
gradient-norm clipping at 10 (as the reference). The per-term gradients are combined by PCGrad
(Yu et al., 2020) by default, as the reference does — one victim backward per term;
``pcgrad=False`` sums the terms instead (cheaper, but the victim lost 7.4 points on mnist5k).
The trained victim is an ordinary classifier: serving it costs nothing extra.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn
from torch.func import functional_call

from stealproof import _progress
from stealproof._torchfunc import quiet_jvp
from stealproof._validate import check_images, check_labels
from stealproof.data.datasets import Dataset
from stealproof.data.pools import Pool, load_pool
from stealproof.data.transforms import random_affine
from stealproof.errors import InputValidationError
from stealproof.metrics import clone_accuracy
from stealproof.models.base import Classifier
from stealproof.models.registry import create_model

log = logging.getLogger(__name__)

#: Loss-term names, in the order of the objective.
TERMS: tuple[str, ...] = ("ce", "ood", "iso", "gind", "id")

Divergence = Literal["forward", "reference"]
Induction = Literal["l1", "max_entropy"]
Engine = Literal["fast", "reference"]
PcgradReduction = Literal["sum", "mean"]

_NORM_FLOOR = 1e-12  # norms below this are clamped in the cosine (both engines alike)


class IniConfig(BaseModel):
    """Weights, loss options, engine and optimisation of :func:`train_ini`.

    ``epochs`` and ``step_size`` left at ``None`` follow the paper: 50 epochs with the learning
    rate ×0.1 every 20 for MNIST-like data (one input channel), 150 epochs and every 50 otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    gamma: float = Field(0.3, ge=0, description="weight of L_ood (output induction on OOD data)")
    delta: float = Field(1.0, ge=0, description="weight of L_iso (gradient isolation on ID data)")
    eps: float = Field(1000.0, ge=0, description="weight of L_gind (gradient induction, OOD)")
    beta: float = Field(0.0, ge=0, description="weight of L_id (ID distance from the clone)")
    divergence: Divergence = Field(
        "forward", description="thief's loss D: forward KL(p_V‖p_C) or the reference KL(p_C‖p_V)"
    )
    induction: Induction = Field(
        "l1", description="L_ood: L1 to the clone's logits, or maximise V's entropy on OOD data"
    )
    engine: Engine = Field("fast", description="fast (JVP/VJP) or reference (double backward)")
    pcgrad: bool = Field(True, description="project conflicting per-term gradients (PCGrad)")
    pcgrad_reduction: PcgradReduction = Field(
        "sum",
        description="how PCGrad combines the projected terms: sum (the PCGrad paper; on mnist5k "
        "victim 97.1%, KnockoffNets clone 65.6%) or mean (the InI reference code, which also "
        "does not clip on that path: add max_grad_norm=None for its exact step; measured "
        "95.7% and 79.3%)",
    )
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1)
    weight_decay: float = Field(1e-3, ge=0)
    schedule: Literal["step", "cosine", "none"] = "step"
    step_size: int | None = Field(None, ge=1, description="epochs between ×step_gamma decays")
    step_gamma: float = Field(0.1, gt=0, le=1)
    epochs: int | None = Field(None, ge=1, description="None: 50 MNIST-like, 150 otherwise")
    batch_size: int = Field(128, ge=1, description="in-distribution batch")
    ood_batch_size: int | None = Field(None, ge=1, description="OOD batch (None: batch_size)")
    ood_augment: bool = Field(
        True, description="augment OOD images repeated within an epoch (small pools)"
    )
    max_grad_norm: float | None = Field(
        10.0, gt=0, description="clip the victim's gradient norm (the reference's 10); None: off"
    )
    seed: int = 0

    def resolved(self, mnist_like: bool) -> IniConfig:
        """The config with ``epochs``/``step_size``/``ood_batch_size`` filled in."""
        return self.model_copy(
            update={
                "epochs": self.epochs or (50 if mnist_like else 150),
                "step_size": self.step_size or (20 if mnist_like else 50),
                "ood_batch_size": self.ood_batch_size or self.batch_size,
            }
        )

    def weights(self) -> dict[str, float]:
        """Weight of each term of the objective (CE has weight 1)."""
        return {
            "ce": 1.0,
            "ood": self.gamma,
            "iso": self.delta,
            "gind": self.eps,
            "id": self.beta,
        }


# ------------------------------------------------------------------------ pure loss functions


def centered_log_softmax(logits: Tensor) -> Tensor:
    """``T(z) = log_softmax(z) − mean_k log_softmax(z)_k`` (zero mean over classes)."""
    logp = F.log_softmax(logits, dim=1)
    return logp - logp.mean(dim=1, keepdim=True)


def induction_loss(clone_logits: Tensor, victim_logits: Tensor, induction: Induction) -> Tensor:
    """``mean|C − T(V)|`` (C detached) or, for ``max_entropy``, ``−mean H(softmax(V))``."""
    if induction == "max_entropy":
        logp = F.log_softmax(victim_logits, dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1)
        return -entropy.mean()
    return (clone_logits.detach() - centered_log_softmax(victim_logits)).abs().mean()


def distillation_divergence(
    clone_logits: Tensor, victim_logits: Tensor, divergence: Divergence = "forward"
) -> Tensor:
    """The thief's loss D averaged over the batch: ``KL(p_V‖p_C)`` or ``KL(p_C‖p_V)``."""
    log_c = F.log_softmax(clone_logits, dim=1)
    log_v = F.log_softmax(victim_logits, dim=1)
    if divergence == "forward":
        return (log_v.exp() * (log_v - log_c)).sum(dim=1).mean()
    return (log_c.exp() * (log_c - log_v)).sum(dim=1).mean()


def divergence_residual(
    clone_logits: Tensor, victim_logits: Tensor, divergence: Divergence = "forward"
) -> Tensor:
    """``rᵢ = ∂Dᵢ/∂C(xᵢ)`` per row ``[B, K]`` (differentiable in the victim's logits).

    Forward KL: ``p_C − p_V``. Reference order: ``p_C ⊙ (a − ⟨p_C, a⟩)`` with
    ``a = log p_C − log p_V``. Rows sum to zero in both cases.
    """
    log_c = F.log_softmax(clone_logits, dim=1)
    log_v = F.log_softmax(victim_logits, dim=1)
    p_c = log_c.exp()
    if divergence == "forward":
        return p_c - log_v.exp()
    a = log_c - log_v
    return p_c * (a - (p_c * a).sum(dim=1, keepdim=True))


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``⟨a, b⟩`` of two parameter-shaped tuples (as flattened vectors)."""
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


def flat_cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Cosine between two parameter-shaped tuples, as if each were flattened into one vector.

    Norms are clamped below at 1e-12 (a zero gradient has cosine 0, not NaN).
    """
    na = _dot(a, a).sqrt().clamp_min(_NORM_FLOOR)
    nb = _dot(b, b).sqrt().clamp_min(_NORM_FLOOR)
    return _dot(a, b) / (na * nb)


def flat_cosine_grad(a: Sequence[Tensor], b: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``cos(a, b)`` and its gradient w.r.t. ``a`` in closed form (b constant).

    ``∂cos/∂a = b/(‖a‖‖b‖) − cos·a/‖a‖²`` (with the norm floor of :func:`flat_cosine`: below it
    ‖a‖ is a constant and the second term vanishes).
    """
    raw_na = _dot(a, a).sqrt()
    na = raw_na.clamp_min(_NORM_FLOOR)
    nb = _dot(b, b).sqrt().clamp_min(_NORM_FLOOR)
    cos = _dot(a, b) / (na * nb)
    shrink = cos / na**2 if bool(raw_na >= _NORM_FLOOR) else torch.zeros_like(cos)
    grad = tuple(y / (na * nb) - shrink * x for x, y in zip(a, b, strict=True))
    return cos, grad


def mean_abs(g: Sequence[Tensor]) -> Tensor:
    """``mean_j |g_j|`` over every entry of a parameter-shaped tuple."""
    return torch.stack([t.abs().sum() for t in g]).sum() / sum(t.numel() for t in g)


# ------------------------------------------------------------------------ the loss terms


@dataclass
class IniLosses:
    """The loss terms of one step. Each is a scalar whose value is the term's value and whose
    gradient w.r.t. the victim's parameters is exact (for either engine); terms that were not
    computed are zero constants."""

    ce: Tensor
    ood: Tensor
    iso: Tensor
    gind: Tensor
    id: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in TERMS}

    def total(self, weights: dict[str, float]) -> Tensor:
        """``Σ weight·term`` over the terms."""
        return cast(Tensor, sum(weights[name] * term for name, term in self.as_dict().items()))


def _clone_params(clone: nn.Module, requires_grad: bool) -> dict[str, Tensor]:
    return {name: p.detach().requires_grad_(requires_grad) for name, p in clone.named_parameters()}


_TRACED_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _traceable(clone: nn.Module, params: dict[str, Tensor]) -> bool:
    """True for a plain Sequential classifier in eval mode that :class:`_CloneForward` traces."""
    body = getattr(clone, "body", None)
    normalize = getattr(clone, "normalize", None)
    if clone.training or not isinstance(body, nn.Sequential):
        return False
    if not isinstance(normalize, nn.Module) or any(True for _ in normalize.parameters()):
        return False
    expected: set[str] = set()
    for i, layer in enumerate(body):
        if not isinstance(layer, _TRACED_LAYERS):
            return False
        if isinstance(layer, nn.Conv2d) and (
            layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
        ):
            return False
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            expected.add(f"body.{i}.weight")
            if layer.bias is not None:
                expected.add(f"body.{i}.bias")
        elif any(True for _ in layer.parameters()):
            return False
    return expected == set(params)


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _CloneForward:
    """C(x) under parameters ``params``, and ``Jᵢ v`` for any φ-direction ``v``.

    For a plain Sequential clone the forward keeps what an exact hand-written JVP needs (the
    input of every Conv/Linear, ReLU outputs, pooling argmax), so ``J v`` costs about two
    forwards; other architectures use ``torch.func.jvp`` (which recomputes the primal).
    """

    def __init__(
        self, clone: nn.Module, params: dict[str, Tensor], x: Tensor, *, trace: bool = True
    ) -> None:
        self.clone, self.params, self.x = clone, params, x
        self.saved: list[Tensor | None] | None = None
        if not (trace and _traceable(clone, params)):
            self.logits = cast(Tensor, functional_call(clone, params, (x,)))
            return
        body = cast(nn.Sequential, clone.body)
        h = cast(Tensor, cast(nn.Module, clone.normalize)(x))
        saved: list[Tensor | None] = []
        for i, layer in enumerate(body):
            if isinstance(layer, nn.Conv2d):
                saved.append(h.detach())
                weight, bias = params[f"body.{i}.weight"], params.get(f"body.{i}.bias")
                h = F.conv2d(
                    h,
                    weight,
                    bias,
                    layer.stride,
                    cast(tuple[int, int], layer.padding),
                    layer.dilation,
                )
            elif isinstance(layer, nn.Linear):
                saved.append(h.detach())
                h = F.linear(h, params[f"body.{i}.weight"], params.get(f"body.{i}.bias"))
            elif isinstance(layer, nn.ReLU):
                h = F.relu(h)
                saved.append(h.detach())
            elif isinstance(layer, nn.MaxPool2d):
                h, where = F.max_pool2d_with_indices(
                    h,
                    _pair(layer.kernel_size),
                    _pair(layer.stride),
                    _pair(layer.padding),
                    _pair(layer.dilation),
                    ceil_mode=layer.ceil_mode,
                )
                saved.append(where)
            else:  # Flatten; Dropout and Identity are the identity in eval mode
                h = layer(h)
                saved.append(None)
        self.logits, self.saved = h, saved

    def jvp(self, v: dict[str, Tensor]) -> Tensor:
        """``uᵢ = Jᵢ v`` ``[B, K]``: the derivative of every row's logits along ``v``."""
        if self.saved is None:
            primals = {k: t.detach() for k, t in self.params.items()}
            pair = quiet_jvp(lambda p: functional_call(self.clone, p, (self.x,)), (primals,), (v,))
            return cast(Tensor, pair[1]).detach()
        body = cast(nn.Sequential, self.clone.body)
        t: Tensor | None = None  # None: exactly zero (no parameter before this layer)
        for i, (layer, s) in enumerate(zip(body, self.saved, strict=True)):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                assert s is not None
                weight = self.params[f"body.{i}.weight"].detach()
                vw, vb = v[f"body.{i}.weight"], v.get(f"body.{i}.bias")
                if isinstance(layer, nn.Conv2d):
                    pad = cast(tuple[int, int], layer.padding)
                    out = F.conv2d(s, vw, vb, layer.stride, pad, layer.dilation)
                    if t is not None:
                        out = out + F.conv2d(t, weight, None, layer.stride, pad, layer.dilation)
                else:
                    out = F.linear(s, vw, vb)
                    if t is not None:
                        out = out + F.linear(t, weight)
                t = out
            elif t is None:
                continue
            elif isinstance(layer, nn.ReLU):
                assert s is not None
                # t ⊙ [relu output > 0] without materialising a float mask
                t = cast(Tensor, torch.ops.aten.threshold_backward(t, s, 0))
            elif isinstance(layer, nn.MaxPool2d):
                assert s is not None
                t = t.flatten(2).gather(2, s.flatten(2)).view(s.shape)
            else:
                t = layer(t)
        assert t is not None
        return t.detach()


def _grad_functional_fast(
    forward: _CloneForward,
    residual: Tensor,
    outer: Callable[[tuple[Tensor, ...]], tuple[Tensor, tuple[Tensor, ...]]],
) -> Tensor:
    """``F(g(θ))`` with ``g = (1/B) Σ Jᵢᵀ rᵢ(θ)``: F's value and its exact θ-gradient.

    ``forward`` was computed with φ leaves requiring grad, so ``g`` is one VJP through C;
    ``outer(g)`` returns ``(F(g), ∂F/∂g)``; ``u = J v`` is one JVP; the returned scalar is
    ``F + S − stopgrad(S)`` with ``S = (1/B) Σᵢ ⟨stopgrad(uᵢ), rᵢ(θ)⟩``.
    """
    b = residual.shape[0]
    names = list(forward.params)
    g = torch.autograd.grad(
        forward.logits,
        [forward.params[n] for n in names],
        residual.detach() / b,
        retain_graph=True,
    )
    value, v = outer(tuple(g))
    u = forward.jvp(dict(zip(names, v, strict=True)))
    surrogate = (u * residual).sum() / b
    return value.detach() + surrogate - surrogate.detach()


def ini_losses(
    victim: nn.Module,
    clone: nn.Module,
    x: Tensor,
    y: Tensor,
    x_ood: Tensor,
    *,
    divergence: Divergence = "forward",
    induction: Induction = "l1",
    engine: Engine = "fast",
    terms: Collection[str] = TERMS,
) -> IniLosses:
    """The InI loss terms for one ID batch (x, y) and one OOD batch x̃.

    ``victim`` is used as it is (train or eval mode); ``clone`` should be in eval mode and is
    never changed (its parameters are read, not updated). ``terms`` picks which terms to compute
    (the others are zero constants): skip the zero-weight ones to save time.
    """
    unknown = set(terms) - set(TERMS)
    if unknown:
        raise InputValidationError(f"terms: unknown {sorted(unknown)}; expected names in {TERMS}")
    if engine not in ("fast", "reference"):
        raise InputValidationError(f"engine: expected 'fast' or 'reference', got {engine!r}")
    y = y.long()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    out = IniLosses(ce=zero, ood=zero, iso=zero, gind=zero, id=zero)
    need_id = bool({"ce", "iso", "id"} & set(terms))
    need_ood = bool({"ood", "gind"} & set(terms))
    z_v = victim(x) if need_id else None
    z_vo = victim(x_ood) if need_ood else None
    if "ce" in terms:
        assert z_v is not None
        out.ce = F.cross_entropy(z_v, y)
    grad_needed = {"iso", "gind"} & set(terms)
    params = _clone_params(clone, requires_grad=bool(grad_needed))

    if "iso" in terms or "id" in terms:
        assert z_v is not None
        fwd = _CloneForward(clone, params, x, trace=engine == "fast")
        z_c = fwd.logits
        if "id" in terms:
            out.id = -(z_c.detach() - centered_log_softmax(z_v)).abs().mean()
        if "iso" in terms:
            names = list(params)
            leaves = [params[n] for n in names]
            b = x.shape[0]
            onehot = F.one_hot(y, z_c.shape[1]).to(z_c.dtype)
            r_exp = (F.softmax(z_c.detach(), dim=1) - onehot) / b
            g_exp = torch.autograd.grad(z_c, leaves, r_exp, retain_graph=True)
            if engine == "reference":
                d = distillation_divergence(z_c, z_v, divergence)
                g_adv = torch.autograd.grad(d, leaves, create_graph=True)
                out.iso = flat_cosine(g_adv, g_exp)
            else:
                r = divergence_residual(z_c.detach(), z_v, divergence)
                out.iso = _grad_functional_fast(fwd, r, lambda g: flat_cosine_grad(g, g_exp))

    if "ood" in terms or "gind" in terms:
        assert z_vo is not None
        fwd_o = _CloneForward(clone, params, x_ood, trace=engine == "fast")
        z_co = fwd_o.logits
        if "ood" in terms:
            out.ood = induction_loss(z_co, z_vo, induction)
        if "gind" in terms:
            leaves = list(params.values())
            if engine == "reference":
                d = distillation_divergence(z_co, z_vo, divergence)
                g_o = torch.autograd.grad(d, leaves, create_graph=True)
                out.gind = mean_abs(g_o)
            else:
                p_total = sum(t.numel() for t in leaves)

                def outer(g: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
                    return mean_abs(g), tuple(torch.sign(t) / p_total for t in g)

                r = divergence_residual(z_co.detach(), z_vo, divergence)
                out.gind = _grad_functional_fast(fwd_o, r, outer)
    return out


# ------------------------------------------------------------------------ PCGrad


def pcgrad(
    grads: Sequence[Tensor], generator: torch.Generator, reduction: PcgradReduction = "sum"
) -> Tensor:
    """PCGrad (Yu et al., 2020) over flattened per-term gradients ``[P]`` → combined ``[P]``.

    Each term's gradient is projected off the normal plane of every other term's (original)
    gradient it conflicts with (negative inner product), the others taken in a random order;
    the projected gradients are summed (PCGrad's paper), or averaged (``reduction="mean"``: what
    the InI reference code does).
    """
    if not grads:
        raise ValueError("pcgrad: needs at least one gradient")
    out = []
    n = len(grads)
    for i in range(n):
        gi = grads[i].clone()
        order = torch.randperm(n, generator=generator).tolist()
        for j in order:
            if j == i:
                continue
            gj = grads[j]
            dot = torch.dot(gi, gj)
            if dot < 0:
                gi = gi - dot / gj.pow(2).sum().clamp_min(1e-30) * gj
        out.append(gi)
    stacked = torch.stack(out)
    return stacked.mean(dim=0) if reduction == "mean" else stacked.sum(dim=0)


# ------------------------------------------------------------------------ trainer


@dataclass
class IniResult:
    """What :func:`train_ini` did: the (trained, eval-mode) victim, history, test accuracy."""

    victim: nn.Module
    config: IniConfig
    history: list[dict[str, float]] = field(default_factory=list)
    test_acc: float | None = None

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall seconds of the training epochs (evaluation excluded)."""
        if not self.history:
            return 0.0
        return sum(r["seconds"] for r in self.history) / len(self.history)


CloneSource = nn.Module | Callable[[], nn.Module] | None
OodSource = Tensor | Pool


def _make_clone(victim: nn.Module, source: CloneSource, seed: int) -> nn.Module:
    if isinstance(source, nn.Module):
        return source
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source is not None:
            return source()
        spec = getattr(victim, "spec", None)
        if spec is None or not getattr(spec, "name", ""):
            raise InputValidationError(
                "clone: pass a clone or a factory (the victim was not built by create_model)"
            )
        return create_model(spec.name, **spec.kwargs)


class _OodSampler:
    """Per epoch: a permutation of the pool (repeated and, if asked, augmented past one pass)."""

    def __init__(self, images: Tensor, augment: bool, generator: torch.Generator) -> None:
        self.images, self.augment, self.g = images, augment, generator
        self.order = torch.empty(0, dtype=torch.long)

    def new_epoch(self, needed: int) -> None:
        size = self.images.shape[0]
        rounds = max(1, -(-needed // size))
        self.order = torch.cat([torch.randperm(size, generator=self.g) for _ in range(rounds)])

    def batch(self, start: int, n: int) -> Tensor:
        size = self.images.shape[0]
        out = self.images[self.order[start : start + n]]
        repeated = torch.arange(start, start + out.shape[0]) >= size
        if self.augment and bool(repeated.any()):
            out = out.clone()
            out[repeated] = random_affine(out[repeated], self.g)
        return out


def _lr_scheduler(
    opt: torch.optim.Optimizer, cfg: IniConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    assert cfg.epochs is not None and cfg.step_size is not None
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.step_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def train_ini(
    victim: nn.Module,
    clone: CloneSource,
    id_images: Tensor,
    id_labels: Tensor,
    ood_source: OodSource,
    config: IniConfig | None = None,
    *,
    eval_data: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    description: str = "InI victim",
) -> IniResult:
    """Train ``victim`` in place with the InI objective; return it (eval mode) with its history.

    ``clone``: a frozen stand-in for the thief's model — a module (moved to the victim's device
    and dtype, put in eval mode, never updated), a zero-argument factory, or None for a
    random-init copy of the victim's architecture (victims built by ``create_model``); factory
    and copy are seeded with ``config.seed + 1`` (not the seed a victim is usually built with).
    ``ood_source``: OOD proxy images ``[N, C, H, W]`` in [0, 1] or a :class:`Pool` (see
    :func:`stealproof.data.load_pool`), shaped like the ID images. ``eval_data``: (images,
    labels) for per-epoch test accuracy (reporting only: the final weights are returned).
    The same seed gives the same weights (on CPU).
    """
    id_images = check_images(id_images, "id_images")
    num_classes = int(getattr(victim, "num_classes", 0)) or None
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(victim.eval()(id_images[:1].to(_param(victim).device)).shape[1])
    id_labels = check_labels(id_labels, "id_labels", num_classes, batch=id_images.shape[0])
    ood_images = ood_source.images if isinstance(ood_source, Pool) else ood_source
    ood_images = check_images(ood_images, "ood_source", shape=tuple(id_images.shape[1:]))
    cfg = (config or IniConfig()).resolved(mnist_like=id_images.shape[1] == 1)
    assert cfg.epochs is not None and cfg.ood_batch_size is not None
    dev = torch.device(device) if device is not None else _param(victim).device
    dtype = _param(victim).dtype
    victim.to(dev)
    frozen = _make_clone(victim, clone, cfg.seed + 1).to(device=dev, dtype=dtype).eval()
    if eval_data is not None:
        ex = check_images(eval_data[0], "eval images").to(dev, dtype)
        ey = check_labels(eval_data[1], "eval labels", num_classes, batch=ex.shape[0]).to(dev)
    x_all, y_all = id_images.to(dev, dtype), id_labels.to(dev).long()
    g = torch.Generator().manual_seed(cfg.seed)
    sampler = _OodSampler(ood_images.to(dtype), cfg.ood_augment, g)
    params = [p for p in victim.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _lr_scheduler(opt, cfg)
    weights = cfg.weights()
    terms = [name for name in TERMS if weights[name] != 0]
    uses_ood = bool({"ood", "gind"} & set(terms))
    n = x_all.shape[0]
    steps = -(-n // cfg.batch_size)
    result = IniResult(victim=victim, config=cfg)
    with (
        torch.random.fork_rng(devices=[]),
        _progress.task(progress, description, total=cfg.epochs) as step,
    ):
        torch.manual_seed(cfg.seed)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            victim.train()
            frozen.eval()
            perm = torch.randperm(n, generator=g).to(dev)
            if uses_ood:
                sampler.new_epoch(steps * cfg.ood_batch_size)
            sums = dict.fromkeys((*TERMS, "loss"), 0.0)
            for s in range(steps):
                idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                x_ood = (
                    sampler.batch(s * cfg.ood_batch_size, cfg.ood_batch_size).to(dev)
                    if uses_ood
                    else x_all[:0]
                )
                losses = ini_losses(
                    victim,
                    frozen,
                    x_all[idx],
                    y_all[idx],
                    x_ood,
                    divergence=cfg.divergence,
                    induction=cfg.induction,
                    engine=cfg.engine,
                    terms=terms,
                )
                _step(opt, params, losses, weights, terms, cfg, g)
                for name, value in losses.as_dict().items():
                    sums[name] += float(value.detach())
                sums["loss"] += float(losses.total(weights).detach())
            row: dict[str, float] = {"epoch": float(epoch), "lr": opt.param_groups[0]["lr"]}
            row.update({k: v / steps for k, v in sums.items()})
            if sched is not None:
                sched.step()
            row["seconds"] = time.perf_counter() - t0
            if not all(math.isfinite(row[k]) for k in sums):
                log.warning("%s epoch %d: non-finite loss %s", description, epoch, row)
            if eval_data is not None:
                victim.eval()
                row["test_acc"] = clone_accuracy(victim, ex, ey)
                result.test_acc = row["test_acc"]
            result.history.append(row)
            log.debug("%s epoch %d: %s", description, epoch, row)
            step(1, description=f"{description} (loss {row['loss']:.3f})")
    victim.eval()
    return result


def _param(model: nn.Module) -> Tensor:
    try:
        return next(model.parameters())
    except StopIteration:
        raise InputValidationError("victim: the model has no parameters") from None


def _step(
    opt: torch.optim.Optimizer,
    params: Sequence[Tensor],
    losses: IniLosses,
    weights: dict[str, float],
    terms: list[str],
    cfg: IniConfig,
    generator: torch.Generator,
) -> None:
    """One optimiser step on the weighted sum, or on the PCGrad combination of the terms."""
    opt.zero_grad(set_to_none=True)
    if cfg.pcgrad and len(terms) > 1:
        flat = []
        for i, name in enumerate(terms):
            grads = torch.autograd.grad(
                weights[name] * getattr(losses, name),
                params,
                retain_graph=i < len(terms) - 1,
                allow_unused=True,
            )
            flat.append(
                torch.cat(
                    [
                        (gr if gr is not None else torch.zeros_like(p)).reshape(-1)
                        for gr, p in zip(grads, params, strict=True)
                    ]
                )
            )
        combined = pcgrad(flat, generator, cfg.pcgrad_reduction)
        offset = 0
        for p in params:
            p.grad = combined[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    else:
        grads = torch.autograd.grad(losses.total(weights), params, allow_unused=True)
        for p, gr in zip(params, grads, strict=True):
            p.grad = gr
    if cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()


# ------------------------------------------------------------------------ scenario helper


def train_ini_victim(
    dataset: Dataset,
    model: str,
    config: IniConfig,
    ood: str | Tensor | Pool = "shapes",
    *,
    seed: int = 0,
    data_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    **model_kwargs: Any,
) -> tuple[Classifier, float, IniResult]:
    """Build a victim for ``dataset`` (a :class:`~stealproof.data.Dataset`) and train it with InI.

    ``ood`` is a pool name (see ``stealproof list pools``), a Pool or images. Returns the victim,
    its test accuracy and the training result. The clone is a random-init copy of the victim's
    architecture, seeded with ``seed + 1``.
    """
    c, h, w = dataset.input_shape
    kwargs: dict[str, Any] = {
        "in_channels": c,
        "image_size": (h, w),
        "num_classes": dataset.num_classes,
        **model_kwargs,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        victim = create_model(model, **kwargs)
        torch.manual_seed(seed + 1)
        clone = create_model(model, **kwargs)
    source: Tensor | Pool
    if isinstance(ood, str):
        source = load_pool(ood, channels=c, image_size=(h, w), seed=seed, data_dir=data_dir)
    else:
        source = ood
    cfg = config.model_copy(update={"seed": seed})
    result = train_ini(
        victim,
        clone,
        dataset.train.images,
        dataset.train.labels,
        source,
        cfg,
        eval_data=(dataset.test.images, dataset.test.labels),
        device=device,
        progress=progress,
    )
    acc = result.test_acc if result.test_acc is not None else float("nan")
    return victim, acc, result


__all__ = [
    "TERMS",
    "IniConfig",
    "IniLosses",
    "IniResult",
    "centered_log_softmax",
    "distillation_divergence",
    "divergence_residual",
    "flat_cosine",
    "flat_cosine_grad",
    "induction_loss",
    "ini_losses",
    "mean_abs",
    "pcgrad",
    "train_ini",
    "train_ini_victim",
]
