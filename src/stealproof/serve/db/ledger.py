"""The request path's database work, as few Core statements as possible.

One prediction request costs one read (:func:`key_owner`: the key, its client and the client's
standing) and its share of one write transaction that decides a whole batch of requests
(:func:`lock_clients`, then :func:`write_batch`): every statement there covers all requests
of the batch. On PostgreSQL each of the two is **one round trip** (psycopg's pipeline mode: the
statements are sent together and their results read once), and :func:`write_batch` ends it with
the COMMIT; elsewhere nothing here commits and the caller owns the transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, text
from sqlalchemy.orm import Session

from stealproof.serve.db.base import UTCDateTime, utcnow
from stealproof.serve.db.models import QueryLog
from stealproof.serve.db.repo import AuthStatus, ClientNotFoundError, _json_float
from stealproof.serve.security import DUMMY_HASH, parse_key, verify_key

# Statements are written out once and compiled once: per request, SQLAlchemy's statement
# building and cache-key work would cost more than SQLite executing them.
_LOG: Table = QueryLog.__table__  # type: ignore[assignment]
_NOW = bindparam("now", type_=UTCDateTime())

_KEY_OWNER = text(
    "SELECT k.key_hash, k.revoked_at IS NOT NULL, c.id, c.name, c.admin_blocked, "
    "EXISTS (SELECT 1 FROM client_model_state s WHERE s.client_id = c.id AND s.policy_blocked), "
    "c.quota_rows, c.rows_used "
    "FROM api_keys k JOIN clients c ON c.id = k.client_id WHERE k.key_id = :key_id"
)
# the batch's revoked keys among the client's (a cached authentication may predate a revocation)
_REVOKED = (
    "(SELECT {agg} FROM api_keys k WHERE k.client_id = c.id AND k.revoked_at IS NOT NULL "
    "AND k.key_id IN :keys)"
)
_LOCK_SQLITE = text(
    "SELECT c.id, c.admin_blocked, c.quota_rows, c.rows_used, c.requests, c.flagged_rows, "
    + _REVOKED.format(agg="group_concat(k.key_id, ',')")
    + ", s.model, s.version, s.checkpoint_version, s.journal_rows, s.policy_blocked, "
    "s.blocked_reason FROM clients c LEFT JOIN client_model_state s ON s.client_id = c.id "
    "WHERE c.id IN :ids"
).bindparams(bindparam("ids", expanding=True), bindparam("keys", expanding=True))
_CHECKPOINT = text("SELECT state FROM client_model_state WHERE client_id = :cid AND model = :m")
_JOURNAL = text(
    "SELECT version, rows, x, y, y_dtype FROM state_journal WHERE client_id = :cid "
    "AND model = :m AND version > :after AND version <= :upto ORDER BY version"
)
_JOURNAL_INSERT_SQL = (
    "INSERT INTO state_journal (client_id, model, version, rows, x, y, y_dtype) "
    "VALUES (:client_id, :model, :version, :rows, :x, :y, :y_dtype)"
)
_JOURNAL_TRIM_SQL = (
    "DELETE FROM state_journal WHERE client_id = :cid AND model = :m AND version <= :ckpt"
)
_HEAD_INSERT_SQL = (
    "INSERT INTO client_model_state (client_id, model, state, version, checkpoint_version, "
    "journal_rows, policy_blocked, blocked_reason, updated_at) "
    "VALUES (:cid, :m, :blob, :ver, :ckpt, :jrows, :blk, :rsn, :now)"
)
_HEAD_SET = (
    "UPDATE client_model_state SET version = :ver, checkpoint_version = :ckpt, "
    "journal_rows = :jrows, policy_blocked = :blk, blocked_reason = :rsn, updated_at = :now"
)
_HEAD_WHERE = " WHERE client_id = :cid AND model = :m"
_HEAD_UPDATE_SQL = _HEAD_SET + _HEAD_WHERE
_HEAD_CHECKPOINT_SQL = _HEAD_SET + ", state = :blob" + _HEAD_WHERE
_CLIENT_UPDATE_SQL = (
    "UPDATE clients SET rows_used = :used, requests = :reqs, flagged_rows = :flagged, "
    "last_seen = :now WHERE id = :cid"
)
_JSON_COLUMNS = frozenset({"input_sha256", "actions", "l1", "scores"})

_JOURNAL_INSERT = text(_JOURNAL_INSERT_SQL)
_JOURNAL_TRIM = text(_JOURNAL_TRIM_SQL)
_HEAD_INSERT = text(_HEAD_INSERT_SQL).bindparams(_NOW)
_HEAD_UPDATE = text(_HEAD_UPDATE_SQL).bindparams(_NOW)
_HEAD_CHECKPOINT = text(_HEAD_CHECKPOINT_SQL).bindparams(_NOW)
_CLIENT_UPDATE = text(_CLIENT_UPDATE_SQL).bindparams(_NOW)
_DELIVERED = text("UPDATE query_log SET delivered = :yes WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)


def _psycopg(sql: str) -> str:
    """A ``:name`` statement in psycopg's ``%(name)s`` parameter style."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


