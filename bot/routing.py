"""Which channels a new story goes to, and why not: pure decisions, no I/O.

`decide` returns one `Decision` per channel that takes stories from the story's feed. Only the
`queued` ones become outbox rows; the others are written to the decision log so that
`siar why` can explain them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from bot.channel import ChannelSettings
from bot.config import FeedConfig
from bot.filters import rejection
from bot.types import Decision, Story


def first_run_allows(policy: str, rank: int) -> bool:
    """Whether the story ranked `rank` (0 = newest) is posted on a feed's first poll."""
    if policy == "all":
        return True
    if policy.startswith("latest:"):
        return rank < int(policy.split(":", 1)[1])
    return False


def decide(story: Story, feed: FeedConfig, channels: Mapping[str, ChannelSettings], now: datetime,
           *, first_run: bool = False, rank: int = 0,
           unavailable: Mapping[str, str] | None = None) -> list[Decision]:
    """One decision per channel listening to `feed`: queued, or why not.

    Channels in `unavailable` (waiting for a secret, say) are not queued — when they come back
    they start with new stories, not a backlog — but `siar why` shows what they missed and why.
    """
    unavailable = unavailable or {}
    targets = [n for n, c in channels.items() if c.feeds is None or feed.name in c.feeds]
    if first_run and not first_run_allows(feed.first_run, rank):
        detail = f"first poll of feed {feed.name!r} with first_run = {feed.first_run!r}"
        return [Decision(n, "first_run_skip", f"feeds.{feed.name}.first_run", detail) for n in targets]
    feed_rejection = rejection(story, feed, now)
    out = []
    for name in targets:
        where, rejected = f"feeds.{feed.name}", feed_rejection
        if rejected is None:
            where, rejected = f"channels.{name}", rejection(story, channels[name], now)
        if rejected is None and name in unavailable:
            out.append(Decision(name, "not_running", None, unavailable[name]))
        elif rejected is None:
            out.append(Decision(name, "queued"))
        else:
            rule, detail = rejected
            kind = "too_old" if rule == "max_age" else "filtered"
            out.append(Decision(name, kind, f"{where}.{rule}", detail))
    return out
