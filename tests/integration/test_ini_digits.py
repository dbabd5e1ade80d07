"""InI on digits: a KnockoffNets clone of an InI victim is worse than a clone of a plain victim.

Measured (MLP victim; InI with its defaults — fast engine, PCGrad, γ=0.3, δ=1, ε=1000 — for 100
epochs, lr ×0.1 every 40, OOD proxy ``shapes``; KnockoffNets, 2,000 queries from ``mnist8``;
seeds 0/1/2):

- victim test accuracy: plain 97.5 / 97.5 / 97.5 %, InI 95.0 / 95.3 / 95.6 % (1.9–2.5 points);
- soft-label clone accuracy: plain 93.3 / 93.9 / 93.9 %, InI 84.2 / 83.9 / 83.1 % (9.1–10.8
  points lower).

The test runs seed 0 and asserts a 5-point drop of the clone and at most 4 points of victim cost.
(mnist5k, the issue's scenario: ``python benchmarks/ini_effect.py --pcgrad``.)
"""

from __future__ import annotations

import pytest

from stealproof.attacks import KnockoffNets, clone_factory_like
from stealproof.data import load_dataset, load_pool
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.ini import IniConfig, train_ini_victim
from stealproof.oracle import BlackBox

BUDGET = 2000
CLONE_MARGIN = 0.05  # measured 0.091–0.108 over seeds 0/1/2
VICTIM_COST = 0.04  # measured 0.019–0.025


@pytest.fixture(scope="module")
def victims():  # type: ignore[no-untyped-def]
    scenario = SCENARIOS["digits"]
    ds = load_dataset("digits")
    plain, plain_acc = train_victim(ds, scenario.model, scenario.victim_training, seed=0)
    cfg = IniConfig(epochs=100, step_size=40)
    ini, ini_acc, _ = train_ini_victim(ds, scenario.model, cfg, ood="shapes", seed=0)
    return scenario, ds, (plain, plain_acc), (ini, ini_acc)


def _knockoff_clone_acc(scenario, ds, victim) -> float:  # type: ignore[no-untyped-def]
    pool = load_pool("mnist8", channels=1, image_size=ds.image_size, seed=0)
    box = BlackBox(victim, None, budget=BUDGET)
    result = KnockoffNets(seed=0, train=scenario.clone_training).run(
        box, pool, BUDGET, clone_factory_like(victim), eval_data=(ds.test.images, ds.test.labels)
    )
    acc = result.trace[-1].clone_acc
    assert acc is not None
    return acc


def test_ini_victim_keeps_its_accuracy(victims) -> None:  # type: ignore[no-untyped-def]
    _, _, (_, plain_acc), (_, ini_acc) = victims
    assert ini_acc >= plain_acc - VICTIM_COST, (ini_acc, plain_acc)


def test_ini_lowers_knockoff_clone_accuracy(victims) -> None:  # type: ignore[no-untyped-def]
    scenario, ds, (plain, _), (ini, _) = victims
    against_plain = _knockoff_clone_acc(scenario, ds, plain)
    against_ini = _knockoff_clone_acc(scenario, ds, ini)
    assert against_ini <= against_plain - CLONE_MARGIN, (against_ini, against_plain)
