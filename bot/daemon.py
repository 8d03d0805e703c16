"""Running siar: the daemon (`run`: schedule, delivery, metrics, reloads) and a single pass (`once`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bot import heap
from bot.app import App, migrations
from bot.config import FeedConfig
from bot.digests import TICK, DigestPlanner
from bot.feedstate import FeedBook
from bot.leases import FeedLeases, Heartbeat
from bot.lock import PidFile, StoreLock
from bot.ops import HEARTBEAT_EVERY, OpsServer, record_feed_states
from bot.reload import Reloader
from bot.websub import WebSub

log = logging.getLogger("siar")


async def prepare(app: App, *, migrate_in_child: bool = False) -> StoreLock | None:
    """Lock the store (SQLite), migrate it (`migrate_in_child`: in a child process, so that
    a long-running daemon does not keep Alembic), recover crashed sends and start the channels."""
    lock = None
    if app.store.sqlite_path is not None:
        lock = StoreLock(app.store.sqlite_path)
        lock.acquire()
    try:
        await app.store.migrate(migrations(), in_child=migrate_in_child)
        now = app.clock()
        # With SQLite only this process sends; on PostgreSQL other daemons may be mid-send.
        stale = None if app.store.is_sqlite else now - timedelta(seconds=app.config.cluster.takeover_after)
        resumable = {n: c.resume_window for n, c in app.channels.items() if c.resumable}
        recovered = await app.store.outbox.recover_sending(now, stale, resumable)
        if recovered:
            log.warning(
                "%d posts were being sent when siar last stopped; those on channels that "
                "cannot resend safely are marked uncertain (see `siar status`, resend with "
                "`siar resend ID`)",
                recovered,
            )
        for name, reason in app.unavailable.items():
            log.warning("channel %s is disabled: %s", name, reason)
        # A channel that cannot start (platform down at boot, revoked token) stops nothing
        # else: its delivery worker retries with backoff while its posts wait.
        for name in app.channels:
            await app.dispatcher.start_channel(name)
    except BaseException:
        if lock:
            lock.release()
        raise
    return lock


async def run_once(app: App) -> int:
    """Poll every feed once, deliver everything due, and return the exit code (1 on failures)."""
    lock: StoreLock | None = None
    try:
        lock = await prepare(app)
        results = await asyncio.gather(*(app.poller.poll(f, force=True) for f in app.config.feeds))
        await app.poller.flush()
        await digest_planner(app).tick()  # a digest due now (each slot's once, whoever runs it)
        stats = await app.dispatcher.drain()
    finally:
        await app.close()
        if lock:
            lock.release()
    failed = [r for r in results if r.failed]
    for r in failed:
        log.error("feed %s failed: %s", r.feed, r.error)
    for problem in stats.problems:
        log.error("delivery problem: %s", problem)
    log.info(
        "once: %d feeds polled (%d failed), %d new stories, %d posts sent, %d failed, "
        "%d to retry, %d uncertain",
        len(results),
        len(failed),
        sum(r.new_stories for r in results),
        stats.sent,
        stats.failed,
        stats.retry,
        stats.uncertain,
    )
    return 1 if failed or stats.failed or stats.retry or stats.uncertain else 0


def digest_planner(app: App) -> DigestPlanner:
    """The job that queues the channels' digests when their slots come."""
    return DigestPlanner(
        app.store, app.channels, app.clock, lambda: app.config.site.timezone, app.dispatcher.wake
    )


async def run_daemon(app: App, stop: asyncio.Event | None = None) -> int:
    """Poll on schedule and deliver until SIGTERM/SIGINT (or `stop`); SIGHUP reloads the
    configuration. Returns the exit code."""
    return await Daemon(app).run(stop or asyncio.Event())


