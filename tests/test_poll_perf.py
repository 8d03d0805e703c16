"""What makes polling cheap, checked for correctness: known entries are skipped before they are
normalized (and reach the corrections hook when their raw content changed), unchanged polls
write their states in one batch, and hot queries use indexes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest
from sqlalchemy import select

import bot.normalize
from bot.app import App, build
from bot.config import Config
from bot.daemon import Daemon, first_poll_delays, prepare
from bot.metrics import Metrics
from bot.schema import feed_state
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss

CONFIG = """
    [store]
    url = "sqlite:///siar.db"

    [[feeds]]
    name = "a"
    url = "{a}"
    first_run = "all"

    [[feeds]]
    name = "b"
    url = "{b}"
    first_run = "all"
"""


def items(start: int, count: int, edited: int | None = None) -> list[dict[str, str]]:
    return [
        {
            "title": f"Story {i}" + (" (corrected)" if i == edited else ""),
            "link": f"https://news.example/{i}",
            "guid": f"g{i}",
            "description": f"<p>Lead of story {i}.</p>",
        }
        for i in range(start + count - 1, start - 1, -1)
    ]


def app_for(config: Config, clock: Clock | None = None) -> App:
    return build(config, channels={"fake": FakeChannel()}, clock=clock or Clock())


def counting_normalizer(monkeypatch: Any) -> list[str]:
    normalized: list[str] = []
    real = bot.normalize.entry_to_story

    def counting(entry: Any, *args: Any, **kwargs: Any) -> Any:
        normalized.append(str(entry.get("id")))
        return real(entry, *args, **kwargs)

    monkeypatch.setattr(bot.normalize, "entry_to_story", counting)
    return normalized


async def test_known_entries_are_not_normalized(
    feed_server: FeedServer, make_config: Callable[[str], Config], monkeypatch: Any
) -> None:
    feed_server.routes["/a"] = Route(body=rss(items(0, 50)), etag=False)
    feed_server.routes["/b"] = Route(body=rss(items(100, 5)), etag=False)
    config = make_config(CONFIG.format(a=feed_server.url("/a"), b=feed_server.url("/b")))
    normalized = counting_normalizer(monkeypatch)
    app = app_for(config)
    await prepare(app)
    first = await app.poller.poll(config.feeds[0], force=True)
    assert first.new_stories == 50 and len(normalized) == 50
    normalized.clear()
    feed_server.routes["/a"] = Route(body=rss(items(1, 50)), etag=False)  # one new, one gone
    changed = await app.poller.poll(config.feeds[0], force=True)
    assert changed.new_stories == 1
    assert normalized == ["g50"]  # the 49 known entries were never normalized
    await app.close()

    # After a restart (no memory of raw entries) the store tells which are known: still only
    # the new entry is normalized.
    normalized.clear()
    feed_server.routes["/a"] = Route(body=rss(items(2, 50)), etag=False)
    app = app_for(config)
    await prepare(app)
    again = await app.poller.poll(config.feeds[0], force=True)
    await app.close()
    assert again.new_stories == 1 and normalized == ["g51"]


async def test_a_known_entry_whose_raw_content_changed_is_normalized_again(
    feed_server: FeedServer, make_config: Callable[[str], Config], monkeypatch: Any
) -> None:
    """Only it: the corrections check (bot.corrections) gets it, the unchanged ones cost nothing."""
    feed_server.routes["/a"] = Route(body=rss(items(0, 10)), etag=False)
    feed_server.routes["/b"] = Route(body=rss(items(100, 5)), etag=False)
    config = make_config(CONFIG.format(a=feed_server.url("/a"), b=feed_server.url("/b")))
    normalized = counting_normalizer(monkeypatch)
    app = app_for(config)
    await prepare(app)
    await app.poller.poll(config.feeds[0], force=True)
    normalized.clear()
    feed_server.routes["/a"] = Route(body=rss(items(0, 10, edited=3)), etag=False)
    result = await app.poller.poll(config.feeds[0], force=True)
    stored = await app.store.stories.find("g3")
    await app.close()
    assert result.new_stories == 0
    assert normalized == ["g3"]
    assert "(corrected)" in stored[0]["data"]  # the corrections check saw and stored it


async def stored_states(app: App) -> dict[str, Any]:
    async with app.store.db.read() as conn:
        rows = (await conn.execute(select(feed_state))).all()
    return {r.name: r for r in rows}


async def test_unchanged_polls_are_written_in_one_batch(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/a"] = Route(body=rss(items(0, 3)))
    feed_server.routes["/b"] = Route(body=rss(items(100, 3)))
    config = make_config(CONFIG.format(a=feed_server.url("/a"), b=feed_server.url("/b")))
    clock = Clock()
    app = app_for(config, clock)
    await prepare(app)
    for feed in config.feeds:
        assert (await app.poller.poll(feed, force=True)).outcome == "new"
    before = await stored_states(app)
    clock.advance(600)
    writes: list[int] = []
    real_write = app.store.db.write

    def counting_write() -> Any:
        writes.append(1)
        return real_write()

    app.store.db.write = counting_write  # type: ignore[method-assign]
    for feed in config.feeds:
        assert (await app.poller.poll(feed, force=True)).outcome == "not_modified"
    assert writes == []  # no store write per unchanged poll
    assert await stored_states(app) == before  # nothing written yet: pending in the book
    assert await app.poller.flush() == 2
    assert writes == [1]  # both feeds in one transaction
    after = await stored_states(app)
    for name in ("a", "b"):
        assert after[name].last_fetch_at == clock.now and after[name].last_status == 304
        assert after[name].etag == before[name].etag and after[name].first_run_done
    assert await app.poller.flush() == 0
    await app.close()


async def test_a_batched_state_never_overwrites_a_newer_one(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/a"] = Route(body=rss(items(0, 3)))
    feed_server.routes["/b"] = Route(body=rss(items(100, 3)))
    config = make_config(CONFIG.format(a=feed_server.url("/a"), b=feed_server.url("/b")))
    clock = Clock()
    app = app_for(config, clock)
    await prepare(app)
    await app.poller.poll(config.feeds[0], force=True)
    clock.advance(60)
    assert (await app.poller.poll(config.feeds[0], force=True)).outcome == "not_modified"
    stale = app.poller.book.pending["a"]
    clock.advance(60)
    feed_server.routes["/a"] = Route(body=rss(items(1, 3)))
    assert (await app.poller.poll(config.feeds[0], force=True)).outcome == "new"  # saved at once
    assert "a" not in app.poller.book.pending
    app.poller.book.pending["a"] = stale  # as if a flush had taken it just before
    await app.poller.flush()
    stored = (await stored_states(app))["a"]
    await app.close()
    assert stored.last_fetch_at == clock.now and stored.last_status == 200


def test_first_polls_are_spread_over_the_interval(make_config: Callable[[str], Config]) -> None:
    text = CONFIG.format(a="https://e.example/a", b="https://e.example/b")
    feeds = make_config(
        text + '\n[[feeds]]\nname = "c"\nurl = "https://e.example/c"\ninterval = "60s"\n'
    ).feeds
    assert first_poll_delays(feeds) == [0.0, feeds[1].interval / 3, 60 * 2 / 3]


async def test_a_skipped_poll_is_counted_and_logged(
    feed_server: FeedServer, make_config: Callable[[str], Config], caplog: Any
) -> None:
    feed_server.routes["/a"] = Route(body=rss(items(0, 3)), delay=2.5)  # outlasts its interval
    feed_server.routes["/b"] = Route(body=rss(items(100, 3)))
    config = make_config(
        CONFIG.format(a=feed_server.url("/a"), b=feed_server.url("/b"))
        + '\n[metrics]\nlisten = ""\n[fetch]\njitter = 0\n'
    )
    # 10 s is the shortest interval a config may ask for; this test polls every second
    config.feeds[:] = [config.feeds[0].model_copy(update={"interval": 1.0})]
    app = build(config, channels={"fake": FakeChannel()})
    metrics = Metrics(["a"], ["fake"])
    app.metrics = app.poller.metrics = metrics
    stop = asyncio.Event()
    daemon = Daemon(app)
    running = asyncio.create_task(daemon.run(stop))
    await asyncio.sleep(4)
    stop.set()
    assert await running == 0
    text = generate_latest(metrics.registry).decode()
    skipped = [line for line in text.splitlines() if line.startswith('siar_poll_skipped_total{feed="a"}')]
    assert skipped and float(skipped[0].split()[-1]) >= 1, text
    assert "feed a: a scheduled poll was skipped (its previous poll still runs)" in caplog.text
