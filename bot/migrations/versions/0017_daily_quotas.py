"""Daily quotas shared by the daemons of one database (bot.budgets.DailyQuotas): daily_quotas.

Revision ID: 0017_daily_quotas
Revises: 0016_fanout_batches
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_daily_quotas"
down_revision = "0016_fanout_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daily_quotas",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("used", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("key", "day", name="pk_daily_quotas"),
    )


def downgrade() -> None:
    op.drop_table("daily_quotas")
