"""One error wrapper for every typer command.

User errors — a :class:`~stealproof.errors.StealproofError`, an invalid config (pydantic), or
an operating-system error about a file the user named — become one line on stderr and exit
status 2. Anything else is a bug: it keeps its traceback, with a line asking to report it.
Ctrl-C exits with status 130 and says so.
"""

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

REPORT_URL_HINT = "this is a bug in stealproof; please report it with the traceback that follows"


def validation_message(e: ValidationError, prefix: str = "") -> str:
    """One line naming the field a pydantic error is about and what was wrong."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    return f"{prefix}{where}: {err['msg']}"


def friendly_errors(func: F) -> F:
    """Turn user errors into one line on stderr and exit status 2; bugs keep their traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValidationError as e:
            _fail(validation_message(e))
        except StealproofError as e:
            text = str(e).strip()
            _fail(text.splitlines()[0] if text else type(e).__name__)
        except OSError as e:
            if e.filename is None:
                _bug()
                raise
            _fail(f"{e.filename}: {e.strerror or type(e).__name__}")
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception:
            _bug()
            raise

    return wrapper  # type: ignore[return-value]


def _bug() -> None:
    from stealproof import __version__

    err_console.print(
        f"[bold red]internal error[/] (stealproof {__version__}): {REPORT_URL_HINT}",
        highlight=False,
    )


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None
