"""Table-driven tests of the pure decisions: filters, first-run quotas, linkless stories, backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.backoff import poll_delay, retry_delay
from bot.channel import ChannelSettings
from bot.config import FeedConfig
from bot.routing import decide_poll, first_run_quota
from bot.types import Decision, Story

NOW = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)
INTL = Story(
    uid="1",
    feed="f",
    url="https://www.medcom.id/internasional/dunia/1-x",
    title="Putin dan PBB",
    lead="Moskow: sesuatu terjadi.",
    section="Internasional",
    tags=("rusia",),
    categories=("Internasional", "rusia"),
    published=NOW - timedelta(hours=1),
)
ECON = Story(
    uid="2",
    feed="f",
    url="https://www.medcom.id/ekonomi/bisnis/2-y",
    title="Harga cabai",
    lead="Jakarta: harga naik.",
    section="Ekonomi",
    categories=("Ekonomi",),
    published=NOW - timedelta(hours=1),
)
OLD = Story(
    uid="3",
    feed="f",
    url="https://www.medcom.id/internasional/3",
    title="Lama",
    section="Internasional",
    categories=("Internasional",),
    published=NOW - timedelta(days=3),
)


def decide(
    story: Story, feed: FeedConfig, channels: dict[str, ChannelSettings], now: datetime, **kwargs: object
) -> list[Decision]:
    """The decisions of a poll that brought only `story`."""
    (decisions,) = decide_poll([story], feed, channels, now, **kwargs)  # type: ignore[arg-type]
    return decisions


def feed(**filters: object) -> FeedConfig:
    return FeedConfig(name="f", url="https://x.example/rss", **filters)  # type: ignore[arg-type]


def channel(**filters: object) -> ChannelSettings:
    return ChannelSettings(type="console", **filters)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("story", "feed_filters", "channel_filters", "decision", "rule"),
    [
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
    ],
)
def test_filters(
    story: Story,
    feed_filters: dict[str, object],
    channel_filters: dict[str, object],
    decision: str,
    rule: str | None,
) -> None:
    (d,) = decide(story, feed(**feed_filters), {"c": channel(**channel_filters)}, NOW)
    assert (d.channel, d.decision, d.rule) == ("c", decision, rule)


def test_channels_only_hear_their_feeds() -> None:
    decisions = decide(
        INTL, feed(), {"a": channel(feeds=["f"]), "b": channel(feeds=["other"]), "c": channel()}, NOW
    )
    assert [d.channel for d in decisions] == ["a", "c"]


@pytest.mark.parametrize(("policy", "quota"), [("skip", 0), ("all", None), ("latest:3", 3)])
def test_first_run_quota(policy: str, quota: int | None) -> None:
    assert first_run_quota(policy) == quota


def story(n: int, section: str = "Internasional", age_hours: float = 1) -> Story:
    """Story `n` of a poll; a smaller age is newer."""
    return Story(
        uid=str(n),
        feed="f",
        url=f"https://www.medcom.id/{section.lower()}/{n}",
        title=f"S{n}",
        section=section,
        categories=(section,),
        published=NOW - timedelta(hours=age_hours),
    )


# Newest first, as parse_feed orders them: an economy story, then international ones, one too old.
POLL = [
    story(1, "Ekonomi", 1),
    story(2, age_hours=2),
    story(3, "Ekonomi", 3),
    story(4, age_hours=4),
    story(5, age_hours=50),
    story(6, age_hours=6),
    story(7, age_hours=7),
]


@pytest.mark.parametrize(
    ("policy", "feed_filters", "channels", "expected"),
    [
        # latest:N counts only the stories that pass the filters: 3 international ones are posted
        (
            "latest:3",
            {"include_categories": ["Internasional"], "max_age": "1d"},
            {"c": {}},
            {"c": ["filtered", "queued", "filtered", "queued", "too_old", "queued", "first_run_skip"]},
        ),
        ("latest:1", {}, {"c": {}}, {"c": ["queued", *["first_run_skip"] * 6]}),
        (
            "skip",
            {"max_age": "1d"},
            {"c": {}},
            {"c": ["first_run_skip"] * 4 + ["too_old"] + ["first_run_skip"] * 2},
        ),
        ("all", {"max_age": "1d"}, {"c": {}}, {"c": ["queued"] * 4 + ["too_old"] + ["queued"] * 2}),
        # each channel has its own quota, counted over the stories that pass its own filters
        (
            "latest:2",
            {},
            {"eko": {"include_categories": ["ekonomi"]}, "intl": {"exclude_categories": ["ekonomi"]}},
            {
                "eko": ["queued", "filtered", "queued", "filtered", "filtered", "filtered", "filtered"],
                "intl": [
                    "filtered",
                    "queued",
                    "filtered",
                    "queued",
                    "first_run_skip",
                    "first_run_skip",
                    "first_run_skip",
                ],
            },
        ),
        # a channel that does not run uses its quota too: what it missed reads the same in `why`
        ("latest:1", {}, {"off": {}}, {"off": ["not_running", *["first_run_skip"] * 6]}),
    ],
)
def test_first_poll_quota_counts_stories_that_pass_each_channels_filters(
    policy: str,
    feed_filters: dict[str, object],
    channels: dict[str, dict[str, object]],
    expected: dict[str, list[str]],
) -> None:
    decisions = decide_poll(
        POLL,
        feed(first_run=policy, **feed_filters),
        {n: channel(**f) for n, f in channels.items()},
        NOW,
        first_run=True,
        unavailable={"off": "no token"},
    )
    for name, wanted in expected.items():
        assert [d.decision for ds in decisions for d in ds if d.channel == name] == wanted, name


def test_after_the_first_poll_every_story_that_passes_is_queued() -> None:
    decisions = decide_poll(POLL, feed(first_run="skip", max_age="1d"), {"c": channel()}, NOW)
    assert [d.decision for (d,) in decisions] == ["queued"] * 4 + ["too_old"] + ["queued"] * 2


def test_first_run_skip_names_the_rule() -> None:
    ((first,), (second,)) = decide_poll(
        [story(1), story(2)], feed(first_run="latest:1"), {"c": channel()}, NOW, first_run=True
    )
    assert first.decision == "queued"
    assert (second.decision, second.rule) == ("first_run_skip", "feeds.f.first_run")
    assert "latest:1" in second.detail


@pytest.mark.parametrize("first_run", [False, True])
def test_a_linkless_story_is_explained_for_every_channel_and_never_queued(first_run: bool) -> None:
    linkless = Story(
        uid="sha1:x",
        feed="f",
        url="",
        title="Judul saja",
        section="Internasional",
        categories=("Internasional",),
        published=NOW,
    )
    decisions = decide_poll(
        [linkless, story(2)],
        feed(first_run="latest:1"),
        {"a": channel(), "b": channel(include_categories=["ekonomi"]), "off": channel()},
        NOW,
        first_run=first_run,
        unavailable={"off": "no token"},
    )
    assert [(d.channel, d.decision, d.rule) for d in decisions[0]] == [
        ("a", "no_link", "link"),
        ("b", "no_link", "link"),
        ("off", "no_link", "link"),
    ]
    assert all("no usable link" in d.detail for d in decisions[0])
    # the linkless story does not use a channel's first-run quota
    assert [d.decision for d in decisions[1]] == ["queued", "filtered", "not_running"]


@pytest.mark.parametrize(
    ("failures", "retry_after", "expected"),
    [
        (0, None, 300),
        (1, None, 600),
        (2, None, 1200),
        (3, None, 2400),
        (10, None, 3600),
        (1, 7200, 7200),
        (1, 5, 600),
        (60, None, 3600),
    ],
)
def test_poll_backoff(failures: int, retry_after: float | None, expected: float) -> None:
    assert poll_delay(failures, 300, 3600, retry_after) == expected


def test_backoff_never_shorter_than_interval() -> None:
    assert poll_delay(3, 7200, 3600) == 7200


@pytest.mark.parametrize(
    ("attempts", "retry_after", "expected"),
    [
        (1, None, 30),
        (2, None, 60),
        (3, None, 120),
        (20, None, 3600),
        (1, 7.5, 7.5),
        (5, 0, 0),
    ],
)
def test_retry_delay(attempts: int, retry_after: float | None, expected: float) -> None:
    assert retry_delay(attempts, 30, 3600, retry_after) == expected


def test_channels_that_do_not_run_are_explained_not_queued() -> None:
    decisions = decide(
        INTL,
        feed(),
        {"a": channel(), "b": channel(include_categories=["ekonomi"])},
        NOW,
        unavailable={"a": "environment variable X is not set", "b": "no key"},
    )
    assert [(d.channel, d.decision, d.detail) for d in decisions] == [
        ("a", "not_running", "environment variable X is not set"),
        ("b", "filtered", "categories ['internasional', 'rusia'] match none of the list"),
    ]
