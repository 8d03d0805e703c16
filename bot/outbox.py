"""The outbox: the exactly-once state machine of each (story, channel) post, and nothing else.

A row moves `pending -> sending -> sent | failed | uncertain`. A row is claimed (`sending`)
with a conditional UPDATE before its request leaves, so two daemons sharing PostgreSQL can
never both send it; a crash leaves it `sending`, and `recover_sending` makes it `uncertain`
(never resent automatically) or, on a channel that resends safely, `pending` again. Every
transition is logged in the decision log in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db import Database
from bot.schema import channel_pauses, decisions, outbox, stories
from bot.types import Published, Story

STATUSES = ("pending", "sending", "sent", "failed", "uncertain", "cancelled")
ACTIONS = ("post", "edit", "delete", "collect", "digest")
# last_error of a row whose send was cut short by a shutdown on a resumable channel
INTERRUPTED = "interrupted mid-send by a shutdown; it resumes"


@dataclass(frozen=True)
class OutboxItem:
    """A claimed row with its story, as a channel worker gets it."""

    id: int
    story_id: int
    channel: str
    status: str
    attempts: int
    story: Story
    last_error: str | None = None
    first_attempt_at: datetime | None = None
    first_seen_at: datetime | None = None  # when siar first saw the story (latency metrics)
    action: str = "post"
    priority: int = 0
    args: dict[str, Any] = field(default_factory=dict)
    target: Published | None = None  # edit/delete: the post as published
    target_status: str | None = None  # edit/delete: where the post row stands

    @property
    def key(self) -> str:
        """The idempotency key of this row: the same on every attempt, unique per row."""
        return f"siar-{self.id}"


@dataclass(frozen=True)
class Finish:
    """Where a `sending` row goes next (made by `bot.delivery.transition`)."""

    status: str
    decision: str
    detail: str = ""
    remote_id: str = ""
    remote_url: str = ""
    retry_at: datetime | None = None
    refund_attempt: bool = False  # the claim's attempt does not count (a planned wait)


async def log_decisions(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append decision-log rows (story_id, channel, decision, rule, detail, at)."""
    if rows:
        await conn.execute(insert(decisions), [dict(r) for r in rows])


