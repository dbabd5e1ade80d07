"""Reliability of the library surface (issue 11): default configs that validate, strict
(finite) parameters, the black box's and the policy's argument checks, checkpoints and guardian
bundles with the right format but wrong contents, bundles bound to their victim, the
``guardian train`` up-front checks, MAD's accuracy cliff and the detector catalogue."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from stealproof import defenses
from stealproof._names import describe_fields
from stealproof.defenses.base import Defense
from stealproof.defenses.mad import MAD, flip_budget, interpolation_alpha, mad_cliff_eps
from stealproof.detectors import Detection, GuardianBundle, GuardianDetector, PradaDetector
from stealproof.detectors import available as available_detectors
from stealproof.detectors import guardian as guardian_mod
from stealproof.detectors.base import loads_state
from stealproof.detectors.ddpm import DDPMConfig
from stealproof.detectors.gan import GANConfig
from stealproof.detectors.gradient import TransformConfig, TransformNet
from stealproof.detectors.guardian import SCENARIO_OVERRIDES, GuardianConfig, guardian_config
from stealproof.detectors.prada import PradaConfig
from stealproof.errors import (
    ArtifactMismatchError,
    ConfigError,
    DataFileError,
    InputValidationError,
    StealproofError,
    UnknownNameError,
)
from stealproof.fingerprint import make_stamp, model_fingerprint
from stealproof.models import Classifier, create_model, load_checkpoint, save_checkpoint
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy, PolicyConfig

K = 10


def _victim(seed: int = 0, **kwargs: Any) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("mlp", image_size=(8, 8), num_classes=K, hidden=(32,), **kwargs)


def _images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _float_fields(config: type[BaseModel]) -> list[str]:
    return [n for n, f in config.model_fields.items() if "float" in str(f.annotation)]


# ----------------------------------------------------------------------------- 0. defaults


@pytest.mark.parametrize("name", defenses.available())
def test_every_registered_defense_default_and_demo_config_validates(name: str) -> None:
    cls = defenses.get_defense_class(name)
    cls.Config()
    cls.Config(**cls.demo_params)
    cls.make_config(**cls.demo_params)


@pytest.mark.parametrize(
    "config", [PradaConfig, PolicyConfig, GuardianConfig, TransformConfig, GANConfig, DDPMConfig]
)
def test_detector_and_policy_default_configs_validate(config: type[BaseModel]) -> None:
    config()


@pytest.mark.parametrize("scenario", sorted(SCENARIO_OVERRIDES))
def test_guardian_scenario_configs_validate(scenario: str) -> None:
    assert isinstance(guardian_config(scenario), GuardianConfig)


def test_default_detectors_and_policy_build() -> None:
    DetectionPolicy([PradaDetector()])


# ----------------------------------------------------------------------------- non-finite


def _configs_with_floats() -> list[tuple[str, type[BaseModel], str]]:
    out = []
    for name in defenses.available():
        cfg = defenses.get_defense_class(name).Config
        out += [(name, cfg, f) for f in _float_fields(cfg)]
    for cfg in (PradaConfig, PolicyConfig, GuardianConfig, TransformConfig, GANConfig, DDPMConfig):
        out += [(cfg.__name__, cfg, f) for f in _float_fields(cfg)]
    return out


@pytest.mark.parametrize(("owner", "config", "field"), _configs_with_floats())
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_parameters_are_refused(
    owner: str, config: type[BaseModel], field: str, value: float
) -> None:
    extra: dict[str, Any] = {}
    if config is PolicyConfig and field == "ratio":
        extra = {"window": 10}
    with pytest.raises(ValidationError, match=field):
        config(**{field: value, **extra})


def test_non_finite_defense_parameter_is_a_named_user_error() -> None:
    # `attack --json` printed "eps_z": Infinity; now the value never gets that far
    with pytest.raises(InputValidationError, match=r"noise: eps_z: .*finite"):
        defenses.create("noise", eps_z=math.inf)
    with pytest.raises(InputValidationError, match=r"mad: eps: .*finite"):
        defenses.create("mad", eps=math.inf, engine="identity")
    d = defenses.create("noise", eps_z=1e6)  # large but finite is fine, and strict JSON
    json.dumps(d.params, allow_nan=False)


# ----------------------------------------------------------------------------- 9. black box


def test_float64_and_float16_queries_are_answered_like_float32() -> None:
    v = _victim()
    x = _images(16)
    want = BlackBox(v).query(x)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        got = BlackBox(v, "reverse_sigmoid").query(xd)
        assert got.dtype == torch.float32
        ref = BlackBox(v, "reverse_sigmoid").query(xd.float())
        torch.testing.assert_close(got, ref)
    torch.testing.assert_close(BlackBox(v).query(x.double()), want)


def test_float64_query_through_a_defense_with_a_surrogate() -> None:
    v = _victim()
    d = MAD.prepare(v, _images(32), eps=0.3)
    out = BlackBox(v, d).query(_images(8).double())
    assert out.shape == (8, K) and out.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_float_queries_are_refused_by_name(dtype: torch.dtype) -> None:
    box = BlackBox(_victim(), budget=10)
    with pytest.raises(InputValidationError, match=r"x: expected floating-point pixels"):
        box.query(torch.zeros(2, 1, 8, 8, dtype=dtype))
    assert box.queries_used == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 2.5}, r"budget: expected a non-negative row count .*got float 2.5"),
        ({"budget": "10"}, r"budget: expected .*got str '10'"),
        ({"budget": True}, r"budget: expected .*got bool True"),
        ({"budget": -1}, r"budget: expected .*got -1"),
        ({"batch_size": 0}, r"batch_size: expected an int ≥ 1, got 0"),
        ({"batch_size": 1.5}, r"batch_size: expected an int ≥ 1"),
        ({"top_k": 0}, r"top_k: expected an int ≥ 1, got 0"),
        ({"output": "logits"}, r"output: expected probs, topk or label"),
        ({"client_id": ""}, r"client_id: expected a non-empty string"),
        ({"defense": 3}, r"defense: expected a Defense, a registered defense name or None"),
        ({"defense": lambda y: y}, r"defense: expected a Defense"),
    ],
)
def test_black_box_arguments_are_checked_in_the_constructor(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InputValidationError, match=match):
        BlackBox(_victim(), **kwargs)


def test_black_box_accepts_numpy_ints_and_a_defense_name() -> None:
    v = _victim()
    box = BlackBox(v, "rounding", budget=np.int64(20), batch_size=np.int32(3))
    assert box.budget == 20 and isinstance(box.budget, int)
    x = _images(7)
    torch.testing.assert_close(box.query(x), BlackBox(v, defenses.create("rounding")).query(x))


def test_black_box_refuses_unknown_names_and_defenses_that_need_models() -> None:
    with pytest.raises(UnknownNameError, match=r"defense: unknown defense 'roundin'.*rounding"):
        BlackBox(_victim(), defense="roundin")
    with pytest.raises(ConfigError, match=r"defense: mad: .*needs a surrogate.*MAD.prepare"):
        BlackBox(_victim(), defense="mad")


def test_policy_arguments_are_checked() -> None:
    p = PradaDetector()
    assert list(DetectionPolicy(p).detectors) == ["prada"]  # one detector is enough
    with pytest.raises(InputValidationError, match=r"detectors: expected a Detector"):
        DetectionPolicy("prada")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match=r"detectors: expected Detector objects"):
        DetectionPolicy([p, "guardian"])  # type: ignore[list-item]
    with pytest.raises(InputValidationError, match=r"detectors: keys must be strings"):
        DetectionPolicy({1: p})  # type: ignore[dict-item]
    with pytest.raises(InputValidationError, match=r"config: expected a PolicyConfig"):
        DetectionPolicy([p], config={"max_flagged": 3})  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match=r"deceptive: expected a Defense"):
        DetectionPolicy([p], deceptive=0.5)  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match=r"defense: unknown defense"):
        DetectionPolicy([p], defense="nope")
    with pytest.raises(InputValidationError, match=r"policy: max_flagged"):
        DetectionPolicy([p], max_flagged=math.nan)
    named = DetectionPolicy([p], defense="rounding", deceptive="top1")
    assert named.defense.name == "rounding" and named.deceptive.name == "top1"


# ----------------------------------------------------------------------------- 7. checkpoints


def _payload(model: Classifier, tmp_path: Path) -> dict[str, Any]:
    path = save_checkpoint(model, tmp_path / "ok.pt", {"acc": 0.9})
    payload = torch.load(path, weights_only=True)
    assert isinstance(payload, dict)
    return payload


def _write(tmp_path: Path, payload: dict[str, Any], name: str = "bad.pt") -> Path:
    p = tmp_path / name
    torch.save(payload, p)
    return p


def test_checkpoint_with_another_architectures_weights_names_the_keys(tmp_path: Path) -> None:
    payload = _payload(_victim(), tmp_path)
    lenet = create_model("lenet", image_size=(8, 8), num_classes=K)
    payload["state_dict"] = lenet.state_dict()
    p = _write(tmp_path, payload)
    with pytest.raises(DataFileError) as info:
        load_checkpoint(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: the weights do not fit the model for mlp")
    assert "missing" in msg and "unexpected" in msg and "\n" not in msg


def test_checkpoint_with_another_class_count_names_the_mis_shaped_keys(tmp_path: Path) -> None:
    payload = _payload(_victim(), tmp_path)
    kwargs = json.loads(payload["kwargs_json"])
    payload["kwargs_json"] = json.dumps({**kwargs, "num_classes": 5})
    p = _write(tmp_path, payload)
    with pytest.raises(
        DataFileError, match=r"mis-shaped \(saved vs expected: .*\(10, 32\) vs \(5, 32\)"
    ):
        load_checkpoint(p)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"meta_json": "[1, 2]"}, r"meta_json: expected a JSON object, got list"),
        ({"meta_json": "{oops"}, r"meta_json: not valid JSON"),
        ({"meta_json": 3}, r"meta_json: expected str, got int"),
        ({"kwargs_json": None}, r"missing key 'kwargs_json'"),
        ({"kwargs_json": "[1]"}, r"kwargs_json: expected a JSON object, got list"),
        ({"model": None}, r"missing key 'model'"),
        ({"model": 7}, r"model: expected str, got int"),
        ({"model": "transformer"}, r"unknown model 'transformer'"),
        ({"kwargs_json": json.dumps({"hidden": [-3]})}, r"hidden: expected positive ints"),
        ({"kwargs_json": json.dumps({"colour": 1})}, r"model 'mlp'"),
        ({"state_dict": None}, r"missing key 'state_dict'"),
        ({"state_dict": [1, 2]}, r"state_dict: expected dict, got list"),
    ],
)
def test_checkpoint_with_wrong_contents_is_a_data_file_error(
    tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    payload = _payload(_victim(), tmp_path)
    for key, value in change.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    p = _write(tmp_path, payload)
    with pytest.raises(DataFileError, match=match) as info:
        load_checkpoint(p)
    assert str(info.value).startswith(str(p))


def test_checkpoint_state_entry_that_is_not_a_tensor(tmp_path: Path) -> None:
    payload = _payload(_victim(), tmp_path)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = 1.5
    with pytest.raises(DataFileError, match=rf"not tensors \({key}\)"):
        load_checkpoint(_write(tmp_path, payload))


def _failing_save(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
    Path(f).write_bytes(b"half a checkpoint")
    raise OSError(28, "No space left on device")


def test_save_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "v.pt"
    save_checkpoint(_victim(0), target, {"round": 1})
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(_victim(1), target, {"round": 2})
    assert target.read_bytes() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["v.pt"]  # no temporary file left
    with pytest.raises(OSError):
        save_checkpoint(_victim(1), tmp_path / "new.pt")
    assert sorted(os.listdir(tmp_path)) == ["v.pt"]


def test_save_checkpoint_refuses_a_model_without_spec(tmp_path: Path) -> None:
    with pytest.raises(InputValidationError, match="create_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- guardian bundles


def _bundle(victim: Classifier | None = None) -> GuardianBundle:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TransformNet((1, 8, 8), width=4).eval()
        det = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=2, hidden=(8,))
    stamp = None if victim is None else make_stamp(victim, {"test": 1})
    return GuardianBundle(net, {"dfme": det.eval()}, 0.5, meta={"n": 1}, stamp=stamp)


def test_bundle_for_another_victim_is_refused_naming_both(tmp_path: Path) -> None:
    a, b = _victim(0), _victim(1)
    path = _bundle(a).save(tmp_path / "g.pt")
    GuardianDetector.load(path, victim=a)  # its own victim: fine
    GuardianBundle.load(path, victim=model_fingerprint(a))
    GuardianBundle.load(path)  # no victim: loads for inspection
    with pytest.raises(ArtifactMismatchError) as info:
        GuardianDetector.load(path, victim=b)
    msg = str(info.value)
    assert str(path) in msg and model_fingerprint(a) in msg and model_fingerprint(b) in msg
    assert "guardian train" in msg


def test_bundle_without_a_stamp_is_refused_when_a_victim_is_given(tmp_path: Path) -> None:
    path = _bundle(None).save(tmp_path / "old.pt")
    assert GuardianBundle.load(path).stamp is None
    with pytest.raises(ArtifactMismatchError, match=r"no fingerprint of the victim.*retrain"):
        GuardianBundle.load(path, victim=_victim())


def test_train_guardian_records_the_victims_stamp(monkeypatch: pytest.MonkeyPatch) -> None:
    v = _victim(3)

    def fake_fit(*args: Any, **kwargs: Any) -> tuple[GuardianBundle, Any]:
        from stealproof.detectors.guardian import GuardianReport

        report = GuardianReport({}, {}, {}, {}, 0.0, 0.0, 0.5, 0.01, {}, {})
        return _bundle(None), report

    monkeypatch.setattr(guardian_mod, "draw_sources", lambda *a, **k: {})
    monkeypatch.setattr(guardian_mod, "fit_guardian", fake_fit)
    cfg = GuardianConfig()
    bundle, _ = guardian_mod.train_guardian(v, _images(100), cfg)
    assert bundle.stamp == make_stamp(v, cfg.model_dump(mode="json"))
    assert bundle.stamp["victim"] == model_fingerprint(v)


def test_bundle_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError):
        _bundle(None).save(tmp_path / "g.pt")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"meta_json": "[]"}, r"meta_json: expected a JSON object"),
        ({"stamp_json": "[1]"}, r"stamp_json: expected a JSON object or null"),
        ({"threshold": None}, r"not a complete guardian bundle \(missing 'threshold'\)"),
        ({"detectors": "x"}, r"malformed guardian bundle"),
        ({"score_scale": torch.ones(5)}, r"score_scale: expected 1 values"),
    ],
)
def test_bundle_with_wrong_contents_is_a_data_file_error(
    tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    path = _bundle(None).save(tmp_path / "g.pt")
    payload = torch.load(path, weights_only=True)
    for key, value in change.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    torch.save(payload, path)
    with pytest.raises(DataFileError, match=match):
        GuardianBundle.load(path)


def test_bundle_with_mismatched_detector_weights_names_the_part(tmp_path: Path) -> None:
    path = _bundle(None).save(tmp_path / "g.pt")
    payload = torch.load(path, weights_only=True)
    payload["detectors"][0]["kwargs_json"] = json.dumps(
        {"in_channels": 1, "image_size": [8, 8], "num_classes": 2, "hidden": [16]}
    )
    torch.save(payload, path)
    with pytest.raises(DataFileError, match=r"detector\[dfme\]: the weights do not fit"):
        GuardianBundle.load(path)
    payload["detectors"][0]["kwargs_json"] = json.dumps(
        {"in_channels": 1, "image_size": [8, 8], "num_classes": 2, "hidden": [8]}
    )
    payload["transform"]["spec_json"] = json.dumps({"image_shape": [1, 8, 8], "width": 8})
    torch.save(payload, path)
    with pytest.raises(DataFileError, match=r"transform: the weights do not fit"):
        GuardianBundle.load(path)


# ----------------------------------------------------------------------------- guardian CLI


def _no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any training step fail loudly, so a test sees whether a check ran before work."""
    calls: list[str] = []

    def spy(name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} ran before the argument check")

        return fail

    import stealproof.experiment as experiment

    monkeypatch.setattr(experiment, "train_victim", spy("train_victim"))
    monkeypatch.setattr(guardian_mod, "train_guardian", spy("train_guardian"))
    monkeypatch.setattr("stealproof.data.load_dataset", spy("load_dataset"))
    return calls


