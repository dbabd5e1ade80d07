"""Engines for the gateway's database: SQLite (WAL, ``BEGIN IMMEDIATE``) or PostgreSQL (psycopg 3).

On SQLite every write transaction starts with ``BEGIN IMMEDIATE``, so it holds the database's
single write lock from its first statement: concurrent writers queue (``busy_timeout``) instead
of failing half-way, and a transaction that read a client's row can safely write it back.
Read-only work uses :func:`make_sessionmaker` with ``write=False`` (a plain deferred ``BEGIN``):
in WAL mode readers never wait for the writer.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from stealproof.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Execution option naming the BEGIN mode a SQLite transaction starts with.
SQLITE_BEGIN_OPTION: Final = "stealproof_sqlite_begin"
_BEGIN_MODES: Final = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
_PASSWORD_RE = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; safe to log and show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_RE.sub(r"\1***@", url)


def sqlite_url_for(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file, made absolute (independent of the working dir)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def normalize_url(url: str) -> str:
    """``url`` with PostgreSQL spellings mapped to the psycopg 3 driver; other schemes refused.

    Accepted: ``sqlite:///path`` (or ``sqlite+pysqlite``), ``postgresql://``, ``postgres://``
    and ``postgresql+psycopg://``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"database url {redact_url(url)!r}: expected sqlite:///PATH or postgresql://..."
        )
    s = scheme.lower()
    if s in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if s in ("sqlite", "sqlite+pysqlite"):
        return f"sqlite://{rest}"
    raise ConfigError(
        f"database url {redact_url(url)!r}: unsupported scheme {scheme!r} "
        "(expected sqlite or postgresql)"
    )


#: ``PRAGMA synchronous`` values the gateway accepts (see :func:`make_engine`).
SQLITE_SYNCHRONOUS: Final = ("normal", "full")
#: PostgreSQL ``synchronous_commit`` choices (see :func:`make_engine`).
POSTGRES_SYNCHRONOUS_COMMIT: Final = ("off", "server")


def _execute_raw(dbapi_connection: Any, *statements: str) -> None:
    """Run statements on a driver connection (outside SQLAlchemy: connect and pool hooks)."""
    cur = dbapi_connection.cursor()
    try:
        for statement in statements:
            cur.execute(statement)
    finally:
        cur.close()


def _synchronous_commit_off(dbapi_connection: Any, _record: Any) -> None:
    """Commits of this connection do not wait for their WAL record to reach the disk."""
    _execute_raw(dbapi_connection, "SET synchronous_commit TO off")
    dbapi_connection.commit()


def _sqlite_connect_hook(synchronous: str) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        """Hand transaction control to SQLAlchemy and set the pragmas the gateway relies on."""
        # Disable the sqlite3 module's own BEGIN/COMMIT handling; _on_sqlite_begin emits BEGIN.
        dbapi_connection.isolation_level = None
        _execute_raw(
            dbapi_connection,
            f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
            "PRAGMA journal_mode = WAL",
            "PRAGMA foreign_keys = ON",
            f"PRAGMA synchronous = {synchronous.upper()}",
        )

    return on_connect


