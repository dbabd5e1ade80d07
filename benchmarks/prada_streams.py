"""PRADA on query streams: calibrate delta on benign streams, then queries-until-flag per attack.

Steps (one scenario, one seed):

1. train the victim of the scenario (``digits``: MLP on 8×8 digits; ``mnist5k``: LeNet);
2. benign data = the defender's held-out images (the ``test`` and ``unlabeled`` splits, never
   seen in training), split by a seeded permutation into two disjoint halves. Calibration
   streams are drawn from one half, evaluation streams from the other: each stream is a
   random permutation of its half followed by randomly augmented repeats (``Pool.draw``:
   small affine jitter) until it has ``--stream-len`` queries; every stream has its own seed;
3. delta = :func:`calibrate_delta` on the calibration streams (the smallest W any test
   computed on them, minus ``--delta-margin``, 0.02 by default; flag rule W < delta);
   PRADA pools per-class distances scaled by their median (``--class-scale median``, our
   change) or raw as in the paper (``--class-scale none``);
4. the evaluation streams, and the query streams the attacks sent (recorded in query order:
   the transfer set of each attack run against an undefended black box), are replayed through
   PRADA; reported: every stream's smallest W and the first query flagged at the calibrated
   delta and at the paper's 0.9.

Attacks: JBDA at every ``--seed-sets`` size and JB-self / JB-top3 at the first one (seed set:
the first images of the thief's own ``unlabeled`` split), and KnockoffNets with the random
policy from the scenario's thief pool (``mnist8`` for digits, ``digits28`` for mnist5k).
``--seeds 0,1,2`` repeats everything (victim, streams, attacks) per seed.

    python benchmarks/prada_streams.py --scenario mnist5k --seeds 0,1,2 \
        --out benchmarks/results/prada_mnist5k.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _output import emit

from stealproof.attacks import JBDA, JBSelf, JBTop3, KnockoffNets, clone_factory_like
from stealproof.data import load_dataset, load_pool
from stealproof.detectors import (
    PradaConfig,
    PradaDetector,
    StreamTrace,
    benign_streams,
    calibrate_delta,
    trace_stream,
)
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.oracle import BlackBox

REFERENCE_DELTA = 0.9


def summarise(tr: StreamTrace, delta: float, every: int = 100) -> dict[str, Any]:
    """Smallest W, first flag at the calibrated and the reference delta, a thinned W trace."""
    return {
        "queries": tr.queries,
        "first_test_at": tr.checks[0][0] if tr.checks else None,
        "min_w": tr.min_w,
        "first_flag_calibrated": tr.first_flag_at(delta),
        "first_flag_delta_0.9": tr.first_flag_at(REFERENCE_DELTA),
        "w_every_100": {str(q): round(w, 4) for q, w in tr.checks if q % every == 0},
    }


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Victim, calibration, benign evaluation and attack streams for one seed."""
    t0 = time.perf_counter()
    sc = SCENARIOS[args.scenario]
    ds = load_dataset(sc.dataset)
    assert ds.unlabeled is not None
    victim, victim_acc = train_victim(ds, sc.model, sc.victim_training, seed=seed)
    t_victim = time.perf_counter() - t0

    # benign data: the defender's held-out images, two disjoint halves
    held_out = torch.cat([ds.test.images, ds.unlabeled.images])
    perm = torch.randperm(held_out.shape[0], generator=torch.Generator().manual_seed(seed))
    half = held_out.shape[0] // 2
    cal_images, eval_images = held_out[perm[:half]], held_out[perm[half:]]
    cal = benign_streams(cal_images, args.cal_streams, args.stream_len, seed=1000 + 100 * seed)
    ev = benign_streams(eval_images, args.streams, args.stream_len, seed=2000 + 100 * seed)

    t1 = time.perf_counter()
    base = PradaConfig(class_scale=args.class_scale)
    delta = calibrate_delta(cal, victim, config=base, margin=args.delta_margin)
    t_cal = time.perf_counter() - t1

    def trace(s: torch.Tensor) -> StreamTrace:
        return trace_stream(s, victim, detector=PradaDetector(base))

    cal_traces = [trace(s) for s in cal]
    benign = [summarise(trace(s), delta) for s in ev]

    attacks: dict[str, Any] = {}
    make = clone_factory_like(victim)
    seed_sets = [int(n) for n in args.seed_sets.split(",") if n]
    for name in [a for a in args.attacks.split(",") if a]:
        # the Jacobian attacks at every seed-set size (JB-self / JB-top3 at the first only)
        sizes = seed_sets if name == "jbda" else seed_sets[:1]
        for n_seed in sizes if name != "knockoff" else [0]:
            ta = time.perf_counter()
            box = BlackBox(victim, budget=args.budget, client_id=name)
            if name == "knockoff":
                pool = load_pool(sc.pool, channels=1, image_size=ds.image_size, seed=seed)
                ko = KnockoffNets(seed=seed, train=sc.clone_training)
                stream = ko.collect(box, pool, args.budget).images
                key, source = name, f"pool {sc.pool}, random policy"
            else:
                cls = {"jbda": JBDA, "jb-self": JBSelf, "jb-top3": JBTop3}[name]
                attack = cls(seed=seed, train=sc.clone_training)
                # a seeded random sample: mnist5k's splits are sorted by class
                g = torch.Generator().manual_seed(seed)
                pick = torch.randperm(len(ds.unlabeled.images), generator=g)[:n_seed]
                seeds = ds.unlabeled.images[pick]
                stream = attack.run(box, seeds, args.budget, make).transfer.images
                key = f"{name}@seed_set={n_seed}"
                source = f"seed set: first {n_seed} images of the thief's unlabeled split"
            tr = trace(stream)
            first = tr.first_flag_at(delta)
            attacks[key] = {
                "source": source,
                "seed_set": n_seed,
                **summarise(tr, delta),
                # a flag among the natural seed images is not a detection of the synthetic queries
                "flagged_within_seed_set": first is not None and first <= n_seed,
                "seconds": time.perf_counter() - ta,
            }

    return {
        "seed": seed,
        "victim_acc": victim_acc,
        "benign_data": (
            f"held-out test+unlabeled images ({held_out.shape[0]}), split in two disjoint "
            f"halves of {half} (calibration) and {held_out.shape[0] - half} (evaluation); "
            f"each stream: a permutation of its half, then affine-augmented repeats"
        ),
        "calibration": {
            "streams": args.cal_streams,
            "stream_len": args.stream_len,
            "min_w_per_stream": [t.min_w for t in cal_traces],
            "delta": delta,
            "seconds": t_cal,
        },
        "benign_evaluation": {
            "min_w_per_stream": [b["min_w"] for b in benign],
            "false_alarms_calibrated": sum(b["first_flag_calibrated"] is not None for b in benign),
            "false_alarms_delta_0.9": sum(b["first_flag_delta_0.9"] is not None for b in benign),
            "streams": benign,
        },
        "attacks": attacks,
        "victim_train_s": t_victim,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="digits", choices=sorted(SCENARIOS))
    ap.add_argument("--cal-streams", type=int, default=5, help="benign calibration streams")
    ap.add_argument("--streams", type=int, default=5, help="benign evaluation streams")
    ap.add_argument("--stream-len", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000, help="queries per attack stream")
    ap.add_argument("--seed-sets", default="150,100,50", help="JBDA seed-set sizes")
    ap.add_argument("--attacks", default="jbda,jb-self,jb-top3,knockoff")
    ap.add_argument("--seeds", default="0", help="victim/stream seeds, comma-separated")
    ap.add_argument(
        "--class-scale",
        default="median",
        choices=["median", "none"],
        help="PRADA's pooling: per-class median scaling (ours, default) or raw (the paper)",
    )
    ap.add_argument(
        "--delta-margin",
        type=float,
        default=0.02,
        help="delta = smallest benign calibration W minus this (fresh streams dip lower)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = [run_seed(args, int(s)) for s in args.seeds.split(",") if s]
    summary: dict[str, Any] = {
        "benign_false_alarms_calibrated": sum(
            r["benign_evaluation"]["false_alarms_calibrated"] for r in runs
        ),
        "benign_streams": sum(len(r["benign_evaluation"]["streams"]) for r in runs),
        "delta_per_seed": [r["calibration"]["delta"] for r in runs],
        "first_flag_calibrated": {
            key: [r["attacks"][key]["first_flag_calibrated"] for r in runs]
            for key in runs[0]["attacks"]
        },
    }
    summary["jbda_flagged_within_500"] = {
        key: all(q is not None and q <= 500 for q in qs)
        for key, qs in summary["first_flag_calibrated"].items()
        if key.startswith("jbda@")
    }
    summary["flagged_within_seed_set"] = {
        key: [r["attacks"][key]["flagged_within_seed_set"] for r in runs]
        for key in runs[0]["attacks"]
        if key != "knockoff"
    }
    out = {
        "scenario": args.scenario,
        "prada_config": PradaConfig(class_scale=args.class_scale).model_dump(),
        "reference_delta": REFERENCE_DELTA,
        "delta_margin": args.delta_margin,
        "summary": summary,
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
