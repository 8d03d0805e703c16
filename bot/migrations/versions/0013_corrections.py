"""Corrections: a hash of each story's raw feed entry (only entries whose raw content changed
are compared again), and an index to find a post's edits and deletions.

Revision ID: 0013_corrections
Revises: 0011_editorial
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_corrections"
down_revision = "0011_editorial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stories") as batch:
        batch.add_column(sa.Column("entry_hash", sa.String(64), nullable=True))
    op.create_index("ix_outbox_target_id", "outbox", ["target_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_target_id", table_name="outbox")
    with op.batch_alter_table("stories") as batch:
        batch.drop_column("entry_hash")
