"""Every attack family as a benchmark grid axis, with the counter-moves as axes of each."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stealproof.bench.config import BenchConfigError, attack_label, expand, parse_config

BASE: dict[str, Any] = {
    "name": "unit",
    "scenarios": [{"name": "digits"}],
    "defenses": {"none": [{}], "mad": {"eps": [0.5, 0.8]}},
    "budgets": [600],
    "seeds": [0],
}


def grid(**attacks: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), "attacks": attacks}


def error_of(data: Any) -> str:
    with pytest.raises(BenchConfigError) as info:
        parse_config(data, source="bad.yaml")
    return str(info.value)


def test_every_attack_family_expands_with_its_counter_moves() -> None:
    cells = expand(
        parse_config(
            grid(
                knockoff={
                    "policy": ["random"],
                    "average": [1, 8],
                    "clone_model": ["same", "lenet"],
                },
                jbda={"label_only": [False, True], "rounds": [2, None]},
                **{"jb-top3": {}, "jb-self": {"pool": ["digits-unlabeled", "mnist8"]}},
                dfme={"batch_size": 32},
                maze={"batch_size": 8},
                dast={"label_only": [True], "batch_size": 32},
            )
        )
    )
    per_attack: dict[str, list[Any]] = {}
    for c in cells:
        per_attack.setdefault(c.attack, []).append(c)
    defenses = 3  # none + two MAD settings
    # knockoff: 2 averages × 2 architectures, both clones of a cell from one transfer set
    assert len(per_attack["knockoff"]) == 4 * defenses
    assert {c.label_only for c in per_attack["knockoff"]} == {(False, True)}
    # the other families run once per label_only value
    assert len(per_attack["jbda"]) == 2 * 2 * defenses
    assert {c.label_only for c in per_attack["jbda"]} == {(False,), (True,)}
    assert len(per_attack["jb-self"]) == 2 * defenses
    assert len(per_attack["jb-top3"]) == len(per_attack["dfme"]) == defenses
    assert {c.label_only for c in per_attack["dast"]} == {(True,)}
    labels = {c.attack_label for c in cells}
    assert {
        "knockoff-random",
        "knockoff-random avg8",
        "knockoff-random clone=lenet",
        "knockoff-random avg8 clone=lenet",
        "jbda rounds=2",
        "jbda",
        "jb-self pool=digits-unlabeled",
        "jb-self pool=mnist8",
        "dfme",
    } <= labels
    assert len({c.cell_hash() for c in cells}) == len(cells)


def test_default_knockoff_cells_keep_their_parameters_and_hashes() -> None:
    """Counter-moves at their defaults are not written into a cell, so adding the axes does
    not change the hash of any cell an earlier run finished."""
    (cell, *_) = expand(parse_config(grid(knockoff={"policy": ["random"]})))
    assert cell.attack_params == {"policy": "random", "query_batch": 128, "augment": True}
    explicit = expand(
        parse_config(grid(knockoff={"policy": ["random"], "average": [1], "clone_model": ["same"]}))
    )[0]
    assert explicit.cell_hash() == cell.cell_hash()


def test_attack_labels() -> None:
    assert attack_label("knockoff", {"policy": "adaptive"}) == "knockoff-adaptive"
    assert attack_label("dfme", {"batch_size": 256}) == "dfme"
    assert (
        attack_label("jbda", {"rounds": 3, "average": 8, "clone_model": "mlp", "pool": "noise"})
        == "jbda rounds=3 avg8 clone=mlp pool=noise"
    )


@pytest.mark.parametrize(
    ("attacks", "needles"),
    [
        ({"jbdaa": {}}, ["attacks.jbdaa", "unknown attack", "jbda"]),
        ({"knockoff": {"clone_model": ["resnet"]}}, ["clone_model", "unknown clone model",
                                                      "resnet18"]),
        ({"jbda": {"pool": ["nosuchpool"]}}, ["attacks.jbda.pool[0]", "unknown pool"]),
        ({"dfme": {"pool": ["mnist8"]}}, ["attacks.dfme.pool", "data-free attacks use no pool"]),
        ({"maze": {"batch_size": 256}}, ["attacks.maze: one iteration spends",
                                         "smallest budget is 600"]),
        ({"knockoff": {"average": [0]}}, ["attacks.knockoff.average[0]"]),
        ({"jbda": {"label_only": [True, True]}}, ["label_only", "listed twice"]),
        ({"jbda": {"rounds": [-1]}}, ["attacks.jbda.rounds[0]"]),
    ],
    ids=["unknown-attack", "clone-model", "pool", "data-free-pool", "budget", "average", "twice",
         "rounds"],
)  # fmt: skip
def test_bad_attack_axes_name_the_key(attacks: dict[str, Any], needles: list[str]) -> None:
    msg = error_of(grid(**attacks))
    for needle in needles:
        assert needle in msg, msg


# ----------------------------------------------------------------------------- victims


def test_victims_axis_default_ini_and_checkpoint(tmp_path: Any) -> None:
    plain = expand(parse_config(grid(knockoff={})))
    explicit = expand(parse_config({**grid(knockoff={}), "victims": [{}]}))
    assert [c.cell_hash() for c in plain] == [c.cell_hash() for c in explicit]
    assert all(c.victim is None for c in plain)
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"not read at load, only hashed")
    victims = [{}, {"training": "ini", "ini": {"epochs": 3}}, {"checkpoint": str(ckpt)}]
    cells = expand(parse_config({**grid(knockoff={}), "victims": victims}))
    assert len(cells) == 3 * len(plain)
    ini = {c.victim["label"] for c in cells if c.victim and c.victim.get("training") == "ini"}
    assert ini == {"ini(epochs=3)"}
    ini_cell = next(c for c in cells if c.victim and c.victim.get("training") == "ini")
    assert ini_cell.victim is not None and ini_cell.victim["ini"]["epochs"] == 3
    assert ini_cell.victim["ood"] == "shapes" and ini_cell.victim["ini"]["gamma"] == 0.3
    labels = {c.victim["label"] for c in cells if c.victim and c.victim.get("checkpoint")}
    assert labels == {"victim:mine"}
    assert len({c.cell_hash() for c in cells}) == len(cells)


@pytest.mark.parametrize(
    ("victims", "needles"),
    [
        ([{"checkpoint": "/nonexistent/v.pt"}], ["victims[0].checkpoint", "no such file"]),
        ([{"checkpoint": "x.pt", "training": "ini"}], ["already trained"]),
        ([{"ini": {"epochs": 2}}], ["training: ini only"]),
        ([{"training": "ini", "ini": {"epochz": 2}}], ["victims[0].ini.epochz", "unknown"]),
        ([{"training": "ini", "ood": "nope"}], ["victims[0].ood", "unknown pool"]),
        ([{"training": "ini"}, {"training": "ini"}], ["victims[1]", "'ini' is already listed"]),
        ([{"training": "fancy"}], ["victims[0].training"]),
    ],
    ids=["missing-file", "checkpoint-and-training", "ini-without-ini", "ini-option", "ood",
         "twice", "training"],
)  # fmt: skip
def test_bad_victims_name_the_key(victims: list[Any], needles: list[str]) -> None:
    msg = error_of({**grid(knockoff={}), "victims": victims})
    for needle in needles:
        assert needle in msg, msg


# ----------------------------------------------------------------------------- policies


def test_policies_axis_labels_and_hashes() -> None:
    plain = expand(parse_config(grid(knockoff={})))
    none = expand(parse_config({**grid(knockoff={}), "policies": [None]}))
    assert [c.cell_hash() for c in plain] == [c.cell_hash() for c in none]
    policies = [None, {"max_flagged": 40}, {"prada": {"delta": 0.95}, "window": 100, "ratio": 0.5}]
    cells = expand(parse_config({**grid(knockoff={}), "policies": policies}))
    assert len(cells) == 3 * len(plain)
    labels = {c.policy["label"] for c in cells if c.policy}
    assert labels == {"prada(max_flagged=40)", "prada(window=100,ratio=0.5,delta=0.95)"}
    auto = next(c for c in cells if c.policy and c.policy["label"] == "prada(max_flagged=40)")
    assert auto.policy is not None and auto.policy["prada"]["delta"] == "auto"
    assert auto.policy["rules"] == {"max_flagged": 40, "window": None, "ratio": None}
    assert len({c.cell_hash() for c in cells}) == len(cells)
    guarded = expand(
        parse_config(
            {**grid(knockoff={}), "policies": [{"detectors": ["prada", "guardian"],
                                                "guardian": {"target_fpr": 0.02}}]}
        )
    )  # fmt: skip
    assert {c.policy["label"] for c in guarded if c.policy} == {"prada+guardian(target_fpr=0.02)"}


@pytest.mark.parametrize(
    ("policies", "needles"),
    [
        ([{"detectors": ["lie-detector"]}], ["policies[0].detectors[0]"]),
        (
            [{"detectors": ["guardian"], "guardian": {"target_fpr": 2}}],
            ["policies[0].guardian.target_fpr"],
        ),
        (
            [{"detectors": ["prada"], "guardian": {"seed": 1}}],
            ["policies[0].guardian: set, but detectors has no guardian"],
        ),
        (
            [{"detectors": ["guardian"], "prada": {"delta": 0.9}}],
            ["policies[0].prada: set, but detectors has no prada"],
        ),
        ([{"window": 100}], ["policies[0]", "window and ratio: set both or neither"]),
        ([{"prada": {"delta": 1.5}}], ["policies[0].prada.delta"]),
        ([{"prada": {"deltaa": 0.9}}], ["policies[0].prada.deltaa", "unknown"]),
        ([{"deceptive": "nonsense"}], ["policies[0].deceptive", "unknown defense"]),
        ([{}, {}], ["policies[1]", "'prada' is already listed"]),
    ],
    ids=[
        "detector",
        "guardian-option",
        "guardian-unused",
        "prada-unused",
        "window",
        "delta",
        "prada-key",
        "deceptive",
        "twice",
    ],
)
def test_bad_policies_name_the_key(policies: list[Any], needles: list[str]) -> None:
    msg = error_of({**grid(knockoff={}), "policies": policies})
    for needle in needles:
        assert needle in msg, msg


def test_the_docs_every_thief_example_is_real(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    import yaml

    page = (Path(__file__).resolve().parents[2] / "docs" / "benchmark.md").read_text()
    section = page.split("## Every thief, every kind of defense", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "my-victim.pt").write_bytes(b"hashed when the config loads")
    cells = expand(parse_config(example))
    # attack settings: knockoff 2 averages × 2 clones × 2 pools, jbda 2, jb-top3 1, dfme 1;
    # × 3 victims × 3 policies × 3 defense settings
    assert len(cells) == (8 + 2 + 1 + 1) * 3 * 3 * 3
    assert {c.attack for c in cells} == {"knockoff", "jbda", "jb-top3", "dfme"}
