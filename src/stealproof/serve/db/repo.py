"""Repository functions over a :class:`~sqlalchemy.orm.Session`.

None of them commits: the caller owns the transaction (one request = one transaction), so
state, counters and log rows of a request are written together or not at all. They flush,
so generated ids are available and constraint errors surface here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stealproof.errors import ConfigError, InputValidationError
from stealproof.serve.db.base import utcnow
from stealproof.serve.db.engine import SQLITE_BEGIN_OPTION
from stealproof.serve.db.models import (
    NAME_LENGTH,
    ApiKey,
    Client,
    ClientModelState,
    QueryLog,
    StateJournal,
)
from stealproof.serve.security import DUMMY_HASH, generate_key, parse_key, verify_key
from stealproof.serve.settings import MAX_QUOTA_ROWS

ACTIONS = frozenset({"normal", "deceptive"})
_KEY_ATTEMPTS = 5

AuthStatus = Literal["ok", "malformed", "unknown", "revoked"]


class ClientExistsError(ConfigError):
    """A client with this name already exists."""


class ClientNotFoundError(ConfigError):
    """No client with this name or id exists."""


@dataclass(frozen=True)
class AuthResult:
    """Outcome of :func:`authenticate`: ``client`` is set only when ``status == "ok"``.

    ``malformed``, ``unknown`` and ``revoked`` are all 401 to the caller; only ``revoked`` is
    worth telling the client (a key that matched its hash but was withdrawn).
    """

    status: AuthStatus
    client: Client | None = None
    key_id: str | None = None

    @property
    def ok(self) -> bool:
        """True when the key is valid and live."""
        return self.status == "ok"

    @property
    def reason(self) -> AuthStatus:
        """Alias of :attr:`status`."""
        return self.status


# --- clients -------------------------------------------------------------------------------


def create_client(s: Session, name: str, *, quota_rows: int | None = None) -> Client:
    """Add a client named ``name`` (1 to 100 characters, unique); ``quota_rows=None``: no quota."""
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_LENGTH:
        raise InputValidationError(
            f"client name: expected 1 to {NAME_LENGTH} characters, got {name!r}"
        )
    if quota_rows is not None and (
        isinstance(quota_rows, bool) or not 0 <= quota_rows <= MAX_QUOTA_ROWS
    ):
        raise InputValidationError(
            f"quota_rows: expected an integer in [0, {MAX_QUOTA_ROWS}] or None, got {quota_rows!r}"
        )
    if get_client(s, name) is not None:
        raise ClientExistsError(f"client {name!r} already exists")
    client = Client(name=name, quota_rows=quota_rows)
    try:
        with s.begin_nested():  # a concurrent insert of the same name fails only this savepoint
            s.add(client)
    except IntegrityError:
        raise ClientExistsError(f"client {name!r} already exists") from None
    return client


def get_client(s: Session, name: str) -> Client | None:
    """The client named ``name``, or ``None``."""
    return s.scalars(select(Client).where(Client.name == name)).one_or_none()


def get_client_by_id(s: Session, client_id: int) -> Client | None:
    """The client with id ``client_id``, or ``None``."""
    return s.get(Client, client_id)


def require_client(s: Session, name: str) -> Client:
    """The client named ``name``; :class:`ClientNotFoundError` when there is none."""
    client = get_client(s, name)
    if client is None:
        raise ClientNotFoundError(f"client {name!r} does not exist")
    return client


def list_clients(s: Session) -> list[Client]:
    """All clients, by name."""
    return list(s.scalars(select(Client).order_by(Client.name)))


def lock_client(s: Session, client_id: int) -> Client:
    """Re-read the client's row under the client's lock, held until the transaction ends.

    PostgreSQL: ``SELECT ... FOR UPDATE`` (a row lock: other clients never wait). SQLite: the
    transaction already holds the database write lock (``BEGIN IMMEDIATE``), so a plain
    select; a session from ``make_sessionmaker(write=False)`` is refused, as it holds none.
    """
    stmt = select(Client).where(Client.id == client_id).execution_options(populate_existing=True)
    if s.get_bind().dialect.name == "sqlite":
        mode = s.connection().get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if str(mode).upper() == "DEFERRED":
            raise RuntimeError("lock_client needs a write session (BEGIN IMMEDIATE) on SQLite")
    else:
        stmt = stmt.with_for_update()
    client = s.scalars(stmt).one_or_none()
    if client is None:
        raise ClientNotFoundError(f"client id {client_id} does not exist")
    return client


def charge(s: Session, client: Client, rows: int, flagged: int) -> None:
    """Count one answered request of ``rows`` rows, ``flagged`` of them flagged by the policy.

    ``client`` must come from :func:`lock_client` in this transaction, so the counters it
    holds are current and no concurrent request of the same client can interleave.
    """
    if rows < 0 or flagged < 0 or flagged > rows:
        raise InputValidationError(
            f"charge: expected 0 <= flagged <= rows, got rows={rows}, flagged={flagged}"
        )
    client.rows_used += rows
    client.requests += 1
    client.flagged_rows += flagged
    client.last_seen = utcnow()
    s.flush()


def set_admin_block(s: Session, client: Client, blocked: bool, reason: str | None = None) -> None:
    """Block (or unblock) a client by an administrator's decision; unblocking clears the reason."""
    client.admin_blocked = blocked
    client.block_reason = reason if blocked else None
    s.flush()


