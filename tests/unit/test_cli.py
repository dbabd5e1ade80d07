"""Tests for the ``stealproof`` command line (typer app), run in-process with CliRunner.

The installed typer's ``CliRunner`` keeps stdout and stderr apart (``result.stdout`` /
``result.stderr``; ``result.output`` is both interleaved), so tests check that user errors
go to stderr as one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner, Result

from stealproof import __version__, defenses
from stealproof.cli import app, parse_params
from stealproof.models import Classifier, load_checkpoint

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_user_error(result: Result, *needles: str) -> str:
    """Exit status 2, exactly one line on stderr starting with 'error:', no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    for needle in needles:
        assert needle in line, (needle, line)
    assert result.stdout.strip() == ""
    return line


# ----------------------------------------------------------------------------- list, help


def test_list_mentions_every_defense() -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in defenses.available():
        assert name in result.stdout
    for section in ("datasets", "pools", "models", "defenses", "attacks", "detectors"):
        assert section in result.stdout
    assert "knockoff" in result.stdout
    assert "mlp" in result.stdout


def test_list_defenses_json() -> None:
    result = invoke("list", "defenses", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["defenses"]
    assert sorted(data["defenses"]) == sorted(defenses.available())
    assert len(data["defenses"]) >= 2
    from stealproof.defenses.mad import MADConfig

    mad = data["defenses"]["mad"]["params"]
    assert f"eps: float = {MADConfig().eps!r}" in mad
    assert "norm: 'l1' | 'l2' | 'kl' = 'l1'" in mad  # a Literal shows its choices


def test_list_all_json_has_every_section() -> None:
    result = invoke("list", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"datasets", "pools", "models", "defenses", "attacks", "detectors"}
    assert "mnist8" in data["pools"] and "digits" in data["datasets"]


def test_list_unknown_section_is_a_one_line_error() -> None:
    assert_user_error(invoke("list", "nope"), "nope", "defenses")


@pytest.mark.parametrize("command", [[], ["demo"], ["train-victim"], ["attack"], ["list"]])
def test_help_works_for_every_command(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "--help" in result.output


def test_version_alone() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_version_before_a_command() -> None:
    result = invoke("--version", "list")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_parse_params() -> None:
    assert parse_params(["beta=0.5", "k=3", "norm=l1", "flag=true"]) == {
        "beta": 0.5,
        "k": 3,
        "norm": "l1",
        "flag": True,
    }
    assert parse_params(None) == {}
    for bad in ("garbage", "=3"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_params([bad])


# ----------------------------------------------------------------------------- train, attack


def test_attack_missing_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    assert_user_error(invoke("attack", "--victim", str(missing), "--threads", "1"), "missing.pt")


@pytest.fixture(scope="module")
def victim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tmp" / "v.pt"
    result = invoke(
        "train-victim",
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--threads",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ""  # --quiet prints nothing
    return out


def test_train_victim_writes_a_loadable_checkpoint(victim_path: Path) -> None:
    assert victim_path.is_file()
    model, meta = load_checkpoint(victim_path)
    assert isinstance(model, Classifier)
    assert model.spec.name == "mlp"
    assert model.input_shape == (1, 8, 8)
    assert model.num_classes == 10
    assert meta["dataset"] == "digits"
    assert meta["training"]["epochs"] == 2
    assert 0.0 <= meta["test_acc"] <= 1.0
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def attack_args(victim_path: Path, *extra: str) -> list[str]:
    return [
        "attack",
        "--victim",
        str(victim_path),
        "--dataset",
        "digits",
        "--pool",
        "mnist8",
        "--budget",
        "200",
        "--epochs",
        "1",
        "--json",
        "--threads",
        "1",
        *extra,
    ]


def run_attack_json(victim_path: Path, *extra: str) -> dict[str, Any]:
    result = invoke(*attack_args(victim_path, *extra))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # one JSON row, nothing else on stdout
    row: dict[str, Any] = json.loads(lines[0])
    return row


def test_attack_prints_a_json_row(victim_path: Path, tmp_path: Path) -> None:
    row = run_attack_json(victim_path, "--out", str(tmp_path / "res"))
    assert row["queries_used"] == 200
    assert row["budget"] == 200
    assert row["attack"] == "knockoff"
    assert row["defense"] == "none"
    assert row["pool"] == "mnist8"
    for key in ("clone_acc", "clone_fidelity", "defender_acc"):
        assert 0.0 <= row[key] <= 1.0
    assert row["l1_mean"] == pytest.approx(0.0, abs=1e-6)  # undefended
    _, meta = load_checkpoint(victim_path)
    assert row["victim_acc"] == meta["test_acc"]
    assert row["defender_acc"] == pytest.approx(meta["test_acc"])  # no defense, no cost
    saved = json.loads((tmp_path / "res" / "result.json").read_text())
    assert saved == row


def test_attack_with_defense_params(victim_path: Path) -> None:
    row = run_attack_json(victim_path, "--defense", "topk", "--param", "k=2", "--label-only")
    assert row["defense"] == "topk"
    assert row["params"] == {"k": 2}
    assert row["attack"] == "knockoff-labels"
    assert row["queries_used"] == 200
    assert row["l1_mean"] > 0.0  # top-2 truncation distorts the answers
    assert 0.0 <= row["clone_acc"] <= 1.0


def test_attack_unknown_defense(victim_path: Path) -> None:
    assert_user_error(invoke(*attack_args(victim_path, "--defense", "nope")), "'nope'")


def test_attack_invalid_defense_parameter(victim_path: Path) -> None:
    assert_user_error(
        invoke(*attack_args(victim_path, "--defense", "topk", "--param", "k=0")),
        "topk",
        "k:",
        "got 0",
    )


def test_attack_malformed_param(victim_path: Path) -> None:
    assert_user_error(invoke(*attack_args(victim_path, "--param", "garbage")), "garbage")


def test_attack_dataset_other_than_the_victims_is_refused(victim_path: Path) -> None:
    args = attack_args(victim_path)
    args[args.index("digits")] = "mnist5k"
    assert_user_error(invoke(*args), "trained on 'digits'", "'mnist5k'")


def test_attack_unknown_pool(victim_path: Path) -> None:
    args = attack_args(victim_path)
    args[args.index("mnist8")] = "nope"
    assert_user_error(invoke(*args), "'nope'", "pool")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--attack", "steal"], "steal"),
        (["--output", "logits"], "--output"),
        (["--policy", "greedy"], "--policy"),
    ],
)
def test_attack_other_bad_names(victim_path: Path, extra: list[str], needle: str) -> None:
    assert_user_error(invoke(*attack_args(victim_path, *extra)), needle)


# ----------------------------------------------------------------------------- defense models


def test_surrogate_random_and_distilled(victim_path: Path, tmp_path: Path) -> None:
    victim, _ = load_checkpoint(victim_path)
    for kind, extra in (("random", []), ("distilled", ["--epochs", "1", "--schedule-epochs", "2"])):
        out = tmp_path / f"{kind}.pt"
        result = invoke(
            "surrogate",
            "--victim",
            str(victim_path),
            "--dataset",
            "digits",
            "--kind",
            kind,
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "1",
            *extra,
        )
        assert result.exit_code == 0, result.output
        sur, meta = load_checkpoint(out)
        assert meta["role"] == "surrogate" and meta["kind"] == kind
        assert sur.spec == victim.spec  # the victim's architecture
        # a surrogate is a different network from the victim
        x = torch.rand(4, 1, 8, 8)
        assert not torch.allclose(sur(x), victim(x))


def test_surrogate_distilled_on_a_pool(victim_path: Path, tmp_path: Path) -> None:
    result = invoke(
        "surrogate",
        "--victim",
        str(victim_path),
        "--pool",
        "noise",
        "--size",
        "200",
        "--epochs",
        "1",
        "--schedule-epochs",
        "1",
        "--out",
        str(tmp_path / "s.pt"),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.pt").is_file()


def test_surrogate_bad_kind(victim_path: Path, tmp_path: Path) -> None:
    result = invoke(
        "surrogate", "--victim", str(victim_path), "--kind", "nope", "--out", str(tmp_path / "s.pt")
    )
    assert_user_error(result, "--kind", "nope")


def test_prepare_defense_then_attack_with_saved_models(victim_path: Path, tmp_path: Path) -> None:
    models = tmp_path / "mad-models"
    result = invoke(
        "prepare-defense",
        "--victim",
        str(victim_path),
        "--defense",
        "mad",
        "--dataset",
        "digits",
        "-p",
        "eps=0.3",
        "--out",
        str(models),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert (models / "surrogate.pt").is_file()
    saved = json.loads((models / "defense.json").read_text())
    assert saved["defense"] == "mad" and saved["params"]["eps"] == 0.3
    row = run_attack_json(victim_path, "--defense", "mad", "--models", str(models))
    assert row["params"]["eps"] == 0.3  # taken from the saved manifest
    assert abs(row["l1_mean"] - 0.3) < 1e-4  # MAD spends its whole L1 budget
    # models saved for one defense are refused for another
    bad = invoke(*attack_args(victim_path, "--defense", "grad2", "--models", str(models)))
    assert_user_error(bad, "mad", "grad2")


def test_attack_builds_gradient_defense_models_itself(victim_path: Path) -> None:
    row = run_attack_json(victim_path, "--defense", "mad_argmax", "-p", "eps=2.0")
    assert row["defense"] == "mad_argmax"
    assert row["defender_acc"] == pytest.approx(
        load_checkpoint(victim_path)[1]["test_acc"], abs=1e-9
    )


def test_prepare_grad2_on_a_query_sample(victim_path: Path, tmp_path: Path) -> None:
    outs = {}
    for name, extra in (("own", []), ("log", ["--query-sample", "mnist8"])):
        out = tmp_path / name
        result = invoke(
            "prepare-defense",
            "--victim",
            str(victim_path),
            "--defense",
            "grad2",
            "--dataset",
            "digits",
            "-p",
            "target=min_ip",
            "--out",
            str(out),
            "--quiet",
            *extra,
        )
        assert result.exit_code == 0, result.output
        outs[name] = load_checkpoint(out / "surrogate.pt")[0]
    x = torch.rand(5, 1, 8, 8)
    # distilled on different data: different surrogates
    assert not torch.allclose(outs["own"](x), outs["log"](x))
    bad = invoke(
        "prepare-defense",
        "--victim",
        str(victim_path),
        "--defense",
        "grad2",
        "--dataset",
        "digits",
        "--out",
        str(tmp_path / "x"),
        "--query-sample",
        "nope",
    )
    assert_user_error(bad, "nope")
