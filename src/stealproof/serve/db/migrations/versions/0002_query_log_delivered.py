"""Query log: a ``delivered`` flag, set once the answer was handed to the client's connection.

Rows written before this revision were answered the moment they committed: they are marked
delivered.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``query_log.delivered`` (existing rows: true)."""
    op.add_column(
        "query_log",
        sa.Column("delivered", sa.Boolean(), server_default=sa.true(), nullable=False),
    )


def downgrade() -> None:
    """Drop ``query_log.delivered``."""
    with op.batch_alter_table("query_log") as batch:
        batch.drop_column("delivered")
