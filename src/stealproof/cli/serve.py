"""``stealproof serve``: run the gateway (and ``--demo``: a first try on built-in data)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from stealproof.cli._shared import (
    _sessions,
    _settings,
    _setup,
    _write_secret,
    auto_threads,
    err_console,
    friendly_errors,
)
from stealproof.errors import ConfigError

app = typer.Typer()  # merged into the root app (stealproof.cli)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Accepted connections must have Nagle's algorithm off: a response written in two parts
    (head, then body) otherwise waits for the client's delayed ACK, ~40 ms per request. asyncio
    turns it off only for sockets whose ``proto`` is ``IPPROTO_TCP``, and Linux copies
    ``TCP_NODELAY`` from the listening socket to the accepted ones, so both are set here.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


DEMO_CLIENT = "demo"


def _demo_delta(victim: Path) -> float:
    """PRADA's δ for the demo victim: the largest value with no flag on benign streams of held-out
    digits (5 streams of 400 queries), less a 0.02 margin — what the PRADA docs prescribe."""
    import torch

    from stealproof.data import load_dataset
    from stealproof.detectors import benign_streams, calibrate_delta
    from stealproof.models import load_checkpoint

    ds = load_dataset("digits")
    assert ds.unlabeled is not None
    held_out = torch.cat([ds.test.images, ds.unlabeled.images])
    model, _ = load_checkpoint(victim)
    streams = benign_streams(held_out, 5, 400, seed=1000)
    return round(calibrate_delta(streams, model, margin=0.02), 4)


def prepare_demo(workdir: Path, *, quiet: bool = False) -> Path:
    """Train (or reuse) a digits MLP in ``workdir``, write gateway.yaml, migrate, create the demo
    client and the admin key; returns the config path. Running it again reuses everything."""
    import yaml

    from stealproof._io import check_output_dir, write_text_atomic
    from stealproof.serve.db import repo
    from stealproof.serve.db.migrate import upgrade

    check_output_dir(workdir, "--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    victim = workdir / "digits-mlp.pt"
    config = workdir / "gateway.yaml"
    if not victim.is_file():
        from stealproof.data import load_dataset
        from stealproof.experiment import SCENARIOS, train_victim
        from stealproof.models import save_checkpoint

        sc = SCENARIOS["digits"]
        if not quiet:
            err_console.print("training a digits MLP victim (a few seconds) ...")
        ds = load_dataset(sc.dataset)
        model, acc = train_victim(ds, sc.model, sc.victim_training, seed=0)
        save_checkpoint(model, victim, {"dataset": "digits", "test_acc": acc, "seed": 0})
    if not config.is_file():
        delta = _demo_delta(victim)
        doc = {
            "models": [
                {
                    "name": "digits",
                    "checkpoint": victim.name,
                    "defense": "reverse_sigmoid",
                    "params": {"beta": 0.7, "gamma": 0.2},
                    "policy": {
                        "detectors": [{"kind": "prada", "params": {"delta": delta}}],
                        "max_flagged": 40,
                    },
                }
            ],
            "max_rows_per_request": 256,
            "admin_key_file": "admin.key",
        }
        write_text_atomic(
            config,
            "# stealproof gateway (written by `stealproof serve --demo`); see docs/gateway.md\n"
            + yaml.safe_dump(doc, sort_keys=False),
        )
    admin = workdir / "admin.key"
    if not admin.is_file():
        _write_secret(admin, secrets.token_urlsafe(32))
    settings = _settings(config)
    upgrade(settings.resolved_database_url())
    client_key = workdir / "demo-client.key"
    with _sessions(settings).begin() as s:
        c = repo.get_client(s, DEMO_CLIENT)
        if c is None:
            c = repo.create_client(s, DEMO_CLIENT, quota_rows=settings.quota_rows)
        if not client_key.is_file():
            _write_secret(client_key, repo.add_key(s, c))
    return config


def serve_cmd(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Gateway YAML file.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")
    ] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Train and serve a digits model in --workdir (a first try)."),
    ] = False,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="With --demo: where its files live.")
    ] = Path("stealproof-demo"),
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="Torch threads per worker (0 = auto).")
    ] = 0,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Serve defended models over the Open Inference Protocol (KServe V2)."""
    import uvicorn

    if demo:
        if config is not None:
            raise ConfigError("--demo writes its own config; pass --workdir instead of --config")
        config = prepare_demo(workdir)
    if config is None:
        raise ConfigError("serve: pass --config FILE (or --demo for a first try)")
    settings = _settings(config)
    per_worker = threads or max(1, auto_threads() // workers)
    _setup(per_worker, quiet=True)
    from stealproof.serve.app import CONFIG_ENV, THREADS_ENV, build_gateway, create_app
    from stealproof.serve.metrics import prepare_multiprocess

    settings.admin_key()  # a bad admin key fails before anything is served
    gateway, engine = build_gateway(settings)  # config, database and models checked up front
    multiproc_dir = prepare_multiprocess(workers)  # workers share metrics through files there
    app = create_app(settings, gateway=gateway) if workers == 1 else None
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{host}:{bound}"
    names = ", ".join(gateway.model_names())
    print(f"stealproof gateway serving {names} on {url} ({workers} worker(s))", flush=True)
    if demo:
        key_file = workdir / "demo-client.key"
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 8, 8],
                        "datatype": "UINT8",
                        "data": [0] * 28 + [255] * 8 + [0] * 28,
                    }
                ]
            }
        )
        print(
            "try it:\n"
            f"  curl -s {url}/v2/models/digits\n"
            f'  curl -s -H "Authorization: Bearer $(cat {key_file})" '
            f"{url}/v2/models/digits/infer -d '{body}'",
            flush=True,
        )
    sys.stdout.flush()
    try:
        if app is not None:
            server = uvicorn.Server(
                uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
            )
            server.run(sockets=[sock])
        else:
            engine.dispose()
            os.environ[CONFIG_ENV] = str(Path(config).resolve())
            os.environ[THREADS_ENV] = str(per_worker)
            from stealproof.serve.balance import run_workers

            run_workers(
                uvicorn.Config(
                    "stealproof.serve.app:app_from_env",
                    factory=True,
                    workers=workers,
                    log_level=log_level,
                    timeout_graceful_shutdown=5,
                ),
                sock,
            )
    finally:
        sock.close()
        engine.dispose()
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


app.command("serve")(friendly_errors(serve_cmd))
