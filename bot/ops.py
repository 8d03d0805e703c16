"""The daemon's window for operators: `/metrics`, `/healthz` and `/readyz` on `[metrics] listen`,
the heartbeat they read, and the outbox gauges refreshed off the scrape path.

The listener is apart from the public one (`[http]`): it carries no authentication, so it
stays on loopback or a private network by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import text

from bot.config import Config, HttpConfig
from bot.health import FeedHealth, HealthEndpoints, Heartbeat
from bot.metrics import Metrics
from bot.outbox_gauges import OutboxSnapshotter
from bot.store import Store
from bot.web import HttpServer

log = logging.getLogger("siar.ops")
HEARTBEAT_EVERY = 10.0  # seconds; /healthz calls the daemon dead after 60 s without one
# An HTTP status that means the server itself asked us to wait (not a failing feed).
WAIT_STATUSES = (429, 503)


class DaemonHealth:
    """What /readyz checks: the store answers, and every feed polled well recently (or is
    waiting because its server asked to)."""

    def __init__(self, config: Callable[[], Config], store: Store, clock: Callable[[], datetime]) -> None:
        self.config = config  # the current one: it changes on a reload
        self.store = store
        self.clock = clock
        self.started_at = clock()

    async def check_store(self) -> None:
        async with self.store.db.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def feed_health(self) -> Sequence[FeedHealth]:
        states = {s.name: s for s in await self.store.feeds.all()}
        now = self.clock()
        out = []
        for feed in self.config().feeds:
            state = states.get(feed.name)
            waiting = ""
            if (
                state is not None
                and state.failures
                and state.last_status in WAIT_STATUSES
                and state.next_poll_at is not None
                and state.next_poll_at > now
            ):
                waiting = f"HTTP {state.last_status}: the server asked to wait until {state.next_poll_at}"
            out.append(
                FeedHealth(
                    feed.name,
                    feed.interval,
                    state.last_success_at if state else None,
                    (state.last_error or "") if state else "",
                    waiting,
                )
            )
        return out


class _OutboxReader:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self.store.reports.counts()

    async def next_due(self, channel: str) -> datetime | None:
        return await self.store.outbox.next_due(channel)


class OpsServer:
    """Starts and stops the metrics/health listener and its background tasks."""

    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], datetime],
        current: Callable[[], Config],
    ) -> None:
        self.listen = config.metrics.listen
        self.metrics = metrics
        self.heartbeat = Heartbeat()
        self.health = DaemonHealth(current, store, clock)
        self.snapshotter = OutboxSnapshotter(_OutboxReader(store), lambda: sorted(metrics.channels))
        self.server: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._redact = config.redact

    async def start(self) -> None:
        """Begin the gauges; listen unless `[metrics] listen = ""`. The heartbeat is beaten by a
        scheduler job (`beat`), so /healthz proves both the event loop and the scheduler run."""
        self.heartbeat.beat()
        if not self.listen:
            return
        self.metrics.watch_outbox(lambda: self.snapshotter.latest)
        self._tasks.append(asyncio.create_task(self.snapshotter.run(), name="ops:outbox-gauges"))
        server = HttpServer(HttpConfig(listen=self.listen, trusted_proxies=[]), name="metrics")
        endpoints = HealthEndpoints(self.metrics, self.heartbeat, self.health, redact=self._redact)
        for route in endpoints.routes():
            server.add_routes([route], prefix=str(route.path))
        try:
            await server.start()
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s (%s); /metrics, /healthz and /readyz are off",
                self.listen,
                exc.strerror or exc,
            )
            return
        self.server = server
        log.info("metrics, /healthz and /readyz on http://%s/", self.listen)

    async def beat(self) -> None:
        """The scheduler job (an async one: it runs on the event loop, not in a thread)."""
        self.heartbeat.beat()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.server is not None:
            await self.server.stop()
            self.server = None


async def record_feed_states(store: Store, config: Config, metrics: Metrics) -> None:
    """The feed gauges from the store (at start and after a reload), so they survive restarts."""
    states = {s.name: s for s in await store.feeds.all()}
    for feed in config.feeds:
        state = states.get(feed.name)
        metrics.feed_state(
            feed.name,
            interval_seconds=feed.interval,
            last_success=state.last_success_at if state else None,
            consecutive_failures=state.failures if state else 0,
        )
