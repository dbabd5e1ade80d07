"""Unit tests for GRAD² — gradient redirection (ALGORITHMS §1.2).

1. the greedy LP solver against ``scipy.optimize.linprog`` (optimality and feasibility);
2. the argmax-preserving cap (ours): top-1 kept, feasible, objective between y's and greedy's;
3. the score engines (JVP, double backward, central finite difference) against an explicit
   Jacobian of log softmax;
4. the registered defense: simplex, L1 budget, batch invariance, determinism, no mutation,
   engine agreement, the ``min_ip`` Gram form, targets and every documented error;
5. ``Grad2.prepare``: a frozen, seeded, distilled surrogate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from scipy.stats import spearmanr
from torch import Tensor, nn
from torch.func import functional_call

from stealproof import defenses
from stealproof.defenses.grad2 import (
    Grad2,
    ShiftedModel,
    all_ones_direction,
    argmax_capped_redirect,
    auto_fd_step,
    greedy_redirect,
    redirect_with_mass,
    scores_double_backward,
    scores_jvp,
)
from stealproof.defenses.gram import full_gram, last_layer_gram
from stealproof.errors import ConfigError, InputValidationError
from stealproof.models.base import Classifier
from stealproof.models.registry import create_model
from stealproof.surrogate import distill_surrogate

HYP = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Small architectures (8×8 grey images) for the model-based tests.
MODEL_KW: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": (16,)},
    "lenet": {"channels": (2, 3), "fc": 8},
}
ENGINES = ["jvp", "finite_difference", "double_backward"]
TARGETS = ["all_ones", "min_ip", "watermark", "direction"]
COMBOS = [
    (e, t) for e in ENGINES for t in TARGETS if not (e == "finite_difference" and t == "min_ip")
]
COMBO_IDS = [f"{e}-{t}" for e, t in COMBOS]
K_DEF = 6  # classes of the defense tests' surrogate

#: torch.func.jvp calls torch.jit.script internally (torch's own deprecation warning).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


# --------------------------------------------------------------------------- helpers


def make_model(name: str, k: int, seed: int = 0) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, image_size=(8, 8), num_classes=k, **MODEL_KW[name])
    return model.eval()


def random_direction(model: nn.Module, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()
    }


def random_y(rng: np.random.Generator, k: int, kind: str) -> np.ndarray:
    """One float64 posterior row of the given kind (sums to 1 to round-off)."""
    if kind == "onehot":
        y = np.zeros(k)
        y[rng.integers(k)] = 1.0
        return y
    if kind == "near_onehot":
        y = rng.dirichlet(np.ones(k)) * 10.0 ** rng.uniform(-12, -4)
        y[rng.integers(k)] += 1.0 - y.sum()
        return y
    if kind == "uniform":
        return np.full(k, 1.0 / k)
    t = 10.0 ** (rng.uniform(-3, -1.5) if kind == "peaked" else rng.uniform(-1, 1))
    z = rng.standard_normal(k) / t
    if kind == "tie_top" and k > 2:
        top = int(np.argmax(z))
        z[int(rng.integers(top + 1)) if top > 0 else 1] = z[top]
    y = np.exp(z - z.max())
    return y / y.sum()


def random_s(rng: np.random.Generator, k: int, kind: str, y: np.ndarray) -> np.ndarray:
    scale = 10.0 ** rng.uniform(-2, 1)
    if kind == "int":  # many ties
        return rng.integers(0, 3, size=k).astype(np.float64)
    if kind == "const":
        return np.full(k, rng.standard_normal())
    s = rng.standard_normal(k) * scale
    if kind == "max_at_top":
        top = int(np.argmax(y))
        s[top] = s.max() + abs(rng.standard_normal()) * scale
    elif kind == "tie_max":
        top = int(np.argmax(s))
        s[int((top + 1 + rng.integers(k - 1)) % k)] = s[top]
    return s


def lp_optimum(y: np.ndarray, s: np.ndarray, eps: float) -> float:
    """max sᵀỹ s.t. ỹ ≥ 0, Σỹ = 1, Σ t ≤ ε, t ≥ ±(ỹ − y) — variables [ỹ; t]."""
    k = y.shape[0]
    eye = np.eye(k)
    zeros = np.zeros((1, k))
    a_ub = np.block([[eye, -eye], [-eye, -eye], [zeros, np.ones((1, k))]])
    b_ub = np.concatenate([y, -y, [eps]])
    a_eq = np.concatenate([np.ones(k), np.zeros(k)])[None]
    res = linprog(
        np.concatenate([-s, np.zeros(k)]),
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=[1.0],
        bounds=(0, None),
        method="highs",
        # HiGHS' default 1e-7 feasibility tolerance lets it beat the true optimum by ~3e-7
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    assert res.status == 0, res.message
    return float(-res.fun)


def objective(out: Tensor, s: Tensor) -> Tensor:
    return (out.double() * s.double()).sum(dim=1)


def assert_feasible(out: Tensor, y: Tensor, eps: Tensor | float, tol: float = 1e-9) -> None:
    assert bool(torch.isfinite(out).all())
    assert float(out.min()) >= -tol, float(out.min())
    sums = out.double().sum(dim=1)
    assert float((sums - 1).abs().max()) <= tol, sums
    l1 = (out.double() - y.double()).abs().sum(dim=1)
    e = torch.as_tensor(eps, dtype=torch.float64).expand_as(l1)
    assert bool((l1 <= e + tol).all()), (l1 - e).max()


def explicit_scores(model: nn.Module, x: Tensor, direction: dict[str, Tensor]) -> Tensor:
    """(∂ log softmax f(x; θ) / ∂θ_flat) @ a_flat in float64, by the full Jacobian."""
    m = copy.deepcopy(model).double().eval()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    a = torch.cat([direction[n].double().reshape(-1) for n in names])
    buffers = dict(m.named_buffers())

    def logp(v: Tensor) -> Tensor:
        params, i = {}, 0
        for n, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            params[n] = v[i : i + size].view(shape)
            i += size
        return torch.log_softmax(functional_call(m, (params, buffers), (x.double(),)), dim=1)

    jac: Tensor = torch.autograd.functional.jacobian(logp, flat)  # [B, K, P]
    assert jac.shape == (x.shape[0], int(logp(flat).shape[1]), flat.numel())
    return jac @ a


def make_batch(b: int, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """Images [B,1,8,8] and float64 posteriors of varied kinds (one-hot, ties, peaked…)."""
    rng = np.random.default_rng(seed)
    kinds = ["plain", "plain", "peaked", "onehot", "near_onehot", "uniform", "tie_top"]
    y = np.stack([random_y(rng, k, kinds[i % len(kinds)]) for i in range(b)])
    y = y / y.sum(axis=1, keepdims=True)
    x = torch.from_numpy(rng.uniform(0.0, 1.0, size=(b, 1, 8, 8))).float()
    return x, torch.from_numpy(y)


# --------------------------------------------------------------------------- 1. LP optimality

Y_KINDS = ["plain", "peaked", "onehot", "near_onehot", "uniform", "tie_top"]
S_KINDS = ["gauss", "gauss", "int", "const", "max_at_top", "tie_max"]


def lp_instances(n: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray, float, str, str]]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = [2, 100][i] if i < 2 else int(rng.integers(2, 101))
        y_kind = Y_KINDS[i % len(Y_KINDS)]
        s_kind = S_KINDS[(i // len(Y_KINDS)) % len(S_KINDS)]
        eps = [0.0, 2.0][i % 2] if i % 17 == 0 else float(rng.uniform(0.0, 2.0))
        y = random_y(rng, k, y_kind)
        yield y, random_s(rng, k, s_kind, y), eps, y_kind, s_kind


def test_greedy_reaches_linprog_optimum_and_is_feasible() -> None:
    n = 0
    kinds: set[tuple[str, str]] = set()
    for y_np, s_np, eps, y_kind, s_kind in lp_instances(240, seed=20240601):
        y, s = torch.from_numpy(y_np)[None], torch.from_numpy(s_np)[None]
        out = greedy_redirect(y, s, eps)
        assert out.dtype == torch.float64 and out.shape == y.shape
        assert_feasible(out, y, eps)
        # achieved L1 is 2·min(ε/2, 1 − y_r) (ALGORITHMS §1.2)
        y_r = y_np[int(np.argmax(s_np))]
        l1 = float((out - y).abs().sum())
        assert l1 == pytest.approx(2 * min(eps / 2, 1 - y_r), abs=1e-9)
        best = lp_optimum(y_np, s_np, eps)
        got = float(objective(out, s)[0])
        assert abs(got - best) <= 1e-6, (y_kind, s_kind, y_np.shape[0], eps, got, best)
        n += 1
        kinds.add((y_kind, s_kind))
    assert n >= 200
    assert len(kinds) == len(set(Y_KINDS)) * len(set(S_KINDS))


def test_greedy_zero_eps_returns_y() -> None:
    _, y = make_batch(12, 7, seed=3)
    s = torch.randn(12, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy_redirect(y, s, 0.0), y)


def test_greedy_per_row_eps_equals_scalar_calls() -> None:
    rng = np.random.default_rng(7)
    b, k = 20, 9
    y = torch.from_numpy(np.stack([random_y(rng, k, Y_KINDS[i % 6]) for i in range(b)]))
    s = torch.from_numpy(rng.standard_normal((b, k)))
    eps = torch.from_numpy(rng.uniform(0, 2, size=b))
    eps[0], eps[1] = 0.0, 2.0
    out = greedy_redirect(y, s, eps)
    rows = torch.cat([greedy_redirect(y[i : i + 1], s[i : i + 1], float(eps[i])) for i in range(b)])
    assert torch.allclose(out, rows, rtol=0.0, atol=1e-15)
    assert_feasible(out, y, eps)
    # a list works like a tensor
    assert torch.equal(greedy_redirect(y, s, eps.tolist()), out)  # type: ignore[arg-type]
    # the capped variant takes per-row ε the same way
    capped = argmax_capped_redirect(y, s, eps)
    capped_rows = torch.cat(
        [argmax_capped_redirect(y[i : i + 1], s[i : i + 1], float(eps[i])) for i in range(b)]
    )
    assert torch.allclose(capped, capped_rows, rtol=0.0, atol=1e-15)


@pytest.mark.parametrize("fn", [greedy_redirect, argmax_capped_redirect])
@pytest.mark.parametrize(
    ("eps", "match"),
    [
        (
            torch.full((4,), 0.5, dtype=torch.float64),
            r"eps: expected a scalar or one value per row",
        ),
        (torch.full((3, 1), 0.5, dtype=torch.float64), r"eps: expected a scalar or one value"),
        (torch.full((2,), 0.5, dtype=torch.float64), r"eps: expected a scalar or one value"),
        (-0.1, r"eps: must be non-negative"),
        (torch.tensor([0.5, -1e-3, 0.5], dtype=torch.float64), r"eps: must be non-negative"),
    ],
    ids=["too-many", "column", "too-few", "negative", "negative-row"],
)
def test_bad_eps_raises(fn: Callable[..., Tensor], eps: Any, match: str) -> None:
    _, y = make_batch(3, 5, seed=1)
    s = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        fn(y, s, eps)


# --------------------------------------------------------------------------- 2. argmax cap


@st.composite
def lp_batches(draw: st.DrawFn) -> tuple[Tensor, Tensor, Tensor]:
    """(y, s, ε per row) float64; y rows of every kind, s with ties; ε in [0, 2]."""
    b = draw(st.integers(1, 12), label="B")
    k = draw(st.integers(2, 50), label="K")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    eps_max = draw(st.sampled_from([0.0, 0.05, 0.5, 2.0]), label="eps max")
    rng = np.random.default_rng(seed)
    y = np.stack([random_y(rng, k, Y_KINDS[int(rng.integers(6))]) for _ in range(b)])
    y = y / y.sum(axis=1, keepdims=True)
    s = np.stack([random_s(rng, k, S_KINDS[int(rng.integers(6))], y[i]) for i in range(b)])
    eps = rng.uniform(0, eps_max, size=b)
    eps[rng.random(b) < 0.2] = eps_max
    return torch.from_numpy(y), torch.from_numpy(s), torch.from_numpy(eps)


@HYP
@given(data=lp_batches())
def test_argmax_cap_keeps_top1_and_is_between_y_and_greedy(
    data: tuple[Tensor, Tensor, Tensor],
) -> None:
    y, s, eps = data
    capped = argmax_capped_redirect(y, s, eps)
    greedy = greedy_redirect(y, s, eps)
    assert capped.dtype == torch.float64 and capped.shape == y.shape
    assert torch.equal(capped.argmax(dim=1), y.argmax(dim=1))
    assert_feasible(capped, y, eps)
    obj_c, obj_g, obj_y = objective(capped, s), objective(greedy, s), objective(y, s)
    tol = 1e-9 * (1 + s.abs().amax(dim=1))
    assert bool((obj_c <= obj_g + tol).all()), (obj_c - obj_g).max()
    assert bool((obj_c >= obj_y - tol).all()), (obj_y - obj_c).max()
    same = s.argmax(dim=1) == y.argmax(dim=1)
    assert torch.allclose(capped[same], greedy[same], rtol=0.0, atol=1e-12)


@HYP
@given(data=lp_batches())
def test_argmax_cap_is_the_largest_safe_mass(data: tuple[Tensor, Tensor, Tensor]) -> None:
    """Where the cap bites, moving a little more mass along the greedy path loses top-1."""
    y, s, eps = data
    capped = argmax_capped_redirect(y, s, eps)
    greedy = greedy_redirect(y, s, eps)
    mass = (capped - y).abs().sum(dim=1) / 2
    bites = (greedy - y).abs().sum(dim=1) / 2 > mass + 1e-6
    if not bool(bites.any()):
        return
    more = redirect_with_mass(y[bites], s[bites], mass[bites] + 1e-6)
    top = y[bites].argmax(dim=1, keepdim=True)
    rest = more.scatter(1, top, -math.inf).amax(dim=1)
    assert bool((more.gather(1, top)[:, 0] <= rest).all())


def test_argmax_cap_hand_example() -> None:
    # y = [0.5, 0.3, 0.2], s sends mass to class 2, draining class 1 first, then class 0:
    # ε = 2 would move 0.8 (greedy → [0, 0, 1]); the cap stops just before y2 + m = y0,
    # i.e. m → 0.3 with class 0 still strictly on top.
    y = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    s = torch.tensor([[0.0, -1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(greedy_redirect(y, s, 2.0), torch.tensor([[0.0, 0.0, 1.0]]).double())
    capped = argmax_capped_redirect(y, s, 2.0)
    assert torch.allclose(capped, torch.tensor([[0.5, 0.0, 0.5]]).double(), atol=1e-12)
    assert float(capped[0, 0]) > float(capped[0, 2])
    # a smaller ε that keeps top-1 is not capped at all
    assert torch.allclose(argmax_capped_redirect(y, s, 0.4), greedy_redirect(y, s, 0.4))
    assert torch.allclose(
        greedy_redirect(y, s, 0.4), torch.tensor([[0.5, 0.1, 0.4]]).double(), atol=1e-12
    )


# --------------------------------------------------------------------------- 3. score engines

ENGINE_MODELS = [("mlp", 7), ("lenet", 5)]


def _direction(model: nn.Module, kind: str) -> dict[str, Tensor]:
    return all_ones_direction(model) if kind == "ones" else random_direction(model)


@pytest.mark.parametrize("direction_kind", ["ones", "random"])
@pytest.mark.parametrize(("arch", "k"), ENGINE_MODELS, ids=[a for a, _ in ENGINE_MODELS])
def test_jvp_and_double_backward_equal_explicit_jacobian(
    arch: str, k: int, direction_kind: str
) -> None:
    model = make_model(arch, k)
    direction = _direction(model, direction_kind)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    s_jvp = scores_jvp(model, x, direction)
    s_db = scores_double_backward(model, x, direction)
    s_ref = explicit_scores(model, x, direction)
    assert s_jvp.shape == s_db.shape == (10, k)
    scale = float(s_ref.abs().max())
    assert scale > 0
    assert float((s_jvp.double() - s_db.double()).abs().max()) <= 1e-4 * scale
    assert float((s_jvp.double() - s_ref).abs().max()) <= 1e-4 * scale
    assert float((s_db.double() - s_ref).abs().max()) <= 1e-4 * scale
    # log-probabilities sum-to-one constraint: Σ_k p_k s_k = 0 for every row
    with torch.no_grad():
        p = torch.softmax(copy.deepcopy(model).double()(x.double()), dim=1)
    assert float((p * s_ref).sum(dim=1).abs().max()) <= 1e-9 * scale


@pytest.mark.parametrize("direction_kind", ["ones", "random"])
@pytest.mark.parametrize(("arch", "k"), ENGINE_MODELS, ids=[a for a, _ in ENGINE_MODELS])
def test_finite_difference_rank_agrees_with_jvp(arch: str, k: int, direction_kind: str) -> None:
    """Measured here (64 rows, h = auto_fd_step): mean per-row Spearman 0.998-1.000, argmax
    agreement 100 % of rows, max |s_fd − s| 0.04-0.4 % of max |s| (float32 forwards, ReLU and
    max-pool kinks; up to 6 % and 97 % argmax agreement seen on other seeds/K).
    Thresholds: Spearman ≥ 0.9 on average, argmax ≥ 90 % of rows."""
    model = make_model(arch, k)
    direction = _direction(model, direction_kind)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    before = copy.deepcopy(model.state_dict())
    shifted = ShiftedModel(model, direction, auto_fd_step(model, direction))
    s_fd = shifted.scores(x)
    s_jvp = scores_jvp(model, x, direction)
    assert s_fd.dtype == torch.float64 and s_fd.shape == s_jvp.shape
    rho = [spearmanr(s_fd[i].numpy(), s_jvp[i].numpy())[0] for i in range(x.shape[0])]
    assert float(np.mean(rho)) >= 0.9, np.mean(rho)
    agree = (s_fd.argmax(dim=1) == s_jvp.argmax(dim=1)).double().mean()
    assert float(agree) >= 0.9, float(agree)
    # the shifted copies are copies: the surrogate itself is untouched
    for n, t in model.state_dict().items():
        assert torch.equal(t, before[n])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("arch", "k"), ENGINE_MODELS, ids=[a for a, _ in ENGINE_MODELS])
def test_engine_batch_invariance(arch: str, k: int, engine: str) -> None:
    """A row's scores alone == in a (permuted) batch. float32 BLAS kernels differ by batch size
    (measured ≤ 4e-7 of max |s| for jvp / double backward); the central difference divides
    that round-off by 2h (measured ≤ 1.1e-3 of max |s|, the size of its own error)."""
    model = make_model(arch, k)
    direction = all_ones_direction(model)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    f: Callable[[Tensor], Tensor]
    if engine == "jvp":

        def f(t: Tensor) -> Tensor:
            return scores_jvp(model, t, direction)
    elif engine == "double_backward":

        def f(t: Tensor) -> Tensor:
            return scores_double_backward(model, t, direction)
    else:
        f = ShiftedModel(model, direction, auto_fd_step(model, direction)).scores
    full = f(x)
    scale = float(full.abs().max())
    rel = 5e-3 if engine == "finite_difference" else 1e-5
    single = torch.cat([f(x[i : i + 1]) for i in range(x.shape[0])])
    assert float((single - full).abs().max()) <= rel * scale
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    assert float((f(x[perm]) - full[perm]).abs().max()) <= rel * scale


# --------------------------------------------------------------------------- 4. the defense


@pytest.fixture(scope="module")
def surrogate() -> Classifier:
    return make_model("mlp", K_DEF, seed=11)


def watermark_pair() -> tuple[Tensor, int]:
    return torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(12)), 3


def make_defense(model: nn.Module, engine: str, target: str, **params: Any) -> defenses.Defense:
    extra: dict[str, Any] = {}
    if target == "watermark":
        extra["watermark"] = watermark_pair()
    elif target == "direction":
        extra["direction"] = random_direction(model, seed=13)
    return defenses.create(
        "grad2", surrogate=model, target=target, engine=engine, **extra, **params
    )


@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0, 2.0])
@pytest.mark.parametrize(("engine", "target"), COMBOS, ids=COMBO_IDS)
def test_defense_simplex_budget_invariance_determinism(
    surrogate: nn.Module, engine: str, target: str, eps: float
) -> None:
    d = make_defense(surrogate, engine, target, eps=eps)
    assert d.l1_budget() == eps
    x, y64 = make_batch(21, K_DEF, seed=21)
    for y in (y64, y64.float()):
        x0, y0 = x.clone(), y.clone()
        out = d(x, y)
        assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs not mutated
        assert out.shape == y.shape and out.dtype == y.dtype
        assert bool(torch.isfinite(out).all()) and float(out.min()) >= -1e-7
        sums = out.double().sum(dim=1)
        assert torch.allclose(sums, y.double().sum(dim=1), rtol=0.0, atol=1e-6)
        l1 = (out.double() - y.double()).abs().sum(dim=1)
        assert float(l1.max()) <= eps + 1e-6
        assert torch.equal(d(x, y), out)  # deterministic
        perm = torch.randperm(21, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(d(x[perm], y[perm]), out[perm], rtol=0.0, atol=1e-6)
        single = torch.cat([d(x[i : i + 1], y[i : i + 1]) for i in range(21)])
        assert torch.allclose(single, out, rtol=0.0, atol=1e-6), (single - out).abs().max()
        if eps == 0.0:
            assert torch.equal(out, y)


@pytest.mark.parametrize("engine", ENGINES)
def test_defense_batch_invariance_many_rows(engine: str) -> None:
    """Every row served alone equals the same row served in a batch of 400 (K = 10).

    The jvp / double-backward scores differ between batch sizes only by float32 round-off
    (~2e-7 of max |s|), which never reorders the classes here. The central difference divides
    that round-off by 2h, so near-tied scores swap: with finite_difference 6 of these 400 rows
    (15 of 1000 in a larger run) change by up to 0.25 when served alone; batches of ≥ 3 rows
    agree with each other. Shifted copies in float64 remove it (0 of 1000 rows).
    """
    model = make_model("mlp", 10, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, 8, 8, generator=g)
    y = torch.softmax(torch.randn(400, 10, generator=g, dtype=torch.float64) * 2, dim=1)
    d = defenses.create("grad2", surrogate=model, eps=0.5, engine=engine)
    out = d(x, y)
    single = torch.cat([d(x[i : i + 1], y[i : i + 1]) for i in range(400)])
    diff = (single - out).abs().amax(dim=1)
    bad = torch.nonzero(diff > 1e-6)[:, 0].tolist()
    assert not bad, f"{len(bad)} rows change when served alone (max {float(diff.max()):.3g})"


@pytest.mark.parametrize("target", ["all_ones", "min_ip", "watermark", "direction"])
def test_defense_jvp_and_double_backward_agree(surrogate: nn.Module, target: str) -> None:
    x, y = make_batch(28, K_DEF, seed=22)
    for eps in (0.2, 1.0):
        a = make_defense(surrogate, "jvp", target, eps=eps)(x, y)
        b = make_defense(surrogate, "double_backward", target, eps=eps)(x, y)
        assert torch.allclose(a, b, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("target", ["all_ones", "watermark", "direction"])
def test_defense_equals_greedy_on_explicit_scores(surrogate: nn.Module, target: str) -> None:
    """The whole pipeline: output = greedy(y, (∂ log p/∂θ) a, ε), a from the target."""
    d = make_defense(surrogate, "jvp", target, eps=0.7)
    assert isinstance(d, Grad2) and d.direction is not None
    x, y = make_batch(14, K_DEF, seed=23)
    s = explicit_scores(surrogate, x, d.direction)
    assert torch.allclose(d.scores(x, y), s, rtol=0.0, atol=1e-4 * float(s.abs().max()))
    assert torch.allclose(d(x, y), greedy_redirect(y, s, 0.7), rtol=0.0, atol=1e-6)


def test_watermark_direction_is_log_prob_gradient(surrogate: nn.Module) -> None:
    x_w, y_w = watermark_pair()
    d = make_defense(surrogate, "jvp", "watermark")
    assert isinstance(d, Grad2) and d.direction is not None
    model = copy.deepcopy(surrogate)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    torch.log_softmax(model(x_w), dim=1)[0, y_w].backward()
    for n, p in model.named_parameters():
        assert p.grad is not None
        assert torch.allclose(d.direction[n], p.grad, rtol=1e-5, atol=1e-7)
    # the same as passing that gradient as an explicit direction
    x, y = make_batch(10, K_DEF, seed=24)
    explicit = defenses.create(
        "grad2", surrogate=surrogate, target="direction", direction=d.direction, eps=0.6
    )
    assert torch.equal(explicit(x, y), make_defense(surrogate, "jvp", "watermark", eps=0.6)(x, y))


def test_min_ip_scores_are_minus_gram_times_y(surrogate: Classifier) -> None:
    x, y = make_batch(16, K_DEF, seed=25)
    d = defenses.create("grad2", surrogate=surrogate, target="min_ip", eps=0.8)
    assert isinstance(d, Grad2)
    # direct: M = ‖[h; 1]‖² (I − p1ᵀ)ᵀ(I − p1ᵀ) from the surrogate's features and head
    with torch.no_grad():
        h = surrogate.features(x)
        p = torch.softmax(surrogate.head()(h).double(), dim=1)
        h_sq = h.double().pow(2).sum(dim=1) + 1.0
    m = last_layer_gram(p, h_sq)
    s = -(m @ y[:, :, None])[:, :, 0]
    assert torch.allclose(d.scores(x, y), s, rtol=1e-6, atol=1e-9)
    assert torch.allclose(d(x, y), greedy_redirect(y, s, 0.8), rtol=0.0, atol=1e-9)
    # the closed form is the Gram matrix of the last layer's Jacobian
    prefix = [n.rsplit(".", 1)[0] for n, _ in surrogate.named_parameters()][-1]  # "body.3"
    m_full = full_gram(surrogate, x, layers=(prefix + ".",))
    assert torch.allclose(m_full, m, rtol=1e-4, atol=1e-6 * float(m.abs().max()))
    d_full = defenses.create(
        "grad2", surrogate=surrogate, target="min_ip", eps=0.8, layers=(prefix + ".",)
    )
    assert torch.allclose(d_full(x, y), d(x, y), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize(("engine", "target"), COMBOS, ids=COMBO_IDS)
def test_preserve_argmax_never_changes_top1(surrogate: nn.Module, engine: str, target: str) -> None:
    x, y64 = make_batch(35, K_DEF, seed=26)
    d = make_defense(surrogate, engine, target, eps=2.0, preserve_argmax=True)
    plain = make_defense(surrogate, engine, target, eps=2.0)
    for y in (y64, y64.float()):
        out = d(x, y)
        assert torch.equal(out.argmax(dim=1), y.argmax(dim=1))
        assert float(out.min()) >= -1e-7
        assert torch.allclose(out.double().sum(dim=1), y.double().sum(dim=1), atol=1e-6)
        assert float((out.double() - y.double()).abs().sum(dim=1).max()) <= 2.0 + 1e-6
    # without the cap, ε = 2 does flip top-1 on this batch (so the cap is doing something)
    assert not torch.equal(plain(x, y64).argmax(dim=1), y64.argmax(dim=1))


# --------------------------------------------------------------------------- errors


def test_missing_surrogate_raises() -> None:
    with pytest.raises(ValueError, match=r"grad2: needs a surrogate model"):
        defenses.create("grad2", eps=0.5)


def test_watermark_target_without_watermark_raises(surrogate: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"target='watermark' needs watermark=\(x_w, y_w\)"):
        defenses.create("grad2", surrogate=surrogate, target="watermark")


def _direction_cases(model: nn.Module) -> list[tuple[str, dict[str, Tensor] | None, str]]:
    good = random_direction(model)
    first = next(iter(good))
    missing = {n: t for n, t in good.items() if n != first}
    extra = {**good, "body.99.weight": torch.zeros(2)}
    renamed = {("x" + n if n == first else n): t for n, t in good.items()}
    bad_shape = {**good, first: good[first].reshape(-1)}
    transposed = {**good, first: good[first].T.contiguous()}
    return [
        ("none", None, r"target='direction' needs direction="),
        ("missing", missing, r"direction must have one tensor per surrogate parameter"),
        ("extra", extra, r"direction must have one tensor per surrogate parameter"),
        ("renamed", renamed, r"direction must have one tensor per surrogate parameter"),
        ("flat", bad_shape, rf"direction\['{first}'\] has shape .* expected"),
        ("transposed", transposed, rf"direction\['{first}'\] has shape .* expected"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["none", "missing", "extra", "renamed", "flat", "T"])
def test_bad_direction_raises(surrogate: nn.Module, case: int) -> None:
    _, direction, match = _direction_cases(surrogate)[case]
    with pytest.raises(ValueError, match=match):
        defenses.create("grad2", surrogate=surrogate, target="direction", direction=direction)


def test_finite_difference_with_min_ip_raises(surrogate: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"engine='finite_difference' needs a fixed target"):
        defenses.create("grad2", surrogate=surrogate, target="min_ip", engine="finite_difference")


@pytest.mark.parametrize(("engine", "target"), COMBOS, ids=COMBO_IDS)
def test_missing_x_raises(surrogate: nn.Module, engine: str, target: str) -> None:
    _, y = make_batch(3, K_DEF, seed=27)
    with pytest.raises(ValueError, match=r"grad2: needs the inputs x"):
        make_defense(surrogate, engine, target)(None, y)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"eps": 3}, r"grad2: eps: .*less than or equal to 2.*\(got 3\)"),
        ({"eps": -0.5}, r"grad2: eps: .*greater than or equal to 0"),
        ({"target": "nope"}, r"grad2: target: .*'all_ones'.*\(got 'nope'\)"),
        ({"engine": "nope"}, r"grad2: engine: .*'jvp'.*\(got 'nope'\)"),
        ({"fd_step": 0.0}, r"grad2: fd_step: "),
        ({"bogus": 1}, r"grad2: unknown parameter 'bogus'"),
    ],
)
def test_bad_params_raise_naming_the_field(
    surrogate: nn.Module, params: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        defenses.create("grad2", surrogate=surrogate, **params)
    assert isinstance(info.value, InputValidationError)


def _with(t: Tensor, i: int, j: int, v: float) -> Tensor:
    t = t.clone()
    t[i, j] = v
    return t


def _y3() -> Tensor:
    return make_batch(3, K_DEF, seed=28)[1]


def _x3(b: int = 3) -> Tensor:
    return make_batch(b, K_DEF, seed=28)[0]


BAD_INPUTS: list[tuple[str, Callable[[], tuple[Any, Any]], str]] = [
    ("y-nan", lambda: (_x3(), _with(_y3(), 0, 0, math.nan)), r"y: contains non-finite"),
    ("y-inf", lambda: (_x3(), _with(_y3(), 1, 0, math.inf)), r"y: contains non-finite"),
    ("y-negative", lambda: (_x3(), _with(_y3(), 0, 0, -0.2)), r"y: contains negative"),
    ("y-sum", lambda: (_x3(), _y3() * 0.9), r"y: rows must sum to 1"),
    ("y-1d", lambda: (_x3(1), _y3()[0]), r"y: expected a 2-D tensor"),
    ("y-3d", lambda: (_x3(), _y3()[None]), r"y: expected a 2-D tensor"),
    ("y-empty", lambda: (_x3(), _y3()[:0]), r"y: empty batch"),
    ("y-int", lambda: (_x3(), _y3().long()), r"y: expected a floating-point"),
    ("y-one-class", lambda: (_x3(), torch.ones(3, 1)), r"y: expected (at least 2|6) classes"),
    ("y-classes", lambda: (_x3(), make_batch(3, K_DEF + 1, 28)[1]), r"y: expected 6 classes"),
    ("x-nan", lambda: (_with(_x3(), 0, 0, math.nan), _y3()), r"x: contains non-finite"),
    ("x-range", lambda: (_x3() + 1.5, _y3()), r"x: pixels must lie in \[0, 1\]"),
    ("x-batch", lambda: (_x3(2), _y3()), r"x: expected 3 rows"),
    ("x-empty", lambda: (_x3()[:0], _y3()), r"empty batch"),
    ("x-1d", lambda: (_x3().flatten(), _y3()), r"x: expected a batch"),
    ("x-int", lambda: (_x3().long(), _y3()), r"x: expected floating-point"),
]


@pytest.mark.parametrize(
    ("case", "match"), [(c, m) for _, c, m in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS]
)
def test_bad_input_raises(
    surrogate: nn.Module, case: Callable[[], tuple[Any, Any]], match: str
) -> None:
    d = defenses.create("grad2", surrogate=surrogate, eps=0.5)
    x, y = case()
    with pytest.raises(ValueError, match=match):
        d(x, y)


def test_wrong_image_shape_raises_value_error(surrogate: nn.Module) -> None:
    """x whose per-example shape is not the surrogate's (1×8×9 for an 8×8 model) is a bad
    input: it should be a ValueError naming x, not a RuntimeError from inside the model."""
    d = defenses.create("grad2", surrogate=surrogate, eps=0.5)
    _, y = make_batch(3, K_DEF, seed=29)
    with pytest.raises(ValueError, match=r"x"):
        d(torch.rand(3, 1, 8, 9), y)


@pytest.mark.parametrize("target", TARGETS)
def test_rebuild_from_params_and_models_and_replace(surrogate: nn.Module, target: str) -> None:
    """``cls(**params, **models())`` (what the CLI does with saved models) rebuilds the same
    defense; ``replace`` changes a knob and shares the models."""
    d = make_defense(surrogate, "jvp", target, eps=0.4)
    rebuilt = Grad2(**d.params, **d.models())
    x, y = make_batch(9, K_DEF, seed=30)
    assert rebuilt.params == d.params
    assert torch.equal(rebuilt(x, y), d(x, y))
    d2 = d.replace(eps=1.2)
    assert isinstance(d2, Grad2) and d2.surrogate is surrogate
    assert d2.l1_budget() == 1.2 and d.l1_budget() == 0.4
    assert torch.equal(d2(x, y), make_defense(surrogate, "jvp", target, eps=1.2)(x, y))
    with pytest.raises(ValueError, match=r"grad2: eps: "):
        d.replace(eps=3.0)


# --------------------------------------------------------------------------- 5. prepare


@pytest.fixture(scope="module")
def victim_and_images() -> tuple[nn.Module, Tensor]:
    victim = make_model("mlp", 4, seed=30)
    images = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(31))
    return victim, images


def test_prepare_builds_frozen_seeded_surrogate(
    victim_and_images: tuple[nn.Module, Tensor],
) -> None:
    victim, images = victim_and_images
    before = copy.deepcopy(victim.state_dict())
    d1 = Grad2.prepare(victim, images, eps=0.5, seed=0)
    d2 = Grad2.prepare(victim, images, eps=0.5, seed=0)
    assert isinstance(d1, Grad2) and isinstance(d2, Grad2)
    assert d1.config.eps == 0.5  # type: ignore[attr-defined]
    sur = d1.surrogate
    assert sur is not victim
    assert not sur.training
    assert not any(p.requires_grad for p in sur.parameters())
    assert sur.spec == victim.spec
    # the victim is left as it was
    for n, t in victim.state_dict().items():
        assert torch.equal(t, before[n])
    # trained: different from a fresh init with the same seed, and from the victim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = create_model("mlp", image_size=(8, 8), num_classes=4, **MODEL_KW["mlp"])
    assert any(
        not torch.equal(a, b)
        for a, b in zip(sur.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    # same seed, same surrogate and same outputs
    for n, t in sur.state_dict().items():
        assert torch.equal(t, d2.surrogate.state_dict()[n])
    x, y = make_batch(12, 4, seed=32)
    out = d1(x, y)
    assert torch.equal(out, d2(x, y))
    assert float((out - y).abs().sum(dim=1).max()) <= 0.5 + 1e-6
    # another seed, another surrogate
    d3 = Grad2.prepare(victim, images, eps=0.5, seed=1)
    assert isinstance(d3, Grad2)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(sur.state_dict().values(), d3.surrogate.state_dict().values(), strict=True)
    )


def test_prepare_rejects_bad_params(victim_and_images: tuple[nn.Module, Tensor]) -> None:
    victim, images = victim_and_images
    with pytest.raises(ValueError, match=r"eps"):
        Grad2.prepare(victim, images, eps=5.0)


def test_distill_epochs_beyond_schedule_raises(
    victim_and_images: tuple[nn.Module, Tensor],
) -> None:
    victim, images = victim_and_images
    with pytest.raises(ValueError, match=r"epochs \(3\) must be ≤ schedule_epochs \(2\)"):
        distill_surrogate(victim, images, epochs=3, schedule_epochs=2)


# --------------------------------------------------------------------------- 6. ensembles


@pytest.mark.parametrize("target", TARGETS)
def test_ensemble_scores_are_the_members_mean(surrogate: nn.Module, target: str) -> None:
    """``surrogates=2``: the scores are the mean of each member's, and the answer is the
    redirection of those mean scores (not the mean of two answers)."""
    other = make_model("mlp", K_DEF, seed=41)
    x, y = make_batch(10, K_DEF, seed=42)
    a = make_defense(surrogate, "jvp", target, eps=0.8)
    b = make_defense(other, "jvp", target, eps=0.8)
    both = make_defense(surrogate, "jvp", target, eps=0.8, surrogates=2, surrogate_2=other)
    assert isinstance(a, Grad2) and isinstance(b, Grad2) and isinstance(both, Grad2)
    y64 = y.double()
    mean = (a.scores(x, y64) + b.scores(x, y64)) / 2
    assert torch.allclose(both.scores(x, y64), mean, rtol=1e-12, atol=1e-15)
    out = both(x, y)
    assert torch.allclose(out, greedy_redirect(y64, mean, 0.8).to(y.dtype), atol=1e-12)
    assert not torch.allclose(out, a(x, y))  # the second member changes the answers
    # rebuilt from its params and models (what the benchmark's cache does)
    rebuilt = Grad2(**both.params, **both.models())
    assert set(both.models()) >= {"surrogate", "surrogate_2"}
    assert torch.equal(rebuilt(x, y), out)


def test_ensemble_size_and_member_names_are_checked(surrogate: nn.Module) -> None:
    other = make_model("mlp", K_DEF, seed=41)
    with pytest.raises(ConfigError, match=r"surrogates=2 needs that many models.*got 1"):
        defenses.create("grad2", surrogate=surrogate, surrogates=2)
    with pytest.raises(ConfigError, match=r"surrogates=1 needs that many models.*got 2"):
        defenses.create("grad2", surrogate=surrogate, surrogate_2=other)
    with pytest.raises(ConfigError, match=r"surrogate_2 … surrogate_N; got \[3\]"):
        defenses.create("grad2", surrogate=surrogate, surrogates=2, surrogate_3=other)
    with pytest.raises(ValueError, match=r"surrogates"):
        defenses.create("grad2", surrogate=surrogate, surrogates=0)


def test_prepare_builds_an_ensemble_of_distinct_seeds(
    victim_and_images: tuple[nn.Module, Tensor],
) -> None:
    victim, images = victim_and_images
    d = Grad2.prepare(victim, images, eps=0.5, seed=3, surrogates=2, target="min_ip")
    single = Grad2.prepare(victim, images, eps=0.5, seed=4, target="min_ip")
    assert isinstance(d, Grad2) and isinstance(single, Grad2)
    assert len(d.members) == 2 and set(d.models()) >= {"surrogate", "surrogate_2"}
    second = d.members[1].surrogate.state_dict()
    for n, t in single.surrogate.state_dict().items():  # member 2 is the seed + 1 surrogate
        assert torch.equal(t, second[n])
    assert not torch.equal(d.surrogate.state_dict()["body.1.weight"], second["body.1.weight"])
