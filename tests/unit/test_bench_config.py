"""Benchmark configs: grid expansion, stable cell hashes, errors that name the key, loading."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import stealproof
from stealproof import defenses
from stealproof.bench.config import (
    BenchConfig,
    BenchConfigError,
    expand,
    load_config,
    parse_config,
)
from stealproof.bench.suites import SUITES, suite_data
from stealproof.cli import app
from stealproof.experiment import scenario_for

BASE: dict[str, Any] = {
    "name": "unit",
    "scenarios": [{"name": "digits", "clone_training": {"epochs": 2}}],
    "attacks": {"knockoff": {"policy": ["random", "adaptive"], "label_only": [False, True]}},
    "defenses": {
        "none": [{}],
        "mad": {"eps": [0.5, 0.8]},
        "reverse_sigmoid": {"beta": [0.3, 0.6], "gamma": [0.2]},
    },
    "budgets": [100, 200],
    "seeds": [0, 1],
}


def cfg(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def error_of(data: Any) -> str:
    with pytest.raises(BenchConfigError) as info:
        parse_config(data, source="bad.yaml")
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith("bad.yaml: "), msg
    return msg


# ----------------------------------------------------------------------------- expansion


def test_grid_expands_to_the_cartesian_product() -> None:
    cells = expand(parse_config(cfg()))
    # 1 scenario x 2 seeds x 2 budgets x 2 policies x (1 + 2 + 2) defense settings
    assert len(cells) == 2 * 2 * 2 * 5
    settings = {(c.defense, json.dumps(c.params, sort_keys=True)) for c in cells}
    assert settings == {
        ("none", "{}"),
        ("mad", '{"eps": 0.5}'),
        ("mad", '{"eps": 0.8}'),
        ("reverse_sigmoid", '{"beta": 0.3, "gamma": 0.2}'),
        ("reverse_sigmoid", '{"beta": 0.6, "gamma": 0.2}'),
    }
    assert {c.attack_params["policy"] for c in cells} == {"random", "adaptive"}
    assert {c.budget for c in cells} == {100, 200}
    assert all(c.label_only == (False, True) for c in cells)
    # the scenario's overrides are applied on top of the built-in scenario
    assert {c.spec.clone_training.epochs for c in cells} == {2}
    assert {c.spec.model for c in cells} == {"mlp"}
    # a defense with a seed follows the cell's seed unless the setting fixes it
    for c in cells:
        if c.defense == "mad":
            assert c.defense_config["seed"] == c.seed
            assert c.defense_config["eps"] == c.params["eps"]
    # cells are grouped by (scenario, seed): the serial runner's reuse depends on it
    seeds = [c.seed for c in cells]
    assert seeds == sorted(seeds)


def test_explicit_settings_list_and_explicit_scenario() -> None:
    data = cfg(
        scenarios=[
            {"dataset": "digits", "model": "mlp", "pool": "digits-unlabeled", "name": "mine"}
        ],
        defenses={"grad2": [{"eps": 0.5}, {"eps": 1.0, "preserve_argmax": True}]},
        attacks={"knockoff": {"label_only": [True]}},
        budgets=[50],
        seeds=[3],
    )
    cells = expand(parse_config(data))
    assert [c.params for c in cells] == [{"eps": 0.5}, {"eps": 1.0, "preserve_argmax": True}]
    assert {c.scenario for c in cells} == {"mine"}
    assert {c.spec.pool for c in cells} == {"digits-unlabeled"}
    assert all(c.label_only == (True,) for c in cells)
    assert all(c.defense_config["seed"] == 3 for c in cells)


def test_cell_hashes_are_stable_and_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    cells = expand(parse_config(cfg()))
    hashes = [c.cell_hash() for c in cells]
    assert len(set(hashes)) == len(hashes)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)
    # same config again, keys in another order, ints for floats: the same hashes
    shuffled = cfg(
        defenses={
            "reverse_sigmoid": {"gamma": [0.2], "beta": [0.3, 0.6]},
            "mad": {"eps": [0.5, 0.8]},
            "none": [{}],
        }
    )
    assert {c.cell_hash() for c in expand(parse_config(shuffled))} == set(hashes)
    # the package version is not part of the hash (results survive upgrades)
    monkeypatch.setattr(stealproof, "__version__", "99.0.0")
    assert [c.cell_hash() for c in expand(parse_config(cfg()))] == hashes
    # where the data lives is not part of it either; a changed knob is
    assert [c.cell_hash() for c in expand(parse_config(cfg(data_dir="/elsewhere")))] == hashes
    changed = cfg(defenses={"mad": {"eps": [0.5, 0.81]}})
    assert len({c.cell_hash() for c in expand(parse_config(changed))} - set(hashes)) > 0


def test_integer_and_float_values_hash_alike() -> None:
    a = expand(parse_config(cfg(defenses={"mad": {"eps": [1]}})))
    b = expand(parse_config(cfg(defenses={"mad": {"eps": [1.0]}})))
    assert [c.cell_hash() for c in a] == [c.cell_hash() for c in b]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"defenses": {"madd": {"eps": [0.5]}}}, ["defenses.madd", "unknown defense", "mad"]),
        ({"defenses": {"mad": {"eps": 0.5}}}, ["defenses.mad.eps", "expected a list"]),
        ({"defenses": {"mad": {"eps": [-1]}}}, ["defenses.mad.eps", "greater than or equal"]),
        ({"defenses": {"mad": {"eps": []}}}, ["defenses.mad.eps", "non-empty"]),
        ({"defenses": {"mad": {"epz": [0.5]}}}, ["defenses.mad.epz", "unknown parameter", "eps"]),
        ({"defenses": {"topk": [{"k": 2}, 3]}}, ["defenses.topk[1]", "mapping"]),
        ({"defenses": {"mad": 0.5}}, ["defenses.mad", "expected parameter lists"]),
        ({"defenses": {}}, ["defenses", "at least 1"]),
        ({"attacks": {"knockof": {}}}, ["attacks.knockof", "unknown attack", "knockoff"]),
        ({"attacks": {"knockoff": {"policy": "random"}}}, ["attacks.knockoff.policy", "list"]),
        ({"attacks": {"knockoff": {"policy": ["greedy"]}}}, ["attacks.knockoff.policy[0]"]),
        ({"attacks": {"knockoff": {"label_only": [True, True]}}}, ["label_only", "twice"]),
        ({"attacks": {"knockoff": {"rounds": 3}}}, ["attacks.knockoff.rounds", "unknown key"]),
        ({"budgets": [0]}, ["budgets[0]", "greater than or equal to 1"]),
        ({"budgets": 100}, ["budgets", "list"]),
        ({"seeds": [1, 1]}, ["seeds", "twice"]),
        ({"scenarios": [{"name": "digitz"}]}, ["scenarios[0].name", "unknown scenario"]),
        ({"scenarios": [{"name": "digits", "modell": "mlp"}]}, ["scenarios[0].modell"]),
        ({"scenarios": [{"name": "digits", "model": "vgg"}]}, ["scenarios[0].model", "vgg"]),
        ({"scenarios": [{"name": "digits", "pool": "imagenet"}]}, ["scenarios[0].pool"]),
        (
            {"scenarios": [{"name": "digits", "clone_training": {"epochs": 0}}]},
            ["scenarios[0].clone_training.epochs"],
        ),
        (
            {"scenarios": [{"name": "digits", "victim_training": {"epoch": 3}}]},
            ["scenarios[0].victim_training.epoch"],
        ),
        ({"scenarios": [{"dataset": "digits"}]}, ["scenarios[0]", "missing: model, pool"]),
        ({"seedz": [0]}, ["seedz", "unknown key", "allowed:", "seeds"]),
    ],
)
def test_malformed_config_names_the_key(change: dict[str, Any], needles: list[str]) -> None:
    msg = error_of(cfg(**change))
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_required_keys_are_named() -> None:
    msg = error_of({"scenarios": [{"name": "digits"}]})
    assert "defenses: Field required" in msg and "budgets: Field required" in msg


def test_top_level_must_be_a_mapping() -> None:
    assert "mapping" in error_of([1, 2])


def test_bench_run_rejects_a_bad_config_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg(defenses={"mad": {"eps": 0.5}})))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "run", str(bad), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "defenses.mad.eps" in lines[0]
    assert not out.exists()  # nothing was created, nothing trained


def test_ray_backend_without_ray_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["bench", "run", "smoke", "--out", str(out), "--backend", "ray"]
    )
    assert result.exit_code == 2, result.output
    assert "stealproof[ray]" in result.stderr
    assert not out.exists()


def test_unknown_backend_and_unknown_suite(tmp_path: Path) -> None:
    runner = CliRunner()
    r1 = runner.invoke(app, ["bench", "run", "smoke", "--out", str(tmp_path), "--backend", "x"])
    assert r1.exit_code == 2 and "--backend" in r1.stderr
    r2 = runner.invoke(app, ["bench", "run", "no-such-suite", "--out", str(tmp_path / "o")])
    assert r2.exit_code == 2 and "CONFIG_OR_SUITE" in r2.stderr and "smoke" in r2.stderr


# ----------------------------------------------------------------------------- loading


def test_yaml_toml_and_json_files_load_alike(tmp_path: Path) -> None:
    data = cfg()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "c.json").write_text(json.dumps(data))
    toml = """
