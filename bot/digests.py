"""Digests: at each due slot of a channel's `digest` schedule, ONE roundup row in the outbox
(action `digest`, its stories in `args`), whatever the number of daemons or restarts: the row's
de-duplication key is the channel and the slot.

A digest holds the stories the channel collected (digest-only channels, and posts folded in by
`quiet = "digest"`) and, on a channel that also posts each story, those it queued since its
last digest; newest first, at most `max` (`more`: how many were left out). Collected rows are
settled in the same transaction (cancelled, decision "in digest"). The dispatcher sends the row
through the channel's `render_digest`.

Slots are pure (`due_slot`): the latest `at` time of day in `[site] timezone` that has passed,
or, with `every`, the latest multiple of it since the epoch — the same answer on every daemon.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from bot.outbox import log_decisions
from bot.schedule import DigestSettings, local
from bot.schema import outbox, stories
from bot.store import Store

log = logging.getLogger("siar.digests")
TICK = 60.0  # seconds between the planner's looks at the schedules
Clock = Callable[[], datetime]


def due_slot(now: datetime, settings: DigestSettings, zone: str) -> tuple[datetime, datetime]:
    """(the latest slot at or before `now`, the slot before it), both in UTC (pure)."""
    if settings.every is not None:
        step = settings.every
        slot = datetime.fromtimestamp(now.timestamp() // step * step, UTC)
        return slot, slot - timedelta(seconds=step)
    here = local(now, zone)
    slots = sorted(
        datetime.combine(here.date() + timedelta(days=day), at, tzinfo=here.tzinfo).astimezone(UTC)
        for day in (-2, -1, 0)
        for at in settings.at
    )
    passed = [s for s in slots if s <= now]
    return passed[-1], passed[-2]


def digest_key(channel: str, slot: datetime) -> str:
    """The de-duplication key of `channel`'s digest at `slot`."""
    return hashlib.sha256(f"digest:{channel}:{slot.isoformat()}".encode()).hexdigest()


class DigestPlanner:
    """The scheduler job that queues each channel's digests when they are due."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Any],
        clock: Clock,
        zone: Callable[[], str],
        wake: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.channels = channels  # the running channels (a reload changes this mapping in place)
        self.clock = clock
        self.zone = zone
        self.wake = wake

    async def tick(self) -> list[int]:
        """Queue every digest due now and not queued yet; the ids of the rows queued."""
        created: list[int] = []
        woken: set[str] = set()
        for name, channel in list(self.channels.items()):
            settings: DigestSettings | None = getattr(channel.settings, "digest", None)
            if settings is None:
                continue
            try:
                row = await self.plan(name, settings)
            except Exception:  # one channel's trouble never stops the others' digests
                log.exception("channel %s: cannot queue its digest", name)
                continue
            if row is not None:
                created.append(row)
                woken.add(name)
        if self.wake is not None and woken:
            self.wake(woken)
        return created

    async def plan(self, channel: str, settings: DigestSettings) -> int | None:
        """Queue `channel`'s digest of the slot due now (once); its row id, or None."""
        now = self.clock()
        slot, previous = due_slot(now, settings, self.zone())
        db = self.store.db
        async with db.write() as conn:
            last = (
                await conn.execute(
                    select(outbox.c.args)
                    .where(outbox.c.channel == channel, outbox.c.action == "digest")
                    .order_by(outbox.c.id.desc())
                    .limit(1)
                )
            ).first()
            since = previous
            if last is not None and last.args:
                at = datetime.fromisoformat(json.loads(last.args)["at"])
                if at >= slot:
                    return None  # this slot's digest is queued already
                since = max(since, at)
            rows = (
                await conn.execute(
                    select(outbox.c.id, outbox.c.action, outbox.c.story_id, stories.c.published_at)
                    .join(stories, stories.c.id == outbox.c.story_id)
                    .where(
                        outbox.c.channel == channel,
                        stories.c.retracted_at.is_(None),
                        or_(
                            and_(outbox.c.action == "collect", outbox.c.status == "pending"),
                            and_(
                                outbox.c.action == "post",
                                outbox.c.status.in_(("pending", "sending", "sent")),
                                outbox.c.created_at > since,
                            ),
                        ),
                        outbox.c.created_at <= slot,
                    )
                    .order_by(stories.c.published_at.desc(), outbox.c.id.desc())
                )
            ).all()
            if not rows:
                return None
            chosen = rows[: settings.max]
            ids = [r.story_id for r in chosen]
            args = {
                "stories": ids,
                "more": len(rows) - len(chosen),
                "title": settings.title,
                "at": slot.isoformat(),
            }
            dialect = sqlite_dialect if db.is_sqlite else postgresql_dialect
            inserted = (
                await conn.execute(
                    dialect.insert(outbox)
                    .on_conflict_do_nothing()
                    .returning(outbox.c.id)
                    .values(
                        story_id=ids[0],
                        channel=channel,
                        dedup_key=digest_key(channel, slot),
                        status="pending",
                        action="digest",
                        priority=0,
                        args=json.dumps(args),
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )
            ).first()
            if inserted is None:
                return None  # another daemon queued it a moment ago
            collected = [r for r in rows if r.action == "collect"]
            if collected:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_([r.id for r in collected]), outbox.c.status == "pending")
                    .values(status="cancelled", last_error=f"in digest {inserted.id}", updated_at=now)
                )
            shown = set(ids)
            await log_decisions(
                conn,
                [
                    {
                        "story_id": r.story_id,
                        "channel": channel,
                        "decision": "in digest",
                        "rule": f"channels.{channel}.digest",
                        "detail": f"digest {inserted.id} of {slot:%Y-%m-%d %H:%M} UTC"
                        + ("" if r.story_id in shown else " (counted in its 'more')"),
                        "at": now,
                    }
                    for r in rows
                ],
            )
        log.info("channel %s: digest of %d stories queued (slot %s)", channel, len(rows), slot.isoformat())
        return int(inserted.id)
