"""InI (Isolation and Induction): loss terms, the two gradient engines, the trainer, the CLI.

The engines are compared in float64 on tiny models, term by term and in total, for both orders
of the divergence; the fast engine is also checked against finite differences, so that the two
engines cannot agree on a wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn
from typer.testing import CliRunner

from stealproof.cli import app
from stealproof.data import load_dataset, load_pool
from stealproof.errors import InputValidationError
from stealproof.ini import (
    TERMS,
    IniConfig,
    _CloneForward,
    centered_log_softmax,
    distillation_divergence,
    divergence_residual,
    flat_cosine,
    flat_cosine_grad,
    induction_loss,
    ini_losses,
    pcgrad,
    train_ini,
)
from stealproof.models import Classifier, create_model, load_checkpoint

TOL = 1e-5

MODELS: dict[str, Callable[[], Classifier]] = {
    "mlp": lambda: create_model("mlp", image_size=(8, 8), hidden=(16,)),
    "lenet": lambda: create_model("lenet", image_size=(8, 8), channels=(2, 3), fc=8),
}


def tanh_model() -> Classifier:
    """A classifier the traced JVP does not handle (Tanh): the torch.func fallback runs."""
    body = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))
    return Classifier(body, in_channels=1, image_size=(8, 8), num_classes=10)


def pair(name: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(victim, frozen clone) in float64, different random inits."""
    make = MODELS.get(name, tanh_model)
    torch.manual_seed(seed)
    victim = make().double()
    clone = make().double().eval()
    return victim, clone


def batch(seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    x_ood = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, y, x_ood


def victim_grad(victim: nn.Module, loss: Tensor) -> Tensor:
    params = list(victim.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


# ----------------------------------------------------------------------------- small pieces


def test_centered_log_softmax_has_zero_class_mean_and_ignores_shifts() -> None:
    z = torch.randn(7, 10, dtype=torch.float64) * 5
    t = centered_log_softmax(z)
    assert t.mean(dim=1).abs().max() < 1e-12
    assert torch.allclose(centered_log_softmax(z + 3.0), t, atol=1e-12)
    # it is the centred logits: log_softmax only subtracts a per-row constant
    assert torch.allclose(t, z - z.mean(dim=1, keepdim=True), atol=1e-12)


@pytest.mark.parametrize("divergence", ["forward", "reference"])
def test_residual_is_the_gradient_of_the_divergence(divergence: str) -> None:
    zc = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    zv = torch.randn(4, 6, dtype=torch.float64)
    d = distillation_divergence(zc, zv, divergence)  # type: ignore[arg-type]
    (auto,) = torch.autograd.grad(d, zc)
    r = divergence_residual(zc.detach(), zv, divergence)  # type: ignore[arg-type]
    assert torch.allclose(r / 4, auto, atol=1e-12)
    assert r.sum(dim=1).abs().max() < 1e-12
    assert float(d.detach()) > 0


def test_divergence_orders_differ_and_forward_is_kl_of_victim_to_clone() -> None:
    zc, zv = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    fwd = distillation_divergence(zc, zv, "forward")
    ref = distillation_divergence(zc, zv, "reference")
    expected = F.kl_div(
        F.log_softmax(zc, 1), F.log_softmax(zv, 1), log_target=True, reduction="batchmean"
    )
    assert torch.allclose(fwd, expected)
    assert not torch.allclose(fwd, ref)


def test_cosine_gradient_closed_form_matches_autograd() -> None:
    a = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    b = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    leaves = [t.clone().requires_grad_() for t in a]
    auto = torch.autograd.grad(flat_cosine(leaves, b), leaves)
    cos, grad = flat_cosine_grad(a, b)
    flat = F.cosine_similarity(
        torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b]), dim=0
    )
    assert torch.allclose(cos, flat)
    for g1, g2 in zip(auto, grad, strict=True):
        assert torch.allclose(g1, g2, atol=1e-12)


def test_max_entropy_induction_is_negative_entropy_and_its_step_raises_entropy() -> None:
    torch.manual_seed(0)
    z = (torch.randn(8, 10, dtype=torch.float64) * 3).requires_grad_()
    loss = induction_loss(torch.zeros(8, 10), z, "max_entropy")
    p = F.softmax(z, 1)
    assert torch.allclose(loss, (p * p.log()).sum(1).mean())
    assert -math.log(10) <= float(loss.detach()) <= 0
    (grad,) = torch.autograd.grad(loss, z)
    after = induction_loss(torch.zeros(8, 10), z.detach() - 0.5 * grad, "max_entropy")
    assert float(after) < float(loss.detach())  # lower −H: higher entropy


