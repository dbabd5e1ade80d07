"""A digits grid with every attack family and the counter-moves: rows, budgets, worst case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from stealproof.bench.store import ResultStore
from stealproof.cli import app

GRID: dict[str, Any] = {
    "name": "axes",
    "scenarios": [
        {"name": "digits", "victim_training": {"epochs": 5}, "clone_training": {"epochs": 5}}
    ],
    "attacks": {
        "knockoff": {"average": [1, 2], "clone_model": ["same", "lenet"]},
        "jbda": {"label_only": [False, True], "rounds": [1]},
        "jb-self": {"rounds": [1]},
        "jb-top3": {"rounds": [1]},
        "dfme": {"batch_size": 16},
        "maze": {"batch_size": 4},
        "dast": {"batch_size": 16},
    },
    "defenses": {"none": [{}], "top1": [{}]},
    "budgets": [300],
    "seeds": [0],
}


def test_every_attack_family_runs_in_the_grid(tmp_path: Path) -> None:
    config = tmp_path / "axes.yaml"
    config.write_text(yaml.safe_dump(GRID, sort_keys=False))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = ResultStore(out).rows()
    assert len(rows) == 11 * 2
    by = {(r["attack"], tuple(sorted(r["attack_params"].items())), r["defense"]): r for r in rows}
    for r in rows:
        assert 0 < r["queries_used"] <= 300, r
        assert r["pool"] == {
            "knockoff": "mnist8", "jbda": "digits-unlabeled", "jb-self": "digits-unlabeled",
            "jb-top3": "digits-unlabeled"}.get(r["attack"], "none (data-free)")  # fmt: skip
    jbda = [r for r in rows if r["attack"] == "jbda" and r["defense"] == "none"]
    assert sorted((r["clone_acc"] is None, r["label_only_clone_acc"] is None) for r in jbda) == [
        (False, True),
        (True, False),
    ]
    for r in rows:
        if r["attack"] == "knockoff":  # both clones from one transfer set
            assert r["clone_acc"] is not None and r["label_only_clone_acc"] is not None
    # averaging: 2 copies per answered row, so an even count of rows charged to the victim
    avg = [r for r in rows if r["attack_params"].get("average") == 2]
    assert len(avg) == 4 and all(r["queries_used"] % 2 == 0 for r in avg)
    # a top-1 defense's soft clone sees one-hot answers: the same as label-only
    ko = by[("knockoff", (("augment", True), ("policy", "random"), ("query_batch", 128)), "top1")]
    assert ko["clone_acc"] == ko["label_only_clone_acc"]
    report = (out / "report.md").read_text()
    assert "### Worst case over 15 thieves, 300 queries" in report
    assert (out / "worstcase_digits.png").is_file()


def test_victims_axis_ini_and_a_users_checkpoint(tmp_path: Path) -> None:
    from stealproof.data import load_dataset
    from stealproof.experiment import SCENARIOS, train_victim
    from stealproof.models import save_checkpoint

    ds = load_dataset("digits")
    training = SCENARIOS["digits"].victim_training.model_copy(update={"epochs": 3})
    mine, acc = train_victim(ds, "lenet", training, seed=3)
    save_checkpoint(mine, tmp_path / "mine.pt", {"test_acc": acc})
    grid = {
        "name": "victims",
        "scenarios": [
            {"name": "digits", "victim_training": {"epochs": 3}, "clone_training": {"epochs": 3}}
        ],
        "attacks": {"knockoff": {}},
        "victims": [
            {},
            {"training": "ini", "ini": {"epochs": 2}},
            {"checkpoint": str(tmp_path / "mine.pt"), "label": "mine"},
        ],
        "defenses": {"none": [{}], "top1": [{}]},
        "budgets": [200],
        "seeds": [0, 1],
    }
    config = tmp_path / "victims.yaml"
    config.write_text(yaml.safe_dump(grid, sort_keys=False))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = ResultStore(out).rows()
    assert len(rows) == 3 * 2 * 2
    # plain victims per seed, InI victims per seed, the checkpoint once (it has no seed)
    assert len(list((out / "cache" / "victims").glob("*.pt"))) == 2 + 2 + 1
    ini = [r for r in rows if r.get("victim") == "ini(epochs=2)"]
    assert len(ini) == 4 and all(r["scenario"] == "digits" for r in ini)
    mine_rows = [r for r in rows if r["scenario"] == "digits/mine"]
    assert len(mine_rows) == 4 and all("victim" not in r for r in mine_rows)
    assert all(r["victim_acc"] == pytest.approx(acc) for r in mine_rows)
    assert all(r["model"] == "lenet" for r in mine_rows)
    report = (out / "report.md").read_text()
    assert "## digits/mine (lenet on digits" in report
    worst = report.split("### Worst case", 1)[1].split("\n### ", 1)[0]
    assert "| `ini(epochs=2)` |" in worst and "| `ini(epochs=2)+top1` |" in worst


def test_a_checkpoint_for_other_images_is_refused_before_any_cell(tmp_path: Path) -> None:
    from stealproof.models import create_model, save_checkpoint

    save_checkpoint(create_model("lenet", image_size=(28, 28)), tmp_path / "big.pt", {})
    grid = {
        "scenarios": [{"name": "digits"}],
        "victims": [{"checkpoint": str(tmp_path / "big.pt")}],
        "defenses": {"none": [{}]},
        "budgets": [100],
    }
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(grid))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(out)])
    assert result.exit_code != 0
    assert "takes images (1, 28, 28), the dataset has (1, 8, 8)" in result.output
    assert not (out / "results.jsonl").exists() or ResultStore(out).rows() == []


def test_policy_cells_stop_the_thief_and_score_the_benign_client_through_the_policy(
    tmp_path: Path,
) -> None:
    grid = {
        "name": "policies",
        "scenarios": [
            {"name": "digits", "victim_training": {"epochs": 5}, "clone_training": {"epochs": 3}}
        ],
        "attacks": {"jbda": {"rounds": [3]}},
        "policies": [
            None,
            {"max_flagged": 40, "label": "prada-auto"},
            # δ = 1: every tested window is flagged, so the benign client is blocked too
            {"prada": {"delta": 1.0}, "max_flagged": 50, "label": "prada-strict"},
        ],
        "defenses": {"none": [{}]},
        "budgets": [600],
        "seeds": [0],
    }
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(grid, sort_keys=False))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r.get("policy"): r for r in ResultStore(out).rows()}
    free, auto, strict = rows[None], rows["prada-auto"], rows["prada-strict"]
    assert free["queries_used"] == 600 and "thief_blocked_at" not in free
    # the JBDA thief is caught by the calibrated policy: it stops at the block (the batch that
    # crossed the threshold is still answered) and keeps the clone it had
    assert auto["thief_blocked_at"] is not None
    assert auto["thief_blocked_at"] <= auto["queries_used"] < 600
    assert auto["queries_used"] - auto["thief_blocked_at"] < 128  # one query batch at most
    assert auto["clone_acc"] is not None
    # the benign client streams the test set through the same calibrated policy: no false
    # flags, so its accuracy is the undefended one
    assert 0 < auto["prada_delta"] < 1
    assert auto["benign_blocked_at"] is None and auto["benign_flagged_rows"] == 0
    assert auto["defender_acc"] == free["defender_acc"] == auto["defender_acc_unpoliced"]
    # a policy that flags everyone blocks the benign client too: refused rows count as wrong
    assert strict["benign_blocked_at"] is not None and strict["benign_flagged_rows"] >= 50
    from stealproof.data import load_dataset

    n_test = len(load_dataset("digits").test.labels)
    answered = strict["benign_blocked_at"] + 10  # the crossing call (10 rows) is answered
    assert strict["defender_acc"] <= answered / n_test
    assert strict["defender_acc"] < strict["defender_acc_unpoliced"] - 0.1
    report = (out / "report.md").read_text()
    table = report.split("### jbda rounds=3, 600 queries", 1)[1]
    assert "| `prada-auto` |" in table and "| `prada-strict` |" in table


@pytest.mark.slow
def test_model_guardian_policy_cells(tmp_path: Path) -> None:
    """A Model-Guardian policy: its detector is trained once per victim and cached; it stops a
    data-free thief (what it was built for) and lets the benign client through."""
    grid = {
        "name": "guardian",
        "scenarios": [
            {"name": "digits", "victim_training": {"epochs": 5}, "clone_training": {"epochs": 3}}
        ],
        "attacks": {"dfme": {"batch_size": 64}, "knockoff": {"label_only": [False]}},
        "policies": [{"detectors": ["guardian"], "max_flagged": 100, "label": "guardian"}],
        "defenses": {"none": [{}], "top1": [{}]},
        "budgets": [2000],
        "seeds": [0],
    }
    config = tmp_path / "guardian.yaml"
    config.write_text(yaml.safe_dump(grid, sort_keys=False))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list((out / "cache" / "guardians").glob("*.pt"))) == 1  # one victim, one bundle
    rows = ResultStore(out).rows()
    assert len(rows) == 4 and all(r["policy"] == "guardian" for r in rows)
    for r in rows:
        if r["attack"] == "dfme":  # generator images are what the guardian flags
            assert r["thief_blocked_at"] is not None and r["queries_used"] < 2000, r
        assert r["benign_blocked_at"] is None, r  # the defender's own test images pass
        assert r["defender_acc"] == pytest.approx(r["defender_acc_unpoliced"], abs=0.03)
    # a re-run finds the bundle in the cache (and every row done)
    again = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(out)])
    assert again.exit_code == 0 and "skipping 4 finished cells" in again.output


@pytest.mark.slow
def test_new_axes_give_the_same_rows_on_ray_and_resume(tmp_path: Path) -> None:
    """Victims, policies and counter-moves: Ray rows equal serial rows, and a run cut short
    (``--limit``) resumes to the same rows."""
    from stealproof.bench.config import load_config
    from stealproof.bench.runner import execute, plan_run
    from stealproof.bench.store import stable_view

    ray = pytest.importorskip("ray", reason="ray is not installed (CI installs it)")
    grid = {
        "name": "ray-axes",
        "scenarios": [
            {"name": "digits", "victim_training": {"epochs": 3}, "clone_training": {"epochs": 3}}
        ],
        "attacks": {"jbda": {"rounds": [2]}, "knockoff": {"average": [1, 2]}},
        "victims": [{}, {"training": "ini", "ini": {"epochs": 2}}],
        "policies": [None, {"max_flagged": 40}],
        "defenses": {"none": [{}]},
        "budgets": [400],
    }
    config = tmp_path / "axes.yaml"
    config.write_text(yaml.safe_dump(grid, sort_keys=False))
    serial = tmp_path / "serial"
    first = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(serial),
                                     "--limit", "5"])  # fmt: skip
    assert first.exit_code == 0, first.output
    rest = CliRunner().invoke(app, ["bench", "run", str(config), "--out", str(serial)])
    assert rest.exit_code == 0 and "skipping 5 finished cells" in rest.output
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        execute(plan_run(load_config(config), tmp_path / "ray"), backend="ray", threads=1)
    finally:
        ray.shutdown()

    def rows(out: Path) -> dict[str, dict[str, Any]]:
        return {r["config_hash"]: stable_view(r) for r in ResultStore(out).rows()}

    assert len(rows(serial)) == 12
    assert rows(tmp_path / "ray") == rows(serial)
