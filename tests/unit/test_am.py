"""Unit tests for Adaptive Misinformation (ALGORITHMS §1.3).

1. ``adaptive_alpha`` = sigmoid(ν(τ − c)), overflow-free for ν = 1e4;
2. ``misinformation_loss`` = −log(1 − p_y), finite when p_y saturates;
3. ``outlier_exposure_loss`` = CE + λ · CE-to-uniform on outliers;
4. ``train_adaptive_misinformation`` on a tiny separable problem;
5. the registered defense: the mixing formula, simplex, batch invariance, τ extremes, errors and
   ``AdaptiveMisinformation.prepare``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from stealproof import defenses
from stealproof.defenses.am import (
    AdaptiveMisinformation,
    adaptive_alpha,
    misinformation_loss,
    outlier_exposure_loss,
    train_adaptive_misinformation,
)
from stealproof.errors import ConfigError, InputValidationError
from stealproof.models.registry import create_model
from stealproof.train import TrainConfig

K = 4


def make_model(k: int = K, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("mlp", image_size=(8, 8), hidden=(16,), num_classes=k)
    return model.eval()


def make_batch(b: int, k: int = K, seed: int = 0, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Images [B,1,8,8] and float64 posteriors softmax(scale · N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 8, 8, generator=g)
    y = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64) * scale, dim=1)
    return x, y


# --------------------------------------------------------------------------- 1. alpha


@pytest.mark.parametrize("nu", [0.5, 1.0, 10.0, 50.0])
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.8, 1.0])
def test_adaptive_alpha_matches_logistic_formula(tau: float, nu: float) -> None:
    c = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    expected = 1.0 / (1.0 + np.exp(-nu * (tau - c.numpy())))
    got = adaptive_alpha(c, tau, nu)
    assert got.shape == c.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)
    # float32 confidences give the same α to float32 precision
    got32 = adaptive_alpha(c.float(), tau, nu)
    np.testing.assert_allclose(got32.double().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adaptive_alpha_steep_switch_is_finite(dtype: torch.dtype) -> None:
    nu = 1e4
    # c far below τ → α = 1; c far above τ → α = 0 (both ways round: 0 and 1)
    low = adaptive_alpha(torch.tensor([0.0], dtype=dtype), 1.0, nu)
    high = adaptive_alpha(torch.tensor([1.0], dtype=dtype), 0.0, nu)
    assert bool(torch.isfinite(low).all()) and bool(torch.isfinite(high).all())
    assert float(low) == pytest.approx(1.0, abs=1e-12)
    assert float(high) == pytest.approx(0.0, abs=1e-12)
    c = torch.tensor([0.0, 0.1, 0.45, 0.55, 0.9, 1.0], dtype=dtype)
    a = adaptive_alpha(c, 0.5, nu)
    assert bool(torch.isfinite(a).all())
    assert torch.allclose(a[:3].double(), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(a[3:].double(), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    # even ν = 1e30 does not overflow
    huge = adaptive_alpha(torch.tensor([0.0, 1.0], dtype=dtype), 0.5, 1e30)
    assert bool(torch.isfinite(huge).all())
    assert huge.tolist() == [1.0, 0.0]
    # α is ½ exactly at c = τ and decreasing in c
    assert float(adaptive_alpha(torch.tensor([0.5], dtype=dtype), 0.5, nu)) == 0.5
    assert bool((a[1:] <= a[:-1]).all())


# --------------------------------------------------------------------------- 2. misinformation


def test_misinformation_loss_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(1)
    for k in (2, 3, 10):
        z = torch.randn(32, k, generator=g, dtype=torch.float64) * 2.0
        labels = torch.randint(0, k, (32,), generator=g)
        p_y = torch.softmax(z, dim=1).gather(1, labels[:, None])[:, 0]
        direct = -torch.log(1.0 - p_y).mean()
        got = misinformation_loss(z, labels)
        assert got.shape == ()
        assert float(got) == pytest.approx(float(direct), rel=1e-12, abs=1e-12)
        got32 = misinformation_loss(z.float(), labels)
        assert float(got32) == pytest.approx(float(direct), rel=1e-5)


def test_misinformation_loss_is_finite_when_saturated() -> None:
    k = 5
    z = torch.zeros(2, k)
    z[0, 2] = 30.0  # float32 softmax gives p_y = 1 exactly → the naive formula is inf
    z[1, 0] = 30.0
    labels = torch.tensor([2, 0])
    naive = -torch.log(1.0 - torch.softmax(z, dim=1).gather(1, labels[:, None]))
    assert bool(torch.isinf(naive).all())  # the case the stable form is for
    got = misinformation_loss(z, labels)
    # −log(1 − p_y) = log(e^30 + k − 1) − log(k − 1)
    exact = math.log(math.exp(30.0) + k - 1) - math.log(k - 1)
    assert math.isfinite(float(got))
    assert float(got) == pytest.approx(exact, rel=1e-6)
    # far beyond saturation it is still finite (and large), and so is its gradient
    z_big = z.clone().requires_grad_(True)
    with torch.no_grad():
        z_big[0, 2] = 1e4
    loss = misinformation_loss(z_big, labels)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 1e3
    assert z_big.grad is not None and bool(torch.isfinite(z_big.grad).all())


def test_misinformation_loss_prefers_low_true_class_probability() -> None:
    labels = torch.tensor([0])
    high = misinformation_loss(torch.tensor([[3.0, 0.0, 0.0]]), labels)
    low = misinformation_loss(torch.tensor([[-3.0, 0.0, 0.0]]), labels)
    assert float(low) < float(high)
    assert float(low) >= 0.0


# --------------------------------------------------------------------------- 3. OE loss


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 3.0])
def test_outlier_exposure_loss_hand_made(lam: float) -> None:
    logits_id = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    logits_ood = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [4.0, 0.0, 0.0]], dtype=torch.float64
    )

    def log_softmax(row: list[float]) -> list[float]:
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        return [v - lse for v in row]

    ce = -np.mean([log_softmax(r)[t] for r, t in zip(logits_id.tolist(), [0, 1], strict=True)])
    uniform = np.mean([-np.mean(log_softmax(r)) for r in logits_ood.tolist()])
    expected = ce + lam * uniform
    got = outlier_exposure_loss(logits_id, labels, logits_ood, lam)
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
    # a uniform outlier row costs exactly log K, the minimum of CE-to-uniform
    only_uniform = outlier_exposure_loss(logits_id, labels, logits_ood[:1], 1.0)
    assert float(only_uniform) == pytest.approx(ce + math.log(3), rel=1e-12)


# --------------------------------------------------------------------------- 4. training

#: Top-left corners of the 3×3 bright patch that identifies each class.
PATCH = [(0, 0), (0, 5), (5, 2), (5, 5)]


def separable(n: int, k: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """In-distribution: dark images with a bright patch at the class's place; outliers: noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    x = 0.15 * torch.rand(n, 1, 8, 8, generator=g)
    for i in range(n):
        r, c = PATCH[int(labels[i])]
        x[i, 0, r : r + 3, c : c + 3] = 0.85 + 0.15 * torch.rand(3, 3, generator=g)
    outliers = torch.rand(n, 1, 8, 8, generator=g)
    return x, labels, outliers