class Outbox:
    """Claims, outcomes, recovery and operator resends of outbox rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self, channel: str, now: datetime, worker: str, *, min_priority: int = 0
    ) -> OutboxItem | None:
        """The due pending row of `channel` to send next, now marked `sending`; None if nothing
        is due. Breaking news first, then oldest due in publication order (so a channel's
        timeline reads oldest to newest); stories collected for a digest never go alone.
        `min_priority`: only rows at least that urgent (quiet hours that hold posts)."""
        async with self.db.write() as conn:
            for _ in range(5):
                row = (
                    await conn.execute(
                        select(outbox.c.id, outbox.c.attempts)
                        .join(stories, stories.c.id == outbox.c.story_id)
                        .where(
                            outbox.c.channel == channel,
                            outbox.c.status == "pending",
                            outbox.c.next_attempt_at <= now,
                            outbox.c.action != "collect",
                            outbox.c.priority >= min_priority,
                        )
                        .order_by(
                            outbox.c.priority.desc(),
                            outbox.c.next_attempt_at,
                            stories.c.published_at,
                            outbox.c.id,
                        )
                        .limit(1)
                    )
                ).first()
                if row is None:
                    return None
                claimed = await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id, outbox.c.status == "pending")
                    .values(
                        status="sending",
                        attempts=row.attempts + 1,
                        claimed_at=now,
                        claimed_by=worker,
                        first_attempt_at=func.coalesce(outbox.c.first_attempt_at, now),
                        updated_at=now,
                    )
                )
                if claimed.rowcount == 1:
                    return await _item(conn, row.id)
        return None

    async def next_due(self, channel: str) -> datetime | None:
        """When the next pending row of `channel` is due, or None."""
        async with self.db.read() as conn:
            due: datetime | None = (
                await conn.execute(
                    select(func.min(outbox.c.next_attempt_at)).where(
                        outbox.c.channel == channel,
                        outbox.c.status == "pending",
                        outbox.c.action != "collect",  # they wait for a digest, never alone
                    )
                )
            ).scalar()
        return due

    async def fold_into_digest(self, channel: str, now: datetime) -> int:
        """Quiet hours with `quiet = "digest"`: `channel`'s pending posts (not breaking news)
        wait for its next digest instead (action `collect`); how many were folded."""
        condition = and_(
            outbox.c.channel == channel,
            outbox.c.status == "pending",
            outbox.c.action == "post",
            outbox.c.priority < 1,
            outbox.c.attempts == 0,
        )
        async with self.db.write() as conn:
            rows = (await conn.execute(select(outbox.c.id, outbox.c.story_id).where(condition))).all()
            if not rows:
                return 0
            await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_([r.id for r in rows]), outbox.c.status == "pending")
                .values(action="collect", updated_at=now)
            )
            await log_decisions(
                conn,
                [
                    {
                        "story_id": r.story_id,
                        "channel": channel,
                        "decision": "held",
                        "rule": f"channels.{channel}.quiet",
                        "detail": "quiet hours: it joins the next digest",
                        "at": now,
                    }
                    for r in rows
                ],
            )
        return len(rows)

    async def finish(self, item_id: int, outcome: Finish, now: datetime) -> None:
        """Move a `sending` row to `outcome` and log the decision, in one transaction."""
        assert outcome.status in STATUSES
        values: dict[str, Any] = {
            "status": outcome.status,
            "updated_at": now,
            "last_error": outcome.detail or None,
        }
        if outcome.status == "sent":
            values.update(
                sent_at=now,
                remote_id=outcome.remote_id or None,
                remote_url=outcome.remote_url or None,
                last_error=None,
            )
        if outcome.retry_at is not None:
            values["next_attempt_at"] = outcome.retry_at
        if outcome.refund_attempt:
            values["attempts"] = outbox.c.attempts - 1
        async with self.db.write() as conn:
            row = (
                await conn.execute(select(outbox.c.story_id, outbox.c.channel).where(outbox.c.id == item_id))
            ).one()
            await conn.execute(update(outbox).where(outbox.c.id == item_id).values(**values))
            await log_decisions(
                conn,
                [
                    {
                        "story_id": row.story_id,
                        "channel": row.channel,
                        "decision": outcome.decision,
                        "rule": None,
                        "detail": outcome.detail or outcome.remote_url or outcome.remote_id or None,
                        "at": now,
                    }
                ],
            )

    async def recover_sending(
        self,
        now: datetime,
        stale_before: datetime | None = None,
        resumable: Mapping[str, float | None] | None = None,
    ) -> int:
        """Rows left `sending` by a crash become `uncertain`; returns how many were recovered.

        Rows of `resumable` channels (sending twice is harmless there) go back to `pending`
        instead, unless the channel's window (seconds the platform remembers an idempotency
        key; None = forever) has passed since the send began — then they are `uncertain` too,
        as are interrupted rows that waited longer than that. Edits and deletions always go
        back to `pending` (doing one twice changes nothing). With `stale_before`, only claims
        older than that are touched (other daemons may be sending right now).
        """
        resumable = resumable or {}
        condition = outbox.c.status == "sending"
        if stale_before is not None:
            condition = and_(condition, outbox.c.claimed_at < stale_before)
        async with self.db.write() as conn:
            columns = (
                outbox.c.id,
                outbox.c.story_id,
                outbox.c.channel,
                outbox.c.first_attempt_at,
                outbox.c.action,
            )
            # SKIP LOCKED: two daemons' heartbeats taking over at once never both log a row.
            found = select(*columns).where(condition).with_for_update(skip_locked=True)
            rows = list((await conn.execute(found)).all())
            windowed = [name for name, window in resumable.items() if window is not None]
            if windowed:  # interrupted at shutdown, then down for longer than the platform remembers
                rows += [
                    r
                    for r in (
                        await conn.execute(
                            select(*columns).where(
                                outbox.c.status == "pending",
                                outbox.c.last_error == INTERRUPTED,
                                outbox.c.channel.in_(windowed),
                            )
                        )
                    ).all()
                    if _expired(r.first_attempt_at, resumable[r.channel], now)
                ]
            if not rows:
                return 0
            resumed = [
                r
                for r in rows
                # editing or deleting again is harmless: the platform answers "already so"
                if r.action in ("edit", "delete")
                or (r.channel in resumable and not _expired(r.first_attempt_at, resumable[r.channel], now))
            ]
            uncertain = [r for r in rows if r not in resumed]
            reason = "the daemon stopped while this post was being sent; it may or may not be out"
            if uncertain:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_([r.id for r in uncertain]))
                    .values(status="uncertain", last_error=reason, updated_at=now)
                )
            if resumed:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_([r.id for r in resumed]))
                    .values(
                        status="pending",
                        next_attempt_at=now,
                        updated_at=now,
                        last_error="resumed after the daemon stopped mid-send",
                    )
                )
            await log_decisions(
                conn,
                [
                    {
                        "story_id": r.story_id,
                        "channel": r.channel,
                        "decision": "uncertain" if r in uncertain else "resume",
                        "rule": None,
                        "detail": reason if r in uncertain else "resumed: this channel sends idempotently",
                        "at": now,
                    }
                    for r in rows
                ],
            )
        return len(rows)

    async def requeue(
        self,
        item_id: int,
        now: datetime,
        *,
        statuses: Sequence[str],
        detail: str = "queued again by the operator",
    ) -> bool:
        """Put row `item_id` back to `pending` (attempts reset) if its status is in `statuses`."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(outbox.c.story_id, outbox.c.channel).where(
                        outbox.c.id == item_id, outbox.c.status.in_(list(statuses))
                    )
                )
            ).first()
            if row is None:
                return False
            await conn.execute(
                update(outbox)
                .where(outbox.c.id == item_id)
                .values(
                    status="pending", next_attempt_at=now, attempts=0, first_attempt_at=None, updated_at=now
                )
            )
            await log_decisions(
                conn,
                [
                    {
                        "story_id": row.story_id,
                        "channel": row.channel,
                        "decision": "resend",
                        "rule": "operator",
                        "detail": detail,
                        "at": now,
                    }
                ],
            )
        return True

    async def row(self, item_id: int) -> dict[str, Any] | None:
        """One row's columns, or None."""
        async with self.db.read() as conn:
            found = (await conn.execute(select(outbox).where(outbox.c.id == item_id))).first()
        return found._asdict() if found is not None else None

    async def pause(self, channel: str, by: str, now: datetime) -> bool:
        """Hold `channel`'s posts (they wait, nothing is dropped); False if already paused."""
        async with self.db.write() as conn:
            found = (
                await conn.execute(
                    select(channel_pauses.c.channel).where(channel_pauses.c.channel == channel)
                )
            ).first()
            if found is not None:
                return False
            await conn.execute(insert(channel_pauses).values(channel=channel, paused_at=now, paused_by=by))
        return True

    async def resume(self, channel: str) -> bool:
        """Let `channel`'s posts go again; False if it was not paused."""
        async with self.db.write() as conn:
            done = await conn.execute(delete(channel_pauses).where(channel_pauses.c.channel == channel))
        return bool(done.rowcount)

    async def paused(self) -> dict[str, dict[str, Any]]:
        """{channel: {"paused_at", "paused_by"}} of the paused channels."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(channel_pauses))).all()
        return {r.channel: {"paused_at": r.paused_at, "paused_by": r.paused_by} for r in rows}

    async def sent_since(self, channel: str, since: datetime, *, confirmed: bool = False) -> int:
        """Posts of `channel` sent since `since`; `confirmed`: only those the platform gave an
        id for (an "already posted" answer created nothing new)."""
        query = (
            select(func.count())
            .select_from(outbox)
            .where(
                outbox.c.channel == channel,
                outbox.c.status == "sent",
                outbox.c.sent_at >= since,
                outbox.c.action.in_(("post", "digest")),  # posts made, not edits or deletions
            )
        )
        if confirmed:
            query = query.where(outbox.c.remote_id.is_not(None))
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())


async def _item(conn: AsyncConnection, item_id: int) -> OutboxItem:
    row = (
        await conn.execute(
            select(
                outbox.c.id,
                outbox.c.story_id,
                outbox.c.channel,
                outbox.c.status,
                outbox.c.attempts,
                outbox.c.last_error,
                outbox.c.first_attempt_at,
                outbox.c.action,
                outbox.c.priority,
                outbox.c.args,
                outbox.c.target_id,
                stories.c.data,
                stories.c.first_seen_at,
            )
            .join(stories, stories.c.id == outbox.c.story_id)
            .where(outbox.c.id == item_id)
        )
    ).one()
    target, target_status = None, None
    if row.target_id is not None:  # an edit or a deletion: the post it refers to
        found = (
            await conn.execute(
                select(outbox.c.remote_id, outbox.c.remote_url, outbox.c.sent_at, outbox.c.status).where(
                    outbox.c.id == row.target_id
                )
            )
        ).first()
        if found is not None:
            target_status = found.status
            if found.status == "sent":
                target = Published(found.remote_id or "", found.remote_url or "", found.sent_at)
    return OutboxItem(
        id=row.id,
        story_id=row.story_id,
        channel=row.channel,
        status=row.status,
        attempts=row.attempts,
        story=Story.from_json(row.data),
        last_error=row.last_error,
        first_attempt_at=row.first_attempt_at,
        first_seen_at=row.first_seen_at,
        action=row.action,
        priority=row.priority,
        args=json.loads(row.args) if row.args else {},
        target=target,
        target_status=target_status,
    )


def _expired(since: datetime | None, window: float | None, now: datetime) -> bool:
    return window is not None and (since is None or (now - since).total_seconds() > window)
