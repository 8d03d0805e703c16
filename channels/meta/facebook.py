"""`type = "facebook"`: a post on a Facebook Page (`POST /{page-id}/feed` with `message` and
`link`, so Facebook shows the story's link preview), with a Page access token.

A lost answer is looked up in the Page's feed (`GET /{page-id}/feed?since=…`, matching the
message: Meta documents no way to find a post by anything we sent); not found: uncertain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import field_validator

from bot.channel import AlreadyDone, ChannelContext, ChannelSettings, Permanent, RetryLater, payload_of
from bot.counting import Budget
from bot.registry import ChannelType
from bot.render import defuse_mentions
from bot.types import Digest, Length, Payload, Post, Published, Receipt, Story
from channels.meta.base import MetaChannel
from channels.meta.errors import is_missing
from channels.meta.graph import GraphFailure
from channels.meta.settings import MetaSettings, graph_id

# Title, lead, hashtags and the call to action; the link goes as `link` (Facebook's preview).
DEFAULT_TEMPLATE = """\
{% if breaking %}{{ breaking }} {% endif %}{{ title }}

{{ lead }}

{{ hashtags }}
{% if cta_follow %}

{{ cta_follow }}
{% endif %}
"""
# Meta documents no limit for a Page post's message; 63,206 characters is the figure every
# client cites (and the fake enforces). Counted in code points.
MESSAGE_LIMIT = 63206
POST_SCOPES = ("pages_manage_posts", "pages_read_engagement")
RENEW_HELP = (
    "make a long-lived user token (Graph API Explorer with pages_manage_posts and "
    "pages_read_engagement, then GET /oauth/access_token?grant_type=fb_exchange_token), read the "
    "Page's token from GET /me/accounts (it does not expire), put it in FB_PAGE_TOKEN and run "
    "`siar reload` (docs/platforms/meta-channels.md)"
)


class Settings(MetaSettings):
    type: str = "facebook"
    page_id: str

    @field_validator("page_id", mode="before")
    @classmethod
    def _page_id(cls, value: Any) -> str:
        return graph_id(value, "page_id")


@dataclass(frozen=True)
class FacebookPayload(Payload):
    link: str = ""


class FacebookChannel(MetaChannel[Settings]):
    """One Facebook Page."""

    TYPE = "facebook"
    PLATFORM = "Facebook"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    SCOPES = (POST_SCOPES,)
    RENEW_HELP = RENEW_HELP
    CAN_EDIT = True
    CAN_DELETE = True
    DELETE_SCOPES = POST_SCOPES

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self.budget = Budget("characters", MESSAGE_LIMIT, len)

    def render(self, story: Story) -> Post:
        shown = dataclasses.replace(
            story, title=defuse_mentions(story.title), lead=defuse_mentions(story.lead)
        )
        text, used, _ = self.renderer.fit(shown, self.budget)
        return self.post(
            story, text, Length(self.budget.unit, used, self.budget.limit), payload=FacebookPayload(story.url)
        )

    def digest_budget(self) -> Budget:
        return self.budget

    def render_digest(self, digest: Digest) -> Post:
        """The roundup as one Page post (its links in the text; no link preview)."""
        return dataclasses.replace(super().render_digest(digest), payload=FacebookPayload())

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        payload = payload_of(post, FacebookPayload)
        await self.ready()
        page = self.settings.page_id
        started = self.now()
        data: dict[str, str] = {"message": post.text}
        if payload.link:
            data["link"] = payload.link

        async def request() -> dict[str, Any]:
            return await self.graph.post(f"{page}/feed", data)

        async def lookup() -> Receipt | None:
            return await self.find_post(post.text, started)

        answer = await self.publish("posting to the Page", request, lookup, needs=POST_SCOPES)
        if isinstance(answer, Receipt):
            return answer
        post_id = str(answer.get("id", ""))
        if not post_id:
            return Receipt(note="Facebook accepted the post but answered without its id")
        return Receipt(remote_id=post_id, url=post_url(post_id))

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        """Make the Page post's message read like `post` (its link cannot change). Setting a
        message twice is harmless, so a lost answer is retried."""
        await self.ready()
        remote = published.remote_id
        if not remote:
            raise Permanent("the Facebook post's id was not recorded; edit it by hand")

        async def read() -> dict[str, Any]:
            return await self.graph.get(remote, {"fields": "message"})

        async def write() -> dict[str, Any]:
            return await self.graph.post(remote, {"message": post.text})

        try:
            current = await read()
        except GraphFailure as failure:
            if is_missing(failure):
                raise Permanent(f"the Facebook post {remote} is gone; nothing to edit") from None
            await self.refused(failure, "reading the post", needs=POST_SCOPES)
        except httpx.HTTPError as exc:
            raise RetryLater(f"network error while reading the post: {type(exc).__name__}") from None
        if current.get("message") == post.text:
            raise AlreadyDone("the Page post already reads like this")
        await self.call("editing the post", write, needs=POST_SCOPES)
        return Receipt(remote_id=remote, url=published.url or post_url(remote), note="edited")

    async def find_post(self, message: str, started: Any) -> Receipt | None:
        """The Page post with exactly `message` created since `started` (newest first), or None."""
        answer = await self.graph.get(
            f"{self.settings.page_id}/feed",
            {"fields": "id,message,created_time", "since": self.since(started), "limit": "50"},
        )
        for item in answer.get("data", []) if isinstance(answer.get("data"), list) else []:
            if isinstance(item, dict) and item.get("message") == message and item.get("id"):
                post_id = str(item["id"])
                return Receipt(
                    remote_id=post_id, url=post_url(post_id), note="found on the Page after a lost answer"
                )
        return None


def post_url(post_id: str) -> str:
    """The post's address ("{page-id}_{post-id}" opens it on facebook.com)."""
    return f"https://www.facebook.com/{post_id}"


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> FacebookChannel:
    assert isinstance(settings, Settings)
    return FacebookChannel(name, settings, context)


TYPE = ChannelType("facebook", Settings, create)
