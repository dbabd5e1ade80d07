"""Issue 11 for the main CLI: errors before work, artifacts bound to their victim, one line per
user error, a traceback for bugs, and defaults that are the same at every entry point.

Numbers in test names refer to the defects listed in issue 11.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from stealproof import cli as cli_mod
from stealproof._io import atomic_target, check_output_dir, check_output_file
from stealproof.cli import app, auto_threads, dumps_strict
from stealproof.errors import OutputPathError
from stealproof.experiment import SCENARIOS, scenario_for
from stealproof.models import create_model, load_checkpoint, save_checkpoint
from stealproof.train import TrainConfig, describe_training, effective_epochs

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def user_error(result: Result, *needles: str) -> str:
    """Exit 2, one stderr line starting with 'error:' that contains every needle, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits MLP checkpoint (untrained weights are enough for what is tested here)."""
    out = tmp_path_factory.mktemp("rel") / "v.pt"
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    save_checkpoint(model, out, {"dataset": "digits", "test_acc": 0.1})
    return out


@pytest.fixture(scope="module")
def other_victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another digits MLP (other weights): artifacts made for it must not serve ``victim``."""
    out = tmp_path_factory.mktemp("rel") / "w.pt"
    torch.manual_seed(1)
    model = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    save_checkpoint(model, out, {"dataset": "digits", "test_acc": 0.1})
    return out


@pytest.fixture(scope="module")
def victim_no_meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8×8 victim whose checkpoint does not say what it was trained on."""
    out = tmp_path_factory.mktemp("rel") / "bare.pt"
    model = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    save_checkpoint(model, out, {})
    return out


class _Called(Exception):
    pass


def _forbid(*_: Any, **__: Any) -> Any:
    raise _Called("work started before the output path was checked")


# ------------------------------------------------------------------ 2: outputs checked first


def test_output_checks(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_file(tmp_path)
    with pytest.raises(OutputPathError, match="is a file"):
        check_output_dir(afile)
    with pytest.raises(OutputPathError, match="not a directory"):
        check_output_file(afile / "sub" / "v.pt")
    with pytest.raises(OutputPathError, match="not a directory"):
        check_output_dir(afile / "sub")
    assert check_output_file(tmp_path / "new" / "deeper" / "v.pt")  # parents may be created
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_atomic_target_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    with pytest.raises(RuntimeError), atomic_target(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_target(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == tmp_path
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(
    ("command", "spy", "out_kind"),
    [
        (["demo", "--quick"], "stealproof.demo.run_demo", "dir"),
        (["train-victim", "--dataset", "digits"], "stealproof.experiment.train_victim", "file"),
        (["surrogate", "--kind", "random"], "stealproof.surrogate.random_surrogate", "file"),
        (["prepare-defense", "--defense", "mad"], "stealproof.data.load_dataset", "dir"),
        (["attack", "--budget", "10"], "stealproof.data.load_dataset", "dir"),
    ],
)
def test_unwritable_output_fails_before_any_work(
    command: list[str],
    spy: str,
    out_kind: str,
    victim: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2: an --out under a regular file (unwritable for anyone, root included) or of the wrong
    kind fails at once, and the work (spied) never starts."""
    monkeypatch.setattr(spy, _forbid)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    needs_victim = command[0] in ("surrogate", "prepare-defense", "attack")
    extra = ["--victim", str(victim)] if needs_victim else []
    result = invoke(*command, *extra, "--out", str(blocker / "out"))
    user_error(result, "--out", "blocker")
    wrong_kind = blocker if out_kind == "dir" else tmp_path
    result = invoke(*command, *extra, "--out", str(wrong_kind))
    user_error(result, "--out", "is a file" if out_kind == "dir" else "is a directory")
    assert blocker.read_text() == "a file, not a directory"


