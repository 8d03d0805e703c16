"""One fan-out ledger for every channel that sends one story to many recipients (Telegram
readers, browser push subscriptions): who is to get broadcast `key`, and how far it got.

A recipient row moves `pending -> sending -> sent | failed | gone | uncertain`. It is marked
`sending` only right before its own request leaves (after its `pace`, which may hand out its
turn a little ahead; `Broadcaster` batches those marks, and the outcomes, into as few
transactions as the database's speed allows: group commit), so a kill
leaves at most the requests actually in flight `sending`; `abandon_in_flight` turns those into
`uncertain` (never sent again automatically: they may have arrived) and the rest resume.
Answers that may work later (5xx, flood control) put the row back to `pending`; after
`max_tries` it is `failed`. `siar resend` on a broadcast sends to its uncertain recipients only.

The outcome of each request is a value (`RecipientOutcome`); the broadcaster records it and
hands each batch's outcomes to the channel (`apply`) for effects on its own tables
(unsubscribing a reader who blocked the bot, removing an expired push subscription).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.channel import Permanent
from bot.db import Database
from bot.metrics import Metrics, NullMetrics
from bot.schema import fanout

log = logging.getLogger("siar.fanout")
Clock = Callable[[], datetime]
RecipientStatus = Literal["sent", "failed", "retry", "uncertain", "gone", "moved"]
DONE = ("sent", "failed", "gone")
CHUNK = 1000
OUTCOME_DELAY = 0.05  # seconds an outcome may wait to share the next `sending` mark's transaction

_WRITE = (
    update(fanout)
    .where(fanout.c.key == bindparam("b_key"), fanout.c.recipient == bindparam("b_recipient"))
    .values(
        status=bindparam("b_status"),
        remote_id=bindparam("b_remote"),
        detail=bindparam("b_detail"),
        updated_at=bindparam("b_now", type_=fanout.c.updated_at.type),
    )
)


@dataclass(frozen=True)
class RecipientOutcome:
    """What one request to one recipient came to."""

    recipient: int
    status: RecipientStatus  # retry: nothing arrived, try again later; moved: see moved_to
    detail: str = ""
    remote_id: str | None = None  # the platform's id of the message (later edits, deletes)
    retry_after: float | None = None
    moved_to: int | None = None  # the recipient's new id (a Telegram group became a supergroup)


@dataclass(frozen=True)
class FanoutResult:
    planned: int
    counts: dict[str, int]
    progressed: int  # recipients that reached a final state during this run
    lost: int  # found `sending` from an earlier, interrupted run: now uncertain
    retry_after: float | None = None  # the longest wait a recipient's platform asked for

    @property
    def remaining(self) -> int:
        return self.counts.get("pending", 0) + self.counts.get("sending", 0)

    def summary(self, noun: str = "recipients") -> str:
        c = self.counts
        gone = f"{c['gone']} gone, " if c.get("gone") else ""
        return (
            f"sent to {c.get('sent', 0)} of {self.planned} {noun}; {gone}"
            f"{c.get('failed', 0)} failed, {c.get('uncertain', 0)} uncertain"
        )


class FanoutLedger:
    """The `fanout` table: one row per (broadcast key, recipient)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def planned(self, key: str) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).where(fanout.c.key == key))).scalar_one())

    async def plan(self, key: str, channel: str, recipients: Sequence[int], now: datetime) -> int:
        """Fix the audience of broadcast `key` once (a resumed broadcast keeps its audience)."""
        async with self.db.write() as conn:
            existing = (await conn.execute(select(func.count()).where(fanout.c.key == key))).scalar_one()
            if existing:
                return int(existing)
            rows = [
                {
                    "key": key,
                    "recipient": r,
                    "channel": channel,
                    "status": "pending",
                    "attempts": 0,
                    "updated_at": now,
                }
                for r in dict.fromkeys(recipients)
            ]
            for start in range(0, len(rows), CHUNK):
                await conn.execute(insert(fanout), rows[start : start + CHUNK])
        return len(rows)

    async def abandon_in_flight(self, key: str, now: datetime) -> int:
        """Rows left `sending` by an interrupted run become `uncertain`; returns how many."""
        async with self.db.write() as conn:
            done = await conn.execute(
                update(fanout)
                .where(fanout.c.key == key, fanout.c.status == "sending")
                .values(
                    status="uncertain",
                    updated_at=now,
                    detail="in flight when siar stopped; not sent again (it may have arrived)",
                )
            )
        return int(done.rowcount or 0)

    async def give_up(self, key: str, max_tries: int, now: datetime) -> None:
        """Pending rows of `key` tried `max_tries` times already become `failed`."""
        async with self.db.write() as conn:
            await conn.execute(
                update(fanout)
                .where(fanout.c.key == key, fanout.c.status == "pending", fanout.c.attempts >= max_tries)
                .values(
                    status="failed",
                    updated_at=now,
                    detail=func.coalesce(fanout.c.detail, "") + f" (gave up after {max_tries} tries)",
                )
            )

    async def pending(self, key: str, after: int | None, limit: int) -> list[int]:
        """Up to `limit` pending recipients of `key` above `after`, in recipient order."""
        query = select(fanout.c.recipient).where(fanout.c.key == key, fanout.c.status == "pending")
        if after is not None:
            query = query.where(fanout.c.recipient > after)
        async with self.db.read() as conn:
            return list((await conn.execute(query.order_by(fanout.c.recipient).limit(limit))).scalars())

    async def write(
        self, key: str, sending: Sequence[int], outcomes: Sequence[RecipientOutcome], now: datetime
    ) -> None:
        """One transaction: mark `sending` (their requests leave now) and record `outcomes`."""
        if not sending and not outcomes:
            return
        async with self.db.write() as conn:
            for start in range(0, len(sending), CHUNK):
                await conn.execute(
                    update(fanout)
                    .where(
                        fanout.c.key == key,
                        fanout.c.recipient.in_(list(sending[start : start + CHUNK])),
                        fanout.c.status == "pending",
                    )
                    .values(status="sending", attempts=fanout.c.attempts + 1, updated_at=now)
                )
            simple = [o for o in outcomes if o.status != "moved"]
            if simple:
                await conn.execute(
                    _WRITE,
                    [
                        {
                            "b_key": key,
                            "b_recipient": o.recipient,
                            "b_status": "pending" if o.status == "retry" else o.status,
                            "b_remote": o.remote_id,
                            "b_detail": o.detail[:500] or None,
                            "b_now": now,
                        }
                        for o in simple
                    ],
                )
            for o in outcomes:
                if o.status == "moved" and o.moved_to is not None:
                    await _move(conn, key, o.recipient, o.moved_to, now)

    async def counts(self, key: str) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(fanout.c.status, func.count()).where(fanout.c.key == key).group_by(fanout.c.status)
                )
            ).all()
        if not rows:  # a batched broadcast (web push): `siar why` shows it the same way
            from bot.fanout_batches import BatchLedger  # it imports this module

            return await BatchLedger(self.db).counts(key)
        return {status: int(n) for status, n in rows}

    async def requeue_uncertain(self, key: str, now: datetime) -> int:
        """Uncertain recipients of `key` back to `pending` (an operator's resend)."""
        async with self.db.write() as conn:
            done = await conn.execute(
                update(fanout)
                .where(fanout.c.key == key, fanout.c.status == "uncertain")
                .values(status="pending", attempts=0, updated_at=now, detail="queued again by the operator")
            )
            from bot import fanout_batches  # it imports this module

            batched = await fanout_batches.requeue_uncertain(conn, key, now)
        return int(done.rowcount or 0) + batched

    async def uncertain_by_channel(self) -> dict[str, int]:
        """Recipients whose message may or may not have arrived, per channel."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(fanout.c.channel, func.count())
                    .where(fanout.c.status == "uncertain")
                    .group_by(fanout.c.channel)
                )
            ).all()
            from bot import fanout_batches  # it imports this module

            batched = await fanout_batches.uncertain_by_channel(conn)
        return dict(Counter({channel: int(n) for channel, n in rows}) + Counter(batched))

    async def sent_since(self, channel: str, since: datetime) -> int:
        """Messages of `channel` delivered to recipients since `since`."""
        async with self.db.read() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count()).where(
                            fanout.c.channel == channel,
                            fanout.c.status == "sent",
                            fanout.c.updated_at >= since,
                        )
                    )
                ).scalar_one()
            )

    async def prune(self, older_than: datetime) -> int:
        """Forget finished broadcasts' rows last touched before `older_than`."""
        async with self.db.write() as conn:
            done = await conn.execute(
                delete(fanout).where(
                    fanout.c.updated_at < older_than, fanout.c.status.in_((*DONE, "uncertain"))
                )
            )
        return int(done.rowcount or 0)


