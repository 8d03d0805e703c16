"""`GET /metrics`, `GET /healthz` and `GET /readyz` as aiohttp routes, and what the daemon feeds them.

- /healthz: the event loop and the scheduler are alive. The daemon beats a `Heartbeat` from a
  scheduled job; a beat older than `stale_after` seconds (or none yet) answers 503.
- /readyz: the store answers within `store_timeout`, and every feed was polled successfully
  within 3x its interval (or is in its first 3 intervals since start, or the daemon states why it
  deliberately does not poll it now). 200 or 503 with `{"ok": …, "checks": {name: "ok" | why}}`.
- /metrics: the Prometheus text format of a `Metrics` registry.

`HealthEndpoints(...).routes()` gives the routes to mount on any aiohttp application.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web
from prometheus_client import generate_latest

from bot.metrics import Metrics

# What generate_latest writes (newer clients call 1.0.0 "latest"; Prometheus 2 reads 0.0.4).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STALE_AFTER = 60.0  # seconds without a heartbeat before /healthz fails (the daemon beats every 10 s)
STORE_TIMEOUT = 5.0
READY_CACHE = 1.0  # seconds a /readyz answer is reused, so a burst of probes costs one store check
MAX_PROBLEMS = 10  # feeds named in one /readyz answer; the rest are counted
MAX_DETAIL = 300  # characters of one feed's last error in the answer


class Heartbeat:
    """The daemon's sign of life: `beat()` from a scheduled job, read by /healthz."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last: float | None = None

    def beat(self) -> None:
        self.last = self.clock()

    def age(self) -> float | None:
        """Seconds since the last beat; None before the first."""
        return None if self.last is None else self.clock() - self.last


@dataclass(frozen=True)
class FeedHealth:
    """One configured feed as the readiness check sees it."""

    name: str
    interval: float  # seconds
    last_success: datetime | None
    last_error: str = ""
    # Why the daemon deliberately does not poll the feed now (a server's long Retry-After, say);
    # empty when it would poll it on schedule. Such a feed does not make siar unready.
    waiting: str = ""


class HealthSource(Protocol):
    """What the daemon implements for /readyz."""

    started_at: datetime  # when the daemon started (a feed gets 3 intervals to succeed first)

    async def check_store(self) -> None:
        """Return when the store answers a trivial query; raise otherwise (the message is shown)."""
        ...

    async def feed_health(self) -> Sequence[FeedHealth]:
        """Every enabled feed (from the daemon's memory or the store)."""
        ...


def feed_problem(feed: FeedHealth, now: datetime, started_at: datetime) -> str | None:
    """Why `feed` makes siar unready at `now`, or None when it is fine."""
    limit = 3 * feed.interval
    if feed.waiting:
        return None
    # After a restart every feed gets its grace again, even if an earlier run had been failing.
    if (now - max(started_at, feed.last_success or started_at)).total_seconds() <= limit:
        return None
    quiet = (now - (feed.last_success or started_at)).total_seconds()
    what = (
        f"no successful poll for {human(quiet)}"
        if feed.last_success
        else f"no successful poll since start {human(quiet)} ago"
    )
    detail = f": {feed.last_error[:MAX_DETAIL]}" if feed.last_error else ""
    return f"feed {feed.name}: {what} (interval {human(feed.interval)}){detail}"


def human(seconds: float) -> str:
    """A duration as "1h30m", "5m" or "45s" (at most two units)."""
    seconds = int(max(0, seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


class HealthEndpoints:
    """The three handlers; `routes()` mounts them on an aiohttp application (e.g. bot/web.py's)."""

    def __init__(
        self,
        metrics: Metrics,
        heartbeat: Heartbeat,
        source: HealthSource,
        *,
        stale_after: float = STALE_AFTER,
        store_timeout: float = STORE_TIMEOUT,
        redact: Callable[[str], str] = str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.source = source
        self.stale_after = stale_after
        self.store_timeout = store_timeout
        self.redact = redact  # errors shown to whoever can reach the port: secrets masked
        self.clock = clock
        self._ready: tuple[float, dict[str, str]] | None = None
        self._ready_lock = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        """GET (and HEAD) /metrics, /healthz and /readyz."""
        return [
            web.get("/metrics", self.metrics_handler),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
        ]

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        age = self.heartbeat.age()
        if age is None:
            check = "no heartbeat yet (starting)"
        elif age > self.stale_after:
            check = f"stale: last heartbeat {human(age)} ago (limit {human(self.stale_after)})"
        else:
            check = "ok"
        return _answer({"heartbeat": check})

    async def readyz(self, request: web.Request) -> web.Response:
        async with self._ready_lock:  # concurrent probes share one store check
            now = time.monotonic()
            if self._ready is None or now - self._ready[0] > READY_CACHE:
                self._ready = (now, await self._readiness())
            checks = self._ready[1]
        return _answer(checks)

    async def _readiness(self) -> dict[str, str]:
        store, feeds = await asyncio.gather(self._store_check(), self._feeds_check())
        return {"store": store, "feeds": feeds}

    async def _store_check(self) -> str:
        try:
            async with asyncio.timeout(self.store_timeout):
                await self.source.check_store()
        except TimeoutError:
            return f"no answer within {self.store_timeout:g}s"
        except Exception as exc:
            return self.redact(f"unreachable: {exc}"[:MAX_DETAIL])
        return "ok"

    async def _feeds_check(self) -> str:
        try:
            async with asyncio.timeout(self.store_timeout):
                feeds = await self.source.feed_health()
        except TimeoutError:
            return f"unknown: feed states not read within {self.store_timeout:g}s"
        except Exception as exc:
            return self.redact(f"unknown: cannot read feed states: {exc}"[:MAX_DETAIL])
        now = self.clock()
        problems = [p for f in feeds if (p := feed_problem(f, now, self.source.started_at))]
        if not problems:
            return "ok"
        more = f"; and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        return self.redact("; ".join(problems[:MAX_PROBLEMS]) + more)


def _answer(checks: dict[str, str]) -> web.Response:
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)
