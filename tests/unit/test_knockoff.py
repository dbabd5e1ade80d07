"""Tests for KnockoffNets, clone construction/training and the experiment's CloneCache."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from stealproof import defenses, metrics
from stealproof.attacks import (
    AttackResult,
    KnockoffNets,
    TransferSet,
    clone_factory_like,
    train_clone,
)
from stealproof.data import Pool
from stealproof.experiment import CloneCache
from stealproof.models import Classifier, create_model
from stealproof.oracle import BlackBox, defended_posteriors
from stealproof.train import TrainConfig

K = 10
FAST = TrainConfig(epochs=2, batch_size=64)


def make_victim(seed: int = 0) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("mlp", image_size=(8, 8), num_classes=K, hidden=(32,))


def random_pool(n: int = 200, seed: int = 0) -> Pool:
    g = torch.Generator().manual_seed(seed)
    return Pool("rand", torch.rand(n, 1, 8, 8, generator=g), torch.zeros(n, dtype=torch.long))


def two_group_pool(n_per_group: int = 100, seed: int = 0) -> Pool:
    """Group 0: random (informative) images; group 1: all-black images."""
    g = torch.Generator().manual_seed(seed)
    informative = torch.rand(n_per_group, 1, 8, 8, generator=g)
    black = torch.zeros(n_per_group, 1, 8, 8)
    groups = torch.cat([torch.zeros(n_per_group), torch.ones(n_per_group)]).long()
    return Pool("two-groups", torch.cat([informative, black]), groups)


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class RecordingBox(BlackBox):
    """A black box that remembers the size of every batch it was asked."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batch_sizes: list[int] = []

    def query(self, x: Tensor) -> Tensor:
        self.batch_sizes.append(int(x.shape[0]))
        return super().query(x)


@pytest.fixture(scope="module")
def victim() -> Classifier:
    return make_victim()


@pytest.fixture(scope="module")
def defense() -> defenses.Defense:
    return defenses.create("reverse_sigmoid", beta=0.7, gamma=0.2)


@pytest.fixture(scope="module")
def random_run(
    victim: Classifier, defense: defenses.Defense
) -> tuple[AttackResult, RecordingBox, Pool]:
    pool = random_pool()
    box = RecordingBox(victim, defense, budget=1000)
    attack = KnockoffNets(policy="random", train=FAST, seed=0)
    result = attack.run(box, pool, budget=300, make_clone=clone_factory_like(victim))
    return result, box, pool


# ----------------------------------------------------------------------------- random policy


def test_random_policy_spends_exactly_the_budget(
    random_run: tuple[AttackResult, RecordingBox, Pool],
) -> None:
    result, box, _ = random_run
    assert result.queries_used == 300
    assert box.queries_used == 300
    assert box.budget_left == 700
    assert len(result.transfer) == 300
    assert result.transfer.images.shape == (300, 1, 8, 8)
    assert result.transfer.answers.shape == (300, K)
    assert sum(box.batch_sizes) == 300
    assert box.batch_sizes == [128, 128, 44]  # default query_batch 128
    assert len(result.trace) == 1
    assert result.trace[0].queries == 300
    assert result.trace[0].clone_acc is None  # no eval_data given
    assert result.train_result is not None


def test_transfer_set_holds_exactly_what_the_black_box_answered(
    random_run: tuple[AttackResult, RecordingBox, Pool],
    victim: Classifier,
    defense: defenses.Defense,
) -> None:
    result, _, pool = random_run
    x, answers = result.transfer.images, result.transfer.answers
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    released, clean = defended_posteriors(victim, defense, x)
    torch.testing.assert_close(answers, released, rtol=0, atol=1e-6)
    # and the answers are the *defended* ones, not the clean posteriors
    assert float((answers - clean).abs().sum(dim=1).mean()) > 1e-3
    # an unmetered box re-asked in the same chunks gives bit-identical answers
    fresh = BlackBox(victim, defense)
    again = torch.cat([fresh.query(x[i : i + 128]) for i in range(0, 300, 128)])
    assert torch.equal(answers, again)
    # the first len(pool) queries are pool images (a permutation), the rest augmented repeats
    first = x[: len(pool)]
    matches = (first[:, None] == pool.images[None]).flatten(2).all(dim=2)
    assert bool(matches.any(dim=1).all())
    assert int(matches.any(dim=0).sum()) == len(pool)  # every pool image used once


def test_budget_beyond_the_box_raises_before_any_query(victim: Classifier) -> None:
    box = BlackBox(victim, budget=100)
    attack = KnockoffNets(policy="random", train=FAST)
    with pytest.raises(ValueError, match="100 rows left"):
        attack.run(box, random_pool(), budget=300, make_clone=clone_factory_like(victim))
    assert box.queries_used == 0
    adaptive = KnockoffNets(policy="adaptive", train=FAST)
    with pytest.raises(ValueError, match="budget"):
        adaptive.run(box, random_pool(), budget=101, make_clone=clone_factory_like(victim))
    assert box.queries_used == 0