async def _move(conn: AsyncConnection, key: str, old: int, new: int, now: datetime) -> None:
    """Recipient `old` is now `new`: its row follows it, unless `new` is in the broadcast too."""
    taken = (
        await conn.execute(select(func.count()).where(fanout.c.key == key, fanout.c.recipient == new))
    ).scalar_one()
    if taken:
        await conn.execute(
            update(fanout)
            .where(fanout.c.key == key, fanout.c.recipient == old)
            .values(status="failed", detail=f"moved to {new}, already in this broadcast", updated_at=now)
        )
    else:
        await conn.execute(
            update(fanout)
            .where(fanout.c.key == key, fanout.c.recipient == old)
            .values(recipient=new, status="pending", updated_at=now, detail=f"moved from {old}")
        )


# --- the broadcast loop ------------------------------------------------------------------------

Deliver = Callable[[int], Awaitable[RecipientOutcome]]
Pace = Callable[[int], Awaitable[None]]
Apply = Callable[[Sequence[RecipientOutcome]], Awaitable[None]]
Prepare = Callable[[Sequence[int]], Awaitable[None]]


class _Journal:
    """Group commit of one broadcast's ledger writes: `begin` returns once the recipient is
    marked `sending`; `record` queues an outcome. One writer task flushes whatever has
    gathered while the previous transaction ran. Outcomes wait up to `OUTCOME_DELAY` for the
    next `begin` to share its transaction: a paced broadcast (one request every 35 ms at
    Telegram's rate) then writes one transaction per recipient, not two."""

    def __init__(self, ledger: FanoutLedger, key: str, clock: Clock) -> None:
        self.ledger, self.key, self.clock = ledger, key, clock
        self._begins: list[tuple[int, asyncio.Future[None]]] = []
        self._outcomes: list[RecipientOutcome] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None

    async def begin(self, recipient: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._begins.append((recipient, future))
        self._kick()
        await future

    def record(self, outcome: RecipientOutcome) -> None:
        self._outcomes.append(outcome)
        if self._timer is None and (self._task is None or self._task.done()):
            self._timer = asyncio.get_running_loop().call_later(OUTCOME_DELAY, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        first = True
        while self._begins or (first and self._outcomes):
            first = False
            begins, self._begins = self._begins, []
            outcomes, self._outcomes = self._outcomes, []
            try:
                await self.ledger.write(self.key, [r for r, _ in begins], outcomes, self.clock())
            except Exception as exc:  # nothing more goes out; unrecorded ones stay `sending`
                self.error = exc
                for _, future in begins:
                    if not future.done():
                        future.set_exception(exc)
                log.exception("fan-out %s: cannot record progress", self.key)
                return
            for _, future in begins:
                if not future.done():
                    future.set_result(None)
        if self._outcomes and self._timer is None:  # they came while writing: the next begin's
            self._timer = asyncio.get_running_loop().call_later(OUTCOME_DELAY, self._kick)

    async def close(self) -> None:
        """Wait until every recorded outcome is written (also when the caller is cancelled)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        if self._outcomes and self.error is None:
            self._kick()
            await self.close()


@dataclass
class Broadcaster:
    """Runs broadcast `key` through the ledger: plan once, resume, one request per recipient."""

    ledger: FanoutLedger
    channel: str
    clock: Clock
    concurrency: int = 8
    batch_size: int = 200
    max_tries: int = 4
    passes: int = 3  # rounds over recipients that asked to be retried, before the outbox retries
    metrics: Metrics = field(default_factory=NullMetrics)

    async def run(
        self,
        key: str,
        audience: Callable[[], Awaitable[Sequence[int]]],
        deliver: Deliver,
        *,
        pace: Pace | None = None,
        apply: Apply | None = None,
        prepare: Prepare | None = None,
        budget: float | None = None,
    ) -> FanoutResult:
        """Send to every planned recipient of `key` not yet done; the result counts them all.

        `audience` is asked only the first time (the plan is fixed then). `prepare(batch)` runs
        before each batch (load what its requests need in one query; the previous batch's last
        requests may still be in flight); `pace(r)` waits until a request to `r` may go;
        `deliver(r)` makes it (after the ledger marked it `sending`) and
        returns its outcome, or raises Permanent to stop the whole broadcast (revoked token):
        the recipients not yet started stay pending. After `budget` seconds no new batch
        starts: the caller resumes later (a broadcast longer than its send_timeout makes
        progress attempt after attempt instead of failing).
        """
        deadline = None if budget is None else time.monotonic() + budget
        planned = await self.ledger.planned(key)
        if not planned:
            planned = await self.ledger.plan(key, self.channel, list(await audience()), self.clock())
        lost = await self.ledger.abandon_in_flight(key, self.clock())
        if lost:
            log.warning(
                "channel %s: %d recipients of %s were in flight when siar stopped; not sent "
                "again (see `siar status`; `siar resend` sends to them)",
                self.channel,
                lost,
                key,
            )
        progressed, waits = 0, []
        for round_ in range(self.passes):
            await self.ledger.give_up(key, self.max_tries, self.clock())
            done, again = await self._pass(key, deliver, pace, apply, prepare, deadline)
            progressed += done
            waits += [o.retry_after for o in again if o.retry_after is not None]
            moved = sum(1 for o in again if o.status == "moved")  # a new id to send to: progress too
            if not again or done + moved == 0 or _past(deadline):
                break
            if moved == len(again):
                continue  # nothing failed: go on at once
            await asyncio.sleep(min(30.0, 0.5 * 2**round_))  # the platform is struggling
        await self.ledger.give_up(key, self.max_tries, self.clock())
        counts = await self.ledger.counts(key)
        return FanoutResult(planned, counts, progressed, lost, max(waits) if waits else None)

    async def _one(
        self,
        recipient: int,
        journal: _Journal,
        deliver: Deliver,
        pace: Pace | None,
        fatal: list[Permanent],
        results: list[RecipientOutcome],
    ) -> None:
        """One recipient: wait for its turn, mark it sending, make the request, note the outcome."""
        if fatal or journal.error:
            return
        if pace is not None:
            await pace(recipient)
        await journal.begin(recipient)
        try:
            outcome = await deliver(recipient)
        except Permanent as exc:  # nothing was delivered: this one stays to be done
            fatal.append(exc)
            outcome = RecipientOutcome(recipient, "retry", exc.reason)
        journal.record(outcome)
        results.append(outcome)

    async def _apply(self, apply: Apply | None, results: list[RecipientOutcome]) -> None:
        if apply is None or not results:
            return
        try:
            await asyncio.shield(apply(results))
        except Exception:  # the ledger has the outcomes; side effects are best effort
            log.exception("channel %s: cannot apply a batch's outcomes", self.channel)

    async def _pass(
        self,
        key: str,
        deliver: Deliver,
        pace: Pace | None,
        apply: Apply | None,
        prepare: Prepare | None,
        deadline: float | None,
    ) -> tuple[int, list[RecipientOutcome]]:
        journal = _Journal(self.ledger, key, self.clock)
        free = asyncio.Semaphore(self.concurrency)
        fatal: list[Permanent] = []
        finished: list[RecipientOutcome] = []  # outcomes not handed to `apply` yet
        done, retries, after = 0, [], None

        async def one(recipient: int) -> None:
            try:
                await self._one(recipient, journal, deliver, pace, fatal, finished)
            finally:
                free.release()

        async def settle() -> None:
            nonlocal done, retries
            results = finished[:]
            del finished[: len(results)]
            await self._apply(apply, results)
            for status, n in Counter(o.status for o in results if o.status != "moved").items():
                self.metrics.fanout(self.channel, status, n)
            done += sum(1 for o in results if o.status in DONE)
            retries += [o for o in results if o.status in ("retry", "moved")]

        # The next batch is read and started while the last requests of the previous one are in
        # flight: waiting for a batch to finish would leave the rate budget unused at every
        # batch's end.
        try:
            async with asyncio.TaskGroup() as group:
                while not fatal and journal.error is None and not _past(deadline):
                    batch = await self.ledger.pending(key, after, self.batch_size)
                    if not batch:
                        break
                    after = batch[-1]
                    if prepare is not None:
                        await prepare(batch)
                    for recipient in batch:
                        await free.acquire()
                        if fatal or journal.error is not None:
                            free.release()
                            break
                        group.create_task(one(recipient))
                    await settle()
        finally:
            await settle()
            await journal.close()
        if journal.error is not None:
            raise journal.error
        if fatal:
            raise fatal[0]
        return done, retries


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
