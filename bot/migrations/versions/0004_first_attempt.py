"""Outbox rows remember when their first attempt began (idempotency windows).

Revision ID: 0004
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0004"
down_revision = "0001"
branch_labels = ("outbox_first_attempt",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("first_attempt_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("first_attempt_at")