# --- keys ----------------------------------------------------------------------------------


def add_key(s: Session, client: Client) -> str:
    """Issue a new key for ``client``; returns the full key (shown once, only its hash is kept)."""
    for _ in range(_KEY_ATTEMPTS):
        new = generate_key()
        if s.scalars(select(ApiKey.id).where(ApiKey.key_id == new.key_id)).first() is None:
            break
    else:  # pragma: no cover - 32-bit ids colliding five times in a row
        raise RuntimeError("could not draw an unused key id")
    s.add(ApiKey(key_id=new.key_id, key_hash=new.key_hash, client_id=client.id))
    s.flush()
    return new.key


def revoke_key(s: Session, key_id: str) -> bool:
    """Revoke the key ``key_id``; False when there is none (revoking twice keeps the first time)."""
    key = s.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        s.flush()
    return True


def list_keys(s: Session, client: Client) -> list[ApiKey]:
    """The client's keys (live and revoked), oldest first."""
    return list(s.scalars(select(ApiKey).where(ApiKey.client_id == client.id).order_by(ApiKey.id)))


def authenticate(s: Session, key_text: str) -> AuthResult:
    """Check an API key; read-only (no write lock, no ``last_used_at`` update).

    An unknown ``key_id`` is verified against a dummy hash and a wrong secret is reported as
    ``unknown``, so neither the answer nor its timing tells which key ids exist.
    """
    parsed = parse_key(key_text)
    if parsed is None:
        return AuthResult("malformed")
    key_id, full = parsed
    row = s.execute(
        select(ApiKey, Client)
        .join(Client, ApiKey.client_id == Client.id)
        .where(ApiKey.key_id == key_id)
    ).one_or_none()
    if row is None:
        verify_key(full, DUMMY_HASH)
        return AuthResult("unknown", key_id=key_id)
    key, client = row
    if not verify_key(full, key.key_hash):
        return AuthResult("unknown", key_id=key_id)
    if key.revoked_at is not None:
        return AuthResult("revoked", key_id=key_id)
    return AuthResult("ok", client=client, key_id=key_id)


# --- policy state --------------------------------------------------------------------------


def load_state(s: Session, client_id: int, model: str) -> ClientModelState | None:
    """The client's stored policy state for ``model`` (freshly read), or ``None``."""
    stmt = (
        select(ClientModelState)
        .where(ClientModelState.client_id == client_id, ClientModelState.model == model)
        .execution_options(populate_existing=True)
    )
    return s.scalars(stmt).one_or_none()