name = "unit"
budgets = [100, 200]
seeds = [0, 1]
[[scenarios]]
name = "digits"
clone_training = { epochs = 2 }
[attacks.knockoff]
policy = ["random", "adaptive"]
label_only = [false, true]
[defenses]
none = [{}]
mad = { eps = [0.5, 0.8] }
reverse_sigmoid = { beta = [0.3, 0.6], gamma = [0.2] }
"""
    (tmp_path / "c.toml").write_text(toml)
    expected = [c.cell_hash() for c in expand(parse_config(data))]
    for name in ("c.yaml", "c.json", "c.toml"):
        loaded = load_config(tmp_path / name)
        assert isinstance(loaded, BenchConfig)
        assert [c.cell_hash() for c in expand(loaded)] == expected, name


def test_invalid_yaml_is_one_line_with_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("defenses: {mad: [\n  budgets: 3\n")
    with pytest.raises(BenchConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value) and "YAML" in str(info.value)
    assert "\n" not in str(info.value)


def test_suites_load_and_validate() -> None:
    assert set(SUITES) == {
        "smoke", "mnist5k", "smoke-full", "mnist5k-full",
        "paper-mnist", "paper-fashionmnist", "paper-cifar10",
    }  # fmt: skip
    smoke = expand(load_config("smoke"))
    assert sorted(c.defense for c in smoke) == defenses.available()  # every defense once
    assert {c.scenario for c in smoke} == {"digits"}
    assert all(c.label_only == (False, True) for c in smoke)
    mnist = expand(load_config("mnist5k"))
    assert {c.scenario for c in mnist} == {"mnist5k"}
    assert {c.budget for c in mnist} == {5000}
    assert {c.seed for c in mnist} == {0, 1}
    assert {c.defense for c in mnist} == set(defenses.available())
    per_defense = {d: {json.dumps(c.params) for c in mnist if c.defense == d} for d in {"mad"}}
    assert len(per_defense["mad"]) >= 3  # a sweep of the knob, not one point
    assert all(c.label_only == (False, True) for c in mnist)
    # the data is a fresh copy: editing it does not change the suite
    data = suite_data("mnist5k")
    data["defenses"]["mad"]["eps"].append(0.99)
    assert 0.99 not in suite_data("mnist5k")["defenses"]["mad"]["eps"]


def test_readme_example_config_and_error_are_real() -> None:
    # the benchmark's page of the documentation (it was the README's Benchmark section)
    section = (Path(__file__).resolve().parents[2] / "docs" / "benchmark.md").read_text()
    assert section.startswith("# Benchmark: trade-off curves")
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    cells = expand(parse_config(example))
    # 2 scenarios x 2 seeds x 2 budgets x 2 policies x (1 + 3 + 3 + 2) settings
    assert len(cells) == 2 * 2 * 2 * 2 * 9
    assert {c.scenario for c in cells} == {"digits", "mnist-noise"}
    shown = section.split("error: ", 1)[1].split("\n", 1)[0]
    example["defenses"]["mad"] = {"eps": 0.5}
    with pytest.raises(BenchConfigError) as info:
        parse_config(example, source="my-sweep.yaml")
    assert str(info.value) == shown


# ----------------------------------------------------------------------------- issue 11 #8


def test_duplicate_yaml_keys_are_refused_with_the_key_and_lines(tmp_path: Path) -> None:
    p = tmp_path / "dup.yaml"
    p.write_text(
        "name: dup\n"
        "scenarios: [{name: digits}]\n"
        "defenses:\n"
        "  mad: {eps: [0.5]}\n"
        "  none: [{}]\n"
        "  mad: {eps: [0.9]}\n"
        "budgets: [100]\n"
    )
    with pytest.raises(BenchConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert "\n" not in msg and str(p) in msg
    assert "duplicate key 'mad'" in msg and "first at line 4" in msg and "line 6" in msg
    # merge keys still override, as YAML specifies
    p.write_text(
        "base: &b {name: digits, clone_training: {epochs: 2}}\n"
        "scenarios: [{<<: *b, name: digits}]\n"
        "defenses: {none: [{}]}\nbudgets: [100]\n"
    )
    with pytest.raises(BenchConfigError, match="base: unknown key"):
        load_config(p)  # (an unknown top-level key, but no duplicate-key error)


def test_duplicate_json_keys_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "dup.json"
    p.write_text('{"budgets": [1], "budgets": [2]}')
    with pytest.raises(BenchConfigError, match="duplicate key 'budgets'"):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("defenses: {mad: {eps: [.nan]}}", "defenses.mad.eps[0]"),
        ("defenses: {mad: [{eps: .inf}]}", "defenses.mad[0].eps"),
        ("defenses: {none: [{}]}\nscenarios: [{name: digits, victim_training: {lr: -.inf}}]", ""),
    ],
)
def test_non_finite_values_are_refused_at_load(tmp_path: Path, text: str, key: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("scenarios: [{name: digits}]\nbudgets: [100]\n" + text)
    if "scenarios" in text:
        p.write_text("budgets: [100]\n" + text)
        key = "scenarios[0].victim_training.lr"
    with pytest.raises(BenchConfigError) as info:
        load_config(p)
    assert f"{key}: expected a finite number" in str(info.value)
    j = tmp_path / "c.json"
    j.write_text('{"scenarios": [{"name": "digits"}], "budgets": [NaN], "defenses": {}}')
    with pytest.raises(BenchConfigError, match=r"budgets\[0\]: expected a finite number"):
        load_config(j)


def test_parameter_names_must_be_strings() -> None:
    assert "parameter names must be strings" in error_of(cfg(defenses={"mad": [{1: 0.5}]}))
    assert "parameter names must be strings" in error_of(cfg(defenses={"mad": {1: [0.5]}}))


def test_seeds_and_budgets_are_bounded() -> None:
    assert "seeds[0]" in error_of(cfg(seeds=[2**40]))
    assert "budgets[0]" in error_of(cfg(budgets=[10**12]))


def test_a_file_pool_is_checked_at_load(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    msg = error_of(cfg(scenarios=[{"name": "digits", "pool": f"file:{missing}"}]))
    assert "scenarios[0].pool" in msg and str(missing) in msg and "no such file" in msg
    (tmp_path / "empty").mkdir()
    msg = error_of(cfg(scenarios=[{"name": "digits", "pool": f"file:{tmp_path / 'empty'}"}]))
    assert "holds no files" in msg
    assert "needs a path" in error_of(cfg(scenarios=[{"name": "digits", "pool": "file:"}]))
    (tmp_path / "pool.npz").write_bytes(b"x")
    parse_config(cfg(scenarios=[{"name": "digits", "pool": f"file:{tmp_path / 'pool.npz'}"}]))


def test_mixture_and_file_dataset_pools_are_checked_at_load() -> None:
    parse_config(cfg(scenarios=[{"name": "digits", "pool": "shapes+noise"}]))
    parse_config(cfg(scenarios=[{"name": "digits", "pool": "kmnist"}]))  # read at run time
    msg = error_of(cfg(scenarios=[{"name": "digits", "pool": "shapes+nois"}]))
    assert "scenarios[0].pool" in msg and "unknown pool 'nois'" in msg
    assert "joined by '+'" in error_of(cfg(scenarios=[{"name": "digits", "pool": "noise+noise"}]))
    ini = {"training": "ini", "ood": "shapes+noise+digits28"}
    parse_config(cfg(victims=[{}, ini]))
    assert "victims[1].ood" in error_of(cfg(victims=[{}, {**ini, "ood": "shapes+x"}]))


# ------------------------------------------------------------------ file datasets (#12)


def _file_scenario(dataset: str, pool: str) -> dict[str, Any]:
    return cfg(scenarios=[{"dataset": dataset, "model": "mlp", "pool": pool}])


def test_file_dataset_and_its_held_back_pool_are_accepted(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "d.npz"
    x = np.zeros((40, 8, 8), np.uint8)
    y = np.arange(40) % 4
    np.savez(path, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    config = parse_config(_file_scenario(f"file:{path}", f"file:{path}-unlabeled"))
    cells = expand(config)
    assert {c.spec.dataset for c in cells} == {f"file:{path}"}
    # a scenario without a name takes its dataset's defaults, as every other entry point does
    assert cells[0].spec.clone_training == scenario_for(f"file:{path}").clone_training


def test_missing_file_dataset_and_unknown_names_are_refused_with_real_suggestions(
    tmp_path: Path,
) -> None:
    msg = error_of(_file_scenario(f"file:{tmp_path}/nope.npz", "noise"))
    assert "scenarios[0].dataset" in msg and "no such file or directory" in msg
    msg = error_of(_file_scenario("mnist5", "noise"))
    assert "did you mean mnist5k" in msg and msg.count("file:PATH") == 1  # not a suggestion
    msg = error_of(_file_scenario("digits", "foo-unlabeled"))
    assert "scenarios[0].pool" in msg and "<dataset>-unlabeled or file:PATH" in msg
    assert msg.count("<dataset>-unlabeled") == 1 and msg.count("file:PATH") == 1
