"""The ``stealproof`` command line.

One module per command group (``demo``, ``victims``, ``attack``, ``defenses``, ``catalogue``,
``bench``, ``guardian``, ``serve``, ``db``, ``keys``, ``clients``, ``verify``), each importing
only :mod:`stealproof.cli._shared` (consoles, progress, error handling, common options) and the
library; this module puts them together. Errors a user can cause (bad input, missing files,
unknown names, spent budgets) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from stealproof import __version__
from stealproof.cli import (
    attack,
    bench,
    catalogue,
    clients,
    db,
    defenses,
    demo,
    guardian,
    keys,
    serve,
    verify,
    victims,
)
from stealproof.cli._shared import auto_threads, console, dumps_strict, parse_params, progress_bar

__all__ = ["app", "auto_threads", "dumps_strict", "main", "parse_params", "progress_bar"]

app = typer.Typer(
    name="stealproof",
    help="Defenses against model stealing, the attacks to test them, and measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"stealproof {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Defenses against model stealing, the attacks to test them, and measurements."""


for _commands in (demo, victims, attack, defenses, catalogue, serve):
    app.add_typer(_commands.app)
app.add_typer(bench.bench_app, name="bench")
app.add_typer(guardian.app, name="guardian")
app.add_typer(db.db_app, name="db")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(clients.clients_app, name="clients")
app.add_typer(verify.verify_app, name="verify")


def main() -> None:
    """Entry point of the ``stealproof`` script."""
    app()
