"""Unit tests for the baseline output-perturbation defenses (ALGORITHMS §1 table).

Covers every registered baseline (``none``, ``top1``, ``topk``, ``rounding``, ``random``,
``noise``, ``reverse_sigmoid``) and ``deceptive`` (a detection policy's answer to flagged rows)
at several strengths: outputs on the simplex, batch invariance,
seeded determinism, L1 budgets, top-1 preservation (with adversarial ties), no mutation of the
inputs, input and parameter validation, and hand-computed values of the math.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from stealproof import defenses
from stealproof.defenses.base import Defense
from stealproof.errors import InputValidationError, UnknownNameError

#: Reproducible in CI: derandomised, no example database, no deadline (first calls are slow).
HYP = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ATOL = 1e-6
SUM_ATOL = 1e-5
NEG_ATOL = 1e-7

BASELINES = ["none", "top1", "topk", "rounding", "random", "noise", "reverse_sigmoid", "deceptive"]

#: (name, params) settings covering several strengths of every baseline.
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("top1", {}),
    ("topk", {"k": 1}),
    ("topk", {"k": 2}),
    ("topk", {"k": 5}),
    ("rounding", {"decimals": 0}),
    ("rounding", {"decimals": 1}),
    ("rounding", {"decimals": 2}),
    ("random", {"eps": 0.0, "seed": 0}),
    ("random", {"eps": 0.3, "seed": 1}),
    ("random", {"eps": 2.0, "seed": 2}),
    ("noise", {"eps_z": 0.1, "norm": "l1", "seed": 0}),
    ("noise", {"eps_z": 0.1, "norm": "l2", "seed": 0}),
    ("noise", {"eps_z": 5.0, "norm": "l1", "seed": 3}),
    ("noise", {"eps_z": 5.0, "norm": "l2", "seed": 3}),
    ("reverse_sigmoid", {"beta": 0.1, "gamma": 0.2}),
    ("reverse_sigmoid", {"beta": 0.7, "gamma": 0.2}),
    ("reverse_sigmoid", {"beta": 1.0, "gamma": 0.2}),
    ("reverse_sigmoid", {"beta": 0.7, "gamma": 1.0}),
    ("reverse_sigmoid", {"beta": 1.0, "gamma": 1.0}),
    ("deceptive", {"seed": 0}),
    ("deceptive", {"top_min": 0.6, "top_max": 0.6, "seed": 1}),
    ("deceptive", {"top_min": 0.51, "top_max": 1.0, "seed": 2}),
]


def _id(setting: tuple[str, dict[str, Any]]) -> str:
    name, params = setting
    return name + "".join(f"-{k}={v}" for k, v in params.items() if k != "seed")


SETTING_IDS = [_id(s) for s in SETTINGS]
TOP1_SETTINGS = [s for s in SETTINGS if defenses.get_defense_class(s[0]).preserves_top1]
TOP1_IDS = [_id(s) for s in TOP1_SETTINGS]
BUDGET_SETTINGS = [s for s in SETTINGS if defenses.create(s[0], **s[1]).l1_budget() is not None]
BUDGET_IDS = [_id(s) for s in BUDGET_SETTINGS]
RANDOMIZED_SETTINGS = [s for s in SETTINGS if defenses.get_defense_class(s[0]).randomized]
RANDOMIZED_IDS = [_id(s) for s in RANDOMIZED_SETTINGS]
DTYPES = [torch.float32, torch.float64]


def make(setting: tuple[str, dict[str, Any]]) -> Defense:
    name, params = setting
    return defenses.create(name, **params)


# --------------------------------------------------------------------------- strategies


@st.composite
def batches(
    draw: st.DrawFn,
    min_b: int = 1,
    max_b: int = 16,
    min_k: int = 2,
    max_k: int = 50,
) -> tuple[Tensor, Tensor, np.ndarray]:
    """(x, y, perm): images [B,3,4,4] in [0,1], float64 posteriors [B,K], a batch permutation.

    y = softmax(logits / T) with a drawn temperature T (and a per-row jitter of it), so both
    peaked and flat rows occur; some rows are replaced by adversarial shapes: an exact tie
    between the top class and another (placed *before* it, so that a tie-break on the lower
    index would flip top-1), an exact one-hot row, an exactly uniform row, a near-uniform row.
    """
    b = draw(st.integers(min_b, max_b), label="B")
    k = draw(st.integers(min_k, max_k), label="K")
    log10_t = draw(st.floats(-2.0, 1.5), label="log10 temperature")
    kinds = draw(
        st.lists(
            st.sampled_from(["plain", "plain", "tie", "tie_low", "onehot", "uniform", "flat"]),
            min_size=b,
            max_size=b,
        ),
        label="row kinds",
    )
    seed = draw(st.integers(0, 2**32 - 1), label="numpy seed")
    rng = np.random.default_rng(seed)
    temps = 10.0 ** (log10_t + rng.uniform(-0.5, 0.5, size=(b, 1)))
    logits = rng.standard_normal((b, k)) * 3.0 / temps
    for i, kind in enumerate(kinds):
        top = int(np.argmax(logits[i]))
        if kind == "tie":
            other = int((top + 1 + rng.integers(k - 1)) % k)
            logits[i, other] = logits[i, top]
        elif kind == "tie_low" and top > 0:
            # the tie partner sits at a lower index than the original top class
            logits[i, int(rng.integers(top))] = logits[i, top]
        elif kind == "onehot":
            logits[i] = -np.inf
            logits[i, int(rng.integers(k))] = 0.0
        elif kind == "uniform":
            logits[i] = 0.0
        elif kind == "flat":
            logits[i] = rng.standard_normal(k) * 1e-3
    y = torch.softmax(torch.from_numpy(logits), dim=1)
    x = torch.from_numpy(rng.uniform(0.0, 1.0, size=(b, 3, 4, 4))).float()
    return x, y, rng.permutation(b)


def fixed_batch(b: int = 64, k: int = 10, seed: int = 1234) -> tuple[Tensor, Tensor]:
    """A fixed, varied batch (no one-hot rows) used where a property needs many rows."""
    g = torch.Generator().manual_seed(seed)
    temps = 10.0 ** (torch.rand(b, 1, generator=g, dtype=torch.float64) * 2 - 1)
    y = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64) / temps, dim=1)
    x = torch.rand(b, 3, 4, 4, generator=g)
    return x, y


def assert_on_simplex(out: Tensor, y: Tensor) -> None:
    assert out.shape == y.shape
    assert out.dtype == y.dtype
    assert bool(torch.isfinite(out).all()), out
    assert float(out.min()) >= -NEG_ATOL, float(out.min())
    sums = out.sum(dim=1, dtype=torch.float64)
    assert torch.allclose(sums, torch.ones_like(sums), rtol=0.0, atol=SUM_ATOL), sums


# --------------------------------------------------------------------------- registry basics


def test_every_baseline_is_registered_and_covered() -> None:
    assert set(BASELINES) <= set(defenses.available())
    assert {name for name, _ in SETTINGS} == set(BASELINES)


def test_class_flags() -> None:
    flags = {n: defenses.get_defense_class(n) for n in BASELINES}
    assert {n for n, c in flags.items() if c.preserves_top1} == {
        "none",
        "top1",
        "topk",
        "rounding",
        "deceptive",
    }
    assert {n for n, c in flags.items() if c.randomized} == {"random", "noise", "deceptive"}
    assert defenses.create("none").l1_budget() == 0.0
    assert defenses.create("random", eps=0.7).l1_budget() == pytest.approx(0.7)
    for name in ["top1", "topk", "rounding", "noise", "reverse_sigmoid", "deceptive"]:
        assert defenses.create(name).l1_budget() is None


# --------------------------------------------------------------------- 1. simplex + 6. no mutation


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
@HYP
@given(data=batches())
def test_output_on_simplex_and_inputs_not_mutated(
    setting: tuple[str, dict[str, Any]],
    dtype: torch.dtype,
    data: tuple[Tensor, Tensor, np.ndarray],
) -> None:
    x, y64, _ = data
    y = y64.to(dtype)
    logits = torch.log(y.clamp_min(1e-30))
    x0, y0, l0 = x.clone(), y.clone(), logits.clone()
    d = make(setting)
    for args in [(None, y, None), (x, y, None), (x, y, logits)]:
        out = d(*args)
        assert_on_simplex(out, y)
        assert out.data_ptr() != y.data_ptr()
    assert torch.equal(x, x0)
    assert torch.equal(y, y0)
    assert torch.equal(logits, l0)
    # the output is a new tensor: writing to it leaves the caller's y alone
    out.fill_(7.0)
    assert torch.equal(y, y0)


# --------------------------------------------------------------------------- 2. batch invariance


@pytest.mark.parametrize("with_x", [False, True], ids=["no-x", "x"])
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
@HYP
@given(data=batches())
def test_batch_invariance(
    setting: tuple[str, dict[str, Any]], with_x: bool, data: tuple[Tensor, Tensor, np.ndarray]
) -> None:
    x, y, perm = data
    xs = x if with_x else None
    d = make(setting)
    out = d(xs, y)
    for i in range(y.shape[0]):
        single = d(None if xs is None else xs[i : i + 1], y[i : i + 1])
        assert single.shape == (1, y.shape[1])
        assert torch.allclose(out[i], single[0], rtol=0.0, atol=ATOL), (i, out[i], single[0])
    p = torch.from_numpy(perm)
    out_perm = d(None if xs is None else xs[p], y[p])
    assert torch.allclose(out_perm, out[p], rtol=0.0, atol=ATOL)


@pytest.mark.parametrize("setting", RANDOMIZED_SETTINGS, ids=RANDOMIZED_IDS)
def test_randomized_batch_invariance_with_x_fixed_batch(
    setting: tuple[str, dict[str, Any]],
) -> None:
    """Row i's answer must not depend on row 0's image (keys are hashed from (x, y) per row)."""
    x, y = fixed_batch(b=8)
    d = make(setting)
    out = d(x, y)
    singles = torch.cat([d(x[i : i + 1], y[i : i + 1]) for i in range(8)])
    assert torch.allclose(out, singles, rtol=0.0, atol=ATOL), (out - singles).abs().amax(dim=1)
    # the same rows behind a different first row
    out2 = d(torch.cat([1.0 - x[:1], x[1:]]), y)
    assert torch.allclose(out2[1:], out[1:], rtol=0.0, atol=ATOL)


# --------------------------------------------------------------------------- 3. determinism


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
@HYP
@given(data=batches(), dtype=st.sampled_from(DTYPES))
def test_same_params_same_output(
    setting: tuple[str, dict[str, Any]], data: tuple[Tensor, Tensor, np.ndarray], dtype: torch.dtype
) -> None:
    x, y64, _ = data
    y = y64.to(dtype)
    d1, d2 = make(setting), make(setting)
    a = d1(x, y)
    assert torch.equal(d1(None, y), d2(None, y))
    assert torch.equal(a, d2(x, y))
    # a repeated identical query gets the identical answer from the same instance
    assert torch.equal(a, d1(x, y))


@pytest.mark.parametrize("setting", RANDOMIZED_SETTINGS, ids=RANDOMIZED_IDS)
def test_different_seed_changes_output(setting: tuple[str, dict[str, Any]]) -> None:
    name, params = setting
    x, y = fixed_batch()
    a = defenses.create(name, **{**params, "seed": 11})
    b = defenses.create(name, **{**params, "seed": 12})
    active = params.get("eps", params.get("eps_z", 1.0)) > 0
    for xs in [None, x]:
        for dtype in DTYPES:
            ya = a(xs, y.to(dtype))
            yb = b(xs, y.to(dtype))
            rows_differ = (ya - yb).abs().amax(dim=1) > 1e-6
            if active:
                assert int(rows_differ.sum()) >= 1
                # with 64 varied rows and K=10, most rows should change
                assert int(rows_differ.sum()) >= y.shape[0] // 2, int(rows_differ.sum())
            else:
                assert not bool(rows_differ.any())


@pytest.mark.parametrize("setting", RANDOMIZED_SETTINGS, ids=RANDOMIZED_IDS)
def test_randomness_is_keyed_by_x_too(setting: tuple[str, dict[str, Any]]) -> None:
    """Same y with different images: the answer is keyed on (x, y), so it may differ."""
    name, params = setting
    x, y = fixed_batch()
    d = make(setting)
    a, b = d(x, y), d(1.0 - x, y)
    active = params.get("eps", params.get("eps_z", 1.0)) > 0
    changed = int(((a - b).abs().amax(dim=1) > 1e-6).sum())
    assert (changed >= y.shape[0] // 2) if active else (changed == 0), (name, changed)


# --------------------------------------------------------------------------- 4. L1 budget


@pytest.mark.parametrize("setting", BUDGET_SETTINGS, ids=BUDGET_IDS)
@HYP
@given(data=batches(), dtype=st.sampled_from(DTYPES))
def test_l1_budget_respected(
    setting: tuple[str, dict[str, Any]], dtype: torch.dtype, data: tuple[Tensor, Tensor, np.ndarray]
) -> None:
    x, y64, _ = data
    y = y64.to(dtype)
    d = make(setting)
    budget = d.l1_budget()
    assert budget is not None
    for xs in [None, x]:
        l1 = (d(xs, y).double() - y.double()).abs().sum(dim=1)
        assert bool((l1 <= budget + 1e-5).all()), (l1.max(), budget)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 1.0, 1.7, 2.0])
@HYP
@given(data=batches())
def test_random_l1_equals_min_eps_and_receiver_room(
    eps: float, data: tuple[Tensor, Tensor, np.ndarray]
) -> None:
    """L1 = 2m with m = min(ε/2, 1 − y_r); r is the one class whose mass went up."""
    x, y, _ = data
    d = defenses.create("random", eps=eps, seed=5)
    for xs in [None, x]:
        out = d(xs, y)
        diff = out - y
        l1 = diff.abs().sum(dim=1)
        assert bool((l1 <= eps + 1e-9).all())
        if eps == 0:
            assert torch.equal(out, y)
            continue
        # exactly one entry increases, and it is not the argmax
        up = diff > 0
        assert bool((up.sum(dim=1) == 1).all()), up.sum(dim=1)
        receiver = up.int().argmax(dim=1)
        assert bool((receiver != y.argmax(dim=1)).all())
        y_r = y.gather(1, receiver[:, None])[:, 0]
        expected = torch.minimum(torch.full_like(y_r, eps), 2.0 * (1.0 - y_r))
        assert torch.allclose(l1, expected, rtol=0.0, atol=1e-9), (l1, expected)
        # the receiver is a non-argmax class, so y_r ≤ 1/2 and some mass always moves
        assert bool((l1 > 0).all())
        # mass is only taken from the other classes, never added
        others = diff.scatter(1, receiver[:, None], 0.0)
        assert bool((others <= 1e-12).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_random_distorts_every_row_including_peaked(dtype: torch.dtype) -> None:
    y = torch.tensor(
        [[0.7, 0.2, 0.1], [0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]], dtype=dtype
    )
    out = defenses.create("random", eps=0.3, seed=0)(None, y)
    l1 = (out - y).abs().sum(dim=1)
    assert bool((l1 > 0.29).all()) and bool((l1 <= 0.3 + 1e-6).all()), l1


# --------------------------------------------------------------------------- 5. top-1 kept


@pytest.mark.parametrize("setting", TOP1_SETTINGS, ids=TOP1_IDS)
@HYP
@given(data=batches(), dtype=st.sampled_from(DTYPES))
def test_top1_kept_where_promised(
    setting: tuple[str, dict[str, Any]], dtype: torch.dtype, data: tuple[Tensor, Tensor, np.ndarray]
) -> None:
    x, y64, _ = data
    y = y64.to(dtype)
    d = make(setting)
    for xs in [None, x]:
        out = d(xs, y)
        assert torch.equal(out.argmax(dim=1), y.argmax(dim=1)), (y, out)


TIE_ROWS = [
    [0.4, 0.4, 0.2],  # two equal maxima, first one wins
    [0.2, 0.4, 0.4],  # two equal maxima at the end
    [0.44, 0.43, 0.13],  # round to the same value at 1 decimal
    [0.43, 0.44, 0.13],  # ... with the true top at the higher index
    [0.13, 0.43, 0.44],
    [0.26, 0.25, 0.25, 0.24],  # near-uniform
    [0.24, 0.25, 0.25, 0.26],  # near-uniform, top last
    [0.25, 0.25, 0.25, 0.25],  # exactly uniform
    [0.349, 0.351, 0.3],  # rounds to all zeros at 0 decimals, tie at 1, 2
    [0.0, 0.5, 0.5],
    [1 / 3, 1 / 3, 1 / 3],
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("row", TIE_ROWS, ids=[str(i) for i in range(len(TIE_ROWS))])
@pytest.mark.parametrize(
    "setting",
    [*TOP1_SETTINGS, ("rounding", {"decimals": 3}), ("topk", {"k": 3})],
    ids=[*TOP1_IDS, "rounding-decimals=3", "topk-k=3"],
)
def test_top1_kept_on_adversarial_rows(
    setting: tuple[str, dict[str, Any]], row: list[float], dtype: torch.dtype
) -> None:
    y = torch.tensor([row], dtype=dtype)
    out = make(setting)(None, y)
    assert_on_simplex(out, y)
    assert out.argmax(dim=1).item() == y.argmax(dim=1).item(), (row, out)
    # and top-1 is strictly on top: no tie that a different tie-break could flip
    top = out[0, y.argmax(dim=1).item()]
    others = out[0].clone()
    others[y.argmax(dim=1).item()] = -1.0
    if not bool((y[0] == y[0].max()).sum() > 1):
        assert float(top) > float(others.max()), (row, out)


# Rows that sum to 1 only within the accepted 1e-4 and whose two largest entries are adjacent
# float32 numbers (the true top at the higher index). Renormalising (and, for rounding, casting
# the float64 result back to float32) collapses the two into an exact tie, and argmax then
# returns the lower index: top-1 changes although these defenses promise to keep it.
ADJACENT_F32_CASES = [
    (("topk", {"k": 3}), [0.4382040798664093, 0.4382041096687317, 0.12366963177919388]),
    (("topk", {"k": 5}), [0.4382040798664093, 0.4382041096687317, 0.12366963177919388]),
    (("rounding", {"decimals": 12}), [0.4999960958957672, 0.4999961256980896, 0.0]),
    (
        ("rounding", {"decimals": 12}),
        [0.48718100786209106, 0.48718103766441345, 0.025679156184196472],
    ),
    (("rounding", {"decimals": 9}), [0.35737669467926025, 0.35737672448158264, 0.2851576507091522]),
]


@pytest.mark.parametrize(
    ("setting", "row"),
    ADJACENT_F32_CASES,
    ids=[f"{_id(s)}-{i}" for i, (s, _) in enumerate(ADJACENT_F32_CASES)],
)
def test_top1_kept_float32_adjacent_top_values(
    setting: tuple[str, dict[str, Any]], row: list[float]
) -> None:
    y = torch.tensor([row], dtype=torch.float32)
    assert abs(float(y.double().sum()) - 1.0) < 1e-4  # a valid, accepted input
    assert y[0, 1] > y[0, 0]  # strictly ordered, top-1 is class 1
    out = make(setting)(None, y)
    assert_on_simplex(out, y)
    assert out.argmax(dim=1).item() == 1, (row, out.tolist())


# --------------------------------------------------------------------------- 7. ART batch bug


def test_top1_each_row_gets_its_own_argmax() -> None:
    y = torch.tensor(
        [
            [0.7, 0.2, 0.1, 0.0],
            [0.1, 0.6, 0.2, 0.1],
            [0.1, 0.2, 0.6, 0.1],
            [0.1, 0.1, 0.2, 0.6],
            [0.05, 0.9, 0.05, 0.0],
        ]
    )
    out = defenses.create("top1")(None, y)
    expected = torch.zeros_like(y)
    expected[torch.arange(5), y.argmax(dim=1)] = 1.0
    assert torch.equal(out, expected)
    assert torch.equal((out == 1).sum(dim=1), torch.ones(5, dtype=torch.long))
    assert torch.equal((out == 0).sum(dim=1), torch.full((5,), 3))


@HYP
@given(data=batches(min_b=2))
def test_top1_is_one_hot_at_own_argmax(data: tuple[Tensor, Tensor, np.ndarray]) -> None:
    _, y, _ = data
    out = defenses.create("top1")(None, y)
    assert torch.equal(out.sum(dim=1), torch.ones(y.shape[0], dtype=y.dtype))
    assert torch.equal((out == 1).sum(dim=1), torch.ones(y.shape[0], dtype=torch.long))
    assert torch.equal(out.argmax(dim=1), y.argmax(dim=1))


# --------------------------------------------------------------------------- 8. bad input

Case = Callable[[], tuple[Any, Any, Any]]


def _y() -> Tensor:
    return torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.3, 0.4]])


def _x(b: int = 3) -> Tensor:
    return torch.rand(b, 1, 2, 2, generator=torch.Generator().manual_seed(0))


def _with(y: Tensor, i: int, j: int, v: float) -> Tensor:
    y = y.clone()
    y[i, j] = v
    return y


BAD_INPUTS: list[tuple[str, Case, str]] = [
    ("nan", lambda: (None, _with(_y(), 1, 1, math.nan), None), r"y: contains non-finite.*1 NaN"),
    ("inf", lambda: (None, _with(_y(), 0, 2, math.inf), None), r"y: contains non-finite.*1 inf"),
    (
        "negative",
        lambda: (None, torch.tensor([[1.1, -0.1, 0.0], [0.2, 0.3, 0.5]]), None),
        r"y: contains negative probabilities",
    ),
    (
        "sum-1.01",
        lambda: (None, torch.tensor([[0.5, 0.3, 0.2], [0.51, 0.3, 0.2]]), None),
        r"y: rows must sum to 1 within 0\.0001; row 1 sums to 1\.01",
    ),
    (
        "sum-0.99",
        lambda: (None, torch.tensor([[0.49, 0.3, 0.2]], dtype=torch.float64), None),
        r"rows must sum to 1",
    ),
    ("1d", lambda: (None, torch.tensor([0.5, 0.5]), None), r"y: expected a 2-D tensor.*\(2,\)"),
    (
        "3d",
        lambda: (None, torch.full((2, 2, 2), 0.5), None),
        r"y: expected a 2-D tensor.*\(2, 2, 2\)",
    ),
    ("empty", lambda: (None, torch.zeros(0, 3), None), r"y: empty batch"),
    ("one-class", lambda: (None, torch.ones(4, 1), None), r"y: expected at least 2 classes"),
    ("list", lambda: (None, [[0.5, 0.5]], None), r"y: expected a torch\.Tensor, got list"),
    (
        "int-dtype",
        lambda: (None, torch.tensor([[1, 0], [0, 1]]), None),
        r"y: expected a floating-point tensor, got torch\.int64",
    ),
    ("x-batch", lambda: (_x(2), _y(), None), r"x: expected 3 rows .* got 2"),
    (
        "x-nan",
        lambda: (_with(_x().view(3, 4), 0, 0, math.nan).view(3, 1, 2, 2), _y(), None),
        r"x: contains non-finite",
    ),
    ("x-above-1", lambda: (_x() + 1.0, _y(), None), r"x: pixels must lie in \[0, 1\]"),
    ("x-below-0", lambda: (_x() - 1.0, _y(), None), r"x: pixels must lie in \[0, 1\]"),
    ("x-list", lambda: (_x().tolist(), _y(), None), r"x: expected a torch\.Tensor"),
    (
        "logits-shape",
        lambda: (None, _y(), torch.zeros(3, 4)),
        r"logits: expected shape \(3, 3\).*got \(3, 4\)",
    ),
    (
        "logits-nan",
        lambda: (None, _y(), _with(torch.zeros(3, 3), 0, 0, math.nan)),
        r"logits: contains non-finite",
    ),
]


@pytest.mark.parametrize(
    ("case", "match"), [(c, m) for _, c, m in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS]
)
@pytest.mark.parametrize("name", BASELINES)
def test_bad_input_raises(name: str, case: Case, match: str) -> None:
    d = defenses.create(name)
    x, y, logits = case()
    with pytest.raises(ValueError, match=match) as info:
        d(x, y, logits)
    assert isinstance(info.value, InputValidationError)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_sum_slightly_off_is_accepted(
    setting: tuple[str, dict[str, Any]], dtype: torch.dtype
) -> None:
    """Rows within the 1e-4 sum tolerance are valid input; the output is a valid posterior
    (defenses that only move mass, like ``none`` and ``random``, keep the input's sum)."""
    y = torch.tensor([[0.5 + 5e-5, 0.3, 0.2], [0.1, 0.2, 0.7 - 5e-5]], dtype=torch.float64)
    y = y.to(dtype)
    out = make(setting)(_x(2), y)
    assert out.shape == y.shape and out.dtype == y.dtype
    assert bool(torch.isfinite(out).all()) and float(out.min()) >= -NEG_ATOL
    sums = out.sum(dim=1, dtype=torch.float64)
    assert torch.allclose(sums, torch.ones_like(sums), rtol=0.0, atol=1e-4), sums
    assert torch.equal(out.argmax(dim=1), y.argmax(dim=1)) or not make(setting).preserves_top1


# --------------------------------------------------------------------------- 9. bad params


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("topk", {"k": 0}, r"topk: k: .*greater than or equal to 1.*\(got 0\)"),
        ("topk", {"k": 2.5}, r"topk: k:"),
        ("rounding", {"decimals": -1}, r"rounding: decimals: .*\(got -1\)"),
        ("rounding", {"decimals": 13}, r"rounding: decimals:"),
        ("random", {"eps": 3}, r"random: eps: .*less than or equal to 2.*\(got 3\)"),
        ("random", {"eps": -0.1}, r"random: eps:"),
        ("noise", {"eps_z": -1.0}, r"noise: eps_z:"),
        ("noise", {"norm": "l3"}, r"noise: norm: .*'l1'.*'l2'.*\(got 'l3'\)"),
        ("reverse_sigmoid", {"beta": 2}, r"reverse_sigmoid: beta: .*\(got 2\)"),
        ("reverse_sigmoid", {"beta": -0.5}, r"reverse_sigmoid: beta:"),
        ("reverse_sigmoid", {"gamma": 0.0}, r"reverse_sigmoid: gamma: .*greater than 0"),
        ("topk", {"nonexistent": 1}, r"topk: unknown parameter 'nonexistent' \(valid names: k\)"),
        ("none", {"k": 1}, r"none: unknown parameter 'k' \(it takes no parameters\)"),
        ("top1", {"k": 1}, r"top1: unknown parameter 'k'"),
        ("noise", {"eps_z": float("inf")}, r"noise: eps_z: .*finite"),
        ("noise", {"eps_z": float("nan")}, r"noise: eps_z: .*finite"),
        ("reverse_sigmoid", {"gamma": float("inf")}, r"reverse_sigmoid: gamma: .*finite"),
    ],
)
def test_bad_params_raise_naming_the_field(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        defenses.create(name, **params)
    assert isinstance(info.value, InputValidationError)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown defense 'nope'") as info:
        defenses.create("nope")
    msg = str(info.value)
    assert "available:" in msg
    for name in defenses.available():
        assert name in msg


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean reverse_sigmoid"):
        defenses.create("reverse_sigmoid_")
    with pytest.raises(UnknownNameError, match=r"did you mean .*topk"):
        defenses.create("topK")


# --------------------------------------------------------------------------- 10. math


def reverse_sigmoid_reference(y: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """ALGORITHMS §1, written independently in numpy float64."""
    yc = np.clip(y.astype(np.float64), 1e-9, 1.0 - 1e-9)
    z = np.log(yc / (1.0 - yc))
    r = beta * (1.0 / (1.0 + np.exp(-gamma * z)) - 0.5)
    t = np.clip(yc - r, 0.0, 1.0)
    return t / t.sum(axis=1, keepdims=True)


RS_SETTINGS = [s for s in SETTINGS if s[0] == "reverse_sigmoid"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("setting", RS_SETTINGS, ids=[_id(s) for s in RS_SETTINGS])
@HYP
@given(data=batches())
def test_reverse_sigmoid_matches_formula(
    setting: tuple[str, dict[str, Any]], dtype: torch.dtype, data: tuple[Tensor, Tensor, np.ndarray]
) -> None:
    _, y64, _ = data
    y = y64.to(dtype)
    beta, gamma = setting[1]["beta"], setting[1]["gamma"]
    expected = reverse_sigmoid_reference(y.double().numpy(), beta, gamma)
    out = make(setting)(None, y)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=0.0, atol=atol)


def test_reverse_sigmoid_hand_values() -> None:
    # γ = 1: σ(logit y) = y, so ỹ ∝ (1 − β)y + β/2
    y = torch.tensor([[0.7, 0.2, 0.1], [0.8, 0.2, 0.0]], dtype=torch.float64)
    out = defenses.create("reverse_sigmoid", beta=0.5, gamma=1.0)(None, y)
    expected = torch.tensor(
        [[0.6 / 1.25, 0.35 / 1.25, 0.3 / 1.25], [0.65 / 1.25, 0.35 / 1.25, 0.25 / 1.25]],
        dtype=torch.float64,
    )
    assert torch.allclose(out, expected, rtol=0.0, atol=1e-8)
    # β = 1, γ = 1 on two classes gives the uniform row
    two = torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    out2 = defenses.create("reverse_sigmoid", beta=1.0, gamma=1.0)(None, two)
    assert torch.allclose(out2, torch.tensor([[0.5, 0.5]], dtype=torch.float64), atol=1e-8)
    # β = 0 is the identity (up to the 1e-9 clip)
    out3 = defenses.create("reverse_sigmoid", beta=0.0, gamma=0.2)(None, y)
    assert torch.allclose(out3, y, rtol=0.0, atol=1e-8)


def test_reverse_sigmoid_can_change_top1() -> None:
    """Documented: with γ < 1 the top class can change (hence preserves_top1 is False).

    For small y, y − β·σ(γ·logit y) decreases in y when γ < 1 (σ(γ·logit y) ≈ y^γ), so the
    order of small probabilities reverses: on a flat 60-class row class 0 (0.05) ends below
    the 58 classes at ≈0.0157.
    """
    y = torch.tensor([[0.05, 0.04] + [0.91 / 58] * 58], dtype=torch.float64)
    ref = reverse_sigmoid_reference(y.numpy(), 1.0, 0.2)
    out = defenses.create("reverse_sigmoid", beta=1.0, gamma=0.2)(None, y)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0.0, atol=1e-12)
    assert y.argmax().item() == 0
    assert out.argmax().item() != 0
    assert float(out[0, 0]) < float(out[0, 2])
    assert not defenses.get_defense_class("reverse_sigmoid").preserves_top1


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_topk_hand_values(dtype: torch.dtype) -> None:
    y = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]], dtype=dtype)
    out = defenses.create("topk", k=2)(None, y)
    expected = torch.tensor(
        [[0.625, 0.375, 0.0], [0.0, 0.375, 0.625], [0.0, 2 / 3, 1 / 3]], dtype=dtype
    )
    assert torch.allclose(out, expected, rtol=0.0, atol=ATOL)
    assert torch.equal(defenses.create("topk", k=1)(None, y), defenses.create("top1")(None, y))


