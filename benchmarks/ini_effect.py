"""InI's effect on mnist5k: a plain and an InI-trained LeNet victim, attacked the same way.

Prints JSON: each victim's test accuracy, and against each victim the KnockoffNets soft-label and
label-only clone accuracy (5,000 queries from ``digits28``) and the JBDA clone accuracy.

    python benchmarks/ini_effect.py --out ini_effect.json [--epochs 50] [--pcgrad]
    python benchmarks/ini_effect.py --pcgrad --pcgrad-reduction mean --max-grad-norm none \
        --skip-plain --out ini_reference_step.json     # the reference code's PCGrad step
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _output import emit

from stealproof import metrics
from stealproof.attacks import KnockoffNets, clone_factory_like, train_clone
from stealproof.attacks.jbda import JBDA
from stealproof.data import load_dataset, load_pool
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.ini import IniConfig, train_ini_victim
from stealproof.oracle import BlackBox


def attack_all(victim: torch.nn.Module, ds: Any, sc: Any, budget: int, seed: int) -> dict[str, Any]:
    """KnockoffNets (soft and label-only) and JBDA against ``victim``."""
    make = clone_factory_like(victim)
    test = (ds.test.images, ds.test.labels)
    pool = load_pool(sc.pool, channels=1, image_size=ds.image_size, seed=seed)
    box = BlackBox(victim, None, budget=budget)
    ko = KnockoffNets(seed=seed, train=sc.clone_training)
    transfer = ko.collect(box, pool, budget)
    soft, _ = train_clone(make, transfer, sc.clone_training, seed=seed)
    labels, _ = train_clone(make, transfer, sc.clone_training, label_only=True, seed=seed)
    # a seeded random sample: the built-in splits keep their source's order, and mnist5k's
    # source is sorted by class (its first 150 images are 0s, 1s and 2s)
    pick = torch.randperm(len(ds.unlabeled.images), generator=torch.Generator().manual_seed(seed))
    seeds = ds.unlabeled.images[pick[:150]]
    jb_box = BlackBox(victim, None, budget=budget)
    jb = JBDA(seed=seed, train=sc.clone_training).run(jb_box, seeds, budget, make, eval_data=test)
    return {
        "knockoff_clone_acc": metrics.clone_accuracy(soft, *test),
        "knockoff_label_only_clone_acc": metrics.clone_accuracy(labels, *test),
        "jbda_clone_acc": jb.trace[-1].clone_acc,
        "jbda_queries": jb.queries_used,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="InI epochs (default: the paper's)")
    ap.add_argument("--pcgrad", action="store_true")
    ap.add_argument(
        "--pcgrad-reduction",
        choices=("sum", "mean"),
        default="sum",
        help="sum (ours) or mean (the reference code's) of the projected terms",
    )
    ap.add_argument(
        "--max-grad-norm",
        default="10",
        help="gradient-norm clip of the victim's step (none: off, as the reference's PCGrad path)",
    )
    ap.add_argument("--skip-plain", action="store_true", help="InI victim only (no plain baseline)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--engine", default="fast")
    ap.add_argument("--ood", default="shapes")
    ap.add_argument("--budget", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        clip = None if args.max_grad_norm.lower() == "none" else float(args.max_grad_norm)
    except ValueError:
        ap.error("--max-grad-norm: a positive number or none")
    if clip is not None and not clip > 0:
        ap.error("--max-grad-norm: a positive number or none")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sc = SCENARIOS["mnist5k"]
    ds = load_dataset("mnist5k")
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if not args.skip_plain:
        plain, plain_acc = train_victim(ds, sc.model, sc.victim_training, seed=args.seed)
        out["plain"] = {
            "victim_acc": plain_acc,
            "train_s": time.perf_counter() - t0,
            **attack_all(plain, ds, sc, args.budget, args.seed),
        }
    t1 = time.perf_counter()
    cfg = IniConfig(
        epochs=args.epochs,
        pcgrad=args.pcgrad,
        pcgrad_reduction=args.pcgrad_reduction,
        max_grad_norm=clip,
        engine=args.engine,
        seed=args.seed,
    )
    ini, ini_acc, _ = train_ini_victim(ds, sc.model, cfg, args.ood, seed=args.seed)
    t2 = time.perf_counter()
    out = {
        "ini_config": cfg.model_dump(),
        "ood": args.ood,
        "threads": torch.get_num_threads(),
        **out,
        "ini": {
            "victim_acc": ini_acc,
            "train_s": t2 - t1,
            **attack_all(ini, ds, sc, args.budget, args.seed),
        },
    }
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
