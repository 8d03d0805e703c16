"""bot/metrics.py and bot/outbox_gauges.py: names, types, labels, values as a scraper sees them."""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot import __version__
from bot import metrics as module
from bot.config import Config, ConfigError
from bot.health import FeedHealth, HealthEndpoints, Heartbeat
from bot.metrics import OTHER, Metrics, NullMetrics
from bot.outbox_gauges import OUTBOX_STATES, OutboxSnapshot, OutboxSnapshotter

NOW = 1_700_000_000.0

# The contract with examples/prometheus/alerts.yml and examples/grafana/siar.json.
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "siar_polls": ("counter", {"feed", "result"}),
    "siar_poll_skipped": ("counter", {"feed"}),
    "siar_fetch_seconds": ("histogram", set()),
    "siar_parse_seconds": ("histogram", set()),
    "siar_new_stories": ("counter", {"feed"}),
    "siar_feed_last_success_timestamp_seconds": ("gauge", {"feed"}),
    "siar_feed_consecutive_failures": ("gauge", {"feed"}),
    "siar_feed_interval_seconds": ("gauge", {"feed"}),
    "siar_outbox_rows": ("gauge", {"channel", "state"}),
    "siar_outbox_oldest_pending_age_seconds": ("gauge", {"channel"}),
    "siar_sends": ("counter", {"channel", "result"}),
    "siar_send_seconds": ("histogram", {"channel"}),
    "siar_rate_limit_waits": ("counter", {"channel"}),
    "siar_rate_limit_wait_seconds": ("counter", {"channel"}),
    "siar_subscribers": ("gauge", {"channel"}),
    "siar_story_to_post_seconds": ("histogram", {"channel"}),
    "siar_channel_up": ("gauge", {"channel"}),
    "siar_channel_auth_failed": ("gauge", {"channel"}),
    "siar_fanout_recipients": ("counter", {"channel", "result"}),
    "siar_reloads": ("counter", {"result"}),
    "siar_websub_notifications": ("counter", {"feed", "result"}),
    "siar_websub_subscribed": ("gauge", {"feed"}),
    "siar_build_info": ("gauge", {"version"}),
}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class NoHealth:
    started_at = datetime.fromtimestamp(NOW, UTC)

    async def check_store(self) -> None:
        return None

    async def feed_health(self) -> Sequence[FeedHealth]:
        return []


