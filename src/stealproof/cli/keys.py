"""``stealproof keys``: API keys of the gateway's clients."""

from __future__ import annotations

from typing import Annotated

import typer

from stealproof.cli._shared import ConfigOpt, _sessions, _settings, err_console, friendly_errors
from stealproof.errors import ConfigError
from stealproof.serve.settings import MAX_QUOTA_ROWS

keys_app = typer.Typer(help="API keys of the gateway's clients.", no_args_is_help=True)


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
