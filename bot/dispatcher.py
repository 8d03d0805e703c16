"""Delivery: one worker per channel takes due outbox rows, renders, sends and records the outcome.

The worker claims a row (`sending`) before the request leaves. Its outcome:
sent -> `sent`; RetryLater -> `pending` again after the platform's retry_after or a capped
exponential backoff (until `max_attempts`, then `failed`); Permanent -> `failed` and an alert
(one per failure streak); AlreadyDone -> `sent`; Uncertain, an unexpected error, no answer within
`send_timeout`, or a shutdown mid-send -> `uncertain` (never resent automatically, so nothing is
ever posted twice). On a resumable channel (sending twice is harmless) a timeout or a shutdown
mid-send leaves the row `pending` instead, unless the platform's idempotency window has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.backoff import retry_delay
from bot.channel import AlreadyDone, Channel, Permanent, RetryLater, Uncertain
from bot.config import Config
from bot.durations import parse_rate
from bot.store import INTERRUPTED, OutboxItem, Store

log = logging.getLogger("siar.deliver")
Clock = Callable[[], datetime]
Alert = Callable[[str, str], Awaitable[None]]  # (channel, message)
IDLE_CHECK = 30.0  # seconds a worker sleeps at most before looking for due retries again


class Pacer:
    """Spaces sends so that at most `count` go out per `period` seconds (a leaky bucket)."""

    def __init__(self, rate: str) -> None:
        count, period = parse_rate(rate)
        self.gap = period / count
        self._next = 0.0

    async def ready(self) -> None:
        """Wait until the next send is allowed (before a row is claimed, so that a shutdown
        during the wait never leaves a claimed row behind)."""
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)

    def take(self) -> None:
        """Count one send now."""
        now = time.monotonic()
        self._next = max(now, self._next) + self.gap


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    retry: int = 0
    uncertain: int = 0
    problems: deque[str] = field(default_factory=lambda: deque(maxlen=100))


class Dispatcher:
    def __init__(self, config: Config, store: Store, channels: dict[str, Channel], clock: Clock,
                 worker_id: str, alert: Alert | None = None) -> None:
        self.config = config
        self.store = store
        self.channels = channels
        self.clock = clock
        self.worker_id = worker_id
        self.alert = alert or _log_alert
        self.pacers = {n: Pacer(c.settings.rate_limit) for n, c in channels.items()}
        self._wake = {n: asyncio.Event() for n in channels}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._stop_event = asyncio.Event()
        self.started: set[str] = set()  # channels whose start() succeeded
        self._start_failures: dict[str, int] = {}
        self._failing: set[str] = set()  # channels alerted for a failure, until their next success
        self.stats = DeliveryStats()

    def wake(self, channels: set[str] | frozenset[str] | None = None) -> None:
        """Tell the workers of `channels` (default all) that new rows may be due."""
        for name in channels if channels is not None else self._wake:
            if name in self._wake:
                self._wake[name].set()

    def start(self) -> None:
        """Start one worker task per channel."""
        for name in self.channels:
            self._tasks[name] = asyncio.create_task(self._worker(name), name=f"deliver:{name}")

    async def stop(self, grace: float) -> None:
        """Stop taking rows; give in-flight sends `grace` seconds, then abandon them as uncertain."""
        self._stopping = True
        self._stop_event.set()
        self.wake()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks.values(), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def drain(self) -> DeliveryStats:
        """Deliver every row due now on every channel, then return (for `siar once`)."""
        await asyncio.gather(*(self._drain_channel(n) for n in self.channels))
        return self.stats

    async def _drain_channel(self, name: str) -> None:
        if not await self._ensure_started(name, retry=False):
            self.stats.problems.append(f"{name}: cannot start; its posts stay pending")
            self.stats.retry += 1
            return
        while not self._stopping:
            await self.pacers[name].ready()
            item = await self.store.claim(name, self.clock(), self.worker_id)
            if item is None:
                return
            await self._deliver(name, item)

    async def start_channel(self, name: str) -> bool:
        """Try once to start channel `name`; on failure log and alert (once per failure streak)."""
        if name in self.started:
            return True
        try:
            await self.channels[name].start()
        except Exception as exc:
            self._start_failures[name] = self._start_failures.get(name, 0) + 1
            log.error("channel %s: cannot start (%s); its posts wait", name, exc, exc_info=True)
            if self._start_failures[name] == 1:
                await self.alert(name, f"cannot start: {exc}; posts wait until it can")
            return False
        self._start_failures.pop(name, None)
        self.started.add(name)
        log.info("channel %s (%s) ready", name, self.channels[name].type)
        return True

    async def _ensure_started(self, name: str, *, retry: bool = True) -> bool:
        """True once the channel runs; in the daemon (`retry`), waits with backoff between tries."""
        while not self._stopping:
            if await self.start_channel(name):
                return True
            if not retry:
                return False
            await self._sleep(min(600.0, 5.0 * 2 ** min(self._start_failures.get(name, 1), 7)))
        return False

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the dispatcher stops."""
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except TimeoutError:
            pass

    async def _worker(self, name: str) -> None:
        wake = self._wake[name]
        failures = 0
        while not self._stopping:
            try:
                if not await self._ensure_started(name):
                    continue
                await self.pacers[name].ready()
                item = await self.store.claim(name, self.clock(), self.worker_id)
                if item is not None:
                    await self._deliver(name, item)
                    failures = 0
                    continue
                wake.clear()
                timeout = IDLE_CHECK
                due = await self.store.next_due(name)
                if due is not None:
                    timeout = min(IDLE_CHECK, max(0.05, (due - self.clock()).total_seconds()))
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except TimeoutError:
                    pass
                failures = 0
            except Exception:  # the store is unreachable, say: this worker must not die of it
                failures += 1
                delay = min(60.0, 2.0 ** failures)
                log.exception("channel %s: delivery loop error; retrying in %.0fs", name, delay)
                await self._sleep(delay)

    async def _deliver(self, name: str, item: OutboxItem) -> None:
        channel = self.channels[name]
        settings = channel.settings
        try:
            post = channel.render(item.story)
        except Exception as exc:  # nothing left: a render error is safe to record as final
            await self._finish(item, "failed", "failed", f"cannot render: {exc}")
            await self._alert_failure(name, f"cannot render {item.story.url}: {exc}")
            return
        window = getattr(channel, "resume_window", None)
        if (window is not None and item.attempts > 1 and item.first_attempt_at is not None
                and (self.clock() - item.first_attempt_at).total_seconds() > window):
            # An earlier attempt may have posted it, and the platform has forgotten its
            # idempotency key by now: sending again could post twice.
            reason = (f"still not confirmed {window / 60:.0f} minutes after the first attempt, longer than "
                      "the platform remembers the idempotency key; it may or may not be out")
            await self._finish(item, "uncertain", "uncertain", reason)
            await self._alert_failure(name, f"{item.story.url}: {reason}; {_check(item.id)}")
            return
        self.pacers[name].take()
        try:
            async with asyncio.timeout(settings.send_timeout):
                receipt = await channel.send(post, idempotency_key=f"siar-{item.id}")
        except TimeoutError:
            limit = f"no answer within send_timeout ({settings.send_timeout:.0f}s)"
            if channel.resumable:  # it resumes where it stopped, with backoff and max_attempts
                await self._retry(name, item, RetryLater(f"{limit}; it resumes"))
            else:
                await self._finish(item, "uncertain", "uncertain", f"{limit}; it may or may not be out")
                await self._alert_failure(name, f"{item.story.url}: {limit}; {_check(item.id)}")
        except RetryLater as exc:
            await self._retry(name, item, exc)
        except Permanent as exc:
            await self._finish(item, "failed", "failed", exc.reason)
            await self._alert_failure(name, f"{item.story.url}: {exc.reason}")
        except AlreadyDone as exc:
            await self._finish(item, "sent", "already_sent", exc.reason)
        except Uncertain as exc:
            await self._finish(item, "uncertain", "uncertain", exc.reason)
            await self._alert_failure(name, f"{item.story.url}: {exc.reason}; {_check(item.id)}")
        except asyncio.CancelledError:
            if channel.resumable:  # sending again is harmless: pick it up after the restart
                await asyncio.shield(self._finish(item, "pending", "retry", INTERRUPTED,
                                                  retry_at=self.clock()))
            else:
                await asyncio.shield(self._finish(
                    item, "uncertain", "uncertain", "shutdown while sending; it may or may not be out"))
            raise
        except Exception as exc:
            log.exception("channel %s: unexpected error sending outbox row %d", name, item.id)
            await self._finish(item, "uncertain", "uncertain", f"unexpected error: {exc!r}")
            await self._alert_failure(name, f"{item.story.url}: unexpected error {exc!r}")
        else:
            self._failing.discard(name)
            log.info("channel %s: sent %s%s", name, item.story.url,
                     f" as {receipt.url or receipt.remote_id}" if receipt.url or receipt.remote_id else "")
            await self._finish(item, "sent", "sent", receipt.note, remote_id=receipt.remote_id,
                               remote_url=receipt.url)

    async def _retry(self, name: str, item: OutboxItem, exc: RetryLater) -> None:
        """Back to `pending` after the platform's wait or a capped backoff; `failed` after
        max_attempts (planned waits, `exc.attempt == False`, do not count)."""
        if exc.attempt and item.attempts >= self.channels[name].settings.max_attempts:
            reason = f"gave up after {item.attempts} attempts: {exc.reason}"
            await self._finish(item, "failed", "failed", reason)
            await self._alert_failure(name, f"{item.story.url}: {reason}")
            return
        daemon = self.config.daemon
        delay = retry_delay(item.attempts, daemon.retry_base, daemon.retry_max, exc.after)
        at = self.clock() + timedelta(seconds=delay)
        log.warning("channel %s: %s; retry %d in %.0fs", name, exc.reason, item.attempts, delay)
        await self._finish(item, "pending", "retry" if exc.attempt else "deferred",
                           f"{exc.reason} (retry in {delay:.0f}s)", retry_at=at,
                           refund_attempt=not exc.attempt)

    async def _alert_failure(self, name: str, message: str) -> None:
        """Alert the first failure of a streak; later ones until a success only go to the log."""
        if name in self._failing:
            log.error("channel %s: %s (already alerted for this failure streak)", name, message)
            return
        self._failing.add(name)
        await self.alert(name, f"{message} (further failures of this channel are logged, not alerted, "
                               "until a post succeeds)")

    async def _finish(self, item: OutboxItem, status: str, decision: str, detail: str = "",
                      remote_id: str = "", remote_url: str = "", retry_at: datetime | None = None,
                      refund_attempt: bool = False) -> None:
        counter = {"sent": "sent", "failed": "failed", "pending": "retry", "uncertain": "uncertain"}
        setattr(self.stats, counter[status], getattr(self.stats, counter[status]) + 1)
        if status != "sent":
            self.stats.problems.append(f"{item.channel}: {item.story.url}: {detail}")
        detail = self.config.redact(detail)
        await self.store.finish(item.id, status, self.clock(), decision=decision, detail=detail,
                                remote_id=remote_id, remote_url=remote_url, retry_at=retry_at,
                                refund_attempt=refund_attempt)


async def _log_alert(channel: str, message: str) -> None:
    log.error("ALERT %s: %s", channel, message)


def _check(outbox_id: int) -> str:
    return f"check the platform and `siar resend {outbox_id}` if it is not there"
