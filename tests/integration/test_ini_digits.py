"""InI on digits: a KnockoffNets clone of an InI victim is worse than a clone of a plain victim.

Measured (MLP victim; InI with its defaults — fast engine, PCGrad, γ=0.3, δ=1, ε=1000 — for 100
epochs, lr ×0.1 every 40, OOD proxy ``shapes``; KnockoffNets, 2,000 queries from ``mnist8``;
seed s = victim seeds and attack seed, s = 0/1/2):

- victim test accuracy: plain 97.5 / 97.5 / 97.5 %, InI 95.0 / 95.3 / 95.6 % (1.9–2.5 points);
- soft-label clone accuracy: plain 93.3 / 93.9 / 94.7 %, InI 85.0 / 84.7 / 80.6 % (8.3–14.2
  points lower).

Each seed asserts a 5-point drop of the clone and at most 4 points of victim cost. Seed 0 runs
in the default set (about 9 s: the InI victim trains 100 epochs), seeds 1 and 2 in the ``slow``
set. (mnist5k, the issue's scenario: ``python benchmarks/ini_effect.py --pcgrad``.)
"""

from __future__ import annotations

from functools import cache

import pytest

from stealproof.attacks import KnockoffNets, clone_factory_like
from stealproof.data import Dataset, load_dataset, load_pool
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.ini import IniConfig, train_ini_victim
from stealproof.models import Classifier
from stealproof.oracle import BlackBox

BUDGET = 2000
CLONE_MARGIN = 0.05  # measured 0.083–0.142 over seeds 0/1/2
VICTIM_COST = 0.04  # measured 0.019–0.025
SEEDS = [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
SCENARIO = SCENARIOS["digits"]


class Victims:
    """The digits data and, per seed, a plain and an InI victim with their test accuracy."""

    def __init__(self) -> None:
        self.ds: Dataset = load_dataset("digits")

    @cache  # noqa: B019 - one module-scoped instance
    def plain(self, seed: int) -> tuple[Classifier, float]:
        return train_victim(self.ds, SCENARIO.model, SCENARIO.victim_training, seed=seed)

    @cache  # noqa: B019 - one module-scoped instance
    def ini(self, seed: int) -> tuple[Classifier, float]:
        cfg = IniConfig(epochs=100, step_size=40)
        model, acc, _ = train_ini_victim(self.ds, SCENARIO.model, cfg, ood="shapes", seed=seed)
        return model, acc

    def knockoff_clone_acc(self, victim: Classifier, seed: int) -> float:
        ds = self.ds
        pool = load_pool("mnist8", channels=1, image_size=ds.image_size, seed=0)
        box = BlackBox(victim, None, budget=BUDGET)
        result = KnockoffNets(seed=seed, train=SCENARIO.clone_training).run(
            box,
            pool,
            BUDGET,
            clone_factory_like(victim),
            eval_data=(ds.test.images, ds.test.labels),
        )
        acc = result.trace[-1].clone_acc
        assert acc is not None
        return acc


@pytest.fixture(scope="module")
def victims() -> Victims:
    return Victims()


@pytest.mark.parametrize("seed", SEEDS)
def test_ini_victim_keeps_its_accuracy(victims: Victims, seed: int) -> None:
    (_, plain_acc), (_, ini_acc) = victims.plain(seed), victims.ini(seed)
    assert ini_acc >= plain_acc - VICTIM_COST, (ini_acc, plain_acc)


@pytest.mark.parametrize("seed", SEEDS)
def test_ini_lowers_knockoff_clone_accuracy(victims: Victims, seed: int) -> None:
    against_plain = victims.knockoff_clone_acc(victims.plain(seed)[0], seed)
    against_ini = victims.knockoff_clone_acc(victims.ini(seed)[0], seed)
    assert against_ini <= against_plain - CLONE_MARGIN, (against_ini, against_plain)
