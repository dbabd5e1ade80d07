"""Model-Guardian end to end on digits: a DFME thief, a benign client, one guarded victim.

The defender trains a reduced guardian (the fast configuration of test_guardian_digits.py); the
thief runs DFME with its own seed. Measured with the default guardian and 100,000 rows
(``python benchmarks/guardian_end_to_end.py``, ``benchmarks/results/guardian_e2e_digits.json``):
undefended clone 77.5%; through the guardian the thief was blocked at row 1,000 and its clone
ended at 12.5% (65 points lower); DPreds alone (no termination) flagged 99.98% of the thief's
rows and cost its clone 27.8 points. The benign client's top-1 answers equalled the victim's on all
360 test images, 1 was flagged, and it was never blocked.
"""

from __future__ import annotations

from typing import Any

import pytest

from stealproof import metrics
from stealproof.attacks import clone_factory_like
from stealproof.attacks.dfme import DFME
from stealproof.data import load_dataset
from stealproof.detectors.guardian import GuardianDetector, guardian_config, train_guardian
from stealproof.errors import ClientBlockedError
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy

FAST = {
    "transform": {"epochs": 40},
    "gan": {"steps": 1500},
    "ddpm": {"steps": 1500},
    "samples_per_source": 1000,
    "eval_samples_per_source": 300,
    "dfme_budget": 30_000,
}
BUDGET = 60_000
MAX_FLAGGED = 1000


@pytest.fixture(scope="module")
def setting() -> dict[str, Any]:
    sc = SCENARIOS["digits"]
    ds = load_dataset("digits")
    victim, _ = train_victim(ds, sc.model, sc.victim_training, seed=0)
    bundle, _ = train_guardian(victim, ds.train.images, guardian_config("digits", **FAST))
    return {"ds": ds, "victim": victim, "detector": GuardianDetector(bundle)}


def _dfme_clone_acc(setting: dict[str, Any], box: BlackBox) -> tuple[float, Any]:
    ds = setting["ds"]
    thief = DFME(seed=1)  # not the defender's seed
    result = thief.run(box, BUDGET, clone_factory_like(setting["victim"]))
    return metrics.clone_accuracy(result.clone, ds.test.images, ds.test.labels), result


def test_guardian_cuts_a_dfme_thief_off_and_spares_a_benign_client(
    setting: dict[str, Any],
) -> None:
    ds, victim = setting["ds"], setting["victim"]
    undefended, _ = _dfme_clone_acc(setting, BlackBox(victim, budget=BUDGET))

    policy = DetectionPolicy([setting["detector"]], max_flagged=MAX_FLAGGED)
    thief_box = BlackBox(victim, policy=policy, budget=BUDGET, client_id="thief")
    guarded, result = _dfme_clone_acc(setting, thief_box)
    assert guarded <= undefended - 0.20, (guarded, undefended)
    status = policy.status("thief")
    assert status.blocked and result.stopped is not None
    assert status.flagged_rows >= MAX_FLAGGED
    assert status.blocked_at is not None and status.blocked_at <= thief_box.queries_used
    with pytest.raises(ClientBlockedError):
        thief_box.query(ds.test.images[:1])

    # another client, same policy, after the thief was blocked: answered, top-1 unchanged
    benign = BlackBox(victim, policy=policy, client_id="benign")
    released = benign.query(ds.test.images)
    clean = metrics.predict(victim, ds.test.images).argmax(dim=1)
    assert bool((released.argmax(dim=1) == clean).all())
    assert metrics.accuracy(released, ds.test.labels) == metrics.accuracy(
        metrics.predict(victim, ds.test.images), ds.test.labels
    )
    assert not policy.is_blocked("benign")
    assert benign.flagged_rows <= 0.05 * len(ds.test.images)  # reduced: 13 of 360 in one run
