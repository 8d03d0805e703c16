"""One feed's poll, as a pipeline of small steps:

    feeds.get | fetcher.fetch | parse_feed | (enrich) | routing.decide_poll | stories.record_poll

The feed's next state is computed (`succeeded`, `failed`: pure) and saved inside the poll's own
transaction with its stories, so a poll whose stories could not be stored leaves no trace.

`FeedPoller.poll` never raises for a feed's own trouble: a failure is a returned `PollResult`,
counted in the feed's state and backed off, so a bad feed never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from bot.backoff import poll_delay
from bot.channel import ChannelSettings
from bot.config import Config, FeedConfig
from bot.editorial import Editorial
from bot.enrich import enrich
from bot.feedread import FeedDoc
from bot.feedstate import FeedBook, FeedState
from bot.fetch import Fetcher, FetchResult
from bot.metrics import Metrics, NullMetrics
from bot.normalize import ParsedFeed, doc_stories, identify, read_document, story_key
from bot.routing import decide_poll
from bot.store import Store
from bot.stories import NewStory
from bot.types import Story

log = logging.getLogger("siar.poll")
ALERT_AFTER = 5  # consecutive failures of a feed before the admins are alerted (once)
GONE = 410  # "Gone": the server says the feed will not come back; it is not polled again
GONE_NOTE = "the feed is gone for good (HTTP 410): siar stopped polling it; a new url polls again"
Clock = Callable[[], datetime]
# Documents read and stored at once, whatever the number of polls in flight: each holds its
# parsed entries, stories and SQL parameters (a first poll of 50 items, a few MiB), and a busy
# daemon with 200 feeds due had them all at once (RSS +45 MiB, kept: Python's small-object
# arenas stay mapped). The reading is CPU work under one GIL and SQLite writes one at a time,
# so more at once is not faster (benchmarks/memory.py). Fetches wait for nothing; a feed's
# optional enrichment (article pages) happens inside its slot.
READING_AT_ONCE = 8


@dataclass
class _Timing:
    fetch: float | None = None
    parse: float | None = None


class PollObserver(Protocol):
    """Follows every poll (bot/websub.py: hub discovery and its safety net); must not raise."""

    def fetched(self, feed: FeedConfig, result: FetchResult) -> None: ...

    def polled(self, feed: FeedConfig, result: PollResult) -> None: ...


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
    def __init__(
        self,
        config: Config,
        store: Store,
        fetcher: Fetcher,
        clock: Clock,
        targets: Mapping[str, ChannelSettings],
        alert: Callable[[str, str], Awaitable[None]] | None = None,
        unavailable: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        channels: Mapping[str, Any] | None = None,
    ) -> None:
        self.channels = channels  # the running channels (what they can edit: corrections)
        self.alert = alert
        self.metrics = metrics or NullMetrics()
        self.unavailable = unavailable or {}  # configured channels that do not run here, and why
        self.config = config
        self.targets = targets  # the channels that run here; only they get outbox rows
        self.store = store
        self.fetcher = fetcher
        self.clock = clock
        self._unsaved: dict[str, FeedState] = {}  # newer than the store (a failed save)
        self.book = FeedBook(store.feeds, cache=store.is_sqlite)  # unchanged polls, batched
        # Per feed, {raw entry digest: uid} of its last stored document: an entry seen before,
        # byte for byte, is known without being normalized or even looked up.
        self._digests: dict[str, dict[bytes, str]] = {}
        self.observers: list[PollObserver] = []
        self._reading = asyncio.Semaphore(READING_AT_ONCE)

    async def poll(self, feed: FeedConfig, *, force: bool = False) -> PollResult:
        """Poll `feed` once (unless it is backing off and not `force`d)."""
        timing = _Timing()
        result = await self._poll(feed, force, timing)
        self.metrics.poll(feed.name, result.outcome, timing.fetch, timing.parse, result.new_stories)
        for observer in self.observers:
            observer.polled(feed, result)
        return result

    async def _poll(self, feed: FeedConfig, force: bool, timing: _Timing) -> PollResult:
        now = self.clock()
        try:
            state = self._with_unsaved(await self.book.get(feed.name, feed.url))
        except Exception as exc:  # the store is down: count it, so the streak's alert fires
            log.exception("feed %s: cannot read its state", feed.name)
            state = self._unsaved.get(feed.name) or FeedState(feed.name, feed.url)
            return await self._failed(feed, state, now, f"store unreachable: {exc!r}", None, gone(state))
        if state.url != feed.url:
            # Another URL is another feed: validators no longer apply, and its first poll must
            # not post the new feed's whole backlog.
            log.info(
                "feed %s: its URL changed to %s; polling it as a new feed (first_run = %r)",
                feed.name,
                feed.url,
                feed.first_run,
            )
            state = replace(
                state,
                url=feed.url,
                etag=None,
                last_modified=None,
                body_hash=None,
                first_run_done=False,
                failures=0,  # nor does the old URL's failure streak (a 410 included)
                next_poll_at=None,
                last_status=None,
            )
            self._digests.pop(feed.name, None)
        if not force and (
            gone(state) or (state.next_poll_at and state.next_poll_at > now and state.failures)
        ):
            return PollResult(feed.name, "backoff", error=state.last_error or "")
        try:
            began = time.perf_counter()
            result = await self.fetcher.fetch(feed.url, state.etag, state.last_modified, feed.timeout)
            timing.fetch = time.perf_counter() - began
            for observer in self.observers:
                observer.fetched(feed, result)
            after = fetched(state, result, now)
            return await self._after_fetch(feed, after, result, now, timing, gone(state))
        except Exception as exc:  # a bug or a store outage must not kill the scheduler job
            log.exception("feed %s: poll failed", feed.name)
            return await self._failed(feed, state, now, f"internal error: {exc!r}", None, gone(state))

    def _with_unsaved(self, stored: FeedState) -> FeedState:
        """The stored state, or the newer one this process could not save (a store outage
        must not reset a failure streak, or its alert would never fire)."""
        unsaved = self._unsaved.get(stored.name)
        if unsaved is None or unsaved.url != stored.url or unsaved.failures <= stored.failures:
            return stored
        return unsaved

    async def _after_fetch(
        self,
        feed: FeedConfig,
        state: FeedState,
        result: FetchResult,
        now: datetime,
        timing: _Timing,
        was_gone: bool = False,
    ) -> PollResult:
        if result.permanent_redirect and result.permanent_redirect != state.redirect_url:
            log.warning(
                "feed %s: %s moved permanently to %s; update its url in the config",
                feed.name,
                feed.url,
                result.permanent_redirect,
            )
            state = replace(state, redirect_url=result.permanent_redirect)
        if result.error:
            return await self._failed(feed, state, now, result.error, result.retry_after, was_gone)
        if result.not_modified or (result.body_hash and result.body_hash == state.body_hash):
            state = succeeded(
                state,
                now,
                feed.interval,
                etag=result.etag or state.etag,
                last_modified=result.last_modified or state.last_modified,
            )
            self.book.put(state)  # written with the next batch (FeedBook.flush)
            self._unsaved.pop(feed.name, None)
            return PollResult(feed.name, "not_modified" if result.not_modified else "unchanged")
        async with self._reading:  # see READING_AT_ONCE
            read = await self._read(feed, state, result, now, timing)
        if isinstance(read, str):  # saved and alerted outside: the next document need not wait
            return await self._failed(feed, state, now, read, None)
        return read

    async def _read(
        self, feed: FeedConfig, state: FeedState, result: FetchResult, now: datetime, timing: _Timing
    ) -> PollResult | str:
        """Read the fetched document and store its new stories: the poll's result, or why the
        document is not a feed."""
        assert result.body is not None
        began = time.perf_counter()
        remembered = self._digests.get(feed.name, {})
        doc, uids = await asyncio.to_thread(identify, result.body, result.url, result.headers, remembered)
        parsed, known = await self._stories_to_read(feed, doc, uids, result)
        timing.parse = time.perf_counter() - began
        if not any(uids) and doc.bozo:
            kind = (result.headers or {}).get("content-type", "").split(";")[0].strip()
            page = f" (the server sent {kind}: a web page, not a feed)" if "html" in kind else ""
            return f"not a readable feed{page}: {doc.bozo}"
        if doc.bozo:
            log.info("feed %s: malformed but readable (%s)", feed.name, doc.bozo)
        editorial = Editorial(self.config, self.targets, self.channels)  # breaking news, corrections
        new = editorial.label(await self._new_stories(feed, parsed, known, now))
        first_run = not state.first_run_done
        decisions = decide_poll(
            new, feed, self.targets, now, first_run=first_run, unavailable=self.unavailable
        )
        items = [
            NewStory(
                story,
                story_decisions,
                key=story_key(story, self.config.site.hosts),
                entry_hash=parsed.hashes.get(story.uid, ""),
            )
            for story, story_decisions in zip(new, decisions, strict=True)
        ]
        # An empty first answer (a CMS glitch) must not end the first run: the next full poll
        # would then post every story.
        state = succeeded(
            state,
            now,
            feed.interval,
            etag=result.etag,
            last_modified=result.last_modified,
            body_hash=result.body_hash,
            first_run_done=state.first_run_done or any(uids),
        )
        corrections = editorial.corrections(feed.name, parsed, known)  # known entries normalized again
        created = await self.store.stories.record_poll(state, items, now, corrections)  # state saved too
        self.book.saved(state)
        self._unsaved.pop(feed.name, None)
        self._digests[feed.name] = {d: uid for d, uid in zip(doc.digests, uids, strict=True) if uid}
        queued = {
            d.channel for i in items for d in i.decisions if d.queues and d.channel
        } | corrections.edited
        if new:
            log.info(
                "feed %s: %d new stories, %d posts queued%s",
                feed.name,
                len(new),
                len(created),
                " (first poll)" if first_run else "",
            )
        return PollResult(
            feed.name, "new" if new else "unchanged", len(new), len(created), channels=frozenset(queued)
        )

    async def _stories_to_read(
        self, feed: FeedConfig, doc: FeedDoc, uids: list[str], result: FetchResult
    ) -> tuple[ParsedFeed, set[str]]:
        """The stories of the entries worth normalizing, and the uids of those the store knows.

        The store's raw hash of each known entry decides: a known entry is normalized again only
        when its hash is not the stored one (a correction to check, bot.corrections); new
        entries always are. An entry seen byte for byte in the feed's last document was not even
        read (its uid is remembered) and, as the store agrees with that memory unless another
        daemon wrote since, is not read unless it must be.
        """
        listed = [i for i, uid in enumerate(uids) if uid]
        stored = await self.store.stories.known_hashes(
            feed.name, list(dict.fromkeys(uids[i] for i in listed))
        )
        wanted = {i for i in listed if uids[i] not in stored or stored[uids[i]] != doc.digests[i].hex()}
        if not wanted:
            return ParsedFeed([], title=doc.title, language=doc.language, bozo=doc.bozo), set(stored)
        if any(doc.entries[i] is None for i in wanted):  # the store disagrees with the memory
            assert result.body is not None
            doc = await asyncio.to_thread(read_document, result.body, result.url, result.headers)
        parsed = await asyncio.to_thread(
            doc_stories,
            doc,
            self.config.cleaning,
            feed.name,
            feed.section,
            None,
            lambda index: index not in wanted,
        )
        return parsed, set(stored)

    async def _new_stories(
        self, feed: FeedConfig, parsed: ParsedFeed, known: set[str], now: datetime
    ) -> list[Story]:
        stories = [replace(s, published=s.published or now) for s in parsed.stories if s.uid not in known]
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

    async def _save(self, state: FeedState) -> None:
        self.book.pending.pop(state.name, None)  # older than this one
        await self.store.feeds.save(state)
        self.book.saved(state)
        self._unsaved.pop(state.name, None)

    async def flush(self) -> int:
        """Write the batched states of unchanged polls (the daemon calls it periodically and at
        shutdown); returns how many."""
        return await self.book.flush()

    async def _failed(
        self,
        feed: FeedConfig,
        state: FeedState,
        now: datetime,
        error: str,
        retry_after: float | None,
        gone_before: bool = False,
    ) -> PollResult:
        error = self.config.redact(error)  # stored, shown by `status` and alerted
        newly_gone = state.last_status == GONE and not gone_before
        if state.last_status == GONE:
            error += f"; {GONE_NOTE}"
        delay = poll_delay(state.failures + 1, feed.interval, self.config.fetch.max_backoff, retry_after)
        state = failed(state, now, error, delay)
        level = logging.WARNING if state.failures < ALERT_AFTER else logging.ERROR
        log.log(
            level,
            "feed %s: %s (failure %d in a row; next try in %ds)",
            feed.name,
            error,
            state.failures,
            int(delay),
        )
        self._unsaved[feed.name] = state
        try:
            await self._save(state)
        except Exception:  # the store is down: the streak is kept here until it is back
            log.exception("feed %s: cannot save its state", feed.name)
        if newly_gone and self.alert is not None:  # once: the feed is not polled again
            await self.alert(f"feed {feed.name}", error)
        elif state.failures == ALERT_AFTER and self.alert is not None:  # once per failure streak
            await self.alert(f"feed {feed.name}", f"failed {ALERT_AFTER} times in a row: {error}")
        return PollResult(feed.name, "error", error=error)


# --- the feed's next state: pure ---------------------------------------------------------------


def gone(state: FeedState) -> bool:
    """The feed's server answered 410 Gone: it is disabled until its URL changes."""
    return state.last_status == GONE and state.failures > 0


def fetched(state: FeedState, result: FetchResult, now: datetime) -> FeedState:
    """`state` after a fetch attempt (whatever its outcome)."""
    return replace(state, last_fetch_at=now, last_status=result.status)


def succeeded(
    state: FeedState,
    now: datetime,
    interval: float,
    *,
    etag: str | None,
    last_modified: str | None,
    body_hash: str | None = None,
    first_run_done: bool | None = None,
) -> FeedState:
    """`state` after a successful poll: streak reset, validators kept, next poll in `interval`."""
    return replace(
        state,
        failures=0,
        last_error=None,
        last_success_at=now,
        next_poll_at=now + timedelta(seconds=interval),
        etag=etag,
        last_modified=last_modified,
        body_hash=body_hash if body_hash is not None else state.body_hash,
        first_run_done=state.first_run_done if first_run_done is None else first_run_done,
    )


def failed(state: FeedState, now: datetime, error: str, delay: float) -> FeedState:
    """`state` after a failed poll: one more in the streak, next try after `delay` seconds."""
    return replace(
        state, failures=state.failures + 1, last_error=error, next_poll_at=now + timedelta(seconds=delay)
    )
