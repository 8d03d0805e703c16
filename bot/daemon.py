"""Running siar: the daemon (`run`) and a single pass (`once`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bot.app import App, migrations
from bot.config import FeedConfig
from bot.lock import StoreLock

log = logging.getLogger("siar")


async def prepare(app: App) -> StoreLock | None:
    """Lock the store (SQLite), migrate it, recover crashed sends and start the channels."""
    lock = None
    if app.store.sqlite_path is not None:
        lock = StoreLock(app.store.sqlite_path)
        lock.acquire()
    try:
        await app.store.migrate(migrations())
        now = app.clock()
        # With SQLite only this process sends; on PostgreSQL other daemons may be mid-send.
        stale = None if app.store.is_sqlite else now - timedelta(minutes=15)
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


async def run_daemon(app: App, stop: asyncio.Event | None = None) -> int:
    """Poll on schedule and deliver until SIGTERM/SIGINT (or `stop`); returns the exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: _hangup}
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):
            pass
    scheduler = AsyncIOScheduler(timezone="UTC")
    polls: set[asyncio.Task[None]] = set()
    lock: StoreLock | None = None
    try:
        lock = await prepare(app)
        app.dispatcher.start()
        for feed in app.config.feeds:
            scheduler.add_job(
                _poll_job,
                IntervalTrigger(seconds=feed.interval, jitter=app.config.fetch.jitter),
                args=(app, feed, polls),
                id=f"feed:{feed.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(30, int(feed.interval)),
                next_run_time=app.clock(),
            )
        scheduler.start()
        log.info(
            "siar running: %d feeds, %d channels (%s)",
            len(app.config.feeds),
            len(app.channels),
            ", ".join(app.channels) or "none",
        )
        await stop.wait()
        log.info("stopping: no new polls; letting in-flight polls and sends finish")
    finally:
        if scheduler.running:
            scheduler.pause()  # no new polls; the running ones get the grace period
        if polls:
            _, unfinished = await asyncio.wait(set(polls), timeout=app.config.daemon.shutdown_grace)
            for task in unfinished:  # a poll is one transaction: cancelling it loses nothing
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            if unfinished:
                log.info("stopping: %d polls did not finish in time and were cancelled", len(unfinished))
        if scheduler.running:
            scheduler.shutdown(wait=False)
        await app.dispatcher.stop(app.config.daemon.shutdown_grace)
        await app.close()
        if lock:
            lock.release()
        for sig in handlers:
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
    log.info("siar stopped")
    return 0


def _hangup() -> None:
    # systemd's `Restart=on-failure` treats a SIGHUP death as a clean exit: never die of it.
    log.warning(
        "SIGHUP received: reloading the configuration is not available; siar keeps running "
        "with the configuration it started with (restart it to apply changes)"
    )


async def _poll_job(app: App, feed: FeedConfig, polls: set[asyncio.Task[None]]) -> None:
    task = asyncio.current_task()
    if task is not None:
        polls.add(task)
    try:
        result = await app.poller.poll(feed)
        if result.channels:
            app.dispatcher.wake(result.channels)
    except asyncio.CancelledError:
        # Only a shutdown cancels a poll, and a poll is one transaction: nothing is lost, and
        # stopping is normal (the scheduler would log a traceback for a cancelled job).
        return
    finally:
        if task is not None:
            polls.discard(task)
