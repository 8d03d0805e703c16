"""Feed servers misbehaving in every way a real one does, proven through the poller as the daemon
runs it (scheduled polls, not forced; the real fetcher; the store; `status`): for each fault the
poll is a returned error, never an exception; the other feeds are not held up or affected;
`status` (the report `siar status --json` prints) gives a reason a person can act on; the feed
backs off (a second scheduled poll before its next_poll makes no request); 410 disables the
feed with one alert. Odd but readable feeds (wrong or missing charset, changing GUIDs, items
that drop out and come back, entity tricks) post each story once, readably, and nothing else.
The fetcher's own unit tests are in test_fetch.py; here the whole poll is under test."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, build
from bot.config import Config
from bot.daemon import prepare
from bot.lock import StoreLock
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss
from tests.tls import self_signed

ROOT = Path(__file__).parent.parent
INTERVAL = 60  # seconds; the first failure backs off to 2 intervals
GOOD = [
    {"title": f"Good story {i}", "link": f"https://e.example/good/{i}", "guid": f"g{i}"} for i in range(3)
]
ENTITY_FEED = b"""<?xml version="1.0"?>
<!DOCTYPE rss [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
 <!ENTITY xxe SYSTEM "file://SECRET">
]>
<rss version="2.0"><channel><title>t</title><link>https://e.example/</link><description>d</description>
<item><title>Laughs &lol9;</title><link>https://e.example/ent/1</link><guid>ent1</guid>
<description>x</description></item>
<item><title>Secret &xxe;</title><link>https://e.example/ent/2</link><guid>ent2</guid>
<description>&xxe;</description></item>
</channel></rss>"""


# --- servers that misbehave below HTTP ----------------------------------------------------------


class Trickle:
    """Answers 200 with headers at once, then one byte of the body a second."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits += 1
                body = rss(GOOD)
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for byte in body:
                        if outer.stop.wait(1.0):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/feed"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class SelfSignedTLS(FeedServer):
    """A feed server behind TLS with a certificate no one vouches for."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        context, _ = self_signed(folder, "tls.pem", "tls.key", "127.0.0.1", localhost=False, ca=False)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A listening socket whose accept queue is full: new connections are never answered (as a
    host behind a firewall that drops packets), so connecting times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    yield f"http://127.0.0.1:{port}/feed"
    for s in fillers:
        s.close()
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the world ----------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    route: Route | None  # served by the plain feed server at /NAME, or
    url: str = ""  # a URL of its own
    reason: tuple[str, ...] = ()  # what `status` must say (any of these, case-insensitive)
    retry_after: float | None = None


@dataclass
class World:
    app: App
    config: Config
    clock: Clock
    channel: FakeChannel
    feeds: FeedServer
    alerts: list[str]
    lock: StoreLock | None

    async def poll_all(self) -> dict[str, Any]:
        """Every feed's scheduled poll at once, as the daemon's scheduler starts them."""
        results = await asyncio.gather(*(self.app.poller.poll(f) for f in self.config.feeds))
        await self.app.dispatcher.drain()
        return {r.feed: r for r in results}

    async def status(self) -> dict[str, dict[str, Any]]:
        report = await self.app.store.reports.status(self.config)
        return {f["name"]: f for f in report["feeds"]}

    def posted(self) -> list[str]:
        return [p.story.title for p in self.channel.sent]


CONFIG_HEAD = """
[fetch]
timeout = "1s"
max_bytes = 200000
jitter = "0s"
max_backoff = "6h"
"""
FEED = """
[[feeds]]
name = "{name}"
url = "{url}"
interval = "{interval}s"
first_run = "all"
"""


@pytest.fixture
async def make_world(
    tmp_path: Path, feed_server: FeedServer, make_config: Callable[[str], Config], fake_type: None
) -> AsyncIterator[Callable[[list[Fault]], Any]]:
    worlds: list[World] = []

    async def make(faults: list[Fault]) -> World:
        feed_server.routes["/good"] = Route(body=rss(GOOD))
        text = CONFIG_HEAD + FEED.format(name="good", url=feed_server.url("/good"), interval=INTERVAL)
        for fault in faults:
            if fault.route is not None:
                feed_server.routes[f"/{fault.name}"] = fault.route
            url = fault.url or feed_server.url(f"/{fault.name}")
            text += FEED.format(name=fault.name, url=url, interval=INTERVAL)
        text += '\n[channels.fake]\ntype = "fake"\nrate_limit = "1000/s"\n'
        config = make_config(text)
        channel = FakeChannel()
        clock = Clock(dt.datetime.now(dt.UTC))  # Retry-After dates are read against the real clock
        app = build(config, channels={"fake": channel}, clock=clock)
        lock = await prepare(app)
        alerts: list[str] = []

        async def sink(source: str, message: str) -> None:
            alerts.append(f"{source}: {message}")

        app.context.alerts.add_sink(sink)
        world = World(app, config, clock, channel, feed_server, alerts, lock)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        await world.app.close()
        if world.lock:
            world.lock.release()


def http_faults(tmp_path: Path) -> list[Fault]:
    big = rss(
        [{"title": "x" * 1000, "link": f"https://e.example/big/{i}", "guid": f"b{i}"} for i in range(300)]
    )
    return [
        Fault("refused", None, url=f"http://127.0.0.1:{closed_port()}/feed", reason=("connection refused",)),
        Fault("dns", None, url="http://feed.does-not-exist.invalid/rss", reason=("resolve", "name", "dns")),
        Fault("e500", Route(status=500, body=b"oops"), reason=("http 500",)),
        Fault("e502", Route(status=502, body=b"bad gateway"), reason=("http 502",)),
        Fault("e503", Route(status=503, body=b"down"), reason=("http 503",)),
        Fault(
            "e429", Route(status=429, headers={"Retry-After": "900"}), reason=("http 429",), retry_after=900
        ),
        Fault(
            "e503date",
            Route(
                status=503,
                headers={
                    "Retry-After": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).strftime(
                        "%a, %d %b %Y %H:%M:%S GMT"
                    )
                },
            ),
            reason=("http 503",),
            retry_after=7200,
        ),
        Fault("loop", Route(status=302, redirect_to="/loop"), reason=("too many redirects",)),
        Fault("e404", Route(status=404, body=b"not here"), reason=("http 404",)),
        Fault(
            "html",
            Route(
                body=b"<!doctype html><html><body><h1>Welcome</h1></body></html>", content_type="text/html"
            ),
            reason=("not a readable feed (the server sent text/html: a web page, not a feed)",),
        ),
        Fault("empty", Route(body=b""), reason=("empty response",)),
        Fault("big", Route(body=big), reason=("cap",)),
        Fault(
            "bomb",
            Route(body=gzip.compress(b"\0" * 50_000_000), headers={"Content-Encoding": "gzip"}),
            reason=("cap",),
        ),
    ]


async def test_each_fault_is_a_reason_in_status_with_backoff_and_the_others_carry_on(
    make_world: Callable[[list[Fault]], Any],
    tmp_path: Path,
    full_backlog: str,
) -> None:
    tls = SelfSignedTLS(tmp_path)
    trickle = Trickle()
    faults = [
        *http_faults(tmp_path),
        Fault("tls", None, url="", reason=("certificate", "ssl")),
        Fault("timeout", None, url=full_backlog, reason=("timed out",)),
        Fault("trickle", None, url=trickle.url, reason=("timed out",)),
    ]
    with tls:
        tls.routes["/tls"] = Route(body=rss(GOOD))
        faults[-3].url = tls.url("/tls")
        try:
            async with asyncio.timeout(60):
                world: World = await make_world(faults)
                started = time.monotonic()
                results = await world.poll_all()
                took = time.monotonic() - started
                status = await world.status()
                hits = {f.name: world.feeds.hits(f"/{f.name}") for f in faults}
                # a scheduled poll a minute later: every faulty feed is backing off
                world.clock.advance(INTERVAL + 1)
                again = await world.poll_all()
                hits_again = {f.name: world.feeds.hits(f"/{f.name}") for f in faults}
                trickle_hits = trickle.hits
        finally:
            trickle.close()

    # the good feed was not held up by the slow ones for longer than their own time bound
    assert results["good"].outcome == "new" and sorted(world.posted()) == [g["title"] for g in GOOD]
    # the trickling body alone would take minutes; every fetch is bounded by 2 x the 1 s timeout
    assert took < 30, f"one poll round took {took:.1f} s with a 1 s fetch timeout"
    assert status["good"]["failures"] == 0 and status["good"]["last_error"] is None
    table = []
    for fault in faults:
        result, feed = results[fault.name], status[fault.name]
        table.append(f"{fault.name:9} {feed['last_error']}")
        assert result.outcome == "error", (fault.name, result)
        assert feed["failures"] == 1, (fault.name, feed)
        error = (feed["last_error"] or "").lower()
        assert any(word in error for word in fault.reason), (fault.name, feed["last_error"])
        assert "traceback" not in error and "internal error" not in error, (fault.name, error)
        next_poll = dt.datetime.fromisoformat(feed["next_poll"])
        wait = (next_poll - world.clock.now).total_seconds() + INTERVAL + 1
        expected = max(2 * INTERVAL, fault.retry_after or 0)
        # (a Retry-After date is read when the answer comes: a busy machine may take a while)
        assert expected - 60 <= wait <= expected + 5, (fault.name, wait, expected)
        assert again[fault.name].outcome == "backoff", (fault.name, again[fault.name])
        assert hits_again[fault.name] == hits[fault.name], f"{fault.name} was fetched while backing off"
    print("\n" + "\n".join(table))
    assert trickle_hits == 1
    assert world.alerts == []  # one failure is not yet an alert
    assert world.posted().count("Good story 0") == 1


async def test_a_410_disables_the_feed_with_one_alert_until_its_url_changes(
    make_world: Callable[[list[Fault]], Any], make_config: Callable[[str], Config]
) -> None:
    async with asyncio.timeout(30):
        world: World = await make_world([Fault("gone", Route(status=410, body=b"gone"))])
        first = await world.poll_all()
        assert first["gone"].outcome == "error" and first["good"].outcome == "new"
        for _ in range(8):  # a day of scheduled polls later: never fetched again
            world.clock.advance(3 * 3600)
            later = await world.poll_all()
            assert later["gone"].outcome == "backoff"
        status = await world.status()
    assert world.feeds.hits("/gone") == 1
    assert len(world.alerts) == 1 and "410" in world.alerts[0] and "stopped polling" in world.alerts[0]
    assert "HTTP 410" in status["gone"]["last_error"] and "gone for good" in status["gone"]["last_error"]

    # the operator gives it a new URL: polled again at once
    world.feeds.routes["/moved"] = Route(
        body=rss([{"title": "Back", "link": "https://e.example/b", "guid": "b"}])
    )
    moved = make_config(
        world.config.path.read_text().replace(world.feeds.url("/gone"), world.feeds.url("/moved"))
    )
    gone_feed = next(f for f in moved.feeds if f.name == "gone")
    async with asyncio.timeout(30):
        result = await world.app.poller.poll(gone_feed)
    assert result.outcome == "new"


async def test_a_feed_that_fails_five_times_alerts_once_and_recovers(
    make_world: Callable[[list[Fault]], Any],
) -> None:
    async with asyncio.timeout(30):
        world: World = await make_world([Fault("flaky", Route(status=503, body=b"down"))])
        for _ in range(7):
            await world.poll_all()
            world.clock.advance(7 * 3600)  # past any backoff
        assert len(world.alerts) == 1 and "failed 5 times in a row" in world.alerts[0]
        world.feeds.routes["/flaky"] = Route(
            body=rss([{"title": "Up", "link": "https://e.example/u", "guid": "u"}])
        )
        await world.poll_all()
        status = await world.status()
    assert status["flaky"]["failures"] == 0 and status["flaky"]["last_error"] is None
    assert "Up" in world.posted()


def latin1_feed(declared: str | None, n: int) -> bytes:
    head = f'<?xml version="1.0" encoding="{declared}"?>' if declared else '<?xml version="1.0"?>'
    return (
        head + '<rss version="2.0"><channel><title>t</title><link>https://e.example/</link><description>d'
        f"</description><item><title>Caf\xe9 \xe0 Jakarta</title><link>https://e.example/c/{n}</link>"
        f"<guid>c{n}</guid><description>x</description></item></channel></rss>"
    ).encode("latin-1")


async def test_odd_but_readable_feeds_post_each_story_once_and_readably(
    make_world: Callable[[list[Fault]], Any],
) -> None:
    utf8_with_a_bad_byte = rss(
        [
            {"title": "Berita \u201cpenting\u201d hari ini", "link": "https://e.example/u/1", "guid": "u1"},
            {"title": "Satu byte rusak", "link": "https://e.example/u/2", "guid": "u2"},
        ]
    ).replace(b"Satu byte", b"Satu \xff byte")
    faults = [
        Fault("nocharset", Route(body=latin1_feed(None, 1), content_type="application/rss+xml")),
        Fault("wrongcharset", Route(body=latin1_feed("utf-8", 2), content_type="text/xml; charset=utf-8")),
        Fault("badbyte", Route(body=utf8_with_a_bad_byte)),
        Fault("entities", Route(body=ENTITY_FEED)),
    ]
    async with asyncio.timeout(60):
        world: World = await make_world(faults)
        results = await world.poll_all()
        status = await world.status()
    titles = world.posted()
    assert all(results[f.name].outcome in ("new", "error") for f in faults), results
    assert results["badbyte"].outcome == "new"
    assert "Berita \u201cpenting\u201d hari ini" in titles  # not garbled by the one bad byte
    assert any(t.startswith("Satu") and t.endswith("byte rusak") for t in titles)
    cafe = [t for t in titles if "Jakarta" in t]
    assert len(cafe) == 2, titles  # from both feeds
    assert cafe == ["Caf\u00e9 \u00e0 Jakarta"] * 2, cafe  # latin-1 bytes read as latin-1
    laughs = [t for t in titles if t.startswith("Laughs") or t.startswith("Secret")]
    assert all(len(t) < 200 and "lollol" not in t for t in laughs), laughs  # no expansion
    assert "SECRET" not in " ".join(titles)
    assert status["good"]["failures"] == 0
    for name in ("nocharset", "wrongcharset", "badbyte"):
        assert status[name]["failures"] == 0, status[name]


async def test_guids_that_change_every_fetch_cause_no_repost_storm(
    make_world: Callable[[list[Fault]], Any],
) -> None:
    async with asyncio.timeout(60):
        world: World = await make_world([Fault("churn", Route(body=b""))])
        for round_ in range(5):
            world.feeds.routes["/churn"] = Route(
                body=rss(
                    [
                        {
                            "title": f"Churn {i}",
                            "link": f"https://e.example/churn/{i}",
                            "guid": f"r{round_}-{i}",
                        }
                        for i in range(4)
                    ]
                )
            )
            await world.poll_all()
            world.clock.advance(INTERVAL + 1)
    churn = [t for t in world.posted() if t.startswith("Churn")]
    assert sorted(churn) == [f"Churn {i}" for i in range(4)], churn


async def test_items_that_drop_out_and_come_back_are_not_posted_again(
    make_world: Callable[[list[Fault]], Any],
) -> None:
    items = [{"title": f"Item {i}", "link": f"https://e.example/item/{i}", "guid": f"i{i}"} for i in range(4)]
    async with asyncio.timeout(60):
        world: World = await make_world([Fault("flicker", Route(body=rss(items)))])
        for shown in (items[1:], items[2:], items, items[:1] + items[3:], items):
            world.clock.advance(INTERVAL + 1)
            world.feeds.routes["/flicker"] = Route(body=rss(shown))
            await world.poll_all()
    flicker = sorted(t for t in world.posted() if t.startswith("Item"))
    assert flicker == [f"Item {i}" for i in range(4)], flicker


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_siar_status_prints_the_reasons_readably(tmp_path: Path, feed_server: FeedServer) -> None:
    """The same through the command line: a daemon-less `siar once`, then `siar status`."""
    feed_server.routes["/good"] = Route(body=rss(GOOD))
    feed_server.routes["/busy"] = Route(status=503, headers={"Retry-After": "600"})
    (tmp_path / "config.toml").write_text(
        '[fetch]\ntimeout = "2s"\n'
        + FEED.format(name="good", url=feed_server.url("/good"), interval=INTERVAL)
        + FEED.format(name="busy", url=feed_server.url("/busy"), interval=INTERVAL)
        + '[channels.console]\ntype = "console"\n'
    )

    def siar(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "main.py"), *args, "--config", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )

    once = siar("once")
    assert once.returncode == 1 and "Good story 0" in once.stdout
    assert "Traceback" not in once.stderr and "feed busy failed: HTTP 503" in once.stderr
    status = siar("status")
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if "busy" in line)
    assert "HTTP 503 Service Unavailable from" in line and "│ 1 " in line  # one failure
