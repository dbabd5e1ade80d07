"""PRADA on query streams: calibrate delta on benign streams, flag a JBDA stream.

Same protocol as ``benchmarks/prada_streams.py``. Benign data are the defender's held-out
images (test + unlabeled splits), split into two disjoint halves: five calibration streams
from one half, five evaluation streams from the other (1,000 queries each: a permutation of the
half, then augmented repeats); delta is the smallest calibration W minus a 0.02 margin. The
JBDA stream is what the attack actually sent through an undefended black box (its transfer
set, in query order).

- digits (fast): 100 seed images, first flag at query 240 when measured; with 150 seed images
  the 8×8 stream is not flagged within 500 queries (the benchmark reports it);
- mnist5k (slow, about a minute; ``pytest -m slow``), the paper's MNIST setting: 150 seed
  images, first flag at query 160 on seeds 0, 1 and 2, no benign flag in 15 evaluation streams;
  with the paper's raw pooling the same stream is not flagged.
"""

from __future__ import annotations

import pytest
import torch

from stealproof.attacks import JBDA, clone_factory_like
from stealproof.data import Dataset, load_dataset
from stealproof.detectors import PradaDetector, benign_streams, calibrate_delta, trace_stream
from stealproof.errors import ClientBlockedError
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.models.base import Classifier
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy


def calibrated(
    scenario: str, seed: int
) -> tuple[Dataset, Classifier, list[torch.Tensor], list[torch.Tensor], float]:
    """Victim, calibration and evaluation streams, and the calibrated delta (margin 0.02)."""
    sc = SCENARIOS[scenario]
    ds = load_dataset(sc.dataset)
    assert ds.unlabeled is not None
    victim, acc = train_victim(ds, sc.model, sc.victim_training, seed=seed)
    assert acc > 0.9
    held_out = torch.cat([ds.test.images, ds.unlabeled.images])
    perm = torch.randperm(held_out.shape[0], generator=torch.Generator().manual_seed(seed))
    half = held_out.shape[0] // 2
    cal = benign_streams(held_out[perm[:half]], 5, 1000, seed=1000 + 100 * seed)
    ev = benign_streams(held_out[perm[half:]], 5, 1000, seed=2000 + 100 * seed)
    delta = calibrate_delta(cal, victim, margin=0.02)
    assert 0.5 < delta < 1.0
    for s in ev:
        tr = trace_stream(s, victim, detector=PradaDetector(delta=delta))
        assert tr.first_flag is None, (tr.min_w, delta)
    return ds, victim, cal, ev, delta


def jbda_stream(
    ds: Dataset, victim: Classifier, scenario: str, seeds: int, seed: int
) -> torch.Tensor:
    """The 500 queries a JBDA thief with ``seeds`` seed images sends, in order."""
    assert ds.unlabeled is not None
    box = BlackBox(victim, budget=500, client_id="thief")
    jb = JBDA(seed=seed, train=SCENARIOS[scenario].clone_training)
    run = jb.run(box, ds.unlabeled.images[:seeds], 500, clone_factory_like(victim))
    assert run.transfer.images.shape[0] == 500
    return run.transfer.images


def test_prada_flags_jbda_within_500_queries_and_no_benign_stream() -> None:
    ds, victim, _, _, delta = calibrated("digits", seed=0)
    sent = jbda_stream(ds, victim, "digits", seeds=100, seed=0)
    tr = trace_stream(sent, victim, detector=PradaDetector(delta=delta))
    # flagged on the synthetic queries, not among the natural seed images
    assert tr.first_flag is not None and 100 < tr.first_flag <= 500, (tr.min_w, delta)

    # the same stream sent live through a policy: deceptive answers, then the client is cut off
    policy = DetectionPolicy([PradaDetector(delta=delta)], max_flagged=100)
    live = BlackBox(victim, policy=policy, client_id="thief")
    refused = False
    for i in range(0, 500, 50):
        try:
            live.query(sent[i : i + 50])
        except ClientBlockedError:
            refused = True
            break
    assert refused and live.flagged_rows >= 100
    status = policy.status("thief")
    assert status.blocked and status.blocked_at is not None
    assert status.blocked_at >= tr.first_flag + 99  # 100 flagged rows are needed


@pytest.mark.slow
def test_prada_flags_jbda_150_seeds_within_500_queries_on_mnist5k() -> None:
    ds, victim, cal, _, delta = calibrated("mnist5k", seed=1)
    sent = jbda_stream(ds, victim, "mnist5k", seeds=150, seed=1)
    tr = trace_stream(sent, victim, detector=PradaDetector(delta=delta))
    assert tr.first_flag is not None and 150 < tr.first_flag <= 500, (tr.min_w, delta)
    # the paper's raw pooling does not separate this stream from the benign ones
    paper = PradaDetector(class_scale="none")
    paper_delta = calibrate_delta(cal, victim, config=paper.config, margin=0.02)
    tr_paper = trace_stream(
        sent, victim, detector=PradaDetector(delta=paper_delta, class_scale="none")
    )
    assert tr_paper.first_flag is None or tr_paper.first_flag > 500, (tr_paper.min_w, paper_delta)
