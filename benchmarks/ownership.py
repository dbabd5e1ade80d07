"""Ownership verification: do stolen clones carry the owner's watermark, and innocents not?

The owner serves its victim through ``label_watermark`` (a secret class map on the queries the
victim is unsure of; the key set is every query it relabelled, from its ``record_dir``) or
``watermark`` (GRAD² toward a generated key set, ``--defense watermark``); thieves steal it
(KnockoffNets soft and label-only, JBDA, DFME, and adaptive thieves that fine-tune the clone on
a little clean data or distil it into another architecture); innocent models are trained
independently (other seeds, another architecture, other data) or stolen from a *different*
owner's watermark. Every model is checked with ``stealproof.ownership.verify``
against the owner's key (for ``label_watermark`` also against a second key the thieves never
queried: the owner's own earlier query log, relabelled: ``p_value_log``). Prints JSON rows
``{model, kind, attack, seed, clone_acc, match_rate, p_value, groups_matched}`` and a summary.

    python benchmarks/ownership.py --scenario digits --out ownership_digits.json    # ~1 min
    python benchmarks/ownership.py --scenario mnist5k --out ownership_mnist5k.json  # ~3 min
"""

from __future__ import annotations

import argparse
import atexit
import copy
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _output import emit
from torch import nn

from stealproof import metrics
from stealproof.attacks import DFME, JBDA, KnockoffNets, clone_factory_like, train_clone
from stealproof.attacks.base import TransferSet
from stealproof.data import load_dataset, load_pool
from stealproof.defenses.base import Defense
from stealproof.defenses.label_watermark import LabelWatermark
from stealproof.defenses.watermark import Watermark
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.oracle import BlackBox, victim_posteriors
from stealproof.ownership import key_set_from_records, verify
from stealproof.train import TrainConfig, train_model

