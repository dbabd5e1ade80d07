"""PRADA on mnist5k (28×28, the paper's MNIST setting): JBDA from 150 seed images is flagged
right after its seed set, benign streams are not. Slow (about a minute): ``pytest -m slow``.

Same protocol as ``test_prada_digits.py`` and ``benchmarks/prada_streams.py``: benign streams
from the defender's held-out images (two disjoint halves, 5 calibration and 5 evaluation
streams of 1,000 queries), delta = smallest calibration W − 0.02. Measured over seeds 0, 1, 2:
first flag at query 160 on every seed, no benign flag in 15 evaluation streams.
"""

from __future__ import annotations

import pytest
import torch

from stealproof.attacks import JBDA, clone_factory_like
from stealproof.data import Pool, load_dataset
from stealproof.detectors import PradaDetector, calibrate_delta, trace_stream
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.oracle import BlackBox


def streams(images: torch.Tensor, n: int, length: int, seed: int) -> list[torch.Tensor]:
    pool = Pool("benign", images, torch.zeros(images.shape[0], dtype=torch.long))
    return [pool.draw(length, torch.Generator().manual_seed(seed + i))[0] for i in range(n)]


@pytest.mark.slow
def test_prada_flags_jbda_150_seeds_within_500_queries_on_mnist5k() -> None:
    sc = SCENARIOS["mnist5k"]
    ds = load_dataset("mnist5k")
    assert ds.unlabeled is not None
    victim, acc = train_victim(ds, sc.model, sc.victim_training, seed=1)
    assert acc > 0.95
    held_out = torch.cat([ds.test.images, ds.unlabeled.images])
    perm = torch.randperm(held_out.shape[0], generator=torch.Generator().manual_seed(1))
    half = held_out.shape[0] // 2
    cal = streams(held_out[perm[:half]], 5, 1000, seed=1100)
    ev = streams(held_out[perm[half:]], 5, 1000, seed=2100)
    delta = calibrate_delta(cal, victim, margin=0.02)
    for s in ev:
        tr = trace_stream(s, victim, detector=PradaDetector(delta=delta))
        assert tr.first_flag is None, (tr.min_w, delta)

    box = BlackBox(victim, budget=500, client_id="thief")
    jb = JBDA(seed=1, train=sc.clone_training)
    sent = jb.run(box, ds.unlabeled.images[:150], 500, clone_factory_like(victim)).transfer.images
    tr = trace_stream(sent, victim, detector=PradaDetector(delta=delta))
    assert tr.first_flag is not None and 150 < tr.first_flag <= 500, (tr.min_w, delta)
    # the paper's raw pooling does not separate this stream from the benign ones
    raw = PradaDetector(class_scale="none")
    raw_delta = calibrate_delta(cal, victim, config=raw.config, margin=0.02)
    tr_raw = trace_stream(sent, victim, detector=PradaDetector(delta=raw_delta, class_scale="none"))
    assert tr_raw.first_flag is None or tr_raw.first_flag > 500, (tr_raw.min_w, raw_delta)