@pytest.mark.parametrize("k", [2, 3, 4])
def test_train_adaptive_misinformation_separable(k: int) -> None:
    """Measured (seed 0, 2 epochs): OE max-prob ID 0.74-0.99 vs outliers 0.31-0.58;
    p_true misinformation 0.002-0.03 vs OE 0.74-0.99."""
    x, labels, outliers = separable(192, k, seed=0)
    x_test, l_test, o_test = separable(96, k, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2)

    def make() -> nn.Module:
        return create_model("mlp", image_size=(8, 8), hidden=(16,), num_classes=k)

    x0, o0 = x.clone(), outliers.clone()
    oe, mis = train_adaptive_misinformation(make, x, labels, outliers, cfg, seed=0)
    assert torch.equal(x, x0) and torch.equal(outliers, o0)
    assert not oe.training and not mis.training
    assert oe is not mis
    with torch.no_grad():
        p_id = torch.softmax(oe(x_test), dim=1)
        p_ood = torch.softmax(oe(o_test), dim=1)
        p_mis = torch.softmax(mis(x_test), dim=1)
    assert float(p_id.amax(dim=1).mean()) > float(p_ood.amax(dim=1).mean()) + 0.1
    true_mis = p_mis.gather(1, l_test[:, None]).mean()
    true_oe = p_id.gather(1, l_test[:, None]).mean()
    assert float(true_mis) < float(true_oe) - 0.3
    assert float(true_mis) < 1.0 / k  # below chance: it misinforms
    # deterministic under the seed
    oe2, mis2 = train_adaptive_misinformation(make, x, labels, outliers, cfg, seed=0)
    for a, b in ((oe, oe2), (mis, mis2)):
        for (n, t), t2 in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(t, t2), n
    oe3, _ = train_adaptive_misinformation(make, x, labels, outliers, cfg, seed=1)
    assert any(
        not torch.equal(t, t3)
        for t, t3 in zip(oe.state_dict().values(), oe3.state_dict().values(), strict=True)
    )


