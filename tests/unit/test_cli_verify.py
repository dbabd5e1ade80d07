"""``stealproof verify``: keygen (grouped keys) → calibrate (reference checkpoints, or reference
models trained on digits by the command) → check on digits-shaped (1×8×8) checkpoints, and every
wrong input answered with one line on stderr and exit status 2."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner, Result

import stealproof.ownership as ownership
from stealproof.cli import app
from stealproof.models import Classifier, create_model, save_checkpoint
from stealproof.ownership import KeySet, load_key_set

runner = CliRunner()
K = 10
N = 60


def invoke(*args: str, **env: str) -> Result:
    return runner.invoke(app, list(args), env=env or None)


def user_error(result: Result, *needles: str) -> str:
    """Exit 2, one stderr line starting with 'error:' that contains every needle, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def mlp(seed: int, classes: int = K) -> Classifier:
    torch.manual_seed(seed)
    return create_model("mlp", image_size=(8, 8), num_classes=classes, hidden=(32,))


def memorize(key: KeySet, seed: int = 0) -> Classifier:
    """An MLP trained to answer the key labels: what a perfectly watermarked clone does."""
    model = mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(key.images), key.labels).backward()
        opt.step()
    model.eval()
    return model


@dataclass
class Files:
    key: Path
    thief: Path
    refs: list[Path]
    other_key: Path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    key = tmp_path / "owner.key"
    r = invoke(
        "verify",
        "keygen",
        "--out",
        str(key),
        "--n",
        str(N),
        "--shape",
        "1,8,8",
        "--classes",
        str(K),
        "--seed",
        "5",
    )
    assert r.exit_code == 0, r.output
    thief = memorize(load_key_set(key))
    acc = float(
        (thief(load_key_set(key).images).argmax(1) == load_key_set(key).labels).float().mean()
    )
    assert acc >= 0.95
    refs = [save_checkpoint(mlp(s), tmp_path / f"ref{s}.pt") for s in (1, 2)]
    other = tmp_path / "other.key"
    assert (
        invoke(
            "verify",
            "keygen",
            "--out",
            str(other),
            "--n",
            str(N),
            "--shape",
            "1,8,8",
            "--seed",
            "6",
        ).exit_code
        == 0
    )
    return Files(key, save_checkpoint(thief, tmp_path / "thief.pt"), refs, other)


def check_json(*args: str) -> dict[str, Any]:
    r = invoke("verify", "check", *args, "--json")
    assert r.exit_code == 0, r.output
    return dict(json.loads(r.stdout))


def test_keygen_writes_a_private_key_and_never_prints_the_seed(tmp_path: Path) -> None:
    out = tmp_path / "k.key"
    r = invoke("verify", "keygen", "--out", str(out), "--n", "30", "--shape", "1,8,8")
    assert r.exit_code == 0, r.output
    key = load_key_set(out)
    assert key.n == 30 and key.input_shape == (1, 8, 8) and key.num_classes == 10
    assert key.num_groups == 6 and key.metadata["generator"] == "blobs"
    assert "in 6 groups" in r.stdout and "smallest possible p-value 1e-06" in r.stdout
    assert key.seed is not None and str(key.seed) not in r.output
    assert key.fingerprint in r.stdout and "keep this file secret" in r.stdout
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    # a fresh secret each time
    r2 = invoke(
        "verify", "keygen", "--out", str(tmp_path / "k2.key"), "--n", "30", "--shape", "1,8,8"
    )
    assert r2.exit_code == 0 and load_key_set(tmp_path / "k2.key").seed != key.seed
    # the owner's evidence is not overwritten by accident
    user_error(
        invoke("verify", "keygen", "--out", str(out), "--shape", "1,8,8"), "exists", "--force"
    )
    assert load_key_set(out).fingerprint == key.fingerprint
    assert (
        invoke("verify", "keygen", "--out", str(out), "--shape", "1,8,8", "--force").exit_code == 0
    )
    assert load_key_set(out).fingerprint != key.fingerprint


