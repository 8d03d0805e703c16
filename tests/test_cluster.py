"""Several daemons on one PostgreSQL (the machine's server on 127.0.0.1), piece by piece: feed
leases, the heartbeat on long sends and fan-outs, rate budgets shared by the daemons of one
account, one getUpdates reader per bot token, webhook updates handled once. Each "daemon" here
is a Store of its own (its own engine and connections) on one fresh database."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.budgets import DatabaseClock, RateBudgets
from bot.fanout import Broadcaster, RecipientOutcome
from bot.leases import FeedLeases, Heartbeat
from bot.outbox import Finish
from bot.store import Store
from bot.types import Decision
from channels.telegram.pacing import ChatPacer
from channels.telegram.store import TelegramStore
from channels.telegram.updates import UpdateReader
from tests.test_postgres import NOW, new, pg_url

__all__ = ["pg_url"]


@pytest.fixture
async def daemons(pg_url: str) -> AsyncIterator[list[Store]]:
    """Three daemons' stores on one fresh, migrated PostgreSQL database."""
    stores = [Store(pg_url, Path(".")) for _ in range(3)]
    await stores[0].migrate()
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


# --- feed leases -------------------------------------------------------------------------------


async def test_racing_daemons_take_a_free_lease_once(daemons: list[Store]) -> None:
    leases = [FeedLeases(s.db, f"d{i}.{j}") for i, s in enumerate(daemons) for j in range(4)]
    taken = await asyncio.gather(*(lease.take("f", 60, NOW) for lease in leases))
    assert sum(taken) == 1
    holder, expires = (await leases[0].holders())["f"]
    assert holder == leases[taken.index(True)].holder
    assert expires == NOW + timedelta(seconds=120)  # two intervals by default


