"""WebSub subscriptions (bot/websub.py): one row per feed, kept across restarts.

Revision ID: 0014_websub
Revises: 0013_corrections
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0014_websub"
down_revision = "0013_corrections"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "websub_subscriptions",
        sa.Column("feed", sa.String(200), nullable=False),
        sa.Column("feed_url", sa.Text, nullable=False),
        sa.Column("hub", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("callback_id", sa.String(64), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_seconds", sa.Integer, nullable=True),
        sa.Column("requested_at", UTCDateTime, nullable=True),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("notified_at", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("feed", name="pk_websub_subscriptions"),
        sa.UniqueConstraint("callback_id", name="uq_websub_subscriptions_callback_id"),
    )


def downgrade() -> None:
    op.drop_table("websub_subscriptions")
