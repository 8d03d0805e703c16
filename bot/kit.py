"""The channel kit: what every platform channel is made of, written once.

`BaseChannel` holds the name, the settings, the context and the template renderer, and gives
the one way to make an HTTP client (`http_client`, guarded when the URL comes from a feed).
A platform module subclasses it, sets `TYPE` and `DEFAULT_TEMPLATE`, and writes `render` and
`send`. The HTTP pieces every platform needs live in the core beside it: `bot.net` (the guarded
client), `bot.http_retry` (one Retry-After parser, one "did the request leave?" classifier per
HTTP stack), `bot.images` (one bounded image download).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import ClassVar, Generic, TypeVar

import httpx
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from bot.addresses import AddressGuard
from bot.channel import ChannelContext, ChannelSettings, Permanent
from bot.counting import Budget, count_graphemes
from bot.net import http_client
from bot.render import PostRenderer, RenderError, load_template_text
from bot.schedule import in_quiet
from bot.types import Digest, Length, Post, Published, Receipt, Story

S = TypeVar("S", bound=ChannelSettings)


class BaseChannel(Generic[S]):
    """One configured channel of a platform (see `bot.channel.Channel` for the contract)."""

    TYPE: ClassVar[str]
    DEFAULT_TEMPLATE: ClassVar[str] = "{{ title }}\n\n{{ url }}"
    # A roundup: `digest_title`, `items` (each with title, url, section, breaking), `more`.
    DIGEST_TEMPLATE: ClassVar[str] = (
        "{{ digest_title }}\n\n{% for item in items %}• {{ item.title }}\n{{ item.url }}\n\n{% endfor %}"
        "{% if more %}… {{ more }} more{% endif %}"
    )
    CAN_EDIT: ClassVar[bool] = False
    CAN_DELETE: ClassVar[bool] = False
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
        self.can_edit: bool = self.CAN_EDIT
        self.can_delete: bool = self.CAN_DELETE
        # {"edit" | "delete": the setting that turned it off}: the platform could, the operator
        # chose not to (corrections and retractions then name the setting, not the platform).
        self.turned_off: dict[str, str] = {}
        self.renderer = self.make_renderer(context)
        self._digest_template = _digest_env(self.HTML).from_string(self.DIGEST_TEMPLATE)

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

    def quiet_now(self, story: Story) -> bool:
        """True when this post should go without a notification: the channel's quiet hours
        (`quiet = "silent"`, or held/digested posts that go anyway), never for breaking news."""
        settings = self.settings
        return not story.breaking and in_quiet(self.now(), settings.quiet_hours, self.context.site.timezone)

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        raise Permanent(f"{self.type} posts cannot be edited")

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        raise Permanent(f"{self.type} posts cannot be deleted")

    def digest_budget(self) -> Budget:
        """How long a digest may be, by the platform's counting (a platform overrides it)."""
        return Budget("graphemes", 4000, count_graphemes)

    def render_digest(self, digest: Digest) -> Post:
        """The digest as one post: as many of its stories as fit (newest first), then
        "… N more"; the platform's own limit and counting (`digest_budget`)."""
        budget = self.digest_budget()
        stories = list(digest.stories)
        for keep in range(len(stories), 0, -1):
            text = self.digest_text(digest, stories[:keep], digest.more + len(stories) - keep)
            used = budget.count(text)
            if used <= budget.limit:
                shown = replace(digest, stories=tuple(stories[:keep]), more=digest.more + len(stories) - keep)
                return self.post(
                    stories[0],
                    text,
                    Length(budget.unit, used, budget.limit),
                    parse_mode="HTML" if self.HTML else None,
                    digest=shown,  # what the roundup holds (preview --json shows it)
                )
        raise RenderError(f"channel {self.name!r}: not even one story fits the digest template")

    def digest_text(self, digest: Digest, stories: list[Story], more: int) -> str:
        items = [
            {"title": s.title, "url": s.url, "section": s.section, "breaking": s.breaking} for s in stories
        ]
        try:
            text = self._digest_template.render(digest_title=digest.title, items=items, more=more)
        except Exception as exc:
            raise RenderError(f"channel {self.name!r}: digest template error: {exc}") from exc
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    def post(self, story: Story, text: str, length: Length, **parts: object) -> Post:
        """A Post of this channel for `story` (`parts`: buttons, media, facets, payload …)."""
        return Post(channel=self.name, type=self.type, story=story, text=text, length=length, **parts)  # type: ignore[arg-type]


def _digest_env(html: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        autoescape=html, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
