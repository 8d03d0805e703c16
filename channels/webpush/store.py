"""The webpush tables on the siar store: subscriptions and notification clicks.

Per-subscription delivery progress lives in the core fan-out ledger (bot.fanout), keyed by the
subscription id; the tables are created by this package's migrations (channels/webpush/migrations).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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

from bot.db import Database
from bot.fanout import RecipientOutcome
from bot.schema import UTCDateTime
from bot.types import Story
from channels.webpush.config import Topic
from channels.webpush.subscription import InvalidRequest, Subscription, wanted_by

metadata = MetaData()
subscriptions = Table(
    "webpush_subscriptions",
    metadata,
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
clicks = Table(
    "webpush_clicks",
    metadata,
    Column("tag", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("clicks", Integer, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
)


# `last_push_at` tells a live subscription from one never confirmed (`_make_room` asks only
# whether it is set); a week's precision is plenty, and spares a row write per subscription for
# every story of the week but the first (a million row writes on PostgreSQL cost more CPU than
# the pushes' own progress records: benchmarks/README.md, "web push").
LAST_PUSH_GRAIN = timedelta(days=7)


def endpoint_hash(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


@dataclass(frozen=True)
class Target:
    """Where and how to push to one subscription."""

    subscription_id: int
    endpoint: str
    p256dh: str
    auth: str
    stamped: bool = False  # a success changes nothing in its row (no failures, last push recent)


class SubscriptionStore:
    """The webpush tables on the siar database (SQLite or PostgreSQL)."""

    def __init__(self, db: Database, clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self.engine: AsyncEngine = db.engine
        self.clock = clock or (lambda: datetime.now(UTC))

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        # The database's write transaction serializes SQLite writers ("database is locked").
        return self.db.write()

    async def save(
        self,
        sub: Subscription,
        origin: str,
        max_subscriptions: int,
        replaces: str | None = None,
        *,
        admit: Callable[[], object] | None = None,
        unconfirmed_after: timedelta = timedelta(days=3),
    ) -> bool:
        """Insert or update `sub`; True when it is new.

        `admit` is called (and may raise to refuse, e.g. a per-client quota) only when a row
        would be added, not for an update or a replacement. When the table is full, the oldest
        failing subscription, else the oldest never pushed to for `unconfirmed_after`, makes
        room; InvalidRequest when there is none.
        """
        now = self.clock()
        key = endpoint_hash(sub.endpoint)
        values = {
            "endpoint": sub.endpoint,
            "p256dh": sub.p256dh,
            "auth": sub.auth,
            "topics": json.dumps(list(sub.topics)),
            "origin": origin[:300],
            "updated_at": now,
            "failures": 0,
        }
        async with self._write() as conn:
            replaced = False
            if replaces:
                old = (
                    await conn.execute(
                        select(subscriptions.c.topics).where(
                            subscriptions.c.endpoint_hash == endpoint_hash(replaces)
                        )
                    )
                ).first()
                if old is not None and not sub.topics:
                    values["topics"] = old.topics
                done = await conn.execute(
                    delete(subscriptions).where(subscriptions.c.endpoint_hash == endpoint_hash(replaces))
                )
                replaced = bool(done.rowcount)
            done = await conn.execute(
                update(subscriptions).where(subscriptions.c.endpoint_hash == key).values(**values)
            )
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
        victim = (
            await conn.execute(
                select(c.id)
                .where(or_(c.failures > 0, and_(c.last_push_at.is_(None), c.created_at < unconfirmed_before)))
                .order_by(c.failures.desc(), c.created_at, c.id)
                .limit(1)
            )
        ).first()
        if victim is None:
            return False
        await conn.execute(delete(subscriptions).where(c.id == victim.id))
        return True

    async def remove(self, endpoint: str) -> bool:
        async with self._write() as conn:
            done = await conn.execute(
                delete(subscriptions).where(subscriptions.c.endpoint_hash == endpoint_hash(endpoint))
            )
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
            await conn.execute(
                dialect.insert(clicks)
                .values(tag=tag, url=url, clicks=0, last_at=self.clock())
                .on_conflict_do_nothing()
            )

    async def record_click(self, tag: str, url: str = "") -> bool:
        """Count a click on `tag`; False (nothing stored) when no pushed story has that tag, so
        that made-up tags cannot grow the table. `url` is ignored: the pushed one is kept."""
        async with self._write() as conn:
            done = await conn.execute(
                update(clicks)
                .where(clicks.c.tag == tag)
                .values(clicks=clicks.c.clicks + 1, last_at=self.clock())
            )
        return bool(done.rowcount)

    async def click_counts(self) -> dict[str, int]:
        """Clicks per notification tag."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(clicks.c.tag, clicks.c.clicks))).all()
        return {r.tag: int(r.clicks) for r in rows}

    async def audience(self, story: Story, topics: Sequence[Topic]) -> list[int]:
        """The ids of every subscription that wants `story`, in id order."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(subscriptions.c.id, subscriptions.c.topics).order_by(subscriptions.c.id)
                )
            ).all()
        return [r.id for r in rows if wanted_by(story, json.loads(r.topics or "[]"), topics)]

    async def audience_any(self, stories: Sequence[Story], topics: Sequence[Topic]) -> list[int]:
        """The ids of every subscription that wants at least one of `stories` (a digest)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(subscriptions.c.id, subscriptions.c.topics).order_by(subscriptions.c.id)
                )
            ).all()
        out = []
        for r in rows:
            chosen = json.loads(r.topics or "[]")
            if any(wanted_by(story, chosen, topics) for story in stories):
                out.append(r.id)
        return out

    async def targets(self, ids: Sequence[int]) -> dict[int, Target]:
        """Endpoint and keys of the subscriptions `ids` still has (unsubscribed ones are absent)."""
        found: dict[int, Target] = {}
        recent = self.clock() - LAST_PUSH_GRAIN
        c = subscriptions.c
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                rows = await conn.execute(
                    select(c.id, c.endpoint, c.p256dh, c.auth, c.failures, c.last_push_at).where(
                        c.id.in_(list(ids[start : start + 1000]))
                    )
                )
                for r in rows:
                    stamped = not r.failures and r.last_push_at is not None and r.last_push_at >= recent
                    found[r.id] = Target(r.id, r.endpoint, r.p256dh, r.auth, stamped)
        return found

    async def apply(
        self, outcomes: Sequence[RecipientOutcome], max_failures: int, stamped: frozenset[int] = frozenset()
    ) -> None:
        """What pushes mean for the subscriptions: a success resets the failure count (and
        stamps `last_push_at`, at most every LAST_PUSH_GRAIN), a gone
        one (404/410) is deleted, and one that fails `max_failures` times in a row too.
        `stamped`: subscriptions whose success changes nothing (Target.stamped), not written."""
        now = self.clock()
        sent = [o.recipient for o in outcomes if o.status == "sent" and o.recipient not in stamped]
        gone = [o.recipient for o in outcomes if o.status == "gone"]
        failed = [o.recipient for o in outcomes if o.status == "failed"]
        if not (sent or gone or failed):
            return
        async with self._write() as conn:
            if sent:  # only rows that change meaningfully: not a write per push per story
                c = subscriptions.c
                await conn.execute(
                    update(subscriptions)
                    .where(
                        c.id.in_(sent),
                        or_(c.failures > 0, c.last_push_at.is_(None), c.last_push_at < now - LAST_PUSH_GRAIN),
                    )
                    .values(last_push_at=now, failures=0)
                )
            if failed:
                await conn.execute(
                    update(subscriptions)
                    .where(subscriptions.c.id.in_(failed))
                    .values(failures=subscriptions.c.failures + 1)
                )
                await conn.execute(
                    delete(subscriptions).where(
                        subscriptions.c.id.in_(failed), subscriptions.c.failures >= max_failures
                    )
                )
            if gone:
                await conn.execute(delete(subscriptions).where(subscriptions.c.id.in_(gone)))
