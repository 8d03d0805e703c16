"""The store: feed state, stories, the outbox and the decision log, on SQLite or PostgreSQL.

Delivery rule (see README "How delivery works"): an outbox row moves
`pending -> sending -> sent | failed | uncertain`. A row is claimed (set to `sending`) before the
request leaves; a crash leaves it `sending`, and `recover_sending` turns it into `uncertain`,
which is never resent automatically. A claim is a conditional UPDATE, so two daemons sharing
PostgreSQL can never both send one row.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import and_, event, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.schema import decisions, feed_state, outbox, stories
from bot.types import Decision, Story

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x5149_4152  # "SIAR": the PostgreSQL advisory lock held while migrating
STATUSES = ("pending", "sending", "sent", "failed", "uncertain")
# last_error of a row whose send was cut short by a shutdown on a resumable channel
INTERRUPTED = "interrupted mid-send by a shutdown; it resumes"


def url_key(url: str) -> str:
    """The dedup key of a canonical URL."""
    return hashlib.sha256(url.encode()).hexdigest()


def database_url(url: str, base_dir: Path) -> tuple[str, Path | None]:
    """(async SQLAlchemy URL, SQLite file or None): relative SQLite paths are under `base_dir`."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if not db or db == ":memory:":
            raise ValueError("store.url: an in-memory SQLite store would lose every post; name a file")
        path = Path(db).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        return str(parsed.set(drivername="sqlite+aiosqlite", database=str(path))), path
    if backend in ("postgresql", "postgres"):
        return str(parsed.set(drivername="postgresql+asyncpg")), None
    raise ValueError(f"store.url: unsupported database {backend!r}; use sqlite:/// or postgresql://")


@dataclass
class FeedState:
    """What siar remembers about one feed between polls."""

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


@dataclass
class NewStory:
    story: Story
    decisions: list[Decision] = field(default_factory=list)
    key: str = field(kw_only=True)  # de-duplication key: bot.normalize.story_key


@dataclass(frozen=True)
class OutboxItem:
    id: int
    story_id: int
    channel: str
    status: str
    attempts: int
    story: Story
    last_error: str | None = None
    first_attempt_at: datetime | None = None


