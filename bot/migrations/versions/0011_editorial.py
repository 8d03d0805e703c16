"""Editorial control: outbox actions (edit, delete, digests), priorities, corrected and
retracted stories.

Revision ID: 0011_editorial
Revises: 0005_fanout
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0011_editorial"
down_revision = "0005_fanout"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("action", sa.String(16), nullable=False, server_default="post"))
        batch.add_column(sa.Column("target_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("args", sa.Text, nullable=True))
    with op.batch_alter_table("stories") as batch:
        batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))
        batch.add_column(sa.Column("retracted_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("retract_reason", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stories") as batch:
        for column in ("retract_reason", "retracted_at", "fingerprint"):
            batch.drop_column(column)
    with op.batch_alter_table("outbox") as batch:
        for column in ("args", "priority", "target_id", "action"):
            batch.drop_column(column)