#: Per scenario: the thief's budget, another architecture, and labelled data that is not the
#: owner's (a pool with its labels: the same task from another source).
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"budget": 1000, "other_model": "lenet", "other_data": "mnist8"},
    "mnist5k": {"budget": 5000, "other_model": "mlp", "other_data": "digits28"},
}
OWNER_KEY_SEED = 20261204  # the owner's secret
OTHER_OWNER_KEY_SEED = 777  # another owner's secret (its clones are innocents here)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=sorted(SETTINGS), default="digits")
    ap.add_argument("--seeds", type=int, default=5, help="thief seeds per attack (default 5)")
    ap.add_argument(
        "--defense", choices=("label_watermark", "watermark"), default="label_watermark",
        help="label_watermark (a secret class map on low-confidence queries, the default) or "
        "watermark (GRAD² toward generated keys)",
    )  # fmt: skip
    ap.add_argument("--fpr", type=float, default=0.004, help="label_watermark's fpr")
    ap.add_argument("--min-top", type=float, default=0.9, help="label_watermark's min_top")
    ap.add_argument("--eps", type=float, default=2.0, help="watermark's L1 budget")
    ap.add_argument("--groups", type=int, default=6, help="watermark's key groups")
    ap.add_argument("--keys", type=int, default=96, help="watermark's key inputs")
    ap.add_argument("--key-seed", type=int, default=OWNER_KEY_SEED, help="the owner's secret")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds: at least 1")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    name, setting = args.scenario, SETTINGS[args.scenario]
    sc, budget = SCENARIOS[name], setting["budget"]
    ds = load_dataset(name)
    c, h, w = ds.input_shape
    test = (ds.test.images, ds.test.labels)
    victim, victim_acc = train_victim(ds, sc.model, sc.victim_training, seed=0)
    pool = load_pool(sc.pool, channels=c, image_size=(h, w), seed=0)
    log_images, _ = pool.draw(2000, torch.Generator().manual_seed(1))  # the owner's query log

    records = Path(tempfile.mkdtemp(prefix="ownership-records-"))
    atexit.register(shutil.rmtree, records, True)  # also when a step below fails

    def serve(secret: int, record: bool) -> Defense:
        if args.defense == "label_watermark":
            # the threshold from held-out images of the owner's data: a victim is surer of its
            # own training images, so calibrating on them relabels more than fpr of users' queries
            return LabelWatermark.prepare(
                victim, ds.unlabeled.images, fpr=args.fpr, min_top=args.min_top, seed=secret,
                record_dir=str(records) if record else None,
            )  # fmt: skip
        return Watermark.prepare(
            victim, ds.train.images, query_sample=log_images, eps=args.eps,
            key_seed=secret, groups=args.groups, keys=args.keys,
        )  # fmt: skip

    owner = serve(args.key_seed, record=True)
    other_owner = serve(OTHER_OWNER_KEY_SEED, record=False)
    with torch.no_grad():
        clean, logits = victim_posteriors(victim, ds.test.images)
        served = owner(ds.test.images, clean, logits)
    defender = {
        "defense": owner.name,
        "params": {k: v for k, v in owner.params.items() if k != "record_dir"},
        "victim_acc": victim_acc,
        "defender_acc": float((served.argmax(1) == ds.test.labels).float().mean()),
        "l1_test": float((served - clean).abs().sum(1).mean()),
        "changed_top1_test": float((served.argmax(1) != clean.argmax(1)).float().mean()),
    }
    make = clone_factory_like(victim)
    models: list[tuple[nn.Module, str, str, int, dict[str, Any]]] = []

    def add(model: nn.Module, kind: str, attack: str, seed: int, **extra: Any) -> None:
        models.append((model, kind, attack, seed, extra))

    def steal(defense: Defense, seed: int) -> tuple[TransferSet, float]:
        box = BlackBox(victim, defense, budget=budget)
        transfer = KnockoffNets(seed=seed, train=sc.clone_training).collect(box, pool, budget)
        with torch.no_grad():
            truth = torch.softmax(victim(transfer.images), dim=1)
        return transfer, float((transfer.answers - truth).abs().sum(1).mean())

    # seeded random samples of the thief's own data: mnist5k's splits are sorted by class
    order = torch.randperm(len(ds.unlabeled.images), generator=torch.Generator().manual_seed(2))
    clean_x, clean_y = ds.unlabeled.images[order[:100]], ds.unlabeled.labels[order[:100]]
    jb_seeds = ds.unlabeled.images[order[100:250]]
    other_arch = clone_factory_like(victim, setting["other_model"])
    for seed in range(args.seeds):
        transfer, l1 = steal(owner, seed)
        soft, _ = train_clone(make, transfer, sc.clone_training, seed=seed)
        add(soft, "thief", "knockoff", seed, l1_queries=l1)
        hard, _ = train_clone(make, transfer, sc.clone_training, label_only=True, seed=seed)
        add(hard, "thief", "knockoff-label-only", seed)
        add(fine_tune(soft, clean_x, clean_y, seed), "thief", "knockoff+fine-tune-100", seed)
        add(distil(soft, pool, other_arch, sc.clone_training, seed), "thief",
            f"knockoff+distil-{setting['other_model']}", seed)  # fmt: skip
    for seed in range(min(2, args.seeds)):
        box = BlackBox(victim, owner, budget=budget)
        jb = JBDA(seed=seed, train=sc.clone_training).run(box, jb_seeds, budget, make)
        add(jb.clone, "thief", "jbda", seed)
    dfme = DFME(seed=0, batch_size=64).run(BlackBox(victim, owner, budget=budget), budget, make)
    add(dfme.clone, "thief", "dfme", 0)
    # innocents: never saw the owner's answers
    for seed in range(1, 6):
        add(train_victim(ds, sc.model, sc.victim_training, seed=seed)[0], "innocent",
            "independent", seed)  # fmt: skip
    for seed in range(1, 3):
        model, _ = train_victim(ds, setting["other_model"], sc.victim_training, seed=seed)
        add(model, "innocent", f"independent-{setting['other_model']}", seed)
    other = load_pool(setting["other_data"], channels=c, image_size=(h, w), seed=0)
    for seed in range(1, 3):
        add(train_on(make, other.images, other.groups, sc.victim_training, seed), "innocent",
            f"trained-on-{setting['other_data']}", seed)  # fmt: skip
    for seed in range(2):
        transfer, _ = steal(other_owner, seed)
        clone, _ = train_clone(make, transfer, sc.clone_training, seed=seed)
        add(clone, "innocent", "knockoff-from-another-owner", seed)

    # the owner's evidence: the generated key set, or every query the watermark relabelled
    if isinstance(owner, LabelWatermark):
        key = key_set_from_records(records)
        # a second key the thieves never queried: the owner's own earlier log, relabelled
        extra_keys = {"log": owner.key_set(victim, log_images)}
    else:
        assert isinstance(owner, Watermark)
        key, extra_keys = owner.key, {}
    rows: list[dict[str, Any]] = []
    for model, kind, attack, seed, extra in models:
        v = verify(model, key)
        rows.append({
            "model": f"{attack}#{seed}", "kind": kind, "attack": attack, "seed": seed,
            "clone_acc": metrics.clone_accuracy(model, *test), "match_rate": v.match_rate,
            "p_value": v.p_value, "groups_matched": v.groups_matched,
            **{f"p_value_{name}": verify(model, k).p_value for name, k in extra_keys.items()},
            **extra,
        })  # fmt: skip
    key_info = {n: {"n": k.n, "groups": k.num_groups} for n, k in extra_keys.items()}
    summary = summarise(args, name, budget, key, defender, rows, time.perf_counter() - t_start)
    emit({**summary, "extra_keys": key_info}, args.out)
    return 0