# --------------------------------------------------------------------------- 5. the defense


@pytest.fixture(scope="module")
def mis() -> nn.Module:
    return make_model(K, seed=1)


@pytest.fixture(scope="module")
def scorer() -> nn.Module:
    return make_model(K, seed=2)


def expected_output(
    x: Tensor, y: Tensor, mis: nn.Module, scorer: nn.Module | None, tau: float, nu: float
) -> Tensor:
    """(1 − α)y + α·softmax(mis(x)), α = 1/(1 + exp(−ν(τ − conf))) in float64."""
    with torch.no_grad():
        y_mis = torch.softmax(mis(x).double(), dim=1)
        if scorer is None:
            conf = y.double().amax(dim=1)
        else:
            conf = torch.softmax(scorer(x).double(), dim=1).amax(dim=1)
    with np.errstate(over="ignore"):  # exp overflows to inf for ν = 1e4: α = 1/inf = 0
        alpha = torch.from_numpy(1.0 / (1.0 + np.exp(-nu * (tau - conf.numpy()))))
    return (1 - alpha[:, None]) * y.double() + alpha[:, None] * y_mis


SETTINGS = [(0.3, 5.0), (0.5, 20.0), (0.6, 1e4), (0.8, 1e4), (0.45, 1.0)]


@pytest.mark.parametrize("use_scorer", [False, True], ids=["max-y", "scorer"])
@pytest.mark.parametrize(("tau", "nu"), SETTINGS)
def test_defense_matches_formula_and_protocol(
    mis: nn.Module, scorer: nn.Module, use_scorer: bool, tau: float, nu: float
) -> None:
    sc = scorer if use_scorer else None
    d = defenses.create("am", misinformation=mis, scorer=sc, tau=tau, nu=nu)
    assert d.l1_budget() is None
    x, y64 = make_batch(30, seed=3, scale=2.0)
    expected = expected_output(x, y64, mis, sc, tau, nu)
    for y in (y64, y64.float()):
        x0, y0 = x.clone(), y.clone()
        out = d(x, y)
        assert torch.equal(x, x0) and torch.equal(y, y0)
        assert out.shape == y.shape and out.dtype == y.dtype
        assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0.0
        sums = out.double().sum(dim=1)
        assert torch.allclose(sums, torch.ones_like(sums), rtol=0.0, atol=1e-5)
        tol = 1e-12 if y.dtype == torch.float64 else 1e-6
        assert torch.allclose(out.double(), expected, rtol=0.0, atol=tol)
        assert torch.equal(d(x, y), out)
        perm = torch.randperm(30, generator=torch.Generator().manual_seed(4))
        assert torch.allclose(d(x[perm], y[perm]), out[perm], rtol=0.0, atol=1e-6)
        single = torch.cat([d(x[i : i + 1], y[i : i + 1]) for i in range(30)])
        assert torch.allclose(single, out, rtol=0.0, atol=1e-6)


def test_defense_mixes_both_regimes(mis: nn.Module) -> None:
    """With max-y confidence at τ = 0.6, ν = 1e4: peaked rows pass, flat rows are replaced."""
    x, _ = make_batch(2, seed=5)
    y = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.3, 0.3, 0.2, 0.2]], dtype=torch.float64)
    out = defenses.create("am", misinformation=mis, tau=0.6, nu=1e4)(x, y)
    with torch.no_grad():
        y_mis = torch.softmax(mis(x).double(), dim=1)
    assert torch.allclose(out[0], y[0], atol=1e-12)
    assert torch.allclose(out[1], y_mis[1], atol=1e-12)


