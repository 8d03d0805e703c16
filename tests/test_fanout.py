"""The fan-out ledger: a recipient is `sending` only while its own request is in flight, so a
kill leaves at most those uncertain, the rest resume, and nobody gets a message twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.channel import Permanent
from bot.fanout import Broadcaster, FanoutLedger, RecipientOutcome
from bot.feedstate import FeedState
from bot.normalize import story_key
from bot.outbox import Finish
from bot.store import Store
from bot.stories import NewStory
from bot.types import Decision, Story

NOW = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)
AUDIENCE = list(range(100, 160))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    await store.migrate()
    yield store
    await store.close()


class Receiver:
    """Counts what each recipient got; may hold requests open (in flight) until released."""

    def __init__(self) -> None:
        self.got: Counter[int] = Counter()
        self.in_flight: set[int] = set()
        self.gate: asyncio.Event | None = None
        self.busy = asyncio.Condition()

    async def deliver(self, recipient: int) -> RecipientOutcome:
        self.in_flight.add(recipient)
        async with self.busy:
            self.busy.notify_all()
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.got[recipient] += 1  # it arrived
            return RecipientOutcome(recipient, "sent", remote_id=f"m{recipient}")
        finally:
            self.in_flight.discard(recipient)


def broadcaster(store: Store, concurrency: int = 4, **kw: Any) -> Broadcaster:
    return Broadcaster(store.fanout, "readers", lambda: NOW, concurrency=concurrency, batch_size=10, **kw)


async def audience() -> list[int]:
    return AUDIENCE


async def test_a_broadcast_reaches_everyone_once_and_records_message_ids(store: Store) -> None:
    receiver = Receiver()
    result = await broadcaster(store).run("siar-1", audience, receiver.deliver)
    assert result.planned == 60 and result.counts == {"sent": 60} and result.progressed == 60
    assert set(receiver.got.values()) == {1} and len(receiver.got) == 60
    assert result.summary("readers") == "sent to 60 of 60 readers; 0 failed, 0 uncertain"


async def test_a_kill_leaves_only_the_requests_in_flight_uncertain(store: Store) -> None:
    receiver = Receiver()
    receiver.gate = asyncio.Event()
    run = asyncio.create_task(broadcaster(store, concurrency=4).run("siar-2", audience, receiver.deliver))
    async with receiver.busy:
        await receiver.busy.wait_for(lambda: len(receiver.in_flight) == 4)
    counts = await store.fanout.counts("siar-2")
    assert counts == {"pending": 56, "sending": 4}  # marked right before their own request, no more
    in_flight = set(receiver.in_flight)
    run.cancel()  # SIGKILL-like for the ledger: those four were never recorded
    with pytest.raises(asyncio.CancelledError):
        await run
    assert (await store.fanout.counts("siar-2"))["sending"] == 4

    receiver.gate = None  # the restart
    result = await broadcaster(store).run("siar-2", audience, receiver.deliver)
    assert result.lost == 4 and result.counts == {"sent": 56, "uncertain": 4}
    assert all(receiver.got[r] == 0 for r in in_flight)  # never sent twice (maybe never: uncertain)
    assert all(receiver.got[r] == 1 for r in AUDIENCE if r not in in_flight)


async def test_the_operator_resends_to_the_uncertain_ones_only(store: Store) -> None:
    ledger: FanoutLedger = store.fanout
    await ledger.plan("siar-3", "readers", AUDIENCE, NOW)
    await ledger.write("siar-3", [100, 101], [], NOW)  # in flight, then the process died
    receiver = Receiver()
    await broadcaster(store).run("siar-3", audience, receiver.deliver)
    assert receiver.got[100] == receiver.got[101] == 0
    assert await ledger.uncertain_by_channel() == {"readers": 2}
    assert await ledger.requeue_uncertain("siar-3", NOW) == 2
    second = Receiver()
    result = await broadcaster(store).run("siar-3", audience, second.deliver)
    assert dict(second.got) == {100: 1, 101: 1} and result.counts == {"sent": 60}


async def test_answers_that_may_work_later_are_retried_then_given_up(store: Store) -> None:
    tries: Counter[int] = Counter()

    async def flaky(recipient: int) -> RecipientOutcome:
        tries[recipient] += 1
        if recipient == 100:  # always 5xx
            return RecipientOutcome(recipient, "retry", "502 bad gateway")
        if recipient == 101 and tries[recipient] == 1:  # once
            return RecipientOutcome(recipient, "retry", "flood control", retry_after=1.0)
        return RecipientOutcome(recipient, "sent")

    result = await broadcaster(store, max_tries=3, passes=5).run("siar-4", audience, flaky)
    assert result.counts == {"sent": 59, "failed": 1}
    assert tries[100] == 3 and tries[101] == 2 and result.retry_after == 1.0


async def test_a_permanent_error_stops_the_broadcast_and_keeps_the_rest_pending(store: Store) -> None:
    async def revoked(recipient: int) -> RecipientOutcome:
        raise Permanent("Telegram refused the bot token")

    with pytest.raises(Permanent):
        await broadcaster(store, concurrency=1).run("siar-5", audience, revoked)
    counts = await store.fanout.counts("siar-5")
    assert counts.get("pending") == 60 and "sending" not in counts  # nobody was reached


async def test_a_moved_recipient_is_followed(store: Store) -> None:
    got: list[int] = []

    async def deliver(recipient: int) -> RecipientOutcome:
        if recipient == 100:
            return RecipientOutcome(100, "moved", moved_to=-1000100)
        got.append(recipient)
        return RecipientOutcome(recipient, "sent")

    result = await broadcaster(store).run("siar-6", audience, deliver)
    assert -1000100 in got and 100 not in got and result.counts == {"sent": 60}


async def test_a_time_budget_yields_and_a_later_run_resumes(store: Store) -> None:
    async def slow(recipient: int) -> RecipientOutcome:
        await asyncio.sleep(0.1)  # all 60 at 2 at a time: 3 s, far over the budget
        return RecipientOutcome(recipient, "sent")

    # A budget long enough for some progress even on a loaded machine, short of the whole.
    first = await broadcaster(store, concurrency=2).run("siar-7", audience, slow, budget=1.0)
    assert 0 < first.progressed < 60 and first.remaining == 60 - first.progressed
    second = await broadcaster(store, concurrency=8).run("siar-7", audience, slow)
    assert second.counts == {"sent": 60} and second.lost == 0


async def test_the_next_batch_starts_while_the_last_requests_of_the_previous_one_are_in_flight(
    store: Store,
) -> None:
    """Waiting for a batch's last answer before starting the next would leave the rate budget
    unused at every batch's end: here the first batch's last request is answered only once the
    second batch's first one has gone (batches of 10)."""
    second_batch_started = asyncio.Event()
    got: list[int] = []

    async def deliver(recipient: int) -> RecipientOutcome:
        got.append(recipient)
        if recipient == 110:
            second_batch_started.set()
        if recipient == 109:
            await second_batch_started.wait()
        return RecipientOutcome(recipient, "sent")

    result = await asyncio.wait_for(broadcaster(store).run("siar-10", audience, deliver), 10)
    assert result.counts == {"sent": 60} and sorted(got) == AUDIENCE