async def test_one_poll_per_interval_and_a_dead_holder_is_replaced(daemons: list[Store]) -> None:
    """Three daemons whose schedules fire every interval at different phases; one dies at
    interval 10. Every interval has exactly one poll but the ≤ 2 after the death; none has two."""
    interval = 60.0
    leases = [FeedLeases(s.db, f"d{i}") for i, s in enumerate(daemons)]
    phases = [0.0, 17.0, 41.0]  # seconds into each interval at which each daemon's job fires
    polls: list[tuple[float, str]] = []
    alive = [True, True, True]
    for n in range(30):
        if n == 10:
            first = polls[0][1]
            alive[int(first[1])] = False  # the holder dies (no release)
        for d, phase in enumerate(phases):
            at = n * interval + phase
            if alive[d] and await leases[d].take("f", interval, NOW + timedelta(seconds=at)):
                polls.append((at, leases[d].holder))
    per_interval = Counter(int(at // interval) for at, _ in polls)
    assert max(per_interval.values()) == 1, per_interval
    missing = [n for n in range(30) if n not in per_interval]
    assert missing == [10, 11] or missing == [10], missing  # the takeover: within two intervals
    assert len({h for _, h in polls[:10]}) == 1 and polls[-1][1] != polls[0][1]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(polls)]
    assert min(gaps) >= interval - max(phases)  # never two polls closer than that


async def test_a_late_poll_never_makes_the_next_one_come_early(daemons: list[Store]) -> None:
    lease = FeedLeases(daemons[0].db, "a")
    assert await lease.take("f", 60, NOW)
    assert await lease.take("f", 60, NOW + timedelta(seconds=62))  # the event loop was busy
    assert not await lease.take("f", 60, NOW + timedelta(seconds=120))  # 58 s after: too soon
    assert await lease.early("f", 60, NOW + timedelta(seconds=120)) == pytest.approx(2.0)
    assert await lease.take("f", 60, NOW + timedelta(seconds=122))
    assert await FeedLeases(daemons[1].db, "b").early("f", 60, NOW) == 0.0  # not b's


async def test_a_clean_stop_hands_leases_over_one_interval_after_the_last_poll(daemons: list[Store]) -> None:
    first, second = FeedLeases(daemons[0].db, "a"), FeedLeases(daemons[1].db, "b")
    assert await first.take("f", 60, NOW)
    assert await first.release({"f": 60}) == 1
    assert not await second.take("f", 60, NOW + timedelta(seconds=59))  # not twice in one interval
    assert await second.take("f", 60, NOW + timedelta(seconds=60))


async def test_on_sqlite_every_lease_is_ours_without_a_query(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    try:
        await store.migrate()
        assert await FeedLeases(store.db, "a").take("f", 60, NOW)
        assert await FeedLeases(store.db, "b").take("f", 60, NOW)
        assert await FeedLeases(store.db, "a").holders() == {}
    finally:
        await store.close()


# --- the heartbeat -----------------------------------------------------------------------------


async def queue(store: Store, n: int, channel: str = "c") -> None:
    state = await store.feeds.get("f", "u")
    await store.stories.record_poll(state, [new(i, Decision(channel, "queued")) for i in range(n)], NOW)


async def test_a_long_send_is_kept_while_its_daemon_beats_and_taken_over_when_it_stops(
    daemons: list[Store],
) -> None:
    a, b = daemons[0], daemons[1]
    await queue(a, 2)
    long = await a.outbox.claim("c", NOW, "A")
    short = await a.outbox.claim("c", NOW, "A")
    assert long is not None and short is not None
    await a.outbox.finish(short.id, Finish("sent", "sent"), NOW + timedelta(seconds=1))
    beat_a = Heartbeat(a.db, a.outbox, "A", 60, dict)
    beat_b = Heartbeat(b.db, b.outbox, "B", 60, lambda: {"c": None})  # "c" resumes safely
    for minute in range(1, 11):  # a ten-minute broadcast: A beats, B looks every 30 s
        at = NOW + timedelta(minutes=minute)
        assert await beat_a.refresh(at - timedelta(seconds=30)) == 1
        assert await beat_b.take_over(at) == 0
    assert (await b.outbox.row(long.id) or {})["status"] == "sending"
    await beat_a.close()
    last_beat = NOW + timedelta(minutes=10, seconds=-30)
    assert await beat_b.take_over(last_beat + timedelta(seconds=59)) == 0  # not dead yet
    assert await beat_b.take_over(last_beat + timedelta(seconds=61)) == 1
    row = await b.outbox.row(long.id) or {}
    assert row["status"] == "pending"  # resumable: B sends it, from where A stopped
    assert (await b.outbox.row(short.id) or {})["status"] == "sent"
    again = await b.outbox.claim("c", last_beat + timedelta(seconds=62), "B")
    assert again is not None and again.id == long.id


async def test_on_a_channel_that_cannot_resend_a_dead_daemons_post_is_uncertain(daemons: list[Store]) -> None:
    a, b = daemons[0], daemons[1]
    await queue(a, 1)
    assert await a.outbox.claim("c", NOW, "A") is not None
    assert await Heartbeat(b.db, b.outbox, "B", 60, dict).take_over(NOW + timedelta(seconds=61)) == 1
    counts = await b.reports.counts()
    assert counts["c"]["uncertain"] == 1 and counts["c"]["sending"] == 0


async def test_two_heartbeats_taking_over_at_once_take_each_row_once(daemons: list[Store]) -> None:
    await queue(daemons[0], 20)
    for _ in range(20):
        assert await daemons[0].outbox.claim("c", NOW, "dead") is not None
    beats = [Heartbeat(s.db, s.outbox, f"d{i}", 60, dict) for i, s in enumerate(daemons)]
    taken = await asyncio.gather(*(b.take_over(NOW + timedelta(minutes=5)) for b in beats))
    assert sum(taken) == 20
    decisions = [d for i in range(20) for d in await daemons[0].stories.decisions_of(i + 1)]
    assert Counter(d["decision"] for d in decisions)["uncertain"] == 20


async def test_a_broadcast_taken_over_resumes_without_sending_anyone_twice(daemons: list[Store]) -> None:
    """Daemon A dies mid-broadcast (two recipients in flight); B takes the row over after the
    takeover window and sends to the rest only; the two are uncertain."""
    a, b = daemons[0], daemons[1]
    await queue(a, 1, "readers")
    item = await a.outbox.claim("readers", NOW, "A")
    assert item is not None
    got: Counter[int] = Counter()
    in_flight = asyncio.Event()

    async def deliver_a(r: int) -> RecipientOutcome:
        got[r] += 1
        if r >= 40:  # A hangs here with requests in flight, then is killed
            in_flight.set()
            await asyncio.Event().wait()
        return RecipientOutcome(r, "sent")

    async def audience() -> list[int]:
        return list(range(100))

    run = asyncio.create_task(
        Broadcaster(a.fanout, "readers", lambda: NOW, concurrency=2, batch_size=10).run(
            item.key, audience, deliver_a
        )
    )
    await in_flight.wait()
    await asyncio.sleep(0.2)
    run.cancel()  # the kill: what was in flight stays `sending`
    await asyncio.gather(run, return_exceptions=True)
    beat = Heartbeat(b.db, b.outbox, "B", 60, lambda: {"readers": None})
    assert await beat.take_over(NOW + timedelta(seconds=61)) == 1
    again = await b.outbox.claim("readers", NOW + timedelta(seconds=62), "B")
    assert again is not None and again.id == item.id

    async def deliver_b(r: int) -> RecipientOutcome:
        got[r] += 1
        return RecipientOutcome(r, "sent")

    result = await Broadcaster(b.fanout, "readers", lambda: NOW, batch_size=10).run(
        again.key, audience, deliver_b
    )
    assert max(got.values()) == 1 and len(got) == 100
    assert result.counts == {"sent": 98, "uncertain": 2}


# --- rate budgets ------------------------------------------------------------------------------


def most_in_window(times: list[float], window: float) -> int:
    times, best, start = sorted(times), 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_three_daemons_with_one_bot_token_send_at_most_30_a_second_together(
    daemons: list[Store],
) -> None:
    pacers = [ChatPacer(29.0, shared=RateBudgets(s.db), key="tg:x", min_spacing=0.85) for s in daemons]
    sent: list[float] = []

    async def daemon(pacer: ChatPacer, first_chat: int) -> None:
        async def one(chat: int) -> None:
            await pacer.wait(chat)
            sent.append(time.monotonic())

        await asyncio.gather(*(one(first_chat + i) for i in range(40)))

    began = time.monotonic()
    await asyncio.gather(*(daemon(p, 1000 * (i + 1)) for i, p in enumerate(pacers)))
    took = time.monotonic() - began
    assert len(sent) == 120
    assert most_in_window(sent, 1.0) <= 30  # alone, each would send 29/s: 87/s together
    assert 3.8 <= took <= 6.0, took  # ≈ 120 / 29 s: the shared budget is used, not wasted


async def test_one_chat_gets_a_message_a_second_and_a_group_20_a_minute_across_daemons(
    daemons: list[Store],
) -> None:
    pacers = [ChatPacer(29.0, shared=RateBudgets(s.db), key="tg:y", group_per_minute=19) for s in daemons]
    times: dict[int, list[float]] = {7: [], -100: []}

    async def send(pacer: ChatPacer, chat: int) -> None:
        await pacer.wait(chat)
        times[chat].append(time.monotonic())

    await asyncio.gather(*(send(p, 7) for p in pacers for _ in range(2)))
    gaps = [b - a for a, b in zip(sorted(times[7]), sorted(times[7])[1:], strict=False)]
    assert len(gaps) == 5 and min(gaps) >= 1.0, gaps
    budgets = RateBudgets(daemons[0].db)
    waits = [await budgets.reserve(pacers[i % 3].buckets(-100, True)) for i in range(21)]
    assert waits[19] >= 59.0 and waits[20] > waits[19]  # the 21st waits past the minute
    assert max(waits[:19]) <= 60.0 * 18 / 19 + 1.0


async def test_a_chat_that_is_not_ready_leaves_no_hole_in_the_bots_budget(daemons: list[Store]) -> None:
    """A message to a chat another daemon has just messaged waits for the chat without taking
    a bot slot after that wait: the bot's slots in between stay free for other chats."""
    budgets = RateBudgets(daemons[0].db)
    bot = ("tg:hole", 0.05)
    first = await budgets.turn([("tg:hole:chat:1", 1.3)], bot)
    again = await budgets.turn([("tg:hole:chat:1", 1.3)], bot)
    other = await budgets.turn([("tg:hole:chat:2", 1.3)], bot)
    assert first.slot is not None and other.slot is not None and first.ready is not None
    assert again.slot is None and again.ready is not None  # the chat's turn, not yet the bot's
    assert 1.2 <= again.ready - first.ready <= 1.4
    assert 0.04 <= other.slot - first.slot <= 0.2  # the next bot slot, not one after 1.3 s
    ahead = await budgets.turn([("tg:hole:chat:3", 1.3)], bot, lead=0.5)
    assert ahead.slot is not None and ahead.slot - time.monotonic() >= 0.4  # time for its work


async def test_a_turn_handed_out_early_goes_at_its_moment_and_a_late_one_takes_a_new_slot(
    daemons: list[Store],
) -> None:
    pacer = ChatPacer(29.0, shared=RateBudgets(daemons[0].db), key="tg:lead")
    at = await pacer.wait(1, lead=0.2)
    assert at - time.monotonic() >= 0.15  # handed out ahead: time to mark the reader sending
    await pacer.go(1, at)
    assert abs(time.monotonic() - at) <= 0.02 and pacer.retaken == 0
    late = await pacer.wait(2, lead=0.2)
    await asyncio.sleep(late - time.monotonic() + 0.1)  # the work took longer than the lead
    await pacer.go(2, late)
    assert pacer.retaken == 1 and time.monotonic() - late >= 0.1
    third = await pacer.wait(3, lead=0.2)
    assert third - late >= pacer.gap  # the slot given up is not reused by the next message
    # Chat 2's message went later than its chat slot said: its next one waits from then.
    chat_2 = await RateBudgets(daemons[1].db).turn(pacer.chat_buckets(2, False), ("tg:lead", 0.01))
    assert chat_2.slot is None and chat_2.ready is not None
    assert chat_2.ready - late >= 0.1 + pacer.chat_gap


def test_the_database_clock_trusts_the_quickest_round_trip() -> None:
    now = [100.0]
    clock = DatabaseClock(lambda: now[0])
    clock.observe(sent=99.0, answered=99.002, db_now=5000.0)  # 2 ms round trip: offset 4901.0 - 99.001
    clock.observe(sent=99.5, answered=99.6, db_now=5000.59)  # read 100 ms late
    assert abs(clock.local(5001.0) - 100.001) < 1e-6  # from the 2 ms measurement
    now[0] = 200.0  # both older than FRESH: the latest one is used
    assert abs(clock.local(5001.0) - (5001.0 - (5000.59 - 99.55))) < 1e-6


async def test_a_retry_after_holds_every_daemon_of_the_token(daemons: list[Store]) -> None:
    first, second = (ChatPacer(29.0, shared=RateBudgets(s.db), key="tg:z") for s in daemons[:2])
    first.pause(2.0)
    await asyncio.sleep(0.2)  # the hold is written in the background
    began = time.monotonic()
    await second.wait(5)
    assert time.monotonic() - began >= 1.5


async def test_a_channels_rate_limit_is_shared_by_the_daemons(daemons: list[Store]) -> None:
    from bot.dispatcher import Pacer

    pacers = [Pacer("10/s", RateBudgets(s.db).pace("channel:x")) for s in daemons]

    async def send(pacer: Pacer) -> float:
        await pacer.ready()
        pacer.take()
        return time.monotonic()

    times = await asyncio.gather(*(send(p) for p in pacers for _ in range(5)))
    assert most_in_window(list(times), 1.0) <= 11  # 10/s: 15 sends take ≥ 1.4 s
    assert max(times) - min(times) >= 1.3


async def test_idle_buckets_are_pruned(daemons: list[Store]) -> None:
    budgets = RateBudgets(daemons[0].db)
    await budgets.reserve([("old", 1.0)])
    await budgets.hold("recent", 10.0)
    assert await budgets.prune(idle=-5.0) == 1  # "old" is in the past, "recent" ahead


# --- one getUpdates reader per token; webhook updates once --------------------------------------


async def test_one_daemon_reads_a_tokens_updates_and_another_takes_over_when_it_dies(
    daemons: list[Store],
) -> None:
    events: list[str] = []

    def reader(i: int) -> UpdateReader:
        async def start() -> None:
            events.append(f"start {i}")

        async def stop() -> None:
            events.append(f"stop {i}")

        return UpdateReader(daemons[i].db, "telegram:abc", start, stop, retry=0.1, check=0.1)

    readers = [reader(i) for i in range(3)]
    for r in readers:
        r.begin()
    await asyncio.sleep(0.6)
    assert [r.reading for r in readers].count(True) == 1, events
    first = next(i for i, r in enumerate(readers) if r.reading)
    await readers[first].end()  # its session closes: PostgreSQL frees the lock
    await asyncio.sleep(0.6)
    assert [r.reading for r in readers].count(True) == 1, events
    assert events[:2] == [f"start {first}", f"stop {first}"] and len(events) == 3
    for r in readers:
        await r.end()


async def test_a_reader_whose_session_dies_stops_reading(daemons: list[Store], pg_url: str) -> None:
    import asyncpg

    started, stopped = asyncio.Event(), asyncio.Event()

    async def start() -> None:
        started.set()

    async def stop() -> None:
        stopped.set()

    reader = UpdateReader(daemons[0].db, "telegram:k", start, stop, retry=0.1, check=0.1)
    reader.begin()
    await asyncio.wait_for(started.wait(), 5)
    admin = await asyncpg.connect(pg_url)
    try:  # the holder's session is cut (a PostgreSQL restart, a network partition)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
    finally:
        await admin.close()
    await asyncio.wait_for(stopped.wait(), 5)
    started.clear()
    await asyncio.wait_for(started.wait(), 5)  # and takes the lock again when it can
    await reader.end()


async def test_an_update_handed_to_two_daemons_is_handled_once(daemons: list[Store]) -> None:
    stores = [TelegramStore(s.db) for s in daemons]
    seen = await asyncio.gather(*(s.first_sight("abc", 1001, NOW) for s in stores for _ in range(3)))
    assert sum(seen) == 1
    assert await stores[1].first_sight("abc", 1002, NOW)
    assert await stores[2].first_sight("other-bot", 1001, NOW)


async def test_webhook_behind_two_daemons_handles_each_update_once(daemons: list[Store]) -> None:
    """Two daemons with the same webhook configuration, each serving its own route (a proxy
    in front of them); an update posted to both (Telegram retrying a slow answer, delivered to
    the other daemon) is handled by one of them."""
    import socket

    import aiohttp
    from pydantic import SecretStr
    from telegram.ext import CommandHandler

    from bot.channel import ChannelContext
    from bot.site import CTA, Site
    from channels.telegram.app import TelegramApp
    from channels.telegram.config import TelegramSection
    from tests.fake_telegram import TOKEN, FakeTelegram

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    handled: list[tuple[int, int]] = []
    async with FakeTelegram() as fake:
        apps, ports = [], [free_port(), free_port()]
        for i, port in enumerate(ports):
            section = TelegramSection(
                token=SecretStr(TOKEN),
                api_base_url=fake.url,
                webhook_url="https://news.example/telegram",
                webhook_secret=SecretStr("s3cret-for-tests"),
                webhook_port=port,
            )
            context = ChannelContext(site=Site(), cta=CTA(), database=daemons[i].db)
            app = TelegramApp(section, context)

            async def start(update: Any, _: Any, daemon: int = i) -> None:
                handled.append((daemon, update.update_id))

            app.app.add_handler(CommandHandler("start", start))
            await app.acquire()
            await app.receive_updates()
            apps.append(app)
        assert fake.webhook_url == "https://news.example/telegram"
        fake.user(42)
        update = {
            "update_id": 5001,
            "message": {
                "message_id": 1,
                "date": 1700000000,
                "chat": {"id": 42, "type": "private", "first_name": "U"},
                "from": {"id": 42, "is_bot": False, "first_name": "U"},
                "text": "/start",
                "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
            },
        }
        try:
            async with aiohttp.ClientSession() as http:
                for port in [*ports, ports[0]]:
                    async with http.post(
                        f"http://127.0.0.1:{port}/telegram",
                        json=update,
                        headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-for-tests"},
                    ) as answer:
                        assert answer.status == 200
                async with http.post(
                    f"http://127.0.0.1:{ports[1]}/telegram", json={**update, "update_id": 5002}
                ) as forged:  # no secret: refused
                    assert forged.status == 403
            await asyncio.sleep(1.0)
        finally:
            for app in apps:
                await app.release()
    assert [u for _, u in handled] == [5001], handled
