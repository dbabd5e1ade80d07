"""MAD — Prediction Poisoning (Orekondy et al., ICLR 2020) and MAD-argmax.

Maximise the angle between the thief's update under the released answer ỹ and under the clean
y: ``H(ỹ) = ‖Gᵀỹ/‖Gᵀỹ‖ − Gᵀy/‖Gᵀy‖‖² = 2 − 2 cos(Gᵀỹ, Gᵀy)`` subject to ỹ on the simplex and
``dist(ỹ, y) ≤ ε``. H is convex, so its maximum over the simplex is at a vertex: the oracle picks
the best vertex y*, and the answer is the interpolation ``ỹ = (1 − α)y + αy*`` with the largest α
the budget allows. MAD-argmax keeps the victim's top-1 class t: its feasible vertices are the
uniform distributions over subsets S ∋ t (exhaustive for K ≤ 12, greedy growth of S above).

Everything works on the per-sample Gram matrix M = GGᵀ (see :mod:`stealproof.defenses.gram`).

**The reference code's default oracle** (``objmax=False``) scores a candidate by the
unnormalised displacement ``‖Gᵀ(ỹ − y)‖² = (ỹ − y)ᵀM(ỹ − y)`` instead of the angle; it is offered
as the ablation ``objective="displacement"``, since users of that code got it. Scoring bare
vertices with the last-layer G (or G = I) it reduces exactly to the ``argmin`` oracle: for a
difference d of two distributions (Σd = 0) the last-layer M gives ``dᵀMd = ‖h‖²‖d‖²``, and
``‖e_k − y‖²`` is largest at the least likely class. With ``engine="gram"`` (or
``score_interpolated``) it picks otherwise.

**The accuracy cliff of ε (MAD, not MAD-argmax).** Moving a row toward a vertex e_j overtakes
the victim's top-1 class t once ``α > (y_t − y_j) / (1 − y_j + y_t)``; in L1 that is a budget
of ``2(1 − y_j)(y_t − y_j) / (1 − y_j + y_t)``, which tends to 1 as the victim grows confident
(``y_t → 1``, ``y_j → 0``). So on a confident victim the defender's accuracy holds until ε nears
that value and then collapses for every row at once (measured on mnist5k: 97.7 % → 0.8 % →
0.0 % for ε = 0.9 / 1.0 / 1.2). :func:`flip_budget` gives each row's value,
:func:`mad_cliff_eps` the cliff for a victim's typical confidence (the median row), and
:meth:`MAD.prepare` logs a warning when the chosen ε is at or past it
(:meth:`MAD.check_cliff`). Keep ε below the cliff unless the top-1 answer may change.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from stealproof import _rng
from stealproof.defenses.base import Defense, DefenseConfig, keep_top1, model_io
from stealproof.defenses.gram import full_gram, identity_gram, last_layer_gram, last_layer_parts
from stealproof.defenses.registry import register
from stealproof.errors import ConfigError, InputValidationError

Norm = Literal["l1", "l2", "kl"]
Objective = Literal["angle", "displacement"]
Engine = Literal["last_layer", "gram", "identity"]

logger = logging.getLogger(__name__)

#: Largest K for which MAD-argmax enumerates every subset (2^(K−1) candidates per row).
EXHAUSTIVE_MAX_K = 12
_TINY = 1e-30
#: Scores within this of a row's best count as tied; the first such candidate wins. Float32
#: surrogates differ by ~1e-8 between batch sizes, and exact ties (K = 2, symmetric rows) must
#: not be decided by that noise, or a row's answer would depend on its batch.
TIE_TOL = 1e-6


def first_max(scores: Tensor, tol: float = TIE_TOL) -> Tensor:
    """Index of the first entry within ``tol`` of each row's maximum (ties broken by index)."""
    best = scores.amax(dim=1, keepdim=True)
    return (scores >= best - tol).int().argmax(dim=1)


# --------------------------------------------------------------------------- pure math


