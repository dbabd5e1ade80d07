"""The gateway's tables: clients, API keys, per-client policy state (a checkpoint and a journal
of the requests after it) and the query log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from stealproof.serve.db.base import Base, UTCDateTime, utcnow

NAME_LENGTH = 100
MODEL_NAME_LENGTH = 200

# 64-bit ids on PostgreSQL; SQLite only autoincrements a column declared INTEGER PRIMARY KEY.
LogId = BigInteger().with_variant(Integer, "sqlite")


class Client(Base):
    """A consumer of the API with its counters and standing.

    ``flagged_rows`` is for administrators only: a client must never learn it was detected.
    """

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    admin_blocked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    block_reason: Mapped[str | None] = mapped_column(String(500))
    quota_rows: Mapped[int | None] = mapped_column(BigInteger)
    rows_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    flagged_rows: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"Client(id={self.id!r}, name={self.name!r})"


class ApiKey(Base):
    """An API key of a client; only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"ApiKey(key_id={self.key_id!r}, client_id={self.client_id!r})"


class ClientModelState(Base):
    """A client's detection-policy state for one served model.

    ``version`` counts the decisions (and administrator changes) applied to the state; ``state``
    is a checkpoint (``dumps_state`` bytes; empty: no state) at ``checkpoint_version``, and
    :class:`StateJournal` holds the requests ``checkpoint_version < v <= version``: replaying
    them onto the checkpoint gives the current state. A request therefore appends one journal
    row instead of rewriting a state that grows with the client's history.
    """

    __tablename__ = "client_model_state"

    client_id: Mapped[int] = mapped_column(
        ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), primary_key=True)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    policy_blocked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    blocked_reason: Mapped[str | None] = mapped_column(String(500))
    version: Mapped[int] = mapped_column(Integer, default=1)
    checkpoint_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: rows of the journal after the checkpoint (a new checkpoint is written past a limit)
    journal_rows: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StateJournal(Base):
    """One decided request of a client on a model, as the policy observed it: the inputs
    (float32 ``[rows, C, H, W]``) and the victim's clean posteriors (``[rows, K]`` of
    ``y_dtype``), raw bytes. Rows at or below the state's checkpoint are deleted."""

    __tablename__ = "state_journal"

    client_id: Mapped[int] = mapped_column(
        ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    x: Mapped[bytes] = mapped_column(LargeBinary)
    y: Mapped[bytes] = mapped_column(LargeBinary)
    y_dtype: Mapped[str] = mapped_column(String(16))


class QueryLog(Base):
    """One answered request (append-only): per-row input hashes, actions, distortion, scores.

    The ``(client_id, id)`` index serves both "this client's rows" and "newest first".
    """

    __tablename__ = "query_log"
    __table_args__ = (Index("ix_query_log_client_id_id", "client_id", "id"),)

    id: Mapped[int] = mapped_column(LogId, primary_key=True, autoincrement=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH))
    model_version: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    input_sha256: Mapped[list[str]] = mapped_column(JSON)
    actions: Mapped[list[str]] = mapped_column(JSON)
    l1: Mapped[list[float | None]] = mapped_column(JSON)
    scores: Mapped[dict[str, list[float | None]]] = mapped_column(JSON)
    #: set once the answer was handed to the client's connection; a row left ``False`` belongs to
    #: a worker that died between the commit and the response (decided and charged, not sent)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=true())

    def __repr__(self) -> str:
        return f"QueryLog(id={self.id!r}, client_id={self.client_id!r}, rows={self.rows!r})"
