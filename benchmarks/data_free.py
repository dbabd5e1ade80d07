"""Data-free attacks (DFME, MAZE, DaST) against an undefended victim, no natural data for the thief.

Trains the scenario's victim, runs each attack through a fresh metered black box at the same
budget and prints JSON: victim accuracy, and per attack the clone accuracy on the victim's test
set, the ratio clone / victim, fidelity, queries used, wall seconds, the queries at which the
clone first reached 60% of the victim's accuracy (from the trace) and the trace itself.

``dfme-untrained-generator`` is a baseline, not an attack from a paper: DFME with the
generator's learning rate at 1e-12 (its outputs stay those of a randomly initialised
generator), to show how much the trained generator adds over random generator outputs.

    cd benchmarks
    python data_free.py --out results/data_free_digits.json                  # ~35 s, 1 thread
    python data_free.py --scenario mnist5k --attacks dfme,maze \
        --out results/data_free_mnist5k.json                                  # ~7 min, 1 thread
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from _output import emit

from stealproof import metrics
from stealproof.attacks import DFME, MAZE, DaST, clone_factory_like
from stealproof.attacks.data_free import DataFreeAttack
from stealproof.data import load_dataset
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.oracle import BlackBox

#: Default budget (rows) and config overrides per scenario. mnist5k uses a narrower conv
#: generator and smaller batches than the papers so that it runs on 1–2 CPU threads.
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"budget": 200_000, "params": {}},
    "mnist5k": {"budget": 200_000, "params": {"batch_size": 128, "generator_width": 16}},
}
ATTACKS: dict[str, Any] = {
    "dfme": lambda p: DFME(**p),
    "maze": lambda p: MAZE(**p),
    "dast": lambda p: DaST(**p),
    "dfme-untrained-generator": lambda p: DFME(**{**p, "generator_lr": 1e-12}),
}


def run_attack(
    attack: DataFreeAttack[Any], victim: Any, ds: Any, budget: int, victim_acc: float
) -> dict[str, Any]:
    """One attack through a fresh undefended black box; the numbers for the report."""
    box = BlackBox(victim, None, budget=budget)
    t0 = time.perf_counter()
    result = attack.run(
        box, budget, clone_factory_like(victim), eval_data=(ds.test.images, ds.test.labels)
    )
    seconds = time.perf_counter() - t0
    acc = metrics.clone_accuracy(result.clone, ds.test.images, ds.test.labels)
    trace = [[p.queries, p.clone_acc] for p in result.trace]
    reach = metrics.queries_to_reach(
        [p.queries for p in result.trace],
        [float(p.clone_acc or 0.0) for p in result.trace],
        0.6 * victim_acc,
    )
    return {
        "config": attack.config.model_dump(),
        "budget": budget,
        "queries_used": result.queries_used,
        "rows_charged": box.queries_used,
        "iterations": result.iterations,
        "clone_acc": acc,
        "ratio": acc / victim_acc,
        "clone_fidelity": metrics.clone_fidelity(result.clone, victim, ds.test.images),
        "reaches_60pct_of_victim": acc >= 0.6 * victim_acc,
        "queries_to_60pct_of_victim": reach,
        "seconds": seconds,
        "trace": trace,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=sorted(DEFAULTS), default="digits")
    ap.add_argument(
        "--budget", type=int, default=None, help="rows per attack (default: by scenario)"
    )
    ap.add_argument("--attacks", default="dfme,maze,dast,dfme-untrained-generator")
    ap.add_argument(
        "--param", action="append", default=[], help="config override KEY=VALUE (JSON value)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        ap.error(f"--attacks: unknown {unknown}; known: {sorted(ATTACKS)}")
    params = dict(DEFAULTS[args.scenario]["params"])
    for item in args.param:
        key, _, raw = item.partition("=")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    params["seed"] = args.seed
    budget = args.budget or DEFAULTS[args.scenario]["budget"]

    sc = SCENARIOS[args.scenario]
    ds = load_dataset(args.scenario)
    t0 = time.perf_counter()
    victim, victim_acc = train_victim(ds, sc.model, sc.victim_training, seed=args.seed)
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "victim_model": sc.model,
        "victim_acc": victim_acc,
        "victim_train_s": time.perf_counter() - t0,
        "target": "clone_acc >= 0.6 * victim_acc",
        "budget": budget,
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "attacks": {},
    }
    for name in names:
        out["attacks"][name] = run_attack(ATTACKS[name](params), victim, ds, budget, victim_acc)
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
