"""ART's extraction attacks beside stealproof's KnockoffNets on the ``digits`` scenario.

ART's ``KnockoffNets`` (random) and ``CopycatCNN`` query a defended stealproof ``BlackBox``
through ``stealproof.integrations.art.as_art_classifier`` and train the clone with ART's own
loop; stealproof's ``KnockoffNets`` spends the same budget on the same pool rows and trains the
same clone architecture (the victim's MLP) from the same initialisation with the same optimizer,
batch, epochs and no schedule (ART's ``fit`` has none) on all its answers (holdout 0, like ART).
A last row per defense is stealproof's KnockoffNets with the scenario's own clone training
(cosine schedule, selection on the thief's 10 % holdout). Each attack runs soft-label and
label-only (ART's ``use_probability=False``, its default). Clone accuracy and fidelity are on
the victim's test set; seeds give the victim, the pool draw and the clone's initialisation.

    python benchmarks/art_extraction.py --out benchmarks/results/art_extraction.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _output import emit

from stealproof import defenses, metrics
from stealproof.attacks import KnockoffNets, clone_factory_like
from stealproof.attacks.base import AttackResult
from stealproof.attacks.knockoff import KnockoffConfig
from stealproof.data import load_dataset, load_pool
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.integrations.art import art_attack
from stealproof.oracle import BlackBox
from stealproof.train import TrainConfig

DEFENSES: dict[str, dict[str, Any]] = {
    "none": {},
    "reverse_sigmoid": {"beta": 0.7, "gamma": 0.2},
}
ATTACKS = ("knockoff", "art:knockoffnets", "art:copycat", "knockoff (scenario training)")


def make_attack(
    name: str, label_only: bool, same: TrainConfig, scenario: TrainConfig, seed: int
) -> Callable[..., AttackResult]:
    """The ``run`` of one attack setting."""
    if name == "knockoff":
        cfg = KnockoffConfig(label_only=label_only, holdout=0.0, train=same, seed=seed)
        return KnockoffNets(cfg).run
    if name == "knockoff (scenario training)":
        return KnockoffNets(KnockoffConfig(label_only=label_only, train=scenario, seed=seed)).run
    return art_attack(name, label_only=label_only, train=same, seed=seed).run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[300, 1000, 3000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import art

    sc = SCENARIOS["digits"]
    ds = load_dataset("digits")
    test = (ds.test.images, ds.test.labels)
    same = sc.clone_training.model_copy(update={"schedule": "none"})
    runs: list[dict[str, Any]] = []
    victims: dict[int, float] = {}
    for seed in args.seeds:
        victim, victim_acc = train_victim(ds, sc.model, sc.victim_training, seed=seed)
        victims[seed] = victim_acc
        pool = load_pool(sc.pool, channels=1, image_size=ds.image_size, seed=seed)
        make_clone = clone_factory_like(victim)
        for dname, params in DEFENSES.items():
            defense = defenses.create(dname, **params)
            for budget in args.budgets:
                for name in ATTACKS:
                    for label_only in (False, True):
                        box = BlackBox(victim, defense, budget=budget)
                        run = make_attack(name, label_only, same, sc.clone_training, seed)
                        t0 = time.perf_counter()
                        result = run(box, pool, budget, make_clone)
                        seconds = time.perf_counter() - t0
                        runs.append(
                            {
                                "seed": seed,
                                "defense": dname,
                                "budget": budget,
                                "attack": name,
                                "label_only": label_only,
                                "queries_used": result.queries_used,
                                "box_meter": box.queries_used,
                                "clone_acc": metrics.clone_accuracy(result.clone, *test),
                                "clone_fidelity": metrics.clone_fidelity(
                                    result.clone, victim, test[0]
                                ),
                                "seconds": round(seconds, 2),
                            }
                        )
    summary = []
    for dname in DEFENSES:
        for budget in args.budgets:
            for name in ATTACKS:
                for label_only in (False, True):
                    rows = [
                        r
                        for r in runs
                        if (r["defense"], r["budget"], r["attack"], r["label_only"])
                        == (dname, budget, name, label_only)
                    ]
                    accs = [r["clone_acc"] for r in rows]
                    summary.append(
                        {
                            "defense": dname,
                            "budget": budget,
                            "attack": name,
                            "label_only": label_only,
                            "clone_acc_mean": statistics.fmean(accs),
                            "clone_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                            "clone_fidelity_mean": statistics.fmean(
                                r["clone_fidelity"] for r in rows
                            ),
                            "exact_budget": all(
                                r["queries_used"] == r["box_meter"] == budget for r in rows
                            ),
                            "seconds_mean": statistics.fmean(r["seconds"] for r in rows),
                        }
                    )
    emit(
        {
            "scenario": "digits",
            "art_version": art.__version__,
            "torch_threads": torch.get_num_threads(),
            "seeds": args.seeds,
            "victim_acc": victims,
            "defenses": DEFENSES,
            "same_training": same.model_dump(mode="json"),
            "scenario_training": sc.clone_training.model_dump(mode="json"),
            "summary": summary,
            "runs": runs,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
