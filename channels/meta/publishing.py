"""Instagram's and Threads' two-step publishing, written once: a container (from the share card's
public URL, or text), its status polled until FINISHED, then one publish call — within the
account's rolling 24 h publishing limit, read from the API before each post.

Limit reached: the post waits until the oldest post of the window is 24 h old
(`on_cap = "defer"`), or is dropped (`"skip"`), like X's daily cap.

A lost publish answer: the container's state says whether it was published (PUBLISHED: the
post is found in the account's recent posts by its text; FINISHED: it was not, and the same
container — which Meta publishes at most once — is published again); otherwise uncertain.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar, TypeVar

import httpx

from bot.cards import CardSettings
from bot.channel import ChannelContext, ChannelUnavailable, Permanent, RetryLater, Uncertain
from bot.http_retry import request_may_have_left
from bot.images import fetch_image
from bot.types import Post, Receipt, Story
from channels.meta.base import MetaChannel, graph_time
from channels.meta.cards import MAX_PHOTO_BYTES, CardRoutes, CardStore, serve_cards, stop_serving
from channels.meta.errors import PUBLISHING_LIMIT, is_not_ready
from channels.meta.graph import GraphFailure, clip
from channels.meta.settings import DAY, PublishingSettings

log = logging.getLogger("siar.meta")
P = TypeVar("P", bound=PublishingSettings)
PUBLISH_TRIES = 3


def card_store(name: str, settings: PublishingSettings, context: ChannelContext) -> CardStore:
    """The channel's cards: `cards_dir`, served at `[http] public_url`/cards/ (required)."""
    public = context.http.public_url if context.http is not None else ""
    if not public:
        raise ChannelUnavailable(
            f"channel {name!r} ({settings.type}) posts a share card that Meta downloads: set "
            '[http] public_url (e.g. "https://www.example.com/siar/") and make /cards/ reachable there'
        )
    looks = context.section("cards", CardSettings) or CardSettings()
    looks = looks.resolved(context.base_dir)
    return CardStore(
        context.resolve_path(settings.cards_dir), public, looks, looks.site_name or context.site.name
    )


