"""Every attack stops cleanly when its black box refuses a query (issue 11, defect 1).

A detection policy around a detector that flags every row blocks the thief once ``max_flagged``
rows were flagged; the batch that crosses the line is answered, the next call is refused with
``ClientBlockedError``. Before the fix only the data-free attacks caught it: KnockoffNets, the
Jacobian attacks and anything run through ``AveragingBlackBox`` raised and lost the clone. Each
attack must return a clone trained on what it was answered, with ``stopped == "blocked"`` and
``blocked_at`` set to the rows it had used, and not raise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from stealproof.attacks import (
    DFME,
    JBDA,
    MAZE,
    AttackResult,
    AveragingBlackBox,
    BlackBoxLike,
    DaST,
    JBSelf,
    JBTop3,
    KnockoffNets,
    QueryGuard,
    clone_factory_like,
)
from stealproof.data import Dataset, Pool, load_dataset
from stealproof.detectors.base import Detection, Detector
from stealproof.errors import ClientBlockedError
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.models import Classifier
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy
from stealproof.train import TrainConfig

FAST = TrainConfig(epochs=2, batch_size=64)
MAX_FLAGGED = 50


class FlagEverything(Detector):
    """A detector that flags every row it sees."""

    name = "flag-all"

    def observe(self, client_id: str, x: Tensor, y: Tensor) -> Detection:
        n = int(x.shape[0])
        return Detection(torch.ones(n), torch.ones(n, dtype=torch.bool))

    def client_state(self, client_id: str) -> dict[str, Any]:
        return {}

    def load_client_state(self, client_id: str, state: dict[str, Any]) -> None:
        return None


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Classifier]:
    scenario = SCENARIOS["digits"]
    ds = load_dataset("digits")
    victim, _ = train_victim(ds, scenario.model, scenario.victim_training, seed=0)
    return ds, victim


def guarded_box(victim: Classifier, budget: int = 10_000) -> BlackBox:
    policy = DetectionPolicy([FlagEverything()], max_flagged=MAX_FLAGGED)
    return BlackBox(victim, policy=policy, budget=budget, client_id="thief")


def pool_of(ds: Dataset) -> Pool:
    n = ds.train.images.shape[0]
    return Pool("digits", ds.train.images, torch.arange(n) % 2)


Run = Callable[[BlackBoxLike, Dataset, Classifier], AttackResult]


def knockoff_random(box: BlackBoxLike, ds: Dataset, victim: Classifier) -> AttackResult:
    attack = KnockoffNets(policy="random", query_batch=128, train=FAST)
    return attack.run(box, pool_of(ds), 500, clone_factory_like(victim))


def knockoff_adaptive(box: BlackBoxLike, ds: Dataset, victim: Classifier) -> AttackResult:
    attack = KnockoffNets(policy="adaptive", query_batch=64, train=FAST)
    return attack.run(box, pool_of(ds), 500, clone_factory_like(victim))


def jacobian(cls: type[JBDA] | type[JBTop3]) -> Run:
    def run(box: BlackBoxLike, ds: Dataset, victim: Classifier) -> AttackResult:
        attack = cls(query_batch=64, train=FAST, rounds=3)
        return attack.run(box, ds.train.images[:100], 1000, clone_factory_like(victim))

    return run


def data_free(cls: type[DFME] | type[MAZE] | type[DaST], budget: int) -> Run:
    def run(box: BlackBoxLike, ds: Dataset, victim: Classifier) -> AttackResult:
        return cls(batch_size=16).run(box, budget, clone_factory_like(victim))

    return run


# rows the box answers before the refusal: the first call whose flagged rows reach 50
ATTACKS: dict[str, tuple[Run, int]] = {
    "knockoff-random": (knockoff_random, 128),  # one batch of 128
    "knockoff-adaptive": (knockoff_adaptive, 64),  # one batch of 64
    "jbda": (jacobian(JBDA), 64),  # the seed set's first batch of 64
    "jb-self": (jacobian(JBSelf), 64),
    "jb-top3": (jacobian(JBTop3), 64),
    "dfme": (data_free(DFME, 1120), 64),  # 32 (estimate) + 16 + 16 (clone steps)
    "maze": (data_free(MAZE, 2560), 176),  # one estimate of (10 + 1) × 16 rows
    "dast": (data_free(DaST, 320), 64),  # four iterations of 16
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_stops_cleanly_when_blocked(digits: tuple[Dataset, Classifier], name: str) -> None:
    ds, victim = digits
    run, answered = ATTACKS[name]
    box = guarded_box(victim)
    result = run(box, ds, victim)  # must not raise
    status = box.policy_status()
    assert status is not None and status.blocked
    assert result.stopped == "blocked"
    assert result.blocked_at == result.queries_used == box.queries_used == answered
    assert result.flagged_rows == answered == box.flagged_rows
    assert result.stop_message is not None and "blocked" in result.stop_message
    out = result.clone(ds.test.images[:4])
    assert out.shape == (4, ds.num_classes) and bool(torch.isfinite(out).all())
    assert result.trace and result.trace[-1].queries == answered


@pytest.mark.parametrize("name", ["knockoff-random", "knockoff-adaptive", "jbda"])
def test_pool_and_jacobian_clones_are_trained_on_what_was_answered(
    digits: tuple[Dataset, Classifier], name: str
) -> None:
    ds, victim = digits
    run, answered = ATTACKS[name]
    result = run(guarded_box(victim), ds, victim)
    assert len(result.transfer) == answered
    assert result.transfer.answers.shape == (answered, ds.num_classes)
    assert result.train_result is not None  # trained, not the initial clone


def test_jacobian_keeps_the_answered_part_of_a_round(digits: tuple[Dataset, Classifier]) -> None:
    """Blocked inside round 1: the answered half of the round joins the set and is learned."""
    ds, victim = digits
    policy = DetectionPolicy([FlagEverything()], max_flagged=150)
    box = BlackBox(victim, policy=policy, client_id="thief")
    attack = JBDA(query_batch=64, train=FAST, rounds=3)
    result = attack.run(box, ds.train.images[:100], 1000, clone_factory_like(victim))
    # seeds: 64 + 36 rows; round 0 adds 100 points, sent as 64 (crosses 150) + 36 (refused)
    assert result.stopped == "blocked" and result.blocked_at == 164
    assert len(result.transfer) == 164 == box.queries_used
    assert [p.queries for p in result.trace] == [100, 164]


def test_averaging_wrapper_stops_cleanly(digits: tuple[Dataset, Classifier]) -> None:
    ds, victim = digits
    inner = guarded_box(victim)
    box = AveragingBlackBox(inner, copies=4)
    result = knockoff_random(box, ds, victim)
    assert result.stopped == "blocked"
    assert result.blocked_at == result.queries_used == box.queries_used == 128  # wrapper rows
    assert inner.queries_used == 4 * 128
    assert result.flagged_rows == 4 * 128  # inner rows, as the policy counts them
    assert box.flagged_rows == inner.flagged_rows
    assert box.policy_status() == inner.policy_status()
    assert len(result.transfer) == 128 and result.train_result is not None


@pytest.mark.parametrize("name", list(ATTACKS))
def test_blocked_before_the_first_answer_returns_an_untrained_clone(
    digits: tuple[Dataset, Classifier], name: str
) -> None:
    ds, victim = digits
    run, _ = ATTACKS[name]
    box = guarded_box(victim)
    assert box.policy is not None
    box.policy.block("thief", "blocked in an earlier session")
    result = run(box, ds, victim)
    assert result.stopped == "blocked" and result.blocked_at == 0
    assert result.queries_used == 0 == box.queries_used
    assert result.stop_message is not None and "earlier session" in result.stop_message
    assert len(result.transfer) == 0
    assert result.clone(ds.test.images[:2]).shape == (2, ds.num_classes)
    if not name.startswith(("dfme", "maze", "dast")):
        assert result.train_result is None  # nothing to train on: the initial clone


class HiddenBudgetBox:
    """A black box that does not tell its budget (like a remote API): ``budget_left`` is None."""

    def __init__(self, inner: BlackBox) -> None:
        self.inner = inner

    @property
    def queries_used(self) -> int:
        return self.inner.queries_used

    @property
    def budget_left(self) -> int | None:
        return None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.inner.input_shape

    @property
    def num_classes(self) -> int | None:
        return self.inner.num_classes

    def query(self, x: Tensor) -> Tensor:
        return self.inner.query(x)


@pytest.mark.parametrize("name", ["knockoff-random", "jbda", "dast"])
def test_budget_running_out_under_the_attack_stops_it(
    digits: tuple[Dataset, Classifier], name: str
) -> None:
    ds, victim = digits
    run, _ = ATTACKS[name]
    inner = BlackBox(victim, budget=150)
    result = run(HiddenBudgetBox(inner), ds, victim)
    assert result.stopped == "budget" and result.blocked_at is None
    assert result.stop_message is not None and "budget" in result.stop_message
    assert result.queries_used == inner.queries_used <= 150
    assert result.flagged_rows is None  # the box has no policy meter


def test_an_attack_that_finishes_reports_no_stop(digits: tuple[Dataset, Classifier]) -> None:
    ds, victim = digits
    box = BlackBox(victim, budget=500)
    result = knockoff_random(box, ds, victim)
    assert result.stopped is None and result.blocked_at is None and result.stop_message is None
    assert result.queries_used == 500 and result.flagged_rows == 0


def test_collect_without_a_guard_raises_the_refusal(digits: tuple[Dataset, Classifier]) -> None:
    """``collect`` is also called on its own (demo, bench): without a guard nothing is hidden."""
    ds, victim = digits
    box = guarded_box(victim)
    attack = KnockoffNets(policy="random", query_batch=128, train=FAST)
    with pytest.raises(ClientBlockedError):
        attack.collect(box, pool_of(ds), 500)
    box2 = guarded_box(victim)
    guard = QueryGuard(box2, "knockoff")
    transfer = attack.collect(box2, pool_of(ds), 500, guard=guard)
    assert guard.stop is not None and guard.stop.reason == "blocked" and guard.stop.rows == 128
    assert len(transfer) == 128
