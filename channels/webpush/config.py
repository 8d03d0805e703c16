"""The web push configuration: the top-level `[webpush]` section and `[channels.NAME]` settings.

Also the parsing of origins, and `http_config`: which HTTP server settings the subscribe page
gets (`[http]`, or the older `[webpush]` keys).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from bot.channel import ChannelSettings
from bot.config import HttpConfig, split_listen
from bot.durations import Duration, Rate
from bot.types import Story

KNOWN_PUSH_HOSTS = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera, Samsung Internet
    "android.googleapis.com",
    "updates.push.services.mozilla.com",  # Firefox
    "push.services.mozilla.com",
    "notify.windows.com",  # Edge on Windows (wns2-*.notify.windows.com)
    "push.apple.com",  # Safari (web.push.apple.com)
)


class Topic(BaseModel):
    """A choice offered on the subscribe page; a story matches by its section or one of its tags."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    label: str = Field(min_length=1, max_length=80)
    match: list[str] = []  # sections or tags (case-insensitive); empty = the id and the label

    def matches(self, story: Story) -> bool:
        names = {n.casefold() for n in (self.match or [self.id, self.label])}
        return any(v.casefold() in names for v in (story.section, *story.tags, *story.categories) if v)


class WebPushSection(BaseModel):
    """The top-level `[webpush]` section: the subscribe server and the VAPID identity."""

    model_config = ConfigDict(extra="forbid")
    secret_keys: ClassVar[tuple[str, ...]] = ("vapid_private_key",)

    # listen, trust_forwarded_for: used only without an [http] section (see `http_config`)
    listen: str = "127.0.0.1:8080"
    public_url: str = ""  # where readers reach /push/, e.g. "https://www.example.com/push/"
    allowed_origins: list[str] = []  # pages allowed to subscribe, besides public_url's origin
    language: Literal["id", "en"] = "id"
    site_name: str = ""  # shown on the page; default [site].name
    icon: str = ""  # notification icon URL (PNG, at least 192x192); empty = none
    badge: str = ""  # monochrome badge URL for Android's status bar; empty = none
    topics: list[Topic] = []
    vapid_private_key: SecretStr = SecretStr("")  # base64url raw key or PEM; else vapid_key_file
    vapid_public_key: str = ""  # optional check: must match the private key
    vapid_key_file: str = "webpush-vapid.pem"  # relative to the config file; `siar webpush init`
    contact: str  # "mailto:ops@example.com" or an https URL: the push services' way to reach you
    client_rate_limit: Rate = "10/min"  # subscribe/unsubscribe/click requests per client address
    trust_forwarded_for: bool = False  # true: believe X-Forwarded-For from loopback proxies
    push_hosts: list[str] = list(KNOWN_PUSH_HOSTS)  # endpoints must be on these hosts (or below)
    ca_file: str = ""  # extra CA bundle for push endpoints (a private push service, tests)
    max_subscriptions: int = Field(default=1_000_000, ge=1)
    # New subscriptions one client address may add (every rate applies); updates are free.
    new_subscriptions_per_client: list[Rate] = ["5/h", "20/d"]
    # When the table is full, a subscription never pushed to for this long (or failing) makes
    # room for a new reader instead of the reader being refused.
    unconfirmed_after: Duration = 3 * 86400.0

    @field_validator("contact")
    @classmethod
    def _contact(cls, value: str) -> str:
        if not re.match(r"^(mailto:[^@\s]+@[^@\s]+|https://\S+)$", value):
            raise ValueError('must be "mailto:you@example.com" or an https:// URL')
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError('must be an http(s) URL like "https://www.example.com/push/"')
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            origin = normalize_origin(value)
            if origin is None:
                raise ValueError(f'{value!r} is not an origin like "https://www.example.com"')
            out.append(origin)
        return out

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, values: list[Topic]) -> list[Topic]:
        ids = [t.id for t in values]
        if len(set(ids)) != len(ids):
            raise ValueError("topic ids must be unique")
        return values


class Settings(ChannelSettings):
    """`[channels.NAME] type = "webpush"`: how each story is pushed."""

    requires_section: ClassVar[str | None] = "webpush"

    type: str = "webpush"
    rate_limit: str = "60/min"  # stories per period (each story goes to every subscriber)
    ttl: Duration = 86400.0  # how long a push service keeps a message for an offline browser
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"
    # Breaking news goes with `Urgency: high` and this TTL (news an hour old is no longer
    # breaking); posts in the channel's quiet hours with `Urgency: very-low`.
    breaking_ttl: Duration = Field(default=900.0, gt=0)
    # true: a newer story replaces an older one the browser has not received yet (Topic header)
    replace_unseen: bool = False
    concurrency: int = Field(default=100, ge=1, le=1000)  # pushes in flight at once
    batch_size: int = Field(default=1000, ge=1, le=10000)  # subscriptions per claimed batch
    # How long a daemon's claim on a batch lasts without a word from it (every progress write
    # renews it): a dead daemon's batch is taken over after this long.
    lease: Duration = 60.0
    # Help other daemons on the same PostgreSQL store with their broadcasts (claim batches).
    share_broadcasts: bool = True
    help_interval: Duration = 2.0  # how often an idle daemon looks for batches to help with
    http2: bool = False  # push over HTTP/2 (httpx + h2) where the service offers it
    # The HTTP/1.1 client: "lean" (channels/webpush/http1.py, ~half aiohttp's CPU per push) or
    # "aiohttp" (the one before it, a fallback should a push service need it).
    client: Literal["lean", "aiohttp"] = "lean"
    timeout: Duration = 10.0  # per push request
    retries: int = Field(default=2, ge=0, le=10)  # quick retries of one push (429/5xx/network)
    max_retry_wait: Duration = 30.0  # a longer Retry-After defers the rest to the dispatcher
    max_failures: int = Field(default=5, ge=1)  # failed pushes in a row that remove a subscription
    body_limit: int = Field(default=200, ge=20, le=1000)  # graphemes of the notification body
    title_limit: int = Field(default=120, ge=10, le=300)


def http_config(explicit: HttpConfig | None, section: WebPushSection | None) -> HttpConfig:
    """The HTTP server settings for the subscribe page.

    `[http]` in the file (`explicit`) wins. Without it, the compatible `[webpush]` keys supply
    them: `listen` as is; `public_url` ("https://x/siar/push/") minus its trailing "push/" as the
    root; `trust_forwarded_for = true` as `trusted_proxies` = loopback (never "anyone"), false
    as none.
    """
    if explicit is not None:
        return explicit
    base = HttpConfig()
    if section is None:
        return base
    root = section.public_url[: -len("push/")] if section.public_url.endswith("/push/") else ""
    return base.model_copy(
        update={
            "listen": section.listen,
            "public_url": root,
            "trusted_proxies": ["127.0.0.1", "::1"] if section.trust_forwarded_for else [],
        }
    )


def normalize_origin(value: str) -> str | None:
    """ "https://Example.com:443/x" -> "https://example.com"; None when it is not http(s)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")