def test_keygen_with_a_victim_takes_its_shape_and_avoids_its_answers(tmp_path: Path) -> None:
    victim = save_checkpoint(mlp(0), tmp_path / "victim.pt")
    out = tmp_path / "k.key"
    r = invoke(
        "verify", "keygen", "--out", str(out), "--n", "50", "--victim", str(victim), "--json"
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["shape"] == [1, 8, 8] and doc["avoids_victim_top1"] is True
    assert doc["groups"] == 6 and doc["min_p"] == pytest.approx(9.0**-6)
    key = load_key_set(out)
    top = mlp(0)(key.images).argmax(1)
    for g in range(6):
        assert int(key.avoid[g]) == int(torch.bincount(top[key.groups == g], minlength=K).argmax())
    assert bool((key.group_labels != key.avoid).all())
    user_error(
        invoke(
            "verify",
            "keygen",
            "--out",
            str(tmp_path / "x.key"),
            "--victim",
            str(victim),
            "--classes",
            "5",
        ),
        "--classes",
        "victim",
    )


def test_keygen_groups_and_kinds(tmp_path: Path) -> None:
    out = tmp_path / "k.key"
    args = ("verify", "keygen", "--out", str(out), "--shape", "1,8,8", "--seed", "1")
    r = invoke(*args, "--n", "31", "--groups", "4", "--kind", "shapes", "--json")
    assert r.exit_code == 0, r.output
    key = load_key_set(out)
    assert key.group_sizes.tolist() == [8, 8, 8, 7] and key.metadata["generator"] == "shapes"
    assert json.loads(r.stdout)["min_p"] == pytest.approx(1e-4)
    # too few groups for the default alpha: said at once
    r = invoke(*args, "--n", "30", "--groups", "3", "--force")
    assert r.exit_code == 0 and "cannot show theft at the default alpha" in r.stdout
    user_error(invoke(*args, "--n", "5", "--groups", "6", "--force"), "--groups", "--n = 5")
    user_error(invoke(*args, "--groups", "0", "--force"), "--groups")
    user_error(invoke(*args, "--kind", "stripes", "--force"), "--kind", "blobs")


def test_keygen_calibrate_check_catches_the_clone_only(files: Files) -> None:
    r = invoke(
        "verify",
        "calibrate",
        "--key",
        str(files.key),
        "--reference",
        str(files.refs[0]),
        "--reference",
        str(files.refs[1]),
    )
    assert r.exit_code == 0, r.output
    cal_path = Path(str(files.key) + ".calibration.json")
    cal = json.loads(cal_path.read_text())
    assert cal["key"] == load_key_set(files.key).fingerprint and len(cal["models"]) == 2
    assert cal["groups"] == 6 and all(0 < m["p_value"] <= 1 for m in cal["models"])

    caught = check_json("--key", str(files.key), "--suspect", str(files.thief))
    assert caught["stolen"] is True and caught["p_value"] == pytest.approx(1e-6)
    assert caught["p_value"] == pytest.approx(caught["min_p"])
    assert caught["matches"] >= 57 and caught["n"] == N and caught["groups_matched"] == 6
    assert caught["calibration"] == str(cal_path)  # found next to the key
    assert caught["reference_p_values"] == [m["p_value"] for m in cal["models"]]
    assert caught["rows_sent"] is None
    plain = check_json(
        "--key", str(files.key), "--suspect", str(files.thief), "--calibration", str(cal_path)
    )
    assert plain["p_value"] == caught["p_value"]
    for ref in files.refs:
        innocent = check_json("--key", str(files.key), "--suspect", str(ref))
        assert innocent["stolen"] is False and innocent["p_value"] > 1e-3

    # the human form states every number and the decision in words
    text = invoke("verify", "check", "--key", str(files.key), "--suspect", str(files.thief)).stdout
    for word in (
        f"{N} inputs 1x8x8 in 6 groups",
        "matches      T = ",
        "of 6 groups",
        "p-value      1.00e-06 (exact test",
        "floor        1.00e-06",
        "references   2 independent models",
        "context only",
        "ref1.pt: match rate",
        "decision     STOLEN at alpha = 0.001",
    ):
        assert word in text, word
    # `verify --key --suspect` is the same check
    direct = invoke("verify", "--key", str(files.key), "--suspect", str(files.refs[0]))
    assert direct.exit_code == 0 and "NOT SHOWN at alpha = 0.001" in direct.stdout


def test_calibrate_trains_reference_models_on_digits(files: Files, tmp_path: Path) -> None:
    cal_path = tmp_path / "trained.json"
    r = invoke(
        "verify",
        "calibrate",
        "--key",
        str(files.key),
        "--train",
        "2",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--reference",
        str(files.refs[0]),
        "--out",
        str(cal_path),
    )
    assert r.exit_code == 0, r.output
    assert "training 2 reference models (mlp on digits, 1 epochs, seeds 1..2)" in r.stderr
    assert "reference 2/2 (seed 2): test accuracy" in r.stderr
    names = [m["name"] for m in json.loads(cal_path.read_text())["models"]]
    assert names == [str(files.refs[0]), "mlp-digits-seed1", "mlp-digits-seed2"]
    doc = check_json(
        "--key", str(files.key), "--suspect", str(files.thief), "--calibration", str(cal_path)
    )
    assert doc["stolen"] is True and doc["reference_names"] == names
    key = str(files.key)
    user_error(invoke("verify", "calibrate", "--key", key, "--train", "2"), "--dataset")
    user_error(
        invoke("verify", "calibrate", "--key", key, "--dataset", "digits"), "only with --train"
    )
    user_error(
        invoke("verify", "calibrate", "--key", key, "--train", "0", "--dataset", "digits"),
        "--train",
    )
    big = tmp_path / "big.key"
    assert invoke("verify", "keygen", "--out", str(big), "--n", "12", "--seed", "1").exit_code == 0
    user_error(
        invoke("verify", "calibrate", "--key", str(big), "--train", "1", "--dataset", "digits"),
        "--dataset: digits has (1, 8, 8) images",
    )


def test_check_without_calibration(files: Files) -> None:
    doc = check_json("--key", str(files.key), "--suspect", str(files.thief), "--alpha", "0.05")
    assert doc["calibration"] is None and doc["reference_names"] is None
    assert doc["alpha"] == 0.05 and doc["stolen"] is True and doc["groups"] == 6
    text = invoke("verify", "check", "--key", str(files.key), "--suspect", str(files.thief)).stdout
    assert "references   none" in text


def test_an_http_suspect_is_sent_the_key_only(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    thief = memorize(load_key_set(files.key))

    class Remote:
        input_shape = (1, 8, 8)

        def __init__(self) -> None:
            self.queries_used = 0
            self.closed = False

        def query(self, x: Tensor) -> Tensor:
            self.queries_used += int(x.shape[0])
            return torch.softmax(thief(x), dim=1).detach()

        def close(self) -> None:
            self.closed = True

    boxes: list[Remote] = []

    def fake_load(spec: str, *, api_key: str | None = None, model: str | None = None) -> Remote:
        assert spec == "http://suspect.test" and api_key == "sk" and model == "m"
        boxes.append(Remote())
        return boxes[-1]

    monkeypatch.setattr(ownership, "load_suspect", fake_load)
    doc = check_json(
        "--key",
        str(files.key),
        "--suspect",
        "http://suspect.test",
        "--api-key",
        "sk",
        "--model",
        "m",
    )
    assert doc["rows_sent"] == N and boxes[0].queries_used == N and boxes[0].closed
    assert doc["stolen"] is True
    r = invoke(
        "verify",
        "check",
        "--key",
        str(files.key),
        "--suspect",
        "http://suspect.test",
        "--model",
        "m",
        STEALPROOF_API_KEY="sk",
    )
    assert r.exit_code == 0, r.output
    assert f"rows sent    {N} (the key inputs only)" in r.stdout


def test_wrong_inputs_give_one_line_and_exit_2(files: Files, tmp_path: Path) -> None:
    key, thief = str(files.key), str(files.thief)
    user_error(
        invoke("verify", "check", "--key", str(tmp_path / "none.key"), "--suspect", thief),
        "key file not found",
    )
    user_error(
        invoke("verify", "check", "--key", thief, "--suspect", thief), "not a stealproof key"
    )
    user_error(
        invoke("verify", "check", "--key", key, "--suspect", str(tmp_path / "none.pt")),
        "checkpoint file not found",
    )
    for alpha in ("0", "1", "1.5", "-0.01"):
        user_error(
            invoke("verify", "check", "--key", key, "--suspect", thief, "--alpha", alpha), "alpha"
        )
    for shape in ("1,8", "a,b,c", "1,0,8", "1,8,8,8"):
        user_error(
            invoke("verify", "keygen", "--out", str(tmp_path / "s.key"), "--shape", shape),
            "--shape",
            "C,H,W",
        )
    assert not (tmp_path / "s.key").exists()
    five = save_checkpoint(mlp(0, classes=5), tmp_path / "five.pt")
    user_error(
        invoke("verify", "check", "--key", key, "--suspect", str(five)),
        "answers 5 classes, the key has 10",
    )
    big = save_checkpoint(create_model("mlp", image_size=(9, 9), num_classes=K), tmp_path / "b.pt")
    user_error(invoke("verify", "check", "--key", key, "--suspect", str(big)), "expects (1, 9, 9)")
    user_error(
        invoke("verify", "check", "--key", key, "--suspect", "http://x.test", "--model", "m"),
        "--api-key",
    )
    user_error(
        invoke("verify", "check", "--key", key, "--suspect", thief, "--api-key", "sk"),
        "only for a suspect given as a URL",
    )
    user_error(invoke("verify", "check", "--suspect", thief), "--key")


def test_a_calibration_of_another_key_is_refused(files: Files, tmp_path: Path) -> None:
    cal = tmp_path / "other.json"
    r = invoke(
        "verify",
        "calibrate",
        "--key",
        str(files.other_key),
        "--reference",
        str(files.refs[0]),
        "--out",
        str(cal),
    )
    assert r.exit_code == 0, r.output
    other_fp = load_key_set(files.other_key).fingerprint
    user_error(
        invoke(
            "verify",
            "check",
            "--key",
            str(files.key),
            "--suspect",
            str(files.thief),
            "--calibration",
            str(cal),
        ),
        f"made for key {other_fp}",
        "calibrate again",
    )
    user_error(invoke("verify", "calibrate", "--key", str(files.key)), "--reference", "--train")


def test_a_tampered_key_is_refused(files: Files) -> None:
    raw = bytearray(files.key.read_bytes())
    at = raw.find(load_key_set(files.key).images.numpy().tobytes())
    raw[at + 7] ^= 0x10
    files.key.write_bytes(bytes(raw))
    line = user_error(
        invoke("verify", "check", "--key", str(files.key), "--suspect", str(files.thief)),
        "checksum mismatch",
    )
    assert "modified or is corrupt" in line


def test_collect_turns_label_watermark_records_into_a_key(tmp_path: Path) -> None:
    from stealproof.defenses.label_watermark import LabelWatermark
    from stealproof.oracle import victim_posteriors

    victim = mlp(3)
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y, logits = victim_posteriors(victim, x)
    rec = tmp_path / "records"
    d = LabelWatermark.prepare(victim, x, fpr=0.1, seed=11, record_dir=str(rec))
    served = d(x, y, logits)
    out = tmp_path / "owner.key"
    r = invoke("verify", "collect", "--records", str(rec), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    relabelled = int((served.argmax(1) != y.argmax(1)).sum())
    assert info["n"] == relabelled and info["record_files"] == 1
    key = load_key_set(out)
    assert key.n == relabelled and key.num_groups == info["groups"]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    # the victim itself never answers the secret labels: not accused
    save_checkpoint(victim, tmp_path / "victim.pt")
    check = check_json("--key", str(out), "--suspect", str(tmp_path / "victim.pt"))
    assert check["p_value"] == 1.0
    # wrong input: one line each
    user_error(invoke("verify", "collect", "--records", str(rec), "--out", str(out)), "exists")
    user_error(
        invoke("verify", "collect", "--records", str(tmp_path / "none"), "--out", str(out) + "2"),
        "not a directory",
    )
    user_error(
        invoke("verify", "collect", "--records", str(tmp_path), "--out", str(out) + "3"),
        "no label_watermark records",
    )
    user_error(
        invoke(
            "verify", "collect", "--records", str(rec), "--out", str(out) + "4", "--max-keys", "0"
        ),
        "--max-keys",
    )
    r = invoke(
        "verify", "collect", "--records", str(rec), "--out", str(out) + "5", "--max-keys", "5"
    )
    assert r.exit_code == 0 and "5 relabelled queries" in r.stdout, r.output
