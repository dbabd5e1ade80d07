"""``stealproof clients``: the gateway's clients."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stealproof.cli._shared import (
    ConfigOpt,
    _gateway_for_admin,
    _settings,
    console,
    friendly_errors,
)
from stealproof.errors import ConfigError

clients_app = typer.Typer(help="The gateway's clients.", no_args_is_help=True)


@clients_app.command("list")
@friendly_errors
def clients_list(
    config: ConfigOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Clients with rows used, flagged rows, quota and standing."""

    from rich.table import Table

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
