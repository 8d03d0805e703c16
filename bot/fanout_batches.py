"""Fan-out progress in batches: one row per `batch_size` recipients, for audiences of millions.

`bot.fanout` keeps a row per recipient: three row writes per message (the plan's insert, the
`sending` mark, the outcome) and ~150 bytes of table and index per recipient and story. For a
million browser subscriptions that is 3 million row writes and ~150 MB per story
(benchmarks/README.md, "web push"). Here a broadcast is one `fanout_broadcasts` row (the
message every batch sends, so any daemon can help) and one `fanout_batches` row per batch:
its recipients (delta-encoded ids, compressed) and one state byte per recipient (compressed):

    p pending   s sending (its request may have left)   S sent   f failed   g gone   u uncertain

The invariant is the per-recipient ledger's: a recipient is `s` only while its request may be
in flight. The batch's holder marks recipients `s` before their requests leave and records
outcomes, both in the same row, with group commit: each flush is ONE row update covering every
mark and outcome gathered while the previous flush ran. After a kill, only `s` recipients are
in doubt; whoever claims the batch next (its lease expired) turns them into `u`, never sent
again automatically, and carries on with the `p` ones.

Several daemons share a broadcast: each claims one batch at a time (`UPDATE … WHERE lease
expired`, `FOR UPDATE SKIP LOCKED` on PostgreSQL) with a lease that every flush renews; a
flush by a holder that lost its lease changes nothing and stops its work on that batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db import Database
from bot.fanout import FanoutResult, RecipientOutcome
from bot.metrics import Metrics, NullMetrics
from bot.schema import fanout_batches, fanout_broadcasts

log = logging.getLogger("siar.fanout")
Clock = Callable[[], datetime]

PENDING, SENDING, SENT, FAILED, GONE, UNCERTAIN = b"psSfgu"
_FINAL = {"sent": SENT, "failed": FAILED, "gone": GONE}
_NAMES = {
    PENDING: "pending",
    SENDING: "sending",
    SENT: "sent",
    FAILED: "failed",
    GONE: "gone",
    UNCERTAIN: "uncertain",
}


class LostClaim(Exception):
    """Another daemon took over this batch (our lease had expired): stop working on it."""


def pack_ids(ids: Sequence[int]) -> bytes:
    """Ascending recipient ids, delta-encoded and compressed (consecutive ids: ~1 bit each)."""
    deltas = array("q", (b - a for a, b in zip((0, *ids[:-1]), ids, strict=False)))
    return zlib.compress(deltas.tobytes(), 6)


def unpack_ids(blob: bytes) -> list[int]:
    deltas = array("q")
    deltas.frombytes(zlib.decompress(blob))
    out, total = [], 0
    for d in deltas:
        total += d
        out.append(total)
    return out


def _pack(states: bytes | bytearray) -> bytes:
    return zlib.compress(bytes(states), 1)


def _unpack(blob: bytes) -> bytearray:
    return bytearray(zlib.decompress(blob))


@dataclass
class Batch:
    """One claimed batch: its recipients and their states, as this holder sees them."""

    key: str
    number: int
    recipients: list[int]
    states: bytearray
    attempts: bytearray
    lost: int = 0  # recipients found `sending` when claimed: now uncertain
    details: dict[int, str] = field(default_factory=dict)  # index -> why (not sent ones only)


def _counters(states: bytearray) -> dict[str, int]:
    c = Counter(states)
    return {
        "n_sent": c[SENT],
        "n_failed": c[FAILED],
        "n_gone": c[GONE],
        "n_uncertain": c[UNCERTAIN],
        "n_open": c[PENDING] + c[SENDING],
    }


class BatchLedger:
    """The `fanout_broadcasts` and `fanout_batches` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.rows_written = 0  # batch rows inserted or updated by this process (benchmarks)

    async def message(self, key: str) -> bytes | None:
        """What broadcast `key` sends (the channel's own encoding), None if it has no plan."""
        async with self.db.read() as conn:
            return (
                await conn.execute(select(fanout_broadcasts.c.message).where(fanout_broadcasts.c.key == key))
            ).scalar_one_or_none()

    async def planned(self, key: str) -> int:
        async with self.db.read() as conn:
            n = (
                await conn.execute(select(fanout_broadcasts.c.planned).where(fanout_broadcasts.c.key == key))
            ).scalar_one_or_none()
        return int(n or 0)

    async def plan(
        self,
        key: str,
        channel: str,
        recipients: Sequence[int],
        message: bytes,
        batch_size: int,
        now: datetime,
    ) -> int:
        """Fix the audience of `key` once, in batches of `batch_size`; returns its size."""
        ids = sorted(set(recipients))
        async with self.db.write() as conn:
            existing = (
                await conn.execute(select(fanout_broadcasts.c.planned).where(fanout_broadcasts.c.key == key))
            ).scalar_one_or_none()
            if existing is not None:
                return int(existing)
            await conn.execute(
                insert(fanout_broadcasts).values(
                    key=key, channel=channel, message=message, planned=len(ids), created_at=now
                )
            )
            rows = []
            for number, start in enumerate(range(0, len(ids), batch_size)):
                chunk = ids[start : start + batch_size]
                rows.append(
                    {
                        "key": key,
                        "batch": number,
                        "channel": channel,
                        "size": len(chunk),
                        "recipients": pack_ids(chunk),
                        "states": _pack(bytes([PENDING]) * len(chunk)),
                        "attempts": _pack(bytes(len(chunk))),
                        "status": "open",
                        "holder": None,
                        "claimed_until": None,
                        "updated_at": now,
                        **_counters(bytearray([PENDING]) * len(chunk)),
                    }
                )
            for start in range(0, len(rows), 500):
                await conn.execute(insert(fanout_batches), rows[start : start + 500])
            self.rows_written += len(rows) + 1
        return len(ids)

    async def claim(
        self, channel: str, holder: str, now: datetime, lease: float, key: str | None = None
    ) -> Batch | None:
        """Take the first open batch of `channel` (of broadcast `key` if given) that nobody
        holds or whose lease has expired; its `sending` recipients become uncertain."""
        b = fanout_batches.c
        free = and_(
            b.channel == channel, b.status == "open", or_(b.claimed_until.is_(None), b.claimed_until <= now)
        )
        if key is not None:
            free = and_(free, b.key == key)
        query = select(b.key, b.batch).where(free).order_by(b.key, b.batch).limit(1)
        async with self.db.write() as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            found = (await conn.execute(query)).first()
            if found is None:
                return None
            row = (
                await conn.execute(
                    update(fanout_batches)
                    .where(b.key == found.key, b.batch == found.batch, free)
                    .values(holder=holder, claimed_until=now + timedelta(seconds=lease), updated_at=now)
                    .returning(b.recipients, b.states, b.attempts, b.details)
                )
            ).first()
            if row is None:  # taken between the select and the update (SQLite has no row locks)
                return None
            batch = Batch(
                found.key,
                found.batch,
                unpack_ids(row.recipients),
                _unpack(row.states),
                _unpack(row.attempts),
                details={int(k): v for k, v in json.loads(row.details or "{}").items()},
            )
            batch.lost = batch.states.count(SENDING)
            if batch.lost:
                for i, state in enumerate(batch.states):
                    if state == SENDING:
                        batch.details[i] = (
                            "in flight when its daemon stopped; not sent again (it may have arrived)"
                        )
                batch.states = batch.states.replace(bytes([SENDING]), bytes([UNCERTAIN]))
                await self._save(conn, batch, holder, now, lease)
            self.rows_written += 1
        return batch

    async def save(
        self, batch: Batch, holder: str, now: datetime, lease: float, *, release: bool = False
    ) -> None:
        """Write `batch`'s states (one row update) and renew the lease, or give the batch up
        (`release`: anyone may claim it again). LostClaim if another daemon holds it now."""
        async with self.db.write() as conn:
            await self._save(conn, batch, holder, now, lease, release=release)

    async def _save(
        self,
        conn: AsyncConnection,
        batch: Batch,
        holder: str,
        now: datetime,
        lease: float,
        *,
        release: bool = False,
        not_before: datetime | None = None,
    ) -> None:
        b = fanout_batches.c
        counters = _counters(batch.states)
        done = await conn.execute(
            update(fanout_batches)
            .where(b.key == batch.key, b.batch == batch.number, b.holder == holder)
            .values(
                states=_pack(batch.states),
                attempts=_pack(batch.attempts),
                details=json.dumps(batch.details) if batch.details else None,
                status="open" if counters["n_open"] else "done",
                holder=None if release else holder,
                claimed_until=not_before if release else now + timedelta(seconds=lease),
                updated_at=now,
                **counters,
            )
        )
        self.rows_written += 1
        if not done.rowcount:
            raise LostClaim(f"batch {batch.number} of {batch.key} is held by another daemon now")

    async def release(self, batch: Batch, holder: str, now: datetime, not_before: datetime | None) -> None:
        """Save `batch` and let anyone claim it again (not before `not_before`)."""
        async with self.db.write() as conn:
            await self._save(conn, batch, holder, now, 0, release=True, not_before=not_before)

    async def counts(self, key: str) -> dict[str, int]:
        """Recipients of `key` per state (pending counts those `sending` too)."""
        b = fanout_batches.c
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        func.coalesce(func.sum(b.n_sent), 0),
                        func.coalesce(func.sum(b.n_failed), 0),
                        func.coalesce(func.sum(b.n_gone), 0),
                        func.coalesce(func.sum(b.n_uncertain), 0),
                        func.coalesce(func.sum(b.n_open), 0),
                    ).where(b.key == key)
                )
            ).one()
        names = ("sent", "failed", "gone", "uncertain", "pending")
        return {name: int(n) for name, n in zip(names, row, strict=True) if n}

    async def states(self, key: str) -> dict[int, str]:
        """Every recipient of `key` and its state (tests, `siar status` of one broadcast)."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(fanout_batches.c.recipients, fanout_batches.c.states).where(
                        fanout_batches.c.key == key
                    )
                )
            ).all()
        out: dict[int, str] = {}
        for row in rows:
            out.update(zip(unpack_ids(row.recipients), (_NAMES[s] for s in _unpack(row.states)), strict=True))
        return out

    async def open_keys(self, channel: str, now: datetime) -> list[str]:
        """Broadcasts of `channel` with a batch anyone may claim now, oldest first."""
        b = fanout_batches.c
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(b.key)
                .where(
                    b.channel == channel,
                    b.status == "open",
                    or_(b.claimed_until.is_(None), b.claimed_until <= now),
                )
                .group_by(b.key)
                .order_by(b.key)
            )
            return list(rows.scalars())

    async def details(self, key: str) -> dict[int, str]:
        """Why recipients of `key` were not (yet) sent to: recipient -> the last answer."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(fanout_batches.c.recipients, fanout_batches.c.details).where(
                        fanout_batches.c.key == key, fanout_batches.c.details.is_not(None)
                    )
                )
            ).all()
        out: dict[int, str] = {}
        for row in rows:
            ids = unpack_ids(row.recipients)
            out.update({ids[int(i)]: why for i, why in json.loads(row.details).items()})
        return out

    async def busy_elsewhere(self, key: str, now: datetime) -> bool:
        """True while another daemon holds an unexpired lease on a batch of `key`."""
        b = fanout_batches.c
        async with self.db.read() as conn:
            n = (
                await conn.execute(
                    select(func.count()).where(
                        b.key == key, b.status == "open", b.holder.is_not(None), b.claimed_until >= now
                    )
                )
            ).scalar_one()
        return bool(n)


