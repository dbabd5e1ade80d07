"""The zeroth-order estimator, the generators and the data-free attacks' contracts (DFME, MAZE,
DaST): gradient direction, one batched query per estimate, budget, seeding, bounded memory,
bad configuration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from stealproof.attacks import DFME, MAZE, DaST, DataFreeResult, clone_factory_like
from stealproof.attacks.data_free import QueryMeter, ReplayBuffer
from stealproof.attacks.dfme import DFMEConfig
from stealproof.attacks.generators import ImageGenerator, create_generator, squash
from stealproof.attacks.maze import MAZEConfig
from stealproof.attacks.zeroth_order import (
    estimate_from_losses,
    sample_directions,
    zeroth_order_gradient,
)
from stealproof.detectors import Detection, Detector
from stealproof.errors import InputValidationError
from stealproof.models import Classifier, create_model
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy

SHAPE = (1, 8, 8)
K = 10
SMALL = {"batch_size": 16, "generator_width": 16, "latent_dim": 8}


def make_victim(seed: int = 0) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("mlp", image_size=(8, 8), num_classes=K, hidden=(32,))


class CountingBox(BlackBox):
    """A black box that records the size of every call."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[int] = []

    def query(self, x: Tensor) -> Tensor:
        self.calls.append(int(x.shape[0]))
        return super().query(x)


class FlagAll(Detector):
    """A stateless detector that flags every row."""

    name = "flag-all"

    def observe(self, client_id: str, x: Tensor, y: Tensor) -> Detection:
        ones = torch.ones(x.shape[0])
        return Detection(ones, ones.bool())

    def client_state(self, client_id: str) -> dict:
        return {}

    def load_client_state(self, client_id: str, state: dict) -> None:
        pass


@pytest.fixture(scope="module")
def victim() -> Classifier:
    return make_victim()


def cosine(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# ----------------------------------------------------------------------------- estimator


def test_directions_are_unit_seeded_and_shaped() -> None:
    u = sample_directions(5, 3, SHAPE, torch.Generator().manual_seed(1))
    assert u.shape == (5, 3, *SHAPE)
    assert torch.allclose(u.reshape(5, 3, -1).norm(dim=2), torch.ones(5, 3), atol=1e-5)
    again = sample_directions(5, 3, SHAPE, torch.Generator().manual_seed(1))
    assert torch.equal(u, again)
    assert not torch.equal(u, sample_directions(5, 3, SHAPE, torch.Generator().manual_seed(2)))


def test_estimate_from_losses_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    u = sample_directions(2, 3, (4,), g)
    l0 = torch.tensor([1.0, 2.0])
    lj = torch.tensor([[1.5, 0.5, 1.0], [2.0, 3.0, 1.0]])
    est = estimate_from_losses(l0, lj, u, mu=0.5)
    d, m = 4, 3
    expected = torch.stack(
        [sum(((lj[i, j] - l0[i]) / 0.5) * u[i, j] for j in range(m)) * d / m for i in range(2)]
    )
    assert torch.allclose(est, expected, atol=1e-6)
    with pytest.raises(InputValidationError, match="losses"):
        estimate_from_losses(l0, lj[:, :2], u, mu=0.5)
    with pytest.raises(InputValidationError, match="mu"):
        estimate_from_losses(l0, lj, u, mu=0.0)


def _smooth_loss(weights: Tensor):  # type: ignore[no-untyped-def]
    """L(x) = Σ_k w_k ỹ_k(x): a smooth function of the black box's answers."""

    def loss(pixels: Tensor, answers: Tensor) -> Tensor:
        return answers @ weights

    return loss


@pytest.mark.parametrize("m", [1, 10])
def test_averaged_estimates_point_along_the_true_gradient(victim: Classifier, m: int) -> None:
    """Many rows at the same point: their mean estimate ≈ the autograd gradient of L∘squash."""
    weights = torch.randn(K, generator=torch.Generator().manual_seed(3))
    a0 = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(4))
    # the true gradient, white-box
    a = a0.clone().requires_grad_(True)
    (torch.softmax(victim(squash(a)), dim=1) @ weights).sum().backward()
    assert a.grad is not None
    true = a.grad[0]
    n = 4000 // m
    box = CountingBox(victim)
    est = zeroth_order_gradient(
        box,
        a0.expand(n, *SHAPE),
        _smooth_loss(weights),
        generator=torch.Generator().manual_seed(5),
        directions=m,
        mu=1e-3,
    )
    mean = est.grad.mean(dim=0)
    assert cosine(mean, true) >= 0.9, cosine(mean, true)
    assert 0.75 <= float(mean.norm() / true.norm()) <= 1.33  # the d/m scaling is right
    # one row alone is a poor estimate (cosine ≈ 1/√d): averaging is what makes it work
    single = [cosine(est.grad[i], true) for i in range(50)]
    assert sum(single) / 50 < 0.9
    # and the estimate is of L, not of -L
    assert cosine(mean, -true) < 0