def _on_sqlite_begin(conn: Connection) -> None:
    """Start every transaction explicitly, by default with ``BEGIN IMMEDIATE`` (write lock)."""
    mode = str(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")).upper()
    if mode not in _BEGIN_MODES:
        raise ConfigError(f"{SQLITE_BEGIN_OPTION}: {mode!r} is not one of {sorted(_BEGIN_MODES)}")
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(
    url: str,
    *,
    sqlite_synchronous: str = "normal",
    postgres_synchronous_commit: str = "server",
    ping_after_idle: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine for ``url`` (SQLite file or PostgreSQL), configured for the gateway.

    ``sqlite_synchronous``: SQLite's ``PRAGMA synchronous`` in WAL mode. ``normal`` (default)
    syncs the write-ahead log to disk at checkpoints, not at every commit: a committed
    transaction survives the process being killed, but the last ones before a power loss or OS
    crash may be rolled back (the database stays consistent). ``full`` syncs at every commit
    (several times slower per request on ordinary disks). ``postgres_synchronous_commit``:
    ``off`` sets PostgreSQL's ``synchronous_commit`` to off on every connection (a commit
    returns before its WAL record is flushed: it survives this process being killed, but the
    last ones may be lost if the database server crashes; the database stays consistent);
    ``server`` (default here; the gateway's settings default to ``off``) leaves the server's
    own setting. ``ping_after_idle``: PostgreSQL
    connections idle for longer are tested at checkout (default :data:`PING_AFTER_IDLE`; see
    :func:`_ping_idle_connections`). PostgreSQL's pool hands out the connection returned last
    (``pool_use_lifo``) rather than SQLAlchemy's default, oldest-first order, so a worker stays
    on its warm connections (measured in docs/gateway.md, "Load benchmark"). Extra ``kwargs`` go to
    :func:`sqlalchemy.create_engine` (e.g. ``poolclass`` in tests).
    """
    if postgres_synchronous_commit not in POSTGRES_SYNCHRONOUS_COMMIT:
        raise ConfigError(
            "postgres_synchronous_commit: expected one of "
            f"{list(POSTGRES_SYNCHRONOUS_COMMIT)}, got {postgres_synchronous_commit!r}"
        )
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise ConfigError(
            f"sqlite_synchronous: expected one of {list(SQLITE_SYNCHRONOUS)}, "
            f"got {sqlite_synchronous!r}"
        )
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"database url {redact_url(url)!r}: cannot be parsed ({e})") from None
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, **kwargs.pop("connect_args", {})}
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_connect_hook(sqlite_synchronous))
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    if "poolclass" not in kwargs:
        # the most recently returned connection first: a worker keeps using one or two warm
        # connections (and their server processes) instead of cycling through the whole pool
        kwargs.setdefault("pool_use_lifo", True)
    engine = create_engine(parsed, **kwargs)
    if postgres_synchronous_commit == "off":
        event.listen(engine, "connect", _synchronous_commit_off)
    if not kwargs.get("pool_pre_ping"):
        idle = PING_AFTER_IDLE if ping_after_idle is None else ping_after_idle
        _ping_idle_connections(engine, idle)
    return engine


#: seconds a pooled PostgreSQL connection may sit idle before it is tested at checkout
PING_AFTER_IDLE: Final = 1.0


def _ping_idle_connections(engine: Engine, idle: float) -> None:
    """Test a pooled connection at checkout when it sat unused for more than ``idle`` seconds.

    SQLAlchemy's ``pool_pre_ping`` tests at *every* checkout, one round trip per request batch;
    connections in steady use are not tested here. One found dead is replaced (the pool retries
    the checkout with a new connection), so a database restart between requests is not seen by
    them; one that dies while in use fails its transaction either way.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["stealproof_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used = record.info.get("stealproof_used")
        if used is None or time.monotonic() - used <= idle:
            return
        try:
            _execute_raw(dbapi_connection, "SELECT 1")
            dbapi_connection.rollback()
        except Exception as e:
            raise DisconnectionError(f"idle connection failed its test: {e}") from e


def is_postgres(engine: Engine) -> bool:
    """True when ``engine`` talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def is_sqlite(engine: Engine) -> bool:
    """True when ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def make_sessionmaker(engine: Engine, *, write: bool = True) -> sessionmaker[Session]:
    """Sessions on ``engine`` that keep loaded values after commit (``expire_on_commit=False``).

    ``write=False`` is for read-only work (authentication, listings): on SQLite its
    transactions start with a deferred ``BEGIN`` and so never wait for, or block, a writer.
    On PostgreSQL both kinds are the same.
    """
    bind = engine if write else engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
    return sessionmaker(bind=bind, expire_on_commit=False)
