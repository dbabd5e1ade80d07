"""Load benchmark of the gateway: requests/s and latency percentiles on localhost (issue 13).

A closed loop (each of ``concurrency`` slots sends its next request when its last one answered)
sends a fixed number of single-image FP32 requests with httpx's async client, after a short
warm-up, to servers started as subprocesses on free ports and stopped with SIGTERM afterwards.
All cases' servers run side by side; at each concurrency their measurements are cut into
``--rounds`` blocks that alternate between the servers, so that load drift on a shared machine
hits every case alike (ratios between cases are what the targets compare).
Requests use Triton's binary tensor extension by default (``--encoding json``: JSON tensors).
The victim is the mnist5k LeNet (``--quick``: the digits MLP), trained once and cached in
``--workdir``. Cases (one client per in-flight slot, so different clients run concurrently):

- ``bare``: the victim behind a minimal FastAPI endpoint in this file (no auth, database,
  defense or policy; the same protocol decoding), one uvicorn process: the floor.
- ``full_sqlite``: ``stealproof serve``, 1 worker: API keys, reverse_sigmoid, a PRADA policy,
  accounting and the query log on SQLite, dynamic batching as configured.
- ``full_sqlite_nobatch``: the same with batching off (``max_rows: 1``), at the top
  concurrency only: what batching buys.
- ``full_postgres_2w``: ``full_sqlite`` on PostgreSQL (a fresh schema, dropped afterwards) with
  ``--workers 2``; a ``{case, skipped}`` row when PostgreSQL does not answer.
- ``mad_sqlite``: ``full_sqlite`` with MAD (``stealproof prepare-defense``) instead.
- ``history``: p50 at concurrency 1 of clients that first sent N rows (in requests of 256 rows)
  on the ``full_sqlite`` server; the clients' single-image requests alternate, so load drift
  hits both alike.

    python benchmarks/gateway_load.py --out benchmarks/results/gateway_load.json
    python benchmarks/gateway_load.py --quick --cases bare,full_sqlite,history

Output: JSON with ``rows`` (``{case, concurrency, requests, rps, p50_ms, p99_ms, ...}``;
``history`` rows add ``history_rows``), ``targets`` (the issue's throughput and bounded-cost
ratios, their targets and whether each is met), the configuration and the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import httpx
import torch
import yaml
from fastapi import Request, Response  # module level: FastAPI resolves the route annotations

CASES = (
    "bare",
    "full_sqlite",
    "full_sqlite_nobatch",
    "full_postgres_2w",
    "mad_sqlite",
    "history",
)
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLIENTS = ("aiohttp", "httpx")
HISTORY_BATCH = 256  # rows per request while a client builds its history
RS_PARAMS = {"beta": 0.7, "gamma": 0.2}
PRADA_DELTA = 0.9
HEADER_LENGTH = "Inference-Header-Content-Length"
_SERVING = re.compile(r"serving .* on (http://127\.0\.0\.1:\d+)")

# ----------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` fills smaller defaults for what was not given."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", default=None, help="write the JSON here as well (atomically)")
    ap.add_argument("--quick", action="store_true", help="digits MLP, a handful of requests")
    ap.add_argument("--workdir", default=None, help="cache of the victim and MAD models (temp)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of cases")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated in-flight requests")
    ap.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per case at concurrency > 1 (quarter at 1) (2000; quick 48)",
    )
    ap.add_argument("--warmup", type=int, default=None, help="warm-up requests (50; quick 8)")
    ap.add_argument(
        "--history", default=None, help="history rows of the history clients (100,20000)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server process")
    ap.add_argument("--encoding", choices=("binary", "json"), default="binary")
    ap.add_argument(
        "--client",
        choices=CLIENTS,
        default="aiohttp",
        help="HTTP client of the load loop (aiohttp: about 5x less client CPU than httpx)",
    )
    ap.add_argument(
        "--batching-wait-ms",
        type=float,
        default=2.0,
        help="the gateway's batching.max_wait_ms in the full cases (0: no waiting)",
    )
    ap.add_argument("--pg-url", default=PG_URL, help="PostgreSQL for full_postgres_2w")
    ap.add_argument("--case-timeout", type=float, default=300.0, help="seconds per load run")
    ap.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="blocks each measurement is cut into; the cases' blocks alternate (10)",
    )
    ap.add_argument("--serve-bare", default=None, help=argparse.SUPPRESS)  # the bare server
    args = ap.parse_args(argv)
    if args.requests is None:
        args.requests = 48 if args.quick else 2000
    if args.warmup is None:
        args.warmup = 8 if args.quick else 50
    if args.history is None:
        args.history = "100,600" if args.quick else "100,20000"
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
        args.history = sorted({int(h) for h in args.history.split(",") if h.strip()})
    except ValueError:
        ap.error("--concurrency and --history: comma-separated integers")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {', '.join(unknown)} (choose from {', '.join(CASES)})")
    if not args.concurrency or min(args.concurrency) < 1:
        ap.error("--concurrency: at least one value, each >= 1")
    if args.history and min(args.history) < 1:
        ap.error("--history: each value >= 1")
    if args.requests < 4 or args.warmup < 0 or args.threads < 1 or args.rounds < 1:
        ap.error("--requests >= 4, --warmup >= 0, --threads >= 1, --rounds >= 1")
    if args.batching_wait_ms < 0:
        ap.error("--batching-wait-ms: >= 0")
    return args


def requests_at(total: int, concurrency: int) -> int:
    """Requests of a case: ``total`` at concurrency > 1, a quarter of it at 1."""
    return total if concurrency > 1 else max(1, total // 4)


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class LoadResult:
    """Per request latency (s) and status (-1: connection failed), and the loop's wall time."""

    latencies: list[float]
    statuses: list[int]
    wall: float


