"""Delivery: one worker per channel takes due outbox rows, renders, sends and records the outcome.

The worker claims a row (`sending`) before the request leaves. Its outcome:
sent -> `sent`; RetryLater -> `pending` again after the platform's retry_after or a capped
exponential backoff (until `max_attempts`, then `failed`); Permanent -> `failed` and an alert;
AlreadyDone -> `sent`; Uncertain, an unexpected error, or a shutdown mid-send -> `uncertain`
(never resent automatically, so nothing is ever posted twice).
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
from bot.store import OutboxItem, Store

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

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
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
        while not self._stopping:
            item = await self.store.claim(name, self.clock(), self.worker_id)
            if item is None:
                return
            await self._deliver(name, item)

    async def _worker(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stopping:
            try:
                item = await self.store.claim(name, self.clock(), self.worker_id)
            except Exception:
                log.exception("channel %s: cannot read the outbox; retrying in 5s", name)
                await asyncio.sleep(5)
                continue
            if item is not None:
                try:
                    await self._deliver(name, item)
                except Exception:  # the store failed while recording; the row stays `sending`
                    log.exception("channel %s: cannot record the outcome of outbox row %d", name, item.id)
                    await asyncio.sleep(5)
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

    async def _deliver(self, name: str, item: OutboxItem) -> None:
        channel = self.channels[name]
        settings = channel.settings
        try:
            post = channel.render(item.story)
        except Exception as exc:  # nothing left: a render error is safe to record as final
            await self._finish(item, "failed", "failed", f"cannot render: {exc}")
            await self.alert(name, f"cannot render {item.story.url}: {exc}")
            return
        await self.pacers[name].wait()
        try:
            receipt = await channel.send(post, idempotency_key=f"siar-{item.id}")
        except RetryLater as exc:
            if exc.attempt and item.attempts >= settings.max_attempts:
                reason = f"gave up after {item.attempts} attempts: {exc.reason}"
                await self._finish(item, "failed", "failed", reason)
                await self.alert(name, f"{item.story.url}: {reason}")
                return
            daemon = self.config.daemon
            delay = retry_delay(item.attempts, daemon.retry_base, daemon.retry_max, exc.after)
            at = self.clock() + timedelta(seconds=delay)
            log.warning("channel %s: %s; retry %d in %.0fs", name, exc.reason, item.attempts, delay)
            await self._finish(item, "pending", "retry" if exc.attempt else "deferred",
                               f"{exc.reason} (retry in {delay:.0f}s)", retry_at=at,
                               refund_attempt=not exc.attempt)
        except Permanent as exc:
            await self._finish(item, "failed", "failed", exc.reason)
            await self.alert(name, f"{item.story.url}: {exc.reason}")
        except AlreadyDone as exc:
            await self._finish(item, "sent", "already_sent", exc.reason)
        except Uncertain as exc:
            await self._finish(item, "uncertain", "uncertain", exc.reason)
            await self.alert(name, f"{item.story.url}: {exc.reason}; check it and `siar resend {item.id}`")
        except asyncio.CancelledError:
            if channel.resumable:  # sending again is harmless: pick it up after the restart
                await asyncio.shield(self._finish(item, "pending", "retry",
                                                  "shutdown mid-send; it resumes", retry_at=self.clock()))
            else:
                await asyncio.shield(self._finish(
                    item, "uncertain", "uncertain", "shutdown while sending; it may or may not be out"))
            raise
        except Exception as exc:
            log.exception("channel %s: unexpected error sending outbox row %d", name, item.id)
            await self._finish(item, "uncertain", "uncertain", f"unexpected error: {exc!r}")
            await self.alert(name, f"{item.story.url}: unexpected error {exc!r}")
        else:
            log.info("channel %s: sent %s%s", name, item.story.url,
                     f" as {receipt.url or receipt.remote_id}" if receipt.url or receipt.remote_id else "")
            await self._finish(item, "sent", "sent", receipt.note, remote_id=receipt.remote_id,
                               remote_url=receipt.url)

    async def _finish(self, item: OutboxItem, status: str, decision: str, detail: str = "",
                      remote_id: str = "", remote_url: str = "", retry_at: datetime | None = None,
                      refund_attempt: bool = False) -> None:
        counter = {"sent": "sent", "failed": "failed", "pending": "retry", "uncertain": "uncertain"}
        setattr(self.stats, counter[status], getattr(self.stats, counter[status]) + 1)
        if status != "sent":
            self.stats.problems.append(f"{item.channel}: {item.story.url}: {detail}")
        await self.store.finish(item.id, status, self.clock(), decision=decision, detail=detail,
                                remote_id=remote_id, remote_url=remote_url, retry_at=retry_at,
                                refund_attempt=refund_attempt)


async def _log_alert(channel: str, message: str) -> None:
    log.error("ALERT %s: %s", channel, message)
