"""``stealproof db``: the gateway's database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stealproof.cli._shared import _settings, friendly_errors
from stealproof.errors import ConfigError

db_app = typer.Typer(help="The gateway's database.", no_args_is_help=True)


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
