"""Updates a daemon of the bot already took (webhook mode behind several daemons).

Revision ID: 0015_telegram_updates
Revises: 0013_tg_reader_prefs
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0015_telegram_updates"
down_revision = "0013_tg_reader_prefs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tg_seen_updates",
        sa.Column("bot", sa.String(40), nullable=False),
        sa.Column("update_id", sa.BigInteger, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("bot", "update_id"),
    )


def downgrade() -> None:
    op.drop_table("tg_seen_updates")
