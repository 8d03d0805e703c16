"""The store: one database and the parts that use it, each in its own module.

- `bot.db.Database`: engine, write transactions, migrations.
- `bot.outbox.Outbox`: the exactly-once state machine of posts.
- `bot.stories.Stories`: stories and the poll's one transaction.
- `bot.feedstate.FeedStates`: what siar remembers about each feed.
- `bot.fanout.FanoutLedger`: per-recipient progress of broadcasts.
- `bot.reports.Reports`: what `status`, `why` and the admin commands show.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from bot.db import Database
from bot.fanout import FanoutLedger
from bot.feedstate import FeedState, FeedStates
from bot.outbox import INTERRUPTED, STATUSES, Outbox, OutboxItem
from bot.registry import REGISTRY
from bot.reports import Reports
from bot.stories import NewStory, Stories

__all__ = ["INTERRUPTED", "STATUSES", "FeedState", "NewStory", "OutboxItem", "Store"]


class Store:
    """Every part of the store on one database (one per process)."""

    def __init__(self, url: str, base_dir: Path = Path(".")) -> None:
        self.db = Database(url, base_dir)
        self.outbox = Outbox(self.db)
        self.stories = Stories(self.db)
        self.feeds = FeedStates(self.db)
        self.fanout = FanoutLedger(self.db)
        self.reports = Reports(self.db, self.stories, self.feeds, self.fanout)

    @property
    def sqlite_path(self) -> Path | None:
        return self.db.sqlite_path

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    async def migrate(
        self, version_locations: Sequence[Path] | None = None, *, in_child: bool = False
    ) -> None:
        """The core's migrations and those of `version_locations` (default: every channel
        package's); `in_child`: in a child process (bot/schema_upgrade.py)."""
        if version_locations is None:
            version_locations = REGISTRY.migrations()
        await self.db.migrate(version_locations, in_child=in_child)

    async def close(self) -> None:
        await self.db.close()

    async def resend(self, item_id: int, now: datetime) -> bool:
        """An operator's order: send an uncertain or failed post again; for a broadcast, send
        again to its uncertain recipients only. False when there is nothing to resend."""
        recipients = await self.fanout.requeue_uncertain(f"siar-{item_id}", now)
        statuses = ("uncertain", "failed", "sent") if recipients else ("uncertain", "failed")
        detail = (
            f"queued again by the operator for {recipients} uncertain recipients"
            if recipients
            else "queued again by the operator"
        )
        return await self.outbox.requeue(item_id, now, statuses=statuses, detail=detail)