class Store:
    """Async access to the database; one per process."""

    def __init__(self, url: str, base_dir: Path = Path(".")) -> None:
        self.url, self.sqlite_path = database_url(url, base_dir)
        self.engine: AsyncEngine = create_async_engine(self.url, pool_pre_ping=self.sqlite_path is None)
        # SQLite allows one writer; serializing writes here avoids "database is locked".
        self._write_lock = asyncio.Lock() if self.sqlite_path else None
        if self.sqlite_path is not None:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def is_sqlite(self) -> bool:
        return self.sqlite_path is not None

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        async with self.engine.begin() as conn:
            if not self.is_sqlite:  # daemons starting together: one migrates, the others wait
                await conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            await conn.run_sync(_upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction; on SQLite also the process's single-writer lock.

        Modules with tables of their own (subscribers) write through this too, so that SQLite
        never answers "database is locked".
        """
        return self._write()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    # --- feeds ---------------------------------------------------------------------------

    async def feed_state(self, name: str, url: str) -> FeedState:
        """The stored state of feed `name`, or a fresh one."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(feed_state).where(feed_state.c.name == name))).first()
        if row is None:
            return FeedState(name=name, url=url)
        return FeedState(**row._asdict())

    async def feed_states(self) -> list[FeedState]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(feed_state).order_by(feed_state.c.name))).all()
        return [FeedState(**r._asdict()) for r in rows]

    async def save_feed_state(self, state: FeedState) -> None:
        async with self._write() as conn:
            await _upsert_feed_state(conn, state)

    async def known_uids(self, feed: str, uids: Sequence[str]) -> set[str]:
        """Which of `uids` feed `feed` has already delivered to the store."""
        found: set[str] = set()
        async with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                chunk = list(uids[start:start + 500])
                rows = await conn.execute(
                    select(stories.c.uid).where(stories.c.feed == feed, stories.c.uid.in_(chunk)))
                found.update(r[0] for r in rows)
        return found

    async def record_poll(self, state: FeedState, new: Sequence[NewStory], now: datetime) -> list[int]:
        """Store new stories, their outbox rows and decisions, and the feed state: one transaction.

        A story whose canonical URL is already queued for a channel gets a `duplicate` decision
        instead of a second row. When daemons share PostgreSQL and another one stored a story
        first, this one skips it. Returns the ids of the outbox rows created.
        """
        # Rows are written in url-key order: two daemons' transactions then take the unique-index
        # locks in the same order and cannot deadlock.
        pairs = sorted(((i.key, i) for i in new), key=lambda pair: pair[0])
        created: list[int] = []
        async with self._write() as conn:
            if not self.is_sqlite:  # one poll of a feed at a time across daemons
                lock = int.from_bytes(hashlib.sha256(state.name.encode()).digest()[:8], "big", signed=True)
                await conn.execute(select(func.pg_advisory_xact_lock(lock)))
            if pairs:
                created = await self._insert_stories(conn, pairs, now)
            await _upsert_feed_state(conn, state)
        return created

    async def _insert_stories(self, conn: AsyncConnection, pairs: list[tuple[str, NewStory]],
                              now: datetime) -> list[int]:
        keys = [key for key, _ in pairs]
        taken: set[tuple[str, str]] = set()
        for start in range(0, len(keys), 500):
            rows = await conn.execute(select(outbox.c.channel, outbox.c.dedup_key).where(
                outbox.c.dedup_key.in_(keys[start:start + 500])))
            taken.update((r.channel, r.dedup_key) for r in rows)
        # Bulk inserts that skip rows another daemon wrote first (ON CONFLICT DO NOTHING).
        inserted = await conn.execute(self._insert_ignore(stories).returning(stories.c.id, stories.c.uid), [
            {"feed": i.story.feed, "uid": i.story.uid, "url": i.story.url, "url_key": key,
             "title": i.story.title, "published_at": i.story.published, "first_seen_at": now,
             "data": i.story.to_json()} for key, i in pairs])
        story_ids = {r.uid: r.id for r in inserted}
        wanted: list[dict[str, Any]] = []
        for key, item in pairs:
            story_id = story_ids.get(item.story.uid)
            for d in item.decisions:
                if story_id is not None and d.queues and d.channel and (d.channel, key) not in taken:
                    taken.add((d.channel, key))
                    wanted.append({"story_id": story_id, "channel": d.channel, "dedup_key": key,
                                   "status": "pending", "attempts": 0, "next_attempt_at": now,
                                   "created_at": now, "updated_at": now})
        queued: dict[tuple[int, str], int] = {}
        if wanted:
            rows = await conn.execute(self._insert_ignore(outbox).returning(
                outbox.c.id, outbox.c.story_id, outbox.c.channel), wanted)
            queued = {(r.story_id, r.channel): r.id for r in rows}
        log_rows: list[dict[str, Any]] = []
        for _, item in pairs:
            story_id = story_ids.get(item.story.uid)
            if story_id is None:
                continue  # another daemon stored this story a moment ago
            for d in item.decisions:
                if d.queues and (story_id, str(d.channel)) not in queued:
                    d = Decision(d.channel, "duplicate", "url",
                                 "the same link was already queued for this channel")
                log_rows.append({"story_id": story_id, "channel": d.channel, "decision": d.decision,
                                 "rule": d.rule, "detail": d.detail, "at": now})
        if log_rows:
            await conn.execute(insert(decisions), log_rows)
        return sorted(queued.values())

    def _insert_ignore(self, table: Any) -> Any:
        """INSERT … ON CONFLICT DO NOTHING for this database."""
        dialect = sqlite_dialect if self.is_sqlite else postgresql_dialect
        return dialect.insert(table).on_conflict_do_nothing()

    # --- outbox --------------------------------------------------------------------------

    async def claim(self, channel: str, now: datetime, worker: str) -> OutboxItem | None:
        """The oldest due pending row of `channel`, now marked `sending`; None if nothing is due."""
        async with self._write() as conn:
            for _ in range(5):
                # Due rows in publication order, so a channel's timeline reads oldest to newest.
                row = (await conn.execute(
                    select(outbox.c.id, outbox.c.attempts)
                    .join(stories, stories.c.id == outbox.c.story_id).where(
                        outbox.c.channel == channel, outbox.c.status == "pending",
                        outbox.c.next_attempt_at <= now,
                    ).order_by(outbox.c.next_attempt_at, stories.c.published_at, outbox.c.id)
                    .limit(1))).first()
                if row is None:
                    return None
                claimed = await conn.execute(update(outbox).where(
                    outbox.c.id == row.id, outbox.c.status == "pending").values(
                    status="sending", attempts=row.attempts + 1, claimed_at=now, claimed_by=worker,
                    first_attempt_at=func.coalesce(outbox.c.first_attempt_at, now), updated_at=now))
                if claimed.rowcount == 1:
                    return await _item(conn, row.id)
        return None

    async def next_due(self, channel: str) -> datetime | None:
        """When the next pending row of `channel` is due, or None."""
        async with self.engine.connect() as conn:
            due: datetime | None = (await conn.execute(select(func.min(outbox.c.next_attempt_at)).where(
                outbox.c.channel == channel, outbox.c.status == "pending"))).scalar()
        return due

    async def finish(self, item_id: int, status: str, now: datetime, *, decision: str,
                     detail: str = "", remote_id: str = "", remote_url: str = "",
                     retry_at: datetime | None = None, refund_attempt: bool = False) -> None:
        """Move a `sending` row to its outcome and log the decision, in one transaction.

        `refund_attempt`: the claim's attempt does not count (a planned wait, not a failure).
        """
        assert status in STATUSES
        values: dict[str, Any] = {"status": status, "updated_at": now, "last_error": detail or None}
        if status == "sent":
            values.update(sent_at=now, remote_id=remote_id or None, remote_url=remote_url or None,
                          last_error=None)
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        if refund_attempt:
            values["attempts"] = outbox.c.attempts - 1
        async with self._write() as conn:
            row = (await conn.execute(select(outbox.c.story_id, outbox.c.channel).where(
                outbox.c.id == item_id))).one()
            await conn.execute(update(outbox).where(outbox.c.id == item_id).values(**values))
            await conn.execute(insert(decisions).values(
                story_id=row.story_id, channel=row.channel, decision=decision,
                rule=None, detail=detail or remote_url or remote_id or None, at=now))

    async def recover_sending(self, now: datetime, stale_before: datetime | None = None,
                              resumable: Mapping[str, float | None] | None = None) -> int:
        """Rows left `sending` by a crash become `uncertain`; returns how many were recovered.

        Rows of `resumable` channels (sending twice is harmless there) go back to `pending`
        instead, unless the channel's window (seconds the platform remembers an idempotency
        key; None = forever) has passed since the send began — then they are `uncertain` too,
        as are interrupted rows that waited longer than that. With `stale_before`, only claims
        older than that are touched (other daemons may be sending right now).
        """
        resumable = resumable or {}
        condition = outbox.c.status == "sending"
        if stale_before is not None:
            condition = and_(condition, outbox.c.claimed_at < stale_before)
        async with self._write() as conn:
            columns = (outbox.c.id, outbox.c.story_id, outbox.c.channel, outbox.c.first_attempt_at)
            rows = list((await conn.execute(select(*columns).where(condition))).all())
            windowed = [name for name, window in resumable.items() if window is not None]
            if windowed:  # interrupted at shutdown, then down for longer than the platform remembers
                rows += [r for r in (await conn.execute(select(*columns).where(
                    outbox.c.status == "pending", outbox.c.last_error == INTERRUPTED,
                    outbox.c.channel.in_(windowed)))).all()
                    if _expired(r.first_attempt_at, resumable[r.channel], now)]
            if not rows:
                return 0
            resumed = [r for r in rows if r.channel in resumable
                       and not _expired(r.first_attempt_at, resumable[r.channel], now)]
            uncertain = [r for r in rows if r not in resumed]
            reason = "the daemon stopped while this post was being sent; it may or may not be out"
            if uncertain:
                await conn.execute(update(outbox).where(outbox.c.id.in_([r.id for r in uncertain]))
                                   .values(status="uncertain", last_error=reason, updated_at=now))
            if resumed:
                await conn.execute(update(outbox).where(outbox.c.id.in_([r.id for r in resumed]))
                                   .values(status="pending", next_attempt_at=now, updated_at=now,
                                           last_error="resumed after the daemon stopped mid-send"))
            await conn.execute(insert(decisions), [
                {"story_id": r.story_id, "channel": r.channel,
                 "decision": "uncertain" if r in uncertain else "resume", "rule": None,
                 "detail": reason if r in uncertain else "resumed: this channel sends idempotently",
                 "at": now} for r in rows])
        return len(rows)

    async def resend(self, item_id: int, now: datetime) -> bool:
        """An operator's order to send an uncertain or failed row again; False if not such a row."""
        async with self._write() as conn:
            row = (await conn.execute(select(outbox.c.story_id, outbox.c.channel).where(
                outbox.c.id == item_id, outbox.c.status.in_(("uncertain", "failed"))))).first()
            if row is None:
                return False
            await conn.execute(update(outbox).where(outbox.c.id == item_id).values(
                status="pending", next_attempt_at=now, attempts=0, first_attempt_at=None, updated_at=now))
            await conn.execute(insert(decisions).values(
                story_id=row.story_id, channel=row.channel, decision="resend", rule="operator",
                detail="queued again by the operator", at=now))
        return True

    # --- reports -------------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per channel, how many rows are in each status."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(outbox.c.channel, outbox.c.status, func.count())
                                       .group_by(outbox.c.channel, outbox.c.status))).all()
        out: dict[str, dict[str, int]] = {}
        for channel, status, n in rows:
            out.setdefault(channel, dict.fromkeys(STATUSES, 0))[status] = n
        return out

    async def recent_problems(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest failed or uncertain rows with their reasons."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(outbox.c.id, outbox.c.channel, outbox.c.status, outbox.c.last_error,
                       outbox.c.updated_at, outbox.c.attempts, stories.c.url, stories.c.title)
                .join(stories, stories.c.id == outbox.c.story_id)
                .where(or_(outbox.c.status.in_(("failed", "uncertain")),
                           and_(outbox.c.status == "pending", outbox.c.last_error.is_not(None))))
                .order_by(outbox.c.updated_at.desc()).limit(limit))).all()
        return [r._asdict() for r in rows]

    async def find_stories(self, url_or_id: str, key: str | None = None) -> list[dict[str, Any]]:
        """Stories matching a de-duplication `key` (bot.normalize.link_key of `url_or_id`; by
        default its canonical URL's), a feed uid or an internal id."""
        from bot.normalize import canonical_url

        conditions = [stories.c.uid == url_or_id,
                      stories.c.url_key == (key or url_key(canonical_url(url_or_id)))]
        if url_or_id.isdigit():
            conditions.append(stories.c.id == int(url_or_id))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(stories).where(or_(*conditions))
                                       .order_by(stories.c.id))).all()
        return [r._asdict() for r in rows]

    async def decisions_of(self, story_id: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(decisions).where(decisions.c.story_id == story_id)
                                       .order_by(decisions.c.id))).all()
        return [r._asdict() for r in rows]

    async def outbox_of(self, story_id: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(outbox).where(outbox.c.story_id == story_id)
                                       .order_by(outbox.c.id))).all()
        return [r._asdict() for r in rows]

    async def latest_stories(self, limit: int = 5, feeds: Sequence[str] | None = None) -> list[Story]:
        """The newest stored stories (for previews and bots)."""
        query = select(stories.c.data).order_by(stories.c.first_seen_at.desc(),
                                                stories.c.published_at.desc()).limit(limit)
        if feeds:
            query = query.where(stories.c.feed.in_(list(feeds)))
        async with self.engine.connect() as conn:
            return [Story.from_json(r[0]) for r in (await conn.execute(query)).all()]


async def _item(conn: AsyncConnection, item_id: int) -> OutboxItem:
    row = (await conn.execute(
        select(outbox.c.id, outbox.c.story_id, outbox.c.channel, outbox.c.status,
               outbox.c.attempts, outbox.c.last_error, outbox.c.first_attempt_at, stories.c.data)
        .join(stories, stories.c.id == outbox.c.story_id).where(outbox.c.id == item_id))).one()
    return OutboxItem(id=row.id, story_id=row.story_id, channel=row.channel, status=row.status,
                      attempts=row.attempts, story=Story.from_json(row.data),
                      last_error=row.last_error, first_attempt_at=row.first_attempt_at)


async def _upsert_feed_state(conn: AsyncConnection, state: FeedState) -> None:
    values = {k: getattr(state, k) for k in FeedState.__dataclass_fields__}
    done = await conn.execute(update(feed_state).where(feed_state.c.name == state.name).values(**values))
    if done.rowcount == 0:
        await conn.execute(insert(feed_state).values(**values))


def _expired(since: datetime | None, window: float | None, now: datetime) -> bool:
    return window is not None and (since is None or (now - since).total_seconds() > window)


def _upgrade(conn: Connection) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "heads")  # channel modules may add branches of their own


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