@pytest.mark.parametrize("use_scorer", [False, True], ids=["max-y", "scorer"])
def test_tau_extremes(mis: nn.Module, scorer: nn.Module, use_scorer: bool) -> None:
    sc = scorer if use_scorer else None
    x, y = make_batch(25, seed=6)
    with torch.no_grad():
        y_mis = torch.softmax(mis(x).double(), dim=1)
        conf = y.amax(dim=1) if sc is None else torch.softmax(sc(x).double(), dim=1).amax(dim=1)
    # τ = 1 → α ≈ 1 wherever conf ≤ 0.99 (ν·0.01 = 100)
    assert float(conf.max()) <= 0.99
    out1 = defenses.create("am", misinformation=mis, scorer=sc, tau=1.0)(x, y)
    assert torch.allclose(out1, y_mis, rtol=0.0, atol=1e-12)
    # τ = 0 → α ≈ 0 for any confidence > 0 (conf ≥ 1/K here)
    out0 = defenses.create("am", misinformation=mis, scorer=sc, tau=0.0)(x, y)
    assert torch.allclose(out0, y, rtol=0.0, atol=1e-12)


def test_missing_misinformation_model_raises() -> None:
    with pytest.raises(ValueError, match=r"am: needs a misinformation model"):
        defenses.create("am", tau=0.5)


@pytest.mark.parametrize("use_scorer", [False, True], ids=["max-y", "scorer"])
def test_missing_x_raises(mis: nn.Module, scorer: nn.Module, use_scorer: bool) -> None:
    d = defenses.create("am", misinformation=mis, scorer=scorer if use_scorer else None)
    _, y = make_batch(3)
    with pytest.raises(ValueError, match=r"am: needs the inputs x"):
        d(None, y)


def test_class_count_mismatch_raises(mis: nn.Module) -> None:
    d = defenses.create("am", misinformation=mis)
    x, y = make_batch(3, k=K + 1)
    msg = rf"(y: expected {K} classes, got {K + 1}|the misinformation model has {K} classes)"
    with pytest.raises(ValueError, match=msg):
        d(x, y)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"tau": 2}, r"am: tau: .*less than or equal to 1.*\(got 2\)"),
        ({"tau": -0.1}, r"am: tau: .*greater than or equal to 0"),
        ({"nu": 0}, r"am: nu: .*greater than 0"),
        ({"nu": -5.0}, r"am: nu: "),
        ({"lam": -1.0}, r"am: lam: "),
        ({"epochs": 0}, r"am: epochs: "),
        ({"bogus": 1}, r"am: unknown parameter 'bogus'"),
    ],
)
def test_bad_params_raise_naming_the_field(
    mis: nn.Module, params: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        AdaptiveMisinformation(misinformation=mis, **params)
    assert isinstance(info.value, InputValidationError)


def _with(t: Tensor, i: int, j: int, v: float) -> Tensor:
    t = t.clone()
    t[i, j] = v
    return t


def _x(b: int = 3) -> Tensor:
    return make_batch(b, seed=7)[0]


def _y() -> Tensor:
    return make_batch(3, seed=7)[1]


BAD_INPUTS: list[tuple[str, Callable[[], tuple[Any, Any]], str]] = [
    ("y-nan", lambda: (_x(), _with(_y(), 0, 0, math.nan)), r"y: contains non-finite"),
    ("y-negative", lambda: (_x(), _with(_y(), 0, 0, -0.2)), r"y: contains negative"),
    ("y-sum", lambda: (_x(), _y() * 1.1), r"y: rows must sum to 1"),
    ("y-1d", lambda: (_x(1), _y()[0]), r"y: expected a 2-D tensor"),
    ("y-3d", lambda: (_x(), _y()[None]), r"y: expected a 2-D tensor"),
    ("y-empty", lambda: (_x(), _y()[:0]), r"y: empty batch"),
    ("x-nan", lambda: (_with(_x(), 1, 0, math.nan), _y()), r"x: contains non-finite"),
    ("x-range", lambda: (_x() * 3.0, _y()), r"x: pixels must lie in \[0, 1\]"),
    ("x-batch", lambda: (_x(4), _y()), r"x: expected 3 rows"),
    ("x-empty", lambda: (_x()[:0], _y()), r"empty batch"),
]


@pytest.mark.parametrize(
    ("case", "match"), [(c, m) for _, c, m in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS]
)
def test_bad_input_raises(mis: nn.Module, case: Callable[[], tuple[Any, Any]], match: str) -> None:
    d = defenses.create("am", misinformation=mis)
    x, y = case()
    with pytest.raises(ValueError, match=match):
        d(x, y)


def test_wrong_image_shape_raises_value_error(mis: nn.Module) -> None:
    """x whose per-example shape is not the model's (1×8×9 for an 8×8 model) is a bad input:
    it should be a ValueError naming x, not a RuntimeError from inside the model."""
    d = defenses.create("am", misinformation=mis)
    _, y = make_batch(3)
    with pytest.raises(ValueError, match=r"x"):
        d(torch.rand(3, 1, 8, 9), y)


def test_prepare_builds_working_seeded_defense() -> None:
    victim = make_model(K, seed=10)
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    before = copy.deepcopy(victim.state_dict())
    d1 = AdaptiveMisinformation.prepare(victim, images, epochs=1, tau=0.7)
    d2 = AdaptiveMisinformation.prepare(victim, images, epochs=1, tau=0.7)
    assert isinstance(d1, AdaptiveMisinformation) and isinstance(d2, AdaptiveMisinformation)
    assert d1.scorer is not None and d1.scorer is not victim
    assert not d1.misinformation.training and not d1.scorer.training
    for n, t in victim.state_dict().items():
        assert torch.equal(t, before[n])
    x, y = make_batch(16, seed=12)
    out = d1(x, y)
    assert out.shape == y.shape and bool(torch.isfinite(out).all())
    assert torch.allclose(out.sum(dim=1), torch.ones(16, dtype=torch.float64), atol=1e-9)
    assert torch.equal(out, d2(x, y))
    assert torch.allclose(out, expected_output(x, y, d1.misinformation, d1.scorer, 0.7, 1e4))
    # 'victim' scoring keeps no scorer of its own
    d3 = AdaptiveMisinformation.prepare(victim, images, epochs=1, own_scorer=False)
    assert isinstance(d3, AdaptiveMisinformation) and d3.scorer is None
    # another seed trains other models
    d4 = AdaptiveMisinformation.prepare(victim, images, epochs=1, seed=1)
    assert isinstance(d4, AdaptiveMisinformation)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            d1.misinformation.state_dict().values(),
            d4.misinformation.state_dict().values(),
            strict=True,
        )
    )