def fine_tune(clone: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The adaptive thief's first move: a few epochs on a little clean labelled data."""
    tuned = copy.deepcopy(clone)
    train_model(tuned, x, y, TrainConfig(epochs=20, batch_size=32, lr=1e-3, seed=seed))
    return tuned.eval()


def train_on(
    make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, seed: int
) -> nn.Module:
    """A model of the victim's architecture trained on someone else's labelled data."""
    torch.manual_seed(seed)
    model = make()
    train_model(model, x, y, cfg.model_copy(update={"seed": seed}))
    return model.eval()


def distil(
    clone: nn.Module, pool: Any, make: Callable[[], nn.Module], cfg: TrainConfig, seed: int
) -> nn.Module:
    """The adaptive thief's second move: the clone's soft answers on its pool, into another
    architecture."""
    images, _ = pool.draw(5000, torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        answers = torch.softmax(clone(images), dim=1)
    student, _ = train_clone(make, TransferSet(images, answers), cfg, seed=seed)
    return student


def summarise(
    args: argparse.Namespace,
    scenario: str,
    budget: int,
    key: Any,
    defender: dict[str, Any],
    rows: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """The rows, and per attack: how many models were identified at p < 1e-4 and p < 0.01."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(f"{r['kind']}:{r['attack']}", []).append(r)
    summary = {
        k: {
            "models": len(v),
            "p<1e-4": sum(r["p_value"] < 1e-4 for r in v),
            "p<0.01": sum(r["p_value"] < 0.01 for r in v),
            "min_p": min(r["p_value"] for r in v),
            "max_p": max(r["p_value"] for r in v),
            **(
                {"log_key_p<1e-4": sum(r["p_value_log"] < 1e-4 for r in v)}
                if "p_value_log" in v[0]
                else {}
            ),
            "mean_match_rate": sum(r["match_rate"] for r in v) / len(v),
            "mean_clone_acc": sum(r["clone_acc"] for r in v) / len(v),
        }
        for k, v in by.items()
    }
    innocents = [r for r in rows if r["kind"] == "innocent"]
    return {
        "scenario": scenario,
        "budget": budget,
        "key": {"n": key.n, "groups": key.num_groups, "fingerprint": key.fingerprint},
        **defender,
        "innocents": len(innocents),
        "innocent_min_p": min(r["p_value"] for r in innocents),
        **(
            {"innocent_min_p_log": min(r["p_value_log"] for r in innocents)}
            if innocents and "p_value_log" in innocents[0]
            else {}
        ),
        "summary": summary,
        "rows": rows,
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
