"""Policy state as a checkpoint plus a journal of the requests after it.

``client_model_state.checkpoint_version`` is the version its ``state`` blob holds; existing
rows hold their current state, so it starts equal to ``version``. ``state_journal`` holds one
row per decided request after the checkpoint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``client_model_state.checkpoint_version`` / ``journal_rows`` and ``state_journal``."""
    op.add_column(
        "client_model_state",
        sa.Column("checkpoint_version", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "client_model_state",
        sa.Column("journal_rows", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.execute("UPDATE client_model_state SET checkpoint_version = version")
    op.create_table(
        "state_journal",
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("x", sa.LargeBinary(), nullable=False),
        sa.Column("y", sa.LargeBinary(), nullable=False),
        sa.Column("y_dtype", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_state_journal_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", "model", "version", name=op.f("pk_state_journal")),
    )


def downgrade() -> None:
    """Drop the journal and ``checkpoint_version`` (journal rows after a checkpoint are lost)."""
    op.drop_table("state_journal")
    with op.batch_alter_table("client_model_state") as batch:
        batch.drop_column("journal_rows")
        batch.drop_column("checkpoint_version")