@pytest.mark.parametrize("m", [1, 3])
def test_one_batched_query_of_m_plus_one_times_b_rows(victim: Classifier, m: int) -> None:
    box = CountingBox(victim, budget=10_000)
    b = 7
    x = torch.randn(b, *SHAPE, generator=torch.Generator().manual_seed(0)) * 3
    est = zeroth_order_gradient(
        box, x, _smooth_loss(torch.ones(K)), generator=torch.Generator(), directions=m, mu=1e-2
    )
    assert box.calls == [(m + 1) * b]
    assert box.queries_used == est.rows == (m + 1) * b
    assert est.grad.shape == x.shape
    assert est.answers.shape == (b, K) and est.loss.shape == (b,)
    assert torch.equal(est.images, squash(x))
    assert float(est.images.min()) >= 0 and float(est.images.max()) <= 1
    assert torch.allclose(est.answers, torch.softmax(victim(squash(x)), dim=1), atol=1e-5)


def test_estimator_rejects_bad_arguments(victim: Classifier) -> None:
    box = BlackBox(victim)
    x = torch.zeros(2, *SHAPE)
    loss = _smooth_loss(torch.ones(K))
    with pytest.raises(InputValidationError, match="directions"):
        zeroth_order_gradient(box, x, loss, generator=torch.Generator(), directions=0)
    with pytest.raises(InputValidationError, match="mu"):
        zeroth_order_gradient(box, x, loss, generator=torch.Generator(), mu=-1.0)
    assert box.queries_used == 0


# ----------------------------------------------------------------------------- generators


@pytest.mark.parametrize(
    ("shape", "kind"), [((1, 8, 8), "mlp"), ((1, 28, 28), "conv"), ((3, 32, 32), "conv")]
)
def test_generator_shapes_range_and_size(shape: tuple[int, int, int], kind: str) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen = create_generator(shape)
    assert isinstance(gen, ImageGenerator)
    assert gen.image_shape == shape
    has_conv = any(isinstance(m, nn.Conv2d) for m in gen.modules())
    assert has_conv == (kind == "conv")
    gen.train()
    x = gen(torch.randn(4, gen.latent_dim)).detach()
    assert x.shape == (4, *shape)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    s = gen.sample(3, torch.Generator().manual_seed(1))
    assert s.shape == (3, *shape) and not s.requires_grad
    assert gen.training  # sample() restores the mode
    assert torch.equal(s, gen.sample(3, torch.Generator().manual_seed(1)))


def test_branched_generator_needs_labels_and_balances_them() -> None:
    gen = create_generator(SHAPE, 8, num_classes=K)
    labels = gen.sample_labels(25, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels, minlength=K)
    assert int(counts.max()) - int(counts.min()) <= 1
    z = torch.randn(25, 8)
    assert gen(z, labels).shape == (25, *SHAPE)
    with pytest.raises(InputValidationError, match="labels"):
        gen(z)
    assert gen.sample(5, torch.Generator()).shape == (5, *SHAPE)


