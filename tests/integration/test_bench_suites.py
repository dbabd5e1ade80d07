"""The built-in bench suites: each validates through the config loader, ``smoke`` runs end to
end through the CLI (in the default test run, ~20 s on one core), and the suites' sweeps stay on
the useful side of MAD's accuracy cliff."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stealproof import defenses
from stealproof.bench.config import BenchConfig, expand, load_config
from stealproof.bench.store import ResultStore
from stealproof.bench.suites import SUITES
from stealproof.cli import app


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_built_in_suite_validates(name: str) -> None:
    config = load_config(name)
    assert isinstance(config, BenchConfig) and config.name == name
    cells = expand(config)
    if name in ("smoke", "mnist5k"):  # the defense suites hold every registered defense
        assert {c.defense for c in cells} == set(defenses.available())
    assert len({c.cell_hash() for c in cells}) == len(cells)


def test_every_defense_demo_setting_validates() -> None:
    for name in defenses.available():
        cls = defenses.get_defense_class(name)
        cls.make_config()  # the defaults
        cls.make_config(**cls.demo_params)


def test_mnist5k_mad_sweep_stays_below_the_l1_cliff() -> None:
    # issue 11 #15: with L1, eps >= 1 lets MAD's vertex overtake every confident top-1
    # (defender accuracy 97.7% -> 0.8% -> 0.0% at eps 0.9 / 1.0 / 1.2)
    for suite in SUITES:
        mad = [c for c in expand(load_config(suite)) if c.defense == "mad"]
        assert mad, suite
        for c in mad:
            assert c.defense_config["norm"] == "l1", (suite, c.defense_config)
            assert c.defense_config["eps"] < 1.0, (suite, c.params)
    eps = {c.params["eps"] for c in expand(load_config("mnist5k")) if c.defense == "mad"}
    assert len(eps) >= 3  # still a sweep


def test_smoke_full_holds_every_thief_and_every_kind_of_defense() -> None:
    cells = expand(load_config("smoke-full"))
    assert {c.attack for c in cells} == {"knockoff", "jbda", "jb-top3", "dfme"}
    pools = {c.attack_params.get("pool") for c in cells if c.attack == "knockoff"}
    assert pools == {"mnist8", "digits-unlabeled"}  # another source, and in-distribution
    assert {lo for c in cells for lo in c.label_only} == {False, True}
    assert {(c.victim or {}).get("training", "plain") for c in cells} == {"plain", "ini"}
    assert {(c.policy or {}).get("label") for c in cells} == {
        None,
        "prada(max_flagged=40)",
        "guardian(max_flagged=100)",
    }
    assert {"none", "reverse_sigmoid", "mad", "am"} == {c.defense for c in cells}


def test_limit_runs_the_first_cells_and_says_how_many_are_left(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    cells = len(expand(load_config("smoke")))
    first = CliRunner().invoke(app, ["bench", "run", "smoke", "--out", str(out), "--limit", "2"])
    assert first.exit_code == 0, first.output
    assert f"running 2 of the {cells} left (--limit)" in first.stderr
    assert "ran 2 cells" in first.stdout and f"{cells - 2} cells left" in first.stdout
    assert len(ResultStore(out).rows()) == 2
    again = CliRunner().invoke(
        app, ["bench", "run", "smoke", "--out", str(out), "--limit", "1", "--json", "--quiet"]
    )
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["skipped"], summary["ran"], summary["left"]) == (2, 1, cells - 3)
    bad = CliRunner().invoke(app, ["bench", "run", "smoke", "--out", str(out), "--limit", "0"])
    assert bad.exit_code == 2 and "--limit" in bad.output


def test_smoke_suite_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    start = time.perf_counter()
    result = CliRunner().invoke(
        app, ["bench", "run", "smoke", "--out", str(out), "--threads", "1", "--quiet", "--json"]
    )
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    cells = len(expand(load_config("smoke")))
    assert summary["cells"] == summary["ran"] == cells
    rows = ResultStore(out).rows()
    assert sorted(r["defense"] for r in rows) == sorted(defenses.available())
    for r in rows:
        assert r["queries_used"] == r["budget"] == 1000
        assert 0.0 <= r["clone_acc"] <= 1.0 and 0.0 <= r["label_only_clone_acc"] <= 1.0
    for name in ("results.csv", "report.md", "tradeoff_digits_knockoff-random.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no temporary file left
    assert seconds < 120, seconds  # ~20 s on one idle core; the bound only catches a blow-up
