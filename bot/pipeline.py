"""One feed's poll, as a pipeline of small steps:

    store.feed_state | fetcher.fetch | parse_feed | (enrich) | routing.decide_poll | store.record_poll

`FeedPoller.poll` never raises for a feed's own trouble: a failure is a returned `PollResult`,
counted in the feed's state and backed off, so a bad feed never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from bot.backoff import poll_delay
from bot.channel import ChannelSettings
from bot.config import Config, FeedConfig
from bot.enrich import enrich
from bot.fetch import Fetcher, FetchResult
from bot.normalize import ParsedFeed, parse_feed_async, story_key
from bot.routing import decide_poll
from bot.store import FeedState, NewStory, Store
from bot.types import Story

log = logging.getLogger("siar.poll")
ALERT_AFTER = 5  # consecutive failures of a feed before the admins are alerted (once)
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class PollResult:
    feed: str
    outcome: str  # "new", "unchanged", "not_modified", "backoff", "error"
    new_stories: int = 0
    queued: int = 0
    error: str = ""
    channels: frozenset[str] = field(default_factory=frozenset)  # channels given new rows

    @property
    def failed(self) -> bool:
        return self.outcome == "error"


class FeedPoller:
    def __init__(self, config: Config, store: Store, fetcher: Fetcher, clock: Clock,
                 targets: Mapping[str, ChannelSettings],
                 alert: Callable[[str, str], Awaitable[None]] | None = None,
                 unavailable: Mapping[str, str] | None = None) -> None:
        self.alert = alert
        self.unavailable = unavailable or {}  # configured channels that do not run here, and why
        self.config = config
        self.targets = targets  # the channels that run here; only they get outbox rows
        self.store = store
        self.fetcher = fetcher
        self.clock = clock

    async def poll(self, feed: FeedConfig, *, force: bool = False) -> PollResult:
        """Poll `feed` once (unless it is backing off and not `force`d)."""
        now = self.clock()
        state = await self.store.feed_state(feed.name, feed.url)
        if state.url != feed.url:  # the operator changed the URL: validators no longer apply
            state = replace(state, url=feed.url, etag=None, last_modified=None, body_hash=None)
        if not force and state.next_poll_at and state.next_poll_at > now and state.failures:
            return PollResult(feed.name, "backoff", error=state.last_error or "")
        try:
            result = await self.fetcher.fetch(feed.url, state.etag, state.last_modified, feed.timeout)
            return await self._after_fetch(feed, state, result, now)
        except Exception as exc:  # a bug or a store outage must not kill the scheduler job
            log.exception("feed %s: poll failed", feed.name)
            await self._failed(feed, state, now, f"internal error: {exc!r}", None)
            return PollResult(feed.name, "error", error=f"internal error: {exc!r}")

    async def _after_fetch(self, feed: FeedConfig, state: FeedState, result: FetchResult,
                           now: datetime) -> PollResult:
        state.last_fetch_at = now
        state.last_status = result.status
        if result.permanent_redirect and result.permanent_redirect != state.redirect_url:
            log.warning("feed %s: %s moved permanently to %s; update its url in the config",
                        feed.name, feed.url, result.permanent_redirect)
            state.redirect_url = result.permanent_redirect
        if result.error:
            return await self._failed(feed, state, now, result.error, result.retry_after)
        if result.not_modified or (result.body_hash and result.body_hash == state.body_hash):
            state.etag = result.etag or state.etag
            state.last_modified = result.last_modified or state.last_modified
            self._succeeded(state, now, feed)
            await self.store.save_feed_state(state)
            return PollResult(feed.name, "not_modified" if result.not_modified else "unchanged")
        assert result.body is not None
        parsed = await parse_feed_async(result.body, result.url, result.headers,
                                        self.config.cleaning, feed.name, feed.section)
        if not parsed.stories and parsed.bozo:
            return await self._failed(feed, state, now, f"not a readable feed: {parsed.bozo}", None)
        if parsed.bozo:
            log.info("feed %s: malformed but readable (%s)", feed.name, parsed.bozo)
        new = await self._new_stories(feed, parsed, now)
        first_run = not state.first_run_done
        decisions = decide_poll(new, feed, self.targets, now, first_run=first_run,
                                unavailable=self.unavailable)
        items = [NewStory(story, story_decisions, key=story_key(story, self.config.site.hosts))
                 for story, story_decisions in zip(new, decisions, strict=True)]
        state.etag, state.last_modified = result.etag, result.last_modified
        state.body_hash = result.body_hash
        # An empty first answer (a CMS glitch) must not end the first run: the next full poll
        # would then post every story.
        state.first_run_done = state.first_run_done or bool(parsed.stories)
        self._succeeded(state, now, feed)
        created = await self.store.record_poll(state, items, now)
        queued = {d.channel for i in items for d in i.decisions if d.queues and d.channel}
        if new:
            log.info("feed %s: %d new stories, %d posts queued%s", feed.name, len(new), len(created),
                     " (first poll)" if first_run else "")
        return PollResult(feed.name, "new" if new else "unchanged", len(new), len(created),
                          channels=frozenset(queued))

    async def _new_stories(self, feed: FeedConfig, parsed: ParsedFeed, now: datetime) -> list[Story]:
        known = await self.store.known_uids(feed.name, [s.uid for s in parsed.stories])
        stories = [replace(s, published=s.published or now) for s in parsed.stories
                   if s.uid not in known]
        if feed.enrich and stories:
            limit = asyncio.Semaphore(4)

            async def one(story: Story) -> Story:
                async with limit:
                    try:
                        return await enrich(story, self.fetcher, feed=feed)
                    except Exception:  # enrichment is optional: one odd page costs only itself
                        log.warning("feed %s: cannot enrich %s", feed.name, story.url, exc_info=True)
                        return story

            stories = list(await asyncio.gather(*(one(s) for s in stories)))
        return stories

    def _succeeded(self, state: FeedState, now: datetime, feed: FeedConfig) -> None:
        state.failures = 0
        state.last_error = None
        state.last_success_at = now
        state.next_poll_at = now + timedelta(seconds=feed.interval)

    async def _failed(self, feed: FeedConfig, state: FeedState, now: datetime, error: str,
                      retry_after: float | None) -> PollResult:
        error = self.config.redact(error)  # stored, shown by `status` and alerted
        state.failures += 1
        state.last_error = error
        delay = poll_delay(state.failures, feed.interval, self.config.fetch.max_backoff, retry_after)
        state.next_poll_at = now + timedelta(seconds=delay)
        level = logging.WARNING if state.failures < ALERT_AFTER else logging.ERROR
        log.log(level, "feed %s: %s (failure %d in a row; next try in %ds)", feed.name, error,
                state.failures, int(delay))
        await self.store.save_feed_state(state)
        if state.failures == ALERT_AFTER and self.alert is not None:  # once per failure streak
            await self.alert(f"feed {feed.name}", f"failed {ALERT_AFTER} times in a row: {error}")
        return PollResult(feed.name, "error", error=error)
