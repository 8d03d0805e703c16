"""One fan-out ledger for every channel with many recipients; an index for the duplicate check.

Revision ID: 0005_fanout
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0005_fanout"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fanout",
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("recipient", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("remote_id", sa.String(100)),
        sa.Column("detail", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("key", "recipient", name="pk_fanout"),
    )
    op.create_index("ix_fanout_key_status", "fanout", ["key", "status", "recipient"])
    op.create_index("ix_fanout_channel_status", "fanout", ["channel", "status", "updated_at"])
    op.create_index("ix_outbox_dedup_key", "outbox", ["dedup_key"])


def downgrade() -> None:
    op.drop_index("ix_outbox_dedup_key", "outbox")
    op.drop_table("fanout")
