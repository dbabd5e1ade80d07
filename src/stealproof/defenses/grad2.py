"""GRAD² — gradient redirection (Mazeika et al., ICML 2022).

Steer the thief's update toward a target direction ``a`` in the surrogate's parameter space:
``max_ỹ ⟨Gᵀỹ, a⟩ = ỹᵀs`` with scores ``s = G a ∈ R^K``, subject to ỹ on the simplex and
``‖ỹ − y‖₁ ≤ ε``. This linear program has an exact greedy solution: move ``m = min(ε/2, 1 − y_r)``
of mass to the best class ``r = argmax s``, taking it from the other classes in increasing order
of s, each drained to zero before the next.

Score engines (``s_k`` is the directional derivative of ``log p_k`` along ``a``):
``jvp`` (one forward-mode pass), ``finite_difference`` (two plain forwards with a shifted copy
``θ + h·a``; fixed targets only), ``double_backward`` (what the reference does; the fallback for
ops without forward-mode rules).
"""

from __future__ import annotations

import copy
import re
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from stealproof._torchfunc import quiet_jvp
from stealproof.defenses import forward_mode
from stealproof.defenses.base import Defense, DefenseConfig, keep_top1, model_io
from stealproof.defenses.gram import full_gram, last_layer_gram, last_layer_parts
from stealproof.defenses.registry import register
from stealproof.errors import ConfigError, InputValidationError

Target = Literal["all_ones", "min_ip", "watermark", "direction"]
ScoreEngine = Literal["jvp", "finite_difference", "double_backward"]


# --------------------------------------------------------------------------- the LP solver


def _eps_per_row(eps: float | Tensor, b: int, like: Tensor) -> Tensor:
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.ndim == 0:
        e = e.expand(b)
    if e.shape != (b,):
        raise InputValidationError(
            f"eps: expected a scalar or one value per row ({b}), got {tuple(e.shape)}"
        )
    if bool((e < 0).any()) or bool(torch.isnan(e).any()):
        raise InputValidationError("eps: must be non-negative and not NaN")
    return e


def redirect_with_mass(y: Tensor, s: Tensor, mass: Tensor) -> Tensor:
    """Move ``mass`` [B] to r = argmax s, draining the other classes in increasing order of s."""
    _b, k = y.shape
    r = s.argmax(dim=1, keepdim=True)
    key = s.scatter(1, r, float("inf"))  # r is drained last (never, since mass ≤ 1 − y_r)
    order = torch.argsort(key, dim=1, stable=True)
    ys = y.gather(1, order)
    before = torch.cumsum(ys, dim=1) - ys  # exclusive cumulative mass
    take = torch.minimum((mass[:, None] - before).clamp_min(0.0), ys)
    take = take.scatter(1, torch.full_like(r, k - 1), 0.0)  # never take from r itself
    removal = torch.zeros_like(y).scatter(1, order, take)
    return (y - removal).scatter_add(1, r, mass[:, None])


def greedy_redirect(y: Tensor, s: Tensor, eps: float | Tensor) -> Tensor:
    """The optimum of ``max ỹᵀs`` over the simplex with ``‖ỹ − y‖₁ ≤ ε`` (ε scalar or per row)."""
    e = _eps_per_row(eps, y.shape[0], y)
    y_r = y.gather(1, s.argmax(dim=1, keepdim=True))[:, 0]
    mass = torch.minimum(e / 2, (1.0 - y_r).clamp_min(0.0))
    return redirect_with_mass(y, s, mass)


