"""The interface every platform in `channels/` implements, what the core lends it, and the
errors it may raise.

A channel turns a Story into a Post (`render`, pure) and delivers a Post (`send`, I/O). Its
failures are mapped to a few kinds so that the dispatcher decides without knowing the platform:

- `RetryLater(reason, after)`: nothing was posted; try again after `after` seconds (or backoff).
- `Permanent(reason)`: will never work as it is (chat gone, post refused); record and alert.
  `Unauthorized(reason)`: the same, because the platform refused our credentials.
- `AlreadyDone(reason)`: the platform says this post exists already; count it as sent.
- `Uncertain(reason)`: the request may have reached the platform; do not resend automatically.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.addresses import AddressGuard
from bot.durations import Duration, parse_rate
from bot.filters import Filters
from bot.metrics import Metrics, NullMetrics
from bot.paths import resolve_path
from bot.schedule import DigestSettings, QuietHours
from bot.site import CTA, Site
from bot.types import Digest, Post, Published, Receipt, Story

if TYPE_CHECKING:
    from bot.admin import Admin
    from bot.config import HttpConfig
    from bot.db import Database
    from bot.fanout import FanoutLedger
    from bot.reports import Reports
    from bot.stories import Stories

log = logging.getLogger("siar.alert")
Clock = Callable[[], datetime]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- errors ------------------------------------------------------------------------------------


class ChannelError(Exception):
    """A delivery failure, already classified by the channel."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(ChannelError):
    """Try again after `after` seconds (None: backoff). `attempt=False` marks a planned wait
    (a daily cap, a broadcast that made progress) that must not count against `max_attempts`."""

    def __init__(self, reason: str, after: float | None = None, *, attempt: bool = True) -> None:
        super().__init__(reason)
        self.after = after
        self.attempt = attempt


class Permanent(ChannelError):
    pass


class Unauthorized(Permanent):
    """The platform refused our credentials (a revoked or expired token, a wrong password)."""


class AlreadyDone(ChannelError):
    pass


class Uncertain(ChannelError):
    pass


class ChannelUnavailable(Exception):
    """Raised by a channel type's `create()` when the channel cannot run as configured (a key
    file not created yet, a missing section): it is disabled with this reason, the rest runs."""


# --- settings ----------------------------------------------------------------------------------


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
    timeout: Duration = 20.0  # per platform request ("15s", "1m"); each platform sets its default
    # A story corrected after it was posted: edit the post where the platform can, or leave it.
    on_correction: Literal["edit", "ignore"] = "edit"
    # Quiet hours in [site] timezone ("22:00-06:00"): posts then go silently, wait, or join the
    # next digest; breaking news is never held or silenced.
    quiet_hours: QuietHours | None = None
    quiet: Literal["silent", "hold", "digest"] = "silent"
    digest: DigestSettings | None = None

    # Names of keys holding secrets: a missing one disables the channel instead of failing.
    secret_keys: ClassVar[tuple[str, ...]] = ()
    # A top-level section this type needs (e.g. "telegram" for the bot token); without it, or
    # with a secret missing there, the channel is disabled with the reason.
    requires_section: ClassVar[str | None] = None

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)  # inherited by every platform's Settings, whatever its default
        return value

    def secret_parts(self) -> list[str]:
        """Pieces of secret values that may show up on their own (a token inside a URL): they
        are masked in logs, alerts and stored errors like the whole values."""
        return []


# --- what the core lends a channel ---------------------------------------------------------------

Sink = Callable[[str, str], Awaitable[None]]


class Alerts:
    """Where alerts go: the log, then every registered sink (the Telegram admins, say).

    Messages are redacted first (secrets never leave), and a failing sink never breaks the
    caller."""

    def __init__(self, redact: Callable[[str], str] = str) -> None:
        self.redact = redact
        self._sinks: list[Sink] = []

    def add_sink(self, sink: Sink) -> None:
        if sink not in self._sinks:
            self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    async def __call__(self, source: str, message: str) -> None:
        message = self.redact(message)
        log.error("ALERT %s: %s", source, message)
        for sink in list(self._sinks):
            try:
                await sink(source, message)
            except Exception:
                log.exception("alert sink failed")


