"""The store's tables (SQLAlchemy Core), shared by the queries in `bot.store` and the migrations.

Times are stored in UTC and always read back timezone-aware, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as any aware datetime and comes out as aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

feed_state = Table(
    "feed_state",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("url", Text, nullable=False),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("body_hash", String(64)),
    Column("last_fetch_at", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("next_poll_at", UTCDateTime),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("redirect_url", Text),  # a permanent redirect seen, for the operator to update config
    Column("first_run_done", Boolean, nullable=False, default=False),
)

stories = Table(
    "stories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("feed", String(200), nullable=False),
    Column("uid", String(500), nullable=False),
    Column("url", Text, nullable=False),
    Column("url_key", String(64), nullable=False, index=True),
    Column("title", Text, nullable=False),
    Column("published_at", UTCDateTime),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("data", Text, nullable=False),  # the Story as JSON
    # What a post shows of it (title, lead, image, link): a change is a correction.
    Column("fingerprint", String(64)),
    Column("retracted_at", UTCDateTime),  # never posted again; its posts deleted where possible
    Column("retract_reason", Text),
    # sha256 of the feed entry as it came (bot.normalize.entry_hash): only entries whose raw
    # content changed are checked for a correction.
    Column("entry_hash", String(64)),
    UniqueConstraint("feed", "uid", name="uq_stories_feed_uid"),
    Index("ix_stories_first_seen", "first_seen_at", "published_at"),  # the newest stories
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("story_id", Integer, ForeignKey("stories.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(200), nullable=False),
    Column("dedup_key", String(64), nullable=False),
    # pending -> sending -> sent | failed | uncertain; cancelled (retracted before it went out,
    # or folded into a digest)
    Column("status", String(16), nullable=False),
    # post; edit / delete (of the post row `target_id`: a correction, a retraction); collect (a
    # story waiting for the channel's next digest, never sent alone); digest (a roundup of the
    # stories in `args`)
    Column("action", String(16), nullable=False, server_default="post"),
    Column("target_id", Integer),
    Column("priority", Integer, nullable=False, server_default="0"),  # breaking news first
    Column("args", Text),  # JSON, by action (a digest's story ids and title)
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_at", UTCDateTime),
    Column("first_attempt_at", UTCDateTime),  # when the first send began (idempotency windows)
    Column("claimed_by", String(100)),
    Column("remote_id", Text),
    Column("remote_url", Text),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    UniqueConstraint("channel", "dedup_key", name="uq_outbox_channel_dedup"),
    Index("ix_outbox_due", "channel", "status", "next_attempt_at"),
    # The poll's duplicate check looks keys up across channels: without this it scans the table.
    Index("ix_outbox_dedup_key", "dedup_key"),
    Index("ix_outbox_target_id", "target_id"),  # a post's edits and deletions
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("story_id", Integer, ForeignKey("stories.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("channel", String(200)),
    # queued, filtered, too_old, duplicate, first_run_skip, sent, already_sent, retry, deferred,
    # failed, uncertain, resume, resend, not_running
    Column("decision", String(32), nullable=False),
    Column("rule", String(200)),
    Column("detail", Text),
    Column("at", UTCDateTime, nullable=False),
)

# One row per (broadcast, recipient) of every fan-out channel (bot.fanout): Telegram readers,
# browser push subscriptions. `key` is the outbox row's idempotency key.
fanout = Table(
    "fanout",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("recipient", BigInteger, primary_key=True),
    Column("channel", String(200), nullable=False),
    # pending -> sending (its request is leaving) -> sent | failed | gone | uncertain
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("remote_id", String(100)),  # the platform's message id (edits, deletes)
    Column("detail", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_fanout_key_status", "key", "status", "recipient"),
    Index("ix_fanout_channel_status", "channel", "status", "updated_at"),
)

# Batched fan-out progress (bot.fanout_batches) for audiences of millions: one row per
# broadcast (what it sends, so any daemon can help) and one per batch of recipients (their ids
# and one state byte each, compressed; a lease for the daemon working it; counts per state).
fanout_broadcasts = Table(
    "fanout_broadcasts",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("channel", String(200), nullable=False),
    Column("message", LargeBinary, nullable=False),
    Column("planned", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
fanout_batches = Table(
    "fanout_batches",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("batch", Integer, primary_key=True),
    Column("channel", String(200), nullable=False),
    Column("size", Integer, nullable=False),
    Column("recipients", LargeBinary, nullable=False),
    Column("states", LargeBinary, nullable=False),
    Column("attempts", LargeBinary, nullable=False),
    Column("details", Text),  # JSON {index: why} for recipients not sent to (the last answer)
    Column("status", String(8), nullable=False),  # open | done
    Column("holder", String(100)),
    Column("claimed_until", UTCDateTime),
    Column("n_sent", Integer, nullable=False),
    Column("n_failed", Integer, nullable=False),
    Column("n_gone", Integer, nullable=False),
    Column("n_uncertain", Integer, nullable=False),
    Column("n_open", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_fanout_batches_channel_status", "channel", "status", "key", "batch"),
)

# Channels an operator paused (`siar pause`, the bot's /pause): their posts wait, nothing is
# dropped; a row per paused channel, removed on resume.
channel_pauses = Table(
    "channel_pauses",
    metadata,
    Column("channel", String(200), primary_key=True),
    Column("paused_at", UTCDateTime, nullable=False),
    Column("paused_by", String(200), nullable=False),
)

# Several daemons on one PostgreSQL (bot.leases): who polls each feed. A daemon polls a feed only
# while it holds the feed's lease; a lease whose holder stops renewing it expires and is taken.
feed_leases = Table(
    "feed_leases",
    metadata,
    Column("feed", String(200), primary_key=True),
    Column("holder", String(100), nullable=False),  # the daemon: host:pid
    Column("expires_at", UTCDateTime, nullable=False),
    Column("polled_at", UTCDateTime),  # the holder's last poll
)

# Rate budgets shared by the daemons of one platform account (bot.budgets): one row per bucket
# (a bot token, a chat, a channel's rate_limit), `tat` the next free slot in seconds since the
# epoch on the database's clock (the generic cell rate algorithm: one atomic UPDATE per send).
rate_budgets = Table(
    "rate_budgets",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("tat", Float, nullable=False),
)

# Daily quotas shared by every daemon of one database (bot.budgets.DailyQuotas): a channel's
# daily cap. One row per (key, local day); `used` counts the reservations, each taken by one atomic
# upsert that refuses to go past the cap. A row per key lives a few days (pruned by its users).
daily_quotas = Table(
    "daily_quotas",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("day", String(10), primary_key=True),  # the local date in ISO form: 2020-10-09
    Column("used", Integer, nullable=False),
)

# WebSub subscriptions (bot/websub.py), one per feed: kept across restarts so the hub's callbacks
# and signatures still match. `secret` signs the hub's notifications (HMAC).
websub_subscriptions = Table(
    "websub_subscriptions",
    metadata,
    Column("feed", String(200), primary_key=True),
    Column("feed_url", Text, nullable=False),
    Column("hub", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("callback_id", String(64), nullable=False, unique=True),
    Column("secret", String(128), nullable=False),
    # pending -> subscribed | denied | failed; subscribed -> silent | expired; -> unsubscribing
    Column("state", String(16), nullable=False),
    Column("lease_seconds", Integer),
    Column("requested_at", UTCDateTime),
    Column("expires_at", UTCDateTime),
    Column("notified_at", UTCDateTime),
    Column("last_error", Text),
)
