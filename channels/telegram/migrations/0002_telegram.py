"""Telegram: moved chats, reader-bot subscribers, per-chat broadcast rows.

Revision ID: 0002_telegram
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0002_telegram"
down_revision = "0001"
branch_labels = ("telegram",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tg_chat_moves",
        sa.Column("old_chat", sa.String(100), nullable=False),
        sa.Column("new_chat", sa.BigInteger, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("old_chat", name="pk_tg_chat_moves"),
    )
    op.create_table(
        "tg_subscribers",
        sa.Column("bot", sa.String(200), nullable=False),
        sa.Column("chat_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("topics", sa.Text),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("subscribed_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("bot", "chat_id", name="pk_tg_subscribers"),
    )
    op.create_table(
        "tg_deliveries",
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("chat_id", sa.BigInteger, nullable=False),
        sa.Column("bot", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("message_id", sa.BigInteger),
        sa.Column("detail", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("key", "chat_id", name="pk_tg_deliveries"),
    )
    op.create_index("ix_tg_deliveries_key_status", "tg_deliveries", ["key", "status"])


def downgrade() -> None:
    op.drop_table("tg_deliveries")
    op.drop_table("tg_subscribers")
    op.drop_table("tg_chat_moves")
