"""The Telegram tables: chats that moved (a group became a supergroup) and the reader bot's
subscribers with their topics and language. Per-reader broadcast progress is in the core
fan-out ledger (bot.fanout); the tables are created by this package's migrations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    false,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from bot.db import Database
from bot.schema import UTCDateTime, fanout

metadata = MetaData()

chat_moves = Table(
    "tg_chat_moves",
    metadata,
    Column("old_chat", String(100), primary_key=True),
    Column("new_chat", BigInteger, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

subscribers = Table(
    "tg_subscribers",
    metadata,
    Column("bot", String(200), primary_key=True),  # the telegram-subscribers channel name
    Column("chat_id", BigInteger, primary_key=True),
    Column("kind", String(16), nullable=False),  # private, group, supergroup
    Column("name", Text, nullable=False, default=""),
    Column("language", String(8), nullable=False),
    Column("topics", Text),  # JSON list of topic keys; NULL = everything
    Column("active", Boolean, nullable=False),
    Column("reason", Text),  # why it is inactive: stopped, blocked, removed
    Column("subscribed_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("quiet_hours", String(11)),  # the reader's own "22:00-06:00" (/senyap); NULL = none
    Column("digest_only", Boolean, nullable=False, server_default=false()),  # /ringkasan
)

# Breaking-news pins of the `telegram` channels: unpinned once `unpin_at` has passed.
pins = Table(
    "tg_pins",
    metadata,
    Column("channel", String(200), primary_key=True),
    Column("chat", String(100), primary_key=True),
    Column("message_id", BigInteger, primary_key=True),
    Column("pinned_at", UTCDateTime, nullable=False),
    Column("unpin_at", UTCDateTime, nullable=False),
    Column("unpinned_at", UTCDateTime),
    Column("detail", Text),
    Index("ix_tg_pins_due", "unpinned_at", "unpin_at"),
)

# Updates already taken by a daemon of this bot (webhook mode behind several daemons: Telegram
# or a proxy may deliver one update twice, to different daemons); pruned after a day.
seen_updates = Table(
    "tg_seen_updates",
    metadata,
    Column("bot", String(40), primary_key=True),  # the token's hash (never the token)
    Column("update_id", BigInteger, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
)

# A batch statement (executemany): one subscriber stopped.
_UNSUBSCRIBE = (
    update(subscribers)
    .where(
        subscribers.c.bot == bindparam("b_bot"),
        subscribers.c.chat_id == bindparam("b_chat"),
        subscribers.c.active.is_(True),
    )
    .values(
        active=False,
        reason=bindparam("b_reason"),
        updated_at=bindparam("b_now", type_=subscribers.c.updated_at.type),
    )
)


@dataclass(frozen=True)
class Subscriber:
    chat_id: int
    kind: str
    language: str
    topics: tuple[str, ...] | None  # None = everything
    active: bool
    name: str = ""
    quiet_hours: str | None = None  # "22:00-06:00" in [site] timezone; None = none
    digest_only: bool = False


@dataclass(frozen=True)
class Pin:
    chat: str
    message_id: int
    pinned_at: datetime


class TelegramStore:
    """Queries on the Telegram tables; `bot` names the subscriber channel that owns the rows."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine
        self._write = db.write  # with SQLite's process-wide writer lock

    # --- moved chats -----------------------------------------------------------------------

    async def moved_chat(self, chat: str) -> int | None:
        async with self.engine.connect() as conn:
            new: int | None = (
                await conn.execute(select(chat_moves.c.new_chat).where(chat_moves.c.old_chat == chat))
            ).scalar()
        return new

    async def remember_move(self, chat: str, new_chat: int, now: datetime) -> None:
        async with self._write() as conn:
            done = await conn.execute(
                update(chat_moves).where(chat_moves.c.old_chat == chat).values(new_chat=new_chat, at=now)
            )
            if done.rowcount == 0:
                await conn.execute(insert(chat_moves).values(old_chat=chat, new_chat=new_chat, at=now))

    # --- subscribers -----------------------------------------------------------------------

    async def subscriber(self, bot: str, chat_id: int) -> Subscriber | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(subscribers).where(subscribers.c.bot == bot, subscribers.c.chat_id == chat_id)
                )
            ).first()
        return _subscriber(row) if row is not None else None

    async def subscribe(
        self, bot: str, chat_id: int, kind: str, language: str, name: str, now: datetime
    ) -> bool:
        """Make `chat_id` an active subscriber (keeping its topics); True if it was not active."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    select(subscribers.c.active).where(
                        subscribers.c.bot == bot, subscribers.c.chat_id == chat_id
                    )
                )
            ).first()
            if row is None:
                await conn.execute(
                    insert(subscribers).values(
                        bot=bot,
                        chat_id=chat_id,
                        kind=kind,
                        name=name,
                        language=language,
                        topics=None,
                        active=True,
                        reason=None,
                        subscribed_at=now,
                        updated_at=now,
                    )
                )
                return True
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.bot == bot, subscribers.c.chat_id == chat_id)
                .values(active=True, reason=None, kind=kind, name=name, updated_at=now)
            )
            return not row.active

    async def unsubscribe(self, bot: str, chat_id: int, reason: str, now: datetime) -> bool:
        """Stop sending to `chat_id`; True if it was active."""
        async with self._write() as conn:
            done = await conn.execute(
                update(subscribers)
                .where(
                    subscribers.c.bot == bot, subscribers.c.chat_id == chat_id, subscribers.c.active.is_(True)
                )
                .values(active=False, reason=reason, updated_at=now)
            )
        return bool(done.rowcount)

    async def move_subscriber(self, bot: str, old: int, new: int, now: datetime) -> None:
        """Group `old` became supergroup `new`: its row follows it, unless `new` has a row of
        its own already (it subscribed itself): then that row stays as it is and `old` stops."""
        async with self._write() as conn:
            taken = (
                await conn.execute(
                    select(func.count()).where(subscribers.c.bot == bot, subscribers.c.chat_id == new)
                )
            ).scalar()
            if taken:
                await conn.execute(
                    update(subscribers)
                    .where(subscribers.c.bot == bot, subscribers.c.chat_id == old)
                    .values(active=False, reason=f"moved to {new}", updated_at=now)
                )
            else:
                await conn.execute(
                    update(subscribers)
                    .where(subscribers.c.bot == bot, subscribers.c.chat_id == old)
                    .values(chat_id=new, kind="supergroup", updated_at=now)
                )

    async def set_language(self, bot: str, chat_id: int, language: str, now: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.bot == bot, subscribers.c.chat_id == chat_id)
                .values(language=language, updated_at=now)
            )

    async def set_topics(self, bot: str, chat_id: int, topics: Sequence[str] | None, now: datetime) -> None:
        value = None if topics is None else json.dumps(sorted(set(topics)), ensure_ascii=False)
        async with self._write() as conn:
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.bot == bot, subscribers.c.chat_id == chat_id)
                .values(topics=value, updated_at=now)
            )

    async def first_sight(self, bot: str, update_id: int, now: datetime) -> bool:
        """True the first time any daemon of token `bot` sees update `update_id`."""
        try:
            async with self._write() as conn:
                await conn.execute(insert(seen_updates).values(bot=bot, update_id=update_id, at=now))
                if update_id % 1000 == 0:  # now and then, forget the day-old ones
                    await conn.execute(
                        delete(seen_updates).where(seen_updates.c.at < now - timedelta(days=1))
                    )
        except IntegrityError:
            return False
        return True

    async def set_quiet_hours(self, bot: str, chat_id: int, hours: str | None, now: datetime) -> None:
        """The reader's own quiet hours ("22:00-06:00"), or None for none."""
        async with self._write() as conn:
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.bot == bot, subscribers.c.chat_id == chat_id)
                .values(quiet_hours=hours, updated_at=now)
            )

    async def set_digest_only(self, bot: str, chat_id: int, digest_only: bool, now: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(subscribers)
                .where(subscribers.c.bot == bot, subscribers.c.chat_id == chat_id)
                .values(digest_only=digest_only, updated_at=now)
            )

    async def active_subscribers(self, bot: str) -> list[Subscriber]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(subscribers)
                    .where(subscribers.c.bot == bot, subscribers.c.active.is_(True))
                    .order_by(subscribers.c.subscribed_at, subscribers.c.chat_id)
                )
            ).all()
        return [_subscriber(r) for r in rows]

    async def subscriber_counts(self, bot: str) -> dict[str, int]:
        """{"private": n, "group": n, "inactive": n, ...} for /stats."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(subscribers.c.kind, subscribers.c.active, func.count())
                    .where(subscribers.c.bot == bot)
                    .group_by(subscribers.c.kind, subscribers.c.active)
                )
            ).all()
        out: dict[str, int] = {}
        for kind, active, n in rows:
            key = kind if active else "inactive"
            out[key] = out.get(key, 0) + n
        return out

    async def unsubscribe_many(self, bot: str, chats: Sequence[tuple[int, str]], now: datetime) -> None:
        """Stop sending to each (chat, reason): one statement for a whole broadcast batch."""
        if chats:
            async with self._write() as conn:
                await conn.execute(
                    _UNSUBSCRIBE,
                    [
                        {"b_bot": bot, "b_chat": chat_id, "b_reason": reason, "b_now": now}
                        for chat_id, reason in chats
                    ],
                )

    # --- breaking-news pins --------------------------------------------------------------------

    async def remember_pin(
        self, channel: str, chat: str, message_id: int, now: datetime, unpin_at: datetime
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                insert(pins).values(
                    channel=channel, chat=chat, message_id=message_id, pinned_at=now, unpin_at=unpin_at
                )
            )

    async def due_pins(self, channel: str, now: datetime) -> list[Pin]:
        """Pins of `channel` still up whose time has passed, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(pins.c.chat, pins.c.message_id, pins.c.pinned_at)
                    .where(pins.c.channel == channel, pins.c.unpinned_at.is_(None), pins.c.unpin_at <= now)
                    .order_by(pins.c.pinned_at)
                )
            ).all()
        return [Pin(r.chat, int(r.message_id), r.pinned_at) for r in rows]

    async def pins_up(self, channel: str) -> list[Pin]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(pins.c.chat, pins.c.message_id, pins.c.pinned_at)
                    .where(pins.c.channel == channel, pins.c.unpinned_at.is_(None))
                    .order_by(pins.c.pinned_at)
                )
            ).all()
        return [Pin(r.chat, int(r.message_id), r.pinned_at) for r in rows]

    async def unpinned(
        self, channel: str, chat: str, message_id: int, now: datetime, detail: str = ""
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(pins)
                .where(pins.c.channel == channel, pins.c.chat == chat, pins.c.message_id == message_id)
                .values(unpinned_at=now, detail=detail or None)
            )

    # --- reader messages of a broadcast ----------------------------------------------------------

    async def reader_messages(self, bot: str, key: str) -> dict[int, int]:
        """chat -> message id of every reader broadcast `key` reached (edits and deletions)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(fanout.c.recipient, fanout.c.remote_id).where(
                        fanout.c.key == key,
                        fanout.c.channel == bot,
                        fanout.c.status == "sent",
                        fanout.c.remote_id.is_not(None),
                    )
                )
            ).all()
        return {int(r.recipient): int(r.remote_id) for r in rows if str(r.remote_id).isdigit()}


def _subscriber(row: Any) -> Subscriber:
    topics = None if row.topics is None else tuple(json.loads(row.topics))
    return Subscriber(
        chat_id=int(row.chat_id),
        kind=row.kind,
        language=row.language,
        topics=topics,
        active=bool(row.active),
        name=row.name or "",
        quiet_hours=row.quiet_hours,
        digest_only=bool(row.digest_only),
    )
