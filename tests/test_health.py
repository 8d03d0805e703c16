"""bot/health.py: /healthz and /readyz over a real aiohttp server, and the readiness rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.health import FeedHealth, HealthEndpoints, Heartbeat, feed_problem, human
from bot.metrics import Metrics

START = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Daemon:
    """A strict stand-in for what the daemon implements (HealthSource)."""

    started_at: datetime = START
    feeds: list[FeedHealth] = field(default_factory=list)
    store_error: Exception | None = None
    store_hangs: bool = False
    store_checks: int = 0

    async def check_store(self) -> None:
        self.store_checks += 1
        if self.store_hangs:
            await asyncio.sleep(3600)
        if self.store_error is not None:
            raise self.store_error

    async def feed_health(self) -> Sequence[FeedHealth]:
        return self.feeds


@dataclass
class Server:
    base: str
    daemon: Daemon
    heartbeat: Heartbeat
    ticks: Ticks
    endpoints: HealthEndpoints
    now: list[datetime]

    async def get(self, path: str, method: str = "GET") -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.request(method, self.base + path) as response:
            return response.status, (await response.json() if method == "GET" else None)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    daemon, ticks, now = Daemon(), Ticks(), [START + timedelta(minutes=1)]
    heartbeat = Heartbeat(clock=ticks)
    endpoints = HealthEndpoints(
        Metrics([], []),
        heartbeat,
        daemon,
        stale_after=60,
        store_timeout=0.2,
        redact=lambda text: text.replace("s3cret", "***"),
        clock=lambda: now[0],
    )
    app = web.Application()
    app.add_routes(endpoints.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Server(f"http://127.0.0.1:{runner.addresses[0][1]}", daemon, heartbeat, ticks, endpoints, now)
    finally:
        await runner.cleanup()


async def test_healthz_follows_the_heartbeat(server: Server) -> None:
    status, body = await server.get("/healthz")
    assert (status, body) == (503, {"ok": False, "checks": {"heartbeat": "no heartbeat yet (starting)"}})
    server.heartbeat.beat()
    server.ticks.now += 59
    assert await server.get("/healthz") == (200, {"ok": True, "checks": {"heartbeat": "ok"}})
    assert (await server.get("/healthz", "HEAD"))[0] == 200
    server.ticks.now += 36
    status, body = await server.get("/healthz")
    assert status == 503
    assert body["checks"]["heartbeat"] == "stale: last heartbeat 1m35s ago (limit 1m)"


async def test_readyz_is_ready_with_a_store_and_fresh_feeds(server: Server) -> None:
    server.daemon.feeds = [FeedHealth("world", 300, START), FeedHealth("new-feed", 300, None)]
    server.now[0] = START + timedelta(minutes=12)  # world succeeded 12 min ago: within 3 x 5 min
    assert await server.get("/readyz") == (200, {"ok": True, "checks": {"store": "ok", "feeds": "ok"}})


async def test_readyz_names_the_feed_that_stopped_succeeding(server: Server) -> None:
    server.daemon.feeds = [
        FeedHealth("world", 300, START + timedelta(minutes=50)),
        FeedHealth("medcom-x", 300, START, "HTTP 503 Service Unavailable"),
    ]
    server.now[0] = START + timedelta(hours=1)
    status, body = await server.get("/readyz")
    assert status == 503
    assert body == {
        "ok": False,
        "checks": {
            "store": "ok",
            "feeds": "feed medcom-x: no successful poll for 1h (interval 5m): HTTP 503 Service Unavailable",
        },
    }


async def test_readyz_fails_on_a_store_error_or_a_store_that_does_not_answer(server: Server) -> None:
    server.daemon.store_error = ConnectionRefusedError("connect to postgresql://siar:s3cret@db refused")
    status, body = await server.get("/readyz")
    assert status == 503 and body["checks"]["feeds"] == "ok"
    assert body["checks"]["store"] == "unreachable: connect to postgresql://siar:***@db refused"
    server.daemon.store_error, server.daemon.store_hangs = None, True
    await asyncio.sleep(1.1)  # past the answer cache
    status, body = await server.get("/readyz")
    assert status == 503 and body["checks"]["store"] == "no answer within 0.2s"


async def test_a_burst_of_readiness_probes_checks_the_store_once(server: Server) -> None:
    results = await asyncio.gather(*(server.get("/readyz") for _ in range(10)))
    assert {status for status, _ in results} == {200}
    assert server.daemon.store_checks == 1


async def test_many_failing_feeds_are_counted_not_all_listed(server: Server) -> None:
    server.daemon.feeds = [FeedHealth(f"feed-{i}", 60, None, "timeout") for i in range(25)]
    server.now[0] = START + timedelta(hours=2)
    status, body = await server.get("/readyz")
    assert status == 503
    assert body["checks"]["feeds"].count("feed feed-") == 10
    assert body["checks"]["feeds"].endswith("; and 15 more")


@pytest.mark.parametrize(
    ("feed", "minutes", "problem"),
    [
        (FeedHealth("a", 300, START), 15, None),  # exactly 3 intervals
        (FeedHealth("a", 300, START), 16, "feed a: no successful poll for 16m (interval 5m)"),
        (FeedHealth("a", 300, None, "timeout"), 10, None),  # first 3 intervals after start
        (
            FeedHealth("a", 300, None, "timeout"),
            90,
            "feed a: no successful poll since start 1h30m ago (interval 5m): timeout",
        ),
        (FeedHealth("a", 300, None, "HTTP 429", waiting="the server asked to wait 2h"), 90, None),
        # a success before a restart long ago: the feed gets its grace after the start again
        (FeedHealth("a", 300, START - timedelta(days=2), "DNS"), 14, None),
        (
            FeedHealth("a", 300, START - timedelta(days=2), "DNS"),
            16,
            "feed a: no successful poll for 2d16m (interval 5m): DNS",
        ),
        (
            FeedHealth("a", 300, None, "x" * 1000),
            90,
            f"feed a: no successful poll since start 1h30m ago (interval 5m): {'x' * 300}",
        ),
    ],
)
def test_feed_problem(feed: FeedHealth, minutes: int, problem: str | None) -> None:
    assert feed_problem(feed, START + timedelta(minutes=minutes), START) == problem


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (300, "5m"), (5400, "1h30m"), (3630, "1h30s"), (2 * 86400 + 7300, "2d2h")],
)
def test_human(seconds: float, text: str) -> None:
    assert human(seconds) == text