async def requeue_uncertain(conn: AsyncConnection, key: str, now: datetime) -> int:
    """Uncertain recipients of `key`'s batches back to pending (an operator's resend)."""
    b = fanout_batches.c
    rows = (
        await conn.execute(select(b.batch, b.states, b.attempts).where(b.key == key, b.n_uncertain > 0))
    ).all()
    total = 0
    for row in rows:
        states, attempts = _unpack(row.states), _unpack(row.attempts)
        for i, s in enumerate(states):
            if s == UNCERTAIN:
                states[i], attempts[i] = PENDING, 0
                total += 1
        await conn.execute(
            update(fanout_batches)
            .where(b.key == key, b.batch == row.batch)
            .values(
                states=_pack(states),
                attempts=_pack(attempts),
                status="open",
                holder=None,
                claimed_until=None,
                updated_at=now,
                **_counters(states),
            )
        )
    return total


async def uncertain_by_channel(conn: AsyncConnection) -> dict[str, int]:
    b = fanout_batches.c
    rows = (
        await conn.execute(
            select(b.channel, func.sum(b.n_uncertain)).where(b.n_uncertain > 0).group_by(b.channel)
        )
    ).all()
    return {channel: int(n) for channel, n in rows}


# --- working batches ---------------------------------------------------------------------------

