"""The channel kit: what every platform channel is made of, written once.

`BaseChannel` holds the name, the settings, the context and the template renderer, and gives
the one way to make an HTTP client (`http_client`, guarded when the URL comes from a feed).
A platform module subclasses it, sets `TYPE` and `DEFAULT_TEMPLATE`, and writes `render` and
`send`. The HTTP pieces every platform needs live in the core beside it: `bot.net` (the guarded
client), `bot.http_retry` (one Retry-After parser, one "did the request leave?" classifier per
HTTP stack), `bot.images` (one bounded image download).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Generic, TypeVar

import httpx

from bot.addresses import AddressGuard
from bot.channel import ChannelContext, ChannelSettings
from bot.net import http_client
from bot.render import PostRenderer, load_template_text
from bot.types import Length, Post, Story

S = TypeVar("S", bound=ChannelSettings)


class BaseChannel(Generic[S]):
    """One configured channel of a platform (see `bot.channel.Channel` for the contract)."""

    TYPE: ClassVar[str]
    DEFAULT_TEMPLATE: ClassVar[str] = "{{ title }}\n\n{{ url }}"
    HTML: ClassVar[bool] = False  # the template renders HTML: every variable is escaped
    RESUMABLE: ClassVar[bool] = False  # sending one post twice is harmless (see Channel)
    RESUME_WINDOW: ClassVar[float | None] = None

    def __init__(self, name: str, settings: S, context: ChannelContext) -> None:
        self.name = name
        self.type: str = self.TYPE
        self.settings = settings
        self.context = context
        self.resumable: bool = self.RESUMABLE
        self.resume_window: float | None = self.RESUME_WINDOW
        self.renderer = self.make_renderer(context)

    def make_renderer(self, context: ChannelContext) -> PostRenderer:
        """The renderer of this channel's template (the platform's default unless configured)."""
        text = load_template_text(self.settings.template, self.DEFAULT_TEMPLATE, context.base_dir)
        return PostRenderer(self.name, text, context, html=self.HTML, tag_settings=self.settings.hashtags)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def now(self) -> datetime:
        return self.context.clock()

    def http_client(
        self,
        *,
        guard: AddressGuard | None = None,
        timeout: float | None = None,
        follow_redirects: bool = False,
        keepalive: bool = True,
        base_url: str = "",
    ) -> httpx.AsyncClient:
        """An httpx client with siar's user agent and this channel's timeout. With `guard`
        (for URLs a feed controls: images, pages), every connection is address-checked."""
        return http_client(
            user_agent=self.context.user_agent,
            timeout=timeout or self.settings.timeout,
            guard=guard,
            follow_redirects=follow_redirects,
            keepalive=keepalive,
            base_url=base_url,
        )

    def guard(self, story: Story) -> AddressGuard:
        """The address guard for URLs `story` carries (its feed's: see `[[feeds]] allow_private`)."""
        return self.context.guard_for(story.feed)

    def post(self, story: Story, text: str, length: Length, **parts: object) -> Post:
        """A Post of this channel for `story` (`parts`: buttons, media, facets, payload …)."""
        return Post(channel=self.name, type=self.type, story=story, text=text, length=length, **parts)  # type: ignore[arg-type]
