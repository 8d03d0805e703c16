"""Prometheus metrics of a running siar: `Metrics` owns its own registry and small typed recorders.

Every label value is a configured feed or channel name, or one word from a fixed set (result,
state): the recorders map anything else (a URL, a chat id passed by mistake) to "other", so the
number of series stays bounded whatever the code around them does. `NullMetrics` records nothing
(`[metrics] listen = ""`).

Where the daemon calls them: `poll`/`poll_skipped`/`feed_state` from the poll pipeline and the
scheduler, `send`/`rate_limit_wait`/`channel_up`/`channel_auth_failed` from the dispatcher,
`fanout`/`subscribers` from subscriber channels, `reload` from the reloader; the outbox gauges are
read at scrape time from `watch_outbox(snapshot)` (see bot/outbox_gauges.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from bot import __version__
from bot.outbox_gauges import OutboxCollector, OutboxSnapshot

log = logging.getLogger("siar.metrics")

OTHER = "other"  # the label value of anything that is not a known name or result
POLL_RESULTS = frozenset({"new", "unchanged", "not_modified", "error", "backoff"})
POLL_SUCCESSES = frozenset({"new", "unchanged", "not_modified"})
SEND_RESULTS = frozenset({"sent", "already_sent", "retry", "deferred", "failed", "uncertain", "cancelled"})
SEND_ACCEPTED = frozenset({"sent", "already_sent"})  # the platform has the post: auth works
# One recipient of a subscriber fan-out: delivered, to be retried, refused, gone for good (blocked
# the bot, expired subscription: removed), or unknown (connection lost after sending).
FANOUT_RESULTS = frozenset({"sent", "retry", "failed", "gone", "uncertain"})
RELOAD_RESULTS = frozenset({"applied", "rejected", "failed"})
# A WebSub content notification: verified (the feed is polled), rejected (forged, unsigned, for
# a feed no longer configured: acknowledged and ignored), unknown (no such subscription: 410).
WEBSUB_RESULTS = frozenset({"verified", "rejected", "unknown"})

FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
PARSE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A send is one request, or a whole fan-out to thousands of readers on subscriber channels.
SEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# First seen -> accepted: half a second (idle channel) to hours (rate limits, retries, outages).
_MINUTES = (1, 2, 5, 10, 30, 60, 120, 240, 480)
STORY_TO_POST_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, *(60.0 * m for m in _MINUTES))

M = TypeVar("M", bound=MetricWrapperBase)
Accept = Callable[[tuple[str, ...]], tuple[str, ...]]


class _Labelled(Generic[M]):
    """One labelled metric with its children cached by raw label values.

    Only accepted values are cached, so a stream of distinct bad values can neither grow the
    cache nor the series: they all land on the "other" child.
    """

    def __init__(self, metric: M, accept: Accept) -> None:
        self.metric = metric
        self.accept = accept
        self.children: dict[tuple[str, ...], M] = {}

    def child(self, *values: str) -> M:
        found = self.children.get(values)
        if found is not None:
            return found
        clean = self.accept(values)
        found = self.metric.labels(*clean)
        if clean == values:
            self.children[values] = found
        return found

    def forget(self, position: int, keep: frozenset[str]) -> None:
        """Remove the series whose label at `position` is no longer one of `keep`."""
        for values in list(self.children):
            if values[position] not in keep:
                del self.children[values]
                self.metric.remove(*values)


class Metrics:
    """siar's metrics in a registry of their own (`self.registry`), with typed recorders.

    `feeds` and `channels` are the configured names: the only values the feed and channel labels
    take (besides "other"); `set_names` replaces them after a reload and drops removed series.
    Timestamps come from `clock` (seconds since the epoch).
    """

    enabled = True

    def __init__(
        self,
        feeds: Iterable[str],
        channels: Iterable[str],
        *,
        version: str = __version__,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.feeds = frozenset(feeds)
        self.channels = frozenset(channels)
        self._warned: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        per_feed, per_channel = self._per_feed, self._per_channel
        self._polls = per_feed(Counter, "siar_polls_total", "Feed polls by outcome.", POLL_RESULTS)
        self._skipped = per_feed(
            Counter, "siar_poll_skipped_total", "Scheduled polls skipped: the previous poll still ran."
        )
        self._fetch = Histogram(
            "siar_fetch_seconds", "Time to fetch a feed.", registry=self.registry, buckets=FETCH_BUCKETS
        )
        self._parse = Histogram(
            "siar_parse_seconds", "Time to parse a feed.", registry=self.registry, buckets=PARSE_BUCKETS
        )
        self._new = per_feed(Counter, "siar_new_stories_total", "Stories seen for the first time.")
        self._last_success = per_feed(
            Gauge, "siar_feed_last_success_timestamp_seconds", "Unix time of the last successful poll."
        )
        self._failures = per_feed(Gauge, "siar_feed_consecutive_failures", "Failed polls in a row.")
        self._interval = per_feed(Gauge, "siar_feed_interval_seconds", "The feed's polling interval.")
        self._sends = per_channel(Counter, "siar_sends_total", "Outbox rows sent, by outcome.", SEND_RESULTS)
        self._send_seconds = per_channel(
            Histogram, "siar_send_seconds", "Time of one send (or fan-out).", buckets=SEND_BUCKETS
        )
        self._waits = per_channel(Counter, "siar_rate_limit_waits_total", "Waits for a rate limit.")
        self._wait_seconds = per_channel(
            Counter, "siar_rate_limit_wait_seconds_total", "Seconds spent waiting for rate limits."
        )
        self._subscribers = per_channel(Gauge, "siar_subscribers", "Readers or push subscriptions.")
        self._story_to_post = per_channel(
            Histogram,
            "siar_story_to_post_seconds",
            "From a story's first sight to the platform accepting its post.",
            buckets=STORY_TO_POST_BUCKETS,
        )
        self._up = per_channel(Gauge, "siar_channel_up", "1 while the channel runs, else 0.")
        self._auth_failed = per_channel(
            Gauge,
            "siar_channel_auth_failed",
            "1 after the platform refused the credentials, until a success.",
        )
        self._fanout = per_channel(
            Counter, "siar_fanout_recipients_total", "Fan-out recipients by outcome.", FANOUT_RESULTS
        )
        self._websub = per_feed(
            Counter, "siar_websub_notifications_total", "WebSub notifications by result.", WEBSUB_RESULTS
        )
        self._websub_subscribed = per_feed(
            Gauge, "siar_websub_subscribed", "1 while a verified WebSub subscription pushes the feed."
        )
        reloads = Counter("siar_reloads_total", "Configuration reloads.", ["result"], registry=self.registry)
        self._reloads = _Labelled(reloads, lambda values: (self._word(values[0], RELOAD_RESULTS),))
        build = Gauge(
            "siar_build_info", "Always 1; labelled with the version.", ["version"], registry=self.registry
        )
        build.labels(version).set(1)
        self._auth_failing: set[str] = set()
        self._start_counters()

    # --- label guards ------------------------------------------------------------------------

    def _name(self, value: str, known: frozenset[str], kind: str) -> str:
        if value in known:
            return value
        if kind not in self._warned:  # once per kind: a loop of bad values must not flood the log
            self._warned.add(kind)
            log.warning(
                "metrics: a %s label value is not a configured %s name; counted as %r "
                "(further ones are not logged)",
                kind,
                kind,
                OTHER,
            )
        return OTHER

    def _word(self, value: str, allowed: frozenset[str]) -> str:
        return value if value in allowed else self._name(value, allowed, "result")

    def _per_feed(
        self, kind: type[M], name: str, doc: str, results: frozenset[str] | None = None, **kw: Any
    ) -> _Labelled[M]:
        labels = ["feed"] if results is None else ["feed", "result"]

        def accept(values: tuple[str, ...]) -> tuple[str, ...]:
            head = self._name(values[0], self.feeds, "feed")
            return (head,) if results is None else (head, self._word(values[1], results))

        return _Labelled(kind(name, doc, labels, registry=self.registry, **kw), accept)

    def _per_channel(
        self, kind: type[M], name: str, doc: str, results: frozenset[str] | None = None, **kw: Any
    ) -> _Labelled[M]:
        labels = ["channel"] if results is None else ["channel", "result"]

        def accept(values: tuple[str, ...]) -> tuple[str, ...]:
            head = self._name(values[0], self.channels, "channel")
            return (head,) if results is None else (head, self._word(values[1], results))

        return _Labelled(kind(name, doc, labels, registry=self.registry, **kw), accept)

    def set_names(self, feeds: Iterable[str], channels: Iterable[str]) -> None:
        """After a reload: the feeds and channels that exist now; series of removed ones go."""
        self.feeds, self.channels = frozenset(feeds), frozenset(channels)
        keep_feeds, keep_channels = self.feeds | {OTHER}, self.channels | {OTHER}
        for labelled in (
            self._polls,
            self._skipped,
            self._new,
            self._last_success,
            self._failures,
            self._interval,
            self._websub,
            self._websub_subscribed,
        ):
            labelled.forget(0, keep_feeds)
        channel_metrics: tuple[_Labelled[Counter] | _Labelled[Gauge] | _Labelled[Histogram], ...] = (
            self._sends,
            self._send_seconds,
            self._waits,
            self._wait_seconds,
            self._subscribers,
            self._story_to_post,
            self._up,
            self._auth_failed,
            self._fanout,
        )
        for per_channel in channel_metrics:
            per_channel.forget(0, keep_channels)
        self._auth_failing &= self.channels
        self._start_counters()

    def _start_counters(self) -> None:
        """Create the counters of every name at 0: `increase()` cannot see a series' first
        event, so without a 0 sample the first failed send would never alert."""
        for feed in self.feeds:
            for result in POLL_RESULTS:
                self._polls.child(feed, result)
            self._skipped.child(feed)
            self._new.child(feed)
        for channel in self.channels:
            for result in SEND_RESULTS:
                self._sends.child(channel, result)
            self._waits.child(channel)
            self._wait_seconds.child(channel)

    # --- recorders ---------------------------------------------------------------------------

    def poll(
        self,
        feed: str,
        result: str,
        fetch_seconds: float | None = None,
        parse_seconds: float | None = None,
        new_stories: int = 0,
    ) -> None:
        """One finished poll of `feed`; `result` is one of POLL_RESULTS. A success stamps the
        feed's last success and resets its failure streak; an error extends the streak."""
        self._polls.child(feed, result).inc()
        if fetch_seconds is not None:
            self._fetch.observe(fetch_seconds)
        if parse_seconds is not None:
            self._parse.observe(parse_seconds)
        if new_stories:
            self._new.child(feed).inc(new_stories)
        if result in POLL_SUCCESSES:
            self._last_success.child(feed).set(self.clock())
            self._failures.child(feed).set(0)
        elif result == "error":
            self._failures.child(feed).inc()

    def poll_skipped(self, feed: str) -> None:
        """A scheduled poll of `feed` did not run because the previous one still ran."""
        self._skipped.child(feed).inc()

    def feed_state(
        self, feed: str, *, interval_seconds: float, last_success: datetime | None, consecutive_failures: int
    ) -> None:
        """The feed's state as stored (at start and after a reload), so the gauges survive a
        restart: a feed that never succeeded has no last-success series."""
        self._interval.child(feed).set(interval_seconds)
        self._failures.child(feed).set(consecutive_failures)
        if last_success is not None:
            self._last_success.child(feed).set(last_success.timestamp())

    def send(self, channel: str, result: str, seconds: float, first_seen: datetime | None = None) -> None:
        """One outbox row's send on `channel`, `result` one of SEND_RESULTS, taking `seconds`.
        For a "sent" row, `first_seen` (the story's first sight) gives story-to-post latency;
        any accepted send ends an auth failure."""
        self._sends.child(channel, result).inc()
        self._send_seconds.child(channel).observe(seconds)
        if result in SEND_ACCEPTED:
            if result == "sent" and first_seen is not None:
                latency = max(0.0, self.clock() - first_seen.timestamp())
                self._story_to_post.child(channel).observe(latency)
            if channel in self._auth_failing:
                self.channel_auth_failed(channel, False)

    def rate_limit_wait(self, channel: str, seconds: float) -> None:
        """A send on `channel` waited `seconds` for a rate limit (ours or the platform's)."""
        self._waits.child(channel).inc()
        self._wait_seconds.child(channel).inc(max(0.0, seconds))

    def channel_up(self, channel: str, up: bool) -> None:
        """`channel` runs (True) or waits / cannot start (False)."""
        self._up.child(channel).set(1 if up else 0)

    def channel_auth_failed(self, channel: str, failed: bool = True) -> None:
        """The platform refused `channel`'s credentials (True), or accepts them again (False)."""
        self._auth_failed.child(channel).set(1 if failed else 0)
        if failed and channel in self.channels:
            self._auth_failing.add(channel)
        else:
            self._auth_failing.discard(channel)

    def subscribers(self, channel: str, count: int) -> None:
        """`channel` has `count` subscribers now."""
        self._subscribers.child(channel).set(count)

    def fanout(self, channel: str, result: str, recipients: int = 1) -> None:
        """`recipients` of a fan-out on `channel` ended with `result` (one of FANOUT_RESULTS)."""
        self._fanout.child(channel, result).inc(recipients)

    def reload(self, result: str) -> None:
        """A configuration reload ended with `result` (one of RELOAD_RESULTS)."""
        self._reloads.child(result).inc()

    def websub_notification(self, feed: str, result: str) -> None:
        """A WebSub notification for `feed` ended with `result` (one of WEBSUB_RESULTS)."""
        self._websub.child(feed, result).inc()

    def websub_subscribed(self, feed: str, subscribed: bool) -> None:
        """`feed`'s subscription is verified and trusted (True), or not (any other state, gone)."""
        self._websub_subscribed.child(feed).set(1 if subscribed else 0)

    def watch_outbox(self, snapshot: Callable[[], OutboxSnapshot | None]) -> None:
        """Expose the outbox gauges, read from `snapshot()` (e.g. `OutboxSnapshotter.latest`) at
        each scrape; call once."""
        self.registry.register(OutboxCollector(snapshot, lambda: self.channels, self.clock))

    def collect(self) -> Iterator[Metric]:
        """Every metric family, without the `_created` samples (one extra series per counter and
        histogram child that no alert or panel uses)."""
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class NullMetrics(Metrics):
    """Records nothing (metrics off): every recorder returns at once."""

    enabled = False

    def __init__(
        self,
        feeds: Iterable[str] = (),
        channels: Iterable[str] = (),
        *,
        version: str = __version__,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.feeds, self.channels = frozenset(feeds), frozenset(channels)
        self.registry = CollectorRegistry()

    def set_names(self, feeds: Iterable[str], channels: Iterable[str]) -> None:
        pass

    def poll(
        self,
        feed: str,
        result: str,
        fetch_seconds: float | None = None,
        parse_seconds: float | None = None,
        new_stories: int = 0,
    ) -> None:
        pass

    def poll_skipped(self, feed: str) -> None:
        pass

    def feed_state(
        self, feed: str, *, interval_seconds: float, last_success: datetime | None, consecutive_failures: int
    ) -> None:
        pass

    def send(self, channel: str, result: str, seconds: float, first_seen: datetime | None = None) -> None:
        pass

    def rate_limit_wait(self, channel: str, seconds: float) -> None:
        pass

    def channel_up(self, channel: str, up: bool) -> None:
        pass

    def channel_auth_failed(self, channel: str, failed: bool = True) -> None:
        pass

    def subscribers(self, channel: str, count: int) -> None:
        pass

    def fanout(self, channel: str, result: str, recipients: int = 1) -> None:
        pass

    def reload(self, result: str) -> None:
        pass

    def websub_notification(self, feed: str, result: str) -> None:
        pass

    def websub_subscribed(self, feed: str, subscribed: bool) -> None:
        pass

    def watch_outbox(self, snapshot: Callable[[], OutboxSnapshot | None]) -> None:
        pass
