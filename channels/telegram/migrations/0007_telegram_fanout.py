"""Reader broadcast progress moves into the core fan-out ledger (bot.fanout).

Revision ID: 0007_telegram_fanout
Revises: 0002_telegram
Depends on: 0005_fanout
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_telegram_fanout"
down_revision = "0002_telegram"
branch_labels = None
depends_on = "0005_fanout"


def upgrade() -> None:
    op.execute(
        sa.text("""
        INSERT INTO fanout (key, recipient, channel, status, attempts, remote_id, detail, updated_at)
        SELECT key, chat_id, bot, status, attempts, CAST(message_id AS TEXT), detail, updated_at
        FROM tg_deliveries
    """)
    )
    op.drop_table("tg_deliveries")


def downgrade() -> None:
    raise NotImplementedError("the reader deliveries now live in the fan-out ledger")
