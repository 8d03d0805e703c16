"""`type = "threads"`: a Threads post through graph.threads.net — text with the story's link as
the link preview (`media = "text"`), or the share card as an image (`media = "card"`).

Threads counts 500 characters with an emoji counted as its UTF-8 bytes (`count_threads`),
allows at most 5 links (every unique URL in the text, bare domains too, and the link
attachment) and one topic tag, sent as `topic_tag` (the story's first hashtag or its section).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from bot.channel import ChannelContext, ChannelSettings, Permanent, RetryLater, payload_of
from bot.counting import Budget, count_threads
from bot.registry import ChannelType
from bot.render import defuse_mentions, hashtags
from bot.types import Digest, Length, Payload, Post, Receipt, Story
from channels.meta.cards import CardStore, card_alt_text
from channels.meta.publishing import PublishingChannel, card_store
from channels.meta.settings import PublishingSettings

DEFAULT_TEMPLATE = """\
{% if breaking %}{{ breaking }} {% endif %}{{ title }}

{{ lead }}

{{ url }}
{% if cta_follow %}

{{ cta_follow }}
{% endif %}
"""
TEXT_LIMIT = 500
MAX_LINKS = 5
TOPIC_MAX = 50
ALT_TEXT_LIMIT = 1000
THREADS_SCOPES = ("threads_basic", "threads_content_publish")
RENEW_HELP = (
    "refresh the long-lived token (GET graph.threads.net/refresh_access_token?"
    "grant_type=th_refresh_token&access_token=…, possible once it is 24 h old, before it expires; "
    "60 more days), put it in THREADS_ACCESS_TOKEN and run `siar reload` "
    "(docs/platforms/meta-channels.md)"
)


def link_count(text: str, attachment: str = "") -> int:
    """Meta's count: the unique URLs in the text (bare domains too) and the link attachment."""
    from twitter_text import extract_urls  # lazily: see bot/counting.py

    found = {url.rstrip("/") for url in extract_urls(text)}
    if attachment:
        found.add(attachment.rstrip("/"))
    return len(found)


def topic_tag(value: str) -> str:
    """A topic tag Threads takes: no '.' or '&', no '#', at most 50 characters ('' if none)."""
    tag = " ".join(value.replace(".", " ").replace("&", " ").replace("#", " ").split())
    return tag[:TOPIC_MAX].strip()


class Settings(PublishingSettings):
    type: str = "threads"
    api_base_url: str = "https://graph.threads.net"
    graph_version: str = "v1.0"
    media: Literal["text", "card"] = "text"  # text with a link preview, or the share card
    # "auto": the story's first hashtag, else its section; "" = none; anything else = that tag.
    topic_tag: str = "auto"


@dataclass(frozen=True)
class ThreadsPayload(Payload):
    media_type: str = "TEXT"
    link_attachment: str = ""
    topic_tag: str = ""
    image_url: str = ""
    alt_text: str = ""


class ThreadsChannel(PublishingChannel[Settings]):
    """One Threads profile."""

    TYPE = "threads"
    PLATFORM = "Threads"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    RENEW_HELP = RENEW_HELP
    SCOPES = (THREADS_SCOPES,)
    CAN_DELETE = True  # (posts cannot be edited through the API)
    DELETE_SCOPES = ("threads_basic", "threads_delete")
    CREATE_EDGE = "threads"
    PUBLISH_EDGE = "threads_publish"
    LIMIT_EDGE = "threads_publishing_limit"
    LIST_EDGE = "threads"
    TEXT_FIELD = "text"
    STATUS_FIELDS = "status,error_message"
    STATUS_KEY = "status"
    ERROR_KEY = "error_message"

    def __init__(
        self, name: str, settings: Settings, context: ChannelContext, cards: CardStore | None
    ) -> None:
        super().__init__(name, settings, context, cards)
        self.publish_scopes = THREADS_SCOPES

    def budget(self, attachment: str) -> Budget:
        def count(text: str) -> int:
            if link_count(text, attachment) > MAX_LINKS:
                return TEXT_LIMIT + 1  # fitting shortens the text until it has few enough links
            return count_threads(text)

        return Budget("threads", TEXT_LIMIT, count)

    def digest_budget(self) -> Budget:
        return self.budget("")

    def render_digest(self, digest: Digest) -> Post:
        """The roundup as a text post (at most 5 links: fewer stories when needed)."""
        post = super().render_digest(digest)
        used = count_threads(post.text)
        return dataclasses.replace(
            post, length=Length("threads", used, TEXT_LIMIT), payload=ThreadsPayload("TEXT")
        )

    def topic(self, story: Story) -> str:
        wanted = self.settings.topic_tag
        if wanted != "auto":
            return topic_tag(wanted)
        first = hashtags(story.tags, self.settings.hashtags.model_copy(update={"max": 1}))
        return topic_tag(first[0] if first else story.section)

    def render(self, story: Story) -> Post:
        shown = dataclasses.replace(
            story, title=defuse_mentions(story.title), lead=defuse_mentions(story.lead)
        )
        card = (
            self.cards.url(story, self.settings.card_size)
            if self.cards and self.settings.media == "card"
            else ""
        )
        attachment = "" if card else story.url
        budget = self.budget(attachment)
        text, _, _ = self.renderer.fit(shown, budget, optional_cta=True)
        used = count_threads(text)
        payload = ThreadsPayload(
            "IMAGE" if card else "TEXT",
            attachment,
            self.topic(story),
            card,
            card_alt_text(story, ALT_TEXT_LIMIT) if card else "",
        )
        return self.post(
            story,
            text,
            Length(budget.unit, used, budget.limit),
            media=(card,) if card else (),
            payload=payload,
        )

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        payload = payload_of(post, ThreadsPayload)
        await self.ready()
        await self.check_limit()
        params = {"media_type": payload.media_type, "text": post.text}
        if payload.media_type == "IMAGE":
            try:
                await self.prepare_media(post)
            except OSError as exc:
                raise RetryLater(f"cannot write the share card: {exc}") from None
            except Exception as exc:
                raise Permanent(f"cannot render the share card: {type(exc).__name__}: {exc}") from None
            params["image_url"] = payload.image_url
            if payload.alt_text:
                params["alt_text"] = payload.alt_text
        if payload.link_attachment:
            params["link_attachment"] = payload.link_attachment
        if payload.topic_tag:
            params["topic_tag"] = payload.topic_tag
        started = self.now()
        container = await self.create_container(params)
        await self.wait_finished(container)
        return await self.publish_container(container, post.text, started)


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> ThreadsChannel:
    assert isinstance(settings, Settings)
    cards = card_store(name, settings, context) if settings.media == "card" else None
    return ThreadsChannel(name, settings, context, cards)


TYPE = ChannelType("threads", Settings, create)