def cosine_to_clean(m: Tensor, y: Tensor, cands: Tensor) -> Tensor:
    """cos(Gᵀc, Gᵀy) for candidates ``cands`` [B, C, K] given M [B, K, K] and y [B, K] → [B, C]."""
    my = (m @ y[:, :, None])[:, :, 0]  # [B, K]
    yy = (y * my).sum(dim=1, keepdim=True)  # yᵀMy
    num = (cands * my[:, None, :]).sum(dim=2)
    cc = torch.einsum("bck,bkl,bcl->bc", cands, m, cands)
    return num / torch.sqrt((cc * yy).clamp_min(_TINY))


def objective(m: Tensor, y: Tensor, cands: Tensor) -> Tensor:
    """MAD's H = 2 − 2 cos(Gᵀc, Gᵀy) for every candidate; larger = more misleading."""
    return 2.0 - 2.0 * cosine_to_clean(m, y, cands)


def vertex_objective(m: Tensor, y: Tensor) -> Tensor:
    """H(e_k) for every class k → [B, K] (O(K²) per row, no candidate tensor)."""
    my = (m @ y[:, :, None])[:, :, 0]
    yy = (y * my).sum(dim=1, keepdim=True)
    diag = torch.diagonal(m, dim1=1, dim2=2)
    return 2.0 - 2.0 * my / torch.sqrt((diag * yy).clamp_min(_TINY))


def displacement_objective(m: Tensor, y: Tensor, cands: Tensor) -> Tensor:
    """‖Gᵀ(c − y)‖² = (c − y)ᵀM(c − y) for every candidate [B, C, K] → [B, C] (reference oracle)."""
    d = cands - y[:, None, :]
    return torch.einsum("bck,bkl,bcl->bc", d, m, d)


def vertex_displacement_objective(m: Tensor, y: Tensor) -> Tensor:
    """‖Gᵀ(e_k − y)‖² for every class k → [B, K]: M_kk − 2(My)_k + yᵀMy."""
    my = (m @ y[:, :, None])[:, :, 0]
    yy = (y * my).sum(dim=1, keepdim=True)
    return torch.diagonal(m, dim1=1, dim2=2) - 2.0 * my + yy


def distance(a: Tensor, y: Tensor, norm: Norm) -> Tensor:
    """dist(a, y) along the last dim: L1, L2, or KL(y ‖ a)."""
    if norm == "l1":
        return (a - y).abs().sum(dim=-1)
    if norm == "l2":
        return (a - y).pow(2).sum(dim=-1).sqrt()
    ratio = y.clamp_min(_TINY) / a.clamp_min(_TINY)
    return (y * torch.log(ratio)).sum(dim=-1)


def interpolation_alpha(
    y: Tensor, target: Tensor, eps: float, norm: Norm, iters: int = 50
) -> Tensor:
    """Largest α ∈ [0, 1] with dist((1 − α)y + α·target, y) ≤ ε, for y [B, K], target [B, (C,) K].

    Exact for L1/L2 (distance is α·‖target − y‖); bisection for KL (monotone in α).
    """
    yb = y if target.ndim == 2 else y[:, None, :]
    if norm in ("l1", "l2"):
        full = distance(target, yb, norm)
        return torch.where(full > eps, eps / full.clamp_min(_TINY), torch.ones_like(full))
    lo = torch.zeros(target.shape[:-1], dtype=y.dtype, device=y.device)
    if eps <= 0:
        return lo
    hi = torch.ones_like(lo)
    ok_full = distance(target, yb, "kl") <= eps
    for _ in range(iters):
        mid = (lo + hi) / 2
        inside = distance((1 - mid[..., None]) * yb + mid[..., None] * target, yb, "kl") <= eps
        lo = torch.where(inside, mid, lo)
        hi = torch.where(inside, hi, mid)
    return torch.where(ok_full, torch.ones_like(lo), lo)