def save_state(
    s: Session,
    client_id: int,
    model: str,
    state_bytes: bytes,
    *,
    policy_blocked: bool,
    reason: str | None = None,
) -> ClientModelState:
    """Write the client's whole state for ``model`` as a new checkpoint (the journal before it is
    deleted); ``version`` counts the changes (1, 2, ...).

    Call it under :func:`lock_client`: two unlocked first writes of one client would collide.
    """
    row = load_state(s, client_id, model)
    now = utcnow()
    if row is None:
        row = ClientModelState(
            client_id=client_id,
            model=model,
            state=state_bytes,
            policy_blocked=policy_blocked,
            blocked_reason=reason,
            version=1,
            checkpoint_version=1,
            journal_rows=0,
            updated_at=now,
        )
        s.add(row)
    else:
        row.state = state_bytes
        row.policy_blocked = policy_blocked
        row.blocked_reason = reason
        row.version += 1
        row.checkpoint_version = row.version
        row.journal_rows = 0
        row.updated_at = now
        s.execute(
            delete(StateJournal).where(
                StateJournal.client_id == client_id, StateJournal.model == model
            )
        )
    s.flush()
    return row


# --- query log -----------------------------------------------------------------------------


def append_log(
    s: Session,
    client_id: int,
    model: str,
    model_version: str,
    rows: int,
    input_sha256: Sequence[str],
    actions: Sequence[str],
    l1: Sequence[float],
    scores: Mapping[str, Sequence[float]],
) -> QueryLog:
    """Append one answered request to the log; every per-row list must have ``rows`` entries.

    Non-finite floats in ``l1`` and ``scores`` are stored as ``null`` (JSON cannot hold them).
    """
    if rows < 1:
        raise InputValidationError(f"query log rows: expected at least 1, got {rows}")
    per_row: dict[str, Sequence[object]] = {
        "input_sha256": input_sha256,
        "actions": actions,
        "l1": l1,
        **{f"scores[{name!r}]": v for name, v in scores.items()},
    }
    for field, values in per_row.items():
        if len(values) != rows:
            raise InputValidationError(
                f"query log {field}: expected {rows} entries, got {len(values)}"
            )
    bad = sorted(set(actions) - ACTIONS)
    if bad:
        raise InputValidationError(
            f"query log actions: expected 'normal' or 'deceptive', got {bad[0]!r}"
        )
    entry = QueryLog(
        client_id=client_id,
        model=model,
        model_version=model_version,
        rows=rows,
        input_sha256=[str(h) for h in input_sha256],
        actions=list(actions),
        l1=[_json_float(x) for x in l1],
        scores={str(k): [_json_float(x) for x in v] for k, v in scores.items()},
    )
    s.add(entry)
    s.flush()
    return entry


def _json_float(x: float) -> float | None:
    """A float JSON can hold: NaN and infinities become ``None`` (JSON has no spelling for them)."""
    f = float(x)
    return f if math.isfinite(f) else None


def mark_delivered(s: Session, log_id: int) -> None:
    """Record that the answer logged as ``log_id`` was handed to the client's connection."""
    s.execute(update(QueryLog).where(QueryLog.id == log_id).values(delivered=True))


def recent_log(s: Session, client_id: int, limit: int = 50) -> list[QueryLog]:
    """The client's latest ``limit`` log rows, newest first."""
    stmt = (
        select(QueryLog)
        .where(QueryLog.client_id == client_id)
        .order_by(QueryLog.id.desc())
        .limit(max(0, limit))
    )
    return list(s.scalars(stmt))


def count_log(s: Session, client_id: int | None = None) -> int:
    """Number of log rows (requests), for one client or all."""
    stmt = select(func.count()).select_from(QueryLog)
    if client_id is not None:
        stmt = stmt.where(QueryLog.client_id == client_id)
    return int(s.scalar(stmt) or 0)
