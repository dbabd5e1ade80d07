"""Model-Guardian end to end: a DFME thief and a benign client against one guarded victim.

The defender trains its victim and a DFMS detector bundle (:func:`train_guardian`, which runs
its *own* DFME with the defender's seed); the thief runs DFME with another seed through

1. the undefended black box;
2. the guardian with DPreds only (flagged rows get the ``deceptive`` answer, no termination);
3. the guardian with termination (blocked after ``--max-flagged`` flagged rows);

all at the same budget. A benign client queries the victim's test set through the same policy
(before and after the thief is blocked): its top-1 answers must equal the victim's.

    python benchmarks/guardian_end_to_end.py --out guardian_e2e.json [--scenario digits]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _output import emit

from stealproof import metrics
from stealproof.attacks import clone_factory_like
from stealproof.attacks.dfme import DFME
from stealproof.data import load_dataset
from stealproof.detectors.guardian import GuardianConfig, GuardianDetector, train_guardian
from stealproof.errors import ClientBlockedError
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy


def benign_check(victim: torch.nn.Module, policy: DetectionPolicy, images: torch.Tensor) -> dict:
    """Top-1 agreement, flagged share and blocking for a benign client querying ``images``."""
    box = BlackBox(victim, policy=policy, client_id="benign")
    released = torch.cat([box.query(images[i : i + 64]) for i in range(0, images.shape[0], 64)])
    clean = metrics.predict(victim, images).argmax(dim=1)
    return {
        "rows": int(images.shape[0]),
        "top1_equal_share": float((released.argmax(dim=1) == clean).float().mean()),
        "flagged_rows": box.flagged_rows,
        "blocked": policy.is_blocked("benign"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="digits", choices=sorted(SCENARIOS))
    ap.add_argument("--budget", type=int, default=100_000, help="DFME rows per thief run")
    ap.add_argument("--max-flagged", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="defender seed; the thief uses seed+1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sc = SCENARIOS[args.scenario]
    ds = load_dataset(args.scenario)
    test = (ds.test.images, ds.test.labels)
    t0 = time.perf_counter()
    victim, victim_acc = train_victim(ds, sc.model, sc.victim_training, seed=args.seed)
    bundle, report = train_guardian(victim, ds.train.images, GuardianConfig(seed=args.seed))
    detector = GuardianDetector(bundle)
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "victim_acc": victim_acc,
        "budget": args.budget,
        "detector": {
            "source_auc": report.source_auc,
            "loo_auc": report.loo_auc,
            "threshold": report.threshold,
            "benign_test_fpr": None,
        },
        "setup_s": time.perf_counter() - t0,
    }
    thief = DFME(seed=args.seed + 1)
    make = clone_factory_like(victim)

    def attack(box: BlackBox) -> dict[str, Any]:
        t = time.perf_counter()
        result = thief.run(box, args.budget, make, eval_data=test)
        return {
            "clone_acc": metrics.clone_accuracy(result.clone, *test),
            "queries": result.queries_used,
            "flagged_rows": box.flagged_rows,
            "stopped": result.stopped,
            "trace": [(p.queries, p.clone_acc) for p in result.trace],
            "seconds": time.perf_counter() - t,
        }

    out["undefended"] = attack(BlackBox(victim, budget=args.budget, client_id="thief"))
    dpreds = DetectionPolicy([detector], max_flagged=None)
    out["benign_before"] = benign_check(victim, dpreds, ds.test.images)
    out["detector"]["benign_test_fpr"] = out["benign_before"]["flagged_rows"] / len(ds.test.images)
    out["guardian_dpreds_only"] = attack(
        BlackBox(victim, policy=dpreds, budget=args.budget, client_id="thief")
    )
    guarded = DetectionPolicy([detector], max_flagged=args.max_flagged)
    out["guardian_with_termination"] = attack(
        BlackBox(victim, policy=guarded, budget=args.budget, client_id="thief")
    )
    status = guarded.status("thief")
    out["guardian_with_termination"]["blocked"] = status.blocked
    out["guardian_with_termination"]["blocked_at"] = status.blocked_at
    try:
        BlackBox(victim, policy=guarded, client_id="thief").query(ds.test.images[:1])
        out["guardian_with_termination"]["refused_after_block"] = False
    except ClientBlockedError:
        out["guardian_with_termination"]["refused_after_block"] = True
    out["benign_after_thief_blocked"] = benign_check(victim, guarded, ds.test.images)
    base = out["undefended"]["clone_acc"]
    out["summary"] = {
        "victim_acc": victim_acc,
        "clone_undefended": base,
        "clone_dpreds_only": out["guardian_dpreds_only"]["clone_acc"],
        "clone_with_termination": out["guardian_with_termination"]["clone_acc"],
        "drop_dpreds_only_points": 100 * (base - out["guardian_dpreds_only"]["clone_acc"]),
        "drop_with_termination_points": 100
        * (base - out["guardian_with_termination"]["clone_acc"]),
        "benign_top1_equal": out["benign_after_thief_blocked"]["top1_equal_share"] == 1.0
        and out["benign_before"]["top1_equal_share"] == 1.0,
    }
    out["seconds"] = time.perf_counter() - t0
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
