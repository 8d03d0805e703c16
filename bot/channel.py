"""The interface every platform module in `channels/` implements, and the errors it may raise.

A channel turns a Story into a Post (`render`, pure) and delivers a Post (`send`, I/O). Its
failures are mapped to four kinds so that the dispatcher can decide without knowing the platform:

- `RetryLater(reason, after)`: nothing was posted; try again after `after` seconds (or backoff).
- `Permanent(reason)`: will never work as it is (bad credentials, chat gone); record and alert.
- `AlreadyDone(reason)`: the platform says this post exists already; count it as sent.
- `Uncertain(reason)`: the request may have reached the platform; do not resend automatically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from bot.filters import Filters
from bot.types import Post, Receipt, Story


class ChannelError(Exception):
    """A delivery failure, already classified by the channel."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(ChannelError):
    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


class Permanent(ChannelError):
    pass


class AlreadyDone(ChannelError):
    pass


class Uncertain(ChannelError):
    pass


class HashtagSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max: int = Field(default=3, ge=0, le=30)
    exclude: list[str] = []  # tags never turned into hashtags (case-insensitive)
    mapping: dict[str, str] = {}  # tag -> hashtag text (without '#'), e.g. "rusia" = "Russia"


class ChannelSettings(Filters):
    """Keys every `[channels.NAME]` table accepts; platform modules subclass this."""

    model_config = ConfigDict(extra="forbid")

    type: str
    enabled: bool = True
    feeds: list[str] | None = None  # feed names; None = all feeds
    template: str | None = None  # Jinja2 template text, or a path ending in .j2
    hashtags: HashtagSettings = HashtagSettings()
    rate_limit: str = "20/min"  # at most N posts per period, e.g. "30/s", "20/min", "300/h"
    max_attempts: int = Field(default=8, ge=1, le=100)
    # Names of keys holding secrets: a missing one disables the channel instead of failing.
    secret_keys: ClassVar[tuple[str, ...]] = ()


@dataclass
class ChannelContext:
    """What the core lends a channel: site data for templates, the http user agent, etc."""

    site: Any  # bot.config.Site
    cta: Any  # bot.config.CTA
    user_agent: str = "siar"
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Channel(Protocol):
    """One configured destination (a Telegram chat, an X account, the console, ...)."""

    name: str
    type: str
    settings: ChannelSettings

    async def start(self) -> None:
        """Open connections and sessions; called once before the first send."""

    async def close(self) -> None:
        """Release what `start` opened."""

    def render(self, story: Story) -> Post:
        """The post this channel would send for `story`: pure, no I/O."""

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Deliver `post`; raise a ChannelError subclass on failure."""
