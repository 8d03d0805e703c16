"""Initial schema: feed state, stories, outbox, decision log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed_state",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("etag", sa.Text),
        sa.Column("last_modified", sa.Text),
        sa.Column("body_hash", sa.String(64)),
        sa.Column("last_fetch_at", UTCDateTime),
        sa.Column("last_success_at", UTCDateTime),
        sa.Column("next_poll_at", UTCDateTime),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("redirect_url", sa.Text),
        sa.Column("first_run_done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("name", name="pk_feed_state"),
    )
    op.create_table(
        "stories",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("feed", sa.String(200), nullable=False),
        sa.Column("uid", sa.String(500), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("url_key", sa.String(64), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("published_at", UTCDateTime),
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stories"),
        sa.UniqueConstraint("feed", "uid", name="uq_stories_feed_uid"),
    )
    op.create_index("ix_stories_url_key", "stories", ["url_key"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("story_id", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("claimed_at", UTCDateTime),
        sa.Column("claimed_by", sa.String(100)),
        sa.Column("remote_id", sa.Text),
        sa.Column("remote_url", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.ForeignKeyConstraint(
            ["story_id"], ["stories.id"], ondelete="CASCADE", name="fk_outbox_story_id_stories"
        ),
        sa.UniqueConstraint("channel", "dedup_key", name="uq_outbox_channel_dedup"),
    )
    op.create_index("ix_outbox_due", "outbox", ["channel", "status", "next_attempt_at"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("story_id", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(200)),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("rule", sa.String(200)),
        sa.Column("detail", sa.Text),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        sa.ForeignKeyConstraint(
            ["story_id"], ["stories.id"], ondelete="CASCADE", name="fk_decisions_story_id_stories"
        ),
    )
    op.create_index("ix_decisions_story_id", "decisions", ["story_id"])


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_table("outbox")
    op.drop_table("stories")
    op.drop_table("feed_state")
