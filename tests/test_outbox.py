"""The outbox moving through its states, as the dispatcher meets each kind of platform answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.app import App, build
from bot.channel import AlreadyDone, Permanent, RetryLater, Uncertain
from bot.config import Config
from bot.daemon import prepare
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss

CONFIG = """
    [daemon]
    retry_base = "30s"

    [[feeds]]
    name = "f"
    url = "{url}"
    first_run = "all"
"""


@pytest.fixture
async def one_story(feed_server: FeedServer, make_config: Callable[[str], Config]):
    feed_server.routes["/f"] = Route(
        body=rss([{"title": "Hello", "link": "https://e.example/1", "guid": "1"}])
    )
    config = make_config(CONFIG.format(url=feed_server.url("/f")))
    channel = FakeChannel()
    clock = Clock()
    app = build(config, channels={"fake": channel}, clock=clock)
    await prepare(app)
    await app.poller.poll(config.feeds[0], force=True)
    yield app, channel, clock
    await app.close()


async def row(app: App) -> dict:  # type: ignore[type-arg]
    (story,) = await app.store.stories.find("https://e.example/1")
    (item,) = await app.store.stories.outbox_of(story["id"])
    return item


async def log(app: App) -> list[str]:
    (story,) = await app.store.stories.find("https://e.example/1")
    return [d["decision"] for d in await app.store.stories.decisions_of(story["id"])]


async def test_sent(one_story) -> None:
    app, channel, _ = one_story
    assert (await row(app))["status"] == "pending"
    await app.dispatcher.drain()
    item = await row(app)
    assert (item["status"], item["attempts"], item["remote_id"]) == ("sent", 1, "remote-1")
    assert channel.attempts == [f"siar-{item['id']}"]
    assert await log(app) == ["queued", "sent"]


async def test_retry_later_waits_then_sends(one_story) -> None:
    app, channel, clock = one_story
    channel.script.extend([RetryLater("429 Too Many Requests", after=90), RetryLater("503")])
    await app.dispatcher.drain()
    item = await row(app)
    assert item["status"] == "pending" and "429" in item["last_error"]
    assert (item["next_attempt_at"] - clock.now).total_seconds() == 90  # the platform's word
    await app.dispatcher.drain()
    assert len(channel.attempts) == 1  # not due yet
    clock.advance(90)
    await app.dispatcher.drain()
    item = await row(app)
    assert (item["next_attempt_at"] - clock.now).total_seconds() == 60  # backoff: 30s * 2
    clock.advance(60)
    await app.dispatcher.drain()
    item = await row(app)
    assert (item["status"], item["attempts"]) == ("sent", 3)
    assert await log(app) == ["queued", "retry", "retry", "sent"]
    assert len(channel.sent) == 1


async def test_gives_up_after_max_attempts(one_story) -> None:
    app, channel, clock = one_story
    channel.settings.max_attempts = 2
    channel.script.extend([RetryLater("503"), RetryLater("503 again")])
    alerts: list[str] = []

    async def alert(name: str, message: str) -> None:
        alerts.append(message)

    app.dispatcher.alert = alert
    await app.dispatcher.drain()
    clock.advance(3600)
    await app.dispatcher.drain()
    item = await row(app)
    assert item["status"] == "failed" and "gave up after 2 attempts: 503 again" in item["last_error"]
    assert len(alerts) == 1


async def test_permanent_failure_is_recorded_and_alerted(one_story) -> None:
    app, channel, _ = one_story
    channel.script.append(Permanent("chat not found"))
    alerts: list[str] = []

    async def alert(name: str, message: str) -> None:
        alerts.append(f"{name}: {message}")

    app.dispatcher.alert = alert
    await app.dispatcher.drain()
    item = await row(app)
    assert (item["status"], item["last_error"]) == ("failed", "chat not found")
    assert len(alerts) == 1 and alerts[0].startswith("fake: https://e.example/1: chat not found")
    assert await log(app) == ["queued", "failed"]


async def test_already_done_counts_as_sent(one_story) -> None:
    app, channel, _ = one_story
    channel.script.append(AlreadyDone("duplicate content"))
    await app.dispatcher.drain()
    assert (await row(app))["status"] == "sent"
    assert await log(app) == ["queued", "already_sent"]


@pytest.mark.parametrize(
    "error", [Uncertain("read timeout after the request left"), ValueError("a bug in the channel")]
)
async def test_uncertain_is_never_resent_until_the_operator_says(one_story, error) -> None:
    app, channel, clock = one_story
    channel.script.append(error)
    await app.dispatcher.drain()
    item = await row(app)
    assert item["status"] == "uncertain"
    clock.advance(86400)
    await app.dispatcher.drain()
    assert len(channel.attempts) == 1
    assert await app.store.resend(item["id"], clock.now)
    await app.dispatcher.drain()
    assert (await row(app))["status"] == "sent"
    assert channel.attempts == [f"siar-{item['id']}"] * 2  # same idempotency key on resend
    assert await log(app) == ["queued", "uncertain", "resend", "sent"]


async def test_crash_mid_send_becomes_uncertain_on_restart(one_story) -> None:
    app, channel, clock = one_story
    item = await app.store.outbox.claim("fake", clock.now, "crashed-worker")  # claimed, then "crash"
    assert item is not None and (await row(app))["status"] == "sending"
    assert await app.store.outbox.recover_sending(clock.now) == 1
    assert (await row(app))["status"] == "uncertain"
    await app.dispatcher.drain()
    assert channel.attempts == []


async def test_shutdown_mid_send_is_abandoned_as_uncertain(one_story) -> None:
    app, channel, _ = one_story
    channel.block = asyncio.Event()  # the platform never answers
    app.dispatcher.start()
    app.dispatcher.wake()
    for _ in range(100):
        if channel.attempts:
            break
        await asyncio.sleep(0.02)
    await app.dispatcher.stop(grace=0.1)
    item = await row(app)
    assert item["status"] == "uncertain" and "shutdown" in item["last_error"]


async def test_two_workers_never_claim_the_same_row(one_story) -> None:
    app, _, clock = one_story
    claims = await asyncio.gather(*(app.store.outbox.claim("fake", clock.now, f"w{i}") for i in range(8)))
    assert len([c for c in claims if c is not None]) == 1


async def test_status_counts(one_story) -> None:
    app, channel, _ = one_story
    channel.script.append(Permanent("nope"))
    await app.dispatcher.drain()
    counts = await app.store.reports.counts()
    assert counts == {
        "fake": {"pending": 0, "sending": 0, "sent": 0, "failed": 1, "uncertain": 0, "cancelled": 0}
    }
    (problem,) = await app.store.reports.recent_problems()
    assert problem["last_error"] == "nope" and problem["url"] == "https://e.example/1"


async def test_crash_on_a_resumable_channel_resumes_the_row(one_story) -> None:
    app, channel, clock = one_story
    assert await app.store.outbox.claim("fake", clock.now, "crashed-worker") is not None
    assert await app.store.outbox.recover_sending(clock.now, resumable={"fake": None}) == 1
    await app.dispatcher.drain()
    item = await row(app)
    assert item["status"] == "sent" and channel.attempts == [f"siar-{item['id']}"]
    assert await log(app) == ["queued", "resume", "sent"]


async def test_a_planned_wait_does_not_use_up_attempts(one_story) -> None:
    app, channel, clock = one_story
    channel.settings.max_attempts = 2
    channel.script.extend([RetryLater("daily cap reached", after=3600, attempt=False)] * 5)
    for _ in range(5):
        await app.dispatcher.drain()
        clock.advance(3600)
    await app.dispatcher.drain()
    item = await row(app)
    assert (item["status"], item["attempts"]) == ("sent", 1)
    assert await log(app) == ["queued", *["deferred"] * 5, "sent"]


async def test_a_channel_that_cannot_start_waits_and_retries(one_story, monkeypatch) -> None:
    app, channel, _ = one_story
    app.dispatcher.started.discard("fake")  # as if it had failed to start in prepare()
    channel.started = False
    channel.start_errors.extend([ConnectionError("platform down"), ConnectionError("still down")])
    stats = await app.dispatcher.drain()  # `once`: no retry loop, the row stays pending
    assert (await row(app))["status"] == "pending" and stats.retry == 1
    monkeypatch.setattr(app.dispatcher, "_sleep", lambda seconds: asyncio.sleep(0))
    app.dispatcher.start()
    for _ in range(200):
        if (await row(app))["status"] == "sent":
            break
        await asyncio.sleep(0.02)
    await app.dispatcher.stop(grace=1)
    assert (await row(app))["status"] == "sent" and channel.started


async def test_a_store_error_does_not_kill_the_worker(one_story, monkeypatch) -> None:
    app, channel, _ = one_story
    real = app.store.outbox.claim
    calls = {"n": 0}

    async def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("database went away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(app.store.outbox, "claim", flaky)
    monkeypatch.setattr(app.dispatcher, "_sleep", lambda seconds: asyncio.sleep(0))
    app.dispatcher.start()
    for _ in range(200):
        if channel.sent:
            break
        await asyncio.sleep(0.02)
    await app.dispatcher.stop(grace=1)
    assert len(channel.sent) == 1 and calls["n"] >= 3


async def test_a_send_without_answer_times_out_as_uncertain(one_story) -> None:
    app, channel, _ = one_story
    channel.settings.send_timeout = 0.2
    channel.block = asyncio.Event()  # never answers
    await app.dispatcher.drain()
    item = await row(app)
    assert item["status"] == "uncertain" and "send_timeout" in item["last_error"]


async def test_a_resumable_row_interrupted_too_long_ago_is_uncertain(one_story) -> None:
    app, channel, clock = one_story
    channel.resumable = True
    channel.block = asyncio.Event()
    app.dispatcher.start()
    app.dispatcher.wake()
    for _ in range(100):
        if channel.attempts:
            break
        await asyncio.sleep(0.02)
    await app.dispatcher.stop(grace=0.05)  # shutdown mid-send: pending, to resume
    assert (await row(app))["status"] == "pending"
    clock.advance(2 * 3600)  # down for two hours; the platform remembers keys for one
    assert await app.store.outbox.recover_sending(clock.now, resumable={"fake": 3300}) == 1
    assert (await row(app))["status"] == "uncertain"


async def test_shutdown_while_pacing_leaves_no_claimed_row(one_story) -> None:
    app, channel, _ = one_story
    app.dispatcher.pacers["fake"].gap = 3600  # the channel allows one post an hour…
    app.dispatcher.pacers["fake"].take()  # …and the last one went out just now
    app.dispatcher.start()
    await asyncio.sleep(0.1)
    await app.dispatcher.stop(grace=0.05)
    assert (await row(app))["status"] == "pending" and channel.attempts == []


async def test_one_alert_per_failure_streak(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/f"] = Route(
        body=rss([{"title": f"S{i}", "link": f"https://e.example/{i}", "guid": str(i)} for i in range(4)])
    )
    config = make_config(CONFIG.format(url=feed_server.url("/f")))
    channel = FakeChannel()
    app = build(config, channels={"fake": channel}, clock=Clock())
    alerts: list[str] = []

    async def alert(name: str, message: str) -> None:
        alerts.append(message)

    app.dispatcher.alert = alert
    await prepare(app)
    await app.poller.poll(config.feeds[0], force=True)
    channel.script.extend(
        [Permanent("bot was removed"), Permanent("bot was removed"), None, Permanent("chat not found")]
    )
    await app.dispatcher.drain()
    await app.close()
    assert len(channel.sent) == 1
    assert [a.split(": ", 1)[1].split(" (")[0] for a in alerts] == ["bot was removed", "chat not found"]


async def test_a_retry_after_the_idempotency_window_is_uncertain(one_story) -> None:
    app, channel, clock = one_story
    channel.resumable = True
    channel.resume_window = 3300
    channel.script.append(RetryLater("502 Bad Gateway"))  # may have been created before the 502
    await app.dispatcher.drain()
    clock.advance(3600)
    await app.dispatcher.drain()
    item = await row(app)
    assert item["status"] == "uncertain" and "idempotency key" in item["last_error"]
    assert len(channel.attempts) == 1  # not sent again with a key the platform forgot


async def test_a_resumable_timeout_backs_off_instead_of_spinning(one_story) -> None:
    app, channel, clock = one_story
    channel.resumable = True
    channel.settings.send_timeout = 0.2
    channel.block = asyncio.Event()  # never answers
    await asyncio.wait_for(app.dispatcher.drain(), 10)  # `once` must return
    item = await row(app)
    assert item["status"] == "pending" and len(channel.attempts) == 1
    assert (item["next_attempt_at"] - clock.now).total_seconds() == 30  # retry_base
