"""The worst case over thieves: who is strongest per setting, the interpolated curve, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from stealproof import metrics
from stealproof.bench.report import render_markdown, worst_case_groups, write_outputs
from stealproof.bench.worst_case import strongest_within, worst_curves, worst_points


def row(attack: str, defense: str, params: dict[str, Any], seed: int, **v: Any) -> dict[str, Any]:
    policy = {"knockoff": "random"}.get(attack)
    base: dict[str, Any] = {
        "scenario": "s",
        "dataset": "digits",
        "model": "mlp",
        "pool": "mnist8",
        "attack": attack,
        "attack_params": {"policy": policy} if policy else {},
        "defense": defense,
        "params": params,
        "seed": seed,
        "budget": 100,
        "victim_acc": 0.95,
        "defender_acc": 0.95,
        "l1_queries": 0.0,
        "kl_queries": 0.0,
        "clone_acc": 0.8,
        "clone_fidelity": 0.8,
        "label_only_clone_acc": None,
        "wall_time": 1.0,
        "host": "h",
        "version": "0",
        "config_hash": f"{attack}-{defense}-{json.dumps(params)}-{seed}",
    }
    base.update(v)
    return base


def grid() -> list[dict[str, Any]]:
    """Two thieves × two seeds: KnockoffNets (soft and label-only) and JBDA.

    Undefended: knockoff 0.90 (label-only 0.85), jbda 0.70. MAD at eps 0.5 / 1.0 hurts the soft
    knockoff clone (0.60 / 0.40) but not its label-only twin (0.85 / 0.84), and costs the
    defender 1 / 3 points; JBDA gets 0.65 / 0.50 (seed means).
    """
    rows = []
    for seed in (0, 1):
        rows += [
            row("knockoff", "none", {}, seed, clone_acc=0.90, label_only_clone_acc=0.85),
            row("jbda", "none", {}, seed, clone_acc=0.70),
            row("knockoff", "mad", {"eps": 0.5}, seed, defender_acc=0.94,
                clone_acc=0.60, label_only_clone_acc=0.85),
            row("jbda", "mad", {"eps": 0.5}, seed, defender_acc=0.94, clone_acc=0.60 + 0.1 * seed),
            row("knockoff", "mad", {"eps": 1.0}, seed, defender_acc=0.92,
                clone_acc=0.40, label_only_clone_acc=0.84 - 0.02 * seed),
            row("jbda", "mad", {"eps": 1.0}, seed, defender_acc=0.92, clone_acc=0.50),
        ]  # fmt: skip
    return rows


def test_the_strongest_thief_per_setting_from_seed_means() -> None:
    points = worst_points(grid())
    none = points[("none", "{}")]
    assert none.thief == "knockoff-random" and none.clone_acc == pytest.approx(0.90)
    assert dict(none.per_thief) == pytest.approx(
        {"knockoff-random": 0.90, "knockoff-random (label-only)": 0.85, "jbda": 0.70}
    )
    weak = points[("mad", '{"eps":0.5}')]
    assert weak.thief == "knockoff-random (label-only)" and weak.clone_acc == pytest.approx(0.85)
    assert weak.per_thief["jbda"] == pytest.approx(0.65)  # the mean of 0.60 and 0.70
    strong = points[("mad", '{"eps":1.0}')]
    assert strong.clone_acc == pytest.approx(0.83) and strong.defender_acc == pytest.approx(0.92)


def test_worst_case_curve_interpolates_from_the_undefended_worst_case() -> None:
    base, curves = worst_curves(grid(), (1.0, 2.0, 5.0))
    assert base is not None and [c.defense for c in curves] == ["mad"]
    (mad,) = curves
    # by hand: defender error +0 / +1 / +3 points, worst-case thief error 10 / 15 / 17 %
    expected = metrics.thief_error_at_defender_cost([0.95, 0.94, 0.92], [0.90, 0.85, 0.83], 0.95)
    assert mad.errors["+1 pt"] == pytest.approx(15.0) == pytest.approx(expected[1.0])
    assert mad.errors["+2 pt"] == pytest.approx(16.0)
    assert math.isnan(mad.errors["+5 pt"])  # the sweep stops at +3 points
    best = strongest_within(mad, base.defender_acc, 5.0)
    assert best is not None and dict(best.params) == {"eps": 1.0}
    assert strongest_within(mad, base.defender_acc, 0.5) is None


def test_a_soft_only_view_would_overstate_the_defense() -> None:
    """The point of the worst case: MAD cuts the soft clone by 50 points, the worst case by 7."""
    points = worst_points(grid())
    strong = points[("mad", '{"eps":1.0}')]
    assert strong.per_thief["knockoff-random"] == pytest.approx(0.40)
    assert 100 * (points[("none", "{}")].clone_acc - strong.clone_acc) == pytest.approx(7.0)


def test_report_has_the_worst_case_table_and_plot(tmp_path: Path) -> None:
    rows = grid()
    text = render_markdown(rows)
    section = text.split("### Worst case over 3 thieves, 100 queries", 1)[1].split("\n### ", 1)[0]
    assert "Thieves: jbda, knockoff-random, knockoff-random (label-only)." in section
    table = [line for line in section.splitlines() if line.startswith("| `")]
    assert table[0].split(" | ")[-3:] == ["95.0%", "90.0%", "knockoff-random |"]
    mad = table[1].split(" | ")
    assert mad[3:6] == ["15.0", "16.0", "–"]
    assert mad[6:] == ["eps=1.0", "92.0%", "83.0%", "knockoff-random (label-only) |"]
    assert "![worst case: s, 100 queries](worstcase_s.png)" in section
    # the per-attack tables stay
    assert "### knockoff-random, 100 queries" in text and "### jbda, 100 queries" in text
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = write_outputs(run)
    assert run / "worstcase_s.png" in out.plots and (run / "worstcase_s.png").stat().st_size > 0


def test_one_thief_gives_no_worst_case_section() -> None:
    rows = [r for r in grid() if r["attack"] == "jbda"]
    assert worst_case_groups(rows) == []
    assert "Worst case" not in render_markdown(rows)
