"""Telegram: each reader's own quiet hours and digest-only choice (/senyap, /ringkasan).

Revision ID: 0013_tg_reader_prefs
Revises: 0012_tg_pins
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_tg_reader_prefs"
down_revision = "0012_tg_pins"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tg_subscribers") as table:
        table.add_column(sa.Column("quiet_hours", sa.String(11)))  # "22:00-06:00", NULL = none
        table.add_column(sa.Column("digest_only", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("tg_subscribers") as table:
        table.drop_column("digest_only")
        table.drop_column("quiet_hours")
