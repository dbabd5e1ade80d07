"""``stealproof serve``, ``stealproof db``, ``stealproof keys`` and ``stealproof clients``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stealproof._cli_errors import err_console, friendly_errors
from stealproof.errors import ConfigError
from stealproof.serve.settings import MAX_QUOTA_ROWS

if TYPE_CHECKING:
    from stealproof.serve.settings import ServeSettings

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="Gateway YAML file (see docs/gateway.md).")
]

db_app = typer.Typer(help="The gateway's database.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the gateway's clients.", no_args_is_help=True)
clients_app = typer.Typer(help="The gateway's clients.", no_args_is_help=True)


def _settings(config: Path) -> ServeSettings:
    from stealproof.serve.settings import load_settings

    return load_settings(config)


def _sessions(settings: ServeSettings) -> Any:
    """Write sessions on the configured database (refused when it is not migrated)."""
    return _gateway_for_admin(settings).sessions


def _write_secret(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (mode 0600), through a rename."""
    from stealproof._io import tmp_name

    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- db


@db_app.command("upgrade")
@friendly_errors
def db_upgrade(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Gateway YAML file.")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Database URL (instead of --config).")
    ] = None,
) -> None:
    """Create or migrate the database to the current schema (alembic ``upgrade head``)."""
    from stealproof.serve.db.engine import redact_url
    from stealproof.serve.db.migrate import upgrade

    if (config is None) == (url is None):
        raise ConfigError("db upgrade: pass --config FILE or --url URL")
    target = url if url is not None else _settings(config).resolved_database_url()  # type: ignore[arg-type]
    head = upgrade(target)
    print(f"database {redact_url(target)} is at revision {head}")


# ----------------------------------------------------------------------------- keys


@keys_app.command("create")
@friendly_errors
def keys_create(
    name: Annotated[str, typer.Argument(help="Client name (created when new).")],
    config: ConfigOpt,
    quota: Annotated[
        int | None,
        typer.Option(
            "--quota",
            min=0,
            max=MAX_QUOTA_ROWS,
            help="Row quota of a new client (default: the config's).",
        ),
    ] = None,
) -> None:
    """Issue an API key for a client (created when new); prints the key once, on stdout."""
    from stealproof.serve.db import repo
    from stealproof.serve.settings import safe_name

    if not safe_name(name):
        raise ConfigError(
            f"client name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
        )
    settings = _settings(config)
    with _sessions(settings).begin() as s:
        c = repo.get_client(s, name)
        if c is None:
            c = repo.create_client(
                s, name, quota_rows=quota if quota is not None else settings.quota_rows
            )
            err_console.print(f"created client {name!r}", highlight=False)
        elif quota is not None:
            raise ConfigError(f"client {name!r} exists; --quota applies to a new client only")
        key = repo.add_key(s, c)
    print(key)


@keys_app.command("revoke")
@friendly_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's visible id (sp_<id>_...).")],
    config: ConfigOpt,
) -> None:
    """Revoke an API key: requests with it get 401."""
    from stealproof.serve.db import repo

    with _sessions(_settings(config)).begin() as s:
        if not repo.revoke_key(s, key_id):
            raise ConfigError(f"no active key with id {key_id!r}")
    print(f"revoked key {key_id}")


# ----------------------------------------------------------------------------- clients


def _gateway_for_admin(settings: ServeSettings, *, with_models: bool = False) -> Any:
    """A gateway over the configured database; models are loaded only when asked for (to lift
    policy blocks, the policies' state is needed)."""
    from stealproof.serve.app import build_gateway

    return build_gateway(settings, with_models=with_models)[0]


@clients_app.command("list")
@friendly_errors
def clients_list(
    config: ConfigOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Clients with rows used, flagged rows, quota and standing."""
    import json

    from rich.table import Table

    from stealproof.cli import console
    from stealproof.serve.db import repo

    gateway = _gateway_for_admin(_settings(config))
    with gateway.read_session() as s:
        rows = [gateway.client_summary(s, c) for c in repo.list_clients(s)]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} clients")
    for col in ("name", "rows_used", "requests", "flagged_rows", "quota_rows", "standing"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["rows_used"]),
            str(r["requests"]),
            str(r["flagged_rows"]),
            "-" if r["quota_rows"] is None else str(r["quota_rows"]),
            r["standing"] + (f" ({r['block_reason']})" if r["block_reason"] else ""),
        )
    console.print(table)


def _set_block(config: Path, name: str, blocked: bool, reason: str) -> None:
    from stealproof.serve.db import repo

    gateway = _gateway_for_admin(_settings(config), with_models=not blocked)
    with gateway.exclusive(), gateway.sessions.begin() as s:
        found = repo.get_client(s, name)
        if found is None:
            raise ConfigError(f"unknown client {name!r}")
        c = repo.lock_client(s, found.id)
        repo.set_admin_block(s, c, blocked, reason if blocked else None)
        if not blocked:
            gateway.unblock_policy(s, c)


@clients_app.command("block")
@friendly_errors
def clients_block(
    name: Annotated[str, typer.Argument(help="Client name.")],
    config: ConfigOpt,
    reason: Annotated[str, typer.Option("--reason")] = "blocked by an administrator",
) -> None:
    """Block a client: its next requests get 403."""
    _set_block(config, name, True, reason)
    print(f"blocked {name}")


@clients_app.command("unblock")
@friendly_errors
def clients_unblock(
    name: Annotated[str, typer.Argument(help="Client name.")],
    config: ConfigOpt,
) -> None:
    """Lift an administrator's block and every policy block of a client."""
    _set_block(config, name, False, "")
    print(f"unblocked {name}")


# ----------------------------------------------------------------------------- serve


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

    from stealproof.cli import _setup, auto_threads

    if demo:
        if config is not None:
            raise ConfigError("--demo writes its own config; pass --workdir instead of --config")
        config = prepare_demo(workdir)
    if config is None:
        raise ConfigError("serve: pass --config FILE (or --demo for a first try)")
    settings = _settings(config)
    _setup(threads or max(1, auto_threads() // workers), quiet=True)
    from stealproof.serve.app import CONFIG_ENV, build_gateway, create_app
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
            uvicorn.run(
                "stealproof.serve.app:app_from_env",
                factory=True,
                fd=sock.fileno(),
                workers=workers,
                log_level=log_level,
                timeout_graceful_shutdown=5,
            )
    finally:
        sock.close()
        engine.dispose()
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    """Add the gateway's commands to the main CLI."""
    app.command("serve")(friendly_errors(serve_cmd))
    app.add_typer(db_app, name="db")
    app.add_typer(keys_app, name="keys")
    app.add_typer(clients_app, name="clients")
