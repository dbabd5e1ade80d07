"""Bench result store (durable JSON lines), and the report's numbers from rows.

Cache keys and stamps are tested in ``test_bench_reliability.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stealproof import defenses
from stealproof.bench.cache import builds_models, defense_key
from stealproof.bench.curves import knob_order, knob_paths
from stealproof.bench.report import (
    group_rows,
    render_markdown,
    setting_means,
    strongest_setting,
    thief_errors,
)
from stealproof.bench.store import (
    ROW_FIELDS,
    ResultsFileError,
    ResultStore,
    stable_view,
    write_csv,
)
from stealproof.cli import app


def row(defense: str, params: dict[str, Any], seed: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": "s",
        "dataset": "digits",
        "model": "mlp",
        "pool": "mnist8",
        "attack": "knockoff",
        "attack_params": {"policy": "random"},
        "defense": defense,
        "params": params,
        "seed": seed,
        "budget": 100,
        "victim_acc": 0.9,
        "defender_acc": 0.9,
        "l1_queries": 0.0,
        "kl_queries": 0.0,
        "clone_acc": 0.8,
        "clone_fidelity": 0.8,
        "label_only_clone_acc": 0.7,
        "wall_time": 1.0,
        "host": "h",
        "version": "0",
        "config_hash": f"{defense}-{json.dumps(params, sort_keys=True)}-{seed}",
    }
    base.update(values)
    return base


# ----------------------------------------------------------------------------- store


def test_store_appends_reads_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "run").open()
    store.append(row("none", {}, 0))
    store.append(row("mad", {"eps": 0.5}, 0))
    with store.path.open("a") as f:  # a run killed in the middle of writing a row
        f.write('{"config_hash": "torn", "defense": "m')
    assert [r["defense"] for r in store.rows()] == ["none", "mad"]
    assert "torn" not in store.finished()
    ResultStore(tmp_path / "run").open()  # a re-run repairs the file before appending
    store.append(row("mad", {"eps": 0.8}, 0))
    lines = store.path.read_text().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["config_hash"] for line in lines)
    assert len(store.finished()) == 3


def test_the_last_row_of_a_cell_supersedes_earlier_ones(tmp_path: Path) -> None:
    # a --rerun-stale re-run appends a new row for a cell; the file keeps both, readers see
    # the new one, at the position of the cell's first row
    store = ResultStore(tmp_path).open()
    store.append(row("none", {}, 0, clone_acc=0.5, version="0.0.1"))
    store.append(row("mad", {"eps": 0.5}, 0))
    store.append(row("none", {}, 0, clone_acc=0.6, version="0.1.0"))
    assert [(r["defense"], r["clone_acc"]) for r in store.rows()] == [("none", 0.6), ("mad", 0.8)]
    assert len(store.path.read_text().splitlines()) == 3


def test_stable_view_drops_only_timing_and_host() -> None:
    r = row("none", {}, 0)
    view = stable_view(r)
    assert set(r) - set(view) == {"wall_time", "host"}


def test_csv_has_known_columns_first_and_json_for_dicts(tmp_path: Path) -> None:
    path = write_csv([row("mad", {"eps": 0.5}, 1, extra_field=3)], tmp_path / "r.csv")
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames is not None
        assert list(reader.fieldnames[: len(ROW_FIELDS)]) == list(ROW_FIELDS)
        assert reader.fieldnames[-1] == "extra_field"
    assert json.loads(rows[0]["params"]) == {"eps": 0.5}
    assert rows[0]["seed"] == "1"


# ----------------------------------------------------------------------------- cache keys


def test_defense_models_are_shared_across_the_knob_not_the_seed() -> None:
    mad = defenses.get_defense_class("mad")
    am = defenses.get_defense_class("am")
    assert builds_models(mad) and builds_models(am)
    assert not builds_models(defenses.get_defense_class("reverse_sigmoid"))

    def key(vkey: str, cls: Any, cfg: dict[str, Any]) -> str:
        return defense_key(vkey, cls, cfg, query="q", seed=0)

    k = key("v", mad, {"eps": 0.5, "seed": 0})
    assert k == key("v", mad, {"eps": 0.9, "seed": 0})
    assert k != key("v", mad, {"eps": 0.5, "seed": 1})
    assert k != key("w", mad, {"eps": 0.5, "seed": 0})
    assert key("v", am, {"tau": 0.5, "epochs": 8}) == key("v", am, {"tau": 0.9, "epochs": 8})
    assert key("v", am, {"tau": 0.5, "epochs": 8}) != key("v", am, {"tau": 0.5, "epochs": 9})


# ----------------------------------------------------------------------------- report


def sweep_rows() -> list[dict[str, Any]]:
    rows = []
    for seed in (0, 1):
        rows.append(row("none", {}, seed, defender_acc=0.9, clone_acc=0.8, l1_queries=0.0))
        rows.append(row("x", {"eps": 0.5}, seed, defender_acc=0.85, clone_acc=0.4, l1_queries=0.6))
        rows.append(row("x", {"eps": 0.1}, seed, defender_acc=0.89, clone_acc=0.6, l1_queries=0.2))
    return rows


def test_thief_error_interpolates_each_sweep_from_the_undefended_point() -> None:
    (g,) = group_rows(sweep_rows())
    errs = thief_errors(g, "x", "clone_acc")
    # defender error +0/+1/+5 points -> thief error 20/40/60 %
    assert errs["+1 pt"] == pytest.approx(40.0)
    assert errs["+2 pt"] == pytest.approx(45.0)
    assert errs["+5 pt"] == pytest.approx(60.0)
    # L1 0/0.2/0.6 -> 20/40/60 %
    assert errs["L1 0.1"] == pytest.approx(30.0)
    assert errs["L1 0.5"] == pytest.approx(55.0)
    assert all(math.isnan(v) for v in thief_errors(g, "none", "clone_acc").values())


def test_settings_are_ordered_by_the_knob_and_averaged_over_seeds() -> None:
    rows = sweep_rows()
    rows[1]["clone_acc"] = 0.2  # seed 0, eps 0.5
    (g,) = group_rows(rows)
    means = setting_means(g, "x")
    assert [m.params["eps"] for m in means] == [0.1, 0.5]
    assert means[1].clone_acc == pytest.approx(0.3)
    assert means[1].seeds == 2
    assert knob_order([{"k": 5, "g": 1}, {"k": 2, "g": 1}]) == [{"k": 2, "g": 1}, {"k": 5, "g": 1}]


def test_markdown_report_has_the_table_and_dashes_for_out_of_range() -> None:
    text = render_markdown(sweep_rows())
    assert "## s (mlp on digits, pool mnist8)" in text
    assert "### knockoff-random, 100 queries" in text
    line = "| `x` | eps | 2 | 40.0 | 45.0 | 60.0 | 30.0 | 40.0 | 55.0 | eps=0.5 | 40.0% | 70.0% |"
    assert line in text
    assert "| `none` | – | 1 | – | – | – |" in text
    assert "tradeoff_s_knockoff-random.png" in text
    assert "Label-only thief" in text


# ----------------------------------------------------------------------------- issue 11 #8


def _strict_loads(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_rows_are_strict_json_with_null_for_non_finite_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(tmp_path).open()
    bad = row("mad", {"eps": 0.5}, 0, kl_queries=math.inf, l1_test=math.nan)
    bad["defense_config"] = {"eps": 0.5, "extra": [1.0, -math.inf]}
    with caplog.at_level(logging.WARNING, logger="stealproof.bench.store"):
        store.append(bad)
    assert "kl_queries" in caplog.text and "l1_test" in caplog.text
    (line,) = store.path.read_text().splitlines()
    data = _strict_loads(line)
    assert data["kl_queries"] is None and data["l1_test"] is None
    assert data["defense_config"]["extra"] == [1.0, None]
    assert data["clone_acc"] == 0.8
    # rows written by older versions with NaN are read back as null as well
    with store.path.open("a") as f:
        f.write(json.dumps(row("none", {}, 0, kl_queries=math.nan)) + "\n")
    assert store.rows()[1]["kl_queries"] is None
    text = render_markdown(store.rows())
    assert "nan" not in text.lower()


@pytest.mark.parametrize(
    ("bad_line", "why"),
    [
        ("garbage\n", "not JSON"),
        ("[1, 2]\n", "a JSON list"),
        ('{"hello": "world"}\n', "missing config_hash"),
        (json.dumps({**row("none", {}, 0), "seed": "zero"}) + "\n", "seed: expected int"),
        (json.dumps({**row("none", {}, 0), "clone_acc": "high"}) + "\n", "clone_acc"),
    ],
)
def test_a_line_that_is_not_a_row_is_refused_naming_it(
    tmp_path: Path, bad_line: str, why: str
) -> None:
    store = ResultStore(tmp_path).open()
    store.append(row("none", {}, 0))
    with store.path.open("a") as f:
        f.write(bad_line)
    store.append(row("mad", {"eps": 0.5}, 0))
    with pytest.raises(ResultsFileError) as info:
        store.rows()
    msg = str(info.value)
    assert "line 2 is not a result row" in msg and why in msg and "delete or fix" in msg
    assert "\n" not in msg
    with pytest.raises(ResultsFileError):
        ResultStore(tmp_path).open().finished()  # a re-run refuses too, before any work
    assert len(store.path.read_text().splitlines()) == 3  # nothing dropped


def test_a_torn_last_line_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(tmp_path).open()
    store.append(row("none", {}, 0))
    with store.path.open("a") as f:
        f.write('{"config_hash": "to')
    with caplog.at_level(logging.WARNING, logger="stealproof.bench.store"):
        assert len(store.rows()) == 1
    assert "line 2 is incomplete" in caplog.text


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "holds no result rows"),
        (b"\n\n", "holds no result rows"),
        (b"this is not a bench file\n", "line 1 is not a result row"),
        (b'{"a": 1}\n{"b": 2}\n', "line 1 is not a result row"),
        (b"\xff\xfe\x00garbage\n", "invalid UTF-8"),
    ],
)
def test_bench_report_on_a_file_without_rows_exits_2(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    (tmp_path / "results.jsonl").write_bytes(content)
    result = CliRunner().invoke(app, ["bench", "report", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "results.csv").exists()


# ----------------------------------------------------------------------------- issue 11 #14


def grad2_rows() -> list[dict[str, Any]]:
    """Two knob paths of one defense: target all_ones (costly) and min_ip (free, weaker)."""

    def g(eps: float, defender: float, clone: float, **extra: Any) -> dict[str, Any]:
        params = {"eps": eps, **extra}
        r = row("g", params, 0, defender_acc=defender, clone_acc=clone, l1_queries=eps / 2)
        r["defense_config"] = {
            "eps": eps,
            "target": extra.get("target", "all_ones"),
            "preserve_argmax": extra.get("preserve_argmax", False),
            "seed": 0,
        }
        return r

    return [
        row("none", {}, 0, defender_acc=0.9, clone_acc=0.8),
        g(0.5, 0.88, 0.5),
        g(0.9, 0.85, 0.3),
        g(1.0, 0.9, 0.7, target="min_ip", preserve_argmax=True),
        g(2.0, 0.9, 0.6, target="min_ip", preserve_argmax=True),
    ]


def test_each_knob_path_is_its_own_curve() -> None:
    rows = grad2_rows()
    (group,) = group_rows(rows)
    curves = knob_paths(rows, "g")
    assert [c.knob for c in curves] == ["eps", "eps"]
    assert [dict(c.fixed) for c in curves] == [
        {"target": "all_ones", "preserve_argmax": False},
        {"target": "min_ip", "preserve_argmax": True},
    ]
    assert [[s["eps"] for s in c.settings] for c in curves] == [[0.5, 0.9], [1.0, 2.0]]
    ones, min_ip = curves
    # all_ones alone: (0, 20), (2, 50), (5, 70) -> 35 at +1 pt; mixing in min_ip's free points
    # (0, 30), (0, 40) would move the x = 0 end to 30 and give 40
    errs = thief_errors(group, "g", "clone_acc", ones)
    assert errs["+1 pt"] == pytest.approx(35.0)
    assert errs["+5 pt"] == pytest.approx(70.0)
    assert math.isnan(thief_errors(group, "g", "clone_acc", min_ip)["+1 pt"])
    with pytest.raises(ValueError, match="knob paths"):
        thief_errors(group, "g", "clone_acc")
    text = render_markdown(rows)
    assert "| `g` | eps (target=all_ones, preserve_argmax=False) | 2 | 35.0 |" in text
    assert "| `g` | eps (target=min_ip, preserve_argmax=True) | 2 | – |" in text


def test_strongest_setting_stays_within_the_stated_cost() -> None:
    rows = [row("none", {}, 0, defender_acc=0.977, clone_acc=0.8)]
    for eps, defender, clone, l1 in [
        (0.8, 0.97, 0.6, 0.4),
        (0.9, 0.95, 0.5, 0.6),
        (1.0, 0.008, 0.1, 1.5),
        (1.2, 0.0, 0.05, 1.9),  # the largest distortion, at 0 % defender accuracy
    ]:
        rows.append(
            row("mad", {"eps": eps}, 0, defender_acc=defender, clone_acc=clone, l1_queries=l1)
        )
    (group,) = group_rows(rows)
    (curve,) = knob_paths(rows, "mad")
    best = strongest_setting(group, curve, 5.0)
    assert best is not None and best.params == {"eps": 0.9}
    best = strongest_setting(group, curve, 1.0)
    assert best is not None and best.params == {"eps": 0.8}
    assert strongest_setting(group, curve, 0.1) is None
    text = render_markdown(rows)
    assert "strongest within +5 pt" in text
    assert "| eps=0.9 | 50.0% |" in text and "eps=1.2 | 5.0%" not in text
