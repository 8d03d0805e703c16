"""The `websub_subscriptions` table: one WebSub subscription per feed (bot/websub.py), kept
across restarts so the hub's callbacks and signatures still match, and shared by daemons on one
PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import delete, insert, select, update

from bot.db import Database
from bot.schema import websub_subscriptions as table


@dataclass(frozen=True)
class Subscription:
    """One feed's subscription, as stored.

    state: pending (asked, hub not yet verified) -> subscribed (verified, notifications trusted)
    | denied | failed (the hub refused the request); subscribed -> silent (the safety net found
    stories the hub did not announce: normal polling until it delivers again) | expired (lease
    not renewed in time); any -> unsubscribing (the row goes once the hub confirms).
    """

    feed: str
    feed_url: str
    hub: str
    topic: str
    callback_id: str
    secret: str
    state: str = "pending"
    lease_seconds: int | None = None
    requested_at: datetime | None = None
    expires_at: datetime | None = None
    notified_at: datetime | None = None
    last_error: str | None = None


_COLUMNS = tuple(f.name for f in fields(Subscription))


class Subscriptions:
    """The `websub_subscriptions` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[Subscription]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(table))).all()
        return [Subscription(**r._asdict()) for r in rows]

    async def get(self, *, feed: str | None = None, callback_id: str | None = None) -> Subscription | None:
        """The row of `feed`, or the one with `callback_id` (another daemon's, on PostgreSQL)."""
        column, value = (table.c.feed, feed) if feed is not None else (table.c.callback_id, callback_id)
        async with self.db.read() as conn:
            row = (await conn.execute(select(table).where(column == value))).first()
        return Subscription(**row._asdict()) if row is not None else None

    async def save(self, sub: Subscription) -> None:
        values = {k: getattr(sub, k) for k in _COLUMNS}
        async with self.db.write() as conn:
            done = await conn.execute(update(table).where(table.c.feed == sub.feed).values(**values))
            if done.rowcount == 0:
                await conn.execute(insert(table).values(**values))

    async def delete(self, feed: str, callback_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(table).where(table.c.feed == feed, table.c.callback_id == callback_id))
