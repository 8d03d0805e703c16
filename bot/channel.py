"""The interface every platform module in `channels/` implements, and the errors it may raise.

A channel turns a Story into a Post (`render`, pure) and delivers a Post (`send`, I/O). Its
failures are mapped to four kinds so that the dispatcher can decide without knowing the platform:

- `RetryLater(reason, after)`: nothing was posted; try again after `after` seconds (or backoff).
- `Permanent(reason)`: will never work as it is (bad credentials, chat gone); record and alert.
- `AlreadyDone(reason)`: the platform says this post exists already; count it as sent.
- `Uncertain(reason)`: the request may have reached the platform; do not resend automatically.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.durations import Duration, parse_rate
from bot.filters import Filters
from bot.types import Post, Receipt, Story


class ChannelError(Exception):
    """A delivery failure, already classified by the channel."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(ChannelError):
    """Try again after `after` seconds (None: backoff). `attempt=False` marks a planned wait
    (a daily cap, say) that must not count against `max_attempts`."""

    def __init__(self, reason: str, after: float | None = None, *, attempt: bool = True) -> None:
        super().__init__(reason)
        self.after = after
        self.attempt = attempt


class Permanent(ChannelError):
    pass


class AlreadyDone(ChannelError):
    pass


class Uncertain(ChannelError):
    pass


class ChannelUnavailable(Exception):
    """Raised by a module's `create()` when the channel cannot run as configured (a key file
    not created yet, say): the channel is disabled with this reason and the rest runs."""


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
    # A send (a whole fan-out, for subscriber channels) taking longer is abandoned: uncertain,
    # or resumed later on a resumable channel.
    send_timeout: Duration = 600.0

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)  # inherited by every platform's Settings, whatever its default
        return value
    # Names of keys holding secrets: a missing one disables the channel instead of failing.
    secret_keys: ClassVar[tuple[str, ...]] = ()
    # A top-level section this type needs (e.g. "telegram" for the bot token); without it, or
    # with a secret missing there, the channel is disabled with the reason.
    requires_section: ClassVar[str | None] = None


@dataclass
class ChannelContext:
    """What the core lends a channel: site data for templates, the store, alerts, shared state."""

    site: Any  # bot.config.Site
    cta: Any  # bot.config.CTA
    user_agent: str = "siar"
    base_dir: Path = Path(".")  # the config file's folder (relative template paths, key files)
    store: Any = None  # bot.store.Store, for channels that keep their own tables (subscribers)
    clock: Callable[[], datetime] | None = None
    config: Any = None  # the whole bot.config.Config, for channels that need a top-level section
    # Places an alert goes besides the log, e.g. the Telegram admins; see `alert`.
    alert_sinks: list[Callable[[str, str], Awaitable[None]]] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. one Telegram Application per token
    extras: dict[str, Any] = field(default_factory=dict)

    async def alert(self, source: str, message: str) -> None:
        """Send `message` about `source` (a channel or feed) to every alert sink; never raises."""
        if self.config is not None:
            message = self.config.redact(message)
        for sink in list(self.alert_sinks):
            try:
                await sink(source, message)
            except Exception:
                logging.getLogger("siar.alert").exception("alert sink failed")


@runtime_checkable
class Channel(Protocol):
    """One configured destination (a Telegram chat, an X account, the console, ...)."""

    name: str
    type: str
    settings: ChannelSettings
    # True when sending one post twice is harmless (the platform dedups by the idempotency key,
    # or the channel keeps per-recipient progress): a crash mid-send then resumes the row instead
    # of marking it uncertain. A channel may also have `resume_window` (seconds): how long the
    # platform remembers an idempotency key (Mastodon: one hour); older interrupted rows are
    # marked uncertain instead of resumed.
    resumable: bool

    async def start(self) -> None:
        """Open connections and sessions; called once before the first send."""

    async def close(self) -> None:
        """Release what `start` opened."""

    def render(self, story: Story) -> Post:
        """The post this channel would send for `story`: pure, no I/O."""

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Deliver `post`; raise a ChannelError subclass on failure."""
