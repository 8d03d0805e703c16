"""Batched fan-out progress (bot.fanout_batches): fanout_broadcasts and fanout_batches.

Revision ID: 0016_fanout_batches
Revises: 0014_websub
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0016_fanout_batches"
down_revision = "0015_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fanout_broadcasts",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("planned", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "fanout_batches",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("batch", sa.Integer, primary_key=True),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("recipients", sa.LargeBinary, nullable=False),
        sa.Column("states", sa.LargeBinary, nullable=False),
        sa.Column("attempts", sa.LargeBinary, nullable=False),
        sa.Column("details", sa.Text),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("holder", sa.String(100)),
        sa.Column("claimed_until", UTCDateTime),
        sa.Column("n_sent", sa.Integer, nullable=False),
        sa.Column("n_failed", sa.Integer, nullable=False),
        sa.Column("n_gone", sa.Integer, nullable=False),
        sa.Column("n_uncertain", sa.Integer, nullable=False),
        sa.Column("n_open", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_fanout_batches_channel_status", "fanout_batches", ["channel", "status", "key", "batch"]
    )


def downgrade() -> None:
    op.drop_index("ix_fanout_batches_channel_status", "fanout_batches")
    op.drop_table("fanout_batches")
    op.drop_table("fanout_broadcasts")
