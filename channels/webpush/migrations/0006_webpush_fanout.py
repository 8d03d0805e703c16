"""Web push delivery progress moves into the core fan-out ledger (bot.fanout).

Revision ID: 0006_webpush_fanout
Revises: 0003
Depends on: 0005_fanout
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_webpush_fanout"
down_revision = "0003"
branch_labels = None
depends_on = "0005_fanout"


def upgrade() -> None:
    # A delivery's push_key is its outbox row's idempotency key "siar-<id>": the row names the channel.
    op.execute(
        sa.text("""
        INSERT INTO fanout (key, recipient, channel, status, attempts, remote_id, detail, updated_at)
        SELECT d.push_key, d.subscription_id, o.channel,
               CASE d.status WHEN 'retry' THEN 'pending' ELSE d.status END,
               d.attempts, NULL, d.detail, d.updated_at
        FROM webpush_deliveries d JOIN outbox o ON d.push_key = 'siar-' || CAST(o.id AS TEXT)
    """)
    )
    op.drop_table("webpush_deliveries")


def downgrade() -> None:
    raise NotImplementedError("the web push deliveries now live in the fan-out ledger")
