"""The batched fan-out ledger: several workers (daemons) share one broadcast by leased batch
claims; a recipient is `sending` only while its request may be in flight, so a dead worker
leaves at most those uncertain, and nobody gets a message twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.fanout import RecipientOutcome
from bot.fanout_batches import BatchLedger, BatchWorker, Deliver, LostClaim, pack_ids, unpack_ids
from bot.store import Store
from tests.fakes import Clock

AUDIENCE = [*range(1, 1200), 5000, 70_000, 2**40]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    await store.migrate()
    yield store
    await store.close()


class Receiver:
    def __init__(self) -> None:
        self.got: Counter[int] = Counter()
        self.by: Counter[str] = Counter()

    def preparer(self, name: str, gate: asyncio.Event | None = None, hold: int | None = None):  # type: ignore[no-untyped-def]
        async def prepare(ids: Sequence[int]) -> Deliver:
            async def deliver(r: int) -> RecipientOutcome:
                if r == hold and gate is not None:
                    await gate.wait()  # in flight until the gate opens (or the worker dies)
                await asyncio.sleep(0)
                self.got[r] += 1
                self.by[name] += 1
                return RecipientOutcome(r, "gone" if r == 5000 else "sent")

            return deliver

        return prepare


def worker(store: Store, clock: Clock, holder: str, **kw: float) -> BatchWorker:
    return BatchWorker(BatchLedger(store.db), "push", clock, holder, concurrency=8, batch_size=100, **kw)  # type: ignore[arg-type]


def test_recipient_ids_pack_and_unpack() -> None:
    for ids in ([], [1], AUDIENCE, list(range(10**6, 10**6 + 1000, 7))):
        assert unpack_ids(pack_ids(ids)) == ids
    assert len(pack_ids(list(range(1, 1001)))) < 100  # consecutive ids: a few bytes, not 8,000


async def test_two_workers_share_one_broadcast_exactly_once(store: Store) -> None:
    clock, receiver = Clock(datetime(2026, 11, 29, 9, tzinfo=UTC)), Receiver()
    owner, helper = worker(store, clock, "a"), worker(store, clock, "b")

    async def audience() -> list[int]:
        return AUDIENCE

    async def help() -> int:
        while not await owner.ledger.planned("siar-1"):  # noqa: ASYNC110 (a poll, like a daemon)
            await asyncio.sleep(0)
        done, _, _ = await helper.work(receiver.preparer("b"), key="siar-1")
        return done

    result, helped = await asyncio.gather(
        owner.run("siar-1", audience, b"message", receiver.preparer("a")), help()
    )
    assert set(receiver.got) == set(AUDIENCE) and set(receiver.got.values()) == {1}
    assert receiver.by["a"] > 0 and receiver.by["b"] > 0 and helped == receiver.by["b"]
    assert result.planned == len(AUDIENCE) and result.remaining == 0
    assert result.counts == {"sent": len(AUDIENCE) - 1, "gone": 1}
    assert await owner.ledger.message("siar-1") == b"message"
    assert await store.fanout.counts("siar-1") == result.counts  # `siar why` sees batched progress
    states = await owner.ledger.states("siar-1")
    assert states[5000] == "gone" and states[2**40] == "sent" and len(states) == len(AUDIENCE)
    # few row writes: one per flush of a batch, not per recipient
    assert owner.ledger.rows_written + helper.ledger.rows_written < len(AUDIENCE) / 2


async def test_a_dead_workers_batch_is_taken_over_after_its_lease(store: Store) -> None:
    clock, receiver = Clock(datetime(2026, 11, 29, 9, tzinfo=UTC)), Receiver()
    gate = asyncio.Event()
    dying = worker(store, clock, "dying", lease=60)

    async def audience() -> list[int]:
        return AUDIENCE[:300]

    # The first worker plans, claims batch 0 and dies while the request to recipient 7 is in flight.
    task = asyncio.create_task(dying.run("siar-1", audience, b"m", receiver.preparer("dying", gate, hold=7)))
    for _ in range(1000):
        await asyncio.sleep(0.01)
        if receiver.by["dying"] >= 99:  # all of batch 0 but recipient 7
            break
    states = await dying.ledger.states("siar-1")
    assert states[7] == "sending"
    task.cancel()  # ...but as a kill: nothing may run after it, so the lease stays with "dying"
    dying.ledger.release = _killed  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await task
    in_flight = [r for r, s in (await dying.ledger.states("siar-1")).items() if s == "sending"]
    assert 7 in in_flight and len(in_flight) <= 8  # at most its requests in flight (concurrency)
    heir = worker(store, clock, "heir", lease=60)
    clock.advance(30)
    result = await heir.run("siar-1", audience, b"m", receiver.preparer("heir"), budget=1, wait=0.01)
    assert result.remaining > 0 and receiver.got[7] == 0  # the dead worker's lease still holds
    assert await heir.ledger.busy_elsewhere("siar-1", clock())
    clock.advance(31)  # the dead worker's leases have expired
    result = await heir.run("siar-1", audience, b"m", receiver.preparer("heir"))
    n = len(in_flight)
    assert result.remaining == 0 and result.lost == n
    assert result.counts == {"sent": 300 - n, "uncertain": n}
    assert receiver.got[7] == 0 and set(receiver.got.values()) == {1}  # never twice
    assert sum(receiver.got.values()) == 300 - n  # those in flight were cut off
    assert {r for r, s in (await heir.ledger.states("siar-1")).items() if s == "uncertain"} == set(in_flight)
    details = await heir.ledger.details("siar-1")  # why each one is not sent: kept per batch
    assert set(details) == set(in_flight) and "in flight" in details[7]
    # `siar resend`: the uncertain recipients go again, nobody else
    assert await store.fanout.uncertain_by_channel() == {"push": n}
    assert await store.fanout.requeue_uncertain("siar-1", clock()) == n
    result = await heir.run("siar-1", audience, b"m", receiver.preparer("heir"))
    assert result.counts == {"sent": 300} and receiver.got[7] == 1
    assert sum(receiver.got.values()) == 300


async def _killed(*args: object, **kw: object) -> None:
    """Stands for a process killed before it could let its batch go."""


async def test_a_worker_that_lost_its_lease_writes_nothing_more(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 29, 9, tzinfo=UTC))
    ledger = BatchLedger(store.db)
    await ledger.plan("siar-1", "push", [1, 2, 3], b"m", 10, clock())
    slow = await ledger.claim("push", "slow", clock(), 10)
    assert slow is not None and await ledger.claim("push", "fast", clock(), 10) is None
    clock.advance(11)
    fast = await ledger.claim("push", "fast", clock(), 10)
    assert fast is not None and fast.number == slow.number
    slow.states[0] = ord("S")
    with pytest.raises(LostClaim):
        await ledger.save(slow, "slow", clock(), 10)
    assert (await ledger.states("siar-1"))[1] == "pending"


async def test_retry_answers_let_the_batch_go_until_the_service_allows(store: Store) -> None:
    clock = Clock(datetime(2026, 11, 29, 9, tzinfo=UTC))
    w = worker(store, clock, "a")
    asked: Counter[int] = Counter()

    async def prepare(ids: Sequence[int]) -> Deliver:
        async def deliver(r: int) -> RecipientOutcome:
            asked[r] += 1
            if r == 2 and asked[r] == 1:
                return RecipientOutcome(r, "retry", "503", retry_after=120)
            return RecipientOutcome(r, "sent")

        return deliver

    async def audience() -> list[int]:
        return [1, 2, 3]

    result = await w.run("siar-1", audience, b"m", prepare, budget=2, wait=0.01)
    assert result.counts == {"sent": 2, "pending": 1} and result.retry_after == 120
    assert await w.ledger.claim("push", "b", clock(), 10) is None  # not before 120 s
    clock.advance(120)
    result = await w.run("siar-1", audience, b"m", prepare)
    assert result.counts == {"sent": 3} and asked == Counter({1: 1, 2: 2, 3: 1})
