"""Stories, and recording one poll: new stories, their outbox rows, the decision log and the
feed's next state, all in ONE transaction.

A story whose de-duplication key is already queued for a channel gets a `duplicate` decision
instead of a second row. Rows are written in key order and each feed's polls are serialized
with an advisory lock on PostgreSQL, so several daemons sharing one database can neither
deadlock nor store a story twice.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.corrections import fingerprint
from bot.db import Database, insert_ignore, listed, listed_value
from bot.feedstate import FeedState, save_state
from bot.normalize import link_key
from bot.outbox import log_decisions
from bot.retractions import Capability, retract
from bot.retractions import Plan as RetractionPlan
from bot.schema import decisions, outbox, stories
from bot.types import Decision, Story

if TYPE_CHECKING:
    from bot.corrections import CorrectionBatch

CHUNK = 500  # keys per IN (…) list


async def _retracted(conn: AsyncConnection, keys: Sequence[str]) -> dict[str, str]:
    """{key: why} of the de-duplication keys of retracted stories: never posted again, even
    when a feed carries the story under another id."""
    dialect = conn.dialect.name
    found: dict[str, str] = {}
    for r in await conn.execute(_sql(dialect).retracted, {"keys": listed_value(keys, dialect)}):
        found[r.url_key] = f"retracted at {r.retracted_at:%Y-%m-%d %H:%M} UTC" + (
            f": {r.retract_reason}" if r.retract_reason else ""
        )
    return found


class _Statements:
    """The poll's hot statements, built once per dialect: a statement built per call costs
    more CPU than SQLite spends running it."""

    def __init__(self, dialect: str) -> None:
        feed_uids = (stories.c.feed == bindparam("feed"), listed(stories.c.uid, "uids", dialect))
        self.known_uids = select(stories.c.uid).where(*feed_uids)
        self.known_hashes = select(stories.c.uid, stories.c.entry_hash).where(*feed_uids)
        self.taken = select(outbox.c.channel, outbox.c.dedup_key).where(
            listed(outbox.c.dedup_key, "keys", dialect)
        )
        self.retracted = select(stories.c.url_key, stories.c.retract_reason, stories.c.retracted_at).where(
            listed(stories.c.url_key, "keys", dialect), stories.c.retracted_at.is_not(None)
        )
        self.insert_stories = insert_ignore(stories, dialect).returning(stories.c.id, stories.c.uid)
        self.insert_outbox = insert_ignore(outbox, dialect).returning(
            outbox.c.id, outbox.c.story_id, outbox.c.channel
        )


@functools.cache
def _sql(dialect: str) -> _Statements:
    return _Statements(dialect)


@dataclass
class NewStory:
    """A story seen for the first time, with its routing decisions and de-duplication key."""

    story: Story
    decisions: list[Decision] = field(default_factory=list)
    key: str = field(kw_only=True)  # bot.normalize.story_key
    entry_hash: str = field(default="", kw_only=True)  # bot.normalize.entry_hash of its entry


class Stories:
    """The stories table, the poll's transaction, and the lookups `why` and the bots use."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def known_uids(self, feed: str, uids: Sequence[str]) -> set[str]:
        """Which of `uids` feed `feed` has already delivered to the store."""
        values = {"feed": feed, "uids": listed_value(uids, self.db.dialect)}
        async with self.db.read() as conn:
            return {r[0] for r in await conn.execute(_sql(self.db.dialect).known_uids, values)}

    async def known_hashes(self, feed: str, uids: Sequence[str]) -> dict[str, str | None]:
        """{uid: the stored raw hash of its entry (None: stored before hashes)} of the `uids`
        feed `feed` has already delivered: an entry whose hash is unchanged need not be
        normalized again (bot.corrections)."""
        values = {"feed": feed, "uids": listed_value(uids, self.db.dialect)}
        async with self.db.read() as conn:
            rows = await conn.execute(_sql(self.db.dialect).known_hashes, values)
        return {r.uid: r.entry_hash for r in rows}

    async def record_poll(
        self,
        state: FeedState,
        new: Sequence[NewStory],
        now: datetime,
        corrections: CorrectionBatch | None = None,
    ) -> list[int]:
        """Store `new` with their outbox rows and decisions, and save `state`: one transaction.
        `corrections`: the check of the feed's known entries (bot.corrections), in the same one.

        Returns the ids of the outbox rows created. When daemons share PostgreSQL and another
        one stored a story first, this one skips it.
        """
        pairs = sorted(((i.key, i) for i in new), key=lambda pair: pair[0])
        created: list[int] = []
        async with self.db.write() as conn:
            if not self.db.is_sqlite:  # one poll of a feed at a time across daemons
                lock = int.from_bytes(hashlib.sha256(state.name.encode()).digest()[:8], "big", signed=True)
                await conn.execute(select(func.pg_advisory_xact_lock(lock)))
            if corrections is not None:  # before the new ones: only stories stored earlier
                created = await corrections.write(conn, now, self._insert_ignore)
            if pairs:
                created += await self._insert(conn, pairs, now)
            await save_state(conn, state)
        return created

    async def _insert(
        self, conn: AsyncConnection, pairs: list[tuple[str, NewStory]], now: datetime
    ) -> list[int]:
        keys = [key for key, _ in pairs]
        sql = _sql(self.db.dialect)
        rows = await conn.execute(sql.taken, {"keys": listed_value(keys, self.db.dialect)})
        taken: set[tuple[str, str]] = {(r.channel, r.dedup_key) for r in rows}
        retracted = await _retracted(conn, keys)
        # Bulk inserts that skip rows another daemon wrote first (ON CONFLICT DO NOTHING).
        inserted = await conn.execute(
            sql.insert_stories,
            [
                {
                    "feed": i.story.feed,
                    "uid": i.story.uid,
                    "url": i.story.url,
                    "url_key": key,
                    "title": i.story.title,
                    "published_at": i.story.published,
                    "first_seen_at": now,
                    "data": i.story.to_json(),
                    "fingerprint": fingerprint(i.story),
                    "entry_hash": i.entry_hash or None,
                }
                for key, i in pairs
            ],
        )
        story_ids = {r.uid: r.id for r in inserted}
        wanted: list[dict[str, Any]] = []
        for key, item in pairs:
            story_id = story_ids.get(item.story.uid)
            for d in item.decisions:
                if key in retracted:
                    continue
                if story_id is not None and d.queues and d.channel and (d.channel, key) not in taken:
                    taken.add((d.channel, key))
                    wanted.append(
                        {
                            "story_id": story_id,
                            "channel": d.channel,
                            "dedup_key": key,
                            "status": "pending",
                            # a digest-only channel collects it for its next digest
                            "action": "collect" if d.decision == "collected" else "post",
                            "priority": 1 if item.story.breaking else 0,  # breaking news first
                            "attempts": 0,
                            "next_attempt_at": now,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
        queued: dict[tuple[int, str], int] = {}
        if wanted:
            rows = await conn.execute(sql.insert_outbox, wanted)
            queued = {(r.story_id, r.channel): r.id for r in rows}
        log_rows: list[dict[str, Any]] = []
        for key, item in pairs:
            story_id = story_ids.get(item.story.uid)
            if story_id is None:
                continue  # another daemon stored this story a moment ago
            for d in item.decisions:
                if d.queues and key in retracted:
                    d = Decision(d.channel, "retracted", None, retracted[key])
                elif d.queues and (story_id, str(d.channel)) not in queued:
                    d = Decision(
                        d.channel, "duplicate", "url", "the same link was already queued for this channel"
                    )
                log_rows.append(
                    {
                        "story_id": story_id,
                        "channel": d.channel,
                        "decision": d.decision,
                        "rule": d.rule,
                        "detail": d.detail,
                        "at": now,
                    }
                )
        await log_decisions(conn, log_rows)
        return sorted(queued.values())

    def _insert_ignore(self, table: Any) -> Any:
        """INSERT … ON CONFLICT DO NOTHING for this database."""
        return insert_ignore(table, self.db.dialect)

    async def find(self, url_or_id: str, key: str | None = None) -> list[dict[str, Any]]:
        """Stories matching a link (by its de-duplication `key`, bot.normalize.link_key with the
        site's hosts; by default without them), a feed uid or an internal id."""
        conditions = [stories.c.uid == url_or_id, stories.c.url_key == (key or link_key(url_or_id, ()))]
        if url_or_id.isdigit():
            conditions.append(stories.c.id == int(url_or_id))
        async with self.db.read() as conn:
            rows = (await conn.execute(select(stories).where(or_(*conditions)).order_by(stories.c.id))).all()
        return [r._asdict() for r in rows]

    async def retract(
        self, story_id: int, capabilities: Mapping[str, Capability], *, reason: str, by: str, now: datetime
    ) -> RetractionPlan:
        """Retract story `story_id` in one transaction (bot.retractions); what was done."""
        async with self.db.write() as conn:
            return await retract(
                conn, story_id, capabilities, reason=reason, by=by, now=now, insert_ignore=self._insert_ignore
            )

    async def by_ids(self, ids: Sequence[int]) -> dict[int, Story]:
        """{id: story as it reads now} of `ids`, retracted stories left out."""
        found: dict[int, Story] = {}
        async with self.db.read() as conn:
            for start in range(0, len(ids), CHUNK):
                rows = await conn.execute(
                    select(stories.c.id, stories.c.data).where(
                        stories.c.id.in_(list(ids[start : start + CHUNK])), stories.c.retracted_at.is_(None)
                    )
                )
                found.update({r.id: Story.from_json(r.data) for r in rows})
        return found

    async def decisions_of(self, story_id: int) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(decisions).where(decisions.c.story_id == story_id).order_by(decisions.c.id)
                )
            ).all()
        return [r._asdict() for r in rows]

    async def outbox_of(self, story_id: int) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(select(outbox).where(outbox.c.story_id == story_id).order_by(outbox.c.id))
            ).all()
        return [r._asdict() for r in rows]

    async def latest_posted(self, channel: str, limit: int = 5) -> list[Story]:
        """The newest stories `channel` has sent, each once (what passed its filters)."""
        query = (
            select(stories.c.data)
            .join(outbox, outbox.c.story_id == stories.c.id)
            .where(
                outbox.c.channel == channel,
                outbox.c.status == "sent",
                outbox.c.action == "post",  # not its edits, deletions or digests
                stories.c.retracted_at.is_(None),
            )
            .order_by(outbox.c.sent_at.desc(), outbox.c.id.desc())
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [Story.from_json(r[0]) for r in (await conn.execute(query)).all()]

    async def latest(self, limit: int = 5, feeds: Sequence[str] | None = None) -> list[Story]:
        """The newest stored stories (for previews and bots), retracted ones left out."""
        query = (
            select(stories.c.data)
            .where(stories.c.retracted_at.is_(None))
            .order_by(stories.c.first_seen_at.desc(), stories.c.published_at.desc())
            .limit(limit)
        )
        if feeds:
            query = query.where(stories.c.feed.in_(list(feeds)))
        async with self.db.read() as conn:
            return [Story.from_json(r[0]) for r in (await conn.execute(query)).all()]
