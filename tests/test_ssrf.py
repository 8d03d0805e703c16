"""Feed-controlled URLs cannot reach private addresses: through the real Fetcher, `enrich` and
a whole poll of a file:// feed whose item links to a page on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bot.app import build
from bot.config import Config
from bot.daemon import prepare
from bot.enrich import enrich
from bot.fetch import Fetcher
from bot.net import AddressGuard, resolve_host
from bot.types import Story
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss

PAGE = (
    b'<html><head><meta property="og:description" content="SECRET from the intranet">'
    b'<meta property="og:image" content="/internal.png"></head><body>x</body></html>'
)


async def test_fetcher_guard_refuses_private_addresses_without_connecting(feed_server: FeedServer) -> None:
    feed_server.routes["/page"] = Route(body=PAGE, content_type="text/html")
    port = feed_server.httpd.server_address[1]
    fetcher = Fetcher("t", timeout=5)
    guard = AddressGuard()
    cases = [
        (f"http://127.0.0.1:{port}/page", "127.0.0.1 is a loopback address"),
        (f"http://localhost:{port}/page", "is a loopback address"),  # a name resolving to loopback
        (f"http://[::1]:{port}/page", "::1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ]
    for url, reason in cases:
        started = time.monotonic()
        result = await fetcher.fetch(url, guard=guard)
        # Refused before any connect: 10.0.0.1 and 169.254.169.254 would otherwise take the whole
        # connect timeout (or fail with another error), the local ones would answer the page.
        assert time.monotonic() - started < 1.0, url
        assert result.error is not None and result.error.startswith(f"refusing {url}: "), result.error
        assert reason in result.error and result.body is None
    assert feed_server.requests == []
    plain = await fetcher.fetch(f"http://127.0.0.1:{port}/page")  # feeds themselves are not guarded
    await fetcher.close()
    assert plain.body == PAGE


async def test_redirect_from_an_allowed_host_to_a_refused_address(feed_server: FeedServer) -> None:
    port = feed_server.httpd.server_address[1]
    feed_server.routes["/page"] = Route(body=PAGE, content_type="text/html")
    feed_server.routes["/article"] = Route(status=301, redirect_to=f"http://127.0.0.1:{port}/page")
    feed_server.routes["/article2"] = Route(status=302, redirect_to=f"http://localhost:{port}/page")
    feed_server.routes["/fine"] = Route(body=b"<html>ok</html>", content_type="text/html")

    async def resolver(host: str) -> list[str]:  # the test name, else the system's answer
        return ["127.0.0.1"] if host == "news.example.test" else await resolve_host(host)

    fetcher = Fetcher("t", timeout=5, resolver=resolver)
    guard = AddressGuard(allowed_hosts=frozenset({"news.example.test"}))
    allowed = await fetcher.fetch(f"http://news.example.test:{port}/fine", guard=guard)
    first = await fetcher.fetch(f"http://news.example.test:{port}/article", guard=guard)
    second = await fetcher.fetch(f"http://news.example.test:{port}/article2", guard=guard)
    await fetcher.close()
    assert allowed.body == b"<html>ok</html>"
    assert first.error == f"refusing http://127.0.0.1:{port}/page: 127.0.0.1 is a loopback address"
    assert second.error is not None and "loopback" in second.error
    assert [p for p, _ in feed_server.requests] == ["/fine", "/article", "/article2"]


async def test_a_guarded_fetch_never_reads_local_files(tmp_path: Path) -> None:
    (tmp_path / "secret.html").write_bytes(PAGE)
    fetcher = Fetcher("t", base_dir=tmp_path)
    result = await fetcher.fetch((tmp_path / "secret.html").as_uri(), guard=AddressGuard())
    await fetcher.close()
    assert result.body is None and result.error is not None and "not an http(s) URL" in result.error


async def test_enrich_without_a_feed_refuses_private_pages(feed_server: FeedServer) -> None:
    feed_server.routes["/page"] = Route(body=PAGE, content_type="text/html")
    story = Story(feed="intl", uid="1", url=feed_server.url("/page"), title="T")
    fetcher = Fetcher("t", timeout=5)
    enriched = await enrich(story, fetcher)
    await fetcher.close()
    assert enriched == story and feed_server.requests == []


FEED = """
    [store]
    url = "sqlite:///siar.db"

    [[feeds]]
    name = "intl"
    url = "{url}"
    first_run = "all"
    enrich = true
    {extra}
"""


async def stored_lead(make_config: Callable[[str], Config], feed_path: Path, extra: str = "") -> Story:
    config = make_config(FEED.format(url=feed_path.as_uri(), extra=extra))
    app = build(config, channels={"fake": FakeChannel()}, clock=Clock())
    await prepare(app)
    result = await app.poller.poll(config.feeds[0], force=True)
    assert result.outcome == "new", result
    (story,) = await app.store.stories.latest(feeds=["intl"])
    await app.close()
    return story


async def test_a_file_feed_linking_to_a_loopback_page_stores_no_page_data(
    feed_server: FeedServer, make_config: Callable[[str], Config], tmp_path: Path
) -> None:
    feed_server.routes["/page"] = Route(body=PAGE, content_type="text/html")
    feed_path = tmp_path / "feed.xml"
    feed_path.write_bytes(rss([{"title": "Story", "link": feed_server.url("/page"), "guid": "1"}]))
    story = await stored_lead(make_config, feed_path)
    assert story.lead == "" and story.image == "" and feed_server.requests == []
    # The control: the same feed with allow_private does read the page (so the test can fail).
    (tmp_path / "siar.db").unlink()
    opened = await stored_lead(make_config, feed_path, "allow_private = true")
    assert opened.lead == "SECRET from the intranet" and len(feed_server.requests) == 1


async def test_an_empty_200_is_a_failed_poll(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/feed"] = Route(body=b"")
    config = make_config(FEED.format(url=feed_server.url("/feed"), extra=""))
    app = build(config, channels={"fake": FakeChannel()}, clock=Clock())
    await prepare(app)
    result = await app.poller.poll(config.feeds[0], force=True)
    state = await app.store.feeds.get("intl", config.feeds[0].url)
    await app.close()
    assert result.outcome == "error" and result.error == f"empty response from {feed_server.url('/feed')}"
    assert state.failures == 1 and state.last_error == result.error