class CountingLedger(FanoutLedger):
    writes = 0

    async def write(self, key: str, sending: Any, outcomes: Any, now: datetime) -> None:
        self.writes += 1
        await super().write(key, sending, outcomes, now)


async def test_a_paced_broadcast_writes_one_transaction_per_recipient(store: Store) -> None:
    """An outcome waits for the next recipient's `sending` mark and shares its transaction."""
    ledger = CountingLedger(store.db)

    async def pace(recipient: int) -> None:
        await asyncio.sleep(0.005)  # one request every few ms, like a paced broadcast

    receiver = Receiver()
    run = Broadcaster(ledger, "readers", lambda: NOW, concurrency=1, batch_size=10)
    result = await run.run("siar-11", audience, receiver.deliver, pace=pace)
    assert result.counts == {"sent": 60}  # every outcome written, the last ones too
    assert ledger.writes <= 65, ledger.writes  # not 120: a mark and an outcome each


async def test_the_audience_is_fixed_once(store: Store) -> None:
    calls = 0

    async def growing() -> list[int]:
        nonlocal calls
        calls += 1
        return [*AUDIENCE, 999] if calls > 1 else AUDIENCE

    receiver = Receiver()
    await broadcaster(store).run("siar-8", growing, receiver.deliver)
    await broadcaster(store).run("siar-8", growing, receiver.deliver)
    assert calls == 1 and 999 not in receiver.got


async def test_store_resend_of_a_sent_broadcast_requeues_its_uncertain_recipients(store: Store) -> None:
    """`siar resend ID` on a fan-out row whose post is `sent` with uncertain recipients."""
    story = Story(uid="1", feed="f", url="https://e.example/1", title="t", published=NOW)
    (row,) = await store.stories.record_poll(
        FeedState("f", "u"), [NewStory(story, [Decision("readers", "queued")], key=story_key(story, ()))], NOW
    )
    item = await store.outbox.claim("readers", NOW, "w")
    assert item is not None and item.id == row
    await store.outbox.finish(row, Finish("sent", "sent"), NOW)
    assert not await store.resend(row, NOW)  # nothing uncertain: nothing to resend
    await store.fanout.plan(f"siar-{row}", "readers", [1, 2, 3], NOW)
    await store.fanout.write(f"siar-{row}", [2], [], NOW)
    await store.fanout.abandon_in_flight(f"siar-{row}", NOW)
    assert await store.resend(row, NOW)
    assert (await store.outbox.row(row) or {})["status"] == "pending"
    assert (await store.fanout.counts(f"siar-{row}"))["pending"] == 3
