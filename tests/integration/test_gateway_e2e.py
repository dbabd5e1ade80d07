"""The real ``stealproof serve`` subprocess on a free localhost port, on SQLite and (when
127.0.0.1:5432 answers) PostgreSQL — the test id says which database ran:

- standard clients: tritonclient.http (binary outputs, its default) and plain JSON over httpx
  read the metadata and get the in-process BlackBox's answers within 1e-6;
- KnockoffNets through HTTPBlackBox steals as well as in process with the same seed (±1 point);
- a JBDA thief behind a PRADA policy gets deceptive answers and then 403, a benign client keeps
  the victim's top-1; after SIGKILL and a restart on the same database the thief is still
  blocked and counters, log and detector state are exactly as before the kill.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from gateway_fixtures import (
    create_clients,
    db_snapshot,
    digits_victim,
    running,
    start_server,
    write_config,
)
from serve_db_fixtures import db_kind, db_url  # noqa: F401  (fixtures)
from stealproof import defenses, metrics
from stealproof.attacks import JBDA, KnockoffNets, clone_factory_like
from stealproof.data import load_dataset, load_pool
from stealproof.detectors import benign_streams, calibrate_delta
from stealproof.errors import ClientBlockedError
from stealproof.experiment import SCENARIOS
from stealproof.http_box import HTTPBlackBox
from stealproof.models import load_checkpoint
from stealproof.oracle import BlackBox
from stealproof.policy import DetectionPolicy

RS = {"beta": 0.7, "gamma": 0.2}


@pytest.fixture(scope="module")
def victim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_victim(tmp_path_factory.mktemp("victim"))


def in_process_box(victim_path: Path) -> BlackBox:
    model, _ = load_checkpoint(victim_path)
    policy = DetectionPolicy([], defense=defenses.create("reverse_sigmoid", **RS))
    return BlackBox(model, policy=policy, client_id="local")


@pytest.fixture
def served(victim_path: Path, db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    config = write_config(tmp_path, victim_path, db_url, params=RS)
    keys = create_clients(db_url, "alice")
    with running(config) as server:
        yield {"url": server.url, "keys": keys, "db": db_url}


def test_tritonclient_and_json_get_the_in_process_answers(
    served: dict[str, Any], victim_path: Path
) -> None:
    import tritonclient.http as triton

    ds = load_dataset("digits")
    x = ds.test.images[:37]
    want = in_process_box(victim_path).query(x).numpy()
    headers = {"Authorization": f"Bearer {served['keys']['alice']}"}

    client = triton.InferenceServerClient(served["url"].removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x.numpy())  # binary input (its default)
    # (a fresh headers dict per call: tritonclient adds its binary header to the one it is given)
    result = client.infer("digits", [inp], headers=dict(headers))  # binary outputs by default
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=0, atol=1e-6)
    out = triton.InferRequestedOutput("probabilities", binary_data=False)
    inp_json = triton.InferInput("input", list(x.shape), "FP32")
    inp_json.set_data_from_numpy(x.numpy(), binary_data=False)
    result = client.infer("digits", [inp_json], outputs=[out], headers=dict(headers))
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=0, atol=1e-6)
    client.close()

    body = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32",
             "data": x.numpy().tolist()}  # nested lists
        ]
    }  # fmt: skip
    r = httpx.post(f"{served['url']}/v2/models/digits/infer", json=body, headers=headers)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    me = httpx.get(f"{served['url']}/v1/clients/me", headers=headers).json()
    assert me["rows_used"] == 3 * 37 and me["requests"] == 3


def test_knockoff_through_the_gateway_matches_in_process(
    served: dict[str, Any], victim_path: Path
) -> None:
    ds = load_dataset("digits")
    sc = SCENARIOS["digits"]
    model, _ = load_checkpoint(victim_path)
    pool = load_pool(sc.pool, channels=1, image_size=(8, 8), seed=0)
    budget = 600

    def steal(box: Any) -> float:
        attack = KnockoffNets(policy="random", seed=0, train=sc.clone_training)
        result = attack.run(box, pool, budget, clone_factory_like(model))
        assert result.queries_used == budget and result.stopped is None
        return metrics.clone_accuracy(result.clone, ds.test.images, ds.test.labels)

    local = steal(in_process_box(victim_path))
    with HTTPBlackBox(served["url"], served["keys"]["alice"], "digits") as remote_box:
        remote = steal(remote_box)
        assert remote_box.me()["rows_used"] == budget
    assert abs(local - remote) <= 0.01, (local, remote)
    assert db_snapshot(served["db"])["clients"]["alice"][0] == budget


def test_attack_cli_targets_the_gateway(served: dict[str, Any], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from stealproof.cli import app

    key_file = tmp_path / "key"
    key_file.write_text(served["keys"]["alice"] + "\n")
    args = ["attack", "--target", served["url"], "--api-key-file", str(key_file), "--model",
            "digits", "--dataset", "digits", "--budget", "200", "--epochs", "2", "--json",
            "--threads", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["target"] == f"{served['url']} model digits" and row["queries_used"] == 200
    assert row["defender_acc"] is None and 0.0 <= row["clone_acc"] <= 1.0
    assert db_snapshot(served["db"])["clients"]["alice"][0] == 200


def test_prada_thief_is_cut_off_and_stays_blocked_after_sigkill(
    victim_path: Path,
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    ds = load_dataset("digits")
    assert ds.unlabeled is not None
    model, _ = load_checkpoint(victim_path)
    held_out = torch.cat([ds.test.images, ds.unlabeled.images])
    half = held_out.shape[0] // 2
    cal = benign_streams(held_out[:half], 5, 400, seed=1000)
    delta = calibrate_delta(cal, model, margin=0.02)
    policy = {"detectors": [{"kind": "prada", "params": {"delta": delta}}], "max_flagged": 40}
    config = write_config(tmp_path, victim_path, db_url, params=RS, policy=policy)
    keys = create_clients(db_url, "thief", "benign")
    benign_stream = benign_streams(held_out[half:], 1, 300, seed=2000)[0]
    victim_top1 = model(benign_stream).argmax(dim=1)

    server = start_server(config)
    try:
        url = server.url
        # the benign client: 150 rows in batches of 10, top-1 kept, never refused
        benign = HTTPBlackBox(url, keys["benign"], "digits", client_id="benign")
        answers = torch.cat([benign.query(benign_stream[i : i + 10]) for i in range(0, 150, 10)])
        assert torch.equal(answers.argmax(dim=1), victim_top1[:150])
        # the thief: JBDA from 100 seed images until the gateway refuses it
        thief = HTTPBlackBox(url, keys["thief"], "digits", client_id="thief", batch_size=50)
        jb = JBDA(seed=0, train=SCENARIOS["digits"].clone_training)
        run = jb.run(thief, ds.unlabeled.images[:100], 600, clone_factory_like(model))
        assert run.stopped == "blocked" and run.blocked_at is not None, run.stop_message
        assert 100 < run.blocked_at < 600
        with pytest.raises(ClientBlockedError):
            thief.query(ds.test.images[:1])
        me = thief.me()
        assert me["standing"] == "blocked" and "flag" not in str(me)
        # the benign client is still served
        more = torch.cat([benign.query(benign_stream[i : i + 10]) for i in range(150, 200, 10)])
        assert torch.equal(more.argmax(dim=1), victim_top1[150:200])
        before = db_snapshot(db_url)
        admin = {"Authorization": f"Bearer {(tmp_path / 'admin.key').read_text().strip()}"}
        log = httpx.get(f"{url}/v1/admin/clients/thief/log?limit=1000", headers=admin).json()
        actions = [a for entry in reversed(log) for a in entry["actions"]]
        assert "deceptive" in actions and actions.count("deceptive") >= 40
        assert sum(entry["rows"] for entry in log) == before["clients"]["thief"][0]
        benign_log = httpx.get(f"{url}/v1/admin/clients/benign/log?limit=1000", headers=admin)
        assert all(a == "normal" for e in benign_log.json() for a in e["actions"])
        benign.close()
        thief.close()
    finally:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert db_snapshot(db_url) == before  # nothing lost, nothing half-written

    with running(config) as again:
        thief = HTTPBlackBox(again.url, keys["thief"], "digits")
        with pytest.raises(ClientBlockedError):
            thief.query(ds.test.images[:1])
        assert thief.me()["standing"] == "blocked"
        assert db_snapshot(db_url) == before  # the refusal was neither charged nor logged
        benign = HTTPBlackBox(again.url, keys["benign"], "digits")
        last = benign.query(benign_stream[200:210])
        assert torch.equal(last.argmax(dim=1), victim_top1[200:210])
        after = db_snapshot(db_url)
        assert after["clients"]["benign"][0] == before["clients"]["benign"][0] + 10
        thief.close()
        benign.close()
