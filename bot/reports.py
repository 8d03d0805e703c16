"""What `siar status`, `siar why` and the bots' admin reports show, computed once here.

Each report is plain data (JSON-ready dicts); the CLI prints it as tables or JSON, the Telegram
admin commands as a short message (`status_lines`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select

from bot.db import Database
from bot.fanout import FanoutLedger
from bot.feedstate import FeedStates
from bot.normalize import link_key
from bot.outbox import STATUSES
from bot.schema import outbox, stories
from bot.stories import Stories
from bot.websub_store import Subscriptions

if TYPE_CHECKING:
    from bot.config import Config

OUTBOX_FIELDS = ("id", "channel", "status", "attempts", "remote_id", "remote_url", "last_error")


def iso(value: Any) -> Any:
    """Datetimes as ISO 8601 text, anything else as it is (for JSON)."""
    return value.isoformat() if isinstance(value, datetime) else value


def _websub(sub: Any, config: Config) -> dict[str, Any]:
    """A feed's WebSub subscription as `status` shows it (its secret never)."""
    return {
        "hub": config.redact(sub.hub),
        "state": sub.state,
        "expires": iso(sub.expires_at),
        "last_notified": iso(sub.notified_at),
        "last_error": config.redact(sub.last_error) if sub.last_error else None,
    }


class Reports:
    """Read-only views over the store for operators."""

    def __init__(self, db: Database, stories_: Stories, feeds: FeedStates, ledger: FanoutLedger) -> None:
        self.db = db
        self.stories = stories_
        self.feeds = feeds
        self.ledger = ledger

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per channel, how many outbox rows are in each status."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(outbox.c.channel, outbox.c.status, func.count()).group_by(
                        outbox.c.channel, outbox.c.status
                    )
                )
            ).all()
        out: dict[str, dict[str, int]] = {}
        for channel, status, n in rows:
            out.setdefault(channel, dict.fromkeys(STATUSES, 0))[status] = n
        return out

    async def posts_since(self, since: datetime) -> dict[str, int]:
        """{channel: posts sent since `since`}."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(outbox.c.channel, func.count())
                    .where(
                        outbox.c.status == "sent",
                        outbox.c.sent_at >= since,
                        outbox.c.action.in_(("post", "digest")),  # not edits or deletions
                    )
                    .group_by(outbox.c.channel)
                )
            ).all()
        return {channel: int(n) for channel, n in rows}

    async def recent_problems(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest failed or uncertain rows (or pending ones with an error), with reasons."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(
                        outbox.c.id,
                        outbox.c.channel,
                        outbox.c.status,
                        outbox.c.last_error,
                        outbox.c.updated_at,
                        outbox.c.attempts,
                        stories.c.url,
                        stories.c.title,
                    )
                    .join(stories, stories.c.id == outbox.c.story_id)
                    .where(
                        or_(
                            outbox.c.status.in_(("failed", "uncertain")),
                            and_(outbox.c.status == "pending", outbox.c.last_error.is_not(None)),
                        )
                    )
                    .order_by(outbox.c.updated_at.desc())
                    .limit(limit)
                )
            ).all()
        return [r._asdict() for r in rows]

    async def status(self, config: Config) -> dict[str, Any]:
        """`siar status --json`: feeds, channels with their row counts, recent failures."""
        states = {s.name: s for s in await self.feeds.all()}
        pushed = {sub.feed: sub for sub in await Subscriptions(self.db).all()}
        counts = await self.counts()
        recipients = await self.ledger.uncertain_by_channel()
        feeds: list[dict[str, Any]] = []
        for f in config.feeds:
            s = states.get(f.name)
            feeds.append(
                {
                    "name": f.name,
                    "url": config.redact(f.url),
                    "last_success": iso(s.last_success_at) if s else None,
                    "last_fetch": iso(s.last_fetch_at) if s else None,
                    "failures": s.failures if s else 0,
                    "next_poll": iso(s.next_poll_at) if s else None,
                    "last_error": config.redact(s.last_error) if s and s.last_error else None,
                    "moved_to": s.redirect_url if s else None,
                    "websub": _websub(pushed[f.name], config) if f.name in pushed else None,
                }
            )
        channels: dict[str, dict[str, Any]] = {}
        for name in sorted(set(config.channels) | set(counts)):
            settings = config.channels.get(name)
            state = "removed from config"
            if settings is not None:
                state = (
                    "off"
                    if not settings.enabled
                    else f"waiting: {config.disabled[name]}"
                    if name in config.disabled
                    else "active"
                )
            channels[name] = {
                "type": settings.type if settings else None,
                "state": state,
                **counts.get(name, dict.fromkeys(STATUSES, 0)),
                "uncertain_recipients": recipients.get(name, 0),
            }
        problems = [{k: iso(v) for k, v in p.items()} for p in await self.recent_problems()]
        problems = [
            {**p, "last_error": config.redact(p["last_error"]) if p["last_error"] else None} for p in problems
        ]
        return {"feeds": feeds, "channels": channels, "recent_failures": problems}

    async def why(self, key: str, hosts: Sequence[str] = ()) -> list[dict[str, Any]]:
        """`siar why`: every story matching `key` (link, feed id, store id) with its decisions,
        its outbox rows and, for fan-out rows, how its recipients stand."""
        report: list[dict[str, Any]] = []
        for story in await self.stories.find(key, link_key(key, hosts)):
            rows = await self.stories.outbox_of(story["id"])
            entries = []
            for o in rows:
                entry = {k: iso(v) for k, v in o.items() if k in OUTBOX_FIELDS}
                recipients = await self.ledger.counts(f"siar-{o['id']}")
                if recipients:
                    entry["recipients"] = recipients
                entries.append(entry)
            report.append(
                {
                    "story": {
                        "id": story["id"],
                        "uid": story["uid"],
                        "feed": story["feed"],
                        "url": story["url"],
                        "title": story["title"],
                        "first_seen": iso(story["first_seen_at"]),
                    },
                    "decisions": [
                        {k: iso(v) for k, v in d.items() if k not in ("id", "story_id")}
                        for d in await self.stories.decisions_of(story["id"])
                    ],
                    "outbox": entries,
                }
            )
        return report

    async def status_lines(self) -> list[tuple[str, bool]]:
        """A short status as (text, bold) lines for a chat message: queues, recent problems,
        then feeds (failing first, so that what a small screen cuts is healthy feeds)."""
        lines: list[tuple[str, bool]] = [
            ("siar status", True),
            ("", False),
            ("Queues (pending / failed / uncertain)", True),
        ]
        for channel, c in sorted((await self.counts()).items()):
            lines.append(
                (f"{channel}: {c['pending'] + c['sending']} / {c['failed']} / {c['uncertain']}", False)
            )
        problems = await self.recent_problems(5)
        if problems:
            lines += [("", False), ("Recent problems", True)]
            lines += [(f"#{p['id']} {p['channel']}: {str(p['last_error'])[:100]}", False) for p in problems]
        lines += [("", False), ("Feeds", True)]
        for state in sorted(await self.feeds.all(), key=lambda s: (not s.failures, s.name)):
            mark = "✅" if not state.failures else f"❌ {state.failures}×"
            error = f" — {(state.last_error or '')[:80]}" if state.failures else ""
            lines.append((f"{mark} {state.name}{error}", False))
        return lines
