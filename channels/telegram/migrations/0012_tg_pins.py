"""Telegram: the breaking-news pins of each channel, so that they are unpinned after `pin_for`.

Revision ID: 0012_tg_pins
Revises: 0007_telegram_fanout
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0012_tg_pins"
down_revision = "0007_telegram_fanout"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tg_pins",
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("chat", sa.String(100), nullable=False),
        sa.Column("message_id", sa.BigInteger, nullable=False),
        sa.Column("pinned_at", UTCDateTime, nullable=False),
        sa.Column("unpin_at", UTCDateTime, nullable=False),
        sa.Column("unpinned_at", UTCDateTime),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("channel", "chat", "message_id", name="pk_tg_pins"),
    )
    op.create_index("ix_tg_pins_due", "tg_pins", ["unpinned_at", "unpin_at"])


def downgrade() -> None:
    op.drop_table("tg_pins")
