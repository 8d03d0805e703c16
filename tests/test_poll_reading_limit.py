"""However many polls are in flight, at most READING_AT_ONCE documents are read and stored at
once: a busy daemon's memory is bounded by that, not by its number of feeds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bot.app import build
from bot.config import Config
from bot.daemon import prepare
from bot.pipeline import READING_AT_ONCE
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss

FEEDS = 3 * READING_AT_ONCE


async def test_polls_in_flight_read_a_bounded_number_of_documents_at_once(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    text = '[store]\nurl = "sqlite:///siar.db"\n'
    for f in range(FEEDS):
        items = [
            {"title": f"Story {f}-{i}", "link": f"https://m.example/{f}/{i}", "guid": f"{f}-{i}"}
            for i in range(5)
        ]
        feed_server.routes[f"/f{f}"] = Route(body=rss(items))
        text += f'[[feeds]]\nname = "f{f}"\nurl = "{feed_server.url(f"/f{f}")}"\nfirst_run = "all"\n'
    app = build(make_config(text), channels={"fake": FakeChannel()}, clock=Clock())
    await prepare(app)
    stories = app.store.stories
    record_poll = stories.record_poll
    storing, most = 0, 0

    async def slow_record_poll(*args: Any, **kwargs: Any) -> Any:  # a store that takes its time
        nonlocal storing, most
        storing += 1
        most = max(most, storing)
        try:
            await asyncio.sleep(0.02)
            return await record_poll(*args, **kwargs)
        finally:
            storing -= 1

    stories.record_poll = slow_record_poll  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(app.poller.poll(feed, force=True) for feed in app.config.feeds))
    finally:
        await app.close()
    assert [r.outcome for r in results] == ["new"] * FEEDS
    assert most == READING_AT_ONCE  # never more; and as many as allowed do overlap
