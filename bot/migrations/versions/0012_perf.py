"""Polling speed (issue 11): the newest stories without a scan of the stories table.

The duplicate check's index (`ix_outbox_dedup_key`, dedup_key first) came with 0005_fanout;
tests/test_query_plans.py EXPLAINs every hot query on SQLite and PostgreSQL, and the one left
scanning a big table was the newest-stories query (`Stories.latest`: previews, the bots).

Revision ID: 0012_perf
Revises: 0011_editorial
"""

from alembic import op

revision = "0012_perf"
down_revision = "0011_editorial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_stories_first_seen", "stories", ["first_seen_at", "published_at"])


def downgrade() -> None:
    op.drop_index("ix_stories_first_seen", "stories")
