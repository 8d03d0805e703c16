"""Table-driven tests of the pure decisions: filters, first-run policies, backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.backoff import poll_delay, retry_delay
from bot.channel import ChannelSettings
from bot.config import FeedConfig
from bot.routing import decide, first_run_allows
from bot.types import Story

NOW = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)
INTL = Story(uid="1", feed="f", url="https://www.medcom.id/internasional/dunia/1-x", title="Putin dan PBB",
             lead="Moskow: sesuatu terjadi.", section="Internasional", tags=("rusia",),
             categories=("Internasional", "rusia"), published=NOW - timedelta(hours=1))
ECON = Story(uid="2", feed="f", url="https://www.medcom.id/ekonomi/bisnis/2-y", title="Harga cabai",
             lead="Jakarta: harga naik.", section="Ekonomi", categories=("Ekonomi",),
             published=NOW - timedelta(hours=1))
OLD = Story(uid="3", feed="f", url="https://www.medcom.id/internasional/3", title="Lama",
            section="Internasional", categories=("Internasional",), published=NOW - timedelta(days=3))


def feed(**filters: object) -> FeedConfig:
    return FeedConfig(name="f", url="https://x.example/rss", **filters)  # type: ignore[arg-type]


def channel(**filters: object) -> ChannelSettings:
    return ChannelSettings(type="console", **filters)  # type: ignore[arg-type]


@pytest.mark.parametrize(("story", "feed_filters", "channel_filters", "decision", "rule"), [
    (INTL, {}, {}, "queued", None),
    (INTL, {"include_categories": ["internasional"]}, {}, "queued", None),
    (ECON, {"include_categories": ["INTERNASIONAL"]}, {}, "filtered", "feeds.f.include_categories"),
    (INTL, {"exclude_categories": ["Rusia"]}, {}, "filtered", "feeds.f.exclude_categories"),
    (ECON, {"include_url": "/internasional/"}, {}, "filtered", "feeds.f.include_url"),
    (INTL, {"include_url": "/internasional/"}, {}, "queued", None),
    (INTL, {"include_keywords": ["putin"]}, {}, "queued", None),
    (ECON, {"include_keywords": ["putin"]}, {}, "filtered", "feeds.f.include_keywords"),
    (INTL, {"exclude_keywords": ["MOSKOW"]}, {}, "filtered", "feeds.f.exclude_keywords"),
    (OLD, {"max_age": "1d"}, {}, "too_old", "feeds.f.max_age"),
    (INTL, {"max_age": "1d"}, {}, "queued", None),
    (INTL, {}, {"include_categories": ["ekonomi"]}, "filtered", "channels.c.include_categories"),
    (OLD, {}, {"max_age": "2h"}, "too_old", "channels.c.max_age"),
])
def test_filters(story: Story, feed_filters: dict[str, object], channel_filters: dict[str, object],
                 decision: str, rule: str | None) -> None:
    (d,) = decide(story, feed(**feed_filters), {"c": channel(**channel_filters)}, NOW)
    assert (d.channel, d.decision, d.rule) == ("c", decision, rule)


def test_channels_only_hear_their_feeds() -> None:
    decisions = decide(INTL, feed(), {"a": channel(feeds=["f"]), "b": channel(feeds=["other"]),
                                      "c": channel()}, NOW)
    assert [d.channel for d in decisions] == ["a", "c"]


@pytest.mark.parametrize(("policy", "rank", "allowed"), [
    ("skip", 0, False), ("all", 99, True), ("latest:2", 0, True), ("latest:2", 1, True),
    ("latest:2", 2, False),
])
def test_first_run_policies(policy: str, rank: int, allowed: bool) -> None:
    assert first_run_allows(policy, rank) is allowed
    (d,) = decide(INTL, feed(first_run=policy), {"c": channel()}, NOW, first_run=True, rank=rank)
    assert d.decision == ("queued" if allowed else "first_run_skip")


def test_first_run_does_not_matter_after_the_first_poll() -> None:
    (d,) = decide(INTL, feed(first_run="skip"), {"c": channel()}, NOW, first_run=False, rank=5)
    assert d.decision == "queued"


@pytest.mark.parametrize(("failures", "retry_after", "expected"), [
    (0, None, 300), (1, None, 600), (2, None, 1200), (3, None, 2400), (10, None, 3600),
    (1, 7200, 7200), (1, 5, 600), (60, None, 3600),
])
def test_poll_backoff(failures: int, retry_after: float | None, expected: float) -> None:
    assert poll_delay(failures, 300, 3600, retry_after) == expected


def test_backoff_never_shorter_than_interval() -> None:
    assert poll_delay(3, 7200, 3600) == 7200


@pytest.mark.parametrize(("attempts", "retry_after", "expected"), [
    (1, None, 30), (2, None, 60), (3, None, 120), (20, None, 3600), (1, 7.5, 7.5), (5, 0, 0),
])
def test_retry_delay(attempts: int, retry_after: float | None, expected: float) -> None:
    assert retry_delay(attempts, 30, 3600, retry_after) == expected


def test_channels_that_do_not_run_are_explained_not_queued() -> None:
    decisions = decide(INTL, feed(), {"a": channel(), "b": channel(include_categories=["ekonomi"])}, NOW,
                       unavailable={"a": "environment variable X is not set", "b": "no key"})
    assert [(d.channel, d.decision, d.detail) for d in decisions] == [
        ("a", "not_running", "environment variable X is not set"),
        ("b", "filtered", "categories ['internasional', 'rusia'] match none of the list")]
