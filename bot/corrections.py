"""Corrections: a story already stored comes back from its feed with what a post shows of it
changed (title, lead, image, link) — edit what was posted, where the platform and the channel
allow, through the outbox like posts.

Cheap by construction: a hash of each entry's raw content is stored with the story, and only a
known entry whose raw hash changed has its fingerprint (what a post shows, after cleaning)
compared, so feed noise (a new `<lastBuildDate>`, reordered attributes, a tracking parameter)
never edits a post. A feed rewriting more than NOISE_LIMIT stories at once (a CMS migration, a
template change) is recorded but edits nothing.

`changes` and `plan` are pure; `CorrectionBatch.write` runs them inside the poll's transaction
(bot.stories.Stories.record_poll), so a correction and its edit rows are stored together.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db import listed, listed_value
from bot.normalize import link_key
from bot.outbox import log_decisions
from bot.schema import outbox, stories
from bot.types import Decision, Story

log = logging.getLogger("siar.corrections")
NOISE_LIMIT = 5  # corrected stories of one feed in one poll beyond which nothing is edited
EDIT_PRIORITY = 1
SHOWN = ("title", "lead", "image", "url")  # what a post shows of a story


def fingerprint(story: Story) -> str:
    """sha256 hex of what a post shows of `story` (title, lead, image, link, as cleaned)."""
    text = "\x1f".join(getattr(story, name) for name in SHOWN)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Known:
    """A story of the feed as the store has it."""

    id: int
    entry_hash: str | None
    fingerprint: str | None
    story: Story
    retracted: bool = False


@dataclass(frozen=True)
class Change:
    """A known entry whose raw content changed: `corrected` when a post would show it."""

    story_id: int
    before: Story
    after: Story
    fingerprint: str
    entry_hash: str
    corrected: bool

    @property
    def what(self) -> list[str]:
        """The fields a post shows that changed."""
        return [name for name in SHOWN if getattr(self.before, name) != getattr(self.after, name)]


def changes(known: Mapping[str, Known], fresh: Sequence[Story], hashes: Mapping[str, str]) -> list[Change]:
    """The entries of `fresh` (the feed now) that are `known` and whose raw hash changed (pure).

    A story stored before fingerprints existed only gets them (no correction); a retracted
    story is never looked at again.
    """
    out = []
    for story in fresh:
        stored, raw = known.get(story.uid), hashes.get(story.uid, "")
        if stored is None or stored.retracted or not raw or raw == stored.entry_hash:
            continue
        shown = fingerprint(story)
        corrected = stored.fingerprint is not None and shown != stored.fingerprint
        out.append(Change(stored.id, stored.story, story, shown, raw, corrected))
    return out


@dataclass(frozen=True)
class Post:
    """A post row of a corrected story."""

    id: int
    channel: str
    status: str


@dataclass(frozen=True)
class Plan:
    """What one correction does: edit rows (channel, target post row id) and decisions."""

    edits: list[tuple[str, int]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


def plan(
    change: Change,
    posts: Sequence[Post],
    settings: Mapping[str, Any],
    can_edit: Mapping[str, bool],
    *,
    noisy: int = 0,
    turned_off: Mapping[str, str] | None = None,
) -> Plan:
    """Per channel: edit its sent post, or say why not (pure). `noisy`: how many stories of
    the feed changed at once, when that is too many to edit; `turned_off`: channel -> the
    setting that turned its edits off (the platform could edit)."""
    out = Plan(decisions=[Decision(None, "corrected", None, f"changed: {', '.join(change.what)}")])
    for post in posts:
        channel, decide = post.channel, out.decisions.append
        if post.status in ("pending", "sending"):
            decide(Decision(channel, "corrected", None, "not sent yet: the corrected story goes out"))
            continue
        if post.status != "sent":
            continue  # failed, uncertain, cancelled: nothing of it is out to edit
        configured = settings.get(channel)
        if noisy:
            why = f"{noisy} stories of the feed changed at once (more than {NOISE_LIMIT}): not edited"
            decide(Decision(channel, "not_edited", "corrections.noise", why))
        elif configured is None:
            decide(Decision(channel, "not_edited", None, "the channel is not configured here any more"))
        elif configured.on_correction == "ignore":
            rule = f"channels.{channel}.on_correction"
            decide(Decision(channel, "not_edited", rule, 'on_correction = "ignore"'))
        elif not can_edit.get(channel, False) and (turned_off or {}).get(channel):
            setting = (turned_off or {})[channel]
            why = f"{setting} = false: the platform could edit it, this channel does not"
            decide(Decision(channel, "not_edited", f"channels.{channel}.{setting}", why))
        elif not can_edit.get(channel, False):
            why = f"{configured.type} posts cannot be edited (the platform has no edit)"
            if channel not in can_edit:
                why = "the channel is not running here, so its post cannot be edited"
            decide(Decision(channel, "not_edited", None, why))
        else:
            out.edits.append((channel, post.id))
            decide(Decision(channel, "edit_queued", None, f"an edit of outbox row {post.id} is queued"))
    return out


def edit_key(target_id: int, shown: str) -> str:
    """The de-duplication key of the edit making post row `target_id` show fingerprint
    `shown`: the same correction never queues two edits, even from two daemons."""
    return hashlib.sha256(f"edit:{target_id}:{shown}".encode()).hexdigest()


@functools.cache
def _stored_hashes(dialect: str) -> Select[Any]:
    """The stored hashes of a feed's entries (`:feed`, `:uids`), retracted stories left out
    (never looked at again): built once, it is run on every poll that stores something."""
    return select(stories.c.id, stories.c.uid, stories.c.entry_hash, stories.c.fingerprint).where(
        stories.c.feed == bindparam("feed"),
        listed(stories.c.uid, "uids", dialect),
        stories.c.retracted_at.is_(None),
    )


InsertIgnore = Callable[[Any], Any]  # table -> INSERT … ON CONFLICT DO NOTHING


@dataclass
class CorrectionBatch:
    """The correction check of one poll's known entries, run in its transaction."""

    feed: str
    stories: Sequence[Story]  # the feed's stories now (labelled)
    hashes: Mapping[str, str]  # uid -> raw entry hash
    settings: Mapping[str, Any]  # channel settings by name
    can_edit: Mapping[str, bool]  # the running channels
    turned_off: Mapping[str, str] = field(default_factory=dict)  # channel -> setting turning edits off
    hosts: Sequence[str] = ()
    edited: set[str] = field(default_factory=set)  # channels given edit rows (to wake their workers)

    async def write(self, conn: AsyncConnection, now: datetime, insert_ignore: InsertIgnore) -> list[int]:
        """Find the changed entries, update their stories, queue the edits and log the
        decisions; the ids of the edit rows queued."""
        found = await self._known(conn)
        if not found:
            return []
        changed = changes(found, self.stories, self.hashes)
        corrected = [c for c in changed if c.corrected]
        noisy = len(corrected) if len(corrected) > NOISE_LIMIT else 0
        if noisy:
            log.warning(
                "feed %s: %d stories changed at once (more than %d): recorded, no post edited",
                self.feed,
                noisy,
                NOISE_LIMIT,
            )
        for change in changed:
            values: dict[str, Any] = {"entry_hash": change.entry_hash, "fingerprint": change.fingerprint}
            if change.corrected:
                story = change.after
                values.update(
                    data=story.to_json(),
                    title=story.title,
                    url=story.url,
                    url_key=link_key(story.url, self.hosts) if story.url else stories.c.url_key,
                )
            await conn.execute(update(stories).where(stories.c.id == change.story_id).values(**values))
        if not corrected:
            return []
        return await self._edits(conn, corrected, noisy, now, insert_ignore)

    async def _known(self, conn: AsyncConnection) -> dict[str, Known]:
        """The stored stories of the feed's entries whose raw hash changed (only those are
        read in full: an unchanged feed costs one narrow query)."""
        uids = [s.uid for s in self.stories if s.uid in self.hashes]
        if not uids:
            return {}
        dialect = conn.dialect.name
        stale: dict[int, tuple[str, str | None, str | None]] = {}
        values = {"feed": self.feed, "uids": listed_value(uids, dialect)}
        for r in await conn.execute(_stored_hashes(dialect), values):
            if r.entry_hash != self.hashes[r.uid]:
                stale[r.id] = (r.uid, r.entry_hash, r.fingerprint)
        found: dict[str, Known] = {}
        ids = list(stale)
        for start in range(0, len(ids), 500):
            rows = await conn.execute(
                select(stories.c.id, stories.c.data).where(stories.c.id.in_(ids[start : start + 500]))
            )
            for r in rows:
                uid, raw, shown = stale[r.id]
                found[uid] = Known(r.id, raw, shown, Story.from_json(r.data))
        return found

    async def _edits(
        self,
        conn: AsyncConnection,
        corrected: list[Change],
        noisy: int,
        now: datetime,
        insert_ignore: InsertIgnore,
    ) -> list[int]:
        rows = (
            await conn.execute(
                select(outbox.c.id, outbox.c.story_id, outbox.c.channel, outbox.c.status)
                .where(
                    outbox.c.story_id.in_([c.story_id for c in corrected]),
                    outbox.c.action == "post",
                )
                .order_by(outbox.c.id)
            )
        ).all()
        wanted: list[dict[str, Any]] = []
        log_rows: list[dict[str, Any]] = []
        for change in corrected:
            posts = [Post(r.id, r.channel, r.status) for r in rows if r.story_id == change.story_id]
            decided = plan(
                change, posts, self.settings, self.can_edit, noisy=noisy, turned_off=self.turned_off
            )
            for channel, target in decided.edits:
                wanted.append(
                    {
                        "story_id": change.story_id,
                        "channel": channel,
                        "dedup_key": edit_key(target, change.fingerprint),
                        "status": "pending",
                        "action": "edit",
                        "target_id": target,
                        "priority": EDIT_PRIORITY,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            log_rows += [
                {
                    "story_id": change.story_id,
                    "channel": d.channel,
                    "decision": d.decision,
                    "rule": d.rule,
                    "detail": d.detail,
                    "at": now,
                }
                for d in decided.decisions
            ]
        created: list[int] = []
        if wanted:
            inserted = await conn.execute(
                insert_ignore(outbox).returning(outbox.c.id, outbox.c.channel, outbox.c.story_id), wanted
            )
            made = {(r.story_id, r.channel): r.id for r in inserted}
            created = sorted(made.values())
            self.edited.update(channel for _, channel in made)
            for row in log_rows:  # the same edit queued before (another daemon's poll): say so
                if row["decision"] == "edit_queued" and (row["story_id"], row["channel"]) not in made:
                    row["detail"] = "its edit is queued already"
        await log_decisions(conn, log_rows)
        return created
