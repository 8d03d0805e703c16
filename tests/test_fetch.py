from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.fetch import Fetcher
from bot.http_retry import retry_after_seconds
from tests.feedserver import FeedServer, Route


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both of the fetcher's HTTP paths: a feed's own URL goes through
    aiohttp, anything a feed controls through httpx; they must answer alike."""
    monkeypatch.setattr(Fetcher, "FAST", request.param == "aiohttp")
    return str(request.param)


async def test_conditional_get_answers_not_modified(feed_server: FeedServer) -> None:
    feed_server.routes["/rss"] = Route(body=b"<rss/>", last_modified="Fri, 09 Oct 2020 07:00:00 GMT")
    fetcher = Fetcher("siar-test/1.0")
    try:
        first = await fetcher.fetch(feed_server.url("/rss"))
        assert first.body == b"<rss/>" and first.etag and first.last_modified
        second = await fetcher.fetch(feed_server.url("/rss"), first.etag, first.last_modified)
    finally:
        await fetcher.close()
    assert second.not_modified and second.body is None
    _, headers = feed_server.requests[-1]
    assert headers["if-none-match"] == first.etag
    assert headers["if-modified-since"] == "Fri, 09 Oct 2020 07:00:00 GMT"
    assert headers["user-agent"] == "siar-test/1.0"


async def test_size_cap(feed_server: FeedServer) -> None:
    feed_server.routes["/big"] = Route(body=b"x" * 5000)
    fetcher = Fetcher("t", max_bytes=2048)
    try:
        result = await fetcher.fetch(feed_server.url("/big"))
    finally:
        await fetcher.close()
    assert result.error and "cap" in result.error and result.body is None


async def test_permanent_redirect_is_followed_and_noted(feed_server: FeedServer) -> None:
    feed_server.routes["/old"] = Route(status=301, redirect_to=feed_server.url("/new"))
    feed_server.routes["/new"] = Route(body=b"<rss/>")
    fetcher = Fetcher("t")
    try:
        result = await fetcher.fetch(feed_server.url("/old"))
    finally:
        await fetcher.close()
    assert result.body == b"<rss/>"
    assert result.permanent_redirect == feed_server.url("/new")


async def test_errors_are_values_with_retry_after(feed_server: FeedServer) -> None:
    feed_server.routes["/busy"] = Route(status=503, headers={"Retry-After": "120"})
    fetcher = Fetcher("t")
    try:
        busy = await fetcher.fetch(feed_server.url("/busy"))
        missing = await fetcher.fetch(feed_server.url("/nope"))
        refused = await fetcher.fetch("http://127.0.0.1:9/feed")
    finally:
        await fetcher.close()
    assert busy.error and "503" in busy.error and busy.retry_after == 120
    assert missing.error and "404" in missing.error and feed_server.url("/nope") in missing.error
    assert refused.error and "127.0.0.1:9" in refused.error


async def test_timeout(feed_server: FeedServer) -> None:
    feed_server.routes["/slow"] = Route(body=b"<rss/>", delay=1)
    fetcher = Fetcher("t", timeout=0.3)
    try:
        result = await fetcher.fetch(feed_server.url("/slow"))
    finally:
        await fetcher.close()
    assert result.error and "timed out" in result.error


async def test_local_files(tmp_path) -> None:
    (tmp_path / "f.xml").write_bytes(b"<rss/>")
    fetcher = Fetcher("t", base_dir=tmp_path)
    try:
        relative = await fetcher.fetch("f.xml")
        as_uri = await fetcher.fetch((tmp_path / "f.xml").as_uri())
        missing = await fetcher.fetch("missing.xml")
    finally:
        await fetcher.close()
    assert relative.body == as_uri.body == b"<rss/>"
    assert missing.error and "missing.xml" in missing.error


def test_retry_after_forms() -> None:
    now = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)
    assert retry_after_seconds("30", now) == 30
    assert retry_after_seconds("Fri, 09 Oct 2020 07:02:00 GMT", now) == 120
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


async def test_compressed_bodies_are_inflated_under_the_cap(feed_server: FeedServer) -> None:
    import gzip
    import zlib

    feed = b"<rss>" + b"x" * 3000 + b"</rss>"
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB on the wire, 50 MB inflated
    feed_server.routes["/gz"] = Route(body=gzip.compress(feed), headers={"Content-Encoding": "gzip"})
    feed_server.routes["/deflate"] = Route(body=zlib.compress(feed), headers={"Content-Encoding": "deflate"})
    feed_server.routes["/bomb"] = Route(body=bomb, headers={"Content-Encoding": "gzip"})
    feed_server.routes["/double"] = Route(
        body=gzip.compress(gzip.compress(feed)), headers={"Content-Encoding": "gzip, gzip"}
    )
    feed_server.routes["/br"] = Route(body=b"\x0b\x02\x80", headers={"Content-Encoding": "br"})
    fetcher = Fetcher("t", max_bytes=1_000_000)
    try:
        gz, deflate, bombed, double, br = [
            await fetcher.fetch(feed_server.url(p)) for p in ("/gz", "/deflate", "/bomb", "/double", "/br")
        ]
    finally:
        await fetcher.close()
    assert gz.body == feed and deflate.body == feed
    assert bombed.error and "cap" in bombed.error and bombed.body is None
    assert double.error and "Content-Encoding" in double.error
    assert br.error and "Content-Encoding" in br.error
    _, headers = feed_server.requests[0]
    assert headers["accept-encoding"] == "gzip, deflate"


async def test_invalid_urls_are_errors_not_exceptions() -> None:
    fetcher = Fetcher("t")
    try:
        result = await fetcher.fetch("https://xn--/a")
    finally:
        await fetcher.close()
    assert result.error and "xn--" in result.error


async def test_unchanged_polls_keep_their_connection() -> None:
    """A 304 must not cost a new TCP connection: a response closed unread closes its
    connection, and an unchanged poll is the commonest poll there is."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers

        def setup(self) -> None:
            super().setup()
            connections.append(1)

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                self.send_header("ETag", '"v1"')
                self.end_headers()
                return
            body = b"<rss/>"
            self.send_response(200)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/rss"
    fetcher = Fetcher("siar-test/1.0")
    try:
        first = await fetcher.fetch(url)
        results = [await fetcher.fetch(url, first.etag) for _ in range(5)]
    finally:
        await fetcher.close()
        server.shutdown()
        server.server_close()
    assert all(r.not_modified for r in results)
    assert len(connections) == 1, f"{len(connections)} TCP connections for 6 polls of one feed"


async def test_feeds_go_through_the_environments_proxy_unless_no_proxy_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.test_net import fake_proxy

    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with fake_proxy(b"<rss/> via proxy") as (proxy_url, seen):
        monkeypatch.setenv("http_proxy", proxy_url)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("no_proxy", "direct.example.test")
        monkeypatch.setenv("NO_PROXY", "direct.example.test")
        fetcher = Fetcher("t", timeout=5)
        try:
            proxied = await fetcher.fetch("http://news.example.test/feed.xml")
            direct = await fetcher.fetch("http://direct.example.test/feed.xml")
        finally:
            await fetcher.close()
    assert proxied.body == b"<rss/> via proxy"
    assert seen == [b"GET http://news.example.test/feed.xml HTTP/1.1"]
    assert direct.error and "direct.example.test" in direct.error  # not through the proxy
