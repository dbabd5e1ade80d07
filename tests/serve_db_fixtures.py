"""Temporary gateway databases for tests: SQLite always, PostgreSQL when 127.0.0.1:5432 answers.

Import from tests as ``from serve_db_fixtures import DB_KINDS, temp_database, db_url``; the
``db_url`` / ``empty_db_url`` fixtures are parametrised ``sqlite`` / ``postgresql`` (test ids),
and the PostgreSQL case is skipped with :data:`PG_SKIP_REASON` when the server does not answer.
Each PostgreSQL database is a fresh schema (``search_path`` set in the URL), dropped afterwards.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from stealproof.serve.db.engine import sqlite_url_for
from stealproof.serve.db.migrate import upgrade

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_BASE_URL = os.environ.get(
    "STEALPROOF_TEST_PG_URL", f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"
)
_PG = make_url(PG_BASE_URL)
PG_SKIP_REASON = f"PostgreSQL at {_PG.host or PG_HOST}:{_PG.port or PG_PORT} not reachable"
DB_KINDS = ("sqlite", "postgresql")


@functools.cache
def postgres_available() -> bool:
    """True when the test PostgreSQL answers (TCP and a login, each within about 1 s)."""
    try:
        with socket.create_connection((_PG.host or PG_HOST, _PG.port or PG_PORT), timeout=1.0):
            pass
    except OSError:
        return False
    engine = create_engine(_PG, connect_args={"connect_timeout": 1}, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # any failure to log in means "not available" for tests
        return False
    finally:
        engine.dispose()
    return True


def _admin_execute(sql: str) -> None:
    engine = create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


#: Set (as CI does) to make an unreachable PostgreSQL a failure instead of a skip.
REQUIRE_ENV = "STEALPROOF_REQUIRE_POSTGRES"


def _skip_or_fail() -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{PG_SKIP_REASON}, and ${REQUIRE_ENV} is set")
    pytest.skip(PG_SKIP_REASON)


@contextmanager
def temp_database(kind: str, tmp_path: Path, *, migrate: bool = True) -> Iterator[str]:
    """Yield the URL of a fresh database of ``kind`` (migrated to head unless ``migrate=False``).

    ``sqlite``: a file under ``tmp_path``. ``postgresql``: a new schema ``t_<uuid>`` on the
    test server (pytest-skipped when it is not reachable), dropped on exit.
    """
    if kind == "sqlite":
        url = sqlite_url_for(tmp_path / f"gateway-{uuid.uuid4().hex[:8]}.db")
        if migrate:
            upgrade(url)
        yield url
        return
    if kind != "postgresql":
        raise ValueError(f"kind: expected one of {DB_KINDS}, got {kind!r}")
    if not postgres_available():
        _skip_or_fail()
    schema = f"t_{uuid.uuid4().hex}"
    _admin_execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_BASE_URL else "?"
    url = f"{PG_BASE_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        _admin_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def database_urls(tmp_path: Path, *, migrate: bool = True) -> Iterator[list[tuple[str, str]]]:
    """Yield ``[(kind, url), ...]``: SQLite always, PostgreSQL too when it answers; cleaned up."""
    with temp_database("sqlite", tmp_path, migrate=migrate) as sqlite_url:
        if not postgres_available():
            yield [("sqlite", sqlite_url)]
            return
        with temp_database("postgresql", tmp_path, migrate=migrate) as pg_url:
            yield [("sqlite", sqlite_url), ("postgresql", pg_url)]


@pytest.fixture(params=DB_KINDS)
def db_kind(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql`` (the test id says which ran)."""
    kind = str(request.param)
    if kind == "postgresql" and not postgres_available():
        _skip_or_fail()
    return kind


@pytest.fixture
def db_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh database migrated to head, on each backend."""
    with temp_database(db_kind, tmp_path) as url:
        yield url


@pytest.fixture
def empty_db_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty (never migrated) database, on each backend."""
    with temp_database(db_kind, tmp_path, migrate=False) as url:
        yield url
