"""Delivery: one worker per channel takes due outbox rows, renders, sends and records the outcome.

The worker claims a row (`sending`) before the request leaves. Its outcome:
sent -> `sent`; RetryLater -> `pending` again after the platform's retry_after or a capped
exponential backoff (until `max_attempts`, then `failed`); Permanent -> `failed` and an alert
(one per failure streak); AlreadyDone -> `sent`; Uncertain, an unexpected error, no answer within
`send_timeout`, or a shutdown mid-send -> `uncertain` (never resent automatically, so nothing is
ever posted twice). On a resumable channel (sending twice is harmless) a timeout or a shutdown
mid-send leaves the row `pending` instead, unless the platform's idempotency window has passed.

A row's action says what to do: `post` a story, `edit` or `delete` the post of another row
(a correction, a retraction; nothing to do when that post never went out), or send a `digest`
(`render_digest` of its stories). Quiet hours that hold posts or fold them into a digest let
only priority rows (breaking news, edits, deletions) through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from bot.budgets import RateBudgets, SharedPace
from bot.channel import Channel, ChannelError, Unauthorized
from bot.config import Config
from bot.delivery import DONE, Attempt, Policy, transition
from bot.durations import parse_rate
from bot.metrics import Metrics, NullMetrics
from bot.outbox import OutboxItem
from bot.schedule import in_quiet
from bot.store import Store
from bot.types import Digest, Receipt

log = logging.getLogger("siar.deliver")
Clock = Callable[[], datetime]
Alert = Callable[[str, str], Awaitable[None]]  # (channel, message)
IDLE_CHECK = 30.0  # seconds a worker sleeps at most before looking for due retries again
PAUSE_CHECK = 5.0  # seconds between reads of the paused channels (`siar pause` from another process)


class Pacer:
    """Spaces sends so that at most `count` go out per `period` seconds (a leaky bucket);
    with `shared` (several daemons on PostgreSQL) also across daemons."""

    def __init__(self, rate: str, shared: SharedPace | None = None) -> None:
        count, period = parse_rate(rate)
        self.gap = period / count
        self._next = 0.0
        self.shared = shared

    async def ready(self) -> float:
        """Wait until the next send is allowed (before a row is claimed, so that a shutdown
        during the wait never leaves a claimed row behind); the seconds it waited."""
        wait = max(0.0, self._next - time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        if self.shared is not None:
            more = await self.shared(self.gap)
            if more > 0:
                await asyncio.sleep(more)
                wait += more
        return wait

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
    cancelled: int = 0  # nothing to do (an edit of a post that never went out, …)
    problems: deque[str] = field(default_factory=lambda: deque(maxlen=100))


class Dispatcher:
    def __init__(
        self,
        config: Config,
        store: Store,
        channels: dict[str, Channel],
        clock: Clock,
        worker_id: str,
        alert: Alert | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.channels = channels
        self.clock = clock
        self.worker_id = worker_id
        self.alert = alert or _log_alert
        self.metrics = metrics or NullMetrics()
        self.budgets = None if store.is_sqlite else RateBudgets(store.db)
        self.pacers = {n: self._pacer(n, c) for n, c in channels.items()}
        self._wake = {n: asyncio.Event() for n in channels}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._retiring: set[str] = set()  # channels whose worker finishes its send and stops
        self._stop_event = asyncio.Event()
        self.started: set[str] = set()  # channels whose start() succeeded
        self._start_failures: dict[str, int] = {}
        self._failing: set[str] = set()  # channels alerted for a failure, until their next success
        self.paused: set[str] = set()
        self._pauses_read = -1e9
        self.stats = DeliveryStats()

    def wake(self, channels: set[str] | frozenset[str] | None = None) -> None:
        """Tell the workers of `channels` (default all) that new rows may be due."""
        if channels is None or channels & self.paused:
            self._pauses_read = -1e9  # a resume: look again now
        for name in channels if channels is not None else self._wake:
            if name in self._wake:
                self._wake[name].set()

    def _pacer(self, name: str, channel: Channel) -> Pacer:
        """The channel's `rate_limit`; on PostgreSQL shared by every daemon (a slot is reserved
        only when a post is due, so an idle worker's wake-ups cost the channel nothing)."""
        if self.budgets is None:
            return Pacer(channel.settings.rate_limit)

        async def due() -> bool:
            found = await self.store.outbox.next_due(name)
            return found is not None and found <= self.clock()

        return Pacer(channel.settings.rate_limit, self.budgets.pace(f"channel:{name}", due))

    def start(self) -> None:
        """Start one worker task per channel."""
        for name in self.channels:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        self._tasks[name] = asyncio.create_task(self._worker(name), name=f"deliver:{name}")

    def add_channel(self, name: str, channel: Channel, *, run: bool = True) -> None:
        """A channel added while running (a reload): its worker starts it and takes its rows."""
        self.channels[name] = channel
        self.pacers[name] = self._pacer(name, channel)
        self._wake[name] = asyncio.Event()
        self._retiring.discard(name)
        if run:
            self._spawn(name)

    async def remove_channel(self, name: str, grace: float) -> Channel | None:
        """Stop `name`'s worker: a send in progress finishes (on the old settings) within
        `grace`, else it is abandoned like at shutdown. Returns the channel (the caller closes
        it); its posts stay in the outbox."""
        channel = self.channels.get(name)
        task = self._tasks.pop(name, None)
        self._retiring.add(name)
        if name in self._wake:
            self._wake[name].set()
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=grace)
            for late in pending:
                late.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for table in (self.channels, self.pacers, self._wake):
            table.pop(name, None)
        self.started.discard(name)
        self._failing.discard(name)
        self._start_failures.pop(name, None)
        self._retiring.discard(name)
        return channel

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
        await self._read_pauses(force=True)
        await asyncio.gather(*(self._drain_channel(n) for n in self.channels))
        return self.stats

    async def _drain_channel(self, name: str) -> None:
        if name in self.paused:
            log.info("channel %s is paused; its posts wait", name)
            return
        if not await self._ensure_started(name, retry=False):
            self.stats.problems.append(f"{name}: cannot start; its posts stay pending")
            self.stats.retry += 1
            return
        while not self._stopping:
            await self._paced(name)
            item = await self._claim(name)
            if item is None:
                return
            await self._deliver(name, item)

    async def _paced(self, name: str) -> None:
        waited = await self.pacers[name].ready()
        if waited:
            self.metrics.rate_limit_wait(name, waited)

    async def _read_pauses(self, *, force: bool = False) -> None:
        """The paused channels, read again every few seconds (another process may pause one)."""
        now = time.monotonic()
        if force or now - self._pauses_read >= PAUSE_CHECK:
            self._pauses_read = now
            self.paused = set(await self.store.outbox.paused())

    async def start_channel(self, name: str) -> bool:
        """Try once to start channel `name`; on failure log and alert (once per failure streak)."""
        if name in self.started:
            return True
        try:
            await self.channels[name].start()
        except Exception as exc:
            self._start_failures[name] = self._start_failures.get(name, 0) + 1
            self.metrics.channel_up(name, False)
            if isinstance(exc, Unauthorized):
                self.metrics.channel_auth_failed(name)
            log.error("channel %s: cannot start (%s); its posts wait", name, exc, exc_info=True)
            if self._start_failures[name] == 1:
                await self.alert(name, f"cannot start: {exc}; posts wait until it can")
            return False
        self._start_failures.pop(name, None)
        self.started.add(name)
        self.metrics.channel_up(name, True)
        log.info("channel %s (%s) ready", name, self.channels[name].type)
        return True

    def _running(self, name: str) -> bool:
        return not self._stopping and name not in self._retiring

    async def _ensure_started(self, name: str, *, retry: bool = True) -> bool:
        """True once the channel runs; in the daemon (`retry`), waits with backoff between tries."""
        while self._running(name):
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
        while self._running(name):
            try:
                if not await self._ensure_started(name):
                    continue
                await self._read_pauses()
                if name in self.paused:
                    await self._idle(wake, PAUSE_CHECK)
                    continue
                await self._paced(name)
                if not self._running(name):
                    break
                item = await self._claim(name)
                if item is not None:
                    await self._deliver(name, item)
                    failures = 0
                    continue
                due = await self.store.outbox.next_due(name)
                timeout = IDLE_CHECK
                if due is not None and not self.quiet_floor(name):  # quiet: held rows are due
                    timeout = min(IDLE_CHECK, max(0.05, (due - self.clock()).total_seconds()))
                await self._idle(wake, timeout)
                failures = 0
            except Exception:  # the store is unreachable, say: this worker must not die of it
                failures += 1
                delay = min(60.0, 2.0**failures)
                log.exception("channel %s: delivery loop error; retrying in %.0fs", name, delay)
                await self._sleep(delay)

    @staticmethod
    async def _idle(wake: asyncio.Event, timeout: float) -> None:
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _deliver(self, name: str, item: OutboxItem) -> None:
        """Render, send and record one claimed row; whatever happens, the row leaves `sending`
        (but for a hard kill, which `recover_sending` handles on the next start)."""
        channel = self.channels[name]
        try:
            work = await self._work(channel, item)
        except Exception as exc:  # nothing left: a render error is safe to record as final
            await self._apply(name, item, Attempt("render_error", str(exc)))
            return
        if isinstance(work, Attempt):  # nothing to send (see _work)
            await self._apply(name, item, work)
            return
        window = channel.resume_window
        if (
            window is not None
            and item.attempts > 1
            and item.first_attempt_at is not None
            and (self.clock() - item.first_attempt_at).total_seconds() > window
        ):
            # An earlier attempt may have posted it, and the platform has forgotten its
            # idempotency key by now: sending again could post twice.
            await self._apply(name, item, Attempt("window_expired"))
            return
        self.pacers[name].take()
        began = time.monotonic()
        try:
            async with asyncio.timeout(channel.settings.send_timeout) as deadline:
                receipt = await work()
        except TimeoutError as exc:
            # Our deadline, or the channel's own timeout (an aiohttp read timeout, say): only
            # the first is `send_timeout`; the other is an unknown outcome like any error.
            attempt = Attempt("timeout") if deadline.expired() else Attempt.of(exc)
        except asyncio.CancelledError:
            await asyncio.shield(self._apply(name, item, Attempt("cancelled")))
            raise
        except Exception as exc:
            if not isinstance(exc, ChannelError):
                log.exception("channel %s: unexpected error sending outbox row %d", name, item.id)
            attempt = Attempt.of(exc)
        else:
            attempt = Attempt("sent", receipt=receipt)
            log.info(
                "channel %s: %s %s%s",
                name,
                DONE.get(item.action, item.action),
                item.story.url,
                f" as {receipt.url or receipt.remote_id}" if receipt.url or receipt.remote_id else "",
            )
        await self._apply(name, item, attempt, time.monotonic() - began)

    async def _work(self, channel: Channel, item: OutboxItem) -> Callable[[], Awaitable[Receipt]] | Attempt:
        """The request row `item` makes of `channel` (by its action), or the Attempt that
        settles it without one. Raises what rendering raises."""
        key = item.key
        if item.action == "digest":
            digest = await self._digest(item)
            if digest is None:
                return Attempt("moot", "every story of this digest was retracted")
            post = channel.render_digest(digest)
            return lambda: channel.send(post, idempotency_key=key)
        if item.action in ("edit", "delete"):
            target = item.target
            if target is None:
                return _not_sent(item)
            if item.action == "delete":
                return lambda: channel.delete(target, idempotency_key=key)
            post = channel.render(item.story)
            return lambda: channel.edit(post, target, idempotency_key=key)
        too_old = self._held_too_long(channel, item)
        if too_old:
            return Attempt("moot", too_old)
        post = channel.render(item.story)
        return lambda: channel.send(post, idempotency_key=key)

    async def _digest(self, item: OutboxItem) -> Digest | None:
        """The roundup a digest row stands for (its stories as they read now, retracted ones
        left out); None when none is left."""
        ids = [int(i) for i in item.args.get("stories", [])]
        found = await self.store.stories.by_ids(ids)
        stories = tuple(found[i] for i in ids if i in found)
        if not stories:
            return None
        at = item.args.get("at")
        return Digest(
            title=str(item.args.get("title", "")),
            stories=stories,
            more=int(item.args.get("more", 0)),
            at=datetime.fromisoformat(at) if at else None,
        )

    def _held_too_long(self, channel: Channel, item: OutboxItem) -> str:
        """Why a post held through quiet hours (`quiet = "hold"`) is dropped: older than the
        channel's max_age by the time the quiet hours end; "" to send it."""
        settings = channel.settings
        if settings.quiet != "hold" or settings.max_age is None or item.attempts > 1:
            return ""
        published = item.story.published
        if published is None:
            return ""
        age = (self.clock() - published).total_seconds()
        if age <= settings.max_age:
            return ""
        return (
            f"held through quiet hours; published {int(age)}s ago, older than max_age "
            f"({int(settings.max_age)}s) when they ended"
        )

    def quiet_floor(self, name: str) -> int:
        """The least priority `name` sends now: 1 (breaking news, edits and deletions only)
        during its quiet hours when they hold posts or fold them into a digest, else 0."""
        settings = self.channels[name].settings
        if settings.quiet == "silent" or settings.quiet_hours is None:
            return 0
        return 1 if in_quiet(self.clock(), settings.quiet_hours, self.config.site.timezone) else 0

    async def _claim(self, name: str) -> OutboxItem | None:
        """The next row `name` may send now (quiet hours considered)."""
        floor = self.quiet_floor(name)
        if floor and self.channels[name].settings.quiet == "digest":
            await self.store.outbox.fold_into_digest(name, self.clock())
        return await self.store.outbox.claim(name, self.clock(), self.worker_id, min_priority=floor)

    def policy(self, name: str, action: str = "post") -> Policy:
        channel, daemon = self.channels[name], self.config.daemon
        return Policy(
            # Editing or deleting again is harmless (the platform answers "already so").
            resumable=channel.resumable or action in ("edit", "delete"),
            max_attempts=channel.settings.max_attempts,
            send_timeout=channel.settings.send_timeout,
            resume_window=channel.resume_window,
            retry_base=daemon.retry_base,
            retry_max=daemon.retry_max,
        )

    async def _apply(self, name: str, item: OutboxItem, attempt: Attempt, seconds: float = 0.0) -> None:
        """Record `attempt`'s transition (see bot.delivery), count it and alert when due."""
        self.metrics.send(
            name,
            _RESULTS.get(attempt.kind, attempt.kind),
            seconds,
            item.first_seen_at if attempt.kind == "sent" and item.action == "post" else None,
        )
        if attempt.auth:  # the platform refused our credentials (cleared by the next success)
            self.metrics.channel_auth_failed(name)
        step = transition(
            attempt,
            item_id=item.id,
            attempts=item.attempts,
            url=item.story.url,
            policy=self.policy(name, item.action),
            now=self.clock(),
            action=item.action,
        )
        finish = step.finish
        counter = {
            "sent": "sent",
            "failed": "failed",
            "pending": "retry",
            "uncertain": "uncertain",
            "cancelled": "cancelled",
        }
        setattr(self.stats, counter[finish.status], getattr(self.stats, counter[finish.status]) + 1)
        if finish.status not in ("sent", "cancelled"):
            self.stats.problems.append(f"{item.channel}: {item.story.url}: {finish.detail}")
        if finish.status == "pending" and finish.retry_at is not None:
            log.warning("channel %s: %s", name, finish.detail)
        if finish.status == "sent":
            self._failing.discard(name)
        finish = replace(finish, detail=self.config.redact(finish.detail))
        await self.store.outbox.finish(item.id, finish, self.clock())
        if step.alert is not None:
            await self._alert_failure(name, self.config.redact(step.alert))

    async def _alert_failure(self, name: str, message: str) -> None:
        """Alert the first failure of a streak; later ones until a success only go to the log."""
        if name in self._failing:
            log.error("channel %s: %s (already alerted for this failure streak)", name, message)
            return
        self._failing.add(name)
        await self.alert(
            name,
            f"{message} (further failures of this channel are logged, not alerted, until a post succeeds)",
        )


# Attempt kinds -> the metric's `result` word (see bot.metrics).
_RESULTS = {
    "sent": "sent",
    "already": "already_sent",
    "retry": "retry",
    "permanent": "failed",
    "render_error": "failed",
    "uncertain": "uncertain",
    "error": "uncertain",
    "window_expired": "uncertain",
    "timeout": "uncertain",
    "cancelled": "uncertain",
    "moot": "cancelled",
}


def _not_sent(item: OutboxItem) -> Attempt:
    """An edit or deletion whose post is not out: wait while it is being sent, else there is
    nothing to change."""
    status = item.target_status
    if status in ("pending", "sending"):
        return Attempt("retry", f"the post to {item.action} is still {status}", after=60.0, counts=False)
    if status == "uncertain":
        why = "the post is uncertain (it may be out): check the platform by hand"
    else:
        why = f"the post is {status}, it never went out" if status else "the post is not in the outbox"
    return Attempt("moot", f"nothing to {item.action}: {why}")


async def _log_alert(channel: str, message: str) -> None:
    log.error("ALERT %s: %s", channel, message)
