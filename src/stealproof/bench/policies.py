"""A benchmark cell's detection policy: PRADA's δ, Model-Guardian's config, the policy, and the
benign client's view.

The thief queries through the policy (a blocked thief stops and keeps the clone it has); the
defender's test images then go through the *same* policy as another client, in a seeded order
and calls of ``benign_batch`` rows, so the defender's accuracy is what its users see: flagged
rows get the deceptive answer, and once the benign client is blocked every row it has not been
answered counts as wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from stealproof.data.datasets import Dataset
from stealproof.defenses.base import Defense
from stealproof.detectors.base import Detector
from stealproof.detectors.guardian import (
    SCENARIO_OVERRIDES,
    GuardianConfig,
    GuardianDetector,
    guardian_config,
)
from stealproof.detectors.prada import PradaConfig, PradaDetector, benign_streams, calibrate_delta
from stealproof.errors import ClientBlockedError
from stealproof.models.base import Classifier
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy, PolicyConfig

#: Benign calibration streams for an automatic δ: how many, and how long (at most).
CALIBRATION_STREAMS = 5
CALIBRATION_LENGTH = 400
BENIGN_CLIENT = "benign"


def prada_config(setting: Mapping[str, Any], delta: float) -> PradaConfig:
    """The cell's PRADA config with ``delta`` filled in (it may be ``"auto"`` in the setting)."""
    fields = {k: v for k, v in setting["prada"].items() if k != "delta"}
    return PradaConfig(**fields, delta=delta)


def auto_delta(victim: Classifier, ds: Dataset, setting: Mapping[str, Any], seed: int) -> float:
    """The largest δ with no flag on benign streams of the defender's *training* images (the
    test images are the benign client's stream, never calibrated on), less the margin."""
    n = int(ds.train.images.shape[0])
    streams = benign_streams(
        ds.train.images, CALIBRATION_STREAMS, min(CALIBRATION_LENGTH, n), seed=1000 + seed
    )
    cfg = prada_config(setting, 0.9)  # calibrate_delta ignores the δ it is given
    return round(calibrate_delta(streams, victim, config=cfg, margin=setting["margin"]), 6)


def guardian_settings(setting: Mapping[str, Any], dataset: str) -> GuardianConfig:
    """The Model-Guardian config of a cell: the built-in scenario's defaults when the dataset
    is one (else the general defaults), with the setting's overrides."""
    base = dataset if dataset in SCENARIO_OVERRIDES else "digits"
    return guardian_config(base, **setting.get("guardian", {}))


def build_policy(
    setting: Mapping[str, Any],
    defense: Defense,
    delta: float | None,
    guardian: GuardianDetector | None = None,
) -> DetectionPolicy:
    """The policy of a cell: its detectors, ``defense`` for unflagged rows, its rules."""
    detectors: list[Detector] = []
    if "prada" in setting["detectors"]:
        assert delta is not None
        detectors.append(PradaDetector(prada_config(setting, delta)))
    if "guardian" in setting["detectors"]:
        assert guardian is not None
        detectors.append(guardian)
    return DetectionPolicy(
        detectors,
        defense=defense,
        deceptive=setting.get("deceptive"),
        config=PolicyConfig(**setting["rules"]),
    )


@dataclass(frozen=True)
class BenignView:
    """The defender's accuracy through the policy, and where its client was blocked."""

    accuracy: float
    blocked_at: int | None
    flagged_rows: int


def benign_view(
    victim: Classifier, policy: DetectionPolicy, ds: Dataset, batch: int, seed: int
) -> BenignView:
    """Stream the test images (seeded order) through ``policy`` as a benign client."""
    x, y = ds.test.images, ds.test.labels
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    box = BlackBox(victim, policy=policy, client_id=BENIGN_CLIENT)
    correct = 0
    for i in range(0, x.shape[0], batch):
        try:
            out = box.query(x[i : i + batch])
        except ClientBlockedError:
            break  # every row not answered counts as wrong
        correct += int((out.argmax(dim=1).cpu() == y[i : i + batch]).sum())
    status = policy.status(BENIGN_CLIENT)
    return BenignView(correct / int(x.shape[0]), status.blocked_at, status.flagged_rows)