def test_budget_must_be_positive(victim: Classifier) -> None:
    box = BlackBox(victim)
    with pytest.raises(ValueError, match="budget"):
        KnockoffNets(train=FAST).collect(box, random_pool(), 0)
    assert box.queries_used == 0


def test_queries_used_counts_only_this_attack(victim: Classifier) -> None:
    box = BlackBox(victim, budget=400)
    box.query(torch.rand(50, 1, 8, 8))
    attack = KnockoffNets(policy="random", train=FAST, query_batch=100)
    result = attack.run(box, random_pool(), budget=300, make_clone=clone_factory_like(victim))
    assert result.queries_used == 300
    assert box.queries_used == 350


# ----------------------------------------------------------------------------- adaptive policy


def test_adaptive_policy_spends_exactly_the_budget_and_samples_both_groups(
    victim: Classifier,
) -> None:
    pool = two_group_pool()
    box = RecordingBox(victim, budget=250)
    attack = KnockoffNets(policy="adaptive", query_batch=64, train=FAST, seed=0)
    result = attack.run(box, pool, budget=250, make_clone=clone_factory_like(victim))
    assert box.batch_sizes == [64, 64, 64, 58]
    assert box.queries_used == 250 == result.queries_used
    assert box.budget_left == 0
    x = result.transfer.images
    assert x.shape == (250, 1, 8, 8)
    assert result.transfer.answers.shape == (250, K)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # black images stay black under augmentation; informative ones never become all-black
    from_black = int((x.flatten(1).amax(dim=1) == 0).sum())
    from_informative = 250 - from_black
    assert from_black > 0 and from_informative > 0
    released, _ = defended_posteriors(victim, None, x)
    torch.testing.assert_close(result.transfer.answers, released, rtol=0, atol=1e-6)


def test_adaptive_policy_needs_a_clone_factory(victim: Classifier) -> None:
    box = BlackBox(victim)
    with pytest.raises(ValueError, match="make_clone"):
        KnockoffNets(policy="adaptive", train=FAST).collect(box, two_group_pool(), 10)
    assert box.queries_used == 0


def test_adaptive_policy_is_deterministic(victim: Classifier) -> None:
    def collect(seed: int) -> TransferSet:
        attack = KnockoffNets(policy="adaptive", query_batch=50, train=FAST, seed=seed)
        return attack.collect(
            BlackBox(victim), two_group_pool(), 150, make_clone=clone_factory_like(victim)
        )

    a, b, c = collect(0), collect(0), collect(1)
    assert torch.equal(a.images, b.images) and torch.equal(a.answers, b.answers)
    assert not torch.equal(a.images, c.images)


# ----------------------------------------------------------------------------- clone training


def test_label_only_trains_on_argmax_of_the_answers(
    random_run: tuple[AttackResult, RecordingBox, Pool], victim: Classifier
) -> None:
    transfer = random_run[0].transfer
    make = clone_factory_like(victim)
    labels_only, _ = train_clone(make, transfer, FAST, label_only=True, seed=3)
    hard = TransferSet(transfer.images, transfer.answers.argmax(dim=1))
    from_hard, _ = train_clone(make, hard, FAST, seed=3)
    soft, _ = train_clone(make, transfer, FAST, seed=3)
    assert same_weights(labels_only, from_hard)
    assert not same_weights(labels_only, soft)  # the flag changes what is learned


def test_label_only_attack_equals_hard_label_training(victim: Classifier) -> None:
    box = BlackBox(victim, defenses.create("reverse_sigmoid", beta=0.7, gamma=0.2))
    attack = KnockoffNets(policy="random", label_only=True, train=FAST, seed=5)
    make = clone_factory_like(victim)
    result = attack.run(box, random_pool(), budget=200, make_clone=make)
    hard = TransferSet(result.transfer.images, result.transfer.answers.argmax(dim=1))
    expected, _ = train_clone(make, hard, FAST, seed=5)
    assert same_weights(result.clone, expected)


