"""Web Push: browser subscriptions, per-subscription delivery progress, notification clicks.

Revision ID: 0003
Revises: 0001
Branch: webpush (its own branch, so other channel modules can add theirs beside it)
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0003"
down_revision = "0001"
branch_labels = ("webpush",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webpush_subscriptions",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("endpoint_hash", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("p256dh", sa.String(100), nullable=False),
        sa.Column("auth", sa.String(40), nullable=False),
        sa.Column("topics", sa.Text, nullable=False, server_default="[]"),
        sa.Column("origin", sa.String(300), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_push_at", UTCDateTime),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_webpush_subscriptions"),
        sa.UniqueConstraint("endpoint_hash", name="uq_webpush_subscriptions_endpoint_hash"),
    )
    # One row per (outbox row, subscription): what makes a resumed fan-out skip those already
    # pushed. No foreign key to the subscription: a removed subscription keeps its record.
    op.create_table(
        "webpush_deliveries",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("push_key", sa.String(100), nullable=False),
        sa.Column("subscription_id", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status_code", sa.Integer),
        sa.Column("detail", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webpush_deliveries"),
        sa.UniqueConstraint("push_key", "subscription_id", name="uq_webpush_deliveries_push_key"),
    )
    op.create_index("ix_webpush_deliveries_key_status", "webpush_deliveries", ["push_key", "status"])
    op.create_index("ix_webpush_deliveries_updated_at", "webpush_deliveries", ["updated_at"])
    op.create_table(
        "webpush_clicks",
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("clicks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("tag", name="pk_webpush_clicks"),
    )


def downgrade() -> None:
    op.drop_table("webpush_clicks")
    op.drop_index("ix_webpush_deliveries_updated_at", table_name="webpush_deliveries")
    op.drop_index("ix_webpush_deliveries_key_status", table_name="webpush_deliveries")
    op.drop_table("webpush_deliveries")
    op.drop_table("webpush_subscriptions")
