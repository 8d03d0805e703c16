"""The webpush tables on the siar store: subscriptions, per-subscription deliveries, clicks.

The tables are created by the migration bot/migrations/versions/0003_webpush.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.schema import UTCDateTime
from bot.types import Story
from channels.webpush.config import Topic
from channels.webpush.subscription import InvalidRequest, Subscription, wanted_by

_meta = MetaData()
subscriptions = Table(
    "webpush_subscriptions", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint_hash", String(64), nullable=False, unique=True),
    Column("endpoint", Text, nullable=False),
    Column("p256dh", String(100), nullable=False),
    Column("auth", String(40), nullable=False),
    Column("topics", Text, nullable=False),
    Column("origin", String(300), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_push_at", UTCDateTime),
    Column("failures", Integer, nullable=False),
)
deliveries = Table(
    "webpush_deliveries", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("push_key", String(100), nullable=False),
    Column("subscription_id", Integer, nullable=False),
    # pending -> sending (right before its own push) -> sent | gone | failed | retry (tried
    # again); sending after a crash -> uncertain (never pushed again)
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("status_code", Integer),
    Column("detail", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)
clicks = Table(
    "webpush_clicks", _meta,
    Column("tag", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("clicks", Integer, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
)


def endpoint_hash(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


@dataclass(frozen=True)
class Target:
    delivery_id: int
    subscription_id: int
    endpoint: str
    p256dh: str
    auth: str


@dataclass
class Outcome:
    status: str  # sent, gone, failed, retry
    code: int | None = None
    detail: str = ""
    retry_after: float | None = None
    auth_rejected: bool = False


class SubscriptionStore:
    """The webpush tables on the siar store (SQLite or PostgreSQL)."""

    def __init__(self, store: Any, clock: Any = None) -> None:
        self.store = store
        self.engine: AsyncEngine = store.engine
        self.clock = clock or (lambda: datetime.now(UTC))

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        # The core store's write transaction serializes SQLite writers ("database is locked").
        return cast(AbstractAsyncContextManager[AsyncConnection], self.store.write())

    async def save(self, sub: Subscription, origin: str, max_subscriptions: int,
                   replaces: str | None = None, *, admit: Callable[[], object] | None = None,
                   unconfirmed_after: timedelta = timedelta(days=3)) -> bool:
        """Insert or update `sub`; True when it is new.

        `admit` is called (and may raise to refuse, e.g. a per-client quota) only when a row
        would be added, not for an update or a replacement. When the table is full, the oldest
        failing subscription, else the oldest never pushed to for `unconfirmed_after`, makes
        room; InvalidRequest when there is none.
        """
        now = self.clock()
        key = endpoint_hash(sub.endpoint)
        values = {"endpoint": sub.endpoint, "p256dh": sub.p256dh, "auth": sub.auth,
                  "topics": json.dumps(list(sub.topics)), "origin": origin[:300], "updated_at": now,
                  "failures": 0}
        async with self._write() as conn:
            replaced = False
            if replaces:
                old = (await conn.execute(select(subscriptions.c.topics).where(
                    subscriptions.c.endpoint_hash == endpoint_hash(replaces)))).first()
                if old is not None and not sub.topics:
                    values["topics"] = old.topics
                done = await conn.execute(delete(subscriptions).where(
                    subscriptions.c.endpoint_hash == endpoint_hash(replaces)))
                replaced = bool(done.rowcount)
            done = await conn.execute(update(subscriptions).where(
                subscriptions.c.endpoint_hash == key).values(**values))
            if done.rowcount:
                return False
            count = (await conn.execute(select(func.count()).select_from(subscriptions))).scalar_one()
            if count >= max_subscriptions and not await self._make_room(conn, now - unconfirmed_after):
                raise InvalidRequest("this site has reached its subscription limit")
            if admit is not None and not replaced:
                admit()  # last, so a refusal for a full table costs no quota (a raise rolls back)
            await conn.execute(insert(subscriptions).values(endpoint_hash=key, created_at=now, **values))
        return True

    @staticmethod
    async def _make_room(conn: AsyncConnection, unconfirmed_before: datetime) -> bool:
        """Delete the one subscription most likely dead (failing, else never pushed to since
        before `unconfirmed_before`, oldest first); False when every one looks alive."""
        c = subscriptions.c
        victim = (await conn.execute(
            select(c.id).where(or_(c.failures > 0, and_(c.last_push_at.is_(None),
                                                         c.created_at < unconfirmed_before)))
            .order_by(c.failures.desc(), c.created_at, c.id).limit(1))).first()
        if victim is None:
            return False
        await conn.execute(delete(subscriptions).where(c.id == victim.id))
        return True

    async def remove(self, endpoint: str) -> bool:
        async with self._write() as conn:
            done = await conn.execute(delete(subscriptions).where(
                subscriptions.c.endpoint_hash == endpoint_hash(endpoint)))
        return bool(done.rowcount)

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            n: int = (await conn.execute(select(func.count()).select_from(subscriptions))).scalar_one()
        return n

    async def all(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(subscriptions).order_by(subscriptions.c.id))).all()
        return [r._asdict() for r in rows]

    async def expect_clicks(self, tag: str, url: str) -> None:
        """Make `tag` (a pushed story's notification tag) countable by `record_click`."""
        dialect = sqlite_dialect if self.engine.dialect.name == "sqlite" else postgresql_dialect
        async with self._write() as conn:
            await conn.execute(dialect.insert(clicks).values(
                tag=tag, url=url, clicks=0, last_at=self.clock()).on_conflict_do_nothing())

    async def record_click(self, tag: str, url: str = "") -> bool:
        """Count a click on `tag`; False (nothing stored) when no pushed story has that tag, so
        that made-up tags cannot grow the table. `url` is ignored: the pushed one is kept."""
        async with self._write() as conn:
            done = await conn.execute(update(clicks).where(clicks.c.tag == tag).values(
                clicks=clicks.c.clicks + 1, last_at=self.clock()))
        return bool(done.rowcount)

    async def click_counts(self) -> dict[str, int]:
        """Clicks per notification tag."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(clicks.c.tag, clicks.c.clicks))).all()
        return {r.tag: int(r.clicks) for r in rows}

    async def plan(self, key: str, story: Story, topics: Sequence[Topic]) -> int:
        """Create the delivery rows of `key` once (every subscription that wants `story`)."""
        async with self.engine.connect() as conn:
            planned = (await conn.execute(select(func.count()).select_from(deliveries).where(
                deliveries.c.push_key == key))).scalar_one()
            if planned:
                return int(planned)
            rows = (await conn.execute(select(subscriptions.c.id, subscriptions.c.topics))).all()
        wanted = [r.id for r in rows if wanted_by(story, json.loads(r.topics or "[]"), topics)]
        if not wanted:
            return 0
        now = self.clock()
        async with self._write() as conn:
            for start in range(0, len(wanted), 1000):
                await conn.execute(insert(deliveries), [
                    {"push_key": key, "subscription_id": sid, "status": "pending", "attempts": 0,
                     "updated_at": now} for sid in wanted[start:start + 1000]])
        return len(wanted)

    async def abandon_in_flight(self, key: str) -> int:
        """Deliveries left `sending` by a crash become `uncertain`: they may have gone out."""
        async with self._write() as conn:
            done = await conn.execute(update(deliveries).where(
                deliveries.c.push_key == key, deliveries.c.status == "sending").values(
                status="uncertain", updated_at=self.clock(),
                detail="in flight when an earlier attempt stopped; not pushed again"))
        return int(done.rowcount or 0)

    async def claim(self, key: str, after_id: int, limit: int) -> list[Target]:
        """The next `limit` pending/retry deliveries of `key` after `after_id`.

        They stay `pending`/`retry` here: each becomes `sending` only right before its own push
        (`begin`), so a crash or cancellation never leaves a row that was not pushed looking
        in flight (`uncertain`, never pushed again).
        """
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(deliveries.c.id, deliveries.c.subscription_id, subscriptions.c.endpoint,
                       subscriptions.c.p256dh, subscriptions.c.auth)
                .select_from(deliveries.outerjoin(
                    subscriptions, subscriptions.c.id == deliveries.c.subscription_id))
                .where(deliveries.c.push_key == key, deliveries.c.id > after_id,
                       deliveries.c.status.in_(("pending", "retry")))
                .order_by(deliveries.c.id).limit(limit))).all()
        if not rows:
            return []
        targets = [Target(r.id, r.subscription_id, r.endpoint or "", r.p256dh or "", r.auth or "")
                   for r in rows]
        gone = [t for t in targets if not t.endpoint]  # unsubscribed since the plan
        if gone:
            await self.finish({t.delivery_id: Outcome("gone", detail="unsubscribed") for t in gone}, {},
                              max_failures=1)
        return [t for t in targets if t.endpoint]

    async def begin(self, delivery_id: int) -> None:
        """Mark one delivery `sending`: its push starts now (a crash from here on: `uncertain`)."""
        async with self._write() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
                status="sending", attempts=deliveries.c.attempts + 1, updated_at=self.clock()))

    async def release(self, delivery_ids: Sequence[int]) -> None:
        """Deliveries whose push never started go back to `pending` (if `begin` already ran)."""
        if not delivery_ids:
            return
        async with self._write() as conn:
            await conn.execute(update(deliveries).where(
                deliveries.c.id.in_(list(delivery_ids)), deliveries.c.status == "sending").values(
                status="pending", updated_at=self.clock()))

    async def finish(self, outcomes: dict[int, Outcome], subs: dict[int, int], max_failures: int) -> None:
        """Record outcomes (delivery id -> Outcome) and their effect on subscriptions, in one go."""
        now = self.clock()
        async with self._write() as conn:
            for delivery_id, outcome in outcomes.items():
                await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
                    status=outcome.status, status_code=outcome.code, detail=outcome.detail[:500] or None,
                    updated_at=now))
                sid = subs.get(delivery_id)
                if sid is None:
                    continue
                if outcome.status == "sent":
                    await conn.execute(update(subscriptions).where(subscriptions.c.id == sid).values(
                        last_push_at=now, failures=0))
                elif outcome.status == "gone":
                    await conn.execute(delete(subscriptions).where(subscriptions.c.id == sid))
                elif outcome.status == "failed":
                    await conn.execute(update(subscriptions).where(subscriptions.c.id == sid).values(
                        failures=subscriptions.c.failures + 1))
                    await conn.execute(delete(subscriptions).where(
                        subscriptions.c.id == sid, subscriptions.c.failures >= max_failures))

    async def tally(self, key: str) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(deliveries.c.status, func.count()).where(
                deliveries.c.push_key == key).group_by(deliveries.c.status))).all()
        return {status: int(n) for status, n in rows}

    async def prune(self, older_than: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(delete(deliveries).where(deliveries.c.updated_at < older_than))

