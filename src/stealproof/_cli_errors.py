"""One error wrapper for every typer command: user errors become one line and exit status 2."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from stealproof.errors import StealproofError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)


def friendly_errors(func: F) -> F:
    """Turn user errors into one line on stderr and exit status 2 (pydantic errors name the
    field)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            _fail(f"{where}: {err['msg']}")
        except (StealproofError, ValueError, FileNotFoundError, KeyError) as e:
            text = str(e).strip()
            _fail(text.splitlines()[0] if text else type(e).__name__)

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None
