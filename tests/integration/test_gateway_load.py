"""Exact accounting under concurrent load: 8 clients, 2,000 single-image requests, 32 in flight
(up to 4 per client), against the real server — PostgreSQL with 4 workers, SQLite with 1.

Afterwards the database's per-client row and request counters and its query log match exactly
the requests that got a 200, and each client's logged decisions (normal / deceptive rows, the
block) equal a serial replay of that client's logged requests, in log order, through an
in-process policy with the same detector: concurrency never changed a decision.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from gateway_fixtures import create_clients, digits_victim, running, write_config
from serve_db_fixtures import postgres_available, temp_database
from stealproof import defenses
from stealproof.data import load_dataset
from stealproof.detectors import PradaDetector
from stealproof.errors import ClientBlockedError
from stealproof.models import load_checkpoint
from stealproof.policy import DetectionPolicy
from stealproof.serve.db.engine import make_engine, make_sessionmaker
from stealproof.serve.gateway import PRADA_SERVING_DEFAULTS, row_hashes

CLIENTS = 8
REQUESTS = 2000
IN_FLIGHT = 32
PER_CLIENT = 4
DELTA = 0.95
MAX_FLAGGED = 20
RS = {"beta": 0.7, "gamma": 0.2}


def _streams(seed: int = 0) -> dict[str, torch.Tensor]:
    """Per client, the images it sends: half the clients send held-out digits (benign), half
    send small perturbations of 5 images (a crude synthetic-query thief PRADA can flag)."""
    ds = load_dataset("digits")
    assert ds.unlabeled is not None
    held_out = torch.cat([ds.test.images, ds.unlabeled.images])
    g = torch.Generator().manual_seed(seed)
    per = REQUESTS // CLIENTS
    out = {}
    for i in range(CLIENTS):
        if i % 2 == 0:
            idx = torch.randint(0, held_out.shape[0], (per,), generator=g)
            out[f"benign{i}"] = held_out[idx]
        else:
            base = held_out[torch.randint(0, held_out.shape[0], (5,), generator=g)]
            pick = base[torch.randint(0, 5, (per,), generator=g)]
            noise = 0.05 * torch.randn(pick.shape, generator=g)
            out[f"thief{i}"] = (pick + noise).clamp(0, 1)
    return out


async def _load(
    url: str,
    keys: dict[str, str],
    streams: dict[str, torch.Tensor],
    on_result: Any = None,
) -> list[Any]:
    """Send every client's stream (one image per request); returns (client, index, status),
    status -1 when the connection failed (a killed worker). ``on_result(n)`` is called after
    each of the n results."""
    results: list[tuple[str, int, int]] = []
    total = asyncio.Semaphore(IN_FLIGHT)
    # idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout: reusing
    # one just as the server closes it fails the request without a response (a client race)
    limits = httpx.Limits(
        max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def one(name: str, i: int, per_client: asyncio.Semaphore) -> None:
            x = streams[name][i : i + 1]
            body = {
                "inputs": [
                    {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                     "data": x.reshape(-1).tolist()}
                ]
            }  # fmt: skip
            async with per_client, total:
                try:
                    r = await http.post(
                        "/v2/models/digits/infer",
                        json=body,
                        headers={"Authorization": f"Bearer {keys[name]}"},
                    )
                    status = r.status_code
                except httpx.TransportError:
                    status = -1
            results.append((name, i, status))
            if on_result is not None:
                on_result(len(results))

        tasks = []
        for name in streams:
            sem = asyncio.Semaphore(PER_CLIENT)
            tasks += [one(name, i, sem) for i in range(streams[name].shape[0])]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=240)
    return results


def _db_rows(url: str) -> tuple[dict[str, Any], list[Any], dict[str, bool]]:
    counters, logs, blocked, _ = _db_rows_delivered(url)
    return counters, logs, blocked


def _db_rows_delivered(url: str) -> tuple[dict[str, Any], list[Any], dict[str, bool], list[bool]]:
    from sqlalchemy import select

    from stealproof.serve.db.models import Client, ClientModelState, QueryLog

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as s:
            clients = {c.id: c for c in s.scalars(select(Client))}
            counters = {c.name: (c.rows_used, c.requests) for c in clients.values()}
            entries = list(s.scalars(select(QueryLog).order_by(QueryLog.id)))
            logs = [
                (clients[e.client_id].name, list(e.input_sha256), list(e.actions)) for e in entries
            ]
            delivered = [e.delivered for e in entries]
            blocked = {
                clients[st.client_id].name: st.policy_blocked
                for st in s.scalars(select(ClientModelState))
            }
        return counters, logs, blocked, delivered
    finally:
        engine.dispose()


@pytest.mark.parametrize(("kind", "workers"), [("sqlite", 1), ("postgresql", 4)])
def test_counters_and_log_match_the_answers_and_a_serial_replay(
    kind: str, workers: int, tmp_path: Path
) -> None:
    if kind == "postgresql" and not postgres_available():
        from serve_db_fixtures import _skip_or_fail

        _skip_or_fail()
    victim = digits_victim(tmp_path)
    streams = _streams()
    policy = {"detectors": [{"kind": "prada", "params": {"delta": DELTA}}],
              "max_flagged": MAX_FLAGGED}  # fmt: skip
    with temp_database(kind, tmp_path) as url:
        config = write_config(tmp_path, victim, url, params=RS, policy=policy)
        keys = create_clients(url, *streams)
        with running(config, extra=("--workers", str(workers))) as server:
            start = time.monotonic()
            results = asyncio.run(_load(server.url, keys, streams))
            elapsed = time.monotonic() - start
        counters, logs, blocked = _db_rows(url)

    assert len(results) == REQUESTS
    statuses = {s for _, _, s in results}
    assert statuses <= {200, 403}, (statuses, "".join(server.output[-60:]))
    ok: dict[str, int] = defaultdict(int)
    for name, _, status in results:
        ok[name] += status == 200
    # counters and log rows equal exactly the requests that got a 200 (one image each)
    for name in streams:
        assert counters[name] == (ok[name], ok[name]), (name, counters[name], ok[name])
    assert len(logs) == sum(ok.values())
    assert any(s == 403 for *_, s in results), "no client was blocked: the test lost its point"

    replay = _replay(victim, streams, logs)
    for name in streams:
        assert replay.is_blocked(name) == blocked.get(name, False), name
        refused = [i for n, i, s in results if n == name and s == 403]
        assert bool(refused) == replay.is_blocked(name), name
    print(f"{kind}, {workers} worker(s): {REQUESTS} requests in {elapsed:.1f} s")


def _replay(victim: Path, streams: dict[str, torch.Tensor], logs: list[Any]) -> DetectionPolicy:
    """Replay each client's logged requests in log order through an in-process policy; every
    logged decision must be the replay's."""
    model, _ = load_checkpoint(victim)
    replay = DetectionPolicy(
        [PradaDetector(delta=DELTA, **PRADA_SERVING_DEFAULTS)],  # as the gateway builds it
        defense=defenses.create("reverse_sigmoid", **RS),
        max_flagged=MAX_FLAGGED,
    )
    by_hash = {name: dict(zip(row_hashes(x), x, strict=True)) for name, x in streams.items()}
    for name, hashes, actions in logs:
        x = torch.stack([by_hash[name][h] for h in hashes])
        with torch.no_grad():
            y = torch.softmax(model(x), dim=1)
        try:
            resp = replay.respond(name, x, y)
        except ClientBlockedError:  # pragma: no cover - a served request the replay refuses
            pytest.fail(f"{name}: served after the replay had blocked it")
        want = ["deceptive" if f else "normal" for f in resp.flags.tolist()]
        assert actions == want, name
    return replay