# psycopg's spelling of the same statements (PostgreSQL's pipelined path); arrays replace the
# expanding IN lists, so each statement has one text and is prepared once by the server.
# One statement locks every client of the batch in id order (PostgreSQL sorts before it locks),
# so two batches never deadlock.
_PG_LOCK = (
    "SELECT c.id, c.admin_blocked, c.quota_rows, c.rows_used, c.requests, c.flagged_rows, "
    "(SELECT string_agg(k.key_id, ',') FROM api_keys k WHERE k.client_id = c.id "
    "AND k.revoked_at IS NOT NULL AND k.key_id = ANY(%(keys)s::text[])) "
    "FROM clients c WHERE c.id = ANY(%(ids)s::int[]) ORDER BY c.id FOR UPDATE OF c"
)
# The heads are read by a statement of their own, after the locks: under READ COMMITTED a locking
# statement that waited re-reads the locked row but not the rows it joined (they would be stale).
_PG_HEADS = (
    "SELECT client_id, model, version, checkpoint_version, journal_rows, policy_blocked, "
    "blocked_reason FROM client_model_state WHERE client_id = ANY(%(ids)s::int[])"
)
_PG_DELIVERED = "UPDATE query_log SET delivered = true WHERE id = ANY(%(ids)s::bigint[])"
_PG_JOURNAL_TRIM = _psycopg(_JOURNAL_TRIM_SQL)
_PG_HEAD_INSERT = _psycopg(_HEAD_INSERT_SQL)
_PG_HEAD_CHECKPOINT = _psycopg(_HEAD_CHECKPOINT_SQL)
# the frequent writes are one statement for the whole batch: columns go as arrays (unnest)
_PG_JOURNAL_INSERT = (
    "INSERT INTO state_journal (client_id, model, version, rows, x, y, y_dtype) "
    "SELECT * FROM unnest(%(client_id)b::int[], %(model)b::text[], %(version)b::int[], "
    "%(rows)b::int[], %(x)b::bytea[], %(y)b::bytea[], %(y_dtype)b::text[])"
)
_PG_HEAD_UPDATE = (
    "UPDATE client_model_state s SET version = v.ver, checkpoint_version = v.ckpt, "
    "journal_rows = v.jrows, policy_blocked = v.blk, blocked_reason = v.rsn, "
    "updated_at = %(now)s FROM unnest(%(cid)b::int[], %(m)b::text[], %(ver)b::int[], "
    "%(ckpt)b::int[], %(jrows)b::int[], %(blk)b::bool[], %(rsn)b::text[]) "
    "AS v(cid, m, ver, ckpt, jrows, blk, rsn) WHERE s.client_id = v.cid AND s.model = v.m"
)
_PG_CLIENT_UPDATE = (
    "UPDATE clients c SET rows_used = v.used, requests = v.reqs, flagged_rows = v.flagged, "
    "last_seen = %(now)s FROM unnest(%(cid)b::int[], %(used)b::bigint[], %(reqs)b::bigint[], "
    "%(flagged)b::bigint[]) AS v(cid, used, reqs, flagged) WHERE c.id = v.cid"
)
# Ids come from the sequence as the rows are inserted, in ``ord`` order: sorted, they are the
# rows' ids in parameter order (RETURNING itself promises no order).
_PG_LOG_INSERT = (
    "INSERT INTO query_log (client_id, created_at, model, model_version, rows, input_sha256, "
    "actions, l1, scores, delivered) SELECT v.cid, %(created_at)s, v.model, v.mv, v.rows, "
    "v.sha::json, v.actions::json, v.l1::json, v.scores::json, false "
    "FROM unnest(%(client_id)b::int[], %(model)b::text[], %(model_version)b::text[], "
    "%(rows)b::int[], %(input_sha256)b::text[], %(actions)b::text[], %(l1)b::text[], "
    "%(scores)b::text[]) WITH ORDINALITY AS v(cid, model, mv, rows, sha, actions, l1, scores, "
    "ord) ORDER BY v.ord RETURNING id"
)

