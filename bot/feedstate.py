"""What siar remembers about each feed between polls, and its table's queries.

`FeedState` is a frozen value: a poll computes the next state (`bot.pipeline`) and saves it
inside the poll's own transaction, so a poll whose stories could not be stored leaves no trace
of having succeeded (its validators and first-run flag included).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db import Database
from bot.schema import feed_state


@dataclass(frozen=True)
class FeedState:
    """One feed's memory: HTTP validators, schedule, failure streak, first-run flag."""

    name: str
    url: str
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    last_fetch_at: datetime | None = None
    last_success_at: datetime | None = None
    next_poll_at: datetime | None = None
    failures: int = 0
    last_status: int | None = None
    last_error: str | None = None
    redirect_url: str | None = None
    first_run_done: bool = False


_COLUMNS = tuple(f.name for f in fields(FeedState))


class FeedStates:
    """The `feed_state` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, name: str, url: str) -> FeedState:
        """The stored state of feed `name`, or a fresh one for `url`."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(feed_state).where(feed_state.c.name == name))).first()
        return FeedState(**row._asdict()) if row is not None else FeedState(name=name, url=url)

    async def all(self) -> list[FeedState]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(feed_state).order_by(feed_state.c.name))).all()
        return [FeedState(**r._asdict()) for r in rows]

    async def save(self, state: FeedState) -> None:
        """Save `state` in a transaction of its own (a failed or unchanged poll)."""
        async with self.db.write() as conn:
            await save_state(conn, state)


async def save_state(conn: AsyncConnection, state: FeedState) -> None:
    """Upsert `state` inside the caller's transaction."""
    values = {k: getattr(state, k) for k in _COLUMNS}
    done = await conn.execute(update(feed_state).where(feed_state.c.name == state.name).values(**values))
    if done.rowcount == 0:
        await conn.execute(insert(feed_state).values(**values))
