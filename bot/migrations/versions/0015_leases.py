"""Several daemons on one PostgreSQL: feed leases and shared rate budgets.

Revision ID: 0015_leases
Revises: 0014_websub
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0015_leases"
down_revision = "0014_websub"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed_leases",
        sa.Column("feed", sa.String(200), nullable=False),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("polled_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("feed", name="pk_feed_leases"),
    )
    op.create_table(
        "rate_budgets",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("tat", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_budgets"),
    )


def downgrade() -> None:
    op.drop_table("rate_budgets")
    op.drop_table("feed_leases")
