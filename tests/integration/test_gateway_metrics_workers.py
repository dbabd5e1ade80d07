"""``stealproof serve --workers 2``: requests spread over both worker processes (a new connection
each), then ``/metrics`` sums every worker's counters exactly (prometheus-client's multiprocess
mode), whichever worker answers the scrape. On SQLite and, when 127.0.0.1:5432 answers, on
PostgreSQL.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

# prometheus_client is imported here, before the test sets $PROMETHEUS_MULTIPROC_DIR for the
# server it starts, so this pytest process itself stays in single-process mode.
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from gateway_fixtures import ADMIN_KEY, create_clients, start_server, write_config
from serve_db_fixtures import db_kind, db_url  # noqa: F401  (fixtures)
from stealproof.models import create_model, save_checkpoint
from stealproof.serve.db.engine import make_engine, make_sessionmaker
from stealproof.serve.db.models import Client, QueryLog
from stealproof.serve.metrics import MULTIPROC_ENV

EAGER_PRADA = {
    "detectors": [
        {
            "kind": "prada",
            "params": {"delta": 1.0, "check_every": 1, "min_class_distances": 1, "min_pooled": 3},
        }
    ]
}
BATCH = 8  # requests in flight per round
MAX_ROUNDS = 8  # bound: stop once both workers served some, at most this many rounds
M = {"model": "digits", "version": "1"}


def body(n: int, seed: int) -> dict[str, Any]:
    x = np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)
    return {"inputs": [{"name": "input", "shape": [n, 1, 8, 8], "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}  # fmt: skip


def post(url: str, payload: dict[str, Any], key: str | None) -> int:
    """One request on a new connection (so the kernel may hand it to either worker)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{url}/v2/models/digits/infer", json=payload, headers=headers, timeout=30)
    return r.status_code


def served_by_worker(directory: Path) -> dict[str, float]:
    """Infer requests counted by each worker process (its own counter file)."""
    out: dict[str, float] = {}
    for f in sorted(directory.glob("counter_*.db")):
        n = 0.0
        for metric in MultiProcessCollector.merge([str(f)]):
            if metric.name == "stealproof_inference_requests":
                n += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        if n:
            out[f.stem.removeprefix("counter_")] = n
    return out


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_two_workers_sum_exactly(
    db_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim = tmp_path / "v.pt"
    torch.manual_seed(0)
    save_checkpoint(create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10), victim)
    config = write_config(tmp_path, victim, db_url, policy=EAGER_PRADA, max_rows_per_request=8)
    keys = create_clients(db_url, "alice", "bob")
    prom = tmp_path / "prom"
    prom.mkdir()
    monkeypatch.setenv(MULTIPROC_ENV, str(prom))  # the workers inherit it
    server = start_server(config, extra=("--workers", "2"))
    try:
        url = server.url
        sent: dict[int, int] = {}
        rows = 0
        deadline = time.monotonic() + 120
        with ThreadPoolExecutor(BATCH) as pool:
            for rnd in range(MAX_ROUNDS):
                jobs = []
                for i in range(BATCH):
                    seed = rnd * BATCH + i
                    if i == BATCH - 1:  # one refusal per round: no key
                        jobs.append(pool.submit(post, url, body(2, seed), None))
                    else:
                        key = keys["alice"] if i % 2 else keys["bob"]
                        jobs.append(pool.submit(post, url, body(2, seed), key))
                        rows += 2
                for job in jobs:
                    code = job.result(timeout=60)
                    sent[code] = sent.get(code, 0) + 1
                if len(served_by_worker(prom)) >= 2 or time.monotonic() > deadline:
                    break
        per_worker = served_by_worker(prom)
        assert len(per_worker) == 2, f"all requests went to one worker: {per_worker}"
        assert sent == {200: rows // 2, 401: rnd + 1}, sent
        assert sum(per_worker.values()) == sum(sent.values())

        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = httpx.post(f"{url}/v1/admin/clients/bob/block", json={}, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        engine = make_engine(db_url)
        try:
            with make_sessionmaker(engine)() as s:
                logs = list(s.scalars(select(QueryLog)))
                db_rows = int(s.scalar(select(func.sum(Client.rows_used))) or 0)
                flagged = int(s.scalar(select(func.sum(Client.flagged_rows))) or 0)
                flagged_clients = int(
                    s.scalar(select(func.count(Client.id)).where(Client.flagged_rows > 0)) or 0
                )
        finally:
            engine.dispose()
        assert (len(logs), db_rows) == (sent[200], rows)

        scrapes = [scrape(url) for _ in range(4)]  # new connections: either worker answers
        for samples in scrapes:
            req = "stealproof_inference_requests_total"
            assert value(samples, req, **M, code="200") == sent[200]
            assert value(samples, req, **M, code="401") == sent[401]
            rows_total = "stealproof_inference_rows_total"
            normal = value(samples, rows_total, **M, action="normal")
            deceptive = value(samples, rows_total, **M, action="deceptive")
            assert (normal + deceptive, deceptive) == (rows, flagged)
            assert value(samples, rows_total, **M, action="refused") == 0
            flags = value(samples, "stealproof_detector_flags_total", **M, detector="prada")
            assert flags == flagged
            for h in ("request", "model_forward", "policy", "database"):
                name = f"stealproof_{h}_duration_seconds_count"
                assert value(samples, name, **M) == sent[200], h
            assert value(samples, "stealproof_clients_blocked") == 1
            assert value(samples, "stealproof_clients_flagged") == flagged_clients
    finally:
        server.stop()
