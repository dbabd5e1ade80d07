"""Gateway test setup: a trained digits victim, a gateway.yaml, clients with keys, a live server.

The server fixture runs the real ``stealproof serve --port 0`` as a subprocess, reads the bound
port from its first line, polls ``/v2/health/ready`` and stops it with SIGTERM (or SIGKILL when
a test asks for a crash).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml

from stealproof.data import load_dataset
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.models import save_checkpoint
from stealproof.serve.db import repo
from stealproof.serve.db.engine import make_engine, make_sessionmaker

ADMIN_KEY = "test-admin-" + "k" * 32


def digits_victim(directory: Path, seed: int = 0) -> Path:
    """A trained digits MLP checkpoint (about 97 % test accuracy), written once per directory."""
    path = directory / f"digits-mlp-{seed}.pt"
    if not path.is_file():
        sc = SCENARIOS["digits"]
        ds = load_dataset(sc.dataset)
        model, acc = train_victim(ds, sc.model, sc.victim_training, seed=seed)
        save_checkpoint(model, path, {"dataset": "digits", "test_acc": acc, "seed": seed})
    return path


def write_config(
    directory: Path,
    victim: Path,
    db_url: str,
    *,
    defense: str = "reverse_sigmoid",
    params: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    """gateway.yaml for one model ``digits`` with an admin key file."""
    (directory / "admin.key").write_text(ADMIN_KEY + "\n")
    model: dict[str, Any] = {
        "name": "digits",
        "checkpoint": str(victim),
        "defense": defense,
        "params": params if params is not None else {"beta": 0.7, "gamma": 0.2},
    }
    if policy is not None:
        model["policy"] = policy
    doc = {"models": [model], "database_url": db_url, "admin_key_file": "admin.key", **top}
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def create_clients(db_url: str, *names: str, quota: int | None = None) -> dict[str, str]:
    """Create clients with one key each → {name: key}."""
    engine = make_engine(db_url)
    try:
        keys = {}
        with make_sessionmaker(engine).begin() as s:
            for name in names:
                c = repo.create_client(s, name, quota_rows=quota)
                keys[name] = repo.add_key(s, c)
        return keys
    finally:
        engine.dispose()


def db_snapshot(db_url: str) -> dict[str, Any]:
    """Counters, log rows and state bytes of every client, for exact before/after comparisons."""
    from sqlalchemy import select

    from stealproof.serve.db.models import Client, ClientModelState, QueryLog

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            clients = {
                c.name: (c.rows_used, c.requests, c.flagged_rows, c.admin_blocked)
                for c in s.scalars(select(Client))
            }
            states = {
                (st.client_id, st.model): (bytes(st.state), st.policy_blocked, st.version)
                for st in s.scalars(select(ClientModelState))
            }
            logs = [
                (e.id, e.client_id, e.rows, tuple(e.input_sha256), tuple(e.actions))
                for e in s.scalars(select(QueryLog).order_by(QueryLog.id))
            ]
        return {"clients": clients, "states": states, "logs": logs}
    finally:
        engine.dispose()


@dataclass
class Server:
    """A running ``stealproof serve`` subprocess."""

    proc: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Stop the server: SIGTERM lets uvicorn stop its workers; SIGKILL (a crash) goes to
        the whole process group, or the workers would outlive the killed supervisor."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        _reap_group(self.proc.pid)
        return int(self.proc.returncode)


def _reap_group(pgid: int) -> None:
    """Kill whatever is left of a server's process group (workers of a killed supervisor)."""
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def start_server(config: Path, *, timeout: float = 90.0, extra: tuple[str, ...] = ()) -> Server:
    """Start ``stealproof serve --config CONFIG --port 0`` and wait until it is ready."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [str(Path(sys.executable).parent / "stealproof"), "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", "0", "--threads", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: stop() can kill the workers too
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    url = None
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
    if url is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        raise AssertionError("server did not start:\n" + "".join(lines))
    server = Server(proc, url, lines)

    def drain() -> None:  # keep reading, or a full pipe would stall the server's logging
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).json() == {"ready": True}:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise AssertionError("server never became ready")


@contextmanager
def running(config: Path, **kw: Any) -> Iterator[Server]:
    """A server for the duration of a ``with`` block."""
    server = start_server(config, **kw)
    try:
        yield server
    finally:
        server.stop()


def random_digits(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` 1×8×8 test images from the digits test split (deterministic)."""
    ds = load_dataset("digits")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(ds.test.images.shape[0], generator=g)[:n]
    return ds.test.images[idx]
