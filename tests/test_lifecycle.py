"""Bugs found while reshaping the house (issue 9), each reproduced: a poll whose stories could
not be stored, a feed whose URL changed, a channel's own timeout, an interrupted start, a store
outage during polls, `check` without a platform's section."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.app import build
from bot.config import Config
from bot.daemon import prepare, run_daemon
from bot.lock import StoreLock
from bot.types import Post, Receipt
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss

ROOT = Path(__file__).parent.parent
ITEMS = [{"title": f"Story {i}", "link": f"https://e.example/{i}", "guid": str(i)} for i in range(5)]
CONFIG = """
    [[feeds]]
    name = "f"
    url = "{url}"
    first_run = "skip"
"""


async def test_a_poll_whose_stories_cannot_be_stored_saves_nothing_of_its_success(
    feed_server: FeedServer, make_config: Callable[[str], Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving the new ETag/body hash/first-run flag of a poll whose stories were lost made the
    stories unreachable (304 next time) and, with first_run = "skip", the next change posted
    the whole backlog."""
    feed_server.routes["/f"] = Route(body=rss(ITEMS[:3]))
    config = make_config(CONFIG.format(url=feed_server.url("/f")))
    channel = FakeChannel()
    app = build(config, channels={"fake": channel}, clock=Clock())
    await prepare(app)
    real = app.store.stories.record_poll

    async def broken(*args: object, **kwargs: object) -> list[int]:
        raise OSError("disk full")

    monkeypatch.setattr(app.store.stories, "record_poll", broken)
    assert (await app.poller.poll(config.feeds[0], force=True)).outcome == "error"
    state = await app.store.feeds.get("f", "")
    assert (state.etag, state.body_hash, state.first_run_done) == (None, None, False)
    assert state.failures == 1

    monkeypatch.setattr(app.store.stories, "record_poll", real)
    assert (await app.poller.poll(config.feeds[0], force=True)).outcome == "new"  # not a 304
    feed_server.routes["/f"] = Route(body=rss(ITEMS[:4]))
    await app.poller.poll(config.feeds[0], force=True)
    await app.dispatcher.drain()
    await app.close()
    assert [p.story.title for p in channel.sent] == ["Story 3"]  # the new one, not the backlog


async def test_a_feed_whose_url_changed_is_a_new_feed_for_first_run(
    feed_server: FeedServer, make_config: Callable[[str], Config], tmp_path: Path
) -> None:
    feed_server.routes["/a"] = Route(body=rss(ITEMS[:2]))
    feed_server.routes["/b"] = Route(body=rss(ITEMS[2:5]))
    channel = FakeChannel()
    first = make_config(CONFIG.format(url=feed_server.url("/a")))
    app = build(first, channels={"fake": channel}, clock=Clock())
    await prepare(app)
    await app.poller.poll(first.feeds[0], force=True)
    await app.close()
    moved = make_config(CONFIG.format(url=feed_server.url("/b")))  # same name, another feed
    app = build(moved, channels={"fake": channel}, clock=Clock())
    await prepare(app)
    await app.poller.poll(moved.feeds[0], force=True)
    await app.dispatcher.drain()
    await app.close()
    assert channel.sent == []  # its backlog is skipped like any new feed's


async def test_a_channels_own_timeout_is_not_reported_as_send_timeout(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/f"] = Route(body=rss(ITEMS[:1]))
    config = make_config(CONFIG.format(url=feed_server.url("/f")).replace('"skip"', '"all"'))
    channel = FakeChannel()
    channel.script.append(TimeoutError())  # e.g. aiohttp's read timeout: it may have arrived
    app = build(config, channels={"fake": channel}, clock=Clock())
    await prepare(app)
    await app.poller.poll(config.feeds[0], force=True)
    await app.dispatcher.drain()
    (story,) = await app.store.stories.find("https://e.example/0")
    (row,) = await app.store.stories.outbox_of(story["id"])
    await app.close()
    assert row["status"] == "uncertain"
    assert "TimeoutError" in row["last_error"] and "send_timeout" not in row["last_error"]


class SlowStart(FakeChannel):
    def __init__(self) -> None:
        super().__init__("slow")
        self.entered = asyncio.Event()

    async def start(self) -> None:
        self.entered.set()
        await asyncio.sleep(3600)


async def test_a_start_interrupted_mid_way_still_closes_what_started(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    """prepare() ran outside run_daemon's try/finally: a stop during it left channels and the
    store open, and the SQLite lock held."""
    feed_server.routes["/f"] = Route(body=rss(ITEMS[:1]))
    config = make_config(CONFIG.format(url=feed_server.url("/f")))
    fast, slow = FakeChannel("fast"), SlowStart()
    app = build(config, channels={"fast": fast, "slow": slow}, clock=Clock())
    daemon = asyncio.create_task(run_daemon(app, asyncio.Event()))
    await slow.entered.wait()
    daemon.cancel()
    with pytest.raises(asyncio.CancelledError):
        await daemon
    assert fast.started and fast.closed
    assert app.store.sqlite_path is not None
    again = StoreLock(app.store.sqlite_path)
    again.acquire()  # free again: another daemon could start (AlreadyRunning otherwise)
    again.release()


async def test_a_store_outage_during_polls_still_alerts_the_feeds_streak(
    feed_server: FeedServer, make_config: Callable[[str], Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    feed_server.routes["/f"] = Route(status=502, body=b"bad gateway")
    config = make_config(CONFIG.format(url=feed_server.url("/f")))
    app = build(config, channels={}, clock=Clock())
    await prepare(app)
    alerts: list[str] = []

    async def sink(source: str, message: str) -> None:
        alerts.append(message)

    app.context.alerts.add_sink(sink)

    async def down(*args: object, **kwargs: object) -> None:
        raise OSError("database went away")

    monkeypatch.setattr(app.store.feeds, "save", down)
    for _ in range(6):
        await app.poller.poll(config.feeds[0], force=True)
    await app.close()
    assert len(alerts) == 1 and "failed 5 times in a row" in alerts[0]


def test_check_without_the_telegram_section_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        textwrap.dedent("""
        [[feeds]]
        name = "f"
        url = "feed.xml"

        [channels.tg]
        type = "telegram"
        chat = "@x"
    """)
    )
    for command in ("check", "preview"):
        run = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), command, "--config", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in run.stderr, (command, run.stderr)
        if command == "check":
            assert run.returncode == 2, run.stderr
            assert "channels.tg" in run.stderr and "[telegram] section" in run.stderr


async def test_a_render_that_fails_once_fails_that_row_only(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    """One story that cannot render never stops the rest (issue 8.3)."""
    feed_server.routes["/f"] = Route(body=rss(ITEMS[:3]))
    config = make_config(CONFIG.format(url=feed_server.url("/f")).replace('"skip"', '"all"'))

    class Picky(FakeChannel):
        def render(self, story):  # type: ignore[no-untyped-def]
            if story.title == "Story 1":
                raise ValueError("cannot fit")
            return super().render(story)

        async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
            return await super().send(post, idempotency_key=idempotency_key)

    channel = Picky()
    app = build(config, channels={"fake": channel}, clock=Clock())
    await prepare(app)
    await app.poller.poll(config.feeds[0], force=True)
    await app.dispatcher.drain()
    await app.close()
    assert sorted(p.story.title for p in channel.sent) == ["Story 0", "Story 2"]
