"""`type = "instagram"`: the story's share card (1080×1350) with a caption, on an Instagram
professional account through the Content Publishing API.

Instagram publishes only images that Meta downloads from a public URL, so the card is written
to `cards_dir` and served by siar at `[http] public_url`/cards/. Captions: at most 2,200
characters and 30 hashtags; links are not clickable, so the caption ends with the call to
action and "Baca selengkapnya: link di bio".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import regex
from pydantic import model_validator

from bot.channel import ChannelContext, ChannelSettings, Permanent, RetryLater, payload_of
from bot.counting import Budget
from bot.registry import ChannelType
from bot.render import defuse_mentions
from bot.types import Digest, Length, Payload, Post, Receipt, Story
from channels.meta.cards import CardStore, card_alt_text
from channels.meta.publishing import PublishingChannel, card_store
from channels.meta.settings import PublishingSettings

# The link text stands where the URL would be: Instagram captions do not link.
DEFAULT_TEMPLATE = """\
{% if breaking %}{{ breaking }} {% endif %}{{ title }}

{{ lead }}

{{ hashtags }}

{% if cta_follow %}
{{ cta_follow }}
{% endif %}
{{ read_more }}: {{ url }}
"""
CAPTION_LIMIT = 2200
MAX_HASHTAGS = 30
MAX_MENTIONS = 20
ALT_TEXT_LIMIT = 1000
LINK_TEXT = {"id": "link di bio", "en": "link in bio"}
FACEBOOK_LOGIN = ("instagram_basic", "instagram_content_publish")
INSTAGRAM_LOGIN = ("instagram_business_basic", "instagram_business_content_publish")
RENEW_HELP = (
    "with Facebook Login, make a long-lived user token with instagram_basic and "
    "instagram_content_publish (GET /oauth/access_token?grant_type=fb_exchange_token; 60 days); "
    "with Instagram Login, refresh it with GET graph.instagram.com/refresh_access_token?"
    "grant_type=ig_refresh_token; put it in IG_ACCESS_TOKEN and run `siar reload` "
    "(docs/platforms/meta-channels.md)"
)
# What an ERROR container's `status` (an error subcode) means (Meta's Instagram error codes).
CONTAINER_ERRORS = {
    "2207003": "Meta's download of the card timed out",
    "2207004": "the card is larger than 8 MiB",
    "2207005": "the card's format is not supported",
    "2207009": "the card's aspect ratio is not supported",
    "2207010": "the caption is too long",
    "2207020": "the container expired",
    "2207052": "Meta could not fetch the card from its URL",
}

# Instagram's own way of finding hashtags and @ tags in a caption (for the budget).
_HASHTAG = regex.compile(r"(?<![\p{L}\p{N}_&#])#[\p{L}\p{M}\p{N}_]+")
_MENTION = regex.compile(r"(?<![\p{L}\p{N}_@.])@[A-Za-z0-9._]{1,30}")


def caption_length(text: str) -> int:
    """The caption's length in characters; over the limit when it has more than 30 hashtags or
    20 @ tags (so fitting shortens it until it has not)."""
    if len(_HASHTAG.findall(text)) > MAX_HASHTAGS or len(_MENTION.findall(text)) > MAX_MENTIONS:
        return CAPTION_LIMIT + 1
    return len(text)


class Settings(PublishingSettings):
    type: str = "instagram"
    # "facebook": an Instagram account linked to a Page, graph.facebook.com, a user token;
    # "instagram": Instagram Login, graph.instagram.com, an Instagram user token.
    login: Literal["facebook", "instagram"] = "facebook"
    link_text: str | None = None  # what stands for the link; None = "link di bio" / "link in bio"

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if self.login == "instagram" and "api_base_url" not in self.model_fields_set:
            self.api_base_url = "https://graph.instagram.com"
        width, height = self.card_size
        if not 0.8 <= width / height <= 1.91:
            raise ValueError("card_size: Instagram takes aspect ratios from 4:5 (0.8) to 1.91:1")
        return self


@dataclass(frozen=True)
class InstagramPayload(Payload):
    card: str = ""
    alt_text: str = ""


class InstagramChannel(PublishingChannel[Settings]):
    """One Instagram professional account."""

    TYPE = "instagram"
    PLATFORM = "Instagram"
    # Captions do not link: a roundup lists the headlines only.
    DIGEST_TEMPLATE = (
        "{{ digest_title }}\n\n{% for item in items %}• {{ item.title }}\n{% endfor %}"
        "{% if more %}… +{{ more }}{% endif %}"
    )
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    RENEW_HELP = RENEW_HELP
    SCOPES: ClassVar[tuple[tuple[str, ...], ...]] = (FACEBOOK_LOGIN, INSTAGRAM_LOGIN)
    CAN_DELETE = True  # (captions cannot be edited through the API)
    DELETE_SCOPES = FACEBOOK_LOGIN
    CREATE_EDGE = "media"
    PUBLISH_EDGE = "media_publish"
    LIMIT_EDGE = "content_publishing_limit"
    LIST_EDGE = "media"
    TEXT_FIELD = "caption"
    STATUS_FIELDS = "status_code,status"
    STATUS_KEY = "status_code"
    ERROR_KEY = "status"

    def __init__(self, name: str, settings: Settings, context: ChannelContext, cards: CardStore) -> None:
        super().__init__(name, settings, context, cards)
        self.publish_scopes = INSTAGRAM_LOGIN if settings.login == "instagram" else FACEBOOK_LOGIN
        self.budget = Budget("characters", CAPTION_LIMIT, caption_length)
        self.store = cards

    def link_text(self) -> str:
        if self.settings.link_text is not None:
            return self.settings.link_text
        return LINK_TEXT.get(self.context.site.language, LINK_TEXT["en"])

    def digest_budget(self) -> Budget:
        return self.budget

    def render_digest(self, digest: Digest) -> Post:
        """The roundup's headlines as the caption of the newest story's card."""
        post = super().render_digest(digest)
        card = self.store.url(post.story, self.settings.card_size)
        payload = InstagramPayload(card, card_alt_text(post.story, ALT_TEXT_LIMIT))
        return dataclasses.replace(post, media=(card,), payload=payload)

    def render(self, story: Story) -> Post:
        # Feed text must not @tag accounts (they would be notified, and 20 is the limit).
        shown = dataclasses.replace(
            story, title=defuse_mentions(story.title), lead=defuse_mentions(story.lead)
        )
        text, used, _ = self.renderer.fit(shown, self.budget, overrides={"url": self.link_text()})
        alt = card_alt_text(story, ALT_TEXT_LIMIT)
        card = self.store.url(story, self.settings.card_size)
        return self.post(
            story,
            text,
            Length(self.budget.unit, used, self.budget.limit),
            media=(card,),
            payload=InstagramPayload(card, alt),
        )

    async def read_token(self) -> dict[str, Any]:
        if self.settings.login == "instagram":  # graph.instagram.com has no debug_token
            await self.graph.get("me", {"fields": "id"})
            return {"is_valid": True}
        return await super().read_token()

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        payload = payload_of(post, InstagramPayload)
        await self.ready()
        await self.check_limit()
        try:
            await self.cards_ready(post)
        except OSError as exc:
            raise RetryLater(f"cannot write the share card: {exc}") from None
        params = {"image_url": payload.card, "caption": post.text}
        if payload.alt_text:
            params["alt_text"] = payload.alt_text
        started = self.now()
        container = await self.create_container(params)
        try:
            await self.wait_finished(container)
        except Permanent as exc:
            reason = exc.reason
            for code, meaning in CONTAINER_ERRORS.items():
                reason = reason.replace(f"ERROR: {code}", f"ERROR {code}: {meaning}")
            raise Permanent(reason) from None
        return await self.publish_container(container, post.text, started)

    async def cards_ready(self, post: Post) -> None:
        try:
            await self.prepare_media(post)
        except OSError:
            raise
        except Exception as exc:  # a font or Pillow problem: it will not heal by itself
            raise Permanent(f"cannot render the share card: {type(exc).__name__}: {exc}") from None


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> InstagramChannel:
    assert isinstance(settings, Settings)
    return InstagramChannel(name, settings, context, card_store(name, settings, context))


TYPE = ChannelType("instagram", Settings, create)