Deliver = Callable[[int], Awaitable[RecipientOutcome]]
Prepare = Callable[[Sequence[int]], Awaitable[Deliver]]
Apply = Callable[[Sequence[RecipientOutcome]], Awaitable[None]]


class _BatchJournal:
    """Group commit for one batch: `begin` returns once the recipient's `s` is written;
    outcomes ride along with the next write. One flush = one row update."""

    def __init__(self, worker: BatchWorker, batch: Batch) -> None:
        self.worker, self.batch = worker, batch
        self._waiting: list[asyncio.Future[None]] = []
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.flushes = 0

    async def begin(self, index: int) -> None:
        if self.error is not None:
            raise self.error
        self.batch.states[index] = SENDING
        self.batch.attempts[index] = min(255, self.batch.attempts[index] + 1)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._dirty = True
        self._kick()
        await future

    def record(self, index: int, outcome: RecipientOutcome) -> None:
        states, max_tries = self.batch.states, self.worker.max_tries
        final = _FINAL.get(outcome.status)
        if outcome.status == "sent":
            self.batch.details.pop(index, None)
        else:
            self.batch.details[index] = outcome.detail[:300]
        if final is not None:
            states[index] = final
        elif outcome.status == "uncertain":
            states[index] = UNCERTAIN
        else:  # retry (moved is a Telegram matter: push subscriptions do not move)
            states[index] = FAILED if self.batch.attempts[index] >= max_tries else PENDING
        self._dirty = True
        self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        worker = self.worker
        while self._dirty and self.error is None:
            waiting, self._waiting, self._dirty = self._waiting, [], False
            try:
                await worker.ledger.save(self.batch, worker.holder, worker.clock(), worker.lease)
            except Exception as exc:  # LostClaim, the database: nothing more leaves for this batch
                self.error = exc
                for future in waiting + self._waiting:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, LostClaim):
                    log.exception("fan-out %s: cannot record progress", self.batch.key)
                return
            self.flushes += 1
            for future in waiting:
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        if self._dirty and self.error is None:
            self._kick()
            await self.close()


