"""Built-in benchmark suites, as plain config data (what a YAML file would hold).

- ``smoke``: the ``digits`` scenario (8×8 digits, MLP), every registered defense once at its demo
  strength, KnockoffNets with soft-label and label-only clones, 1,000 queries, one seed — a
  minute or so on two CPU cores.
- ``mnist5k``: LeNet on MNIST-5k, every registered defense over a sweep of its knob, KnockoffNets
  soft-label and label-only, 5,000 queries from ``digits28``, seeds 0 and 1.
- ``smoke-full``: ``digits`` against every attack family (KnockoffNets from another source and
  from in-distribution images, JBDA, JB-top3, DFME; soft and label-only), the plain victim and
  an InI victim, without a policy and with PRADA or Model-Guardian, a few output defenses — the
  worst-case report in minutes.
- ``mnist5k-full``: the same on ``mnist5k`` with the acceptance table's thieves (hours; Ray).
- ``paper-mnist``, ``paper-fashionmnist``, ``paper-cifar10``: the papers' setting on file
  datasets read from ``data_dir`` (``bench run --data-dir``): 50,000 queries, KnockoffNets from
  another dataset and the Jacobian thieves against the output defenses (GPU or cluster).

Defenses registered later join both suites (at their ``demo_params``) automatically.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from stealproof import defenses

#: Knob sweeps of the mnist5k suite: a mapping of value lists (cartesian product) or a list of
#: explicit settings. Defenses missing here run at their demo strength.
MNIST5K_SWEEPS: dict[str, Any] = {
    "none": [{}],
    "top1": [{}],
    "topk": {"k": [1, 2, 3, 5]},
    "rounding": {"decimals": [0, 1, 2]},
    "random": {"eps": [0.25, 0.5, 1.0, 1.5]},
    "noise": {"eps_z": [0.5, 1.0, 2.0, 4.0], "norm": ["l2"]},
    "reverse_sigmoid": {"beta": [0.3, 0.6, 1.0], "gamma": [0.2]},
    "mad": {"eps": [0.5, 0.7, 0.75, 0.8, 0.9, 0.95]},
    "mad_argmax": {"eps": [0.5, 1.0, 1.5, 2.0]},
    "grad2": [
        *({"eps": e} for e in (0.5, 0.8, 0.9)),
        *({"eps": e, "preserve_argmax": True} for e in (1.0, 2.0)),
        *({"eps": e, "target": "min_ip", "preserve_argmax": True} for e in (1.0, 2.0)),
    ],
    "am": {"tau": [0.3, 0.4, 0.5, 0.8]},
}


def _ordered_defenses() -> list[str]:
    return sorted(defenses.available(), key=lambda n: (n != "none", n))


def smoke() -> dict[str, Any]:
    """Every defense once on ``digits``; the suite CI and a quick look use."""
    return {
        "name": "smoke",
        "description": "digits + MLP: every defense once at its demo strength, 1,000 queries",
        "scenarios": [{"name": "digits"}],
        "attacks": {"knockoff": {"policy": ["random"], "label_only": [False, True]}},
        "defenses": {
            n: [dict(defenses.get_defense_class(n).demo_params)] for n in _ordered_defenses()
        },
        "budgets": [1000],
        "seeds": [0],
    }


def mnist5k() -> dict[str, Any]:
    """Every defense × a sweep of its knob on mnist5k (LeNet), 5,000 queries, 2 seeds."""
    sweeps = {
        n: copy.deepcopy(MNIST5K_SWEEPS.get(n, [dict(defenses.get_defense_class(n).demo_params)]))
        for n in _ordered_defenses()
    }
    return {
        "name": "mnist5k",
        "description": "mnist5k + LeNet, thief pool digits28: every defense over its knob",
        "scenarios": [{"name": "mnist5k"}],
        "attacks": {"knockoff": {"policy": ["random"], "label_only": [False, True]}},
        "defenses": sweeps,
        "budgets": [5000],
        "seeds": [0, 1],
    }


def smoke_full() -> dict[str, Any]:
    """Every attack family × every kind of defense on ``digits``, 1,000 queries, one seed."""
    return {
        "name": "smoke-full",
        "description": "digits + MLP: every attack family against output defenses, an InI "
        "victim and a PRADA policy, and the worst case over the thieves",
        "scenarios": [{"name": "digits"}],
        "attacks": {
            "knockoff": {"label_only": [False, True], "pool": ["mnist8", "digits-unlabeled"]},
            "jbda": {"label_only": [False, True]},
            "jb-top3": {},
            "dfme": {"batch_size": 64},
        },
        "victims": [{}, {"training": "ini"}],
        "policies": [None, {"max_flagged": 40}, {"detectors": ["guardian"], "max_flagged": 100}],
        "defenses": {
            "none": [{}],
            "reverse_sigmoid": {"beta": [0.7], "gamma": [0.2]},
            "mad": {"eps": [0.7]},
            "am": {"tau": [0.15, 0.2]},  # the digits MLP is rarely confident: 0.3 costs 32 points
        },
        "budgets": [1000],
        "seeds": [0],
    }


def mnist5k_full() -> dict[str, Any]:
    """The worst case on mnist5k: the thieves of the acceptance table against every defense
    family and combinations, 5,000 queries, seed 0.

    Cut to fit about three hours on 2 cores with Ray: one seed; one or two settings per output
    defense (the strongest of the ``mnist5k`` sweeps within a few points of cost); the thieves
    KnockoffNets (soft and label-only, from ``digits28`` and in-distribution), JB-top3 and DFME
    (JBDA and JB-self, MAZE and DaST, averaging and other clone architectures are left to
    ``smoke-full`` and to your own grids).
    """
    return {
        "name": "mnist5k-full",
        "description": "mnist5k + LeNet: the strongest of KnockoffNets (soft, label-only, "
        "in-distribution), JB-top3 and DFME against output defenses, an InI victim, PRADA and "
        "Model-Guardian policies and their combinations",
        "scenarios": [{"name": "mnist5k"}],
        "attacks": {
            "knockoff": {"label_only": [False, True], "pool": ["digits28", "mnist5k-unlabeled"]},
            "jb-top3": {},
            "dfme": {},
        },
        "victims": [{}, {"training": "ini"}],
        "policies": [
            None,
            {"max_flagged": 40},
            {"detectors": ["guardian"], "max_flagged": 100},
        ],
        "defenses": {
            "none": [{}],
            "reverse_sigmoid": {"beta": [0.7], "gamma": [0.2]},
            "mad": {"eps": [0.7, 0.8]},
            "mad_argmax": {"eps": [1.0]},
            "grad2": [{"eps": 2.0, "target": "min_ip", "preserve_argmax": True}],
            "am": {"tau": [0.4, 0.5]},
        },
        "budgets": [5000],
        "seeds": [0],
    }


#: The papers' settings (Prediction Poisoning, Table 1; ALGORITHMS.md §4): dataset, the pool
#: its KnockoffNets thief queries (the papers' pool when we read it, else the nearest file
#: dataset we do), the victim architecture and the Jacobian thieves it was measured against.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    # the papers steal MNIST with EMNIST Letters (not read here); KMNIST is the nearest
    # other-script 28×28 pool we read
    "mnist": {"pool": "kmnist", "model": "lenet", "jacobian": ["jbda", "jb-top3"]},
    # the papers steal FashionMNIST with EMNIST (digits and letters): MNIST's digits
    "fashionmnist": {"pool": "mnist", "model": "lenet", "jacobian": ["jbda", "jb-top3"]},
    # the papers' victim is a VGG16; ResNet-18 is the CIFAR architecture registered here
    "cifar10": {"pool": "cifar100", "model": "resnet18", "jacobian": ["jb-top3"]},
}


def paper(dataset: str) -> dict[str, Any]:
    """The papers' benchmark on a file dataset: 50,000 queries, their thieves and defenses.

    Meant for a GPU or a Ray cluster (on CPU one CIFAR-10 cell takes hours); needs
    ``--data-dir`` with the dataset's files and its thief pool's (see :data:`PAPER_SETTINGS`).
    """
    setting = PAPER_SETTINGS[dataset]
    attacks: dict[str, Any] = {"knockoff": {"label_only": [False, True]}}
    attacks.update({name: {"label_only": [False, True]} for name in setting["jacobian"]})
    return {
        "name": f"paper-{dataset}",
        "description": f"{dataset} + {setting['model']}, as in the papers: KnockoffNets from "
        f"{setting['pool']} and the Jacobian thieves, 50,000 queries, against the output "
        "defenses at the papers' strengths",
        "scenarios": [
            {
                "name": f"paper-{dataset}",
                "dataset": dataset,
                "model": setting["model"],
                "pool": setting["pool"],
            }
        ],
        "attacks": attacks,
        "defenses": {
            "none": [{}],
            "reverse_sigmoid": {"beta": [0.7], "gamma": [0.2]},
            "mad": {"eps": [0.5, 0.9]},  # L1 ε ≥ 1 lets MAD overtake top-1 (issue 11)
            "mad_argmax": {"eps": [1.0]},
            "grad2": [{"eps": 2.0, "target": "min_ip", "preserve_argmax": True}],
            "am": {"tau": [0.5]},
        },
        "budgets": [50000],
        "seeds": [0],
    }


SUITES: dict[str, Callable[[], dict[str, Any]]] = {
    "smoke": smoke,
    "mnist5k": mnist5k,
    "smoke-full": smoke_full,
    "mnist5k-full": mnist5k_full,
    **{f"paper-{d}": functools.partial(paper, d) for d in PAPER_SETTINGS},
}


def suite_data(name: str) -> dict[str, Any]:
    """The plain config data of a built-in suite (a fresh copy each call)."""
    from stealproof._names import unknown_name_message
    from stealproof.bench.errors import BenchConfigError

    if name not in SUITES:
        raise BenchConfigError(unknown_name_message("suite", name, list(SUITES)))
    return SUITES[name]()