class PublishingChannel(MetaChannel[P]):
    """An account publishing through containers (Instagram, Threads)."""

    CREATE_EDGE: ClassVar[str]
    PUBLISH_EDGE: ClassVar[str]
    LIMIT_EDGE: ClassVar[str]
    LIST_EDGE: ClassVar[str]
    TEXT_FIELD: ClassVar[str]  # the post's text as the listing shows it
    STATUS_FIELDS: ClassVar[str]
    STATUS_KEY: ClassVar[str]
    ERROR_KEY: ClassVar[str]

    def __init__(self, name: str, settings: P, context: ChannelContext, cards: CardStore | None) -> None:
        super().__init__(name, settings, context)
        self.cards = cards
        self._routes: CardRoutes | None = None
        self.publish_scopes: tuple[str, ...] = ()

    # --- cards ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.cards is not None and self._routes is None:
            self._routes = await serve_cards(self.context.http, self.cards.folder)
        await super().start()

    async def close(self) -> None:
        routes, self._routes = self._routes, None
        if routes is not None:
            await stop_serving(routes)
        await super().close()

    async def prepare_media(self, post: Post) -> list[Path]:
        """Write the card `post.media` names into `cards_dir` (preview: for editors to look at)."""
        if self.cards is None or not post.media:
            return []
        return [await self.cards.ensure(post.story, self.settings.card_size, self._photo)]

    async def _photo(self, story: Story) -> bytes | None:
        """The story's photo through its feed's address guard; None (a plain card) on failure."""
        try:
            async with self.http_client(guard=self.guard(story), follow_redirects=True) as client:
                return (await fetch_image(client, story.image, max_bytes=MAX_PHOTO_BYTES)).data
        except (httpx.HTTPError, ValueError) as exc:  # ImageRefused is a ValueError
            log.warning("channel %s: story image %s not usable (%s); plain card", self.name, story.image, exc)
            return None

    # --- the publishing limit ------------------------------------------------------------------

    async def check_limit(self) -> None:
        """RetryLater (defer) or Permanent (skip) when the 24 h publishing limit is reached."""
        account = self.settings.account_id
        answer = await self.call(
            "reading the publishing limit",
            lambda: self.graph.get(f"{account}/{self.LIMIT_EDGE}", {"fields": "quota_usage,config"}),
        )
        entries = answer.get("data")
        entry = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}
        usage, config = entry.get("quota_usage"), entry.get("config")
        total = config.get("quota_total") if isinstance(config, dict) else None
        if isinstance(usage, int) and isinstance(total, int) and usage >= total:
            await self.cap_reached(f"{usage} of {total} posts in 24 h")

    async def cap_reached(self, detail: str) -> None:
        what = f"{self.PLATFORM} publishing limit reached ({detail})"
        if self.settings.on_cap == "skip":
            raise Permanent(f'{what}; skipped (on_cap = "skip")')
        wait = await self._window_wait()
        raise RetryLater(
            f"{what}; waiting until the oldest post leaves the 24 h window", after=wait, attempt=False
        )

    async def _window_wait(self) -> float:
        """Seconds until the oldest post of the last 24 h leaves the window (an hour if unknown)."""
        now = self.now()
        try:
            answer = await self.graph.get(
                f"{self.settings.account_id}/{self.LIST_EDGE}",
                {"fields": "id,timestamp", "since": str(int(now.timestamp() - DAY)), "limit": "100"},
            )
        except (GraphFailure, httpx.HTTPError):
            return 3600.0
        times = [graph_time(i.get("timestamp")) for i in answer.get("data", []) if isinstance(i, dict)]
        known = [t for t in times if t is not None]
        if not known:
            return 3600.0
        return max(60.0, (min(known) + timedelta(seconds=DAY) - now).total_seconds() + 60.0)

    # --- containers ----------------------------------------------------------------------------

    async def create_container(self, params: dict[str, str]) -> str:
        account = self.settings.account_id
        answer = await self.call(
            "creating the post's container",
            lambda: self.graph.post(f"{account}/{self.CREATE_EDGE}", params),
            needs=self.publish_scopes,
        )
        container = str(answer.get("id", ""))
        if not container:
            raise RetryLater(f"{self.PLATFORM} created a container without answering its id")
        return container

    async def container_state(self, container: str) -> tuple[str, str]:
        """(state, error) of a container, e.g. ("ERROR", "2207052") or ("FINISHED", "")."""
        answer = await self.graph.get(container, {"fields": self.STATUS_FIELDS})
        state = str(answer.get(self.STATUS_KEY, ""))
        error = str(answer.get(self.ERROR_KEY, "") or "") if state == "ERROR" else ""
        return state, error

    async def wait_finished(self, container: str) -> None:
        """Poll until FINISHED; ERROR or EXPIRED: Permanent with the reason; too long: RetryLater."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.poll_timeout
        while True:
            state, error = await self.call(
                "reading the container's status", lambda: self.container_state(container)
            )
            if state == "FINISHED":
                return
            if state == "ERROR":
                raise Permanent(
                    f"{self.PLATFORM} could not make the post (container ERROR: {error or 'no reason given'})"
                )
            if state == "EXPIRED":
                raise Permanent(f"{self.PLATFORM} container {container} expired before it was published")
            if state == "PUBLISHED":
                return
            if loop.time() >= deadline:
                raise RetryLater(
                    f"{self.PLATFORM} container still {state or 'unknown'} "
                    f"after {self.settings.poll_timeout:g}s"
                )
            await asyncio.sleep(self.settings.poll_interval)

    # --- publishing ----------------------------------------------------------------------------

    async def publish_container(self, container: str, text: str, started: datetime) -> Receipt:
        """Publish `container`. A lost answer, a 5xx or Meta's temporary error is resolved by the
        container's state: PUBLISHED → the post found; FINISHED → not published, so the same
        container (which Meta publishes at most once) is published again; else uncertain."""
        account = self.settings.account_id

        async def lookup() -> Receipt | None:
            return await self.find_published(container, text, started)

        for _ in range(PUBLISH_TRIES):
            try:
                answer = await self.graph.post(f"{account}/{self.PUBLISH_EDGE}", {"creation_id": container})
            except httpx.HTTPError as exc:
                if not request_may_have_left(exc):
                    raise RetryLater(
                        f"cannot reach {self.PLATFORM} to publish: {type(exc).__name__}"
                    ) from None
                found = await self._look_up(lookup, f"no answer from {self.PLATFORM} after publishing")
                if found is not None:
                    return found
                continue
            except GraphFailure as failure:
                await self._publish_refused(failure)
                found = await self._look_up(
                    lookup, f"{self.PLATFORM} answered {failure.describe()} to publishing"
                )
                if found is not None:
                    return found
                await asyncio.sleep(self.settings.poll_interval)
                continue
            media_id = str(answer.get("id", ""))
            if not media_id:
                return Receipt(note=f"{self.PLATFORM} published the post but answered without its id")
            return Receipt(remote_id=media_id, url=await self.permalink(media_id))
        raise RetryLater(f"{self.PLATFORM} did not publish container {container} after {PUBLISH_TRIES} tries")

    async def _publish_refused(self, failure: GraphFailure) -> None:
        """Raise for a refusal that settles the post; return for one the container's state must
        resolve (not ready — Meta answers an already published container alike —, a 5xx,
        a page that is not Meta's, Meta's temporary errors 1/2)."""
        if is_not_ready(failure) or failure.code in (0, 1, 2, -1, -2) or failure.status >= 500:
            return
        if failure.code == PUBLISHING_LIMIT:
            await self.cap_reached("Meta refused the post with code 9")
        await self.refused(failure, "publishing", needs=self.publish_scopes)

    async def find_published(self, container: str, text: str, started: datetime) -> Receipt | None:
        """The post made from `container`: None when the container is not published (FINISHED);
        Uncertain when its state says neither."""
        state, _ = await self.container_state(container)
        if state in ("FINISHED", "IN_PROGRESS"):
            return None
        if state != "PUBLISHED":
            raise Uncertain(
                f"{self.PLATFORM} container {container} is {state or 'unreadable'} after a lost answer"
            )
        answer = await self.graph.get(
            f"{self.settings.account_id}/{self.LIST_EDGE}",
            {
                "fields": f"id,{self.TEXT_FIELD},timestamp,permalink",
                "since": self.since(started),
                "limit": "50",
            },
        )
        for item in answer.get("data", []) if isinstance(answer.get("data"), list) else []:
            if isinstance(item, dict) and item.get(self.TEXT_FIELD) == text and item.get("id"):
                return Receipt(
                    remote_id=str(item["id"]),
                    url=str(item.get("permalink", "")),
                    note="found on the account after a lost answer",
                )
        return Receipt(
            note=f"published (container {container} is PUBLISHED) but the post was not found to link it"
        )

    async def permalink(self, media_id: str) -> str:
        """The post's public address; empty when Meta does not say (the post is out anyway)."""
        try:
            answer = await self.graph.get(media_id, {"fields": "permalink"})
        except (GraphFailure, httpx.HTTPError) as exc:
            log.warning(
                "channel %s: cannot read the permalink of %s (%s)", self.name, media_id, clip(str(exc))
            )
            return ""
        return str(answer.get("permalink", ""))
