"""The ``paper-*`` suites read file datasets through ``--data-dir``: they validate, find their
datasets and pools in a directory of small synthetic IDX / CIFAR files made here, and run their
first cells with ``--limit`` on CPU (``paper-mnist`` at its own 50,000 queries in the slow set;
every suite's first cells at a test-sized budget and training in the default set)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from data_files import write_paper_data_dir
from stealproof.bench.cache import ArtifactCache
from stealproof.bench.cell import Workspace, check_inputs
from stealproof.bench.config import expand, load_config
from stealproof.bench.store import ResultStore
from stealproof.bench.suites import PAPER_SETTINGS, suite_data
from stealproof.cli import app

PAPER_SUITES = [f"paper-{d}" for d in PAPER_SETTINGS]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_paper_data_dir(tmp_path_factory.mktemp("paper-data"))


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["bench", "run", *args])


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_paper_suite_finds_its_files_in_data_dir(name: str, data_dir: Path, tmp_path: Path) -> None:
    dataset = name.removeprefix("paper-")
    cells = expand(load_config(name, data_dir=data_dir))
    assert {c.spec.dataset for c in cells} == {dataset}
    assert {c.budget for c in cells} == {50000}
    assert {c.data_dir for c in cells} == {str(data_dir)}
    assert {c.attack for c in cells} >= {"knockoff", "jb-top3"}
    assert {c.defense for c in cells} >= {"none", "mad", "reverse_sigmoid", "am"}
    ws = Workspace(ArtifactCache(tmp_path / "cache"))
    check_inputs(cells, ws)  # loads the dataset and every thief pool from the files
    ds = ws.dataset(dataset, str(data_dir))
    assert ds.input_shape == ((3, 32, 32) if dataset == "cifar10" else (1, 28, 28))
    pool = ws.pool(cells[0], ds, PAPER_SETTINGS[dataset]["pool"])
    assert len(pool) > len(ds.train.labels) // 2  # the whole other dataset, not a held-back part


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_paper_suite_without_data_dir_names_the_option(name: str, tmp_path: Path) -> None:
    result = run(name, "--out", str(tmp_path / "o"), "--limit", "1", "-q")
    assert result.exit_code == 2, result.output
    assert "--data-dir" in result.output
    assert not ResultStore(tmp_path / "o").open().index()


def test_data_dir_that_does_not_exist_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run("paper-mnist", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "--data-dir" in result.output and "no such directory" in result.output


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_paper_suite_first_cells_run_at_test_size(
    name: str, data_dir: Path, tmp_path: Path
) -> None:
    # the suite as a user would export and shrink it: same cells (datasets, pools, models,
    # thieves, defenses), a test-sized budget and one epoch of training
    data = suite_data(name)
    data["budgets"] = [128]
    tiny = {"epochs": 1, "min_steps": 1, "batch_size": 64}
    data["scenarios"][0].update(victim_training=tiny, clone_training=tiny)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    result = run(str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--limit", "2",
                 "-q", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["ran"] == 2 and summary["left"] == len(expand(load_config(name))) - 2
    rows = ResultStore(out).open().rows()
    dataset = name.removeprefix("paper-")
    assert [(r["dataset"], r["pool"], r["attack"]) for r in rows] == [
        (dataset, PAPER_SETTINGS[dataset]["pool"], "knockoff")
    ] * 2
    assert [r["defense"] for r in rows] == ["none", "reverse_sigmoid"]
    assert all(r["queries_used"] == 128 and r["clone_acc"] is not None for r in rows)
    assert (out / "report.md").read_text().count(f"## {name}") == 1


@pytest.mark.slow
def test_paper_mnist_first_cell_at_its_own_budget(data_dir: Path, tmp_path: Path) -> None:
    # the suite itself: 50,000 queries from KMNIST against an MNIST LeNet (~2 min on one core)
    out = tmp_path / "out"
    result = run("paper-mnist", "--out", str(out), "--data-dir", str(data_dir), "--limit", "1",
                 "-q", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = ResultStore(out).open().rows()
    assert (row["dataset"], row["model"], row["pool"]) == ("mnist", "lenet", "kmnist")
    assert row["budget"] == row["queries_used"] == 50000
    assert row["victim_acc"] > 0.9  # the synthetic classes are learnable
    assert row["clone_acc"] > 0.5 and row["label_only_clone_acc"] > 0.5
