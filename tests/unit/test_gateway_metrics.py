"""``GET /metrics`` in process: after a known sequence of served and refused requests every
counter has its exact value, the histograms count the served requests and the client gauges
equal the database. On SQLite and, when 127.0.0.1:5432 answers, on PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from gateway_fixtures import ADMIN_KEY, create_clients, write_config
from serve_db_fixtures import db_kind, db_url  # noqa: F401  (fixtures)
from stealproof.models import create_model, save_checkpoint
from stealproof.serve import metrics as sm
from stealproof.serve.app import create_app
from stealproof.serve.db.engine import make_engine, make_sessionmaker
from stealproof.serve.db.models import Client, QueryLog
from stealproof.serve.settings import load_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: PRADA tuned to flag early, so the deceptive and detector counters are not all zero.
EAGER_PRADA = {
    "detectors": [
        {
            "kind": "prada",
            "params": {"delta": 1.0, "check_every": 1, "min_class_distances": 1, "min_pooled": 3},
        }
    ]
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> tuple[Samples, str]:
    """Every sample of ``/metrics`` → {(name, sorted labels): value}, and the raw text."""
    r = client.get("/metrics")  # no key: the endpoint is open
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out, r.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def body(x: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    inp = {"name": "input", "shape": list(x.shape), "datatype": datatype}
    return {"inputs": [{**inp, "data": x.reshape(-1).tolist()}]}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gwm") / "v.pt"
    torch.manual_seed(0)
    save_checkpoint(create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10), path)
    return path


@pytest.fixture
def gw(victim: Path, db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    config = write_config(
        tmp_path, victim, db_url, policy=EAGER_PRADA, max_rows_per_request=8, max_body_bytes=16384
    )
    keys = create_clients(db_url, "alice", "bob")
    keys.update(create_clients(db_url, "tiny", quota=1))
    with TestClient(create_app(load_settings(config))) as client:
        yield {"client": client, "keys": keys, "db": db_url}


def db_truth(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as s:
            logs = list(s.scalars(select(QueryLog)))
            return {
                "requests": len(logs),
                "rows": int(s.scalar(select(func.sum(Client.rows_used))) or 0),
                "normal": sum(e.actions.count("normal") for e in logs),
                "deceptive": sum(e.actions.count("deceptive") for e in logs),
                "flagged_rows": int(s.scalar(select(func.sum(Client.flagged_rows))) or 0),
                "flagged_clients": int(
                    s.scalar(select(func.count(Client.id)).where(Client.flagged_rows > 0)) or 0
                ),
            }
    finally:
        engine.dispose()


def test_counters_are_exact_after_a_known_sequence(gw: dict[str, Any]) -> None:
    c, keys = gw["client"], gw["keys"]
    samples, _ = scrape(c)
    assert total(samples, "stealproof_inference_requests_total") == 0
    assert value(samples, "stealproof_clients_blocked") == 0
    # the served series exist at 0 before the first request
    assert ("stealproof_inference_rows_total",
            (("action", "refused"), ("model", "digits"), ("version", "1"))) in samples  # fmt: skip

    url = "/v2/models/digits/infer"
    for i in range(3):  # 3 served requests of 4 rows
        r = c.post(url, json=body(images(4, seed=i)), headers=auth(keys["alice"]))
        assert r.status_code == 200, r.text
    refusals = [
        (401, c.post(url, json=body(images(2)))),
        (422, c.post(url, json=body(images(2), "INT32"), headers=auth(keys["alice"]))),
        (413, c.post(url, json=body(images(9)), headers=auth(keys["alice"]))),
        (404, c.post("/v2/models/nope/infer", json=body(images(2)), headers=auth(keys["alice"]))),
        (429, c.post(url, json=body(images(2)), headers=auth(keys["tiny"]))),
    ]
    blocked = c.post("/v1/admin/clients/bob/block", json={"reason": "test"}, headers=ADMIN)
    assert blocked.status_code == 200, blocked.text
    refusals.append((403, c.post(url, json=body(images(3)), headers=auth(keys["bob"]))))
    for want, r in refusals:
        assert r.status_code == want, r.text

    samples, text = scrape(c)
    truth = db_truth(gw["db"])
    m = {"model": "digits", "version": "1"}
    req = "stealproof_inference_requests_total"
    assert value(samples, req, **m, code="200") == 3
    for code in (401, 422, 413, 429, 403):
        assert value(samples, req, **m, code=str(code)) == 1, code
    # an unknown model is counted without naming it (no series a caller can create)
    assert value(samples, req, model="", version="", code="404") == 1
    assert total(samples, req) == 9
    assert "nope" not in text and "alice" not in text and "bob" not in text

    rows = "stealproof_inference_rows_total"
    normal = value(samples, rows, **m, action="normal")
    deceptive = value(samples, rows, **m, action="deceptive")
    assert (truth["requests"], truth["rows"]) == (3, 12)
    assert normal + deceptive == 12
    assert (normal, deceptive) == (truth["normal"], truth["deceptive"])
    assert deceptive == truth["flagged_rows"] > 0  # the eager PRADA flagged some rows
    # refused rows: 429 (2 rows) and 403 (3 rows) were read and checked; the others count 0
    assert value(samples, rows, **m, action="refused") == 5
    assert value(samples, rows, model="", version="", action="refused") == 0

    flags = value(samples, "stealproof_detector_flags_total", **m, detector="prada")
    assert flags == truth["flagged_rows"]
    for h in (
        "stealproof_request_duration_seconds",
        "stealproof_model_forward_duration_seconds",
        "stealproof_policy_duration_seconds",
        "stealproof_database_duration_seconds",
    ):
        assert value(samples, f"{h}_count", **m) == 3, h  # served requests only
        assert value(samples, f"{h}_bucket", **m, le="+Inf") == 3, h
        assert value(samples, f"{h}_sum", **m) > 0, h
    # gauges: database truth at scrape time
    assert value(samples, "stealproof_clients_blocked") == 1
    assert value(samples, "stealproof_clients_flagged") == truth["flagged_clients"] == 1
    assert c.post("/v1/admin/clients/bob/unblock", headers=ADMIN).status_code == 200
    samples, _ = scrape(c)
    assert value(samples, "stealproof_clients_blocked") == 0
    assert value(samples, req, **m, code="200") == 3  # scrapes and admin calls are not counted


def test_observer_rejects_an_unknown_action() -> None:
    metrics = sm.Metrics()
    with pytest.raises(ValueError, match="action"):
        metrics.count_rows("m", "1", "maybe", 1)
    metrics.count_rows("m", "1", "normal", 2)
    metrics.count_request("m", "1", 200)
    text = metrics.scrape().decode()
    assert 'stealproof_inference_rows_total{action="normal",model="m",version="1"} 2.0' in text
    assert "stealproof_clients_blocked" not in text  # no database, no gauges


def test_prepare_multiprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sm.MULTIPROC_ENV, raising=False)
    assert sm.prepare_multiprocess(1) is None
    assert sm.MULTIPROC_ENV not in os.environ
    made = sm.prepare_multiprocess(2)
    try:
        assert made is not None and made.is_dir() and not any(made.iterdir())
        assert os.environ[sm.MULTIPROC_ENV] == str(made)
    finally:
        os.environ.pop(sm.MULTIPROC_ENV, None)  # set by prepare_multiprocess, not monkeypatch
        if made is not None:
            made.rmdir()
    # an operator's directory is used and emptied of an earlier run's metric files only
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"x")
    (given / "histogram_9.db").write_bytes(b"x")
    (given / "notes.txt").write_text("keep")
    monkeypatch.setenv(sm.MULTIPROC_ENV, str(given))
    assert sm.prepare_multiprocess(4) is None
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    (given / "gauge_livesum_7.db").write_bytes(b"x")
    assert sm.prepare_multiprocess(1) is None  # one worker in multiprocess mode: same
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    assert os.environ[sm.MULTIPROC_ENV] == str(given)
    sm.mark_process_dead(123)  # no live gauges: a no-op that must not fail
