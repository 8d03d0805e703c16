"""The Meta channels inside siar: config, store, dispatcher and outbox with the strict fake —
every story once per channel, the publishing limit deferring rows, a refused token making
rows wait with one alert."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.app import App, build
from bot.cleaning import CleaningRules
from bot.config import Config
from bot.daemon import prepare
from bot.normalize import parse_feed
from tests.conftest import SAMPLE
from tests.fake_graph import PAGE_TOKEN, THREADS_TOKEN, USER_TOKEN, FakeGraph
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route
from tests.meta_world import free_port, jpeg

IMAGE = "/cdn/dynamic/content/2020/10/09/1198765/putin-armenia-azerbaijan.jpg"
CONFIG = """
    [site]
    name = "medcom.id"
    timezone = "Asia/Jakarta"

    [cta]
    follow_text = "Ikuti media sosial medcom.id"

    [http]
    listen = "127.0.0.1:PORT"
    public_url = "http://127.0.0.1:PORT/"

    [[feeds]]
    name = "medcom"
    url = "FEED"
    first_run = "all"
    allow_private = true

    [channels.facebook]
    type = "facebook"
    page_id = "104233468117325"
    access_token = "${FB_PAGE_TOKEN}"
    api_base_url = "GRAPH"
    rate_limit = "1000/s"

    [channels.instagram]
    type = "instagram"
    account_id = 17841405822304914
    access_token = "${IG_ACCESS_TOKEN}"
    api_base_url = "GRAPH"
    rate_limit = "1000/s"
    poll_interval = "0.01s"

    [channels.threads]
    type = "threads"
    account_id = "25001234567890123"
    access_token = "${THREADS_ACCESS_TOKEN}"
    api_base_url = "TH_BASE"
    rate_limit = "1000/s"
    poll_interval = "0.01s"
"""


@pytest.fixture
async def meta() -> AsyncIterator[FakeGraph]:
    async with FakeGraph(start=Clock().now.timestamp(), ig_quota=2) as fake:
        yield fake


@pytest.fixture
def start(
    meta: FakeGraph,
    feed_server: FeedServer,
    sample_bytes: bytes,
    make_config: Callable[[str], Config],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    for key, value in {"FB_PAGE_TOKEN": PAGE_TOKEN, "IG_ACCESS_TOKEN": USER_TOKEN}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("THREADS_ACCESS_TOKEN", THREADS_TOKEN)
    body = sample_bytes.replace(b"https://cdn.medcom.id/", feed_server.base.encode() + b"/cdn/")
    feed_server.routes["/intl"] = Route(body=body)
    for path in (IMAGE, IMAGE + "?w=720"):
        feed_server.routes[path] = Route(body=jpeg(720, 405), content_type="image/jpeg")
    port = free_port()

    async def run() -> tuple[App, Clock]:
        text = (
            CONFIG.replace("FEED", feed_server.url("/intl"))
            .replace("PORT", str(port))
            .replace("GRAPH", meta.graph_url)
            .replace("TH_BASE", meta.threads_url)
        )
        config = make_config(textwrap.dedent(text))
        clock = Clock()
        app = build(config, clock=clock)
        await prepare(app)
        await app.poller.poll(config.feeds[0], force=True)
        return app, clock

    return run


async def statuses(app: App) -> dict[str, list[str]]:
    """channel -> the statuses of its outbox rows (one per story of the sample feed)."""
    out: dict[str, list[str]] = {}
    for story in parse_feed(
        SAMPLE.read_bytes(), "https://www.medcom.id/rss", {}, CleaningRules(), "m"
    ).stories:
        (found,) = await app.store.stories.find(story.url)
        for item in await app.store.stories.outbox_of(found["id"]):
            out.setdefault(item["channel"], []).append(item["status"])
    return out


async def test_every_story_once_on_every_meta_channel_and_the_limit_defers(
    start: Callable[..., Any], meta: FakeGraph, feed_server: FeedServer
) -> None:
    app, clock = await start()
    try:
        await app.dispatcher.drain()
        assert len(meta.page.posts) == 4 and len(meta.threads.published) == 4
        assert len(meta.instagram.published) == 2  # the account's limit: 2 per 24 h
        found = await statuses(app)
        assert sorted(found["facebook"]) == ["sent"] * 4 and sorted(found["threads"]) == ["sent"] * 4
        assert sorted(found["instagram"]) == ["pending", "pending", "sent", "sent"]
        meta.advance(86400 + 120)
        clock.advance(86400 + 120)
        await app.dispatcher.drain()
        assert len(meta.instagram.published) == 4
        assert sorted((await statuses(app))["instagram"]) == ["sent"] * 4
        assert feed_server.hits(IMAGE + "?w=720") + feed_server.hits(IMAGE) == 1  # the seed's photo
        await app.dispatcher.drain()
        assert len(meta.page.posts) == 4 and len(meta.instagram.published) == 4
    finally:
        await app.close()


async def test_refused_token_makes_the_rows_wait_with_one_alert(
    start: Callable[..., Any], meta: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    meta.revoke(PAGE_TOKEN, 460)
    caplog.set_level(logging.ERROR, "siar.alert")
    app, _ = await start()
    try:
        await app.dispatcher.drain()
        assert sorted((await statuses(app))["facebook"]) == ["pending"] * 4
        alerts = [r.getMessage() for r in caplog.records if "ALERT facebook" in r.getMessage()]
        assert len(alerts) == 1 and "password" in alerts[0] and "/me/accounts" in alerts[0]
        assert PAGE_TOKEN not in caplog.text
        assert meta.page.posts == []
    finally:
        await app.close()