def test_train_clone_does_not_touch_the_global_rng(
    random_run: tuple[AttackResult, RecordingBox, Pool], victim: Classifier
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_clone(clone_factory_like(victim), random_run[0].transfer, FAST, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_same_result_and_different_seed_different_transfer(
    victim: Classifier, defense: defenses.Defense
) -> None:
    def run(seed: int) -> AttackResult:
        attack = KnockoffNets(policy="random", train=FAST, seed=seed)
        box = BlackBox(victim, defense, budget=300)
        return attack.run(box, random_pool(), budget=300, make_clone=clone_factory_like(victim))

    torch.manual_seed(0)
    a = run(0)
    torch.manual_seed(999)  # the global RNG state must not matter
    b = run(0)
    c = run(1)
    assert torch.equal(a.transfer.images, b.transfer.images)
    assert torch.equal(a.transfer.answers, b.transfer.answers)
    assert same_weights(a.clone, b.clone)
    assert not torch.equal(a.transfer.images, c.transfer.images)
    assert not torch.equal(a.transfer.answers, c.transfer.answers)
    assert not same_weights(a.clone, c.clone)


def test_eval_data_only_scores_the_trace(
    random_run: tuple[AttackResult, RecordingBox, Pool],
    victim: Classifier,
    defense: defenses.Defense,
) -> None:
    g = torch.Generator().manual_seed(42)
    x = torch.rand(100, 1, 8, 8, generator=g)
    labels = torch.randint(0, K, (100,), generator=g)
    attack = KnockoffNets(policy="random", train=FAST, seed=0)
    result = attack.run(
        BlackBox(victim, defense, budget=1000),
        random_pool(),
        budget=300,
        make_clone=clone_factory_like(victim),
        eval_data=(x, labels),
    )
    acc = result.trace[0].clone_acc
    assert acc is not None
    assert acc == metrics.clone_accuracy(result.clone, x, labels)
    assert result.trace[0].queries == 300
    # same run without eval_data (random_run): identical clone, so it was not used to select
    assert same_weights(result.clone, random_run[0].clone)
    assert not result.clone.training


# ----------------------------------------------------------------------------- clone factory


def test_clone_factory_like_builds_fresh_copies_of_the_victims_architecture(
    victim: Classifier,
) -> None:
    make = clone_factory_like(victim)
    a, b = make(), make()
    assert isinstance(a, Classifier)
    assert a is not b and a is not victim
    assert a.spec == victim.spec
    assert a.input_shape == victim.input_shape
    assert a.num_classes == victim.num_classes
    wider = clone_factory_like(victim, hidden=(64,))()
    assert wider.spec.kwargs["hidden"] == (64,)
    assert wider.head().in_features == 64


def test_clone_factory_like_other_architecture(victim: Classifier) -> None:
    clone = clone_factory_like(victim, "lenet")()
    assert isinstance(clone, Classifier)
    assert clone.spec.name == "lenet"
    assert clone.spec.name != victim.spec.name
    assert clone.input_shape == victim.input_shape == (1, 8, 8)
    assert clone.num_classes == victim.num_classes
    assert any(isinstance(m, nn.Conv2d) for m in clone.modules())
    assert clone(torch.rand(2, 1, 8, 8)).shape == (2, K)


def test_clone_factory_like_needs_a_classifier() -> None:
    with pytest.raises(TypeError):
        clone_factory_like(nn.Linear(4, 2))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- CloneCache


def test_clone_cache_trains_identical_requests_once(
    random_run: tuple[AttackResult, RecordingBox, Pool], victim: Classifier
) -> None:
    transfer = random_run[0].transfer
    make = clone_factory_like(victim)
    cache = CloneCache()
    a = cache.get(make, transfer, FAST, label_only=False, seed=0)
    assert cache.hits == 0
    b = cache.get(make, transfer, FAST, label_only=False, seed=0)
    assert cache.hits == 1
    assert a is b
    expected, _ = train_clone(make, transfer, FAST, seed=0)
    assert same_weights(a, expected)  # the cache changes no number
    c = cache.get(make, transfer, FAST, label_only=False, seed=1)  # another seed: a miss
    d = cache.get(make, transfer, FAST, label_only=True, seed=0)  # label-only: a miss
    assert cache.hits == 1
    assert c is not a and d is not a


def test_clone_cache_shares_one_hot_and_label_only_entries(
    random_run: tuple[AttackResult, RecordingBox, Pool], victim: Classifier
) -> None:
    transfer = random_run[0].transfer
    one_hot = torch.nn.functional.one_hot(transfer.answers.argmax(dim=1), K).float()
    top1_transfer = TransferSet(transfer.images, one_hot)
    make = clone_factory_like(victim)
    cache = CloneCache()
    soft_labels = cache.get(make, transfer, FAST, label_only=True, seed=0)
    top1 = cache.get(make, top1_transfer, FAST, label_only=False, seed=0)
    assert cache.hits == 1
    assert top1 is soft_labels
    expected, _ = train_clone(make, transfer, FAST, label_only=True, seed=0)
    assert same_weights(top1, expected)


def test_transfer_set_records_the_pool_row_of_every_query(
    random_run: tuple[AttackResult, RecordingBox, Pool],
) -> None:
    result, _, pool = random_run
    index = result.transfer.pool_index
    assert index is not None and index.shape == (300,)
    # 300 rows from a 200-image pool: a permutation first (sent as drawn), then repeats
    assert sorted(index[:200].tolist()) == list(range(200))
    assert torch.equal(result.transfer.images[:200], pool.images[index[:200]])
    assert torch.equal(result.transfer.prefix(50).pool_index, index[:50])  # type: ignore[arg-type]
