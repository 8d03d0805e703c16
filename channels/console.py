"""`type = "console"`: prints each post as a readable block; needs no account and no network."""

from __future__ import annotations

import sys
from typing import TextIO

from pydantic import Field
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from bot.channel import ChannelContext, ChannelSettings
from bot.counting import Budget, count_graphemes
from bot.kit import BaseChannel
from bot.registry import ChannelType, Plugin
from bot.types import Button, Length, Post, Receipt, Story

DEFAULT_TEMPLATE = """\
{% if breaking %}{{ breaking }} {% endif %}{{ title }}

{{ lead }}

{{ url }}
{{ hashtags }}

{% if cta_follow %}
{{ cta_follow }}{% for link in cta_links %} · {{ link.label }}: {{ link.url }}{% endfor %}

{% endif %}
{% if cta_notify %}
{{ cta_notify }}{% if notify_url %}: {{ notify_url }}{% endif %}

{% endif %}
"""


class Settings(ChannelSettings):
    type: str = "console"
    limit: int = Field(default=4000, ge=100)
    rate_limit: str = "100/s"
    width: int = Field(default=100, ge=40, le=300)


class ConsoleChannel(BaseChannel[Settings]):
    """Prints posts to standard output (or any text stream, for tests)."""

    TYPE = "console"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE

    def __init__(
        self, name: str, settings: Settings, context: ChannelContext, stream: TextIO | None = None
    ) -> None:
        super().__init__(name, settings, context)
        self._stream = stream

    def render(self, story: Story) -> Post:
        budget = Budget("graphemes", self.settings.limit, count_graphemes)
        text, used, values = self.renderer.fit(story, budget)
        buttons = [Button(values["read_more"], story.url)] if story.url else []
        buttons += [Button(link.label, link.url) for link in self.context.cta.follow_links]
        return self.post(
            story,
            text,
            Length(budget.unit, used, budget.limit),
            buttons=tuple(buttons),
            media=(story.image,) if story.image else (),
        )

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        stream = self._stream or sys.stdout
        console = Console(
            file=stream,
            width=self.settings.width,
            highlight=False,
            force_terminal=None if self._stream is None else False,
        )
        body = Text(post.text)
        if post.media:
            body.append(f"\n\n[image] {post.media[0]}", style="dim")
        footer = f"{post.story.feed} · {post.length.used}/{post.length.limit} {post.length.unit}"
        # Text, not markup: a category like "[/]" must print as it is.
        title = Text(f"{self.name} · {post.story.section or post.story.feed}")
        console.print(Panel(body, title=title, subtitle=Text(footer), expand=True))
        stream.flush()
        return Receipt(remote_id=idempotency_key, note="printed")


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> ConsoleChannel:
    assert isinstance(settings, Settings)
    return ConsoleChannel(name, settings, context)


PLUGIN = Plugin("console", (ChannelType("console", Settings, create),))
