"""Channels an operator paused: their posts wait until resumed, across restarts.

Revision ID: 0009_channel_pauses
Revises: 0005_fanout
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0009_channel_pauses"
down_revision = "0005_fanout"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_pauses",
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("paused_at", UTCDateTime, nullable=False),
        sa.Column("paused_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("channel", name="pk_channel_pauses"),
    )


def downgrade() -> None:
    op.drop_table("channel_pauses")
