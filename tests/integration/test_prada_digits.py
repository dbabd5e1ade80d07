"""PRADA on the digits scenario: calibrate delta on benign streams, flag a JBDA stream.

Benign data are the defender's held-out images (test + unlabeled splits), split into two
disjoint halves: five calibration streams from one half, five evaluation streams from the
other (1,000 queries each: a permutation of the half, then augmented repeats); delta is the
smallest calibration W minus a 0.02 margin. The JBDA stream is what the attack actually sent
through an undefended black box (its transfer set, in query order), from a 100-image seed set
(first flag at query 240 when measured; ``benchmarks/prada_streams.py`` reports the other
seed-set sizes: with 150 seed images the 8×8 digits stream is not flagged within 500 queries,
on mnist5k it is — see ``test_prada_mnist5k.py``).
"""

from __future__ import annotations

import torch

from stealproof.attacks import JBDA, clone_factory_like
from stealproof.data import Pool, load_dataset
from stealproof.detectors import PradaDetector, calibrate_delta, trace_stream
from stealproof.errors import ClientBlockedError
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy


def streams(images: torch.Tensor, n: int, length: int, seed: int) -> list[torch.Tensor]:
    pool = Pool("benign", images, torch.zeros(images.shape[0], dtype=torch.long))
    return [pool.draw(length, torch.Generator().manual_seed(seed + i))[0] for i in range(n)]


def test_prada_flags_jbda_within_500_queries_and_no_benign_stream() -> None:
    sc = SCENARIOS["digits"]
    ds = load_dataset("digits")
    assert ds.unlabeled is not None
    victim, acc = train_victim(ds, sc.model, sc.victim_training, seed=0)
    assert acc > 0.9
    held_out = torch.cat([ds.test.images, ds.unlabeled.images])
    perm = torch.randperm(held_out.shape[0], generator=torch.Generator().manual_seed(0))
    half = held_out.shape[0] // 2
    cal = streams(held_out[perm[:half]], 5, 1000, seed=1000)
    ev = streams(held_out[perm[half:]], 5, 1000, seed=2000)

    delta = calibrate_delta(cal, victim, margin=0.02)
    assert 0.5 < delta < 1.0
    for s in ev:
        tr = trace_stream(s, victim, detector=PradaDetector(delta=delta))
        assert tr.first_flag is None, (tr.min_w, delta)

    box = BlackBox(victim, budget=500, client_id="thief")
    jb = JBDA(seed=0, train=sc.clone_training)
    seeds = ds.unlabeled.images[:100]
    sent = jb.run(box, seeds, 500, clone_factory_like(victim)).transfer.images
    assert sent.shape[0] == 500
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
