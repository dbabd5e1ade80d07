"""``stealproof bench`` end to end on a tiny digits grid: outputs, resume, report, Ray = serial.

The grid (12 cells: 4 defenses / 6 settings × 2 seeds, 500 queries, short training) runs once
serially; the other tests compare their rows with that run's, field by field, except the
timing and host fields.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from stealproof.bench.cache import ArtifactCache
from stealproof.bench.config import expand, load_config
from stealproof.bench.ray_backend import run_cell_task
from stealproof.bench.runner import Workspace, cache_dir, execute, plan_run
from stealproof.bench.store import ROW_FIELDS, ResultStore, stable_view
from stealproof.cli import app

TINY: dict[str, Any] = {
    "name": "tiny",
    "scenarios": [
        {"name": "digits", "victim_training": {"epochs": 5}, "clone_training": {"epochs": 15}}
    ],
    "attacks": {"knockoff": {"policy": ["random"], "label_only": [False, True]}},
    "defenses": {
        "none": [{}],
        "reverse_sigmoid": {"beta": [0.3, 0.7], "gamma": [0.2]},
        "mad": {"eps": [0.5, 0.9]},
        "top1": [{}],
    },
    "budgets": [500],
    "seeds": [0, 1],
}
CELLS = 12


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["bench", *args])


def stable_rows(out: Path) -> dict[str, dict[str, Any]]:
    return {r["config_hash"]: stable_view(r) for r in ResultStore(out).rows()}


def count_rows(out: Path) -> int:
    path = out / "results.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines(keepends=True) if line.endswith("\n"))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def serial_run(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial")
    result = invoke("run", str(tiny_config), "--out", str(out), "--threads", "1")
    assert result.exit_code == 0, result.output
    assert f"tiny: {CELLS} cells" in result.stderr
    assert f"ran {CELLS} cells" in result.stdout
    return out


def test_serial_run_writes_rows_csv_report_and_plots(tiny_config: Path, serial_run: Path) -> None:
    rows = ResultStore(serial_run).rows()
    assert len(rows) == CELLS
    expected = {c.cell_hash() for c in expand(load_config(tiny_config))}
    assert {r["config_hash"] for r in rows} == expected
    for r in rows:
        assert set(ROW_FIELDS) <= set(r), set(ROW_FIELDS) - set(r)
        for key in ("defender_acc", "clone_acc", "clone_fidelity", "label_only_clone_acc"):
            assert 0.0 <= r[key] <= 1.0, (key, r[key])
        assert 0.0 <= r["l1_queries"] <= 2.0 and r["kl_queries"] >= 0.0
        assert r["queries_used"] == r["budget"] == 500
        assert r["wall_time"] > 0 and r["version"]
    by = {(r["defense"], json.dumps(r["params"], sort_keys=True), r["seed"]): r for r in rows}
    for seed in (0, 1):
        none, top1 = by[("none", "{}", seed)], by[("top1", "{}", seed)]
        assert none["l1_queries"] == 0.0 and none["defender_acc"] == none["victim_acc"]
        # a label-only thief learns the same labels behind none and top1: the same clone
        assert top1["label_only_clone_acc"] == none["label_only_clone_acc"]
        strong = by[("mad", '{"eps": 0.9}', seed)]
        assert strong["l1_queries"] > by[("mad", '{"eps": 0.5}', seed)]["l1_queries"]
    # victims per seed and one MAD surrogate per seed (shared by both eps values)
    assert len(list((serial_run / "cache" / "victims").glob("*.pt"))) == 2
    assert len(list((serial_run / "cache" / "defenses").iterdir())) == 2
    with (serial_run / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == CELLS
    report = (serial_run / "report.md").read_text()
    for name in ("none", "reverse_sigmoid", "mad", "top1"):
        assert f"| `{name}` |" in report
    assert "at +1 pt" in report and "at L1 0.5" in report
    png = serial_run / "tradeoff_digits_knockoff-random.png"
    assert png.stat().st_size > 10_000


def test_rerun_skips_every_finished_cell(tiny_config: Path, serial_run: Path) -> None:
    before = (serial_run / "results.jsonl").read_text()
    result = invoke("run", str(tiny_config), "--out", str(serial_run), "--threads", "1")
    assert result.exit_code == 0, result.output
    assert f"skipping {CELLS} finished cells" in result.stderr
    assert "ran 0 cells" in result.stdout
    assert (serial_run / "results.jsonl").read_text() == before


def test_killed_run_resumes_with_only_the_missing_cells(
    tiny_config: Path, serial_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    log = (tmp_path / "run.log").open("w")
    cmd = [sys.executable, "-c", "from stealproof.cli import main; main()"]
    args = ["bench", "run", str(tiny_config), "--out", str(out), "--threads", "1", "--quiet"]
    proc = subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while count_rows(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait()
        log.close()
    done = count_rows(out)
    assert 1 <= done < CELLS, (done, (tmp_path / "run.log").read_text()[-2000:])
    first_rows = (out / "results.jsonl").read_text().splitlines()[:done]

    result = invoke("run", str(tiny_config), "--out", str(out), "--threads", "1")
    assert result.exit_code == 0, result.output
    assert f"skipping {done} finished cells" in result.stderr
    assert f"ran {CELLS - done} cells" in result.stdout
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == CELLS  # nothing ran twice
    assert lines[:done] == first_rows  # append-only
    assert stable_rows(out) == stable_rows(serial_run)  # the same numbers as a clean run


def test_report_is_rebuilt_from_results_alone(serial_run: Path, tmp_path: Path) -> None:
    only = tmp_path / "only-results"
    only.mkdir()
    shutil.copy(serial_run / "results.jsonl", only / "results.jsonl")
    result = invoke("report", str(only))
    assert result.exit_code == 0, result.output
    assert (only / "report.md").read_text() == (serial_run / "report.md").read_text()
    assert (only / "results.csv").read_text() == (serial_run / "results.csv").read_text()
    assert (only / "tradeoff_digits_knockoff-random.png").stat().st_size > 10_000
    assert not (only / "cache").exists()


def test_report_of_an_empty_directory_is_a_one_line_error(tmp_path: Path) -> None:
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 2
    assert "results.jsonl" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ray_backend_gives_the_serial_rows(
    tiny_config: Path, serial_run: Path, tmp_path: Path
) -> None:
    ray = pytest.importorskip(
        "ray", reason="ray is not installed (pip install 'stealproof[ray]'; CI installs it)"
    )
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        streamed: list[str] = []
        summary = execute(
            plan_run(load_config(tiny_config), out),
            backend="ray",
            threads=1,
            on_row=lambda r: streamed.append(r["config_hash"]),
        )
    finally:
        ray.shutdown()
    assert summary.ran == CELLS and summary.skipped == 0
    assert len(streamed) == CELLS == count_rows(out)
    assert stable_rows(out) == stable_rows(serial_run)


def test_ctrl_c_keeps_the_finished_cells_and_says_how_to_resume(
    tiny_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-c", "from stealproof.cli import main; main()"]
    args = ["bench", "run", str(tiny_config), "--out", str(out), "--threads", "1", "--quiet"]
    # a child of a shell's background job inherits SIGINT *ignored* (POSIX), and Python then
    # installs no KeyboardInterrupt handler: give the run the default action, as a terminal would
    proc = subprocess.Popen(
        [*cmd, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while count_rows(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = count_rows(out)
    assert 1 <= done < CELLS, done
    assert proc.returncode == 130, err
    assert f"interrupted: {done} of {CELLS} cells finished" in err, err
    assert "resume" in err and "Traceback" not in err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_task_without_the_drivers_cache_gives_the_same_row(
    tiny_config: Path, serial_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Ray task body on a host that cannot see DIR/cache: a private copy, removed after
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ws = Workspace(ArtifactCache(cache_dir(serial_run)))
    cell = next(c for c in expand(load_config(tiny_config)) if c.defense == "mad")
    bkey = ws.bundle_key(cell)
    assert bkey is not None
    row = run_cell_task(
        cell.model_dump(mode="json"),
        str(tmp_path / "not-this-host"),
        ws.cache.victim_files(ws.victim_key(cell)),
        ws.cache.defense_files(bkey),
        1,
        None,
    )
    assert stable_view(row) == stable_rows(serial_run)[cell.cell_hash()]
    assert list(tmp_path.iterdir()) == []  # the private directory is gone
