"""Model-Guardian's DFMS detector on a built-in scenario: how well it separates each source.

Trains the scenario's victim, then the detector (``train_guardian``) on the victim's training
split, and prints JSON per seed: per-source held-out ROC-AUC of each sub-detector and of the
fused detector, leave-one-source-out AUC (the fused detector without that source's
sub-detector, on that source), the calibrated threshold, the false-positive rate on the
benign test split (never used in training or calibration), detection rates at the threshold and
training seconds; plus min / mean over seeds. With the quantisation cue on (the default),
``snapped_*`` repeat the per-source numbers on held-out source samples rounded to the
defender's pixel grid (an adaptive attacker removing that cue). ``--set`` overrides
``GuardianConfig`` fields, e.g. ``--set '{"quantization_cue": false}'`` for the detector
without the cue.

    python benchmarks/guardian_detector.py --scenario digits --seeds 0,1,2 \\
        --out benchmarks/results/guardian_digits.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from typing import Any

import torch
from _output import emit

from stealproof.data import load_dataset
from stealproof.detectors.guardian import (
    GuardianDetector,
    benign_fpr,
    guardian_config,
    train_guardian,
)
from stealproof.experiment import SCENARIOS, train_victim

TARGETS = {"source_auc_min": 0.95, "loo_auc_min": 0.8, "benign_fpr_max": 0.02}


def run_seed(scenario: str, seed: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One victim + detector; the numbers of the JSON's ``runs`` entries."""
    sc = SCENARIOS[scenario]
    ds = load_dataset(sc.dataset)
    victim, acc = train_victim(ds, sc.model, sc.victim_training, seed=seed)
    cfg = guardian_config(scenario, **{**(overrides or {}), "seed": seed})
    t0 = time.perf_counter()
    bundle, report = train_guardian(victim, ds.train.images, cfg)
    train_s = time.perf_counter() - t0
    det = GuardianDetector(bundle)
    t1 = time.perf_counter()
    fpr = benign_fpr(det, ds.test.images)
    score_s = time.perf_counter() - t1
    return {
        "seed": seed,
        "victim_acc": acc,
        "benign_fpr": fpr,
        "benign_rows": int(ds.test.images.shape[0]),
        "train_s": train_s,
        "score_ms_per_query": 1000 * score_s / ds.test.images.shape[0],
        **asdict(report),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Min and mean over seeds of every per-source number, FPR and seconds."""
    out: dict[str, Any] = {}
    keys = ["source_auc", "fused_auc", "loo_auc", "tpr"]
    if all(r.get("snapped_source_auc") for r in runs):
        keys += ["snapped_source_auc", "snapped_fused_auc", "snapped_loo_auc", "snapped_tpr"]
    for key in keys:
        out[key] = {
            src: {
                "min": min(r[key][src] for r in runs),
                "mean": statistics.fmean(r[key][src] for r in runs),
            }
            for src in runs[0][key]
        }
    for key in ("benign_fpr", "eval_fpr", "train_s"):
        vals = [r[key] for r in runs]
        out[key] = {"max": max(vals), "mean": statistics.fmean(vals)}
    out["meets_targets"] = {
        "source_auc": all(
            v["min"] >= TARGETS["source_auc_min"] for v in out["source_auc"].values()
        ),
        "loo_auc": all(v["min"] >= TARGETS["loo_auc_min"] for v in out["loo_auc"].values()),
        "benign_fpr": out["benign_fpr"]["max"] <= TARGETS["benign_fpr_max"],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="digits")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--set",
        default="{}",
        help="GuardianConfig overrides as JSON, e.g. '{\"quantization_cue\": false}'",
    )
    args = ap.parse_args(argv)
    overrides = json.loads(args.set)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_seed(args.scenario, s, overrides) for s in seeds]
    result = {
        "scenario": args.scenario,
        "overrides": overrides,
        "config": guardian_config(args.scenario, **overrides).model_dump(mode="json"),
        "targets": TARGETS,
        "summary": summarise(runs),
        "runs": runs,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