Executor = Connection | Session


@dataclass(frozen=True)
class KeyOwner:
    """What one read tells about an API key: its status and, when live, its client's standing."""

    status: AuthStatus
    client_id: int = 0
    name: str = ""
    blocked: bool = False
    quota_rows: int | None = None
    rows_used: int = 0
    key_id: str = ""


def key_owner(s: Executor, key_text: str) -> KeyOwner:
    """Check an API key and read its client's standing in one statement (read-only).

    Like :func:`stealproof.serve.db.repo.authenticate`: an unknown key id is verified against a
    dummy hash, and a wrong secret is ``unknown``, so timing does not tell which ids exist.
    """
    parsed = parse_key(key_text)
    if parsed is None:
        return KeyOwner("malformed")
    key_id, full = parsed
    row = s.execute(_KEY_OWNER, {"key_id": key_id}).one_or_none()
    if row is None:
        verify_key(full, DUMMY_HASH)
        return KeyOwner("unknown")
    key_hash, revoked, cid, name, admin_blocked, pol_blocked, quota, used = row
    if not verify_key(full, key_hash):
        return KeyOwner("unknown")
    if revoked:
        return KeyOwner("revoked")
    return KeyOwner(
        "ok",
        int(cid),
        str(name),
        bool(admin_blocked) or bool(pol_blocked),
        None if quota is None else int(quota),
        int(used),
        key_id,
    )


@dataclass
class Ledger:
    """A locked client's counters and standing, updated in memory as its requests are decided."""

    id: int
    admin_blocked: bool
    quota_rows: int | None
    rows_used: int
    requests: int
    flagged_rows: int
    #: model keys whose policy blocked the client (read with the lock, updated as decided)
    policy_blocked: set[str] = field(default_factory=set)
    changed: bool = False


@dataclass
class Head:
    """A client's state row for one model: versions (see ``ClientModelState``) and block."""

    version: int = 0
    checkpoint_version: int = 0
    journal_rows: int = 0
    policy_blocked: bool = False
    reason: str | None = None
    exists: bool = False
    #: what the batch changes: None, or "update" / "insert" (and "checkpoint" with a blob)
    checkpoint: bytes | None = None
    changed: bool = False


def lock_clients(
    s: Executor, ids: Iterable[int], key_ids: Iterable[str], *, postgres: bool
) -> tuple[dict[int, Ledger], dict[tuple[int, str], Head], set[str]]:
    """Lock the clients' rows and read them, their state heads (by ``(client_id, model)``) and
    which of ``key_ids`` are revoked.

    PostgreSQL: ``SELECT ... ORDER BY id FOR UPDATE``, then the heads, in one round trip.
    SQLite: the transaction holds the database's write lock already (``BEGIN IMMEDIATE``), so
    one plain select.
    """
    order = sorted(set(ids))
    keys = sorted({k for k in key_ids if k}) or [""]
    clients: list[Any] = []
    states: list[Any] = []
    if postgres:
        conn = _driver(s)
        with conn.pipeline() as pipe:
            locked = conn.execute(_PG_LOCK, {"ids": order, "keys": keys})
            found = conn.execute(_PG_HEADS, {"ids": order})
            pipe.sync()
            clients, states = locked.fetchall(), found.fetchall()
    else:
        for row in s.execute(_LOCK_SQLITE, {"ids": order, "keys": keys}):
            clients.append(row[:7])
            if row[7] is not None:
                states.append((row[0], *row[7:]))
    ledgers: dict[int, Ledger] = {}
    revoked: set[str] = set()
    for cid, admin, quota, used, reqs, flagged, gone in clients:
        if gone:
            revoked.update(str(gone).split(","))
        if cid not in ledgers:  # a client with several state rows comes once per row
            ledgers[int(cid)] = Ledger(
                int(cid),
                bool(admin),
                None if quota is None else int(quota),
                int(used),
                int(reqs),
                int(flagged),
            )
    heads: dict[tuple[int, str], Head] = {}
    for cid, model, ver, ckpt, jrows, blocked, rsn in states:
        heads[(int(cid), str(model))] = Head(
            int(ver), int(ckpt), int(jrows), bool(blocked), rsn, exists=True
        )
        if blocked:
            ledgers[int(cid)].policy_blocked.add(str(model))
    missing = [c for c in order if c not in ledgers]
    if missing:
        raise ClientNotFoundError(f"client id {missing[0]} does not exist")
    return ledgers, heads, revoked