def summarize(case: str, concurrency: int, result: LoadResult, **extra: Any) -> dict[str, Any]:
    """A result row: requests/s over the wall time, p50/p99/mean latency in ms, non-200s."""
    n = len(result.latencies)
    ms = [1e3 * t for t in result.latencies]
    bad = Counter(str(s) for s in result.statuses if s != 200)
    row: dict[str, Any] = {
        "case": case,
        "concurrency": concurrency,
        "requests": n,
        "rps": round(n / result.wall, 1) if result.wall > 0 else None,
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / n, 3),
        "non_200": sum(bad.values()),
        **extra,
    }
    if bad:
        row["statuses"] = dict(sorted(bad.items()))
    return row


def _find(rows: Sequence[dict[str, Any]], case: str, **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if (
            r.get("case") == case
            and "skipped" not in r
            and all(r.get(k) == v for k, v in match.items())
        ):
            return r
    return None


def _target(
    value: float | None, op: Literal[">=", "<="], target: float, what: str
) -> dict[str, Any]:
    met = None if value is None else (value >= target if op == ">=" else value <= target)
    shown = None if value is None else round(value, 3)
    return {"value": shown, "op": op, "target": target, "met": met, "what": what}


def targets(rows: Sequence[dict[str, Any]], top: int) -> dict[str, dict[str, Any]]:
    """The issue's acceptance ratios from the rows (``met: null`` when a row is missing).

    ``top`` is the highest concurrency (16 in the issue).
    """

    def rps(case: str, c: int) -> float | None:
        r = _find(rows, case, concurrency=c)
        return None if r is None or not r.get("rps") else float(r["rps"])

    def p50(case: str, **m: Any) -> float | None:
        r = _find(rows, case, **m)
        return None if r is None else float(r["p50_ms"])

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    full_p50, bare_p50 = p50("full_sqlite", concurrency=1), p50("bare", concurrency=1)
    hist = sorted(r["history_rows"] for r in rows if r.get("case") == "history")
    out = {
        f"full_sqlite_over_bare_rps_c{top}": _target(
            ratio(rps("full_sqlite", top), rps("bare", top)),
            ">=",
            0.5,
            f"full_sqlite requests/s at concurrency {top} / bare's",
        ),
        "full_sqlite_minus_bare_p50_ms_c1": _target(
            None if full_p50 is None or bare_p50 is None else full_p50 - bare_p50,
            "<=",
            3.0,
            "ms full_sqlite adds to bare's p50 at concurrency 1",
        ),
        f"postgres_2w_over_sqlite_rps_c{top}": _target(
            ratio(rps("full_postgres_2w", top), rps("full_sqlite", top)),
            ">=",
            1.0,
            f"full_postgres_2w requests/s at concurrency {top} / full_sqlite's",
        ),
        f"mad_over_bare_rps_c{top}": _target(
            ratio(rps("mad_sqlite", top), rps("bare", top)),
            ">=",
            0.4,
            f"mad_sqlite requests/s at concurrency {top} / bare's",
        ),
    }
    if len(hist) >= 2:
        lo, hi = hist[0], hist[-1]
        out[f"history_p50_ratio_{hi}_over_{lo}"] = _target(
            ratio(p50("history", history_rows=hi), p50("history", history_rows=lo)),
            "<=",
            1.5,
            f"p50 at concurrency 1 of a client with {hi} rows of history / with {lo}",
        )
    else:
        out["history_p50_ratio"] = _target(None, "<=", 1.5, "needs two --history values")
    batched = ratio(rps("full_sqlite", top), rps("full_sqlite_nobatch", top))
    out[f"batching_gain_rps_c{top}"] = {
        "value": None if batched is None else round(batched, 3),
        "target": None,
        "met": None,
        "what": f"full_sqlite / full_sqlite_nobatch requests/s at {top} (no target: information)",
    }
    return out


# ----------------------------------------------------------------------------- requests


def encode_request(x: torch.Tensor, encoding: str) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer request carrying ``x`` [B, C, H, W] as FP32."""
    arr = x.detach().to(torch.float32).contiguous().numpy()
    inp: dict[str, Any] = {"name": "input", "shape": list(arr.shape), "datatype": "FP32"}
    if encoding == "json":
        inp["data"] = arr.ravel().tolist()
        return json.dumps({"inputs": [inp]}).encode(), {"Content-Type": "application/json"}
    raw = arr.astype("<f4").tobytes()
    inp["parameters"] = {"binary_data_size": len(raw)}
    doc = {
        "inputs": [inp],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    header = json.dumps(doc, separators=(",", ":")).encode()
    return header + raw, {
        HEADER_LENGTH: str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def image_stream(pool: torch.Tensor, n: int, start: int, seed: int = 0) -> torch.Tensor:
    """``n`` distinct images: ``pool`` from index ``start`` on, cycled; every later cycle adds
    a little Gaussian noise (so no two rows repeat, as from a benign client)."""
    p = pool.shape[0]
    idx = torch.arange(start, start + n)
    x = pool[idx % p].clone()
    later = (idx // p) > 0
    if bool(later.any()):
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        noise = 0.03 * torch.randn(x[later].shape, generator=g)
        x[later] = (x[later] + noise).clamp(0, 1)
    return x


class Slots:
    """One HTTP connection per in-flight slot (so each slot is one client on one connection, as
    a real client with keep-alive is), opened with ``client``:

    - ``aiohttp`` (default): about 0.2 ms of client CPU per request on this benchmark's
      machine; the client shares the CPUs with the servers, so a cheap one matters;
    - ``httpx``: httpx's async client, about 1.2 ms of CPU per request.

    Entering opens the connections one after another (each with a ``GET /v2/health/live``), as
    clients arriving over time do, rather than in one burst.
    """

    def __init__(self, url: str, concurrency: int, client: str = "aiohttp") -> None:
        if client not in CLIENTS:
            raise ValueError(f"client: one of {CLIENTS}, got {client!r}")
        self.url, self.concurrency, self.client = url, concurrency, client
        self._sessions: list[Any] = []

    async def __aenter__(self) -> Slots:
        try:
            for _ in range(self.concurrency):
                if self.client == "aiohttp":
                    session: Any = aiohttp.ClientSession(
                        self.url,
                        connector=aiohttp.TCPConnector(limit=1),
                        timeout=aiohttp.ClientTimeout(total=60.0),
                    )
                else:
                    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
                    session = httpx.AsyncClient(base_url=self.url, limits=limits, timeout=60.0)
                self._sessions.append(session)
                status = await self._send(session, "GET", "/v2/health/live", b"", {})
                if status != 200:
                    raise RuntimeError(f"{self.url}/v2/health/live answered {status}")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self._sessions:
            await (session.close() if self.client == "aiohttp" else session.aclose())
        self._sessions.clear()

    async def post(self, j: int, path: str, body: bytes, headers: dict[str, str]) -> int:
        """Send ``body`` on slot ``j``'s connection and read the whole answer → its status
        (-1: the connection failed)."""
        return await self._send(self._sessions[j], "POST", path, body, headers)

    async def _send(
        self, session: Any, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> int:
        try:
            if self.client == "aiohttp":
                async with session.request(method, path, data=body, headers=headers) as r:
                    await r.read()
                    return int(r.status)
            r = await session.request(method, path, content=body, headers=headers)
            return int(r.status_code)
        except (TimeoutError, OSError, httpx.TransportError, aiohttp.ClientError):
            return -1


async def closed_loop(
    url: str,
    path: str,
    bodies: Sequence[tuple[bytes, dict[str, str]]],
    keys: Sequence[str],
    concurrency: int,
    *,
    key_by: Literal["slot", "request"] = "slot",
    timeout: float = 300.0,
    slots: Slots | None = None,
    client: str = "aiohttp",
) -> LoadResult:
    """Send ``bodies`` in order from ``concurrency`` slots, each waiting for its answer.

    ``key_by="slot"``: slot j always uses ``keys[j % len(keys)]``; ``"request"``: request i
    uses ``keys[i % len(keys)]``. No keys: no Authorization header. Bounded by ``timeout``.
    ``slots``: open connections to ``url`` to use; otherwise ``client``'s are opened (before
    the clock starts) and closed.
    """
    if slots is None:
        async with Slots(url, concurrency, client) as own:
            return await closed_loop(
                url, path, bodies, keys, concurrency, key_by=key_by, timeout=timeout, slots=own
            )
    n = len(bodies)
    latencies = [0.0] * n
    statuses = [0] * n
    pending = iter(range(n))  # shared by the slots (one event loop: no race)

    async def slot(j: int) -> None:
        for i in pending:
            body, headers = bodies[i]
            if keys:
                key = keys[(j if key_by == "slot" else i) % len(keys)]
                headers = {**headers, "Authorization": f"Bearer {key}"}
            t0 = time.perf_counter()
            statuses[i] = await slots.post(j, path, body, headers)
            latencies[i] = time.perf_counter() - t0

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(slot(j) for j in range(concurrency))), timeout)
    wall = time.perf_counter() - start
    return LoadResult(latencies, statuses, wall)


async def interleaved(
    runs: Sequence[tuple[str, Sequence[str], Sequence[tuple[bytes, dict[str, str]]]]],
    path: str,
    concurrency: int,
    rounds: int,
    *,
    timeout: float = 300.0,
    client: str = "aiohttp",
) -> list[LoadResult]:
    """Closed loops against several servers, taking turns: each ``(url, keys, bodies)`` is cut
    into ``rounds`` blocks and the servers' blocks alternate (the order rotating every round),
    so that what else the machine does in the meantime hits every server alike. Each block
    opens connections of its own (:class:`Slots`): how they fall on a server's uvicorn workers
    varies from one set to the next, and the blocks average it out. One result per run: its
    latencies and statuses in order, and the summed wall time of its blocks."""
    out = [LoadResult([], [], 0.0) for _ in runs]
    deadline = time.monotonic() + timeout
    for r in range(rounds):
        for k in range(len(runs)):
            i = (k + r) % len(runs)
            url, keys, bodies = runs[i]
            n = len(bodies)
            block = bodies[r * n // rounds : (r + 1) * n // rounds]
            if not block:
                continue
            left = max(1.0, deadline - time.monotonic())
            async with Slots(url, concurrency, client) as slots:
                res = await closed_loop(
                    url, path, block, keys, concurrency, timeout=left, slots=slots
                )
            out[i].latencies += res.latencies
            out[i].statuses += res.statuses
            out[i].wall += res.wall
    return out


def check_answer(url: str, path: str, body: tuple[bytes, dict[str, str]], key: str | None) -> int:
    """Send one request and check that a 200 decodes to one row of probabilities → classes."""
    from stealproof.serve.protocol import decode_infer_response

    headers = dict(body[1])
    if key:
        headers["Authorization"] = f"Bearer {key}"
    r = httpx.post(url + path, content=body[0], headers=headers, timeout=60.0)
    if r.status_code != 200:
        raise RuntimeError(f"{url}{path}: status {r.status_code}: {r.text[:200]}")
    out = decode_infer_response(r.content, r.headers.get(HEADER_LENGTH))["probabilities"]
    if out.ndim != 2 or out.shape[0] != 1:
        raise RuntimeError(f"{url}{path}: unexpected output shape {out.shape}")
    return int(out.shape[1])


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A server subprocess: its URL, its output (drained by a thread) and how to stop it."""

    proc: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return int(self.proc.returncode)


