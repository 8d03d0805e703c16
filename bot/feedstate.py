"""What siar remembers about each feed between polls, and its table's queries.

`FeedState` is a frozen value: a poll computes the next state (`bot.pipeline`) and saves it
inside the poll's own transaction, so a poll whose stories could not be stored leaves no trace
of having succeeded (its validators and first-run flag included).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import insert, or_, select, update
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


class FeedBook:
    """Feed states of unchanged polls (304, same body), written in batches across feeds.

    An unchanged poll changes only timestamps, the status and maybe validators: it is put here
    and written with the others by `flush` (the daemon flushes every `FLUSH_EVERY` seconds and
    at shutdown). A crash loses at most that many seconds of such timestamps: the feed is then
    polled once more than needed with its older validators; no story, failure streak (failed
    polls are written at once) or first-run flag (written with the poll's stories) is lost.

    `cache`: this process is the store's only poller (SQLite's store lock), so the state it
    last wrote is the stored one and a poll needs no read; with several daemons sharing
    PostgreSQL, another daemon may have polled the feed since, so it is read each time.
    """

    FLUSH_EVERY = 5.0  # seconds

    def __init__(self, states: FeedStates, *, cache: bool) -> None:
        self.states = states
        self.cache = cache
        self.pending: dict[str, FeedState] = {}
        self._known: dict[str, FeedState] = {}

    async def get(self, name: str, url: str) -> FeedState:
        """The newest state of feed `name`: unwritten, remembered, else stored."""
        state = self.pending.get(name) or (self._known.get(name) if self.cache else None)
        if state is None:
            state = await self.states.get(name, url)
            if self.cache:
                self._known[name] = state
        return state

    def put(self, state: FeedState) -> None:
        """`state` is to be written with the next batch."""
        self.pending[state.name] = state
        self._known[state.name] = state

    def saved(self, state: FeedState) -> None:
        """`state` was written (in a poll's own transaction): nothing older may follow it."""
        self.pending.pop(state.name, None)
        self._known[state.name] = state

    def forget(self, name: str) -> None:
        self.pending.pop(name, None)
        self._known.pop(name, None)

    async def flush(self) -> int:
        """Write every pending state in one transaction; returns how many were written.

        A state never overwrites one fetched later (another daemon's, or this one's written
        with a poll meanwhile): the update is conditional on `last_fetch_at`.
        """
        batch = dict(self.pending)
        if not batch:
            return 0
        async with self.states.db.write() as conn:
            for state in batch.values():
                await save_newer(conn, state)
        for name, state in batch.items():
            if self.pending.get(name) is state:
                del self.pending[name]
        return len(batch)


async def save_newer(conn: AsyncConnection, state: FeedState) -> None:
    """Upsert `state` unless the stored one was fetched later."""
    values = {k: getattr(state, k) for k in _COLUMNS}
    query = update(feed_state).where(feed_state.c.name == state.name)
    if state.last_fetch_at is not None:
        query = query.where(
            or_(feed_state.c.last_fetch_at.is_(None), feed_state.c.last_fetch_at <= state.last_fetch_at)
        )
    done = await conn.execute(query.values(**values))
    if done.rowcount == 0:
        exists = await conn.execute(select(feed_state.c.name).where(feed_state.c.name == state.name))
        if exists.first() is None:
            await conn.execute(insert(feed_state).values(**values))