def checkpoint_of(s: Executor, client_id: int, model: str) -> bytes:
    """The state blob of the client's checkpoint for ``model`` (empty: no state)."""
    blob = s.execute(_CHECKPOINT, {"cid": client_id, "m": model}).scalar_one_or_none()
    return bytes(blob) if blob else b""


@dataclass(frozen=True)
class JournalEntry:
    """One journal row (see ``StateJournal``)."""

    version: int
    rows: int
    x: bytes
    y: bytes
    y_dtype: str


def journal(s: Executor, client_id: int, model: str, after: int, upto: int) -> list[JournalEntry]:
    """The client's journal rows ``after < version <= upto`` for ``model``, in version order."""
    found = s.execute(_JOURNAL, {"cid": client_id, "m": model, "after": after, "upto": upto})
    return [JournalEntry(int(v), int(n), bytes(x), bytes(y), str(d)) for v, n, x, y, d in found]


@dataclass
class LogRow:
    """A decided request's query-log row (``client_id``, ``model`` ... as in ``QueryLog``)."""

    client_id: int
    model: str
    model_version: str
    rows: int
    input_sha256: list[str]
    actions: list[str]
    l1: list[float]
    scores: dict[str, list[float]]


def write_batch(
    s: Executor,
    ledgers: dict[int, Ledger],
    heads: dict[tuple[int, str], Head],
    journal_rows: Sequence[dict[str, Any]],
    logs: Sequence[LogRow],
    *,
    delivered: Sequence[int] = (),
    postgres: bool = False,
) -> list[int]:
    """Write what a batch decided — ``delivered`` marks of earlier answers, journal rows, state
    heads (and checkpoints), counters and log rows — in one statement per kind; returns the log
    ids in the order of ``logs``.

    PostgreSQL: every statement and the COMMIT go in one round trip, and the transaction is
    committed on return (the caller's commit then has nothing left to do). SQLite: the caller
    commits.
    """
    now = utcnow()
    journal_rows = list(journal_rows)
    new, plain, ckpt = _head_rows(heads, now)
    changed = [
        {
            "cid": g.id,
            "used": g.rows_used,
            "reqs": g.requests,
            "flagged": g.flagged_rows,
            "now": now,
        }
        for g in ledgers.values()
        if g.changed
    ]
    params = [
        {
            "client_id": r.client_id,
            "created_at": now,
            "model": r.model,
            "model_version": r.model_version,
            "rows": r.rows,
            "input_sha256": r.input_sha256,
            "actions": r.actions,
            "l1": [_json_float(v) for v in r.l1],
            "scores": {k: [_json_float(v) for v in vs] for k, vs in r.scores.items()},
            "delivered": False,
        }
        for r in logs
    ]
    # the journal up to a checkpoint is in the checkpoint
    trims = [{"cid": r["cid"], "m": r["m"], "ckpt": r["ckpt"]} for r in ckpt]
    if postgres:
        return _write_postgres(s, delivered, journal_rows, new, plain, ckpt, trims, changed, params)
    mark_delivered(s, delivered)
    for statement, rows in (
        (_JOURNAL_INSERT, journal_rows),
        (_HEAD_INSERT, new),
        (_HEAD_UPDATE, plain),
        (_HEAD_CHECKPOINT, ckpt),
        (_JOURNAL_TRIM, trims),
        (_CLIENT_UPDATE, changed),
    ):
        if rows:
            s.execute(statement, rows)
    if not params:
        return []
    if len(params) == 1:
        return [int(s.execute(_LOG_ONE, params[0]).scalar_one())]
    found = s.execute(insert(_LOG).returning(_LOG.c.id, sort_by_parameter_order=True), params)
    return [int(i) for i in found.scalars()]


