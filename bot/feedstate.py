"""What siar remembers about each feed between polls, and its table's queries.

`FeedState` is a frozen value: a poll computes the next state (`bot.pipeline`) and saves it
inside the poll's own transaction, so a poll whose stories could not be stored leaves no trace
of having succeeded (its validators and first-run flag included).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db import Database, listed, listed_value
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

# Built once: a statement built per call costs more CPU than the database spends running it
# (an unchanged poll is cheap everywhere else). Bind names are prefixed: SQLAlchemy reserves
# the plain column names in an UPDATE's SET for the values themselves.
_SET: dict[str, Any] = {name: bindparam(f"v_{name}") for name in _COLUMNS}
_UPDATE = update(feed_state).where(feed_state.c.name == bindparam("key")).values(_SET)
_UPDATE_OLDER = (
    update(feed_state)
    .where(
        feed_state.c.name == bindparam("key"),
        or_(feed_state.c.last_fetch_at.is_(None), feed_state.c.last_fetch_at <= bindparam("fetched")),
    )
    .values(_SET)
)
_INSERT = insert(feed_state).values(_SET)


def _params(state: FeedState) -> dict[str, object]:
    params: dict[str, object] = {f"v_{name}": getattr(state, name) for name in _COLUMNS}
    params["key"] = state.name
    params["fetched"] = state.last_fetch_at
    return params


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
    params = _params(state)
    done = await conn.execute(_UPDATE, params)
    if done.rowcount == 0:
        await conn.execute(_INSERT, params)


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
            await save_newer_all(conn, list(batch.values()))
        for name, state in batch.items():
            if self.pending.get(name) is state:
                del self.pending[name]
        return len(batch)


async def save_newer_all(conn: AsyncConnection, states: list[FeedState]) -> None:
    """Upsert each of `states` (one per feed) unless its stored one was fetched later: one
    UPDATE for all of them, and inserts for the feeds without a row."""
    if not states:
        return
    rows = [_params(s) for s in states]
    newer = [r for r, s in zip(rows, states, strict=True) if s.last_fetch_at is not None]
    plain = [r for r, s in zip(rows, states, strict=True) if s.last_fetch_at is None]
    if newer:
        await conn.execute(_UPDATE_OLDER, newer)
    if plain:
        await conn.execute(_UPDATE, plain)
    dialect = conn.dialect.name
    names = [s.name for s in states]
    query = select(feed_state.c.name).where(listed(feed_state.c.name, "names", dialect))
    stored = {r[0] for r in await conn.execute(query, {"names": listed_value(names, dialect)})}
    missing = [r for r, s in zip(rows, states, strict=True) if s.name not in stored]
    if missing:
        await conn.execute(_INSERT, missing)