@HYP
@given(data=batches())
def test_topk_keeps_exactly_k_and_their_ratios(data: tuple[Tensor, Tensor, np.ndarray]) -> None:
    _, y, _ = data
    k = 2
    out = defenses.create("topk", k=k)(None, y)
    kk = min(k, y.shape[1])
    assert bool(((out > 0).sum(dim=1) <= kk).all())
    idx = torch.sort(y, dim=1, descending=True, stable=True).indices[:, :kk]
    kept = y.gather(1, idx)
    expected = torch.zeros_like(y).scatter(1, idx, kept / kept.sum(dim=1, keepdim=True))
    assert torch.allclose(out, expected, rtol=0.0, atol=1e-12)


def test_topk_k_at_least_classes_is_identity_on_normalised_rows() -> None:
    _, y = fixed_batch(k=4)
    out = defenses.create("topk", k=5)(None, y)
    assert torch.allclose(out, y, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_rounding_hand_values(dtype: torch.dtype) -> None:
    d1 = defenses.create("rounding", decimals=1)
    y = torch.tensor([[0.46, 0.44, 0.10], [0.44, 0.43, 0.13], [0.43, 0.44, 0.13]], dtype=dtype)
    expected = torch.tensor([[0.5, 0.4, 0.1], [0.5, 0.4, 0.1], [0.4, 0.5, 0.1]], dtype=dtype)
    assert torch.allclose(d1(None, y), expected, rtol=0.0, atol=ATOL)
    # rounds to 0.3, 0.3, 0.3 -> renormalised thirds, plus the tie fix on the top class
    y2 = torch.tensor([[0.34, 0.33, 0.33]], dtype=dtype)
    assert torch.allclose(
        d1(None, y2), torch.tensor([[0.4, 0.3, 0.3]], dtype=dtype), rtol=0.0, atol=ATOL
    )
    # decimals=0: a row that rounds to all zeros becomes one-hot(argmax)
    d0 = defenses.create("rounding", decimals=0)
    y3 = torch.tensor([[0.3, 0.4, 0.3], [0.8, 0.1, 0.1]], dtype=dtype)
    assert torch.equal(d0(None, y3), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=dtype))
    # decimals=2 renormalises after rounding
    d2 = defenses.create("rounding", decimals=2)
    y4 = torch.tensor([[0.333, 0.333, 0.334]], dtype=dtype)
    assert torch.allclose(
        d2(None, y4), torch.tensor([[0.33, 0.33, 0.34]], dtype=dtype), rtol=0.0, atol=ATOL
    )