_LOG_ONE = insert(_LOG).returning(_LOG.c.id)


def _write_postgres(
    s: Executor,
    delivered: Sequence[int],
    journal_rows: list[dict[str, Any]],
    new: list[dict[str, Any]],
    plain: list[dict[str, Any]],
    ckpt: list[dict[str, Any]],
    trims: list[dict[str, Any]],
    changed: list[dict[str, Any]],
    params: list[dict[str, Any]],
) -> list[int]:
    """:func:`write_batch` on PostgreSQL: the statements and the COMMIT in one pipeline."""
    conn = _driver(s)
    with conn.pipeline():
        cur = conn.cursor()
        if delivered:
            cur.execute(_PG_DELIVERED, {"ids": sorted(set(delivered))})
        if journal_rows:
            cur.execute(_PG_JOURNAL_INSERT, _columns(journal_rows))
        if new:
            cur.executemany(_PG_HEAD_INSERT, new)
        if plain:
            cur.execute(_PG_HEAD_UPDATE, _columns(plain, scalar=("now",)))
        if ckpt:
            cur.executemany(_PG_HEAD_CHECKPOINT, ckpt)
            cur.executemany(_PG_JOURNAL_TRIM, trims)
        if changed:
            cur.execute(_PG_CLIENT_UPDATE, _columns(changed, scalar=("now",)))
        ids_cur = conn.cursor()
        if params:
            logs = [
                {k: json.dumps(v) if k in _JSON_COLUMNS else v for k, v in row.items()}
                for row in params
            ]
            ids_cur.execute(_PG_LOG_INSERT, _columns(logs, scalar=("created_at",)))
        conn.commit()  # sent with the statements; its result is read with theirs
    if not params:
        return []
    ids = sorted(int(i) for (i,) in ids_cur.fetchall())
    if len(ids) != len(params):
        raise RuntimeError(f"{len(params)} log rows inserted, {len(ids)} ids returned")
    return ids


def _columns(rows: Sequence[dict[str, Any]], *, scalar: Sequence[str] = ()) -> dict[str, Any]:
    """Rows of parameters → one list per column (for ``unnest``); ``scalar`` columns, equal in
    every row, are passed once."""
    return {k: v if k in scalar else [r[k] for r in rows] for k, v in rows[0].items()}


def _driver(s: Executor) -> Any:
    """The psycopg connection under a SQLAlchemy connection or session."""
    conn = s.connection() if isinstance(s, Session) else s
    return conn.connection.driver_connection


def _head_rows(
    heads: dict[tuple[int, str], Head], now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The changed heads' parameters: new rows, plain updates, updates with a checkpoint."""
    new: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    ckpt: list[dict[str, Any]] = []
    for (cid, model), h in heads.items():
        if not h.changed:
            continue
        row = {
            "cid": cid,
            "m": model,
            "ver": h.version,
            "ckpt": h.checkpoint_version,
            "jrows": h.journal_rows,
            "blk": h.policy_blocked,
            "rsn": h.reason,
            "now": now,
        }
        if not h.exists:
            new.append({**row, "blob": h.checkpoint or b""})
        elif h.checkpoint is not None:
            ckpt.append({**row, "blob": h.checkpoint})
        else:
            plain.append(row)
    return new, plain, ckpt


def mark_delivered(s: Executor, log_ids: Sequence[int]) -> None:
    """Mark answers as handed to their clients' connections (one statement)."""
    if log_ids:
        s.execute(_DELIVERED, {"yes": True, "ids": sorted(set(log_ids))})
