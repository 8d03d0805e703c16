"""Retractions: a story taken back. Its posts still waiting are cancelled, those already out
are deleted where the platform allows (a `delete` outbox row each, retried like posts), and it
is never posted again, even when a feed still carries it (bot.stories checks on insert).

`plan` is pure; `retract` runs it for one story in one transaction with the decision log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.outbox import log_decisions
from bot.schema import outbox, stories
from bot.types import Decision

DELETE_PRIORITY = 2  # before breaking news: a wrong story must go first


@dataclass(frozen=True)
class Row:
    """An outbox row of the story being retracted."""

    id: int
    channel: str
    action: str
    status: str
    remote_id: str | None = None
    target_id: int | None = None


@dataclass(frozen=True)
class Capability:
    """What a channel can do about a published post (None: the channel does not run here)."""

    type: str
    can_delete: bool | None
    turned_off: str = ""  # the setting that turned deleting off (the platform could delete)


@dataclass
class Plan:
    cancel: list[int] = field(default_factory=list)  # rows that must not go out
    deletes: list[tuple[str, int]] = field(default_factory=list)  # (channel, post row id)
    decisions: list[Decision] = field(default_factory=list)

    def report(self) -> list[tuple[str, str]]:
        """(channel, what happened there), one line per channel decision."""
        return [(str(d.channel), d.detail) for d in self.decisions if d.channel]


def recall_hint(kind: str) -> str:
    """Why a platform's post stays out (web push cannot be recalled once shown)."""
    if kind in ("webpush", "onesignal"):
        return "a web push notification cannot be recalled once delivered"
    return f"{kind} posts cannot be deleted by siar; remove it by hand"


def plan(rows: Sequence[Row], capabilities: Mapping[str, Capability]) -> Plan:
    """Per row of a retracted story: cancel it, delete what it posted, or say why not (pure)."""
    out = Plan()
    queued = {r.target_id for r in rows if r.action == "delete"}
    for row in rows:
        decide = out.decisions.append
        if row.action in ("edit", "delete", "digest"):
            if row.action == "edit" and row.status == "pending":
                out.cancel.append(row.id)
            continue  # a deletion already queued carries on; a digest leaves the story out
        if row.status == "pending":
            out.cancel.append(row.id)
            what = "collected for a digest" if row.action == "collect" else "not sent yet"
            decide(Decision(row.channel, "retracted", None, f"{what}: cancelled"))
            continue
        if row.status in ("failed", "cancelled"):
            continue
        if row.status == "uncertain":
            why = f"outbox row {row.id} is uncertain (it may be out): check the platform by hand"
            decide(Decision(row.channel, "not_deleted", None, why))
            continue
        capability = capabilities.get(row.channel)
        if row.id in queued:
            decide(Decision(row.channel, "delete_queued", None, "its deletion is queued already"))
        elif row.status == "sent" and not row.remote_id:
            why = "sent, but the platform gave no post id to delete: remove it by hand"
            decide(Decision(row.channel, "not_deleted", None, why))
        elif capability is not None and capability.can_delete is False and capability.turned_off:
            setting = capability.turned_off
            why = f"{setting} = false: the platform could delete it, this channel does not; remove it by hand"
            decide(Decision(row.channel, "not_deleted", f"channels.{row.channel}.{setting}", why))
        elif capability is not None and capability.can_delete is False:
            decide(Decision(row.channel, "not_deleted", None, recall_hint(capability.type)))
        else:
            out.deletes.append((row.channel, row.id))
            when = " (after it is sent)" if row.status == "sending" else ""
            later = " when the channel runs" if capability is None or capability.can_delete is None else ""
            decide(Decision(row.channel, "delete_queued", None, f"deletion queued{when}{later}"))
    return out


def delete_key(target_id: int) -> str:
    """The de-duplication key of the deletion of post row `target_id` (never queued twice)."""
    return hashlib.sha256(f"delete:{target_id}".encode()).hexdigest()


async def retract(
    conn: AsyncConnection,
    story_id: int,
    capabilities: Mapping[str, Capability],
    *,
    reason: str,
    by: str,
    now: datetime,
    insert_ignore: Any,
) -> Plan:
    """Retract story `story_id` (again: only what is left to do); the plan carried out."""
    found = (await conn.execute(select(stories.c.retracted_at).where(stories.c.id == story_id))).one()
    if found.retracted_at is None:
        await conn.execute(
            update(stories)
            .where(stories.c.id == story_id)
            .values(retracted_at=now, retract_reason=reason or None)
        )
    rows = [
        Row(r.id, r.channel, r.action, r.status, r.remote_id, r.target_id)
        for r in await conn.execute(
            select(
                outbox.c.id,
                outbox.c.channel,
                outbox.c.action,
                outbox.c.status,
                outbox.c.remote_id,
                outbox.c.target_id,
            )
            .where(outbox.c.story_id == story_id)
            .order_by(outbox.c.id)
        )
    ]
    decided = plan(rows, capabilities)
    if decided.cancel:
        await conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(decided.cancel), outbox.c.status == "pending")
            .values(status="cancelled", last_error="the story was retracted", updated_at=now)
        )
    deletes = decided.deletes
    if deletes:
        await conn.execute(
            insert_ignore(outbox),
            [
                {
                    "story_id": story_id,
                    "channel": channel,
                    "dedup_key": delete_key(target),
                    "status": "pending",
                    "action": "delete",
                    "target_id": target,
                    "priority": DELETE_PRIORITY,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for channel, target in deletes
            ],
        )
    detail = f"by {by}" + (f": {reason}" if reason else "")
    story_decision = Decision(None, "retracted", "operator", detail)
    await log_decisions(
        conn,
        [
            {
                "story_id": story_id,
                "channel": d.channel,
                "decision": d.decision,
                "rule": d.rule,
                "detail": d.detail,
                "at": now,
            }
            for d in [story_decision, *decided.decisions]
        ],
    )
    return decided
