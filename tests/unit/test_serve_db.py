"""Gateway storage: engines, migrations, repository and per-client locking.

Parametrised over SQLite and PostgreSQL (test ids ``sqlite`` / ``postgresql``); the PostgreSQL
cases are skipped with "PostgreSQL at 127.0.0.1:5432 not reachable" when it does not answer.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

import serve_db_fixtures as dbfx
from stealproof.errors import ConfigError, InputValidationError, OutputPathError
from stealproof.serve.db import repo
from stealproof.serve.db.base import Base
from stealproof.serve.db.engine import (
    is_postgres,
    make_engine,
    make_sessionmaker,
    normalize_url,
    redact_url,
    sqlite_url_for,
)
from stealproof.serve.db.migrate import (
    DatabaseNotMigratedError,
    check_migrated,
    current_revision,
    head_revision,
    upgrade,
)
from stealproof.serve.security import generate_key

PG_SKIP_REASON = dbfx.PG_SKIP_REASON
database_urls = dbfx.database_urls
postgres_available = dbfx.postgres_available
temp_database = dbfx.temp_database
# the parametrised fixtures (ids "sqlite" / "postgresql"), used by name
db_kind = dbfx.db_kind
db_url = dbfx.db_url
empty_db_url = dbfx.empty_db_url

BOUND_S = 5.0  # every wait in these tests ends within this many seconds


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


# --- engine --------------------------------------------------------------------------------


def test_urls_are_normalised_and_other_schemes_refused() -> None:
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="mysql") as e:
        make_engine("mysql://user:hunter2@host/db")
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError, match="expected sqlite"):
        make_engine("not a url")


def test_redact_url_hides_passwords() -> None:
    assert "s3cret" not in redact_url("postgresql://u:s3cret@h:5432/db")
    assert "***" in redact_url("postgresql://u:s3cret@h:5432/db")
    assert "s3cret" not in redact_url("odd://u:s3cret@h")
    assert redact_url("sqlite:///a/b.db") == "sqlite:///a/b.db"


def test_sqlite_engine_pragmas(tmp_path: Path) -> None:
    eng = make_engine(sqlite_url_for(tmp_path / "p.db"))
    try:
        with eng.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert not is_postgres(eng)
    finally:
        eng.dispose()


def test_postgres_synchronous_commit_setting(tmp_path: Path) -> None:
    """``off`` turns synchronous_commit off on every connection; ``server`` leaves it alone."""
    with temp_database("postgresql", tmp_path) as url:
        for choice, expected in (("off", "off"), ("server", None)):
            eng = make_engine(url, postgres_synchronous_commit=choice)
            try:
                with eng.connect() as conn:
                    value = conn.execute(text("SHOW synchronous_commit")).scalar()
                    default = conn.execute(
                        text("SELECT boot_val FROM pg_settings WHERE name = 'synchronous_commit'")
                    ).scalar()
                assert value == (expected or default), choice
            finally:
                eng.dispose()
        with pytest.raises(ConfigError, match="postgres_synchronous_commit"):
            make_engine(url, postgres_synchronous_commit="sometimes")


def test_postgres_idle_connections_are_tested_and_replaced(tmp_path: Path) -> None:
    """A pooled connection killed while idle for longer than ``ping_after_idle`` is replaced at
    checkout (no error reaches the caller); one back in use at once is not tested (its death
    reaches the caller's statement)."""
    with temp_database("postgresql", tmp_path) as url:
        eng = make_engine(url, ping_after_idle=0.5)
        admin = make_engine(url)

        def pid_then_kill() -> int:
            with eng.connect() as conn:
                pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            with admin.begin() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            return pid

        try:
            pid_then_kill()
            with pytest.raises(DBAPIError), eng.connect() as conn:  # at once: not tested
                conn.execute(text("SELECT 1"))
            pid = pid_then_kill()
            time.sleep(0.7)
            with eng.connect() as conn:  # idle, then tested, found dead and replaced
                assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        finally:
            eng.dispose()
            admin.dispose()


def test_postgres_pool_hands_out_the_connection_returned_last(tmp_path: Path) -> None:
    """LIFO: a worker keeps reusing its warm connection (oldest-first would cycle the pool)."""
    with temp_database("postgresql", tmp_path) as url:
        eng = make_engine(url)
        try:
            pid = text("SELECT pg_backend_pid()")
            a, b = eng.connect(), eng.connect()  # two connections in the pool
            first, second = a.execute(pid).scalar_one(), b.execute(pid).scalar_one()
            a.close()
            b.close()  # returned last
            for _ in range(3):
                with eng.connect() as conn:
                    assert conn.execute(pid).scalar_one() == second != first
        finally:
            eng.dispose()
        no_pool = make_engine(url, poolclass=NullPool)  # an explicit pool class is kept
        try:
            with no_pool.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
        finally:
            no_pool.dispose()


def test_upgrade_creates_the_sqlite_directory(tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path / "a" / "b" / "gw.db")
    assert upgrade(url) == head_revision()
    assert (tmp_path / "a" / "b" / "gw.db").is_file()


def test_upgrade_refuses_an_unwritable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="cannot create directory"):
        upgrade(sqlite_url_for(tmp_path / "file" / "gw.db"))


