"""Several daemons on one PostgreSQL, no coordinator: who polls which feed, and who is alive.

- **Feed leases.** A daemon polls a feed only while it holds the feed's lease: one row per feed
  (`feed_leases`: holder, expiry), taken or renewed by ONE atomic statement that succeeds only
  when the lease is free, expired or already ours (`INSERT … ON CONFLICT DO UPDATE … WHERE`).
  The holder renews it at each poll for `lease_intervals` intervals; a dead daemon's leases
  expire and the next daemon whose schedule fires takes them. So each feed is polled by one
  daemon per interval, and a crash costs at most `lease_intervals` intervals of that feed.
- **The heartbeat.** Every `heartbeat` seconds a live daemon stamps `claimed_at` on its own
  `sending` outbox rows (a broadcast is one such row, however long it runs), and takes over
  the rows of daemons silent for `takeover_after`: `Outbox.recover_sending` makes them pending
  (resumable channels: the fan-out ledger resumes where the dead daemon stopped, its in-flight
  recipients uncertain) or uncertain (everything else: never sent twice).

On SQLite there is one daemon (`bot.lock.StoreLock`): every lease is ours without a query and
there is nobody to take over from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.budgets import RateBudgets
from bot.db import Database
from bot.outbox import Outbox
from bot.schema import UTCDateTime, feed_leases, outbox

log = logging.getLogger("siar.cluster")
PRUNE_EVERY = 360  # beats between prunings of idle rate buckets (an hour at 10 s)


# One statement, prepared once (building it per poll cost more CPU than the poll's own queries).
_TAKE = text(
    "INSERT INTO feed_leases (feed, holder, expires_at, polled_at) VALUES (:feed, :holder, :expires, :now) "
    "ON CONFLICT (feed) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at, "
    "polled_at = EXCLUDED.polled_at "
    "WHERE feed_leases.expires_at <= :now "
    "OR (feed_leases.holder = :holder AND feed_leases.polled_at <= :due) RETURNING holder"
).bindparams(
    bindparam("expires", type_=UTCDateTime()),
    bindparam("now", type_=UTCDateTime()),
    bindparam("due", type_=UTCDateTime()),
)


CLOCK_SLACK = 0.05  # seconds: the database's timestamps round; an on-time poll is never "early"


class FeedLeases:
    """The `feed_leases` table as seen by one daemon (`holder`)."""

    def __init__(self, db: Database, holder: str, lease_intervals: float = 2.0) -> None:
        self.db = db
        self.holder = holder
        self.lease_intervals = lease_intervals
        self._mine: set[str] = set()  # feeds whose lease this daemon took last
        self._auto = db.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def take(self, feed: str, interval: float, now: datetime) -> bool:
        """True when this daemon may poll `feed` now: the lease was free or expired, or is ours
        and our last poll was at least `interval` ago; it is now ours until `lease_intervals`
        intervals from `now`. One statement, atomic."""
        if self.db.is_sqlite:
            return True
        expires = now + timedelta(seconds=interval * self.lease_intervals)
        due = now - timedelta(seconds=interval - CLOCK_SLACK)
        values = {"feed": feed, "holder": self.holder, "expires": expires, "now": now, "due": due}
        async with self._auto.connect() as conn:  # one statement, its own transaction
            taken = (await conn.execute(_TAKE, values)).first()
        if taken is not None:
            self._mine.add(feed)
        return taken is not None

    async def early(self, feed: str, interval: float, now: datetime) -> float:
        """Seconds until this daemon, holding `feed`'s lease, may poll it again (a poll that
        started late must not make the next one come early); 0 when the lease is not ours."""
        if self.db.is_sqlite or feed not in self._mine:
            return 0.0
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(feed_leases.c.holder, feed_leases.c.polled_at).where(feed_leases.c.feed == feed)
                )
            ).first()
        if row is None or row.holder != self.holder or row.polled_at is None:
            self._mine.discard(feed)
            return 0.0
        return max(0.0, float((row.polled_at - now).total_seconds()) + interval)

    async def release(self, intervals: Mapping[str, float]) -> int:
        """At a clean shutdown: our leases end one interval after our last poll of each feed
        (not `lease_intervals`), so another daemon takes over without a double poll."""
        if self.db.is_sqlite:
            return 0
        async with self.db.write() as conn:
            mine = (
                await conn.execute(
                    select(feed_leases.c.feed, feed_leases.c.polled_at).where(
                        feed_leases.c.holder == self.holder
                    )
                )
            ).all()
            rows = [
                {"b_feed": r.feed, "b_expires": r.polled_at + timedelta(seconds=intervals[r.feed])}
                for r in mine
                if r.feed in intervals and r.polled_at is not None
            ]
            if rows:
                await conn.execute(
                    update(feed_leases)
                    .where(feed_leases.c.feed == bindparam("b_feed"), feed_leases.c.holder == self.holder)
                    .values(expires_at=bindparam("b_expires", type_=feed_leases.c.expires_at.type)),
                    rows,
                )
        return len(rows)

    async def holders(self) -> dict[str, tuple[str, datetime]]:
        """{feed: (holder, expires_at)} (`siar status`, tests)."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(feed_leases))).all()
        return {r.feed: (r.holder, r.expires_at) for r in rows}


class Heartbeat:
    """Keeps this daemon's `sending` rows fresh and takes over those of silent daemons."""

    def __init__(
        self,
        db: Database,
        outbox_: Outbox,
        worker: str,
        takeover_after: float,
        resumable: Callable[[], Mapping[str, float | None]],
    ) -> None:
        self.db = db
        self.outbox = outbox_
        self.worker = worker
        self.takeover_after = takeover_after
        self.resumable = resumable  # channel -> resume window, read at each beat (reloads)
        self._beats = 0
        # Our own connection for the refresh: a pool drained by 200 polls must not make a live
        # daemon look dead.
        self._engine: AsyncEngine | None = None

    async def refresh(self, now: datetime) -> int:
        """Stamp `claimed_at` on this daemon's `sending` rows; how many it has in flight."""
        if self.db.is_sqlite:
            return 0
        if self._engine is None:
            self._engine = create_async_engine(self.db.url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        async with self._engine.begin() as conn:
            done = await conn.execute(
                update(outbox)
                .where(outbox.c.status == "sending", outbox.c.claimed_by == self.worker)
                .values(claimed_at=now)
            )
        return int(done.rowcount or 0)

    async def take_over(self, now: datetime) -> int:
        """Rows whose daemon has been silent for `takeover_after`: pending again on resumable
        channels, uncertain elsewhere (see `Outbox.recover_sending`); how many."""
        if self.db.is_sqlite:
            return 0
        stale = now - timedelta(seconds=self.takeover_after)
        taken = await self.outbox.recover_sending(now, stale, self.resumable())
        if taken:
            log.warning(
                "took over %d posts from a daemon silent for over %.0fs (resumable ones resume, "
                "the others are uncertain: see `siar status`)",
                taken,
                self.takeover_after,
            )
        return taken

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    async def beat(self, now: datetime) -> None:
        """Refresh ours, then take over the dead's (never raises: the next beat tries again)."""
        try:
            await self.refresh(now)
            await self.take_over(now)
            self._beats += 1
            if not self.db.is_sqlite and self._beats % PRUNE_EVERY == 0:
                await RateBudgets(self.db).prune()
        except Exception:
            log.exception("cluster heartbeat failed; trying again at the next one")