def rounding_reference(y: np.ndarray, decimals: int) -> np.ndarray:
    """Round each row to ``decimals`` places; if another class ties the top one, give the top
    class one more rounding unit (keeps top-1); renormalise (ALGORITHMS §1 + rounding.py)."""
    unit = 10.0**-decimals
    out = np.round(y / unit) * unit
    for i in range(y.shape[0]):
        top = int(np.argmax(y[i]))
        others = np.delete(out[i], top)
        if others.max() >= out[i, top]:
            out[i, top] += unit
    return out / out.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("decimals", [0, 1, 2, 3])
@HYP
@given(data=batches())
def test_rounding_matches_reference(decimals: int, data: tuple[Tensor, Tensor, np.ndarray]) -> None:
    _, y, _ = data
    out = defenses.create("rounding", decimals=decimals)(None, y)
    expected = rounding_reference(y.numpy(), decimals)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@HYP
@given(data=batches())
def test_noise_with_zero_eps_returns_y(
    norm: str, dtype: torch.dtype, data: tuple[Tensor, Tensor, np.ndarray]
) -> None:
    x, y64, _ = data
    y = y64.to(dtype)
    d = defenses.create("noise", eps_z=0.0, norm=norm, seed=3)
    for xs in [None, x]:
        assert torch.allclose(d(xs, y), y, rtol=0.0, atol=ATOL)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_noise_with_positive_eps_moves_unsaturated_rows(norm: str) -> None:
    _, y = fixed_batch()
    out = defenses.create("noise", eps_z=0.5, norm=norm, seed=0)(None, y)
    # peaked rows saturate the sigmoid and move little, but every row moves
    assert bool(((out - y).abs().sum(dim=1) > 1e-9).all())
    assert float((out - y).abs().sum(dim=1).median()) > 1e-3
    # larger noise moves rows further on average
    big = defenses.create("noise", eps_z=5.0, norm=norm, seed=0)(None, y)
    assert float((big - y).abs().sum(dim=1).mean()) > float((out - y).abs().sum(dim=1).mean())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@HYP