def _child_env() -> dict[str, str]:
    """The environment without STEALPROOF_* settings (they would override the config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEALPROOF_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(cmd: Sequence[str], *, timeout: float = 120.0) -> Server:
    """Start ``cmd``, read its ``serving ... on http://127.0.0.1:PORT`` line, drain its output
    in a thread, and wait until ``/v2/health/ready`` answers."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_child_env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # a full pipe would stall the server's logging
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = _SERVING.search(line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    ready.wait(timeout)
    server = Server(proc, found[0] if found else "", lines)
    if not found:
        server.stop(timeout=5)
        raise RuntimeError(f"server {cmd[0]} did not start:\n" + "".join(lines[-20:]))
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(timeout=5)
    raise RuntimeError("server never became ready:\n" + "".join(lines[-20:]))


@contextlib.contextmanager
def running(cmd: Sequence[str]) -> Iterator[Server]:
    """A started server for the duration of a ``with`` block."""
    server = start_server(cmd)
    try:
        yield server
    finally:
        server.stop()


def stealproof_exe() -> str:
    """The ``stealproof`` command of this interpreter's environment."""
    exe = Path(sys.executable).parent / "stealproof"
    found = str(exe) if exe.is_file() else shutil.which("stealproof")
    if not found:
        raise RuntimeError("the `stealproof` command is not installed next to this Python")
    return found


def bare_app(checkpoint: Path) -> Any:
    """The floor: the victim behind one FastAPI infer route with the gateway's protocol codec;
    no authentication, database, defense or policy. The forward runs in the thread pool, as
    the gateway's does."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from stealproof.models import load_checkpoint
    from stealproof.oracle import victim_posteriors
    from stealproof.serve import protocol

    victim, _ = load_checkpoint(checkpoint)
    victim.eval()
    c, h, w = (int(v) for v in tuple(victim.input_shape))
    spec = protocol.InputSpec(name="input", shape=(c, h, w))
    name = checkpoint.stem
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        if model != name:
            return JSONResponse({"error": f"unknown model {model!r}"}, status_code=404)
        body = await request.body()
        try:
            parsed = protocol.parse_infer_request(
                body,
                request.headers.get(HEADER_LENGTH),
                spec,
                max_rows=256,
                max_bytes=16 * 2**20,
                available_outputs=(protocol.OUTPUT_PROBS,),
            )
        except protocol.ProtocolError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        clean, _ = await run_in_threadpool(victim_posteriors, victim, parsed.x)
        content, headers = protocol.encode_infer_response(
            model_name=name,
            model_version="1",
            request_id=parsed.request_id,
            output_name=protocol.OUTPUT_PROBS,
            tensor=clean,
            binary=parsed.binary_output,
        )
        media = headers.pop("Content-Type", "application/json")
        return Response(content=content, media_type=media, headers=headers)

    return app


def serve_bare(checkpoint: Path, threads: int) -> int:
    """Run :func:`bare_app` with uvicorn on a free port of 127.0.0.1 (the bare subprocess)."""
    import uvicorn

    from stealproof.cli.serve import bind_socket

    torch.set_num_threads(threads)
    app = bare_app(checkpoint)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    print(f"bare model serving {checkpoint.stem} on http://127.0.0.1:{port}", flush=True)
    try:
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


# ----------------------------------------------------------------------------- setup


def prepare_victim(workdir: Path, quick: bool) -> tuple[Path, str]:
    """The victim checkpoint (trained once, cached in ``workdir``) and its dataset name."""
    from stealproof.cli import auto_threads
    from stealproof.data import load_dataset
    from stealproof.experiment import SCENARIOS, train_victim
    from stealproof.models import save_checkpoint

    scenario = "digits" if quick else "mnist5k"
    sc = SCENARIOS[scenario]
    path = workdir / f"{scenario}-{sc.model}.pt"
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            before = torch.get_num_threads()
            torch.set_num_threads(auto_threads())
            try:
                ds = load_dataset(sc.dataset)
                model, acc = train_victim(ds, sc.model, sc.victim_training, seed=0)
            finally:
                torch.set_num_threads(before)
        save_checkpoint(model, path, {"dataset": sc.dataset, "test_acc": acc, "seed": 0})
    return path, sc.dataset


def prepare_mad(workdir: Path, victim: Path, threads: int) -> Path:
    """``stealproof prepare-defense --defense mad`` for ``victim``, cached in ``workdir``."""
    out = workdir / f"{victim.stem}-mad"
    if not (out / "defense.json").is_file():
        cmd = [stealproof_exe(), "prepare-defense", "--victim", str(victim), "--defense", "mad"]
        cmd += ["--out", str(out), "--threads", str(threads), "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"prepare-defense failed: {(done.stderr or done.stdout)[-500:]}")
    return out


def write_gateway_config(
    directory: Path,
    victim: Path,
    db_url: str,
    *,
    defense: str,
    params: dict[str, Any],
    models_dir: Path | None,
    batching_wait_ms: float,
    batching_rows: int | None = None,
) -> Path:
    """gateway.yaml: one model, ``defense``, a PRADA policy that never blocks (every row is
    still checked), no admin key (admin API off)."""
    model: dict[str, Any] = {
        "name": victim.stem,
        "checkpoint": str(victim),
        "defense": defense,
        "params": params,
        "policy": {
            "detectors": [{"kind": "prada", "params": {"delta": PRADA_DELTA}}],
            "max_flagged": None,
        },
    }
    if models_dir is not None:
        model["models_dir"] = str(models_dir)
    doc = {
        "models": [model],
        "max_rows_per_request": HISTORY_BATCH,
        "batching": {
            "max_wait_ms": batching_wait_ms,
            **({} if batching_rows is None else {"max_rows": batching_rows}),
        },
        "database_url": db_url,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def create_clients(db_url: str, names: Sequence[str]) -> list[str]:
    """Migrate the database and create one client with one key per name → the keys."""
    from stealproof.serve.db import repo
    from stealproof.serve.db.engine import make_engine, make_sessionmaker
    from stealproof.serve.db.migrate import upgrade

    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine).begin() as s:
            return [repo.add_key(s, repo.create_client(s, name)) for name in names]
    finally:
        engine.dispose()


def postgres_reason(url: str) -> str | None:
    """None when PostgreSQL at ``url`` answers a query within about 2 s, else why not."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(url, connect_args={"connect_timeout": 2}, poolclass=NullPool)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # any failure means "not available": the case is skipped
        return f"PostgreSQL at {url.split('@')[-1]} does not answer ({type(e).__name__})"
    return None


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema ``gwload_<hex>`` → a URL whose search_path is it; dropped on exit."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    schema = f"gwload_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in url else "?"
        try:
            yield f"{url}{sep}options=-csearch_path%3D{schema}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


# ----------------------------------------------------------------------------- running


@dataclass
class Bench:
    """What every case shares: options, victim, request images and the rows so far."""

    args: argparse.Namespace
    victim: Path
    pool: torch.Tensor
    workdir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    offset: int = 0  # next unused index of the image stream

    @property
    def path(self) -> str:
        return f"/v2/models/{self.victim.stem}/infer"

    def bodies(self, n: int, rows_per_request: int = 1) -> list[tuple[bytes, dict[str, str]]]:
        """``n`` requests of fresh images (``rows_per_request`` rows each)."""
        x = image_stream(self.pool, n * rows_per_request, self.offset)
        self.offset += n * rows_per_request
        return [
            encode_request(x[i : i + rows_per_request], self.args.encoding)
            for i in range(0, n * rows_per_request, rows_per_request)
        ]

    def measure(self, started: Sequence[Started]) -> None:
        """At each concurrency, warm every started server up, then measure them in alternating
        blocks (:func:`interleaved`) → one row per case and concurrency (appended)."""
        a = self.args
        for c in a.concurrency:
            runs = [t for t in started if c in t.concurrencies]
            if not runs:
                continue
            load1 = round(os.getloadavg()[0], 2)
            for t in runs:
                keys = t.keys.get(c, [])
                check_answer(t.server.url, self.path, self.bodies(1)[0], keys[0] if keys else None)
                if a.warmup:
                    warm = self.bodies(max(a.warmup, 2 * c))
                    asyncio.run(
                        closed_loop(
                            t.server.url,
                            self.path,
                            warm,
                            keys,
                            c,
                            timeout=a.case_timeout,
                            client=a.client,
                        )
                    )
            n = requests_at(a.requests, c)
            plan = [(t.server.url, t.keys.get(c, []), self.bodies(n)) for t in runs]
            results = asyncio.run(
                interleaved(
                    plan,
                    self.path,
                    c,
                    a.rounds,
                    timeout=a.case_timeout * len(runs),
                    client=a.client,
                )
            )
            for t, result in zip(runs, results, strict=True):
                row = summarize(
                    t.case, c, result, clients=len(t.keys.get(c, [])), load1=load1, **t.extra
                )
                self.rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    def history(self, server: Server, keys: Sequence[str]) -> None:
        """Give client i ``history[i]`` rows, then alternate their single-image requests."""
        a = self.args
        for key, n in zip(keys, a.history, strict=True):
            sizes = [HISTORY_BATCH] * (n // HISTORY_BATCH) + (
                [n % HISTORY_BATCH] if n % HISTORY_BATCH else []
            )
            for size in sizes:
                result = asyncio.run(
                    closed_loop(
                        server.url,
                        self.path,
                        self.bodies(1, size),
                        [key],
                        1,
                        timeout=120.0,
                        client=a.client,
                    )
                )
                if result.statuses != [200]:
                    raise RuntimeError(f"history request of {size} rows: {result.statuses}")
        load1 = round(os.getloadavg()[0], 2)
        k = len(keys)
        if a.warmup:
            warm = self.bodies(k * max(1, a.warmup // k))
            asyncio.run(
                closed_loop(
                    server.url,
                    self.path,
                    warm,
                    keys,
                    1,
                    key_by="request",
                    timeout=120,
                    client=a.client,
                )
            )
        per = requests_at(a.requests, 1)
        result = asyncio.run(
            closed_loop(
                server.url,
                self.path,
                self.bodies(k * per),
                keys,
                1,
                key_by="request",
                timeout=a.case_timeout,
                client=a.client,
            )
        )
        for i, n in enumerate(a.history):
            part = LoadResult(result.latencies[i::k], result.statuses[i::k], result.wall / k)
            row = summarize("history", 1, part, history_rows=n, clients=1, load1=load1)
            row["rps"] = None  # alternating clients: no per-client throughput
            self.rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    def start_gateway(
        self,
        stack: contextlib.ExitStack,
        case: str,
        db_url: str,
        concurrencies: Sequence[int],
        *,
        defense: str = "reverse_sigmoid",
        params: dict[str, Any] | None = None,
        models_dir: Path | None = None,
        workers: int = 1,
        batching_rows: int | None = None,
        history: bool = False,
    ) -> Started:
        """Start ``stealproof serve`` for one case (stopped when ``stack`` closes), with one
        client per in-flight slot at each concurrency (and the history clients)."""
        a = self.args
        wait = a.batching_wait_ms
        directory = self.workdir / "cases" / case
        config = write_gateway_config(
            directory,
            self.victim,
            db_url,
            defense=defense,
            params=RS_PARAMS if params is None else params,
            models_dir=models_dir,
            batching_wait_ms=wait,
            batching_rows=batching_rows,
        )
        names = [f"{case}-c{c}-{j}" for c in concurrencies for j in range(c)]
        hist_names = [f"history-{n}" for n in a.history] if history else []
        by_name = dict(
            zip(names + hist_names, create_clients(db_url, names + hist_names), strict=True)
        )
        cmd = [stealproof_exe(), "serve", "--config", str(config), "--host", "127.0.0.1"]
        cmd += ["--port", "0", "--workers", str(workers), "--threads", str(a.threads)]
        extra: dict[str, Any] = {"workers": workers, "batching_max_wait_ms": wait}
        if batching_rows is not None:
            extra["batching_max_rows"] = batching_rows
        extra["defense"] = defense
        server = stack.enter_context(running(cmd))
        keys = {c: [by_name[f"{case}-c{c}-{j}"] for j in range(c)] for c in concurrencies}
        return Started(
            case, server, keys, extra, list(concurrencies), [by_name[n] for n in hist_names]
        )


@dataclass
class Started:
    """A case's running server: its clients' keys per concurrency (none for ``bare``), the
    fields its rows carry, the concurrencies it is measured at and its history clients."""

    case: str
    server: Server
    keys: dict[int, list[str]]
    extra: dict[str, Any]
    concurrencies: list[int]
    history_keys: list[str] = field(default_factory=list)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every selected case → the result document."""
    from stealproof.data import load_dataset

    begun = time.time()
    load_start = [round(v, 2) for v in os.getloadavg()]
    victim, dataset = prepare_victim(workdir, args.quick)
    ds = load_dataset(dataset)
    pool = (
        ds.test.images if ds.unlabeled is None else torch.cat([ds.test.images, ds.unlabeled.images])
    )
    bench = Bench(args, victim, pool, workdir)
    cases, conc = args.cases, args.concurrency
    top = max(conc)
    sqlite = f"sqlite:///{(workdir / 'cases').resolve()}"
    with contextlib.ExitStack() as stack:
        started: list[Started] = []
        if "bare" in cases:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(victim)]
            server = stack.enter_context(running([*cmd, "--threads", str(args.threads)]))
            started.append(Started("bare", server, {}, {"workers": 1}, list(conc)))
        full: Started | None = None
        if "full_sqlite" in cases or "history" in cases:
            full = bench.start_gateway(
                stack,
                "full_sqlite",
                f"{sqlite}/full_sqlite.db",
                conc if "full_sqlite" in cases else [],
                history="history" in cases and bool(args.history),
            )
            started.append(full)
        if "full_sqlite_nobatch" in cases:
            started.append(
                bench.start_gateway(
                    stack, "full_sqlite_nobatch", f"{sqlite}/nobatch.db", [top], batching_rows=1
                )
            )
        if "full_postgres_2w" in cases:
            reason = postgres_reason(args.pg_url)
            if reason is not None:
                bench.rows.append({"case": "full_postgres_2w", "skipped": reason})
            else:
                pg = stack.enter_context(postgres_schema(args.pg_url))
                started.append(bench.start_gateway(stack, "full_postgres_2w", pg, conc, workers=2))
        if "mad_sqlite" in cases:
            mad = prepare_mad(workdir, victim, args.threads)
            started.append(
                bench.start_gateway(
                    stack,
                    "mad_sqlite",
                    f"{sqlite}/mad.db",
                    conc,
                    defense="mad",
                    params={},
                    models_dir=mad,
                )
            )
        bench.measure(started)
        if full is not None and full.history_keys:
            bench.history(full.server, full.history_keys)
    # measured side by side, reported case by case
    bench.rows.sort(key=lambda r: (CASES.index(r["case"]), r.get("concurrency") or 0))
    return {
        "benchmark": "gateway_load",
        "victim": {"checkpoint": victim.name, "dataset": dataset},
        "config": {
            "encoding": args.encoding,
            "client": args.client,
            "request": "single image, FP32 [1, C, H, W]",
            "loop": "closed; one client and one connection per in-flight slot; the cases' servers "
            "run side by "
            f"side and are measured in {args.rounds} alternating blocks (history: alternating "
            "clients)",
            "requests_top": args.requests,
            "requests_c1": requests_at(args.requests, 1),
            "warmup": args.warmup,
            "concurrency": conc,
            "history_rows": args.history if "history" in cases else [],
            "history_batch_rows": HISTORY_BATCH,
            "server_torch_threads": args.threads,
            "batching_max_wait_ms": args.batching_wait_ms,
            "policy": f"prada delta {PRADA_DELTA}, max_flagged null (never blocks)",
            "durability": "the gateway's defaults: sqlite_synchronous normal, "
            "postgres_synchronous_commit off (both keep every commit through a killed gateway "
            "process; a power loss or database crash may lose the last ones)",
            "reverse_sigmoid": RS_PARAMS,
            "mad": "prepare-defense defaults",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "note": "client, servers (and PostgreSQL) share these CPUs",
        },
        "seconds": round(time.time() - begun, 1),
        "rows": bench.rows,
        "targets": targets(bench.rows, top),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        return serve_bare(Path(args.serve_bare), args.threads)
    logging_quiet()
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        temp = None
    else:
        temp = workdir = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    try:
        shutil.rmtree(workdir / "cases", ignore_errors=True)  # databases of an earlier run
        (workdir / "cases").mkdir()
        result = run(args, workdir.resolve())
    finally:
        shutil.rmtree(workdir / "cases", ignore_errors=True)
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out:
        from stealproof._io import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    print(text)
    return 0


def logging_quiet() -> None:
    """No per-request log lines from httpx."""
    import logging

    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