def test_train_victim_writes_through_a_rename(tmp_path: Path) -> None:
    out = tmp_path / "v.pt"
    result = invoke(
        "train-victim", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--out", str(out),
        "-q", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["v.pt"]  # no temporary file left
    load_checkpoint(out)


# ------------------------------------------------- 3: artifacts bound to what made them


def _prepare(victim: Path, out: Path, *extra: str) -> None:
    result = invoke(
        "prepare-defense", "--victim", str(victim), "--defense", "mad", "--out", str(out),
        "-p", "eps=0.3", "-q", "--threads", "1", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def _attack(victim: Path, *extra: str) -> Result:
    return invoke(
        "attack", "--victim", str(victim), "--budget", "50", "--epochs", "1", "--json",
        "--threads", "1", *extra,
    )  # fmt: skip


def test_defense_models_for_another_victim_are_refused(
    victim: Path, other_victim: Path, tmp_path: Path
) -> None:
    models = tmp_path / "mad"
    _prepare(other_victim, models)
    manifest = json.loads((models / "defense.json").read_text())
    assert set(manifest["stamp"]) == {"victim", "config", "version"}
    line = user_error(_attack(victim, "--defense", "mad", "--models", str(models)), "victim")
    assert manifest["stamp"]["victim"] in line  # names the victim it was made for
    ok = _attack(other_victim, "--defense", "mad", "--models", str(models))
    assert ok.exit_code == 0, ok.output


def test_defense_models_stray_files_ignored_and_manifest_required(
    victim: Path, tmp_path: Path
) -> None:
    models = tmp_path / "mad"
    _prepare(victim, models)
    (models / "backup.pt").write_bytes(b"not a checkpoint")  # not named by the manifest
    ok = _attack(victim, "--defense", "mad", "--models", str(models))
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["params"]["eps"] == 0.3
    (models / "defense.json").unlink()
    user_error(_attack(victim, "--defense", "mad", "--models", str(models)), "defense.json")


def test_defense_models_for_another_defense_or_build_setting_are_refused(
    victim: Path, tmp_path: Path
) -> None:
    models = tmp_path / "mad"
    _prepare(victim, models)
    user_error(_attack(victim, "--defense", "grad2", "--models", str(models)), "'mad'", "grad2")
    # a knob that does not shape the models may change; one that does may not
    ok = _attack(victim, "--defense", "mad", "--models", str(models), "-p", "eps=0.5")
    assert ok.exit_code == 0, ok.output
    user_error(
        _attack(victim, "--defense", "mad", "--models", str(models), "-p", "seed=7"), "config"
    )


# ------------------------------------------------------------- 4: victim vs data shape


@pytest.mark.parametrize(
    "command",
    [
        ["attack", "--defense", "am", "--budget", "10"],
        ["prepare-defense", "--defense", "am"],
        ["prepare-defense", "--defense", "grad2"],
        ["prepare-defense", "--defense", "mad"],
        ["surrogate", "--kind", "distilled"],
    ],
)
def test_victim_and_data_shapes_are_checked_before_any_defense(
    command: list[str], victim_no_meta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stealproof.defenses.base import Defense

    monkeypatch.setattr(Defense, "prepare", classmethod(_forbid))
    out = tmp_path / ("o.pt" if command[0] == "surrogate" else "o")
    result = invoke(
        *command, "--victim", str(victim_no_meta), "--dataset", "mnist5k", "--out", str(out)
    )
    line = user_error(result, "mnist5k")
    assert "(1, 28, 28)" in line and "(1, 8, 8)" in line
    assert not out.exists()


# ------------------------------------------------------------------- 5, 10: listing


def test_list_shows_parameters_with_types_and_defaults() -> None:
    result = invoke("list", "defenses")
    assert result.exit_code == 0, result.output
    assert "eps: float = 1.0" in result.stdout.replace("\n", " ") or "eps: float" in result.stdout
    one = invoke("list", "defenses", "mad")
    assert one.exit_code == 0, one.output
    for needle in ("eps", "float", "1.0", "norm"):
        assert needle in one.stdout
    attacks = invoke("list", "attacks", "knockoff")
    assert attacks.exit_code == 0 and "policy" in attacks.stdout and "random" in attacks.stdout
    user_error(invoke("list", "defenses", "nope"), "nope")


def test_list_shows_detectors_and_policy() -> None:
    result = invoke("list", "detectors", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["detectors"]
    assert {"prada", "guardian", "policy"} <= set(data)
    assert any(p.startswith("max_flagged") for p in data["policy"]["params"])
    assert any(p.startswith("delta") for p in data["prada"]["params"])


def test_unknown_parameter_names_the_valid_ones(victim: Path) -> None:
    user_error(_attack(victim, "--defense", "mad", "-p", "foo=1"), "'foo'", "eps", "norm")


# --------------------------------------------------------------------------- 6: device


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests a CPU-only install")
@pytest.mark.parametrize(
    "command",
    [
        ["demo", "--quick"],
        ["train-victim", "--dataset", "digits"],
        ["attack", "--budget", "10"],
        ["guardian", "train"],
        ["bench", "run", "smoke"],
    ],
)
@pytest.mark.parametrize("device", ["cuda", "foo"])
def test_device_is_checked_up_front(
    command: list[str], device: str, victim: Path, tmp_path: Path
) -> None:
    extra = ["--victim", str(victim)] if command[0] == "attack" else []
    out = tmp_path / ("o.pt" if command[0] in ("train-victim", "guardian") else "o")
    result = invoke(*command, *extra, "--device", device, "--out", str(out))
    line = user_error(result, "--device", repr(device))
    assert "available" in line and "cpu" in line
    assert not out.exists()


# ------------------------------------------------- 7: user errors vs bugs in the wrapper


def test_a_bug_keeps_its_traceback(victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """7: an internal KeyError is not dressed up as a user error."""

    def broken(*_: Any, **__: Any) -> Any:
        return {}["no such key"]

    monkeypatch.setattr("stealproof.data.load_dataset", broken)
    result = _attack(victim)
    assert result.exit_code not in (0, 2)
    assert isinstance(result.exception, KeyError)
    assert "internal error" in result.stderr and "report" in result.stderr


def test_broken_checkpoint_contents_are_one_line_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad.pt"
    model = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    save_checkpoint(model, p, {})
    payload = torch.load(p, weights_only=True)
    payload["meta_json"] = "[1, 2]"
    torch.save(payload, p)
    user_error(_attack(p), "bad.pt")
    del payload["kwargs_json"]
    torch.save(payload, p)
    user_error(_attack(p), "bad.pt")


# ------------------------------------------------------------------ 9, 11: values, threads


@pytest.mark.parametrize("lr", ["0", "-0.1"])
def test_non_positive_learning_rate_is_refused(lr: str, tmp_path: Path) -> None:
    out = tmp_path / "v.pt"
    user_error(invoke("train-victim", "--dataset", "digits", "--lr", lr, "--out", str(out)), "--lr")
    assert not out.exists()


def test_auto_threads_leaves_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert auto_threads() == 1  # one of two cores busy: one thread, not two
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert auto_threads() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    assert auto_threads() == 1  # never zero


# --------------------------------------------------------- 13: the checkpoint's dataset


def test_attack_scores_on_the_victims_dataset_by_default(victim: Path) -> None:
    result = _attack(victim)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["dataset"] == "digits"
    assert row["pool"] == SCENARIOS["digits"].pool  # the scenario's pool, not digits28
    user_error(_attack(victim, "--dataset", "mnist5k"), "trained on 'digits'")


# ------------------------------------------------------- 16: one set of defaults, steps


def test_every_scenario_has_one_set_of_defaults() -> None:
    assert scenario_for("mnist5k") is SCENARIOS["mnist5k"]
    assert scenario_for("mnist").victim_training == SCENARIOS["mnist5k"].victim_training
    assert scenario_for("mnist").clone_training == SCENARIOS["mnist5k"].clone_training
    for sc in SCENARIOS.values():
        assert sc.clone_training.min_steps is not None


def test_clone_training_reaches_a_minimum_number_of_steps() -> None:
    cfg = TrainConfig(epochs=10, batch_size=100, min_steps=400)
    assert effective_epochs(cfg, 5000) == 10  # 50 steps/epoch × 10 = 500 ≥ 400
    assert effective_epochs(cfg, 1000) == 40  # 10 steps/epoch: 40 epochs for 400 steps
    assert effective_epochs(cfg, 1) == 400
    assert effective_epochs(cfg.model_copy(update={"min_steps": None}), 10) == 10
    assert "40 epochs × 10 steps" in describe_training(cfg, 1000)


def test_default_budget_steps_are_unchanged_by_the_floor() -> None:
    """The floor equals what the default budgets got, so documented numbers stand."""
    for name, budget in (("mnist5k", 5000), ("digits", 1000)):
        cfg = SCENARIOS[name].clone_training
        assert effective_epochs(cfg, int(budget * 0.9)) == cfg.epochs


def test_attack_states_the_clone_training(victim: Path) -> None:
    result = invoke(
        "attack", "--victim", str(victim), "--budget", "100", "--json", "--threads", "1"
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["clone_training"]["min_steps"] == SCENARIOS["digits"].clone_training.min_steps
    assert "steps" in row["clone_steps"]


# ----------------------------------------------------------------- 8: strict JSON output


def test_json_output_is_strict() -> None:
    text = dumps_strict({"a": float("inf"), "b": [float("nan"), 1.0], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [None, 1.0], "c": {"d": None}}
    assert "Infinity" not in text and "NaN" not in text


def _no_nonfinite(text: str) -> None:
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in JSON output"))


# ------------------------------------------------------------------ fuzz: CLI arguments

CHEAP_DEFENSES = ["noise", "rounding", "reverse_sigmoid", "topk", "random", "mad", "none"]
_value = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "Infinity", "NaN", "1e999", "-1", "0", "0.5", "3"]),
    st.sampled_from(["true", "null", "[]", "{}", '"l1"', "l2", "", "=", "1=2"]),
    st.text(alphabet='abcxyz019.-+eE[]{}":,= ', max_size=8),
)
_key = st.one_of(
    st.sampled_from(["eps", "eps_z", "k", "decimals", "beta", "gamma", "norm", "seed", "foo"]),
    st.text(alphabet="abz_= ", max_size=5),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    defense=st.sampled_from(CHEAP_DEFENSES),
    items=st.lists(st.tuples(_key, _value), max_size=3),
    raw=st.lists(st.text(alphabet="ab=1.-x ", max_size=6), max_size=1),
)
def test_fuzz_cli_parameters(
    victim: Path, defense: str, items: list[tuple[str, str]], raw: list[str]
) -> None:
    """Any --param strings: exit 0 or 2, never a traceback, never non-finite JSON."""
    params = [f"{k}={v}" for k, v in items] + raw
    args = ["--defense", defense, "--budget", "20", "--epochs", "1"]
    for p in params:
        args += ["-p", p]
    result = _attack(victim, *args)
    assert result.exit_code in (0, 2), (params, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        _no_nonfinite(result.stdout)
    else:
        assert result.stderr.strip().startswith("error:")


def test_cli_package_keeps_its_public_helpers() -> None:
    """The command modules share these through stealproof.cli._shared; the package itself
    still offers the app, its entry point and the helpers scripts use."""
    from stealproof.cli import _shared

    for name in ("_setup", "console", "progress_bar", "parse_params", "friendly_errors"):
        assert hasattr(_shared, name)
    for name in ("app", "main", "auto_threads", "dumps_strict", "parse_params"):
        assert hasattr(cli_mod, name)


# ------------------------------------------------- 1: a block is a result, not an error


def _flag_everything_bundle(victim: Path, out: Path) -> Path:
    """A guardian bundle stamped for ``victim`` whose threshold flags every row."""
    from stealproof.detectors.guardian import GuardianBundle, TransformNet
    from stealproof.fingerprint import make_stamp

    model, _ = load_checkpoint(victim)
    torch.manual_seed(0)
    detector = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=2, hidden=(8,))
    bundle = GuardianBundle(
        TransformNet((1, 8, 8), width=4).eval(),
        {"dfme": detector.eval()},
        threshold=-1e9,
        meta={"sources": ["dfme"]},
        stamp=make_stamp(model, {}),
    )
    return bundle.save(out)


@pytest.mark.parametrize("attack", ["knockoff", "jbda"])
def test_blocked_attack_exits_0_with_its_row_and_result_file(
    attack: str, victim: Path, tmp_path: Path
) -> None:
    bundle = _flag_everything_bundle(victim, tmp_path / "g.pt")
    out = tmp_path / "run"
    result = _attack(
        victim, "--attack", attack, "--guardian", str(bundle), "--max-flagged", "30",
        "--budget", "200", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["stopped"] == "blocked"
    assert row["blocked_at"] is not None and 0 < row["blocked_at"] < 200
    assert row["flagged_rows"] >= 30 and "blocked" in row["stop_message"]
    assert 0.0 <= row["clone_acc"] <= 1.0
    assert json.loads((out / "result.json").read_text()) == row
    table = invoke(
        "attack", "--victim", str(victim), "--guardian", str(bundle), "--max-flagged", "30",
        "--budget", "200", "--epochs", "1", "--threads", "1",
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "the thief was blocked after" in table.stdout


# ------------------------------------------- 12: a file dataset's split goes with the victim


def test_file_dataset_split_is_recorded_and_a_different_one_refused(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "one-split.npz"
    np.savez(data, rng.integers(0, 256, (300, 8, 8), dtype=np.uint8), np.arange(300) % 10)
    ckpt = tmp_path / "v.pt"
    user_error(
        invoke("train-victim", "--dataset", f"file:{data}", "--model", "mlp",
               "--epochs", "1", "--out", str(ckpt), "--threads", "1", "-q"),
        "no test split", "--split-test",
    )  # fmt: skip
    trained = invoke(
        "train-victim", "--dataset", f"file:{data}", "--split-test", "0.2", "--model", "mlp",
        "--epochs", "1", "--out", str(ckpt), "--threads", "1", "-q",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert load_checkpoint(ckpt)[1]["split_test"] == 0.2
    # the attack finds the split in the checkpoint; jbda's seed set is the derived unlabeled split
    for attack in ("knockoff", "jbda"):
        result = _attack(ckpt, "--attack", attack)
        assert result.exit_code == 0, result.output
        row = json.loads(result.stdout)
        assert row["dataset"] == f"file:{data}"
    assert row["pool"] == f"file:{data}-unlabeled"
    user_error(_attack(ckpt, "--split-test", "0.3"), "--split-test", "trained with")