@pytest.mark.parametrize("own_scorer", [True, False])
def test_rebuild_from_params_and_models(own_scorer: bool) -> None:
    """What ``stealproof attack --models DIR`` does (cli.build_defense): rebuild the defense
    from its saved ``params`` and its saved models, ``cls(**params, **models)``."""
    victim = make_model(K, seed=13)
    images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(14))
    d = AdaptiveMisinformation.prepare(victim, images, epochs=1, own_scorer=own_scorer, tau=0.6)
    saved = {k: v for k, v in d.models().items() if v is not None}
    rebuilt = AdaptiveMisinformation(**d.params, **saved)
    assert rebuilt.params == d.params
    x, y = make_batch(8, seed=15)
    assert torch.equal(rebuilt(x, y), d(x, y))


def test_replace_shares_models(mis: nn.Module, scorer: nn.Module) -> None:
    d = defenses.create("am", misinformation=mis, scorer=scorer, tau=0.5, nu=20.0)
    d2 = d.replace(tau=0.3)
    assert isinstance(d2, AdaptiveMisinformation)
    assert d2.misinformation is mis and d2.scorer is scorer
    assert d2.params["tau"] == 0.3 and d.params["tau"] == 0.5
    x, y = make_batch(10, seed=16)
    fresh = defenses.create("am", misinformation=mis, scorer=scorer, tau=0.3, nu=20.0)
    assert torch.equal(d2(x, y), fresh(x, y))
    with pytest.raises(ValueError, match=r"am: tau: "):
        d.replace(tau=1.5)


def test_prepare_needs_a_classifier() -> None:
    with pytest.raises(ConfigError, match=r"am: prepare needs a stealproof Classifier"):
        AdaptiveMisinformation.prepare(nn.Linear(64, K), torch.rand(8, 1, 8, 8), epochs=1)
