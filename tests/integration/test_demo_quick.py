"""``stealproof demo --quick`` end to end: every defense gets a row, files are written."""

from __future__ import annotations

import json
from pathlib import Path

from stealproof import defenses
from stealproof.demo import demo_defenses, run_demo, write_demo_outputs

FIELDS = {
    "defense",
    "params",
    "defender_acc",
    "l1_mean",
    "clone_acc",
    "clone_fidelity",
    "label_only_clone_acc",
}


def test_quick_demo_writes_results(tmp_path: Path) -> None:
    report = run_demo(quick=True, budget=1000, seed=0)
    results, png = write_demo_outputs(report, tmp_path)
    rows = json.loads(results.read_text())
    assert rows[0]["defense"] == "none"
    assert sorted(r["defense"] for r in rows) == sorted(demo_defenses())
    # every registered defense except the response-only one (a policy's answer to flagged rows)
    # and the ownership watermark
    assert set(defenses.available()) - set(demo_defenses()) == {
        "deceptive",
        "label_watermark",
        "watermark",
    }
    for r in rows:
        assert set(r) == FIELDS
        for key in ("defender_acc", "clone_acc", "clone_fidelity", "label_only_clone_acc"):
            assert 0.0 <= r[key] <= 1.0
        assert 0.0 <= r["l1_mean"] <= 2.0
    by_name = {r["defense"]: r for r in rows}
    assert by_name["none"]["l1_mean"] == 0.0
    assert by_name["none"]["defender_acc"] == report.victim_acc
    # top-1-preserving defenses keep the defender's accuracy exactly
    for name in ("top1", "topk", "rounding"):
        assert by_name[name]["defender_acc"] == report.victim_acc
    # a label-only thief sees the same labels behind none/top1/topk/rounding
    assert len({by_name[n]["label_only_clone_acc"] for n in ("none", "top1", "rounding")}) == 1
    assert png.stat().st_size > 10_000