@given(data=batches())
def test_random_with_zero_eps_returns_y(
    dtype: torch.dtype, data: tuple[Tensor, Tensor, np.ndarray]
) -> None:
    x, y64, _ = data
    y = y64.to(dtype)
    d = defenses.create("random", eps=0.0, seed=9)
    for xs in [None, x]:
        assert torch.allclose(d(xs, y), y, rtol=0.0, atol=ATOL)


def test_random_hand_values() -> None:
    """Mass ε/2 goes to one non-argmax class, taken from the others in proportion."""
    y = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    out = defenses.create("random", eps=0.2, seed=0)(None, y)
    r = int((out - y).argmax())
    assert r != 0
    expected = y * (1.0 - 0.1 / (1.0 - y[0, r]))
    expected[0, r] = y[0, r] + 0.1
    assert torch.allclose(out, expected, rtol=0.0, atol=1e-12)
    # K = 2: the only receiver is the other class; ε = 2 moves everything the cap allows
    two = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    out2 = defenses.create("random", eps=2.0, seed=0)(None, two)
    assert torch.allclose(out2, torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_none_returns_a_copy(dtype: torch.dtype) -> None:
    _, y = fixed_batch()
    y = y.to(dtype)
    out = defenses.create("none")(None, y)
    assert torch.equal(out, y)
    assert out.data_ptr() != y.data_ptr()