def interpolate(y: Tensor, target: Tensor, alpha: Tensor) -> Tensor:
    """(1 − α)y + α·target, row by row."""
    return (1 - alpha[:, None]) * y + alpha[:, None] * target


def best_vertex(
    m: Tensor,
    y: Tensor,
    eps: float,
    norm: Norm,
    score_interpolated: bool,
    kind: Objective = "angle",
) -> Tensor:
    """Index of the vertex e_k that maximises the objective (H for ``kind="angle"``, the
    reference's displacement for ``"displacement"``), or that of its interpolation → [B]."""
    if not score_interpolated:
        vertex = vertex_objective if kind == "angle" else vertex_displacement_objective
        return first_max(vertex(m, y))
    k = y.shape[1]
    eye = torch.eye(k, dtype=y.dtype, device=y.device).expand(y.shape[0], k, k)
    alpha = interpolation_alpha(y, eye, eps, norm)  # [B, K]
    cands = (1 - alpha[..., None]) * y[:, None, :] + alpha[..., None] * eye
    score = objective if kind == "angle" else displacement_objective
    return first_max(score(m, y, cands))


def _subset_table(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """All 2^(k−1) subsets of k − 1 'other' classes as a 0/1 matrix [2^(k−1), k − 1]."""
    rows = list(itertools.product((0.0, 1.0), repeat=k - 1))
    return torch.tensor(rows, dtype=dtype, device=device)


def argmax_preserving_exhaustive(
    m: Tensor, y: Tensor, eps: float, norm: Norm, score_interpolated: bool
) -> Tensor:
    """Best uniform vertex 1_S/|S| over all subsets S ∋ top class → targets [B, K] (K ≤ 12)."""
    b, k = y.shape
    top = y.argmax(dim=1)
    table = _subset_table(k, y.dtype, y.device)  # [S, K-1]
    # map 'other class' slots to actual class indices per row: every class but top, in order
    ar = torch.arange(k, device=y.device)
    others = ar[None, :].expand(b, k)[ar[None, :] != top[:, None]].view(b, k - 1)
    sub = torch.zeros(b, table.shape[0], k, dtype=y.dtype, device=y.device)
    sub.scatter_(2, others[:, None, :].expand(b, table.shape[0], k - 1), table.expand(b, -1, -1))
    sub.scatter_(2, top[:, None, None].expand(b, table.shape[0], 1), 1.0)
    cands = sub / sub.sum(dim=2, keepdim=True)
    if score_interpolated:
        alpha = interpolation_alpha(y, cands, eps, norm)
        scored = (1 - alpha[..., None]) * y[:, None, :] + alpha[..., None] * cands
    else:
        scored = cands
    best = first_max(objective(m, y, scored))
    return cands[torch.arange(b, device=y.device), best]


def argmax_preserving_greedy(
    m: Tensor, y: Tensor, eps: float, norm: Norm, score_interpolated: bool
) -> Tensor:
    """Greedy growth of S ∋ top class, keeping the best subset seen → targets [B, K] (any K).

    Each step adds the class that most increases H. Without interpolated scoring every term is
    a running subset sum (``Σ_S (My)_k``, ``1_SᵀM1_S``, ``M1_S``), so a step costs O(K) per row
    and the whole path O(K²); with interpolated scoring a step scores K candidates in O(K²).
    """
    b, k = y.shape
    rows = torch.arange(b, device=y.device)
    top = y.argmax(dim=1)
    in_s = torch.zeros(b, k, dtype=torch.bool, device=y.device)
    in_s[rows, top] = True
    best_mask = in_s.clone()
    my = (m @ y[:, :, None])[:, :, 0]
    yy = (y * my).sum(dim=1).clamp_min(_TINY)
    diag = torch.diagonal(m, dim1=1, dim2=2)

    if not score_interpolated:
        num = my[rows, top]  # Σ_S (My)_k
        quad = diag[rows, top]  # 1_Sᵀ M 1_S
        col = m[rows, :, top]  # M 1_S
        best_score = 2.0 - 2.0 * num / torch.sqrt((quad * yy).clamp_min(_TINY))
        for _ in range(k - 1):
            cand_num = num[:, None] + my
            cand_quad = quad[:, None] + 2.0 * col + diag
            h = 2.0 - 2.0 * cand_num / torch.sqrt((cand_quad * yy[:, None]).clamp_min(_TINY))
            h = h.masked_fill(in_s, -float("inf"))
            j = first_max(h)
            got = h[rows, j]
            num, quad = cand_num[rows, j], cand_quad[rows, j]
            col = col + m[rows, :, j]
            in_s = in_s.clone()
            in_s[rows, j] = True
            better = got > best_score + TIE_TOL
            best_score = torch.where(better, got, best_score)
            best_mask = torch.where(better[:, None], in_s, best_mask)
    else:
        eye = torch.eye(k, dtype=torch.bool, device=y.device)

        def score(mask: Tensor) -> Tensor:  # [B, C, K] masks → H of interpolated vertices
            cands = mask.to(y.dtype)
            cands = cands / cands.sum(dim=-1, keepdim=True)
            alpha = interpolation_alpha(y, cands, eps, norm)
            return objective(
                m, y, (1 - alpha[..., None]) * y[:, None, :] + alpha[..., None] * cands
            )

        best_score = score(in_s[:, None, :])[:, 0]
        for _ in range(k - 1):
            trial = in_s[:, None, :] | eye[None, :, :]
            h = score(trial).masked_fill(in_s, -float("inf"))
            j = first_max(h)
            got = h[rows, j]
            in_s = trial[rows, j]
            better = got > best_score + TIE_TOL
            best_score = torch.where(better, got, best_score)
            best_mask = torch.where(better[:, None], in_s, best_mask)
    t = best_mask.to(y.dtype)
    return t / t.sum(dim=1, keepdim=True)


# --------------------------------------------------------------------------- the accuracy cliff


def flip_budget(y: Tensor, norm: Norm = "l1") -> Tensor:
    """Per row of posteriors ``y`` [B, K], the smallest budget ``dist(ỹ, y)`` at which moving
    toward some other class's vertex ties the top-1 class → [B] (float64).

    The row moves toward e_j along ``ỹ = (1 − α)y + α e_j``; class j ties the top class t at
    ``α_j = (y_t − y_j) / (1 − y_j + y_t)``. The result is the minimum over j ≠ t of the
    distance at ``α_j`` (closed forms for L1, L2 and KL(y ‖ ỹ)). MAD's vertex is chosen by
    the surrogate's gradients, not by this, so it is the budget from which MAD *may* overturn
    the row's top-1 (on a confident row every vertex gives nearly the same value).
    """
    y64 = y.detach().to(torch.float64)
    top = y64.argmax(dim=1, keepdim=True)
    y_t = y64.gather(1, top)
    alpha = ((y_t - y64) / (1.0 - y64 + y_t)).clamp(0.0, 1.0)  # [B, K]
    if norm == "l1":
        d = 2.0 * alpha * (1.0 - y64)
    elif norm == "l2":
        sq = (y64 * y64).sum(dim=1, keepdim=True)
        d = alpha * (sq - 2.0 * y64 + 1.0).clamp_min(0.0).sqrt()
    else:
        # KL(y ‖ ỹ): ỹ_i = (1 − α)y_i for i ≠ j and ỹ_j = (1 − α)y_j + α
        rest = -(1.0 - y64) * torch.log1p(-alpha.clamp(max=1.0 - 1e-12))
        at_j = torch.where(
            y64 > 0,
            y64 * torch.log(y64.clamp_min(_TINY) / ((1.0 - alpha) * y64 + alpha).clamp_min(_TINY)),
            torch.zeros_like(y64),
        )
        d = (rest + at_j).clamp_min(0.0)
    return d.scatter(1, top, float("inf")).amin(dim=1)


def mad_cliff_eps(clean_posteriors: Tensor, norm: Norm = "l1", quantile: float = 0.5) -> float:
    """Where MAD's accuracy cliff lies for a victim: the ε from which MAD may overturn the
    top-1 of a ``quantile`` share of rows (default: the median row, the victim's typical
    confidence), estimated from its clean posteriors on the defender's images.

    For L1 and a confident victim this is ``2p / (1 + p)`` for its typical top-1 probability p
    (≈ 1): ε at or past it costs most of the defender's accuracy.
    """
    if not 0.0 < quantile <= 1.0:
        raise InputValidationError(f"quantile: expected a value in (0, 1], got {quantile}")
    if not isinstance(clean_posteriors, Tensor) or clean_posteriors.ndim != 2:
        raise InputValidationError("clean_posteriors: expected a [rows, classes] tensor")
    if clean_posteriors.shape[0] == 0:
        raise InputValidationError("clean_posteriors: empty batch")
    budgets = flip_budget(clean_posteriors, norm)
    return float(torch.quantile(budgets, quantile))


#: Rows of the defender's images :meth:`MAD.prepare` uses to estimate the cliff.
CLIFF_SAMPLE_ROWS = 2000


# --------------------------------------------------------------------------- defense classes


class MADConfig(DefenseConfig):
    eps: float = Field(
        0.5,
        ge=0.0,
        description="budget: dist(ỹ, y) ≤ eps. Accuracy cliff: on a confident victim, L1 "
        "eps ≥ ~1 (2p/(1+p) for typical top-1 probability p) overturns almost every top-1 "
        "(mnist5k: 97.7% / 0.8% / 0.0% accuracy at 0.9 / 1.0 / 1.2); prepare() warns past it",
    )
    norm: Norm = Field("l1", description="l1, l2, or kl (KL(y‖ỹ), by bisection)")
    engine: Engine = Field(
        "last_layer",
        description="G of the last layer (exact, O(K²)), full/selected layers (gram), or G = I",
    )
    layers: tuple[str, ...] | None = Field(
        None, description="parameter-name prefixes for engine='gram' (None: all parameters)"
    )
    oracle: Literal["extreme", "argmin", "random"] = Field(
        "extreme", description="extreme = MAD; argmin / random are ablations"
    )
    score_interpolated: bool = Field(
        False, description="pick the vertex whose *interpolated* point scores best (ours)"
    )
    objective: Objective = Field(
        "angle",
        description="what oracle='extreme' maximises: angle = MAD's H (the paper); "
        "displacement = ‖Gᵀ(ỹ−y)‖², the reference code's default (objmax=False), an ablation "
        "(with engine last_layer or identity and bare vertices it equals oracle='argmin')",
    )
    seed: int = Field(0, description="seed of the random surrogate and of oracle='random'")


class MADArgmaxConfig(DefenseConfig):
    eps: float = Field(1.0, ge=0.0, description="budget: dist(ỹ, y) ≤ eps")
    norm: Norm = "l1"
    engine: Engine = "last_layer"
    layers: tuple[str, ...] | None = None
    score_interpolated: bool = False
    seed: int = 0


class _MADBase(Defense):
    """Shared machinery: holds the surrogate, computes per-sample Gram matrices."""

    prepare_params: ClassVar[frozenset[str] | None] = frozenset({"seed"})

    def __init__(
        self,
        config: DefenseConfig | None = None,
        /,
        surrogate: nn.Module | None = None,
        **params: Any,
    ) -> None:
        super().__init__(config, **params)
        engine = self.config.engine  # type: ignore[attr-defined]
        if surrogate is None and engine != "identity":
            raise ConfigError(
                f"{self.name}: engine {engine!r} needs a surrogate model: pass surrogate=..., "
                f"or build one with {type(self).__name__}.prepare(victim, images)"
            )
        self.surrogate = surrogate.eval() if surrogate is not None else None
        self._salt = _rng.salt_from_seed(self.config.seed)  # type: ignore[attr-defined]

    @classmethod
    def prepare(
        cls,
        victim: nn.Module,
        images: Tensor,
        *,
        query_sample: Tensor | None = None,
        **params: Any,
    ) -> Defense:
        """MAD with a fixed random-init copy of the victim's architecture (seeded)."""
        from stealproof.models.base import Classifier
        from stealproof.surrogate import random_surrogate

        cfg = cls.make_config(**params)
        if not isinstance(victim, Classifier) or not victim.spec.name:
            raise ConfigError(
                f"{cls.name}: prepare needs a stealproof Classifier victim built by "
                f"create_model, got {type(victim).__name__}"
            )
        return cls(cfg, surrogate=random_surrogate(victim, seed=cfg.seed))  # type: ignore[attr-defined]

    def expected_input(self) -> tuple[tuple[int, ...] | None, int | None]:
        return model_io(self.surrogate)

    def models(self) -> dict[str, Any]:
        return {"surrogate": self.surrogate}

    def to(self, device: torch.device | str) -> Defense:
        if self.surrogate is not None:
            self.surrogate.to(device)
        return self

    def gram(self, x: Tensor | None, y: Tensor) -> Tensor:
        """Per-sample M [B, K, K] in float64 for the configured engine."""
        cfg = self.config
        engine = cfg.engine  # type: ignore[attr-defined]
        b, k = y.shape
        if engine == "identity":
            return identity_gram(b, k, torch.float64, y.device)
        if x is None:
            raise InputValidationError(f"{self.name}: engine {engine!r} needs the inputs x")
        assert self.surrogate is not None
        dev = next(self.surrogate.parameters()).device
        xs = x.to(dev)
        if engine == "last_layer":
            with torch.no_grad():
                p, h_sq = last_layer_parts(self.surrogate, xs)
            m = last_layer_gram(p, h_sq)
        else:
            m = full_gram(self.surrogate, xs, cfg.layers)  # type: ignore[attr-defined]
        if m.shape[1] != k:
            raise InputValidationError(
                f"{self.name}: the surrogate has {m.shape[1]} classes, y has {k}"
            )
        return m.to(y.device)


@register
class MAD(_MADBase):
    """Prediction Poisoning: the vertex that most turns the thief's gradient, within ε."""

    name: ClassVar[str] = "mad"
    Config: ClassVar[type[DefenseConfig]] = MADConfig
    demo_params: ClassVar[dict[str, Any]] = {"eps": 0.8}

    def __init__(
        self,
        config: DefenseConfig | None = None,
        /,
        surrogate: nn.Module | None = None,
        **params: Any,
    ) -> None:
        super().__init__(config, surrogate=surrogate, **params)
        #: the victim's accuracy-cliff ε (:func:`mad_cliff_eps`), once :meth:`check_cliff` ran
        self.cliff_eps: float | None = None
        self._flip_budgets: Tensor | None = None
        self._cliff_warned = False

    @classmethod
    def prepare(
        cls,
        victim: nn.Module,
        images: Tensor,
        *,
        query_sample: Tensor | None = None,
        **params: Any,
    ) -> Defense:
        """MAD with a seeded random surrogate; warns when ε is past the victim's accuracy cliff
        (estimated on up to :data:`CLIFF_SAMPLE_ROWS` of the defender's ``images``)."""
        from stealproof.oracle import victim_posteriors

        d = super().prepare(victim, images, query_sample=query_sample, **params)
        assert isinstance(d, MAD)
        if isinstance(images, Tensor) and images.ndim >= 2 and images.shape[0] > 0:
            clean, _ = victim_posteriors(victim, images[:CLIFF_SAMPLE_ROWS])
            d.check_cliff(clean)
        return d

    def check_cliff(self, clean_posteriors: Tensor) -> float:
        """Estimate the victim's accuracy cliff from its clean posteriors on the defender's
        images, remember it (:meth:`replace` keeps it) and log a warning, once per instance,
        when this defense's ε is at or past it. Returns the cliff ε."""
        cfg = self.config
        assert isinstance(cfg, MADConfig)
        self.cliff_eps = mad_cliff_eps(clean_posteriors, cfg.norm)
        self._flip_budgets = flip_budget(clean_posteriors, cfg.norm).float().cpu()
        self._warn_past_cliff()
        return self.cliff_eps

    def _warn_past_cliff(self) -> None:
        cfg = self.config
        assert isinstance(cfg, MADConfig)
        if self.cliff_eps is None or self._cliff_warned:
            return
        if cfg.eps >= self.cliff_eps:
            self._cliff_warned = True
            share = (
                float((self._flip_budgets <= cfg.eps).float().mean())
                if self._flip_budgets is not None
                else 0.5
            )
            logger.warning(
                "mad: eps=%g is past the accuracy cliff of this victim (%s eps ≈ %.3g at its "
                "typical confidence): MAD may overturn the top-1 answer of %.0f%% of the "
                "defender's images and its accuracy collapses; keep eps below %.3g or use "
                "mad_argmax",
                cfg.eps,
                cfg.norm.upper(),
                self.cliff_eps,
                100 * share,
                self.cliff_eps,
            )

    def replace(self, **params: Any) -> Defense:
        """The same defense with some parameters changed; keeps the cliff estimate and warns
        when the new ε is past it."""
        out = super().replace(**params)
        assert isinstance(out, MAD)
        out.cliff_eps = self.cliff_eps
        out._flip_budgets = self._flip_budgets
        out._warn_past_cliff()
        return out

    def l1_budget(self) -> float | None:
        cfg = self.config
        assert isinstance(cfg, MADConfig)
        return cfg.eps if cfg.norm == "l1" else None

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        cfg = self.config
        assert isinstance(cfg, MADConfig)
        y64 = y.to(torch.float64)
        _b, k = y.shape
        if cfg.oracle == "argmin":
            idx = y64.argmin(dim=1)
        elif cfg.oracle == "random":
            keys = _rng.row_keys(self._salt, y if x is None else x)
            idx = torch.clamp((_rng.uniform(keys, 1)[:, 0] * k).long(), max=k - 1)
        else:
            idx = best_vertex(
                self.gram(x, y64), y64, cfg.eps, cfg.norm, cfg.score_interpolated, cfg.objective
            )
        target = torch.zeros_like(y64).scatter_(1, idx[:, None], 1.0)
        alpha = interpolation_alpha(y64, target, cfg.eps, cfg.norm)
        return interpolate(y64, target, alpha).to(y.dtype)


@register
class MADArgmax(_MADBase):
    """MAD restricted to answers that keep the victim's top-1 class (no accuracy cost)."""

    name: ClassVar[str] = "mad_argmax"
    Config: ClassVar[type[DefenseConfig]] = MADArgmaxConfig
    preserves_top1: ClassVar[bool] = True
    demo_params: ClassVar[dict[str, Any]] = {"eps": 2.0}

    def l1_budget(self) -> float | None:
        cfg = self.config
        assert isinstance(cfg, MADArgmaxConfig)
        return cfg.eps if cfg.norm == "l1" else None

    def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
        cfg = self.config
        assert isinstance(cfg, MADArgmaxConfig)
        y64 = y.to(torch.float64)
        m = self.gram(x, y64)
        solve = (
            argmax_preserving_exhaustive
            if y.shape[1] <= EXHAUSTIVE_MAX_K
            else argmax_preserving_greedy
        )
        target = solve(m, y64, cfg.eps, cfg.norm, cfg.score_interpolated)
        alpha = interpolation_alpha(y64, target, cfg.eps, cfg.norm)
        return keep_top1(interpolate(y64, target, alpha).to(y.dtype), y)
