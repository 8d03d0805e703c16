"""The outbox gauges (`siar_outbox_rows`, `siar_outbox_oldest_pending_age_seconds`), read at scrape time.

A scrape must never query the database on the event loop, so the daemon runs an
`OutboxSnapshotter` that refreshes a snapshot every few seconds, and the `OutboxCollector`
registered with `Metrics.watch_outbox` only reads the latest snapshot. The oldest pending age is
computed at scrape time from when that row became due, so it keeps growing between refreshes
(and while the store is unreachable) instead of freezing at the last value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

log = logging.getLogger("siar.metrics")

OUTBOX_STATES = ("pending", "sending", "sent", "failed", "uncertain")
REFRESH_EVERY = 15.0  # seconds between snapshots: well under a typical 30-60 s scrape interval


@dataclass(frozen=True)
class OutboxSnapshot:
    """Outbox rows per channel and state, and per channel when its oldest pending row became due
    (Unix time; absent when the channel has no pending row)."""

    rows: Mapping[str, Mapping[str, int]]
    oldest_due: Mapping[str, float]
    taken_at: float


class OutboxReader(Protocol):
    """What the snapshotter reads (today's `bot.store.Store` has both methods)."""

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per channel, how many outbox rows are in each state."""
        ...

    async def next_due(self, channel: str) -> datetime | None:
        """When the earliest pending row of `channel` is (or was) due; None without pending rows."""
        ...


class OutboxSnapshotter:
    """Keeps `latest`, an OutboxSnapshot of `channels()`, refreshed by `run()` every `every` s."""

    def __init__(
        self,
        reader: OutboxReader,
        channels: Callable[[], Iterable[str]],
        *,
        every: float = REFRESH_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.channels = channels
        self.every = every
        self.clock = clock
        self.latest: OutboxSnapshot | None = None

    async def refresh(self) -> OutboxSnapshot:
        """Read the store once and return the new snapshot (also kept in `latest`)."""
        counts = await self.reader.counts()
        oldest: dict[str, float] = {}
        for channel in self.channels():
            due = await self.reader.next_due(channel)
            if due is not None:
                oldest[channel] = due.timestamp()
        self.latest = OutboxSnapshot(counts, oldest, self.clock())
        return self.latest

    async def run(self) -> None:
        """Refresh until cancelled; a failing store keeps the last snapshot and is logged once
        per failure streak."""
        failing = False
        while True:
            try:
                await self.refresh()
                failing = False
            except Exception:
                if not failing:
                    log.warning(
                        "outbox metrics: cannot read the store; keeping the last snapshot", exc_info=True
                    )
                failing = True
            await asyncio.sleep(self.every)


class OutboxCollector:
    """A prometheus_client collector yielding the outbox gauges from `snapshot()` at scrape time.

    Only channels in `channels()` (the configured ones) are exposed: rows of a channel removed
    from the config stay in the store but must not become series of their own.
    """

    def __init__(
        self,
        snapshot: Callable[[], OutboxSnapshot | None],
        channels: Callable[[], Iterable[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.snapshot = snapshot
        self.channels = channels
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        rows, age = self._families()
        snap = self.snapshot()
        if snap is not None:
            now = self.clock()
            for channel in sorted(set(self.channels())):
                states = snap.rows.get(channel, {})
                for state in OUTBOX_STATES:
                    rows.add_metric([channel, state], states.get(state, 0))
                due = snap.oldest_due.get(channel)
                age.add_metric([channel], max(0.0, now - due) if due is not None else 0.0)
        yield rows
        yield age

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        rows = GaugeMetricFamily(
            "siar_outbox_rows", "Outbox rows by channel and state.", labels=["channel", "state"]
        )
        age = GaugeMetricFamily(
            "siar_outbox_oldest_pending_age_seconds",
            "How long the channel's oldest due pending row has waited (0 when none is due).",
            labels=["channel"],
        )
        return rows, age
