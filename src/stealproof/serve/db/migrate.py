"""Schema migrations (alembic, shipped inside the package) run from code, and the start-up check.

No ``alembic.ini``: the alembic :class:`~alembic.config.Config` is built here with
``script_location`` pointing at the ``migrations`` directory next to this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import OperationalError

from stealproof.errors import ConfigError, OutputPathError
from stealproof.serve.db.engine import SQLITE_BEGIN_OPTION, make_engine, normalize_url, redact_url

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
UPGRADE_COMMAND: Final = "stealproof db upgrade --config FILE"


class DatabaseNotMigratedError(ConfigError):
    """The database's schema is not at this package's head revision."""


class DatabaseUnavailableError(ConfigError):
    """The database cannot be opened or reached."""


def alembic_config(url: str | None = None) -> Config:
    """An alembic config for the packaged migrations (``url`` optional: ``%`` is escaped)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision this package's migrations know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _unavailable(engine_url: str, e: OperationalError) -> DatabaseUnavailableError:
    detail = str(e.orig).strip().splitlines()[0] if e.orig is not None else type(e).__name__
    return DatabaseUnavailableError(f"database {redact_url(engine_url)} cannot be opened: {detail}")


def _ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite file URL, with a clear error when that is impossible."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    parent = Path(parsed.database).expanduser().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(
            f"database {redact_url(url)}: cannot create directory {parent} ({e.strerror or e})"
        ) from None


def upgrade(url: str) -> str:
    """Bring the database at ``url`` to the head revision (all in one transaction); return it."""
    url = normalize_url(url)
    _ensure_sqlite_dir(url)
    engine = make_engine(url)
    cfg = alembic_config(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as e:
        raise _unavailable(url, e) from None
    finally:
        engine.dispose()
    return head_revision()


def _missing_sqlite_file(engine: Engine) -> bool:
    db = engine.url.database
    return (
        engine.dialect.name == "sqlite"
        and db not in (None, "", ":memory:")
        and not (Path(str(db)).expanduser().exists())
    )


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` for an empty (never migrated) database.

    A SQLite file that does not exist counts as empty and is not created by this check.
    """
    if _missing_sqlite_file(engine):
        return None
    try:
        with engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as e:
        raise _unavailable(engine.url.render_as_string(hide_password=False), e) from None


def check_migrated(engine: Engine) -> None:
    """Raise :class:`DatabaseNotMigratedError` unless the database is at the head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is not None and current not in _known_revisions():
        raise DatabaseNotMigratedError(
            f"database {where} is at revision {current}, which this stealproof does not know "
            f"(its newest is {head}); upgrade stealproof"
        )
    raise DatabaseNotMigratedError(
        f"database {where} is not migrated (at {current or 'empty'}, need {head}); "
        f"run `{UPGRADE_COMMAND}`"
    )