class Daemon:
    """The running process: the poll schedule, delivery, the metrics listener, reloads."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.polls: set[asyncio.Task[None]] = set()
        self.ops = OpsServer(app.config, app.store, app.metrics, app.clock, lambda: self.app.config)
        self.reloader = Reloader(app, self.schedule, self.unschedule)
        self.websub = WebSub(
            app.config, app.store.db, app.clock, self._poll_now, self.retime, metrics=app.metrics
        )
        # One WebSub per app, even when a Daemon is made again for the same app (tests, restarts).
        app.poller.observers = [o for o in app.poller.observers if not isinstance(o, WebSub)]
        app.poller.observers.append(self.websub)
        self.reloader.followers.append(self.websub.reloaded)
        self.digests = digest_planner(app)
        self._reloading: asyncio.Task[bool] | None = None
        cluster, worker = app.config.cluster, app.dispatcher.worker_id
        self.leases = FeedLeases(app.store.db, worker, cluster.lease_intervals)
        self.heartbeat = Heartbeat(
            app.store.db, app.store.outbox, worker, cluster.takeover_after, self._resumable
        )
        self.reloaded = asyncio.Event()  # set after each reload attempt (tests wait on it)

    def schedule(self, feed: FeedConfig, *, now: bool = True, delay: float = 0.0) -> None:
        """Poll `feed` every its interval, the first time in `delay` seconds (replacing its job
        after a reload)."""
        job = f"feed:{feed.name}"
        if self.scheduler.get_job(job) is not None:
            self.scheduler.remove_job(job)
        self.scheduler.add_job(
            _poll_job,
            IntervalTrigger(seconds=self.websub.interval(feed), jitter=self.app.config.fetch.jitter),
            args=(self.app, feed, self.polls, self.leases),
            id=job,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(30, int(feed.interval)),
            next_run_time=self.app.clock() + timedelta(seconds=delay) if now else None,
        )

    async def _beat(self) -> None:
        await self.heartbeat.beat(self.app.clock())

    def _resumable(self) -> dict[str, float | None]:
        return {n: c.resume_window for n, c in self.app.channels.items() if c.resumable}

    def retime(self, feed: FeedConfig) -> None:
        """Poll `feed` at its current rate (WebSub's safety net, or its interval) from now on."""
        job = self.scheduler.get_job(f"feed:{feed.name}")
        if job is not None:
            interval = self.websub.interval(feed)
            job.reschedule(IntervalTrigger(seconds=interval, jitter=self.app.config.fetch.jitter))

    async def _poll_now(self, feed: FeedConfig) -> None:
        # The hub says the feed changed: worth a fetch even while a failure streak backs off
        # (and whichever daemon holds the feed's lease: a notification is not a scheduled poll).
        await _poll_job(self.app, feed, self.polls, force=True)

    def unschedule(self, name: str) -> None:
        if self.scheduler.get_job(f"feed:{name}") is not None:
            self.scheduler.remove_job(f"feed:{name}")

    def _skipped(self, event: JobExecutionEvent) -> None:
        """A poll that did not run: the previous one of its feed still ran, or the loop was too
        busy to start it within its grace time. A skipped poll is a late story: counted
        (`siar_poll_skipped_total`) and logged."""
        if str(event.job_id).startswith("feed:"):
            feed = str(event.job_id)[5:]
            self.app.metrics.poll_skipped(feed)
            why = "its previous poll still runs" if event.code == EVENT_JOB_MAX_INSTANCES else "it is late"
            log.warning("feed %s: a scheduled poll was skipped (%s)", feed, why)

    def hangup(self) -> None:
        """SIGHUP: reload the configuration (one reload at a time; never stops the daemon)."""
        if self._reloading is not None and not self._reloading.done():
            log.info("reload: one is already in progress; this SIGHUP is folded into it")
            return
        log.info("SIGHUP: reloading %s", self.app.config.path)
        self._reloading = asyncio.create_task(self._reload(), name="reload")

    async def _reload(self) -> bool:
        try:
            return await self.reloader.reload()
        finally:
            self.reloaded.set()

    async def run(self, stop: asyncio.Event) -> int:
        app = self.app
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: self.hangup}
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):
                pass
        heap.limit_arenas()  # before the store's and the parse workers' threads start
        lock: StoreLock | None = None
        pid = PidFile(app.config.path)
        try:
            lock = await prepare(app, migrate_in_child=True)
            pid.write()
            await record_feed_states(app.store, app.config, app.metrics)
            await self.ops.start()
            await self.websub.start()
            app.dispatcher.start()
            # First polls spread over each feed's interval: started all at once, every feed's
            # poll would come due at the same moment each interval, queue for the same threads
            # and store, and outlast the interval (skipped polls).
            for feed, delay in zip(app.config.feeds, first_poll_delays(app.config.feeds), strict=True):
                self.schedule(feed, delay=delay)
            if heap.enabled():
                self.scheduler.add_job(heap.trim, IntervalTrigger(seconds=heap.TRIM_EVERY), id="heap-trim")
            self.scheduler.add_job(
                self._flush,
                IntervalTrigger(seconds=FeedBook.FLUSH_EVERY),
                id="feed-book",
                max_instances=1,
                coalesce=True,
            )
            self.scheduler.add_job(
                self.ops.beat,
                IntervalTrigger(seconds=HEARTBEAT_EVERY),
                id="heartbeat",
                next_run_time=app.clock(),
            )
            if not app.store.is_sqlite:  # other daemons share the store
                self.scheduler.add_job(
                    self._beat,
                    IntervalTrigger(seconds=app.config.cluster.heartbeat),
                    id="cluster:heartbeat",
                    next_run_time=app.clock(),
                )
            self.scheduler.add_job(
                self.digests.tick,
                IntervalTrigger(seconds=TICK),
                id="digests",
                max_instances=1,
                coalesce=True,
                next_run_time=app.clock(),
            )
            self.scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
            self.scheduler.start()
            log.info(
                "siar running: %d feeds, %d channels (%s)",
                len(app.config.feeds),
                len(app.channels),
                ", ".join(app.channels) or "none",
            )
            await stop.wait()
            log.info("stopping: no new polls; letting in-flight polls and sends finish")
        finally:
            await self._shut_down()
            pid.remove()
            if lock:
                lock.release()
            for sig in handlers:
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        log.info("siar stopped")
        return 0

    async def _shut_down(self) -> None:
        app = self.app
        if self.scheduler.running:
            self.scheduler.pause()  # no new polls; the running ones get the grace period
        if self._reloading is not None and not self._reloading.done():
            await asyncio.wait({self._reloading}, timeout=app.config.daemon.shutdown_grace)
        if self.polls:
            _, unfinished = await asyncio.wait(set(self.polls), timeout=app.config.daemon.shutdown_grace)
            for task in unfinished:  # a poll is one transaction: cancelling it loses nothing
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            if unfinished:
                log.info("stopping: %d polls did not finish in time and were cancelled", len(unfinished))
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self._flush()
        await self.websub.stop()
        await app.dispatcher.stop(app.config.daemon.shutdown_grace)
        try:  # the others take our feeds over one interval after our last poll
            await self.leases.release({f.name: f.interval for f in app.config.feeds})
        except Exception:
            log.exception("cannot release this daemon's feed leases; they expire on their own")
        await self.heartbeat.close()
        await self.ops.stop()
        await app.close()

    async def _flush(self) -> None:
        """Write the batched states of unchanged polls (bot.feedstate.FeedBook)."""
        try:
            await self.app.poller.flush()
        except Exception:  # the store is down: they stay pending for the next flush
            log.exception("cannot write the feeds' states; retrying in %ss", FeedBook.FLUSH_EVERY)