def _busiest_worker(pid: int) -> int:
    """The uvicorn worker under the server process ``pid`` holding the most sockets (open
    client connections), so that killing it interrupts requests in flight."""
    sockets = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"spawn_main" not in Path(f"/proc/{child}/cmdline").read_bytes():
            continue  # not a worker (multiprocessing's resource tracker)
        fds = Path(f"/proc/{child}/fd")
        sockets[int(child)] = sum(
            1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:")
        )
    return max(sockets, key=lambda p: sockets[p])


@pytest.mark.parametrize(("kind", "workers"), [("sqlite", 1), ("postgresql", 4)])
def test_a_killed_worker_loses_no_answer_and_no_decision(
    kind: str, workers: int, tmp_path: Path
) -> None:
    """SIGKILL during the load — one of 4 workers on PostgreSQL (uvicorn starts another), the
    whole server on SQLite (restarted) — then a restart: every 200 has its log row, every log
    row without a 200 is marked undelivered, counters equal the log, and all decisions, before
    and after the restarts, equal a serial replay."""
    import signal

    from gateway_fixtures import start_server

    if kind == "postgresql" and not postgres_available():
        from serve_db_fixtures import _skip_or_fail

        _skip_or_fail()
    victim = digits_victim(tmp_path)
    streams = _streams(seed=1)
    first = {n: x[: x.shape[0] // 2] for n, x in streams.items()}
    second = {n: x[x.shape[0] // 2 :] for n, x in streams.items()}
    policy = {"detectors": [{"kind": "prada", "params": {"delta": DELTA}}],
              "max_flagged": MAX_FLAGGED}  # fmt: skip
    killed: list[int] = []
    with temp_database(kind, tmp_path) as url:
        config = write_config(tmp_path, victim, url, params=RS, policy=policy)
        keys = create_clients(url, *streams)
        server = start_server(config, extra=("--workers", str(workers)))
        try:

            def kill_once(n: int) -> None:
                if n == 300 and not killed:
                    target = _busiest_worker(server.proc.pid) if workers > 1 else server.proc.pid
                    os.kill(target, signal.SIGKILL)
                    killed.append(target)

            results = asyncio.run(_load(server.url, keys, first, on_result=kill_once))
            if workers > 1:  # the same server goes on with a new worker
                results += asyncio.run(_load(server.url, keys, second))
        finally:
            server.stop(signal.SIGKILL)
        if workers == 1:  # the killed server is started again on the same database
            with running(config) as again:
                results += asyncio.run(_load(again.url, keys, second))
        counters, logs, _, delivered = _db_rows_delivered(url)

    assert killed and any(s == -1 for *_, s in results), "the kill hit no request"
    # the image of each 200 answer: results of the first load index the first half of each
    # stream, those of the second load the second half
    n_first = sum(x.shape[0] for x in first.values())
    answered: dict[str, list[str]] = defaultdict(list)
    for k, (name, i, status) in enumerate(results):
        if status == 200:
            part = first if k < n_first else second
            answered[name].append(row_hashes(part[name][i : i + 1])[0])
    logged: dict[str, list[str]] = defaultdict(list)
    for name, hashes, _ in logs:
        logged[name] += hashes
    for name in streams:
        remaining = list(logged[name])
        for h in answered[name]:  # every 200 answer has its log row
            assert h in remaining, f"{name}: a 200 answer has no log row"
            remaining.remove(h)
        assert counters[name] == (len(logged[name]), len(logged[name])), name
    # log rows whose request got no 200 (decided and charged, the answer lost) are undelivered
    unanswered = sum(len(logged[n]) - len(answered[n]) for n in streams)
    assert unanswered <= delivered.count(False), (unanswered, delivered.count(False))
    _replay(victim, streams, logs)
    failed = sum(1 for *_, status in results if status == -1)
    print(
        f"{kind}, {workers} worker(s): {failed} requests failed at the kill, {unanswered} of them "
        f"decided and logged, {delivered.count(False)} log rows undelivered"
    )