class Shared:
    """Objects one process shares between channels (one Telegram Application per bot token,
    one instance's limits), by key and type."""

    def __init__(self) -> None:
        self._items: dict[str, object] = {}

    def get(self, key: str, kind: type[T], make: Callable[[], T]) -> T:
        """The object under `key`, made with `make` the first time."""
        item = self._items.get(key)
        if not isinstance(item, kind):
            item = make()
            self._items[key] = item
        return item

    def pop(self, key: str) -> None:
        self._items.pop(key, None)


SentSince = Callable[[str, datetime], Awaitable[int]]


def _refuse_private(feed: str) -> AddressGuard:
    return AddressGuard()


@dataclass
class ChannelContext:
    """What the core lends a channel. Every service is optional so that a channel can render
    (`preview`, `check`) without a store; `start()` says what it cannot run without."""

    site: Site
    cta: CTA
    base_dir: Path = Path(".")  # the config file's folder: relative templates, key files
    user_agent: str = "siar"
    clock: Clock = utc_now
    alerts: Alerts = field(default_factory=Alerts)
    database: Database | None = None  # for the channel's own tables (writes through its lock)
    sent_since: SentSince | None = None  # (channel, since) -> posts the platform confirmed
    fanout: FanoutLedger | None = None  # per-recipient progress of broadcasts
    stories: Stories | None = None  # the newest stories (reader bots)
    reports: Reports | None = None  # status reports (admin commands)
    sections: Mapping[str, BaseModel] = field(default_factory=dict)  # validated top-level sections
    http: HttpConfig | None = None  # the `[http]` section, when the file has one
    metrics: Metrics = field(default_factory=NullMetrics)
    admin: Admin | None = None  # the operator's actions (the bots' admin commands)
    guard_for: Callable[[str], AddressGuard] = _refuse_private  # feed name -> its address guard
    shared: Shared = field(default_factory=Shared)
    redact: Callable[[str], str] = str

    def section(self, name: str, kind: type[M]) -> M | None:
        """The validated top-level section `name` ([telegram], [webpush]), if configured."""
        value = self.sections.get(name)
        return value if isinstance(value, kind) else None

    def resolve_path(self, value: str) -> Path:
        """`value` as a path, relative to the config file's folder when not absolute."""
        return resolve_path(value, self.base_dir)

    async def alert(self, source: str, message: str) -> None:
        """Alert the admins about `source` (a channel or feed); never raises."""
        await self.alerts(source, message)


# --- the protocol ------------------------------------------------------------------------------


@runtime_checkable
class Channel(Protocol):
    """One configured destination (a Telegram chat, an X account, the console, ...)."""

    name: str
    type: str
    # True when sending one post twice is harmless (the platform dedups by the idempotency key,
    # or the channel keeps per-recipient progress): a crash mid-send then resumes the row instead
    # of marking it uncertain.
    resumable: bool
    # Seconds the platform remembers an idempotency key (Mastodon: one hour); a resumable row
    # interrupted longer ago than that is marked uncertain instead. None: forever.
    resume_window: float | None

    @property
    def settings(self) -> ChannelSettings:
        """The channel's validated `[channels.NAME]` table (a platform's subclass)."""

    async def start(self) -> None:
        """Open connections and sessions; called once before the first send."""

    async def close(self) -> None:
        """Release what `start` opened."""

    def render(self, story: Story) -> Post:
        """The post this channel would send for `story`: pure, no I/O."""

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Deliver `post`; raise a ChannelError subclass on failure."""

    # Editorial actions. A platform that cannot edit or delete says so (`can_edit` /
    # `can_delete` False): corrections and retractions then record why nothing was done there.
    can_edit: bool
    can_delete: bool

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        """Make the published post read like `post` (a corrected story); AlreadyDone when it
        already does."""

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """Remove the published post; AlreadyDone when it is gone already."""

    def render_digest(self, digest: Digest) -> Post:
        """One roundup post of `digest`'s stories, within the platform's limits (pure)."""


def payload_of(post: Post, kind: type[T]) -> T:
    """`post.payload` as the channel's own payload type (Permanent when it is not: a post
    rendered by another channel type can never be sent here)."""
    if not isinstance(post.payload, kind):
        raise Permanent(f"post for {post.channel} carries {type(post.payload).__name__}, not {kind.__name__}")
    return post.payload