def test_unreachable_postgres_is_a_config_error_without_password() -> None:
    with pytest.raises(ConfigError, match="cannot be opened") as e:
        upgrade("postgresql://u:hunter2@127.0.0.1:1/db?connect_timeout=1")
    assert "hunter2" not in str(e.value)


# --- migrations ----------------------------------------------------------------------------


def test_empty_database_is_refused_then_upgraded(empty_db_url: str) -> None:
    eng = make_engine(empty_db_url)
    try:
        assert current_revision(eng) is None
        with pytest.raises(DatabaseNotMigratedError) as e:
            check_migrated(eng)
        msg = str(e.value)
        assert "not migrated (at empty, need " in msg
        assert "`stealproof db upgrade --config FILE`" in msg
        assert upgrade(empty_db_url) == head_revision()
        check_migrated(eng)
        assert current_revision(eng) == head_revision()
        assert upgrade(empty_db_url) == head_revision()  # idempotent
        check_migrated(eng)
    finally:
        eng.dispose()


def test_check_of_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "gw.db"
    eng = make_engine(sqlite_url_for(path))
    try:
        with pytest.raises(DatabaseNotMigratedError, match="at empty"):
            check_migrated(eng)
    finally:
        eng.dispose()
    assert not path.exists() and not path.parent.exists()


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_unknown_newer_revision_is_reported(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    with pytest.raises(DatabaseNotMigratedError, match="does not know"):
        check_migrated(engine)


def test_database_urls_lists_sqlite_and_reachable_postgres(tmp_path: Path) -> None:
    with database_urls(tmp_path) as urls:
        kinds = [k for k, _ in urls]
        assert kinds[0] == "sqlite"
        assert ("postgresql" in kinds) == postgres_available()
        for _, url in urls:
            eng = make_engine(url)
            try:
                check_migrated(eng)
            finally:
                eng.dispose()


# --- repository ----------------------------------------------------------------------------


def test_clients_and_keys_round_trip(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        alice = repo.create_client(s, "alice", quota_rows=1000)
        bob = repo.create_client(s, "bob")
        key_a1 = repo.add_key(s, alice)
        key_a2 = repo.add_key(s, alice)
        key_b = repo.add_key(s, bob)
        with pytest.raises(repo.ClientExistsError, match="'alice' already exists"):
            repo.create_client(s, "alice")
    with sessions() as s, s.begin():
        assert [c.name for c in repo.list_clients(s)] == ["alice", "bob"]
        a = repo.get_client(s, "alice")
        assert a is not None and a.quota_rows == 1000 and a.rows_used == 0
        assert not a.admin_blocked and a.flagged_rows == 0 and a.last_seen is None
        assert a.created_at.tzinfo is not None and a.created_at.utcoffset() == UTC.utcoffset(None)
        assert repo.get_client(s, "nobody") is None
        with pytest.raises(repo.ClientNotFoundError):
            repo.require_client(s, "nobody")
        keys = repo.list_keys(s, a)
        assert [k.key_id for k in keys] == [key_a1.split("_")[1], key_a2.split("_")[1]]
        assert all(k.key_hash not in (key_a1, key_a2) for k in keys)

    read = make_sessionmaker(sessions.kw["bind"], write=False)
    with read() as s, s.begin():
        ok = repo.authenticate(s, key_a1)
        assert ok.ok and ok.client is not None and ok.client.name == "alice"
        assert repo.authenticate(s, key_b).client is not None
        assert repo.authenticate(s, "garbage").status == "malformed"
        assert repo.authenticate(s, "").status == "malformed"
        assert repo.authenticate(s, generate_key().key).status == "unknown"
        kid = key_a1.split("_")[1]
        forged = f"sp_{kid}_{generate_key().key.split('_', 2)[2]}"
        assert repo.authenticate(s, forged).status == "unknown"  # known id, wrong secret

    with sessions() as s, s.begin():
        assert repo.revoke_key(s, key_a1.split("_")[1])
        assert repo.revoke_key(s, key_a1.split("_")[1])  # again: still True, time kept
        assert not repo.revoke_key(s, "00000000")
    with read() as s, s.begin():
        res = repo.authenticate(s, key_a1)
        assert res.status == "revoked" and res.client is None
        assert repo.authenticate(s, key_a2).ok
        keys = repo.list_keys(s, repo.require_client(s, "alice"))
        assert keys[0].revoked_at is not None and keys[1].revoked_at is None


def test_repo_never_commits(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        c = repo.create_client(s, "ghost")
        repo.add_key(s, c)
        s.rollback()
    with sessions() as s:
        assert repo.get_client(s, "ghost") is None
        assert repo.count_log(s) == 0


def test_client_names_are_validated(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        for bad in ("", "   ", "x" * 101):
            with pytest.raises(InputValidationError, match="client name"):
                repo.create_client(s, bad)
        with pytest.raises(InputValidationError, match="quota_rows"):
            repo.create_client(s, "q", quota_rows=-1)
        assert repo.create_client(s, "x" * 100).name == "x" * 100


def test_state_save_and_load_versions(sessions: sessionmaker[Session]) -> None:
    from stealproof.detectors.base import dumps_state, loads_state

    with sessions() as s, s.begin():
        cid = repo.create_client(s, "c").id
        assert repo.load_state(s, cid, "digits") is None
        row = repo.save_state(s, cid, "digits", b"\x00one", policy_blocked=False)
        assert row.version == 1
    with sessions() as s, s.begin():
        repo.lock_client(s, cid)
        blob = dumps_state({"n": 3, "dists": [0.5, 1.0]})
        repo.save_state(s, cid, "digits", blob, policy_blocked=True, reason="prada: delta")
        repo.save_state(s, cid, "other", b"x", policy_blocked=False)
    with sessions() as s, s.begin():
        st = repo.load_state(s, cid, "digits")
        assert st is not None and st.version == 2 and st.policy_blocked
        assert st.blocked_reason == "prada: delta"
        assert loads_state(st.state) == {"n": 3, "dists": [0.5, 1.0]}
        assert st.updated_at.tzinfo is not None
        other = repo.load_state(s, cid, "other")
        assert other is not None and other.version == 1
        repo.save_state(s, cid, "digits", b"", policy_blocked=False)
    with sessions() as s, s.begin():
        st = repo.load_state(s, cid, "digits")
        assert st is not None and st.version == 3 and st.state == b""
        assert not st.policy_blocked and st.blocked_reason is None


def test_log_append_recent_count(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        a = repo.create_client(s, "a").id
        b = repo.create_client(s, "b").id
        for i in range(3):
            e = repo.append_log(
                s,
                a,
                "digits",
                "1",
                2,
                [f"{i:064x}", "f" * 64],
                ["normal", "deceptive"],
                [0.0, 0.25],
                {"prada": [1.5, math.inf]},
            )
            assert e.id is not None
        repo.append_log(s, b, "digits", "1", 1, ["0" * 64], ["normal"], [0.0], {})
    with sessions() as s, s.begin():
        assert repo.count_log(s) == 4
        assert repo.count_log(s, a) == 3 and repo.count_log(s, b) == 1
        recent = repo.recent_log(s, a, limit=2)
        assert len(recent) == 2 and recent[0].id > recent[1].id
        assert recent[0].input_sha256[0] == f"{2:064x}"
        assert recent[0].actions == ["normal", "deceptive"]
        assert recent[0].l1 == [0.0, 0.25]
        assert recent[0].scores == {"prada": [1.5, None]}  # JSON has no infinity
        assert recent[0].created_at.tzinfo is not None
        assert [r.id for r in repo.recent_log(s, a)] == sorted(
            (r.id for r in repo.recent_log(s, a)), reverse=True
        )
        assert repo.recent_log(s, a, limit=0) == []


def test_write_batch_returns_each_log_rows_id_and_writes_it_all(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """The batch writer (PostgreSQL: arrays in one pipeline) gives each log row its own id, in
    the order of the rows, and writes counters, state heads and journal rows as given."""
    from stealproof.serve.db import ledger
    from stealproof.serve.db.models import ClientModelState, QueryLog, StateJournal

    with sessions() as s, s.begin():
        ids = [repo.create_client(s, n).id for n in ("a", "b", "c")]
    postgres = is_postgres(engine)
    order = [ids[2], ids[0], ids[2], ids[1]]  # one client twice, ids out of order
    logs = [
        ledger.LogRow(
            cid, "m", "1", 1, [f"{k:064x}"], ["normal"], [0.1 * k], {"prada": [k, math.nan]}
        )
        for k, cid in enumerate(order)
    ]
    with engine.begin() as conn:
        ledgers, heads, revoked = ledger.lock_clients(conn, ids, [], postgres=postgres)
        assert revoked == set() and heads == {}
        journal = []
        for k, cid in enumerate(order):
            g = ledgers[cid]
            g.rows_used, g.requests, g.changed = g.rows_used + 1, g.requests + 1, True
            h = heads.setdefault((cid, "m@1"), ledger.Head())
            h.version += 1
            h.journal_rows += 1
            h.changed = True
            journal.append(
                {"client_id": cid, "model": "m@1", "version": h.version, "rows": 1}
                | {"x": bytes([k]) * 8, "y": b"\x00" * 4, "y_dtype": "float32"}
            )
        log_ids = ledger.write_batch(conn, ledgers, heads, journal, logs, postgres=postgres)
    assert len(set(log_ids)) == 4
    with sessions() as s:
        for k, (cid, log_id) in enumerate(zip(order, log_ids, strict=True)):
            row = s.get(QueryLog, log_id)
            assert row is not None and row.client_id == cid and not row.delivered
            assert row.input_sha256 == [f"{k:064x}"] and row.l1 == [pytest.approx(0.1 * k)]
            assert row.scores == {"prada": [k, None]}
        counts = {c.id: (c.rows_used, c.requests) for c in repo.list_clients(s)}
        assert counts == {ids[0]: (1, 1), ids[1]: (1, 1), ids[2]: (2, 2)}
        versions = {st.client_id: st.version for st in s.query(ClientModelState)}
        assert versions == {ids[0]: 1, ids[1]: 1, ids[2]: 2}
        journal_rows = s.query(StateJournal).order_by(StateJournal.client_id, StateJournal.version)
        assert [(j.client_id, j.version, j.x[:1]) for j in journal_rows] == sorted(
            [
                (cid, v, bytes([k]))
                for k, (cid, v) in enumerate(zip(order, [1, 1, 2, 1], strict=True))
            ]
        )
    # a second batch updates what the first inserted, and marks the first batch delivered
    with engine.begin() as conn:
        ledgers, heads, _ = ledger.lock_clients(conn, ids[:1], [], postgres=postgres)
        g = ledgers[ids[0]]
        g.rows_used, g.requests, g.changed = 5, 6, True
        h = heads[(ids[0], "m@1")]
        h.version, h.changed = 7, True
        ledger.write_batch(conn, ledgers, heads, [], [], delivered=log_ids, postgres=postgres)
    with sessions() as s:
        assert all(s.get(QueryLog, i).delivered for i in log_ids)  # type: ignore[union-attr]
        a = s.get(ClientModelState, (ids[0], "m@1"))
        assert a is not None and a.version == 7
        client_a = next(c for c in repo.list_clients(s) if c.id == ids[0])
        assert (client_a.rows_used, client_a.requests) == (5, 6)


def test_log_refuses_inconsistent_rows(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        a = repo.create_client(s, "a").id
        h = ["0" * 64]
        with pytest.raises(InputValidationError, match="input_sha256: expected 2"):
            repo.append_log(s, a, "m", "1", 2, h, ["normal"] * 2, [0.0] * 2, {})
        with pytest.raises(InputValidationError, match="actions"):
            repo.append_log(s, a, "m", "1", 1, h, ["stolen"], [0.0], {})
        with pytest.raises(InputValidationError, match="scores"):
            repo.append_log(s, a, "m", "1", 1, h, ["normal"], [0.0], {"prada": [1.0, 2.0]})
        with pytest.raises(InputValidationError, match="at least 1"):
            repo.append_log(s, a, "m", "1", 0, [], [], [], {})
        assert repo.count_log(s) == 0


def test_charge_and_admin_block(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        cid = repo.create_client(s, "c", quota_rows=10).id
    with sessions() as s, s.begin():
        c = repo.lock_client(s, cid)
        repo.charge(s, c, 4, 1)
        repo.charge(s, c, 3, 0)
        with pytest.raises(InputValidationError, match="charge"):
            repo.charge(s, c, 1, 2)
        repo.set_admin_block(s, c, True, "abuse")
    with sessions() as s, s.begin():
        c = repo.require_client(s, "c")
        assert (c.rows_used, c.requests, c.flagged_rows) == (7, 2, 1)
        assert c.last_seen is not None and c.last_seen.tzinfo is not None
        assert c.admin_blocked and c.block_reason == "abuse"
        repo.set_admin_block(s, c, False, "ignored when unblocking")
    with sessions() as s, s.begin():
        c = repo.require_client(s, "c")
        assert not c.admin_blocked and c.block_reason is None
        with pytest.raises(repo.ClientNotFoundError):
            repo.lock_client(s, 987654)


# --- per-client locking --------------------------------------------------------------------


def _set_lock_timeout(s: Session) -> None:
    """Bound every lock wait on PostgreSQL (SQLite waits at most its busy_timeout)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text(f"SET LOCAL lock_timeout = '{int(BOUND_S * 1000)}ms'"))


def _two_clients(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as s, s.begin():
        return repo.create_client(s, "one").id, repo.create_client(s, "two").id


class _Holder:
    """A thread holding a client's lock in an open transaction until released."""

    def __init__(self, sessions: sessionmaker[Session], client_id: int) -> None:
        self.locked = threading.Event()
        self.release = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(sessions, client_id), daemon=True)

    def _run(self, sessions: sessionmaker[Session], client_id: int) -> None:
        try:
            with sessions() as s, s.begin():
                _set_lock_timeout(s)
                c = repo.lock_client(s, client_id)
                self.locked.set()
                self.release.wait(BOUND_S)
                repo.charge(s, c, 1, 0)
        except BaseException as e:  # reported by the test
            self.errors.append(e)
            self.locked.set()

    def __enter__(self) -> _Holder:
        self.thread.start()
        assert self.locked.wait(BOUND_S), "first transaction never got its lock"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(BOUND_S * 2)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


def _lock_in_thread(
    sessions: sessionmaker[Session], client_id: int
) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    acquired = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with sessions() as s, s.begin():
                _set_lock_timeout(s)
                c = repo.lock_client(s, client_id)
                acquired.set()
                repo.charge(s, c, 1, 0)
        except BaseException as e:  # reported by the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, acquired, errors


@contextmanager
def _sessions_on(kind: str, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with temp_database(kind, tmp_path) as url:
        eng = make_engine(url)
        try:
            yield make_sessionmaker(eng)
        finally:
            eng.dispose()


def test_postgres_different_clients_do_not_wait(tmp_path: Path) -> None:
    with _sessions_on("postgresql", tmp_path) as sessions:
        _different_clients_do_not_wait(sessions)


def _different_clients_do_not_wait(sessions: sessionmaker[Session]) -> None:
    one, two = _two_clients(sessions)
    with _Holder(sessions, one) as holder:
        t0 = time.monotonic()
        t, acquired, errors = _lock_in_thread(sessions, two)
        assert acquired.wait(BOUND_S), "a different client waited for the first client's lock"
        assert not holder.release.is_set()  # the first transaction is still open
        assert time.monotonic() - t0 < BOUND_S
        t.join(BOUND_S)
        assert not errors, errors


def test_same_client_serialises(sessions: sessionmaker[Session]) -> None:
    one, _ = _two_clients(sessions)
    with _Holder(sessions, one) as holder:
        t, acquired, errors = _lock_in_thread(sessions, one)
        assert not acquired.wait(0.5), "the same client's second transaction did not wait"
        holder.release.set()
        holder.thread.join(BOUND_S)
        assert acquired.wait(BOUND_S)
        t.join(BOUND_S)
        assert not errors, errors
    with sessions() as s:
        c = repo.require_client(s, "one")
        assert c.requests == 2 and c.rows_used == 2


def test_sqlite_second_writer_waits_instead_of_failing(tmp_path: Path) -> None:
    with _sessions_on("sqlite", tmp_path) as sessions:
        _second_writer_waits(sessions)


def _second_writer_waits(sessions: sessionmaker[Session]) -> None:
    one, two = _two_clients(sessions)
    with _Holder(sessions, one) as holder:
        t, acquired, errors = _lock_in_thread(sessions, two)
        assert not acquired.wait(0.5), "a second SQLite writer did not wait (no BEGIN IMMEDIATE?)"
        # readers are not blocked by the writer (WAL + deferred read transactions)
        read = make_sessionmaker(sessions.kw["bind"], write=False)
        with read() as s, s.begin():
            assert repo.get_client(s, "one") is not None
            with pytest.raises(RuntimeError, match="write session"):
                repo.lock_client(s, one)
        holder.release.set()
        holder.thread.join(BOUND_S)
        assert acquired.wait(BOUND_S)
        t.join(BOUND_S)
        assert not errors, errors
    with sessions() as s:
        assert repo.require_client(s, "two").requests == 1


def test_concurrent_charges_are_not_lost(sessions: sessionmaker[Session]) -> None:
    one, _ = _two_clients(sessions)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                with sessions() as s, s.begin():
                    _set_lock_timeout(s)
                    repo.charge(s, repo.lock_client(s, one), 2, 1)
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND_S * 3)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    with sessions() as s:
        c = repo.require_client(s, "one")
        assert (c.requests, c.rows_used, c.flagged_rows) == (15, 30, 15)


def test_skip_reason_is_explicit() -> None:
    assert PG_SKIP_REASON.startswith("PostgreSQL at ")
    assert PG_SKIP_REASON.endswith(" not reachable")
    assert callable(temp_database)
