"""Benchmark reliability: cache keys cover every input, stamped cache entries, up-front checks,
atomic writes, Ctrl-C, stale rows, the Ray task's private cache, and a config fuzz test.

Victim training is replaced by a spy that builds an untrained model (milliseconds), so these
tests check the mechanisms, not the numbers.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

import stealproof
from stealproof import defenses
from stealproof.bench import cache as cache_mod
from stealproof.bench import runner as runner_mod
from stealproof.bench.cache import (
    ArtifactCache,
    data_fingerprint,
    defense_key,
    defense_key_content,
    tensor_fingerprint,
    victim_key,
)
from stealproof.bench.config import BenchConfig, expand, load_config, parse_config
from stealproof.bench.ray_backend import task_cache
from stealproof.bench.store import ResultStore
from stealproof.cli import app
from stealproof.data.datasets import Dataset, load_dataset
from stealproof.errors import ArtifactMismatchError, StealproofError
from stealproof.experiment import SCENARIOS, Scenario
from stealproof.fingerprint import model_fingerprint
from stealproof.models.base import Classifier
from stealproof.models.registry import create_model
from stealproof.train import TrainConfig

SMALL: dict[str, Any] = {
    "name": "small",
    "scenarios": [{"name": "digits"}],
    "attacks": {"knockoff": {"label_only": [False]}},
    "defenses": {"none": [{}], "mad": {"eps": [0.5, 0.8]}},
    "budgets": [100],
    "seeds": [0],
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["bench", *args])


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.fixture
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Victim training replaced by an untrained model; the list records each call's seed."""
    calls: list[int] = []

    def fake_train(
        dataset: Dataset, model: str, config: TrainConfig, *, seed: int = 0, **_: Any
    ) -> tuple[Classifier, float]:
        calls.append(seed)
        c, h, w = dataset.input_shape
        torch.manual_seed(seed + 100 * len(calls))  # each training gives other weights
        net = create_model(model, in_channels=c, image_size=(h, w), num_classes=dataset.num_classes)
        return net, 0.5

    monkeypatch.setattr(cache_mod, "train_victim", fake_train)
    return calls


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- #13 cache keys