def test_generator_factory_rejects_bad_shapes() -> None:
    with pytest.raises(InputValidationError, match="image_shape"):
        create_generator((8, 8))
    with pytest.raises(InputValidationError, match="image_shape"):
        create_generator((1, 2, 2), kind="conv")
    with pytest.raises(InputValidationError, match="latent_dim"):
        create_generator(SHAPE, 0)
    with pytest.raises(InputValidationError, match="z"):
        create_generator(SHAPE, 8)(torch.zeros(2, 9))


# ----------------------------------------------------------------------------- attacks

ATTACKS = [
    (DFME, {}),
    (MAZE, {"replay_size": 100}),
    (DaST, {}),
]


def _run(cls, victim, box, budget, **params):  # type: ignore[no-untyped-def]
    attack = cls(**SMALL, **params)
    return attack.run(box, budget, clone_factory_like(victim, hidden=(16,)))


@pytest.mark.parametrize(("cls", "params"), ATTACKS)
def test_budget_is_never_exceeded(victim: Classifier, cls: type, params: dict) -> None:
    # a box whose budget equals the attack's, not a multiple of an iteration's rows
    per_iter = cls(**SMALL, **params).rows_per_iteration()
    budget = 3 * per_iter + per_iter // 2
    box = CountingBox(victim, budget=budget)
    result = _run(cls, victim, box, budget, **params)
    assert isinstance(result, DataFreeResult)
    assert box.queries_used == result.queries_used == 3 * per_iter <= budget
    assert result.iterations == 3
    assert result.trace[-1].queries == result.queries_used
    assert all(p.clone_acc is None for p in result.trace)  # no eval_data given
    assert isinstance(result.generator, ImageGenerator)
    assert len(result.transfer) == 0  # keep_queries defaults to 0


@pytest.mark.parametrize(("cls", "params"), ATTACKS)
def test_a_blocked_client_stops_the_attack_cleanly(
    victim: Classifier, cls: type, params: dict
) -> None:
    # a policy that flags every row and blocks after 40: the attack ends, it does not crash
    policy = DetectionPolicy([FlagAll()], max_flagged=40)
    box = BlackBox(victim, policy=policy, client_id="thief")
    per_iter = cls(**SMALL, **params).rows_per_iteration()
    result = _run(cls, victim, box, 10 * per_iter, **params)
    assert result.stopped is not None and "blocked" in result.stopped
    assert policy.is_blocked("thief")
    assert result.queries_used == box.queries_used < 10 * per_iter
    assert result.iterations < 10
    assert result.trace and result.trace[-1].queries == result.queries_used
    unblocked = _run(cls, victim, BlackBox(victim), 2 * per_iter, **params)
    assert unblocked.stopped is None


@pytest.mark.parametrize(("cls", "params"), ATTACKS)
def test_budget_checks_raise_before_any_query(victim: Classifier, cls: type, params: dict) -> None:
    box = CountingBox(victim, budget=50)
    with pytest.raises(InputValidationError, match="budget"):
        _run(cls, victim, box, 100, **params)  # more than the box has left
    with pytest.raises(InputValidationError, match="budget"):
        _run(cls, victim, box, 10, **params)  # less than one iteration
    with pytest.raises(InputValidationError, match="budget"):
        _run(cls, victim, box, 0, **params)
    assert box.calls == []