def argmax_capped_redirect(y: Tensor, s: Tensor, eps: float | Tensor, iters: int = 60) -> Tensor:
    """Greedy redirection with the mass capped so the victim's top-1 class stays on top (ours).

    Losing top-1 is permanent as mass grows (the top class only shrinks, the receiver only
    grows, and another class only shrinks after the top class is empty), so the largest safe
    mass is found by a batched bisection.
    """
    e = _eps_per_row(eps, y.shape[0], y)
    top = y.argmax(dim=1, keepdim=True)
    y_r = y.gather(1, s.argmax(dim=1, keepdim=True))[:, 0]
    hi = torch.minimum(e / 2, (1.0 - y_r).clamp_min(0.0))

    def keeps(mass: Tensor) -> Tensor:
        out = redirect_with_mass(y, s, mass)
        t = out.gather(1, top)[:, 0]
        rest = out.scatter(1, top, -float("inf")).amax(dim=1)
        return t > rest

    ok_hi = keeps(hi)
    lo = torch.zeros_like(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = keeps(mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    mass = torch.where(ok_hi, torch.minimum(e / 2, (1.0 - y_r).clamp_min(0.0)), lo)
    return keep_top1(redirect_with_mass(y, s, mass), y)


# --------------------------------------------------------------------------- score engines


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def scores_jvp(
    model: nn.Module, x: Tensor, direction: dict[str, Tensor], all_ones: bool | None = None
) -> Tensor:
    """s = G a by one forward-mode JVP of θ ↦ log softmax(f(x; θ)) → [B, K].

    Plain Sequential classifiers take the hand-written forward-mode pass of
    :mod:`stealproof.defenses.forward_mode`; anything else goes through ``torch.func.jvp``.
    """
    if forward_mode.supports(model):
        with torch.no_grad():
            return forward_mode.sequential_jvp(model, x, direction, all_ones)
    return scores_func_jvp(model, x, direction)


def scores_func_jvp(model: nn.Module, x: Tensor, direction: dict[str, Tensor]) -> Tensor:
    """s = G a by ``torch.func.jvp`` (any model with forward-mode rules) → [B, K]."""
    params = _params(model)
    buffers = dict(model.named_buffers())
    tangent = {n: direction[n].to(p.dtype) for n, p in params.items()}

    def logp(p: dict[str, Tensor]) -> Tensor:
        return torch.log_softmax(functional_call(model, (p, buffers), (x,)), dim=1)

    out = quiet_jvp(logp, (params,), (tangent,))
    s: Tensor = out[1]
    return s


def scores_double_backward(model: nn.Module, x: Tensor, direction: dict[str, Tensor]) -> Tensor:
    """s = G a by double backward: ∂⟨Σᵢ Gᵢᵀuᵢ, a⟩/∂uᵢ = Gᵢ a (the reference's way) → [B, K]."""
    named = list(model.named_parameters())
    with torch.enable_grad():
        params = [p.detach().requires_grad_(True) for _, p in named]
        buffers = dict(model.named_buffers())
        pdict = {n: p for (n, _), p in zip(named, params, strict=True)}
        logp = torch.log_softmax(functional_call(model, (pdict, buffers), (x,)), dim=1)
        u = torch.zeros_like(logp, requires_grad=True)
        grads = torch.autograd.grad((logp * u).sum(), params, create_graph=True)
        dot = sum((g * direction[n]).sum() for (n, _), g in zip(named, grads, strict=True))
        (s,) = torch.autograd.grad(dot, u)  # type: ignore[arg-type]
    return s.detach()


class ShiftedModel:
    """Copies of the surrogate at ``θ ± h·a`` for central-difference scores of a fixed ``a``.

    ``(log p(θ + h·a) − log p(θ − h·a)) / 2h`` costs two plain forwards (no unshifted pass is
    needed) and its error is O(h²); it also works with models that have no autograd at all.
    The copies run in float64: float32 rounding differs with the batch size by ~1e-7, and the
    division by 2h would amplify it enough to reorder near-tied scores, making a row's answer
    depend on its batch.
    """

    def __init__(self, model: nn.Module, direction: dict[str, Tensor], step: float) -> None:
        self.step = step
        self.plus = copy.deepcopy(model).double().eval()
        self.minus = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            for (n, p), q in zip(
                self.plus.named_parameters(), self.minus.parameters(), strict=True
            ):
                p.add_(direction[n].to(p.dtype), alpha=step)
                q.add_(direction[n].to(q.dtype), alpha=-step)

    def to(self, device: torch.device | str) -> None:
        self.plus.to(device)
        self.minus.to(device)

    def scores(self, x: Tensor) -> Tensor:
        """Central-difference directional derivatives of log p → [B, K] (float64)."""
        with torch.no_grad():
            x64 = x.double()
            hi = torch.log_softmax(self.plus(x64), dim=1)
            lo = torch.log_softmax(self.minus(x64), dim=1)
        return (hi - lo) / (2 * self.step)


def all_ones_direction(model: nn.Module) -> dict[str, Tensor]:
    """a = 1 for every parameter (GRAD²'s default, 'coordinated' target)."""
    return {n: torch.ones_like(p) for n, p in model.named_parameters()}


def watermark_direction(model: nn.Module, x_w: Tensor, y_w: int) -> dict[str, Tensor]:
    """a = ∇θ log p_{y_w}(x_w): the update that teaches label y_w on input x_w."""
    named = list(model.named_parameters())
    with torch.enable_grad():
        params = [p.detach().requires_grad_(True) for _, p in named]
        pdict = {n: p for (n, _), p in zip(named, params, strict=True)}
        out = functional_call(model, (pdict, dict(model.named_buffers())), (x_w,))
        logp = torch.log_softmax(out, dim=1)[:, y_w].sum()
        grads = torch.autograd.grad(logp, params)
    return {n: g.detach() for (n, _), g in zip(named, grads, strict=True)}


def auto_fd_step(model: nn.Module, direction: dict[str, Tensor], rel: float = 1e-4) -> float:
    """h = rel · ‖θ‖ / ‖a‖: a shift small against the weights but far above float32 noise."""
    theta = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()) ** 0.5
    a = sum(float((d.double() ** 2).sum()) for d in direction.values()) ** 0.5
    return float(rel * theta / max(a, 1e-30))


# --------------------------------------------------------------------------- defense class


class Grad2Config(DefenseConfig):
    eps: float = Field(0.5, ge=0.0, le=2.0, description="L1 budget ‖ỹ − y‖₁ ≤ eps")
    target: Target = Field("all_ones", description="all_ones, min_ip, watermark, direction")
    engine: ScoreEngine = Field("jvp", description="jvp, finite_difference or double_backward")
    fd_step: float | None = Field(None, gt=0, description="finite-difference h (None: auto)")
    preserve_argmax: bool = Field(False, description="cap the mass so top-1 is kept (ours)")
    layers: tuple[str, ...] | None = Field(
        None, description="min_ip only: parameter prefixes of G (None: last layer, closed form)"
    )
    surrogates: int = Field(
        1, ge=1, le=16, description="ensemble size: scores averaged over this many surrogates"
    )
    seed: int = Field(0, description="seed of the surrogate built by prepare()")


_EXTRA = re.compile(r"surrogate_(\d+)")


def _extra_surrogates(params: dict[str, Any]) -> list[nn.Module]:
    """Pop ``surrogate_2`` … ``surrogate_N`` (an ensemble's other members) from ``params``."""
    found = {int(m.group(1)): k for k in list(params) if (m := _EXTRA.fullmatch(k))}
    if found and sorted(found) != list(range(2, 2 + len(found))):
        raise ConfigError(
            f"grad2: ensemble members must be surrogate_2 … surrogate_N; got {sorted(found)}"
        )
    return [params.pop(found[i]) for i in sorted(found)]


class _Member:
    """One surrogate of the ensemble with its target direction and shifted copies."""

    def __init__(
        self,
        surrogate: nn.Module,
        cfg: Grad2Config,
        direction: dict[str, Tensor] | None,
        watermark: tuple[Tensor, int] | None,
    ) -> None:
        self.surrogate = surrogate.eval()
        self.direction: dict[str, Tensor] | None = None
        if cfg.target == "all_ones":
            self.direction = all_ones_direction(surrogate)
        elif cfg.target == "watermark":
            if watermark is None:
                raise ConfigError("grad2: target='watermark' needs watermark=(x_w, y_w)")
            x_w, y_w = watermark
            k = getattr(surrogate, "num_classes", None)
            if k is not None and not 0 <= int(y_w) < int(k):
                raise ConfigError(f"grad2: watermark label {y_w} is outside [0, {int(k) - 1}]")
            self.direction = watermark_direction(surrogate, x_w, int(y_w))
        elif cfg.target == "direction":
            if direction is None:
                raise ConfigError("grad2: target='direction' needs direction={param name: tensor}")
            names = {n: p.shape for n, p in surrogate.named_parameters()}
            if set(direction) != set(names):
                raise ConfigError("grad2: direction must have one tensor per surrogate parameter")
            for n, t in direction.items():
                if t.shape != names[n]:
                    raise ConfigError(
                        f"grad2: direction[{n!r}] has shape {tuple(t.shape)}, "
                        f"expected {tuple(names[n])}"
                    )
            if not all(bool(torch.isfinite(t).all()) for t in direction.values()):
                raise ConfigError("grad2: direction contains NaN or inf")
            self.direction = {n: t.detach() for n, t in direction.items()}
        self.shifted: ShiftedModel | None = None
        if cfg.engine == "finite_difference":
            if self.direction is None:
                raise ConfigError(
                    "grad2: engine='finite_difference' needs a fixed target direction"
                )
            step = cfg.fd_step or auto_fd_step(surrogate, self.direction)
            self.shifted = ShiftedModel(surrogate, self.direction, step)

    def to(self, device: torch.device | str) -> None:
        self.surrogate.to(device)
        if self.direction is not None:
            self.direction = {n: t.to(device) for n, t in self.direction.items()}
        if self.shifted is not None:
            self.shifted.to(device)

    def scores(self, cfg: Grad2Config, x: Tensor, y: Tensor) -> Tensor:
        """This surrogate's s = G a → [B, K] (float64, on y's device)."""
        dev = next(self.surrogate.parameters()).device
        xs = x.to(dev)
        if cfg.target == "min_ip":
            # per-row a = −Gᵀy (a row's answer may not depend on other rows) → s = −M y
            if cfg.layers is None:
                p, h_sq = last_layer_parts(self.surrogate, xs)
                m = last_layer_gram(p, h_sq)
            else:
                m = full_gram(self.surrogate, xs, cfg.layers)
            return -(m.to(y.device) @ y.double()[:, :, None])[:, :, 0]
        assert self.direction is not None
        if cfg.engine == "finite_difference":
            assert self.shifted is not None
            s = self.shifted.scores(xs)
        elif cfg.engine == "double_backward":
            s = scores_double_backward(self.surrogate, xs, self.direction)
        else:
            s = scores_jvp(self.surrogate, xs, self.direction, cfg.target == "all_ones")
        return s.double().to(y.device)


@register
class Grad2(Defense):
    """Redirects the thief's gradient toward a target direction within an L1 budget.

    With ``surrogates=N`` (the paper's MIN-IP uses 4) the scores are the mean over an ensemble:
    ``surrogate=`` is its first member and ``surrogate_2=`` … ``surrogate_N=`` the others;
    :meth:`prepare` distils all N (seeds ``seed`` … ``seed + N − 1``).
    """

    name: ClassVar[str] = "grad2"
    Config: ClassVar[type[DefenseConfig]] = Grad2Config
    demo_params: ClassVar[dict[str, Any]] = {
        "eps": 2.0,
        "target": "min_ip",
        "preserve_argmax": True,
    }
    prepare_params: ClassVar[frozenset[str] | None] = frozenset({"seed", "surrogates"})

    def __init__(
        self,
        config: DefenseConfig | None = None,
        /,
        surrogate: nn.Module | None = None,
        direction: dict[str, Tensor] | None = None,
        watermark: tuple[Tensor, int] | None = None,
        **params: Any,
    ) -> None:
        extra = _extra_surrogates(params)
        super().__init__(config, **params)
        cfg = self.config
        assert isinstance(cfg, Grad2Config)
        if surrogate is None:
            raise ConfigError(
                "grad2: needs a surrogate model: pass surrogate=..., or build one with "
                "Grad2.prepare(victim, images) (distilled, 10 of 50 epochs)"
            )
        ensemble = [surrogate, *extra]
        if len(ensemble) != cfg.surrogates:
            raise ConfigError(
                f"grad2: surrogates={cfg.surrogates} needs that many models (surrogate=, "
                f"surrogate_2= …); got {len(ensemble)}. Grad2.prepare builds them"
            )
        self.members = [_Member(m, cfg, direction, watermark) for m in ensemble]
        self.surrogate = self.members[0].surrogate
        self.direction = self.members[0].direction
        self._given: dict[str, Any] = {
            "surrogate": surrogate,
            "direction": direction,
            "watermark": watermark,
            **{f"surrogate_{i}": m for i, m in enumerate(extra, start=2)},
        }

    @classmethod
    def prepare(
        cls,
        victim: nn.Module,
        images: Tensor,
        *,
        query_sample: Tensor | None = None,
        **params: Any,
    ) -> Defense:
        """GRAD² with surrogates distilled from the victim, stopped early (10 of 50 epochs).

        It distils on ``query_sample`` (the query distribution, as in the paper) when given,
        else on the defender's own ``images``, a weaker stand-in for the thief's clone.
        """
        from stealproof.surrogate import distill_surrogate

        cfg = cls.make_config(**params)
        assert isinstance(cfg, Grad2Config)
        data = query_sample if query_sample is not None else images
        made = [
            distill_surrogate(victim, data, epochs=10, schedule_epochs=50, seed=cfg.seed + j)
            for j in range(cfg.surrogates)
        ]
        extra: dict[str, Any] = {f"surrogate_{i}": m for i, m in enumerate(made[1:], start=2)}
        return cls(cfg, surrogate=made[0], **extra)

    def models(self) -> dict[str, Any]:
        return dict(self._given)

    def expected_input(self) -> tuple[tuple[int, ...] | None, int | None]:
        return model_io(self.surrogate)

    def to(self, device: torch.device | str) -> Defense:
        for m in self.members:
            m.to(device)
        self.direction = self.members[0].direction
        return self

    def l1_budget(self) -> float | None:
        assert isinstance(self.config, Grad2Config)
        return self.config.eps

    def scores(self, x: Tensor, y: Tensor) -> Tensor:
        """s = G a for the batch → [B, K] (float64), the mean over the ensemble."""
        cfg = self.config
        assert isinstance(cfg, Grad2Config)
        s = self.members[0].scores(cfg, x, y)
        for m in self.members[1:]:
            s = s + m.scores(cfg, x, y)
        return s / len(self.members)

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        cfg = self.config
        assert isinstance(cfg, Grad2Config)
        if x is None:
            raise InputValidationError("grad2: needs the inputs x to score the classes")
        y64 = y.double()
        s = self.scores(x, y64)
        if cfg.preserve_argmax:
            out = argmax_capped_redirect(y64, s, cfg.eps)
        else:
            out = greedy_redirect(y64, s, cfg.eps)
        return out.to(y.dtype) if not cfg.preserve_argmax else keep_top1(out.to(y.dtype), y)