def test_l1_induction_ignores_the_clone_gradient() -> None:
    zc = torch.randn(4, 10, requires_grad=True)
    zv = torch.randn(4, 10, requires_grad=True)
    loss = induction_loss(zc, zv, "l1")
    assert torch.allclose(loss, (zc - centered_log_softmax(zv)).abs().mean())
    loss.backward()
    assert zc.grad is None and zv.grad is not None


def test_pcgrad_mean_is_the_sum_over_the_terms_count_and_reaches_the_step() -> None:
    """``pcgrad_reduction="mean"`` (the reference code's) averages the same projected terms."""
    grads = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-1.0, 1.0, 0.5]), torch.randn(3)]
    total = pcgrad(grads, torch.Generator().manual_seed(3))
    mean = pcgrad(grads, torch.Generator().manual_seed(3), "mean")
    torch.testing.assert_close(mean, total / 3)
    assert IniConfig().pcgrad_reduction == "sum"
    with pytest.raises(ValidationError):
        IniConfig(pcgrad_reduction="max")


def test_training_step_applies_the_configured_pcgrad_reduction() -> None:
    """One optimiser step moves the victim by the sum of the projected terms, or by their mean
    (the reference's step) — half as far with two terms and no clipping."""
    from stealproof.ini import IniLosses, _step

    moved = {}
    for reduction in ("sum", "mean"):
        w = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
        a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-1.0, 1.0, 0.0])  # in conflict
        zero = (w * 0).sum()
        losses = IniLosses(ce=(w * a).sum(), ood=(w * b).sum(), iso=zero, gind=zero, id=zero)
        cfg = IniConfig(pcgrad_reduction=reduction, max_grad_norm=None)
        opt = torch.optim.SGD([w], lr=1.0)
        before = w.detach().clone()
        _step(opt, [w], losses, {"ce": 1.0, "ood": 1.0}, ["ce", "ood"], cfg,
              torch.Generator().manual_seed(0))  # fmt: skip
        moved[reduction] = before - w.detach()
    expected = pcgrad([torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-1.0, 1.0, 0.0])],
                      torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(moved["sum"], expected)
    torch.testing.assert_close(moved["mean"], expected / 2)


def test_pcgrad_projects_conflicting_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1' = g1 − (−1/2) g2 = [0.5, 0.5]; g2' = g2 − (−1/1) g1 = [0, 1]
    assert torch.allclose(pcgrad([g1, g2], g), torch.tensor([0.5, 1.5]))
    h1, h2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert torch.allclose(pcgrad([h1, h2], g), h1 + h2)  # no conflict: plain sum


def test_config_schedule_follows_the_paper() -> None:
    mnist = IniConfig().resolved(mnist_like=True)
    other = IniConfig().resolved(mnist_like=False)
    assert (mnist.epochs, mnist.step_size, other.epochs, other.step_size) == (50, 20, 150, 50)
    assert IniConfig(epochs=3).resolved(True).epochs == 3
    assert (IniConfig().gamma, IniConfig().delta, IniConfig().eps, IniConfig().beta) == (
        0.3,
        1.0,
        1000.0,
        0.0,
    )
    with pytest.raises(ValueError):
        IniConfig(gamma=-1)


# ----------------------------------------------------------------------------- engines


@pytest.mark.parametrize("model", ["mlp", "lenet"])
@pytest.mark.parametrize("divergence", ["forward", "reference"])
def test_engines_agree_term_by_term(model: str, divergence: str) -> None:
    victim, clone = pair(model)
    x, y, x_ood = batch()
    for term in TERMS:
        values, grads = {}, {}
        for engine in ("reference", "fast"):
            losses = ini_losses(
                victim,
                clone,
                x,
                y,
                x_ood,
                divergence=divergence,
                engine=engine,
                terms=[term],  # type: ignore[arg-type]
            )
            t = getattr(losses, term)
            values[engine] = float(t.detach())
            grads[engine] = victim_grad(victim, t)
        assert abs(values["fast"] - values["reference"]) < TOL, (term, values)
        diff = float((grads["fast"] - grads["reference"]).abs().max())
        assert diff < TOL, (model, divergence, term, diff)
        assert float(grads["reference"].abs().max()) > 0, term  # the comparison is not vacuous