def _guardian_train(args: list[str]) -> Any:
    from typer.testing import CliRunner

    from stealproof.cli.guardian import app

    return CliRunner().invoke(app, ["train", "--quiet", *args])


@pytest.mark.parametrize(
    ("make_out", "match"),
    [
        (lambda d: d, r"--out: .* is a directory; expected a file path"),
        (lambda d: (d / "f.txt", (d / "f.txt").write_text("x"))[0] / "g.pt", r"is a file, not"),
    ],
)
def test_guardian_train_checks_out_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_out: Any, match: str
) -> None:
    calls = _no_work(monkeypatch)
    result = _guardian_train(["--out", str(make_out(tmp_path))])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    import re

    assert re.search(match, result.stderr), result.stderr
    assert calls == []


def test_guardian_train_checks_the_device_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_work(monkeypatch)
    result = _guardian_train(["--out", str(tmp_path / "g.pt"), "--device", "foo"])
    assert result.exit_code == 2, result.output
    assert "--device: 'foo' is not a device name" in result.stderr
    assert "available here: cpu" in result.stderr
    assert calls == [] and not (tmp_path / "g.pt").exists()


def test_guardian_train_refuses_a_victim_of_another_shape_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stealproof.experiment as experiment

    calls: list[str] = []
    monkeypatch.setattr(experiment, "train_victim", lambda *a, **k: calls.append("tv"))
    monkeypatch.setattr(guardian_mod, "train_guardian", lambda *a, **k: calls.append("tg"))
    ckpt = save_checkpoint(
        create_model("mlp", image_size=(28, 28), num_classes=10, hidden=(8,)), tmp_path / "v.pt"
    )
    result = _guardian_train(["--out", str(tmp_path / "g.pt"), "--victim", str(ckpt)])
    assert result.exit_code == 2, result.output
    assert "--victim:" in result.stderr and "(1, 28, 28)" in result.stderr
    assert "Traceback" not in result.output
    assert calls == []