@dataclass
class BatchWorker:
    """Claims batches and sends to their recipients; one per channel and process."""

    ledger: BatchLedger
    channel: str
    clock: Clock
    holder: str
    concurrency: int = 64
    batch_size: int = 1000
    max_tries: int = 5
    lease: float = 60.0  # a holder silent this long is presumed dead; each flush renews it
    metrics: Metrics = field(default_factory=NullMetrics)
    pushed: int = 0  # requests made by this worker (benchmarks)
    flushes: int = 0

    async def run(
        self,
        key: str,
        audience: Callable[[], Awaitable[Sequence[int]]],
        message: bytes,
        prepare: Prepare,
        *,
        apply: Apply | None = None,
        budget: float | None = None,
        wait: float = 0.5,
    ) -> FanoutResult:
        """Plan `key` once (its audience and `message`), then work its batches, with any
        other daemon that helps, until all are done or `budget` seconds have passed."""
        deadline = None if budget is None else time.monotonic() + budget
        planned = await self.ledger.planned(key)
        if not planned:
            planned = await self.ledger.plan(
                key, self.channel, list(await audience()), message, self.batch_size, self.clock()
            )
        progressed, lost, retry_after = await self.work(prepare, apply=apply, key=key, deadline=deadline)
        while not _past(deadline) and await self.ledger.busy_elsewhere(
            key, self.clock()
        ):  # others hold batches: wait for them, or for their leases to expire and take over
            await asyncio.sleep(wait)
            more = await self.work(prepare, apply=apply, key=key, deadline=deadline)
            progressed, lost = progressed + more[0], lost + more[1]
        counts = await self.ledger.counts(key)
        return FanoutResult(planned, counts, progressed, lost, retry_after)

    async def work(
        self,
        prepare: Prepare,
        *,
        apply: Apply | None = None,
        key: str | None = None,
        deadline: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> tuple[int, int, float | None]:
        """Claim and send batches (of `key`, or of any broadcast of the channel) while there
        are some; the next batch is claimed once every recipient of the current one started,
        so the requests in flight never drain between batches. Returns (recipients finished,
        recipients found in flight from a dead holder, the longest Retry-After asked)."""
        semaphore = asyncio.Semaphore(self.concurrency)
        totals = [0, 0]
        waits: list[float] = []
        async with asyncio.TaskGroup() as group:
            while not _past(deadline) and not (stop is not None and stop()):
                batch = await self.ledger.claim(self.channel, self.holder, self.clock(), self.lease, key)
                if batch is None:
                    break
                if batch.lost:
                    log.warning(
                        "channel %s: %d recipients of %s were in flight when their daemon stopped; "
                        "not sent again (see `siar status`; `siar resend` sends to them)",
                        self.channel,
                        batch.lost,
                        batch.key,
                    )
                started = asyncio.Event()
                group.create_task(self._batch(batch, prepare, apply, semaphore, started, totals, waits))
                await started.wait()
        return totals[0], totals[1], max(waits) if waits else None

    async def _batch(
        self,
        batch: Batch,
        prepare: Prepare,
        apply: Apply | None,
        semaphore: asyncio.Semaphore,
        started: asyncio.Event,
        totals: list[int],
        waits: list[float],
    ) -> None:
        journal = _BatchJournal(self, batch)
        results: list[RecipientOutcome] = []
        todo = [i for i, s in enumerate(batch.states) if s == PENDING]
        completed = False
        try:
            try:
                deliver = await prepare([batch.recipients[i] for i in todo])

                async def one(index: int) -> None:
                    try:
                        await journal.begin(index)
                        outcome = await deliver(batch.recipients[index])
                    finally:
                        semaphore.release()
                    journal.record(index, outcome)
                    results.append(outcome)

                async with asyncio.TaskGroup() as group:
                    for index in todo:
                        await semaphore.acquire()
                        if journal.error is not None:
                            semaphore.release()
                            break
                        group.create_task(one(index))
                    started.set()
            except* LostClaim:
                log.warning(
                    "channel %s: batch %d of %s was taken over; left to its new holder",
                    self.channel,
                    batch.number,
                    batch.key,
                )
            completed = True
        finally:
            started.set()
            # Also when cancelled (shutdown, send_timeout): what started is written, and the
            # batch is let go at once, so a restart resumes it without waiting for the lease.
            await asyncio.shield(self._finish(batch, journal, results, completed, totals, waits))
        for status, n in Counter(o.status for o in results).items():
            self.metrics.fanout(self.channel, status, n)
        if apply is not None and results:
            try:
                await asyncio.shield(apply(results))
            except Exception:  # the ledger has the outcomes; side effects are best effort
                log.exception("channel %s: cannot apply a batch's outcomes", self.channel)
        if journal.error is not None and not isinstance(journal.error, LostClaim):
            raise journal.error

    async def _finish(
        self,
        batch: Batch,
        journal: _BatchJournal,
        results: list[RecipientOutcome],
        completed: bool,
        totals: list[int],
        waits: list[float],
    ) -> None:
        await journal.close()
        self.flushes += journal.flushes
        self.pushed += len(results)
        totals[0] += sum(1 for o in results if o.status in _FINAL)
        totals[1] += batch.lost
        waits += [o.retry_after for o in results if o.retry_after is not None]
        if journal.error is not None:
            return
        if completed and not batch.states.count(PENDING):
            return  # the last flush marked it done
        now, not_before = self.clock(), None
        if completed:  # asked to retry later: let go until then
            delay = max((o.retry_after or 0 for o in results if o.status == "retry"), default=0)
            not_before = now + timedelta(seconds=delay or 30.0)
        try:
            await self.ledger.release(batch, self.holder, now, not_before)
        except LostClaim:
            pass


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