def _other_value(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.5
    return None


def test_victim_key_covers_every_input() -> None:
    spec = SCENARIOS["digits"]
    base = victim_key(spec, 0, "data-a")
    assert victim_key(spec, 0, "data-a") == base
    assert victim_key(spec, 1, "data-a") != base  # seed
    assert victim_key(spec, 0, "data-b") != base  # dataset contents
    assert victim_key(spec.model_copy(update={"dataset": "mnist5k"}), 0, "data-a") != base
    assert victim_key(spec.model_copy(update={"model": "lenet"}), 0, "data-a") != base
    # the thief's pool and the clones' training do not shape the victim
    assert victim_key(spec.model_copy(update={"pool": "noise"}), 0, "data-a") == base
    changed = 0
    for name, value in spec.victim_training.model_dump().items():
        other = _other_value(name, value)
        if other is None:
            continue
        try:
            training = TrainConfig.model_validate(
                {**spec.victim_training.model_dump(), name: other}
            )
        except ValueError:
            continue
        new = Scenario.model_validate({**spec.model_dump(), "victim_training": training})
        assert victim_key(new, 0, "data-a") != base, name
        changed += 1
    assert changed >= 5


def test_defense_key_covers_every_input_prepare_reads() -> None:
    grad2 = defenses.get_defense_class("grad2")
    mad = defenses.get_defense_class("mad")
    cfg = grad2.make_config(eps=1.0, seed=0).model_dump(mode="json")
    base = defense_key("v", grad2, cfg, query="q", seed=0)
    assert defense_key("v", grad2, cfg, query="q", seed=0) == base
    assert defense_key("w", grad2, cfg, query="q", seed=0) != base  # victim (and its data)
    assert defense_key("v", mad, cfg, query="q", seed=0) != base  # defense
    assert defense_key("v", grad2, {**cfg, "seed": 1}, query="q", seed=0) != base  # prepare param
    assert defense_key("v", grad2, cfg, query="r", seed=0) != base  # the query sample
    assert defense_key("v", grad2, cfg, query=None, seed=0) != base
    assert defense_key("v", grad2, cfg, query="q", seed=1) != base  # global RNG seed
    # a knob prepare() does not read is shared (one surrogate for a sweep)
    assert defense_key("v", grad2, {**cfg, "eps": 2.0}, query="q", seed=0) == base
    content = defense_key_content("v", grad2, cfg, query="q", seed=0)
    assert set(content) == {"kind", "victim", "defense", "params", "query_sample", "seed"}


def test_data_and_query_fingerprints_follow_the_contents(digits: Dataset) -> None:
    fp = data_fingerprint(digits)
    assert fp == data_fingerprint(load_dataset("digits"))
    images = digits.train.images.clone()
    images[0, 0, 0, 0] += 0.5
    changed = Dataset(digits.name, type(digits.train)(images, digits.train.labels), digits.test, 10)
    assert data_fingerprint(changed) != fp
    x = torch.rand(4, 1, 8, 8)
    assert tensor_fingerprint(x) == tensor_fingerprint(x.clone())
    assert tensor_fingerprint(x) != tensor_fingerprint(x[:3])
    assert tensor_fingerprint(x) != tensor_fingerprint(x.double())


def test_grad2_surrogates_of_two_pools_are_not_shared(tmp_path: Path) -> None:
    # issue 11 #13: the surrogate is distilled on a query log drawn from the cell's pool
    data = {
        **SMALL,
        "scenarios": [
            {"name": "digits"},
            {"name": "own", "dataset": "digits", "model": "mlp", "pool": "digits-unlabeled"},
        ],
        "defenses": {"grad2": [{"eps": 1.0}]},
    }
    data["scenarios"][1]["victim_training"] = SCENARIOS["digits"].victim_training.model_dump()
    a, b = expand(parse_config(data))
    assert a.spec.pool != b.spec.pool
    ws = runner_mod.Workspace(ArtifactCache(tmp_path))
    assert ws.victim_key(a) == ws.victim_key(b)  # same victim...
    assert ws.bundle_key(a) != ws.bundle_key(b)  # ...but not the same surrogate
    assert ws.bundle_key(a) == runner_mod.Workspace(ArtifactCache(tmp_path)).bundle_key(a)


# ----------------------------------------------------------------------------- #3 stamps


def test_victim_entries_are_stamped_and_checked(
    tmp_path: Path, digits: Dataset, trained: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    spec = SCENARIOS["digits"]
    cache = ArtifactCache(tmp_path)
    key = cache.ensure_victim(spec, 0, digits)
    assert trained == [0] and cache.has_victim(key)
    model, meta = cache.load_victim(key)
    assert meta["stamp"]["victim"] == model_fingerprint(model)
    assert meta["stamp"]["version"] == stealproof.__version__
    assert cache.ensure_victim(spec, 0, digits) == key and trained == [0]  # a hit

    # another model's weights under this name: refused, naming both fingerprints
    other = ArtifactCache(tmp_path / "other")
    other_key = other.ensure_victim(spec, 1, digits)
    path = cache.victim_path(key)
    path.write_bytes(other.victim_path(other_key).read_bytes())
    with pytest.raises(ArtifactMismatchError) as info:
        cache.load_victim(key)
    msg = str(info.value)
    assert str(path) in msg and key in msg and other_key in msg

    # prepare_artifacts / ensure_victim rebuild it, with a warning that says why
    with caplog.at_level(logging.WARNING, logger="stealproof.bench.cache"):
        assert cache.ensure_victim(spec, 0, digits) == key
    assert trained == [0, 1, 0]
    assert "rebuilding" in caplog.text and str(path) in caplog.text
    cache.load_victim(key)

    # weights edited in place: the fingerprint no longer matches
    payload = torch.load(path, weights_only=True)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] + 1.0
    torch.save(payload, path)
    assert "was made for victim" in (cache.victim_problem(key) or "")


def test_victim_entries_of_another_version_are_not_used(
    tmp_path: Path, digits: Dataset, trained: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ArtifactCache(tmp_path)
    key = cache.ensure_victim(SCENARIOS["digits"], 0, digits)
    made_by = stealproof.__version__
    monkeypatch.setattr(stealproof, "__version__", "99.0.0")
    problem = cache.victim_problem(key) or ""
    assert "package version" in problem and "99.0.0" in problem and made_by in problem
    cache.ensure_victim(SCENARIOS["digits"], 0, digits)
    assert len(trained) == 2 and cache.has_victim(key)


def _mad_bundle(
    cache: ArtifactCache, victim: Classifier, digits: Dataset
) -> tuple[str, dict[str, Any]]:
    mad = defenses.get_defense_class("mad")
    cfg = mad.make_config(eps=0.5).model_dump(mode="json")
    content = defense_key_content("vkey", mad, cfg, query=None, seed=0)
    key = defense_key("vkey", mad, cfg, query=None, seed=0)
    cache.ensure_defense(key, mad, cfg, victim, digits.train.images, content=content)
    return key, cfg


def test_defense_bundles_are_bound_to_their_victim(
    tmp_path: Path, digits: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    victim = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    other = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    cache = ArtifactCache(tmp_path)
    key, _ = _mad_bundle(cache, victim, digits)
    fp, other_fp = model_fingerprint(victim), model_fingerprint(other)
    assert set(cache.load_defense_models(key, fp)) == {"surrogate"}
    # the bundle of one victim offered for another: refused, naming both
    with pytest.raises(ArtifactMismatchError) as info:
        cache.load_defense_models(key, other_fp)
    assert fp in str(info.value) and other_fp in str(info.value)
    # a stray file the manifest does not name is ignored (and never shipped)
    d = cache.defense_dir(key)
    (d / "backup.pt").write_bytes(b"not a checkpoint")
    assert set(cache.load_defense_models(key, fp)) == {"surrogate"}
    assert sorted(cache.defense_files(key)) == [
        f"defenses/{key}/manifest.json",
        f"defenses/{key}/surrogate.pt",
    ]
    # a model file swapped for other weights: refused
    good = (d / "surrogate.pt").read_bytes()
    torch.save(
        {**torch.load(d / "surrogate.pt", weights_only=True), "state_dict": other.state_dict()},
        d / "surrogate.pt",
    )
    with pytest.raises(ArtifactMismatchError, match="manifest recorded"):
        cache.load_defense_models(key, fp)
    # a corrupt manifest is a StealproofError, and ensure_defense rebuilds the bundle
    (d / "surrogate.pt").write_bytes(good)
    (d / "manifest.json").write_text("{")
    assert not cache.has_defense(key, fp)
    with caplog.at_level(logging.WARNING, logger="stealproof.bench.cache"):
        _mad_bundle(cache, victim, digits)
    assert "rebuilding" in caplog.text
    assert cache.has_defense(key, fp)
    assert not (d / "backup.pt").exists()  # the old directory was replaced as a whole
    assert [p.name for p in d.parent.iterdir()] == [key]  # no temporary left behind


# ----------------------------------------------------------------------------- #2, #6 up front


def test_bench_run_checks_out_before_any_work(tmp_path: Path, trained: list[int]) -> None:
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    msg = one_line_error(invoke("run", "smoke", "--out", str(a_file), "--threads", "1"))
    assert "--out" in msg and "is a file" in msg
    assert a_file.read_text() == "keep me"
    msg = one_line_error(invoke("run", "smoke", "--out", str(a_file / "sub"), "--threads", "1"))
    assert "--out" in msg
    assert trained == []  # the check came before any victim trained


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_bench_run_refuses_an_unwritable_out(tmp_path: Path, trained: list[int]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        msg = one_line_error(invoke("run", "smoke", "--out", str(locked / "out")))
    finally:
        locked.chmod(stat.S_IRWXU)
    assert "not writable" in msg and trained == []


def test_bench_run_checks_the_device_before_any_work(tmp_path: Path, trained: list[int]) -> None:
    out = tmp_path / "out"
    msg = one_line_error(invoke("run", "smoke", "--out", str(out), "--device", "foo"))
    assert "--device" in msg and "cpu" in msg
    if not torch.cuda.is_available():
        msg = one_line_error(invoke("run", "smoke", "--out", str(out), "--device", "cuda"))
        assert "--device" in msg and "available here: cpu" in msg
    assert trained == [] and not out.exists()


def test_bench_report_checks_its_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    msg = one_line_error(invoke("report", str(tmp_path / "f")))
    assert "results.jsonl" in msg


def test_a_failed_checkpoint_write_leaves_nothing_half_written(
    tmp_path: Path, digits: Dataset, trained: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def torn_save(model: Any, path: Path, meta: Any = None) -> Path:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cache_mod, "save_checkpoint", torn_save)
    cache = ArtifactCache(tmp_path)
    with pytest.raises(OSError, match="No space"):
        cache.ensure_victim(SCENARIOS["digits"], 0, digits)
    assert list((tmp_path / "victims").iterdir()) == []
    victim = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    with pytest.raises(OSError, match="No space"):
        _mad_bundle(cache, victim, digits)
    assert list((tmp_path / "defenses").iterdir()) == []


def test_a_failed_report_write_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stealproof.plots

    store = ResultStore(tmp_path).open()
    store.append(_row(_small_cells()[0]))

    def torn_plot(curves: Any, *, title: str, path: Path, undefended: Any = None) -> Path:
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(stealproof.plots, "tradeoff_curves", torn_plot)
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 2, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith(".png") or ".tmp" in n], names


# ----------------------------------------------------------------------------- #8 the store, runs


def _small_cells() -> list[Any]:
    return expand(parse_config(copy.deepcopy(SMALL)))


def _row(cell: Any, version: str | None = None) -> dict[str, Any]:
    return {
        "scenario": cell.scenario,
        "dataset": cell.spec.dataset,
        "model": cell.spec.model,
        "pool": cell.spec.pool,
        "attack": cell.attack,
        "attack_params": dict(cell.attack_params),
        "defense": cell.defense,
        "params": dict(cell.params),
        "seed": cell.seed,
        "budget": cell.budget,
        "queries_used": cell.budget,
        "victim_acc": 0.9,
        "defender_acc": 0.9 - 0.01 * len(cell.params),
        "l1_queries": 0.1 * len(cell.params),
        "kl_queries": 0.0,
        "clone_acc": 0.8,
        "clone_fidelity": 0.8,
        "label_only_clone_acc": None,
        "defense_config": dict(cell.defense_config),
        "wall_time": 0.1,
        "host": "h",
        "version": version or stealproof.__version__,
        "config_hash": cell.cell_hash(),
    }


@pytest.fixture
def fake_cells(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Cells run instantly; ``state['interrupt_at']`` raises Ctrl-C at that call."""
    state: dict[str, Any] = {"calls": 0, "interrupt_at": None, "version": None}

    def fake_run_cell(cell: Any, ws: Any, *, progress: Any = None) -> dict[str, Any]:
        state["calls"] += 1
        if state["calls"] == state["interrupt_at"]:
            raise KeyboardInterrupt
        return _row(cell, state["version"])

    monkeypatch.setattr(runner_mod, "prepare_artifacts", lambda cells, ws, progress=None: None)
    monkeypatch.setattr(runner_mod, "run_cell", fake_run_cell)
    yield state


def test_ctrl_c_says_how_many_cells_finished_and_how_to_resume(
    tmp_path: Path, fake_cells: dict[str, Any]
) -> None:
    config = write_yaml(tmp_path / "small.yaml", SMALL)
    out = tmp_path / "out"
    fake_cells["interrupt_at"] = 2
    result = invoke("run", str(config), "--out", str(out), "--quiet")
    assert result.exit_code == 130, result.output
    assert "interrupted: 1 of 3 cells finished (1 in this run)" in result.stderr
    assert "same --out" in result.stderr and "resume" in result.stderr
    assert len(ResultStore(out).rows()) == 1
    fake_cells["interrupt_at"] = None
    result = invoke("run", str(config), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "skipping 1 finished cells" in result.stderr and "ran 2 cells" in result.stdout
    assert len(ResultStore(out).rows()) == 3


def test_rows_of_another_version_warn_and_rerun_stale_supersedes_them(
    tmp_path: Path, fake_cells: dict[str, Any]
) -> None:
    config = write_yaml(tmp_path / "small.yaml", SMALL)
    out = tmp_path / "out"
    fake_cells["version"] = "0.0.1"
    assert invoke("run", str(config), "--out", str(out), "--quiet").exit_code == 0
    fake_cells["version"] = None
    result = invoke("run", str(config), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning: 3 finished cells" in result.stderr
    assert "0.0.1" in result.stderr and "--rerun-stale" in result.stderr
    assert {r["version"] for r in ResultStore(out).rows()} == {"0.0.1"}
    result = invoke("run", str(config), "--out", str(out), "--rerun-stale", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ran"] == 3
    assert {r["version"] for r in ResultStore(out).rows()} == {stealproof.__version__}
    assert len((out / "results.jsonl").read_text().splitlines()) == 6  # history kept
    result = invoke("run", str(config), "--out", str(out), "--quiet")
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_a_garbage_line_is_refused_naming_the_line(
    tmp_path: Path, fake_cells: dict[str, Any]
) -> None:
    config = write_yaml(tmp_path / "small.yaml", SMALL)
    out = tmp_path / "out"
    assert invoke("run", str(config), "--out", str(out), "--quiet").exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    lines.insert(1, "{this is not json}\n")
    (out / "results.jsonl").write_text("".join(lines))
    for args in (("run", str(config), "--out", str(out)), ("report", str(out))):
        msg = one_line_error(invoke(*args))
        assert "results.jsonl: line 2 is not a result row" in msg
        assert "delete or fix that line" in msg
    assert (out / "results.jsonl").read_text() == "".join(lines)  # nothing dropped


def test_a_bad_file_pool_fails_at_load_before_any_work(tmp_path: Path, trained: list[int]) -> None:
    data = {**SMALL, "scenarios": [{"name": "digits", "pool": f"file:{tmp_path / 'nope'}"}]}
    config = write_yaml(tmp_path / "c.yaml", data)
    msg = one_line_error(invoke("run", str(config), "--out", str(tmp_path / "out")))
    assert "scenarios[0].pool" in msg and "no such file or directory" in msg
    (tmp_path / "empty").mkdir()
    data["scenarios"][0]["pool"] = f"file:{tmp_path / 'empty'}"
    msg = one_line_error(invoke("run", str(write_yaml(config, data)), "--out", str(tmp_path)))
    assert "holds no files" in msg
    # a file that exists but is not a pool is read before any victim trains
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    data["scenarios"][0]["pool"] = f"file:{tmp_path / 'junk'}"
    result = invoke("run", str(write_yaml(config, data)), "--out", str(tmp_path / "o2"), "-q")
    assert "no images found" in one_line_error(result)
    assert trained == []


# ----------------------------------------------------------------------------- #17 Ray task cache


def test_ray_tasks_use_a_private_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / "stealproof-bench-cache" / "victims" / "k.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"planted by someone else")
    files = {"victims/k.pt": b"sent by the driver"}
    elsewhere = str(tmp_path / "driver-cache-elsewhere")
    with task_cache(elsewhere, files) as a, task_cache(elsewhere, files) as b:
        assert a.root != b.root
        for c in (a, b):
            assert c.root.parent == tmp_path and c.root.name != "stealproof-bench-cache"
            assert stat.S_IMODE(c.root.stat().st_mode) == 0o700
            assert (c.root / "victims" / "k.pt").read_bytes() == b"sent by the driver"
    assert not a.root.exists() and not b.root.exists()  # removed at the end
    with pytest.raises(RuntimeError), task_cache(str(tmp_path / "x"), files) as c:
        raise RuntimeError("the cell failed")
    assert not c.root.exists()
    # a host that sees the driver's cache reads it in place
    driver = tmp_path / "driver"
    (driver / "victims").mkdir(parents=True)
    (driver / "victims" / "k.pt").write_bytes(b"sent by the driver")
    with task_cache(str(driver), files) as d:
        assert d.root == driver
    assert driver.exists()


# ----------------------------------------------------------------------------- fuzz


KEYS = [
    "name",
    "description",
    "scenarios",
    "attacks",
    "defenses",
    "budgets",
    "seeds",
    "data_dir",
    "knockoff",
    "policy",
    "label_only",
    "mad",
    "eps",
    "grad2",
    "none",
    "topk",
    "k",
    "dataset",
    "model",
    "pool",
    "clone_training",
    "victim_training",
    "epochs",
    "lr",
    "digits",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["digits", "mlp", "random", "file:/nonexistent", "noise", "", "mad"]),
    st.text(max_size=5),
)
keys = st.one_of(st.sampled_from(KEYS), st.integers(0, 3), st.text(max_size=4))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=12,
)


def _mutated_base(draw_data: dict[str, Any], path: list[str], value: Any) -> Any:
    data = copy.deepcopy(draw_data)
    node: Any = data
    for k in path[:-1]:
        if not isinstance(node, dict) or k not in node:
            return data
        node = node[k]
    if isinstance(node, dict):
        node[path[-1]] = value
    return data


PATHS = [
    ["name"],
    ["scenarios"],
    ["attacks"],
    ["attacks", "knockoff"],
    ["defenses"],
    ["defenses", "mad"],
    ["defenses", "grad2"],
    ["budgets"],
    ["seeds"],
    ["data_dir"],
    ["extra"],
]
documents = st.one_of(
    st.text(max_size=60),  # arbitrary text
    values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.builds(_mutated_base, st.just(SMALL), st.sampled_from(PATHS), values).map(
        lambda v: yaml.safe_dump(v, allow_unicode=True)
    ),
    st.sampled_from(
        [
            "a: &x [*x]",
            "a: 1\na: 2",
            "defenses: {mad: {eps: [.nan]}}",
            "!!python/object:os.system {}",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]",
            "{? [1]: 2}",
            "a: !!binary AAAA",
        ]
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(doc=documents)
def test_fuzz_config_loading_raises_only_config_errors(doc: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(doc, encoding="utf-8")
        try:
            config = load_config(path)
        except StealproofError as e:
            assert "\n" not in str(e).strip(), str(e)
            return
        assert isinstance(config, BenchConfig)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_fuzz_bench_run_exits_0_or_2(doc: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(doc, encoding="utf-8")
        try:
            load_config(path)
        except StealproofError:
            pass
        else:
            return  # a valid grid would train: the CLI part covers the documents that fail
        out = Path(d) / "out"
        result = invoke("run", str(path), "--out", str(out), "--quiet")
        one_line_error(result)
        assert not out.exists()