@pytest.mark.parametrize("model", ["mlp", "lenet", "tanh"])
@pytest.mark.parametrize("divergence", ["forward", "reference"])
def test_engines_agree_on_the_total(model: str, divergence: str) -> None:
    victim, clone = pair(model)
    x, y, x_ood = batch()
    weights = IniConfig(beta=0.5).weights()
    totals, grads = {}, {}
    for engine in ("reference", "fast"):
        losses = ini_losses(victim, clone, x, y, x_ood, divergence=divergence, engine=engine)  # type: ignore[arg-type]
        total = losses.total(weights)
        totals[engine] = float(total.detach())
        grads[engine] = victim_grad(victim, total)
    assert abs(totals["fast"] - totals["reference"]) < TOL
    rel = (grads["fast"] - grads["reference"]).abs().max() / grads["reference"].abs().max()
    assert float((grads["fast"] - grads["reference"]).abs().max()) < TOL
    assert float(rel) < 1e-9


@pytest.mark.parametrize("term", ["iso", "gind"])
def test_fast_gradient_matches_finite_differences(term: str) -> None:
    """Both engines could share a wrong loss; check the gradient against the loss itself."""
    victim, clone = pair("lenet", seed=3)
    x, y, x_ood = batch(seed=4)
    params = list(victim.parameters())
    losses = ini_losses(victim, clone, x, y, x_ood, engine="fast", terms=[term])
    grad = victim_grad(victim, getattr(losses, term))
    direction = [torch.randn_like(p) for p in params]
    d_flat = torch.cat([d.reshape(-1) for d in direction])
    h = 1e-6

    def value_at(sign: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * h * d)
        v = float(
            getattr(
                ini_losses(victim, clone, x, y, x_ood, engine="reference", terms=[term]), term
            ).detach()
        )
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * h * d)
        return v

    numeric = (value_at(1.0) - value_at(-1.0)) / (2 * h)
    analytic = float(grad @ d_flat)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)
    assert abs(analytic) > 0


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_traced_jvp_matches_torch_func(model: str) -> None:
    _, clone = pair(model)
    x, _, _ = batch()
    params = {n: p.detach() for n, p in clone.named_parameters()}
    v = {n: torch.randn_like(p) for n, p in params.items()}
    fwd = _CloneForward(clone, params, x)
    assert fwd.saved is not None  # the traced path ran
    untraced = _CloneForward(clone, params, x, trace=False)
    assert untraced.saved is None
    assert torch.allclose(fwd.logits, clone(x), atol=1e-12)
    assert torch.allclose(fwd.jvp(v), untraced.jvp(v), atol=1e-10)


def test_ini_losses_leave_the_clone_untouched() -> None:
    victim, clone = pair("lenet")
    before = {k: v.clone() for k, v in clone.state_dict().items()}
    x, y, x_ood = batch()
    for engine in ("fast", "reference"):
        losses = ini_losses(victim, clone, x, y, x_ood, engine=engine)  # type: ignore[arg-type]
        losses.total(IniConfig().weights()).backward()
    assert all(p.grad is None for p in clone.parameters())
    assert all(torch.equal(before[k], v) for k, v in clone.state_dict().items())
    assert all(p.grad is not None for p in victim.parameters())


def test_unknown_term_is_rejected() -> None:
    victim, clone = pair("mlp")
    x, y, x_ood = batch()
    with pytest.raises(InputValidationError, match="terms"):
        ini_losses(victim, clone, x, y, x_ood, terms=["ce", "nope"])


# ----------------------------------------------------------------------------- trainer


TINY = IniConfig(epochs=1, batch_size=64, seed=0)


def _digits_subset(n: int = 256) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ds = load_dataset("digits")
    return ds.train.images[:n], ds.train.labels[:n], ds.test.images[:100], ds.test.labels[:100]


def _train(config: IniConfig, clone_seed: int = 1) -> tuple[Classifier, nn.Module, object]:
    x, y, tx, ty = _digits_subset()
    torch.manual_seed(0)
    victim = create_model("mlp", image_size=(8, 8), hidden=(16,))
    torch.manual_seed(clone_seed)
    clone = create_model("mlp", image_size=(8, 8), hidden=(16,))
    pool = load_pool("noise", channels=1, image_size=(8, 8), seed=0)
    result = train_ini(victim, clone, x, y, pool, config, eval_data=(tx, ty))
    return victim, clone, result