def first_poll_delays(feeds: list[FeedConfig]) -> list[float]:
    """Seconds until each feed's first poll: the i-th of n feeds at i/n of its interval."""
    n = len(feeds)
    return [feed.interval * i / n for i, feed in enumerate(feeds)]


async def _poll_job(
    app: App,
    feed: FeedConfig,
    polls: set[asyncio.Task[None]],
    leases: FeedLeases | None = None,
    *,
    force: bool = False,
) -> None:
    task = asyncio.current_task()
    if task is not None:
        polls.add(task)
    try:
        if leases is not None and not await _leased(leases, feed, app):
            return  # another daemon polls this feed in this interval
        result = await app.poller.poll(feed, force=force)
        if result.channels:
            app.dispatcher.wake(result.channels)
    except asyncio.CancelledError:
        # Only a shutdown cancels a poll, and a poll is one transaction: nothing is lost, and
        # stopping is normal (the scheduler would log a traceback for a cancelled job).
        return
    finally:
        if task is not None:
            polls.discard(task)


async def _leased(leases: FeedLeases, feed: FeedConfig, app: App) -> bool:
    """Whether this daemon holds `feed`'s lease now (a store error: not this time)."""
    try:
        if await leases.take(feed.name, feed.interval, app.clock()):
            return True
        # Ours, but our last poll started late: wait for its interval rather than poll twice in one.
        early = await leases.early(feed.name, feed.interval, app.clock())
        if 0 < early <= feed.interval / 2:
            await asyncio.sleep(early)
            return await leases.take(feed.name, feed.interval, app.clock())
        return False
    except Exception:
        log.exception("feed %s: cannot take its lease; skipping this poll", feed.name)
        return False