def test_guardian_train_refuses_a_broken_victim_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    bad = tmp_path / "v.pt"
    torch.save({"format": "stealproof-checkpoint", "version": 1, "model": "mlp"}, bad)
    monkeypatch.setattr("stealproof.data.load_dataset", lambda *a, **k: None)
    result = _guardian_train(["--out", str(tmp_path / "g.pt"), "--victim", str(bad)])
    assert result.exit_code == 2, result.output
    assert f"{bad}: missing key" in result.stderr and "Traceback" not in result.output


# ----------------------------------------------------------------------------- 15. MAD cliff


def _confident(p: float, k: int = K, rows: int = 4) -> Tensor:
    rest = (1.0 - p) / (k - 1)
    y = torch.full((rows, k), rest, dtype=torch.float64)
    y[:, 0] = p
    return y


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99, 0.999])
def test_mad_cliff_of_a_confident_victim_is_2p_over_1_plus_p(p: float) -> None:
    y = _confident(p)
    y_j = (1 - p) / (K - 1)
    want = 2 * (1 - y_j) * (p - y_j) / (1 - y_j + p)
    assert mad_cliff_eps(y) == pytest.approx(want, rel=1e-9)
    assert mad_cliff_eps(_confident(0.9999)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("norm", ["l1", "l2", "kl"])
def test_flip_budget_is_where_some_vertex_overtakes_the_top_class(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.softmax(3 * torch.randn(64, K, generator=g, dtype=torch.float64), dim=1)
    budget = flip_budget(y, norm)  # type: ignore[arg-type]
    top = y.argmax(dim=1)
    eye = torch.eye(K, dtype=torch.float64)

    def overturned(scale: float) -> Tensor:
        out = torch.zeros(64, dtype=torch.bool)
        for j in range(K):
            target = eye[j].expand(64, K)
            alpha = torch.stack(
                [
                    interpolation_alpha(
                        y[i : i + 1], target[i : i + 1], float(budget[i]) * scale, norm, iters=80
                    )[0]
                    for i in range(64)
                ]
            )
            moved = (1 - alpha[:, None]) * y + alpha[:, None] * target
            out |= (moved.argmax(dim=1) != top) & (top != j)
        return out

    assert not bool(overturned(0.999).any())
    assert bool(overturned(1.001).all())


def test_mad_cliff_rejects_bad_input() -> None:
    with pytest.raises(InputValidationError, match="clean_posteriors"):
        mad_cliff_eps(torch.ones(3))
    with pytest.raises(InputValidationError, match="quantile"):
        mad_cliff_eps(_confident(0.9), quantile=0.0)


def _confident_victim() -> Classifier:
    v = _victim(0)
    with torch.no_grad():  # a sharp head makes the victim confident (top-1 ≈ 0.93 typically)
        v.head().weight.mul_(40)
        v.head().bias.mul_(40)
    return v.eval()


def test_mad_warns_past_the_cliff_and_the_cliff_is_real(caplog: pytest.LogCaptureFixture) -> None:
    from stealproof.oracle import victim_posteriors

    v, x = _confident_victim(), _images(300, seed=1)
    clean, _ = victim_posteriors(v, x)
    cliff = mad_cliff_eps(clean)
    with caplog.at_level(logging.WARNING, logger="stealproof.defenses.mad"):
        safe = MAD.prepare(v, x, eps=0.8 * cliff)
    assert isinstance(safe, MAD) and safe.cliff_eps == pytest.approx(cliff)
    assert not caplog.records
    kept_safe = float((safe(x, clean).argmax(1) == clean.argmax(1)).float().mean())
    with caplog.at_level(logging.WARNING, logger="stealproof.defenses.mad"):
        past = safe.replace(eps=1.2)
        past(x, clean)
        past(x, clean)  # once per instance, not per call
    assert len(caplog.records) == 1
    assert "eps=1.2 is past the accuracy cliff" in caplog.records[0].getMessage()
    kept_past = float((past(x, clean).argmax(1) == clean.argmax(1)).float().mean())
    assert kept_safe > 0.7 and kept_past < 0.05  # the cliff the warning names is real
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stealproof.defenses.mad"):
        MAD.prepare(v, x, eps=cliff * 1.01)
    assert len(caplog.records) == 1


def test_mad_without_a_cliff_estimate_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stealproof.defenses.mad"):
        d = MAD(eps=1.5, engine="identity")
        d.replace(eps=1.8)
    assert d.cliff_eps is None and not caplog.records


# ----------------------------------------------------------------------------- 10. catalogue


def test_detector_catalogue_lists_prada_guardian_and_policy() -> None:
    cat = available_detectors()
    assert set(cat) == {"prada", "guardian", "policy"}
    for name, (text, config) in cat.items():
        assert text and "\n" not in text, name
        assert issubclass(config, BaseModel)
        assert describe_fields(config), name
    assert cat["prada"][1] is PradaConfig and cat["policy"][1] is PolicyConfig
    assert any(f.startswith("bundle: Path") for f in describe_fields(cat["guardian"][1]))


# ----------------------------------------------------------------------------- user errors


def test_defenses_missing_their_models_raise_user_errors() -> None:
    for name in ("mad", "mad_argmax", "grad2", "am"):
        with pytest.raises(ConfigError, match=name):
            defenses.create(name)


def test_am_prepare_refuses_a_plain_module() -> None:
    with pytest.raises(ConfigError, match="am: prepare needs a stealproof Classifier"):
        defenses.get_defense_class("am").prepare(torch.nn.Flatten(), _images(4))


def test_duplicate_registration_is_a_config_error() -> None:
    class Clash(Defense):
        name = "rounding"

        def perturb(self, x: Tensor | None, y: Tensor, logits: Tensor | None) -> Tensor:
            return y

    with pytest.raises(ConfigError, match="already registered"):
        defenses.register(Clash)


def test_bad_state_bytes_and_detections_are_user_errors() -> None:
    with pytest.raises(InputValidationError, match="state: not a readable client state"):
        loads_state(b"garbage")
    with pytest.raises(StealproofError, match="Detection: scores"):
        Detection(scores=torch.zeros(3), flags=torch.zeros(2, dtype=torch.bool))