@pytest.mark.parametrize(("cls", "params"), ATTACKS)
def test_same_seed_same_numbers(victim: Classifier, cls: type, params: dict) -> None:
    x_test = torch.rand(50, *SHAPE, generator=torch.Generator().manual_seed(9))
    eval_data = (x_test, victim(x_test).argmax(1))

    def go(seed: int) -> DataFreeResult:
        attack = cls(**SMALL, **params, seed=seed)
        per_iter = attack.rows_per_iteration()
        result: DataFreeResult = attack.run(
            BlackBox(victim), 4 * per_iter, clone_factory_like(victim), eval_data=eval_data
        )
        return result

    state = torch.get_rng_state()
    a, b, c = go(0), go(0), go(1)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert [p.clone_acc for p in a.trace] == [p.clone_acc for p in b.trace]
    for p, q in zip(a.clone.parameters(), b.clone.parameters(), strict=True):
        assert torch.equal(p, q)
    g = torch.Generator()
    assert torch.equal(
        a.generator.sample(4, g.manual_seed(0)), b.generator.sample(4, g.manual_seed(0))
    )
    assert any(
        not torch.equal(p, q)
        for p, q in zip(a.clone.parameters(), c.clone.parameters(), strict=True)
    )


def test_keep_queries_keeps_the_last_rows_sent(victim: Classifier) -> None:
    box = CountingBox(victim)
    attack = DFME(**SMALL, keep_queries=40)
    result = attack.run(box, 2 * attack.rows_per_iteration(), clone_factory_like(victim))
    assert len(result.transfer) == 40
    assert result.transfer.answers.shape == (40, K)
    # the last rows sent were a clone step's fresh samples: answers match the victim on them
    expected = torch.softmax(victim(result.transfer.images), dim=1)
    assert torch.allclose(result.transfer.answers, expected, atol=1e-5)


def test_label_only_and_zero_answers_stay_finite(victim: Classifier) -> None:
    meter = QueryMeter(BlackBox(victim), 100, label_only=True)
    y = meter.query(torch.rand(5, *SHAPE))
    assert torch.equal(y.sum(1), torch.ones(5)) and set(y.unique().tolist()) <= {0.0, 1.0}
    for cls in (DFME, MAZE, DaST):
        box = BlackBox(victim, output="label")  # one-hot answers: log 0 must be clamped
        attack = cls(**SMALL)
        result = attack.run(box, 2 * attack.rows_per_iteration(), clone_factory_like(victim))
        assert all(torch.isfinite(p).all() for p in result.clone.parameters())
        assert all(math.isfinite(h["clone_loss"]) for h in result.history)


def test_replay_buffer_is_bounded_and_keeps_offered_rows() -> None:
    buf = ReplayBuffer(10)
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        x = torch.full((6, 1), float(i)) + torch.arange(6.0)[:, None] / 10
        buf.add(x, x.clone(), g)
    assert len(buf) == 10 and buf.seen == 30
    assert buf.images is not None and buf.answers is not None
    offered = {round(i + j / 10, 3) for i in range(5) for j in range(6)}
    assert {round(v, 3) for v in buf.images.flatten().tolist()} <= offered
    assert torch.equal(buf.images, buf.answers)
    xs, ys = buf.sample(7, g)
    assert xs.shape == (7, 1) and torch.equal(xs, ys)
    with pytest.raises(InputValidationError, match="replay_size"):
        ReplayBuffer(0)


def test_bad_configs_are_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="batch_size"):
        DFME(batch_size=1)
    with pytest.raises(ValidationError, match="directions"):
        MAZE(directions=0)
    with pytest.raises(ValidationError, match="mu"):
        DFMEConfig(mu=0)
    with pytest.raises(ValidationError, match="log_prob_min"):
        MAZEConfig(log_prob_min=1.0)
    with pytest.raises(ValidationError, match="alpha"):
        DaST(alpha=-1)
    with pytest.raises(ValidationError, match="bogus"):
        DFME(bogus=1)
    with pytest.raises(InputValidationError, match="config"):
        DFME(DFMEConfig(), batch_size=8)
    with pytest.raises(InputValidationError, match="config"):
        DFME(MAZEConfig())  # type: ignore[arg-type]
    cfg = DFMEConfig()
    assert (cfg.directions, cfg.mu, cfg.clone_steps, cfg.replay_steps) == (1, 1e-3, 5, 0)
    assert (MAZEConfig().directions, MAZEConfig().replay_steps) == (10, 10)
    with pytest.raises(ValidationError):
        cfg.batch_size = 3  # type: ignore[misc]
