"""Cost of siar's metrics: nanoseconds per recording call, and one /metrics body's size and time.

Recorders are called on the event loop from the poll pipeline and the dispatcher, and a scrape
renders the whole registry on the loop, so both must stay small next to a poll or a send.

    .venv/bin/python benchmarks/metrics.py [--calls 200000] [--feeds 50] [--channels 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import generate_latest

from bot.metrics import Metrics, NullMetrics
from bot.outbox_gauges import OutboxSnapshot


def per_call(calls: int, record: Callable[[int], None]) -> float:
    """Nanoseconds per call of record(i), best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        for i in range(calls):
            record(i)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def recording_cases(
    metrics: Metrics, feeds: list[str], channels: list[str], seen: datetime
) -> dict[str, Callable[[int], None]]:
    nf, nc = len(feeds), len(channels)
    return {
        "loop overhead (no call)": lambda i: None,
        "poll(feed, 'unchanged', fetch_s)": lambda i: metrics.poll(feeds[i % nf], "unchanged", 0.12),
        "poll(feed, 'new', fetch_s, parse_s, 3)": lambda i: metrics.poll(feeds[i % nf], "new", 0.2, 0.03, 3),
        "send(channel, 'sent', s, first_seen)": lambda i: metrics.send(channels[i % nc], "sent", 0.4, seen),
        "send(channel, 'retry', s)": lambda i: metrics.send(channels[i % nc], "retry", 0.4),
        "fanout(channel, 'sent', 100)": lambda i: metrics.fanout(channels[i % nc], "sent", 100),
        "rate_limit_wait(channel, s)": lambda i: metrics.rate_limit_wait(channels[i % nc], 0.5),
        "channel_up(channel, True)": lambda i: metrics.channel_up(channels[i % nc], True),
        "poll(URL!, ...) -> 'other'": lambda i: metrics.poll(f"https://x/{i}", "new"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--feeds", type=int, default=50)
    parser.add_argument("--channels", type=int, default=10)
    args = parser.parse_args()
    feeds = [f"feed-{i}" for i in range(args.feeds)]
    channels = [f"channel-{i}" for i in range(args.channels)]
    seen = datetime.now(UTC) - timedelta(seconds=30)
    for label, recorder in (
        ("Metrics", Metrics(feeds, channels)),
        ("NullMetrics", NullMetrics(feeds, channels)),
    ):
        cases = recording_cases(recorder, feeds, channels, seen)
        print(f"\n{label}: ns per call ({args.calls:,} calls, best of 3)")
        for name, record in cases.items():
            print(f"  {name:42} {per_call(args.calls, record):8.0f}")
    metrics = Metrics(feeds, channels)
    for i, feed in enumerate(feeds):
        metrics.feed_state(feed, interval_seconds=300, last_success=seen, consecutive_failures=0)
        for result in ("new", "unchanged", "not_modified", "error", "backoff"):
            metrics.poll(feed, result, 0.1 * i, 0.01)
    for channel in channels:
        for result in ("sent", "already_sent", "retry", "deferred", "failed", "uncertain"):
            metrics.send(channel, result, 0.5, seen)
        metrics.fanout(channel, "sent")
        metrics.subscribers(channel, 1000)
        metrics.channel_up(channel, True)
        metrics.rate_limit_wait(channel, 1.0)
    snap = OutboxSnapshot(
        {c: {"pending": 1, "sent": 100} for c in channels}, {c: time.time() for c in channels}, time.time()
    )
    metrics.watch_outbox(lambda: snap)
    body = generate_latest(metrics)
    scrape = per_call(200, lambda i: generate_latest(metrics) and None)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(
        f"\n/metrics with {len(feeds)} feeds, {len(channels)} channels, every label used: "
        f"{series} series, {len(body) / 1024:.0f} KiB, {scrape / 1e6:.2f} ms to render"
    )


if __name__ == "__main__":
    main()
