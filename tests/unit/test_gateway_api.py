"""The gateway app in process (TestClient runs the lifespan): every refusal with its status and a
JSON body naming the problem, never charged or logged; the client's and the admin's views; a
schemathesis run over the OpenAPI schema. Each test runs on SQLite and, when 127.0.0.1:5432
answers, on PostgreSQL (the test id says which).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from gateway_fixtures import ADMIN_KEY, create_clients, db_snapshot, write_config
from serve_db_fixtures import db_kind, db_url  # noqa: F401  (fixtures)
from stealproof.errors import ConfigError
from stealproof.models import create_model, save_checkpoint
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy
from stealproof.serve.app import create_app
from stealproof.serve.protocol import HEADER_LENGTH
from stealproof.serve.settings import load_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8×8 MLP (untrained weights are enough for the protocol and accounting)."""
    path = tmp_path_factory.mktemp("gw") / "v.pt"
    torch.manual_seed(0)
    save_checkpoint(create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10), path)
    return path


@pytest.fixture
def gw(victim: Path, db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    config = write_config(tmp_path, victim, db_url, max_rows_per_request=8, max_body_bytes=16384)
    keys = create_clients(db_url, "alice", "bob")
    keys.update(create_clients(db_url, "tiny", quota=3))
    with TestClient(create_app(load_settings(config))) as client:
        yield {"client": client, "keys": keys, "db": db_url, "config": config}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def body(x: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    data = x.reshape(-1).tolist()
    inp = {"name": "input", "shape": list(x.shape), "datatype": datatype, "data": data}
    return {"inputs": [inp], **extra}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def infer(gw: dict[str, Any], payload: Any, key: str | None = "alice", **kw: Any) -> Any:
    headers = kw.pop("headers", {})
    if key is not None:
        headers = {**auth(gw["keys"].get(key, key)), **headers}
    if isinstance(payload, bytes):
        return gw["client"].post("/v2/models/digits/infer", content=payload, headers=headers, **kw)
    return gw["client"].post("/v2/models/digits/infer", json=payload, headers=headers, **kw)


# ----------------------------------------------------------------------------- answers


def test_answers_equal_the_in_process_black_box(gw: dict[str, Any], victim: Path) -> None:
    from stealproof import defenses
    from stealproof.models import load_checkpoint

    x = images(5)
    r = infer(gw, body(x))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "probabilities" and out["shape"] == [5, 10]
    model, _ = load_checkpoint(victim)
    box = BlackBox(
        model,
        policy=DetectionPolicy([], defense=defenses.create("reverse_sigmoid", beta=0.7, gamma=0.2)),
    )
    want = box.query(torch.from_numpy(x))
    got = torch.tensor(out["data"]).reshape(5, 10)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # UINT8 pixels are scaled to [0, 1]
    u8 = (x * 255).round().astype(np.uint8)
    r8 = infer(gw, body(u8, "UINT8"))
    assert r8.status_code == 200, r8.text
    want8 = box.query(torch.from_numpy(u8.astype(np.float32) / 255))
    torch.testing.assert_close(
        torch.tensor(r8.json()["outputs"][0]["data"]).reshape(5, 10), want8, rtol=0, atol=1e-6
    )


def test_served_request_is_charged_and_logged_once(gw: dict[str, Any]) -> None:
    before = db_snapshot(gw["db"])
    r = infer(gw, body(images(3)))
    assert r.status_code == 200, r.text
    after = db_snapshot(gw["db"])
    assert after["clients"]["alice"][:2] == (before["clients"]["alice"][0] + 3, 1)
    assert len(after["logs"]) == len(before["logs"]) + 1
    entry = after["logs"][-1]
    assert entry[2] == 3 and len(entry[3]) == 3 and entry[4] == ("normal",) * 3
    me = gw["client"].get("/v1/clients/me", headers=auth(gw["keys"]["alice"])).json()
    assert me == {
        "name": "alice",
        "rows_used": 3,
        "requests": 1,
        "quota_rows": None,
        "quota_left": None,
        "standing": "ok",
    }  # and nothing about flags


# ----------------------------------------------------------------------------- refusals


def _binary(x: np.ndarray, header_extra: int = 0) -> tuple[bytes, dict[str, str]]:
    raw = x.astype("<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    h = json.dumps(header).encode()
    return h + raw, {HEADER_LENGTH: str(len(h) + header_extra)}


NAN_BODY = (
    b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [NaN'
    + b", 0.5" * 63
    + b"]}]}"
)

REFUSALS: list[tuple[str, Any, str | None, dict[str, str], int, str]] = [
    # (id, payload, key, headers, status, words in the error)
    ("no-key", body(images(1)), None, {}, 401, "missing API key"),
    ("bad-key", body(images(1)), "sp_nope", {}, 401, "invalid API key"),
    ("not-bearer", body(images(1)), None, {"Authorization": "Basic abc"}, 401, "Bearer"),
    ("batch-over-limit", body(images(9)), "alice", {}, 413, "9 rows"),
    ("body-over-limit", body(images(8)) | {"pad": "x" * 20000}, "alice", {}, 413, "limit"),
    ("wrong-shape", body(images(2).reshape(2, 1, 4, 16)), "alice", {}, 422, "shape"),
    ("wrong-datatype", body(images(1), "INT32"), "alice", {}, 422, "datatype"),
    ("nan", NAN_BODY, "alice", {"Content-Type": "application/json"}, 422, "finite"),
    ("out-of-range", body(images(1) + 1.5), "alice", {}, 422, "[0, 1]"),
    ("not-json", b"{nope", "alice", {}, 400, "JSON"),
    ("wrong-input-name", {"inputs": [{**body(images(1))["inputs"][0], "name": "x"}]},
     "alice", {}, 422, "input"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "key", "headers", "status", "words"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_bad_requests_are_refused_and_never_charged(
    gw: dict[str, Any],
    payload: Any,
    key: str | None,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    before = db_snapshot(gw["db"])
    r = infer(gw, payload, key, headers=headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words.lower() in err.lower(), err
    assert db_snapshot(gw["db"]) == before


def test_malformed_binary_header_is_400(gw: dict[str, Any]) -> None:
    before = db_snapshot(gw["db"])
    for extra in (10_000, -5):
        payload, headers = _binary(images(2), header_extra=extra)
        r = infer(gw, payload, headers=headers)
        assert r.status_code == 400, r.text
    r = infer(gw, b"{}", headers={HEADER_LENGTH: "abc"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    payload, headers = _binary(images(2))
    r = infer(gw, payload + b"\0\0\0\0", headers=headers)  # trailing bytes
    assert r.status_code == 400, r.text
    assert db_snapshot(gw["db"]) == before
    payload, headers = _binary(images(2))
    assert infer(gw, payload, headers=headers).status_code == 200


def test_unknown_model_and_version_are_404(gw: dict[str, Any]) -> None:
    c, h = gw["client"], auth(gw["keys"]["alice"])
    r = c.post("/v2/models/nope/infer", json=body(images(1)), headers=h)
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = c.post("/v2/models/digits/versions/9/infer", json=body(images(1)), headers=h)
    assert r.status_code == 404 and "no version '9'" in r.json()["error"]
    assert c.get("/v2/models/nope").status_code == 404
    assert c.get("/v2/models/digits/versions/1/ready").json() == {"name": "digits", "ready": True}


def test_quota_is_429_before_the_model_runs(gw: dict[str, Any]) -> None:
    assert infer(gw, body(images(2)), "tiny").status_code == 200
    before = db_snapshot(gw["db"])
    r = infer(gw, body(images(2)), "tiny")
    assert r.status_code == 429 and "1 of 3 rows left" in r.json()["error"]
    assert db_snapshot(gw["db"]) == before
    assert infer(gw, body(images(1)), "tiny").status_code == 200
    me = gw["client"].get("/v1/clients/me", headers=auth(gw["keys"]["tiny"])).json()
    assert me["quota_left"] == 0 and me["standing"] == "ok"


def test_blocked_revoked_and_admin_flow(gw: dict[str, Any]) -> None:
    c = gw["client"]
    assert c.get("/v1/admin/clients").status_code == 401
    assert c.get("/v1/admin/clients", headers=auth(gw["keys"]["alice"])).status_code == 401
    r = c.post("/v1/admin/clients/bob/block", json={"reason": "test"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["standing"] == "blocked"
    before = db_snapshot(gw["db"])
    r = infer(gw, body(images(1)), "bob")
    assert r.status_code == 403 and "blocked" in r.json()["error"]
    assert db_snapshot(gw["db"]) == before
    me = c.get("/v1/clients/me", headers=auth(gw["keys"]["bob"])).json()
    assert me["standing"] == "blocked"
    assert c.post("/v1/admin/clients/bob/unblock", headers=ADMIN).json()["standing"] == "ok"
    assert infer(gw, body(images(1)), "bob").status_code == 200
    # a new key works; a revoked one is 401 and says so
    new = c.post("/v1/admin/clients/bob/keys", headers=ADMIN).json()
    assert new["key"].startswith(f"sp_{new['key_id']}_")
    assert infer(gw, body(images(1)), new["key"]).status_code == 200
    assert c.delete(f"/v1/admin/keys/{new['key_id']}", headers=ADMIN).status_code == 204
    r = infer(gw, body(images(1)), new["key"])
    assert r.status_code == 401 and r.json()["error"] == "revoked API key"
    # create, list, log
    made = c.post("/v1/admin/clients", json={"name": "carol", "quota_rows": 5}, headers=ADMIN)
    assert made.status_code == 201
    assert c.post("/v1/admin/clients", json={"name": "carol"}, headers=ADMIN).status_code == 409
    names = {row["name"] for row in c.get("/v1/admin/clients", headers=ADMIN).json()}
    assert names == {"alice", "bob", "tiny", "carol"}
    log = c.get("/v1/admin/clients/bob/log?limit=5", headers=ADMIN).json()
    assert [e["rows"] for e in log] == [1, 1] and log[0]["id"] > log[1]["id"]
    assert c.get("/v1/admin/clients/zed", headers=ADMIN).status_code == 404


# ----------------------------------------------------------------------------- start-up


def test_bad_config_and_unmigrated_database_fail_at_start(victim: Path, tmp_path: Path) -> None:
    from stealproof.serve.app import build_gateway

    config = write_config(tmp_path, victim, f"sqlite:///{tmp_path}/new.db")
    with pytest.raises(ConfigError, match=r"not migrated.*stealproof db upgrade"):
        build_gateway(load_settings(config))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: d\n    checkpoint: v.pt\n    defens: mad\n")
    with pytest.raises(ConfigError, match=r"models\[0\]\.defens: unknown field"):
        load_settings(bad)
    (tmp_path / "admin.key").write_text("changeme")
    with pytest.raises(ConfigError, match="admin key"):
        create_app(load_settings(config))


# ----------------------------------------------------------------------------- schema


def _fuzz_operation(operation: Any, key: str, calls: dict[str, int]) -> str | None:
    """Run one operation's bounded schemathesis examples; the first failure's text, if any."""
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        calls[operation.path] = calls.get(operation.path, 0) + 1
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"})

    try:
        run()
    except Exception as e:  # report every operation's failure, not only the first
        return f"{operation.method.upper()} {operation.path}: {e}"
    return None


def test_openapi_schema_run_finds_no_server_error(gw: dict[str, Any]) -> None:
    """schemathesis over every operation (bounded examples): no 5xx, responses match the
    schema. Run with the admin key, so the admin routes are exercised too."""
    import schemathesis

    schema = schemathesis.openapi.from_asgi("/openapi.json", gw["client"].app)
    calls: dict[str, int] = {}
    failures = []
    for op in schema.get_all_operations():
        operation = op.ok()
        key = ADMIN_KEY if "/admin/" in operation.path else gw["keys"]["alice"]
        failure = _fuzz_operation(operation, key, calls)
        if failure is not None:
            failures.append(failure)
    assert not failures, "\n".join(failures[:5])
    assert len(calls) >= 15 and min(calls.values()) >= 1, calls  # every route was exercised


def test_model_problems_name_the_model(victim: Path, tmp_path: Path) -> None:
    from stealproof.serve.gateway import load_model

    url = f"sqlite:///{tmp_path}/x.db"
    cases = [
        ({"policy": {"window": 100}}, r"models\[0\] \(digits\): policy: window and ratio"),
        (
            {"policy": {"detectors": [{"kind": "guardian", "bundle": "g.pt",
                                       "params": {"threshold": 0.5}}]}},
            r"models\[0\] \(digits\): policy\.detectors\[0\]\.params: unknown parameter "
            r"'threshold' for guardian",
        ),
        ({"defense": "mad", "params": {}}, r"models\[0\] \(digits\): mad: .*prepare-defense"),
        ({"checkpoint": Path("nope.pt")}, r"models\[0\] \(digits\): .*nope\.pt"),
    ]  # fmt: skip
    for change, pattern in cases:
        config = write_config(tmp_path, victim, url)
        settings = load_settings(config)
        ms = settings.models[0].model_copy(update=change)
        if "policy" in change:
            from stealproof.serve.settings import PolicySettings

            ms = ms.model_copy(update={"policy": PolicySettings(**change["policy"])})
        with pytest.raises(ConfigError, match=pattern):
            load_model(ms, settings, 0)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--target", "http://127.0.0.1:9", "--model", "m", "--dataset", "digits"], "--api-key"),
        (["--target", "http://127.0.0.1:9", "--api-key", "k", "--dataset", "digits"], "--model"),
        (["--target", "ftp://x", "--api-key", "k", "--model", "m"], "http:// or https://"),
        (["--target", "http://127.0.0.1:9", "--api-key", "k", "--model", "m"], "--dataset"),
        (["--target", "http://127.0.0.1:9", "--api-key", "k", "--model", "m",
          "--dataset", "digits", "--defense", "mad"], "--defense: not with --target"),
        (["--api-key", "k"], "--victim CHECKPOINT, or --target URL"),
        (["--target", "http://127.0.0.1:1", "--api-key", "k", "--model", "m",
          "--dataset", "digits"], "cannot reach the gateway"),
    ],
    ids=["no-key", "no-model", "not-http", "no-dataset", "defense", "nothing", "unreachable"],
)  # fmt: skip
def test_attack_target_is_checked_before_any_work(args: list[str], words: str) -> None:
    from typer.testing import CliRunner

    from stealproof.cli import app

    result = CliRunner().invoke(app, ["attack", *args, "--budget", "20"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


def test_guardian_policy_answers_deceptively_then_blocks(
    victim: Path,
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A guardian detector configured by bundle path: a bundle stamped for this victim whose
    threshold flags every row → deceptive answers (top-1 kept), then 403 after max_flagged."""
    from stealproof.detectors.guardian import GuardianBundle, TransformNet
    from stealproof.fingerprint import make_stamp
    from stealproof.models import load_checkpoint

    model, _ = load_checkpoint(victim)
    torch.manual_seed(0)
    detector = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=2, hidden=(8,))
    GuardianBundle(
        TransformNet((1, 8, 8), width=4).eval(),
        {"dfme": detector.eval()},
        threshold=-1e9,
        meta={"sources": ["dfme"]},
        stamp=make_stamp(model, {}),
    ).save(tmp_path / "g.pt")
    policy = {"detectors": [{"kind": "guardian", "bundle": "g.pt"}], "max_flagged": 5}
    config = write_config(tmp_path, victim, db_url, policy=policy)
    keys = create_clients(db_url, "mallory")
    with TestClient(create_app(load_settings(config))) as c:
        h = auth(keys["mallory"])
        x = images(3)
        r = c.post("/v2/models/digits/infer", json=body(x), headers=h)
        assert r.status_code == 200, r.text
        got = torch.tensor(r.json()["outputs"][0]["data"]).reshape(3, 10)
        assert torch.equal(got.argmax(1), model(torch.from_numpy(x)).argmax(1))  # top-1 kept
        assert (
            c.post("/v2/models/digits/infer", json=body(images(3, 1)), headers=h).status_code == 200
        )
        r = c.post("/v2/models/digits/infer", json=body(images(1, 2)), headers=h)
        assert r.status_code == 403 and "blocked" in r.json()["error"]
        log = c.get("/v1/admin/clients/mallory/log", headers=ADMIN).json()
        assert [a for e in reversed(log) for a in e["actions"]] == ["deceptive"] * 6
        assert c.get("/v1/clients/me", headers=h).json()["standing"] == "blocked"


def test_label_watermark_records_what_the_gateway_relabelled(
    victim: Path,
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from stealproof.defenses.label_watermark import LabelWatermark
    from stealproof.models import load_checkpoint
    from stealproof.oracle import victim_posteriors
    from stealproof.ownership import key_set_from_records

    model, _ = load_checkpoint(victim)
    x = images(8, seed=3)
    clean, logits = victim_posteriors(model, torch.from_numpy(x))
    threshold = float(logits.amax(1).median())  # about half the rows relabelled
    records = tmp_path / "records"
    params = {"threshold": threshold, "seed": 3, "record_dir": str(records)}
    config = write_config(tmp_path, victim, db_url, defense="label_watermark", params=params)
    keys = create_clients(db_url, "owner-test")
    with TestClient(create_app(load_settings(config))) as client:
        r = client.post("/v2/models/digits/infer", json=body(x), headers=auth(keys["owner-test"]))
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()["outputs"][0]["data"]).reshape(8, 10)
    want = LabelWatermark(threshold=threshold, seed=3)(torch.from_numpy(x), clean, logits)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    relabelled = got.argmax(1) != clean.argmax(1)
    assert 0 < int(relabelled.sum()) < 8
    key = key_set_from_records(records)
    assert key.n == int(relabelled.sum())
    assert sorted(key.labels.tolist()) == sorted(got.argmax(1)[relabelled].tolist())


def test_worker_processes_take_the_threads_serve_gives_them(
    victim: Path,
    db_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve --workers N`` passes each worker its torch threads: a spawned worker would start
    with one thread per core, and N of them would contend for every core."""
    from stealproof.serve.app import CONFIG_ENV, THREADS_ENV, app_from_env

    config = write_config(tmp_path, victim, db_url)
    before = torch.get_num_threads()
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv(THREADS_ENV, "1" if before != 1 else "2")
    try:
        app_from_env()
        assert torch.get_num_threads() == (1 if before != 1 else 2)
    finally:
        torch.set_num_threads(before)
