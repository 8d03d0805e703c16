"""Telegram's own tables: moved chats, the reader bot's subscribers, and per-chat broadcast rows.

- `tg_chat_moves`: a group that became a supergroup answers `migrate_to_chat_id`; the new id
  is remembered so the configured `chat` keeps working after a restart.
- `tg_subscribers`: one row per (bot channel, chat): language, topics (NULL = everything),
  whether it is active and why it stopped.
- `tg_deliveries`: one row per (outbox idempotency key, chat) of a broadcast. The audience is
  fixed when the broadcast starts; a row is `sending` while its request is out, then `sent`,
  `failed` or `uncertain`. After a crash, `pending` rows are sent and `sending` rows are not
  (they may have arrived): nobody gets a story twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.schema import UTCDateTime
from bot.store import Store

metadata = MetaData()

chat_moves = Table(
    "tg_chat_moves", metadata,
    Column("old_chat", String(100), primary_key=True),
    Column("new_chat", BigInteger, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

subscribers = Table(
    "tg_subscribers", metadata,
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
)

deliveries = Table(
    "tg_deliveries", metadata,
    Column("key", String(100), primary_key=True),  # the outbox idempotency key
    Column("chat_id", BigInteger, primary_key=True),
    Column("bot", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # pending, sending, sent, failed, uncertain
    Column("attempts", Integer, nullable=False, default=0),
    Column("message_id", BigInteger),
    Column("detail", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_tg_deliveries_key_status", "key", "status"),
)


# Batch statements (executemany): one delivery row's result; one subscriber stopped.
_FINISH = update(deliveries).where(
    deliveries.c.key == bindparam("b_key"), deliveries.c.chat_id == bindparam("b_chat")).values(
    status=bindparam("b_status"), message_id=bindparam("b_message"), detail=bindparam("b_detail"),
    updated_at=bindparam("b_now", type_=deliveries.c.updated_at.type))
_UNSUBSCRIBE = update(subscribers).where(
    subscribers.c.bot == bindparam("b_bot"), subscribers.c.chat_id == bindparam("b_chat"),
    subscribers.c.active.is_(True)).values(
    active=False, reason=bindparam("b_reason"),
    updated_at=bindparam("b_now", type_=subscribers.c.updated_at.type))


@dataclass(frozen=True)
class Subscriber:
    chat_id: int
    kind: str
    language: str
    topics: tuple[str, ...] | None  # None = everything
    active: bool
    name: str = ""


class TelegramStore:
    """Queries on the Telegram tables; `bot` names the subscriber channel that owns the rows."""

    def __init__(self, engine: AsyncEngine,
                 write: Callable[[], AbstractAsyncContextManager[AsyncConnection]]) -> None:
        self.engine = engine
        self._write = write  # the core store's write transaction (with SQLite's writer lock)

    # --- moved chats -----------------------------------------------------------------------

    async def moved_chat(self, chat: str) -> int | None:
        async with self.engine.connect() as conn:
            new: int | None = (await conn.execute(
                select(chat_moves.c.new_chat).where(chat_moves.c.old_chat == chat))).scalar()
        return new

    async def remember_move(self, chat: str, new_chat: int, now: datetime) -> None:
        async with self._write() as conn:
            done = await conn.execute(update(chat_moves).where(chat_moves.c.old_chat == chat)
                                      .values(new_chat=new_chat, at=now))
            if done.rowcount == 0:
                await conn.execute(insert(chat_moves).values(old_chat=chat, new_chat=new_chat, at=now))

    # --- subscribers -----------------------------------------------------------------------

    async def subscriber(self, bot: str, chat_id: int) -> Subscriber | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(subscribers).where(
                subscribers.c.bot == bot, subscribers.c.chat_id == chat_id))).first()
        return _subscriber(row) if row is not None else None

    async def subscribe(self, bot: str, chat_id: int, kind: str, language: str, name: str,
                        now: datetime) -> bool:
        """Make `chat_id` an active subscriber (keeping its topics); True if it was not active."""
        async with self._write() as conn:
            row = (await conn.execute(select(subscribers.c.active).where(
                subscribers.c.bot == bot, subscribers.c.chat_id == chat_id))).first()
            if row is None:
                await conn.execute(insert(subscribers).values(
                    bot=bot, chat_id=chat_id, kind=kind, name=name, language=language, topics=None,
                    active=True, reason=None, subscribed_at=now, updated_at=now))
                return True
            await conn.execute(update(subscribers).where(
                subscribers.c.bot == bot, subscribers.c.chat_id == chat_id).values(
                active=True, reason=None, kind=kind, name=name, updated_at=now))
            return not row.active

    async def unsubscribe(self, bot: str, chat_id: int, reason: str, now: datetime) -> bool:
        """Stop sending to `chat_id`; True if it was active."""
        async with self._write() as conn:
            done = await conn.execute(update(subscribers).where(
                subscribers.c.bot == bot, subscribers.c.chat_id == chat_id,
                subscribers.c.active.is_(True)).values(active=False, reason=reason, updated_at=now))
        return bool(done.rowcount)

    async def move_subscriber(self, bot: str, old: int, new: int, now: datetime) -> None:
        """Group `old` became supergroup `new`: its row follows it, unless `new` has a row of
        its own already (it subscribed itself): then that row stays as it is and `old` stops."""
        async with self._write() as conn:
            taken = (await conn.execute(select(func.count()).where(
                subscribers.c.bot == bot, subscribers.c.chat_id == new))).scalar()
            if taken:
                await conn.execute(update(subscribers).where(
                    subscribers.c.bot == bot, subscribers.c.chat_id == old).values(
                    active=False, reason=f"moved to {new}", updated_at=now))
            else:
                await conn.execute(update(subscribers).where(
                    subscribers.c.bot == bot, subscribers.c.chat_id == old).values(
                    chat_id=new, kind="supergroup", updated_at=now))

    async def set_language(self, bot: str, chat_id: int, language: str, now: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(update(subscribers).where(
                subscribers.c.bot == bot, subscribers.c.chat_id == chat_id).values(
                language=language, updated_at=now))

    async def set_topics(self, bot: str, chat_id: int, topics: Sequence[str] | None, now: datetime) -> None:
        value = None if topics is None else json.dumps(sorted(set(topics)), ensure_ascii=False)
        async with self._write() as conn:
            await conn.execute(update(subscribers).where(
                subscribers.c.bot == bot, subscribers.c.chat_id == chat_id).values(
                topics=value, updated_at=now))

    async def active_subscribers(self, bot: str) -> list[Subscriber]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(subscribers).where(
                subscribers.c.bot == bot, subscribers.c.active.is_(True))
                .order_by(subscribers.c.subscribed_at, subscribers.c.chat_id))).all()
        return [_subscriber(r) for r in rows]

    async def subscriber_counts(self, bot: str) -> dict[str, int]:
        """{"private": n, "group": n, "inactive": n, ...} for /stats."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(subscribers.c.kind, subscribers.c.active, func.count())
                                       .where(subscribers.c.bot == bot)
                                       .group_by(subscribers.c.kind, subscribers.c.active))).all()
        out: dict[str, int] = {}
        for kind, active, n in rows:
            key = kind if active else "inactive"
            out[key] = out.get(key, 0) + n
        return out

    # --- broadcast rows --------------------------------------------------------------------

    async def plan(self, key: str, bot: str, chat_ids: Iterable[int], now: datetime) -> int:
        """Fix the audience of broadcast `key` (once: a resumed broadcast keeps its audience)."""
        async with self._write() as conn:
            existing = (await conn.execute(select(func.count()).where(deliveries.c.key == key))).scalar()
            if existing:
                return int(existing)
            rows = [{"key": key, "chat_id": c, "bot": bot, "status": "pending", "attempts": 0,
                     "updated_at": now} for c in chat_ids]
            for start in range(0, len(rows), 1000):
                await conn.execute(insert(deliveries), rows[start:start + 1000])
            return len(rows)

    async def abandon_in_flight(self, key: str, now: datetime) -> int:
        """Rows left `sending` by a crash become `uncertain` (never resent); returns how many."""
        async with self._write() as conn:
            done = await conn.execute(update(deliveries).where(
                deliveries.c.key == key, deliveries.c.status == "sending").values(
                status="uncertain", updated_at=now,
                detail="siar stopped while this message was out; not resent"))
        return int(done.rowcount or 0)

    async def give_up(self, key: str, max_tries: int, now: datetime) -> None:
        """Pending rows of `key` tried `max_tries` times already become `failed`."""
        async with self._write() as conn:
            await conn.execute(update(deliveries).where(
                deliveries.c.key == key, deliveries.c.status == "pending",
                deliveries.c.attempts >= max_tries).values(
                status="failed", updated_at=now,
                detail=func.coalesce(deliveries.c.detail, "") + " (gave up)"))

    async def claim(self, key: str, limit: int, now: datetime) -> list[int]:
        """Up to `limit` pending chats of broadcast `key`, now marked `sending`."""
        async with self._write() as conn:
            chats = list((await conn.execute(select(deliveries.c.chat_id).where(
                deliveries.c.key == key, deliveries.c.status == "pending")
                .order_by(deliveries.c.chat_id).limit(limit))).scalars())
            if chats:
                await conn.execute(update(deliveries).where(
                    deliveries.c.key == key, deliveries.c.chat_id.in_(chats)).values(
                    status="sending", attempts=deliveries.c.attempts + 1, updated_at=now))
        return chats

    async def finish(self, key: str, outcomes: Sequence[tuple[int, str, int | None, str]],
                     now: datetime, *, bot: str = "",
                     unsubscribe: Sequence[tuple[int, str]] = ()) -> None:
        """Record (chat, status, message id, detail) for sent/failed/pending/uncertain rows, and
        stop subscriber channel `bot` sending to the (chat, reason) in `unsubscribe`: one
        transaction and one statement per table for a whole batch."""
        if not outcomes and not unsubscribe:
            return
        async with self._write() as conn:
            if outcomes:
                await conn.execute(_FINISH, [
                    {"b_key": key, "b_chat": chat_id, "b_status": status, "b_message": message_id,
                     "b_detail": detail or None, "b_now": now}
                    for chat_id, status, message_id, detail in outcomes])
            if unsubscribe:
                await conn.execute(_UNSUBSCRIBE, [
                    {"b_bot": bot, "b_chat": chat_id, "b_reason": reason, "b_now": now}
                    for chat_id, reason in unsubscribe])

    async def move_delivery(self, key: str, old: int, new: int, now: datetime) -> None:
        async with self._write() as conn:
            taken = (await conn.execute(select(func.count()).where(
                deliveries.c.key == key, deliveries.c.chat_id == new))).scalar()
            if taken:
                await conn.execute(update(deliveries).where(
                    deliveries.c.key == key, deliveries.c.chat_id == old).values(
                    status="failed", detail=f"moved to {new}, already in this broadcast", updated_at=now))
            else:
                await conn.execute(update(deliveries).where(
                    deliveries.c.key == key, deliveries.c.chat_id == old).values(
                    chat_id=new, status="pending", updated_at=now))

    async def delivery_counts(self, key: str) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(deliveries.c.status, func.count())
                                       .where(deliveries.c.key == key)
                                       .group_by(deliveries.c.status))).all()
        return {status: int(n) for status, n in rows}

    async def sent_since(self, since: datetime) -> int:
        """Subscriber messages delivered since `since`."""
        async with self.engine.connect() as conn:
            n = (await conn.execute(select(func.count()).where(and_(
                deliveries.c.status == "sent", deliveries.c.updated_at >= since)))).scalar()
        return int(n or 0)

    async def posts_since(self, since: datetime) -> dict[str, int]:
        """{channel: posts sent since `since`} from the core outbox."""
        from bot.schema import outbox

        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(outbox.c.channel, func.count()).where(
                outbox.c.status == "sent", outbox.c.sent_at >= since).group_by(outbox.c.channel))).all()
        return {channel: int(n) for channel, n in rows}


def store_for(core_store: Store) -> TelegramStore:
    """The Telegram tables on the core store's database, writing through its write lock."""
    return TelegramStore(core_store.engine, core_store.write)


def _subscriber(row: Any) -> Subscriber:
    topics = None if row.topics is None else tuple(json.loads(row.topics))
    return Subscriber(chat_id=int(row.chat_id), kind=row.kind, language=row.language, topics=topics,
                      active=bool(row.active), name=row.name or "")