def test_train_ini_smoke_gives_a_finite_classifier_and_leaves_the_clone_frozen() -> None:
    torch.manual_seed(1)
    reference_clone = create_model("mlp", image_size=(8, 8), hidden=(16,))
    victim, clone, result = _train(TINY)
    assert isinstance(victim, Classifier) and not victim.training
    assert all(bool(torch.isfinite(p).all()) for p in victim.parameters())
    assert not clone.training
    for (k, a), b in zip(
        clone.state_dict().items(), reference_clone.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    history = result.history  # type: ignore[attr-defined]
    assert len(history) == 1
    for key in ("ce", "ood", "iso", "gind", "loss", "seconds", "test_acc"):
        assert math.isfinite(history[0][key]), key
    assert 0.0 <= result.test_acc <= 1.0  # type: ignore[attr-defined]
    assert result.config.epochs == 1 and result.config.ood_batch_size == 64  # type: ignore[attr-defined]
    assert victim(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_train_ini_is_deterministic_under_a_seed() -> None:
    a, _, _ = _train(TINY)
    b, _, _ = _train(TINY)
    c, _, _ = _train(TINY.model_copy(update={"seed": 1}))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_train_ini_engines_give_the_same_weights() -> None:
    fast, _, _ = _train(TINY)
    ref, _, _ = _train(TINY.model_copy(update={"engine": "reference"}))
    diff = max(
        float((p - q).detach().abs().max())
        for p, q in zip(fast.parameters(), ref.parameters(), strict=True)
    )
    assert diff < 1e-4


def test_train_ini_options_change_training() -> None:
    base, _, _ = _train(TINY)
    variants = [
        {"pcgrad": not TINY.pcgrad},
        {"induction": "max_entropy"},
        {"divergence": "reference"},
        {"beta": 0.5},
    ]
    for update in variants:
        other, _, result = _train(TINY.model_copy(update=update))
        assert all(bool(torch.isfinite(p).all()) for p in other.parameters()), update
        assert any(
            not torch.equal(p, q)
            for p, q in zip(base.parameters(), other.parameters(), strict=True)
        ), update
    assert result.history[0]["id"] < 0  # type: ignore[attr-defined]  # L_id = −mean|…| ≤ 0


def test_train_ini_accepts_a_tensor_and_a_clone_factory() -> None:
    x, y, _, _ = _digits_subset(128)
    torch.manual_seed(0)
    victim = create_model("mlp", image_size=(8, 8), hidden=(16,))
    ood = torch.rand(50, 1, 8, 8)  # fewer than one epoch needs: repeats are augmented

    def factory() -> nn.Module:
        return create_model("mlp", image_size=(8, 8), hidden=(16,))

    result = train_ini(victim, factory, x, y, ood, TINY)
    assert len(result.history) == 1 and result.test_acc is None
    # None: a seeded random copy of the victim's architecture
    again = train_ini(victim, None, x, y, ood, TINY)
    assert len(again.history) == 1
    assert all(bool(torch.isfinite(p).all()) for p in victim.parameters())
    with pytest.raises(InputValidationError, match="clone"):
        train_ini(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), None, x, y, ood, TINY)
    with pytest.raises(InputValidationError, match="ood_source"):
        train_ini(victim, None, x, y, torch.rand(5, 1, 4, 4), TINY)


# ----------------------------------------------------------------------------- CLI


def test_cli_train_victim_with_ini_writes_an_ordinary_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ini.pt"
    result = CliRunner().invoke(
        app,
        [
            "train-victim",
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--defense",
            "ini",
            "--ini-ood",
            "noise",
            "--ini-epochs",
            "1",
            "--ini-param",
            "gamma=0.5",
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(out)
    assert isinstance(model, Classifier) and model.spec.name == "mlp"
    assert meta["defense"] == "ini" and meta["ini_ood"] == "noise"
    assert meta["training"]["epochs"] == 1 and meta["training"]["gamma"] == 0.5
    assert meta["training"]["engine"] == "fast"
    assert 0.0 <= meta["test_acc"] <= 1.0


def test_cli_rejects_a_bad_ini_setting() -> None:
    result = CliRunner().invoke(
        app, ["train-victim", "--dataset", "digits", "--defense", "ini", "--ini-engine", "slow"]
    )
    assert result.exit_code == 2
    assert "engine" in result.stderr and "Traceback" not in result.output
