"""Which channels a poll's new stories go to, and why not: pure decisions, no I/O.

`decide_poll` returns, for each new story, one `Decision` per channel that takes stories from
the feed. Only the `queued` ones become outbox rows; the others are written to the decision log
so that `siar why` can explain them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from bot.channel import ChannelSettings
from bot.config import FeedConfig
from bot.filters import rejection
from bot.types import Decision, Story

NO_LINK = "the entry has no usable link (none, or not http/https such as javascript: or data:)"


def first_run_quota(policy: str) -> int | None:
    """How many stories each channel gets on a feed's first poll; None = no limit."""
    if policy == "all":
        return None
    if policy.startswith("latest:"):
        return int(policy.split(":", 1)[1])
    return 0


def decide_poll(
    stories: Sequence[Story],
    feed: FeedConfig,
    channels: Mapping[str, ChannelSettings],
    now: datetime,
    *,
    first_run: bool = False,
    unavailable: Mapping[str, str] | None = None,
) -> list[list[Decision]]:
    """For each of `stories` (newest first), one decision per channel listening to `feed`.

    A story is `queued` for a channel when it has a link and passes the feed's and the channel's
    filters. On the feed's first poll, `first_run = "latest:N"` queues only the N newest stories
    that pass each channel's filters (the rest: `first_run_skip`); filtered ones do not count.
    Channels in `unavailable` (waiting for a secret, say) are not queued — when they come back
    they start with new stories, not a backlog — but `siar why` shows what they missed and why.
    """
    unavailable = unavailable or {}
    targets = [n for n, c in channels.items() if c.feeds is None or feed.name in c.feeds]
    quota = first_run_quota(feed.first_run) if first_run else None
    taken = dict.fromkeys(targets, 0)
    out: list[list[Decision]] = []
    for story in stories:
        if not story.url:
            out.append([Decision(n, "no_link", "link", NO_LINK) for n in targets])
            continue
        feed_rejection = rejection(story, feed, now)
        decisions = []
        for name in targets:
            where, rejected = f"feeds.{feed.name}", feed_rejection
            if rejected is None:
                where, rejected = f"channels.{name}", rejection(story, channels[name], now)
            if rejected is not None:
                rule, detail = rejected
                kind = "too_old" if rule == "max_age" else "filtered"
                decisions.append(Decision(name, kind, f"{where}.{rule}", detail))
                continue
            if quota is not None and taken[name] >= quota:
                detail = f"first poll of feed {feed.name!r} with first_run = {feed.first_run!r}"
                if quota:
                    detail += f": the {quota} newest stories that pass the filters went instead"
                decisions.append(Decision(name, "first_run_skip", f"feeds.{feed.name}.first_run", detail))
                continue
            taken[name] += 1
            if name in unavailable:
                decisions.append(Decision(name, "not_running", None, unavailable[name]))
            elif _digest_only(channels[name]):
                rule, detail = f"channels.{name}.digest.only", "it waits for the channel's next digest"
                decisions.append(Decision(name, "collected", rule, detail))
            else:
                decisions.append(Decision(name, "queued"))
        out.append(decisions)
    return out


def _digest_only(settings: ChannelSettings) -> bool:
    digest = getattr(settings, "digest", None)
    return digest is not None and digest.only