def exercise(metrics: Metrics) -> None:
    """Touch every recorder once, with known values."""
    metrics.feed_state("world", interval_seconds=300, last_success=None, consecutive_failures=2)
    metrics.poll("world", "error", fetch_seconds=0.3)
    metrics.poll("world", "new", fetch_seconds=0.2, parse_seconds=0.04, new_stories=3)
    metrics.poll("sport", "not_modified", fetch_seconds=0.1)
    metrics.poll_skipped("sport")
    metrics.send("tg", "sent", 0.8, first_seen=datetime.fromtimestamp(NOW - 4.0, UTC))
    metrics.send("tg", "retry", 0.1)
    metrics.rate_limit_wait("tg", 2.5)
    metrics.rate_limit_wait("tg", 0.5)
    metrics.subscribers("readers", 1234)
    metrics.fanout("readers", "sent", 1200)
    metrics.fanout("readers", "gone", 3)
    metrics.channel_up("tg", True)
    metrics.channel_up("readers", False)
    metrics.channel_auth_failed("readers")
    metrics.reload("applied")
    metrics.websub_notification("world", "verified")
    metrics.websub_subscribed("world", True)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, Clock, str]]:
    clock = Clock()
    metrics = Metrics(["world", "sport"], ["tg", "readers"], clock=clock)
    app = web.Application()
    app.add_routes(HealthEndpoints(metrics, Heartbeat(), NoHealth()).routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield metrics, clock, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def scrape(base: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


async def test_a_scrape_has_every_metric_with_its_type_and_labels(served: tuple[Metrics, Clock, str]) -> None:
    metrics, _, base = served
    exercise(metrics)
    snapshot = OutboxSnapshot({"tg": {"pending": 2, "sent": 9}}, {"tg": NOW - 1000}, NOW)
    metrics.watch_outbox(lambda: snapshot)
    families = {f.name: f for f in text_string_to_metric_families(await scrape(base))}
    assert set(families) == set(EXPECTED)
    for name, (kind, labels) in EXPECTED.items():
        assert families[name].type == kind, name
        assert families[name].samples, f"{name} has no samples"
        for s in families[name].samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)


async def test_scraped_values(served: tuple[Metrics, Clock, str]) -> None:
    metrics, clock, base = served
    exercise(metrics)
    snapshot = OutboxSnapshot(
        {"tg": {"pending": 2, "sent": 9}, "gone": {"pending": 5}}, {"tg": NOW - 1000}, NOW
    )
    metrics.watch_outbox(lambda: snapshot)
    clock.now = NOW + 20  # the age grows between snapshots
    found = samples(await scrape(base))
    assert value(found, "siar_polls_total", feed="world", result="new") == 1
    assert value(found, "siar_polls_total", feed="world", result="error") == 1
    assert value(found, "siar_poll_skipped_total", feed="sport") == 1
    assert value(found, "siar_new_stories_total", feed="world") == 3
    assert value(found, "siar_fetch_seconds_count") == 3
    assert value(found, "siar_fetch_seconds_sum") == pytest.approx(0.6)
    assert value(found, "siar_fetch_seconds_bucket", le="0.25") == 2
    assert value(found, "siar_parse_seconds_count") == 1
    assert value(found, "siar_feed_last_success_timestamp_seconds", feed="world") == NOW
    assert value(found, "siar_feed_consecutive_failures", feed="world") == 0  # 2, 3, then a success
    assert value(found, "siar_feed_interval_seconds", feed="world") == 300
    assert value(found, "siar_sends_total", channel="tg", result="sent") == 1
    assert value(found, "siar_send_seconds_count", channel="tg") == 2
    assert value(found, "siar_story_to_post_seconds_count", channel="tg") == 1
    assert value(found, "siar_story_to_post_seconds_bucket", channel="tg", le="2.0") == 0
    assert value(found, "siar_story_to_post_seconds_bucket", channel="tg", le="5.0") == 1
    assert value(found, "siar_rate_limit_waits_total", channel="tg") == 2
    assert value(found, "siar_rate_limit_wait_seconds_total", channel="tg") == 3.0
    assert value(found, "siar_subscribers", channel="readers") == 1234
    assert value(found, "siar_fanout_recipients_total", channel="readers", result="sent") == 1200
    assert value(found, "siar_channel_up", channel="readers") == 0
    assert value(found, "siar_channel_up", channel="tg") == 1
    assert value(found, "siar_channel_auth_failed", channel="readers") == 1
    assert value(found, "siar_reloads_total", result="applied") == 1
    assert value(found, "siar_build_info", version=__version__) == 1
    assert value(found, "siar_outbox_rows", channel="tg", state="pending") == 2
    assert value(found, "siar_outbox_rows", channel="tg", state="uncertain") == 0
    assert value(found, "siar_outbox_oldest_pending_age_seconds", channel="tg") == 1020
    assert value(found, "siar_outbox_oldest_pending_age_seconds", channel="readers") == 0
    # a channel no longer configured keeps its rows in the store, but no series
    assert not any(dict(labels).get("channel") == "gone" for _, labels in found)


def test_a_failure_streak_counts_up_and_a_feed_that_never_succeeded_has_no_last_success() -> None:
    metrics = Metrics(["world"], [], clock=Clock())
    for _ in range(3):
        metrics.poll("world", "error")
    metrics.poll("world", "backoff")
    found = samples(_text(metrics))
    assert value(found, "siar_feed_consecutive_failures", feed="world") == 3
    assert ("siar_feed_last_success_timestamp_seconds", frozenset({("feed", "world")})) not in found


def test_a_sent_post_ends_an_auth_failure_and_a_retry_does_not() -> None:
    metrics = Metrics([], ["x"])
    metrics.channel_auth_failed("x")
    metrics.send("x", "retry", 0.1)
    assert value(samples(_text(metrics)), "siar_channel_auth_failed", channel="x") == 1
    metrics.send("x", "already_sent", 0.1)
    assert value(samples(_text(metrics)), "siar_channel_auth_failed", channel="x") == 0


def test_no_url_chat_id_or_story_id_ever_becomes_a_label_value() -> None:
    metrics = Metrics(["world"], ["tg"], clock=Clock())
    metrics.watch_outbox(lambda: OutboxSnapshot({f"-100{i}": {"pending": 1} for i in range(50)}, {}, NOW))
    leaks = []
    for i in range(1000):
        url, chat, story = f"https://example.com/news/{i}?utm=1", f"-100{7000 + i}", f"medcom-{i:06d}"
        leaks += [url, chat, story]
        metrics.poll(url, "new", 0.1, 0.1, 1)
        metrics.poll("world", url)
        metrics.poll_skipped(story)
        metrics.feed_state(url, interval_seconds=60, last_success=None, consecutive_failures=1)
        metrics.send(chat, "sent", 0.1, datetime.fromtimestamp(NOW, UTC))
        metrics.send("tg", story, 0.1)
        metrics.rate_limit_wait(chat, 1.0)
        metrics.subscribers(chat, i)
        metrics.fanout("tg", chat)
        metrics.fanout(chat, "sent")
        metrics.channel_up(chat, True)
        metrics.channel_auth_failed(story)
        metrics.reload(url)
    text = _text(metrics)
    values = {v for f in text_string_to_metric_families(text) for s in f.samples for v in s.labels.values()}
    assert values <= {"world", "tg", OTHER, __version__} | _words() | _buckets(text), values
    assert not any(leak in text for leak in leaks)
    series = sum(len(f.samples) for f in text_string_to_metric_families(text))
    assert series < 400, series  # bounded: the same after 1,000 distinct values as after 1
    assert all(len(m.children) < 20 for m in vars(metrics).values() if hasattr(m, "children"))


def test_removed_feeds_and_channels_lose_their_series_after_a_reload() -> None:
    metrics = Metrics(["old", "kept"], ["gone", "tg"], clock=Clock())
    metrics.poll("old", "new")
    metrics.poll("kept", "new")
    metrics.send("gone", "sent", 1.0)
    metrics.channel_auth_failed("gone")
    metrics.set_names(["kept", "new"], ["tg"])
    metrics.poll("new", "unchanged")
    text = _text(metrics)
    assert 'feed="old"' not in text and 'channel="gone"' not in text
    assert 'feed="kept"' in text and 'feed="new"' in text


def test_null_metrics_records_nothing_through_the_same_api() -> None:
    public = {n for n, f in inspect.getmembers(Metrics, inspect.isfunction) if not n.startswith("_")}
    for name in public - {"collect"}:
        ours, null = getattr(Metrics, name), getattr(NullMetrics, name)
        assert null is not ours, f"NullMetrics must override {name}"
        assert inspect.signature(null) == inspect.signature(ours), name
    null_metrics = NullMetrics(["world"], ["tg"])
    exercise(null_metrics)
    null_metrics.watch_outbox(lambda: None)
    assert list(null_metrics.collect()) == []
    assert not null_metrics.enabled and Metrics([], []).enabled


async def test_the_snapshotter_keeps_the_last_snapshot_when_the_store_fails() -> None:
    class Reader:
        fail = False

        async def counts(self) -> dict[str, dict[str, int]]:
            if self.fail:
                raise ConnectionError("store down")
            return {"tg": {"pending": 3}}

        async def next_due(self, channel: str) -> datetime | None:
            return datetime.fromtimestamp(NOW - 60, UTC) if channel == "tg" else None

    reader = Reader()
    snapshotter = OutboxSnapshotter(reader, lambda: ["tg", "x"], every=0.01, clock=Clock())
    first = await snapshotter.refresh()
    assert first.rows == {"tg": {"pending": 3}} and first.oldest_due == {"tg": NOW - 60}
    reader.fail = True
    with pytest.raises(ConnectionError):
        await snapshotter.refresh()
    assert snapshotter.latest is first


def _text(metrics: Metrics) -> str:
    return generate_latest(metrics).decode()


def _words() -> set[str]:
    words = set(OUTBOX_STATES)
    for name in ("POLL_RESULTS", "SEND_RESULTS", "FANOUT_RESULTS", "RELOAD_RESULTS"):
        words |= getattr(module, name)
    return words


def _buckets(text: str) -> set[str]:
    return set(re.findall(r'le="([^"]+)"', text))


def test_recording_stays_cheap() -> None:
    """A loose bound (the figures are in benchmarks/metrics.py): recording must stay far below a
    poll's or a send's own cost, whatever the machine's load."""
    metrics = Metrics(["world"], ["tg"])
    first_seen = datetime.now(UTC) - timedelta(seconds=5)
    start = time.perf_counter()
    for _ in range(2000):
        metrics.poll("world", "new", 0.2, 0.05, 1)
        metrics.send("tg", "sent", 0.5, first_seen)
    per_call = (time.perf_counter() - start) / 4000
    assert per_call < 100e-6, f"{per_call * 1e6:.1f} µs per recording call"


def test_metrics_listen_is_checked_and_may_be_empty(make_config: Callable[[str], Config]) -> None:
    assert make_config("").metrics.listen == "127.0.0.1:9464"
    assert make_config('[metrics]\nlisten = ""\n').metrics.listen == ""
    assert make_config('[metrics]\nlisten = "0.0.0.0:9464"\n').metrics.listen == "0.0.0.0:9464"
    with pytest.raises(ConfigError) as err:
        make_config('[site]\nname = "x"\n\n[metrics]\nlisten = "9464"\n')
    assert err.value.problems[0].endswith(
        ':5: metrics.listen: must be "HOST:PORT" (e.g. "127.0.0.1:9464"), or "" for no metrics'
    )


def test_counters_of_configured_names_start_at_zero_so_a_first_failure_shows_in_increase() -> None:
    metrics = Metrics(["world"], ["tg"])
    found = samples(_text(metrics))
    assert value(found, "siar_sends_total", channel="tg", result="failed") == 0
    assert value(found, "siar_polls_total", feed="world", result="error") == 0
    metrics.set_names(["world", "sport"], ["tg", "x"])
    found = samples(_text(metrics))
    assert value(found, "siar_sends_total", channel="x", result="uncertain") == 0
    assert value(found, "siar_poll_skipped_total", feed="sport") == 0
