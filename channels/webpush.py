"""`type = "webpush"`: browser push notifications, from siar's own subscribe page to the reader.

Three parts, all in this module (it owns the top-level `[webpush]` section):

- `WebPushSection` / `Settings`: the configuration.
- `PushHttpServer`: a small aiohttp server (`[webpush] listen`) with the subscribe page
  (`/push/`), the service worker, the embeddable widget and the JSON endpoints that store
  subscriptions. Static assets live in `channels/webpush_static/`.
- `WebPushChannel`: the fan-out. For each story it plans one delivery row per matching
  subscription (keyed by the outbox idempotency key), pushes them in chunks with bounded
  concurrency (pywebpush encrypts with aes128gcm, py_vapid signs the VAPID JWT), and records
  each outcome. A resumed row skips what was pushed; a push that was in flight when the daemon
  died is marked `uncertain` and never repeated, so nobody gets a story twice.

`init_command(config)` implements `siar webpush init` (creates the VAPID key pair).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import functools
import hashlib
import json
import logging
import os
import re
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TextIO, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.channel import ChannelContext, ChannelSettings, ChannelUnavailable, Permanent, RetryLater
from bot.counting import Budget, count_graphemes
from bot.durations import Duration, Rate, parse_rate
from bot.render import PostRenderer, load_template_text, shorten, unit_count
from bot.schema import UTCDateTime
from bot.types import Button, Length, Post, Receipt, Story

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

log = logging.getLogger("siar.webpush")
STATIC = Path(__file__).parent / "webpush_static"
PREFIX = "/push"
# A push message may carry at most 4096 bytes; aes128gcm adds 86 header + 16 tag + 1 pad bytes.
PAYLOAD_MAX = 3993
KNOWN_PUSH_HOSTS = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera, Samsung Internet
    "android.googleapis.com",
    "updates.push.services.mozilla.com",  # Firefox
    "push.services.mozilla.com",
    "notify.windows.com",  # Edge on Windows (wns2-*.notify.windows.com)
    "push.apple.com",  # Safari (web.push.apple.com)
)


# --- configuration ---------------------------------------------------------------------------

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
    trust_forwarded_for: bool = False  # true behind a reverse proxy that sets X-Forwarded-For
    push_hosts: list[str] = list(KNOWN_PUSH_HOSTS)  # endpoints must be on these hosts (or below)
    ca_file: str = ""  # extra CA bundle for push endpoints (a private push service, tests)
    max_subscriptions: int = Field(default=1_000_000, ge=1)

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
                raise ValueError(f"{value!r} is not an origin like \"https://www.example.com\"")
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
    # true: a newer story replaces an older one the browser has not received yet (Topic header)
    replace_unseen: bool = False
    concurrency: int = Field(default=20, ge=1, le=500)  # pushes in flight at once
    batch_size: int = Field(default=100, ge=1, le=5000)  # deliveries claimed per store write
    timeout: Duration = 10.0  # per push request
    retries: int = Field(default=2, ge=0, le=10)  # quick retries of one push (429/5xx/network)
    max_retry_wait: Duration = 30.0  # a longer Retry-After defers the rest to the dispatcher
    max_failures: int = Field(default=5, ge=1)  # failed pushes in a row that remove a subscription
    body_limit: int = Field(default=200, ge=20, le=1000)  # graphemes of the notification body
    title_limit: int = Field(default=120, ge=10, le=300)


# --- pure helpers ----------------------------------------------------------------------------

def split_listen(value: str) -> tuple[str, int]:
    """("host", port) for "127.0.0.1:8080", "[::1]:8080" or ":8080"; ValueError otherwise."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]*):(\d{1,5})", value.strip())
    if not match or int(match.group(2)) > 65535:
        raise ValueError('must be "HOST:PORT", e.g. "127.0.0.1:8080"')
    return match.group(1).strip("[]") or "0.0.0.0", int(match.group(2))


def normalize_origin(value: str) -> str | None:
    """"https://Example.com:443/x" -> "https://example.com"; None when it is not http(s)."""
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


def b64url_decode(value: str) -> bytes:
    """Bytes of base64url text with or without padding; ValueError when it is not base64url."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", value):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class InvalidRequest(ValueError):
    """A request the server refuses; the message is safe to show to the browser."""


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    p256dh: str
    auth: str
    topics: tuple[str, ...] = ()


def parse_subscription(data: Any, topics: Sequence[str], push_hosts: Sequence[str]) -> Subscription:
    """A checked subscription from the JSON a browser posts; InvalidRequest saying what is wrong.

    Accepts `{"subscription": PushSubscription.toJSON(), "topics": [...]}` or the bare
    PushSubscription JSON. The endpoint must be https on a known push service (the server will
    POST there, so anything else would let strangers aim it at arbitrary hosts).
    """
    if not isinstance(data, dict):
        raise InvalidRequest("expected a JSON object")
    sub = data.get("subscription", data)
    chosen = data.get("topics", [])
    if not isinstance(sub, dict):
        raise InvalidRequest("subscription: expected an object")
    endpoint = sub.get("endpoint")
    if not isinstance(endpoint, str) or not 12 <= len(endpoint) <= 1024:
        raise InvalidRequest("subscription.endpoint: expected a URL of at most 1024 characters")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidRequest("subscription.endpoint: not a valid URL") from exc
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise InvalidRequest("subscription.endpoint: must be an https:// URL")
    if parts.fragment or any(c.isspace() for c in endpoint):
        raise InvalidRequest("subscription.endpoint: not a valid URL")
    host = parts.hostname.lower()
    if not any(host == h or host.endswith("." + h) for h in push_hosts):
        raise InvalidRequest("subscription.endpoint: not a known push service")
    expiration = sub.get("expirationTime")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, int | float)):
        raise InvalidRequest("subscription.expirationTime: expected null or a number")
    keys = sub.get("keys")
    if not isinstance(keys, dict):
        raise InvalidRequest("subscription.keys: expected an object with p256dh and auth")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not isinstance(p256dh, str) or len(p256dh) > 100 or not _valid_p256dh(p256dh):
        raise InvalidRequest("subscription.keys.p256dh: expected a base64url P-256 public key (65 bytes)")
    if not isinstance(auth, str) or len(auth) > 40 or not _valid_auth(auth):
        raise InvalidRequest("subscription.keys.auth: expected a base64url secret of 16 bytes")
    if not isinstance(chosen, list) or len(chosen) > 50 or not all(isinstance(t, str) for t in chosen):
        raise InvalidRequest("topics: expected a list of topic ids")
    unknown = [t for t in chosen if t not in topics]
    if unknown:
        raise InvalidRequest(f"topics: unknown topic {unknown[0][:40]!r}")
    return Subscription(endpoint, p256dh.rstrip("="), auth.rstrip("="), tuple(dict.fromkeys(chosen)))


def _valid_p256dh(value: str) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        raw = b64url_decode(value)
        if len(raw) != 65 or raw[0] != 4:
            return False
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # on the curve?
    except ValueError:
        return False
    return True


def _valid_auth(value: str) -> bool:
    try:
        return len(b64url_decode(value)) == 16
    except ValueError:
        return False


def wanted_by(story: Story, subscribed: Sequence[str], topics: Sequence[Topic]) -> bool:
    """Whether a subscription to `subscribed` topic ids (none = everything) wants `story`."""
    if not subscribed:
        return True
    return any(t.id in subscribed and t.matches(story) for t in topics)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delay seconds or an HTTP date); None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def story_tag(story: Story) -> str:
    """A short stable id of the story: the notification tag (a repeat replaces, never stacks)."""
    return "s" + hashlib.sha256((story.url or f"{story.feed}:{story.uid}").encode()).hexdigest()[:20]


def topic_header(value: str) -> str:
    """A Topic header value: at most 32 characters of the URL-safe base64 alphabet (RFC 8030)."""
    return b64url(hashlib.sha256(value.encode()).digest())[:32]


class ClientLimiter:
    """A token bucket per client address, pruned so that it cannot grow without bound."""

    def __init__(self, rate: str, max_clients: int = 10_000) -> None:
        self.count, self.period = parse_rate(rate)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.count), now))
        tokens = min(float(self.count), tokens + (now - last) * self.count / self.period)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed


# --- VAPID keys ------------------------------------------------------------------------------

class KeyError_(Exception):
    """The VAPID key is missing or unusable; the message says how to fix it (never the key)."""


@dataclass(frozen=True)
class VapidKeys:
    private: Any  # py_vapid.Vapid
    public: str  # base64url uncompressed point: the applicationServerKey


def key_file_path(section: WebPushSection, base_dir: Path) -> Path:
    path = Path(section.vapid_key_file).expanduser()
    return path if path.is_absolute() else base_dir / path


def load_vapid(section: WebPushSection, base_dir: Path) -> VapidKeys:
    """The VAPID key pair from `vapid_private_key` or else `vapid_key_file`; KeyError_ if none."""
    from cryptography.hazmat.primitives import serialization
    from py_vapid import Vapid  # type: ignore[import-untyped, unused-ignore]

    secret = section.vapid_private_key.get_secret_value().strip()
    try:
        if secret:
            where = "webpush.vapid_private_key"
            vapid = Vapid.from_pem(secret.encode()) if "-----BEGIN" in secret else Vapid.from_string(secret)
        else:
            path = key_file_path(section, base_dir)
            where = str(path)
            if not path.exists():
                raise KeyError_(f"no VAPID key: {path} does not exist; create it with "
                                "`siar webpush init` or set webpush.vapid_private_key")
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                log.warning("VAPID key file %s is readable by others (mode %o); chmod 600 it", path, mode)
            vapid = Vapid.from_file(private_key_file=str(path))
    except KeyError_:
        raise
    except Exception as exc:  # the message of a key parser may quote the key: do not pass it on
        raise KeyError_(f"the VAPID private key in {where} is not a valid P-256 key "
                        f"({type(exc).__name__})") from None
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    public = b64url(raw)
    if section.vapid_public_key and section.vapid_public_key.rstrip("=") != public:
        raise KeyError_("webpush.vapid_public_key does not belong to the private key; remove it "
                        "or correct it (browsers subscribed with the wrong key would all fail)")
    return VapidKeys(vapid, public)


def init_command(config: Any, *, force: bool = False, out: TextIO | None = None) -> int:
    """`siar webpush init`: write a new VAPID key pair to the key file (0600); 0 on success.

    Refuses (exit 1) when the file exists, unless `force`. Prints the public key, which the
    subscribe page also serves at /push/vapid-public-key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = out or sys.stdout
    section = (config.sections or {}).get("webpush")
    if section is None:
        print("no [webpush] section in the configuration; add one (see README) first", file=sys.stderr)
        return 2
    path = key_file_path(section, config.path.parent)
    if section.vapid_private_key.get_secret_value().strip():
        print("note: webpush.vapid_private_key is set and takes precedence over the key file",
              file=sys.stderr)
    if path.exists() and not force:
        print(f"{path} exists already; not overwriting it (subscriptions made with its public key "
              "would stop working). Use --force to replace it.", file=sys.stderr)
        return 1
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    public = b64url(key.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.UncompressedPoint))
    print(f"VAPID key pair written to {path} (mode 600).", file=out)
    print(f"public key (applicationServerKey): {public}", file=out)
    return 0


# --- store -----------------------------------------------------------------------------------

_meta = MetaData()
subscriptions = Table(
    "webpush_subscriptions", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint_hash", String(64), nullable=False, unique=True),
    Column("endpoint", Text, nullable=False),
    Column("p256dh", String(100), nullable=False),
    Column("auth", String(40), nullable=False),
    Column("topics", Text, nullable=False),
    Column("origin", String(300), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_push_at", UTCDateTime),
    Column("failures", Integer, nullable=False),
)
deliveries = Table(
    "webpush_deliveries", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("push_key", String(100), nullable=False),
    Column("subscription_id", Integer, nullable=False),
    # pending -> sending -> sent | gone | failed | retry (tried again) ; sending after a crash
    # -> uncertain (never pushed again)
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("status_code", Integer),
    Column("detail", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)
clicks = Table(
    "webpush_clicks", _meta,
    Column("tag", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("clicks", Integer, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
)


def endpoint_hash(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


@dataclass(frozen=True)
class Target:
    delivery_id: int
    subscription_id: int
    endpoint: str
    p256dh: str
    auth: str


@dataclass
class Outcome:
    status: str  # sent, gone, failed, retry
    code: int | None = None
    detail: str = ""
    retry_after: float | None = None
    auth_rejected: bool = False


class SubscriptionStore:
    """The webpush tables on the siar store (SQLite or PostgreSQL)."""

    def __init__(self, store: Any, clock: Any = None) -> None:
        self.store = store
        self.engine: AsyncEngine = store.engine
        self.clock = clock or (lambda: datetime.now(UTC))

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        # The core store's write transaction serializes SQLite writers ("database is locked").
        return cast(AbstractAsyncContextManager[AsyncConnection], self.store.write())

    async def save(self, sub: Subscription, origin: str, max_subscriptions: int,
                   replaces: str | None = None) -> bool:
        """Insert or update `sub`; True when it is new. InvalidRequest when the store is full."""
        now = self.clock()
        key = endpoint_hash(sub.endpoint)
        values = {"endpoint": sub.endpoint, "p256dh": sub.p256dh, "auth": sub.auth,
                  "topics": json.dumps(list(sub.topics)), "origin": origin[:300], "updated_at": now,
                  "failures": 0}
        async with self._write() as conn:
            if replaces:
                old = (await conn.execute(select(subscriptions.c.topics).where(
                    subscriptions.c.endpoint_hash == endpoint_hash(replaces)))).first()
                if old is not None and not sub.topics:
                    values["topics"] = old.topics
                await conn.execute(delete(subscriptions).where(
                    subscriptions.c.endpoint_hash == endpoint_hash(replaces)))
            done = await conn.execute(update(subscriptions).where(
                subscriptions.c.endpoint_hash == key).values(**values))
            if done.rowcount:
                return False
            count = (await conn.execute(select(func.count()).select_from(subscriptions))).scalar_one()
            if count >= max_subscriptions:
                raise InvalidRequest("this site has reached its subscription limit")
            await conn.execute(insert(subscriptions).values(endpoint_hash=key, created_at=now, **values))
        return True

    async def remove(self, endpoint: str) -> bool:
        async with self._write() as conn:
            done = await conn.execute(delete(subscriptions).where(
                subscriptions.c.endpoint_hash == endpoint_hash(endpoint)))
        return bool(done.rowcount)

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            n: int = (await conn.execute(select(func.count()).select_from(subscriptions))).scalar_one()
        return n

    async def all(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(subscriptions).order_by(subscriptions.c.id))).all()
        return [r._asdict() for r in rows]

    async def record_click(self, tag: str, url: str) -> None:
        now = self.clock()
        async with self._write() as conn:
            done = await conn.execute(update(clicks).where(clicks.c.tag == tag).values(
                clicks=clicks.c.clicks + 1, last_at=now))
            if not done.rowcount:
                await conn.execute(insert(clicks).values(tag=tag, url=url, clicks=1, last_at=now))

    async def plan(self, key: str, story: Story, topics: Sequence[Topic]) -> int:
        """Create the delivery rows of `key` once (every subscription that wants `story`)."""
        async with self.engine.connect() as conn:
            planned = (await conn.execute(select(func.count()).select_from(deliveries).where(
                deliveries.c.push_key == key))).scalar_one()
            if planned:
                return int(planned)
            rows = (await conn.execute(select(subscriptions.c.id, subscriptions.c.topics))).all()
        wanted = [r.id for r in rows if wanted_by(story, json.loads(r.topics or "[]"), topics)]
        if not wanted:
            return 0
        now = self.clock()
        async with self._write() as conn:
            for start in range(0, len(wanted), 1000):
                await conn.execute(insert(deliveries), [
                    {"push_key": key, "subscription_id": sid, "status": "pending", "attempts": 0,
                     "updated_at": now} for sid in wanted[start:start + 1000]])
        return len(wanted)

    async def abandon_in_flight(self, key: str) -> int:
        """Deliveries left `sending` by a crash become `uncertain`: they may have gone out."""
        async with self._write() as conn:
            done = await conn.execute(update(deliveries).where(
                deliveries.c.push_key == key, deliveries.c.status == "sending").values(
                status="uncertain", updated_at=self.clock(),
                detail="in flight when the daemon stopped; not pushed again"))
        return int(done.rowcount or 0)

    async def claim(self, key: str, after_id: int, limit: int) -> list[Target]:
        """The next `limit` pending/retry deliveries of `key` after `after_id`, now `sending`."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(deliveries.c.id, deliveries.c.subscription_id, subscriptions.c.endpoint,
                       subscriptions.c.p256dh, subscriptions.c.auth)
                .select_from(deliveries.outerjoin(
                    subscriptions, subscriptions.c.id == deliveries.c.subscription_id))
                .where(deliveries.c.push_key == key, deliveries.c.id > after_id,
                       deliveries.c.status.in_(("pending", "retry")))
                .order_by(deliveries.c.id).limit(limit))).all()
        if not rows:
            return []
        now = self.clock()
        async with self._write() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id.in_([r.id for r in rows])).values(
                status="sending", attempts=deliveries.c.attempts + 1, updated_at=now))
        targets = [Target(r.id, r.subscription_id, r.endpoint or "", r.p256dh or "", r.auth or "")
                   for r in rows]
        gone = [t for t in targets if not t.endpoint]  # unsubscribed since the plan
        if gone:
            await self.finish({t.delivery_id: Outcome("gone", detail="unsubscribed") for t in gone}, {},
                              max_failures=1)
        return [t for t in targets if t.endpoint]

    async def finish(self, outcomes: dict[int, Outcome], subs: dict[int, int], max_failures: int) -> None:
        """Record outcomes (delivery id -> Outcome) and their effect on subscriptions, in one go."""
        now = self.clock()
        async with self._write() as conn:
            for delivery_id, outcome in outcomes.items():
                await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
                    status=outcome.status, status_code=outcome.code, detail=outcome.detail[:500] or None,
                    updated_at=now))
                sid = subs.get(delivery_id)
                if sid is None:
                    continue
                if outcome.status == "sent":
                    await conn.execute(update(subscriptions).where(subscriptions.c.id == sid).values(
                        last_push_at=now, failures=0))
                elif outcome.status == "gone":
                    await conn.execute(delete(subscriptions).where(subscriptions.c.id == sid))
                elif outcome.status == "failed":
                    await conn.execute(update(subscriptions).where(subscriptions.c.id == sid).values(
                        failures=subscriptions.c.failures + 1))
                    await conn.execute(delete(subscriptions).where(
                        subscriptions.c.id == sid, subscriptions.c.failures >= max_failures))

    async def tally(self, key: str) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(deliveries.c.status, func.count()).where(
                deliveries.c.push_key == key).group_by(deliveries.c.status))).all()
        return {status: int(n) for status, n in rows}

    async def prune(self, older_than: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(delete(deliveries).where(deliveries.c.updated_at < older_than))


# --- the HTTP server -------------------------------------------------------------------------

@functools.cache
def static_file(name: str) -> bytes:
    """A file of channels/webpush_static (read once)."""
    return (STATIC / name).read_bytes()


def load_strings(language: str) -> dict[str, Any]:
    """The page's texts in `language` ("id" or "en")."""
    data: dict[str, dict[str, Any]] = json.loads(static_file("strings.json"))
    return {**data["en"], **data.get(language, {})}


class PushHttpServer:
    """The subscribe page, service worker, widget and subscription endpoints under /push/."""

    def __init__(self, section: WebPushSection, subs: SubscriptionStore, public_key: str,
                 site_name: str = "", notify_text: str = "") -> None:
        self.section = section
        self.subs = subs
        self.public_key = public_key
        self.site_name = section.site_name or site_name or "siar"
        self.notify_text = notify_text
        self.limiter = ClientLimiter(section.client_rate_limit)
        self.strings = load_strings(section.language)
        self.public_url = section.public_url
        self._runner: web.AppRunner | None = None
        self._cache: dict[str, bytes] = {}

    @property
    def origins(self) -> set[str]:
        own = normalize_origin(self.public_url)
        return {*self.section.allowed_origins, *([own] if own else [])}

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024, middlewares=[_security_headers_factory()])
        app.router.add_get(PREFIX, self._redirect)
        app.router.add_get(PREFIX + "/", self._page)
        app.router.add_get(PREFIX + "/sw.js", self._sw)
        app.router.add_get(PREFIX + "/widget.js", self._widget)
        app.router.add_get(PREFIX + "/vapid-public-key", self._vapid_public_key)
        app.router.add_get(PREFIX + "/health", self._health)
        for name in ("subscribe", "unsubscribe", "click"):
            app.router.add_post(f"{PREFIX}/{name}", getattr(self, f"_{name}"))
            app.router.add_route("OPTIONS", f"{PREFIX}/{name}", self._preflight)
        for asset in ("page.js", "page.css", "icon.svg"):
            app.router.add_get(f"{PREFIX}/{asset}", self._asset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = split_listen(self.section.listen)
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if not self.public_url:
            bound = runner.addresses[0]
            shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            shown = f"[{shown}]" if ":" in shown else shown
            self.public_url = f"http://{shown}:{bound[1]}{PREFIX}/"
        self._cache.clear()
        log.info("web push: subscribe page at %s (listening on %s)", self.public_url, self.section.listen)

    @property
    def port(self) -> int:
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # pages and scripts

    def _page_config(self) -> dict[str, Any]:
        return {
            "publicKey": self.public_key,
            "language": self.section.language,
            "topics": [{"id": t.id, "label": t.label} for t in self.section.topics],
            "strings": self.strings,
        }

    def _render(self, name: str) -> bytes:
        if name not in self._cache:
            from jinja2 import Environment, FileSystemLoader, select_autoescape

            env = Environment(loader=FileSystemLoader(STATIC), autoescape=select_autoescape(["html"]))
            config_json = json.dumps(self._page_config(), ensure_ascii=False).replace("<", "\\u003c")
            text = env.get_template(name).render(
                s=self.strings, site_name=self.site_name, topics=self.section.topics,
                language=self.section.language, config_json=config_json)
            self._cache[name] = text.encode()
        return self._cache[name]

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        raise web.HTTPFound(PREFIX + "/")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.Response(body=self._render("page.html"), content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' https: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def _sw(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = static_file("sw.js")
        response = web.Response(body=body, content_type="text/javascript", charset="utf-8")
        response.headers["Cache-Control"] = "no-cache"  # browsers check the worker for updates
        return response

    async def _widget(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if "widget.js" not in self._cache:
            config = {"base": self.public_url, "publicKey": self.public_key,
                      "text": self.notify_text or self.strings["headline"],
                      "button": self.strings["button"], "close": self.strings["close"],
                      "error": self.strings["error_generic"], "done": self.strings["subscribed"]}
            script = static_file("widget.js").decode()
            script = script.replace("__SIAR_CONFIG__", json.dumps(config, ensure_ascii=False)
                                    .replace("<", "\\u003c"))
            self._cache["widget.js"] = script.encode()
        response = web.Response(body=self._cache["widget.js"], content_type="text/javascript",
                                charset="utf-8")
        response.headers["Cache-Control"] = "public, max-age=300"
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        name = request.path.rsplit("/", 1)[1]
        types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        response = web.Response(body=static_file(name),
                                content_type=types[name.rsplit(".", 1)[1]])
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    async def _vapid_public_key(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.Response(text=self.public_key, content_type="text/plain")
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _health(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        return web.json_response({"ok": True})

    # JSON endpoints

    def _client(self, request: web.Request) -> str:
        if self.section.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.split(",")[-1].strip()  # what our own proxy saw
        return request.remote or "?"

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        origin = normalize_origin(request.headers.get("Origin", ""))
        if origin and origin in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        origin = normalize_origin(request.headers.get("Origin", ""))
        if not origin or origin not in self.origins:
            return web.Response(status=403)
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        return self._cors(request, response)

    def _error(self, request: web.Request, status: int, message: str) -> web.StreamResponse:
        from aiohttp import web

        return self._cors(request, web.json_response({"ok": False, "error": message}, status=status))

    async def _checked_json(self, request: web.Request, max_bytes: int = 4096) -> Any:
        """The request's JSON after the origin, rate and size checks; InvalidRequest/_Refused."""
        origin = normalize_origin(request.headers.get("Origin", ""))
        if not origin or origin not in self.origins:
            raise _Refused(403, "origin not allowed")
        if not self.limiter.allow(self._client(request)):
            raise _Refused(429, "too many requests; try again in a minute")
        if request.content_type != "application/json":
            raise _Refused(415, "expected application/json")
        if request.content_length is not None and request.content_length > max_bytes:
            raise _Refused(413, f"request larger than {max_bytes} bytes")
        body = await request.content.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise _Refused(413, f"request larger than {max_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest("not valid JSON") from exc

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            data = await self._checked_json(request)
            sub = parse_subscription(data, [t.id for t in self.section.topics], self.section.push_hosts)
            replaces = data.get("replaces") if isinstance(data, dict) else None
            if replaces is not None and (not isinstance(replaces, str) or len(replaces) > 1024):
                raise InvalidRequest("replaces: expected the old endpoint URL")
            origin = normalize_origin(request.headers.get("Origin", "")) or ""
            new = await self.subs.save(sub, origin, self.section.max_subscriptions, replaces)
        except _Refused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        log.info("web push: %s subscription (%s)", "new" if new else "updated",
                 ", ".join(sub.topics) or "all topics")
        return self._cors(request, web.json_response({"ok": True, "topics": list(sub.topics)},
                                                     status=201 if new else 200))

    async def _unsubscribe(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            data = await self._checked_json(request)
            sub = data.get("subscription", data) if isinstance(data, dict) else None
            endpoint = sub.get("endpoint") if isinstance(sub, dict) else None
            if not isinstance(endpoint, str) or not 0 < len(endpoint) <= 1024:
                raise InvalidRequest("expected {\"endpoint\": URL}")
            removed = await self.subs.remove(endpoint)
        except _Refused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        return self._cors(request, web.json_response({"ok": True, "removed": removed}))

    async def _click(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            data = await self._checked_json(request, 2048)
            tag, url = (data.get("tag"), data.get("url")) if isinstance(data, dict) else (None, None)
            if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tag):
                raise InvalidRequest("tag: expected the notification tag")
            if not isinstance(url, str) or len(url) > 2000 or not url.startswith(("https://", "http://")):
                raise InvalidRequest("url: expected the story URL")
            await self.subs.record_click(tag, url)
        except _Refused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        return self._cors(request, web.json_response({"ok": True}))


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _security_headers_factory() -> Any:
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        return response

    return middleware


# --- the channel -----------------------------------------------------------------------------

SHARED_KEY = "webpush.server"
DEFAULT_TEMPLATE = "{% if lead %}{{ lead }}{% else %}{{ site }}{% endif %}"


@dataclass
class _Shared:
    """One HTTP server per process, however many webpush channels use it."""

    server: PushHttpServer | None = None
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WebPushChannel:
    """Pushes each story to the browsers whose subscription wants it."""

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        self.name = name
        self.type = "webpush"
        self.resumable = True  # per-subscription rows: a resumed row never pushes twice
        self.settings = settings
        self.context = context
        sections = getattr(context.config, "sections", None) or {}
        section = sections.get("webpush")
        # Without the section (e.g. `preview` of a disabled channel) it renders but cannot send.
        self.section = section if isinstance(section, WebPushSection) else None
        template = load_template_text(settings.template, DEFAULT_TEMPLATE, context.base_dir)
        self.renderer = PostRenderer(name, template, context, tag_settings=settings.hashtags)
        self.keys: VapidKeys | None = None
        self.key_problem = "" if self.section else "the webpush channel needs a [webpush] section"
        self._uses_server = False
        self.subs: SubscriptionStore | None = None
        self._session: ClientSession | None = None
        self._vapid_cache: dict[str, tuple[str, float]] = {}
        self._paused: dict[str, float] = {}  # push service origin -> monotonic time it accepts again

    # lifecycle

    async def start(self) -> None:
        import aiohttp

        if self.section is None:
            return
        try:
            self.keys = load_vapid(self.section, self.context.base_dir)
        except KeyError_ as exc:
            self.key_problem = str(exc)
            log.error("channel %s: %s", self.name, exc)
            await self.context.alert(self.name, self.key_problem)
            return
        if self.context.store is None:
            self.key_problem = "no store: web push needs the siar store for its subscriptions"
            return
        self.subs = SubscriptionStore(self.context.store, self.context.clock)
        ssl_context = _ssl_context(self.section, self.context.base_dir)
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency, ssl=ssl_context)
        self._session = aiohttp.ClientSession(connector=connector, headers={
            "User-Agent": self.context.user_agent})
        await self.subs.prune(self.subs.clock() - timedelta(days=7))
        await self._start_server()

    async def _start_server(self) -> None:
        shared: _Shared = self.context.shared.setdefault(SHARED_KEY, _Shared())
        async with shared.lock:
            shared.users += 1
            self._uses_server = True
            if shared.server is not None:
                return
            assert self.subs is not None and self.keys is not None and self.section is not None
            cta = self.context.cta
            site = self.context.site
            server = PushHttpServer(self.section, self.subs, self.keys.public,
                                    site_name=getattr(site, "name", ""),
                                    notify_text=getattr(cta, "notify_text", ""))
            try:
                await server.start()
            except OSError as exc:
                message = f"cannot listen on {self.section.listen}: {exc.strerror or exc}"
                log.error("web push: %s; the subscribe page is down, pushes still go out", message)
                await self.context.alert(self.name, message)
                return
            shared.server = server

    @property
    def server(self) -> PushHttpServer | None:
        shared: _Shared | None = self.context.shared.get(SHARED_KEY)
        return shared.server if shared else None

    async def close(self) -> None:
        shared: _Shared | None = self.context.shared.get(SHARED_KEY)
        if shared is not None and self._uses_server:
            self._uses_server = False
            async with shared.lock:
                shared.users -= 1
                if shared.users <= 0 and shared.server is not None:
                    await shared.server.stop()
                    shared.server = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # rendering

    def render(self, story: Story) -> Post:
        title = story.title
        if unit_count(title) and count_graphemes(title) > self.settings.title_limit:
            title = _shorten_to(title, self.settings.title_limit)
        extra: dict[str, Any] = {"title": title, "url": story.url, "image": story.image,
                                 "tag": story_tag(story)}
        if self.section and self.section.icon:
            extra["icon"] = self.section.icon
        if self.section and self.section.badge:
            extra["badge"] = self.section.badge

        def size(text: str) -> int:
            if count_graphemes(text) > self.settings.body_limit:
                return PAYLOAD_MAX + 1
            return len(payload_bytes(text, extra))

        text, used, values = self.renderer.fit(story, Budget("bytes", PAYLOAD_MAX, size))
        return Post(channel=self.name, type=self.type, story=story, text=text,
                    length=Length("bytes", used, PAYLOAD_MAX),
                    buttons=(Button(values["read_more"], story.url),) if story.url else (),
                    media=(story.image,) if story.image else (), extra=extra)

    # sending

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        if self.keys is None or self.subs is None or self._session is None or self.section is None:
            raise Permanent(self.key_problem or "the webpush channel was not started")
        subs = self.subs
        key = idempotency_key
        total = await subs.plan(key, post.story, self.section.topics)
        lost = await subs.abandon_in_flight(key)
        if lost:
            log.warning("channel %s: %d pushes of %s were in flight at a crash; not repeated",
                        self.name, lost, key)
        if total == 0:
            return Receipt(remote_id=key, note="no subscriber wants this story")
        data = payload_bytes(post.text, post.extra)
        topic = topic_header(self.name if self.settings.replace_unseen else str(post.extra.get("tag")))
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        after_id, deferred, attempted, rejected = 0, [], 0, 0
        while True:
            targets = await subs.claim(key, after_id, self.settings.batch_size)
            if not targets:
                break
            after_id = max(t.delivery_id for t in targets)

            async def one(target: Target) -> Outcome:
                async with semaphore:
                    return await self._deliver(target, data, topic)

            outcomes = await asyncio.gather(*(one(t) for t in targets))
            await subs.finish({t.delivery_id: o for t, o in zip(targets, outcomes, strict=True)},
                              {t.delivery_id: t.subscription_id for t in targets},
                              self.settings.max_failures)
            attempted += len(targets)
            rejected += sum(1 for o in outcomes if o.auth_rejected)
            deferred += [o for o in outcomes if o.status == "retry"]
        tally = await subs.tally(key)
        note = (f"pushed to {tally.get('sent', 0)} of {total} subscriptions"
                f"; {tally.get('gone', 0)} expired (removed); {tally.get('failed', 0)} failed"
                f"; {tally.get('uncertain', 0)} uncertain")
        if attempted and rejected == attempted:
            raise Permanent(f"every push service rejected our VAPID signature ({deferred[0].detail}); "
                            "check the VAPID key and webpush.contact, then `siar resend`")
        if tally.get("retry", 0):
            waits = [o.retry_after for o in deferred if o.retry_after is not None]
            reason = deferred[0].detail if deferred else "push service busy"
            raise RetryLater(f"{tally['retry']} of {total} pushes to retry ({reason}); {note}",
                             after=max(waits) if waits else None)
        log.info("channel %s: %s", self.name, note)
        return Receipt(remote_id=key, note=note)

    async def _deliver(self, target: Target, data: bytes, topic: str) -> Outcome:
        """One subscription: push, retrying quickly on 429/5xx/network errors when the wait is short."""
        origin = normalize_origin(target.endpoint) or target.endpoint
        outcome = Outcome("retry", detail="not tried")
        for attempt in range(self.settings.retries + 1):
            wait = self._paused.get(origin, 0.0) - time.monotonic()
            if wait > self.settings.max_retry_wait:
                return Outcome("retry", detail=f"{origin} asked us to wait", retry_after=wait)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                outcome = await self._push_once(target, data, topic, origin)
            except Exception as exc:  # a corrupt stored key, an encryption bug: this one only
                log.exception("channel %s: cannot push to subscription %d", self.name, target.subscription_id)
                return Outcome("failed", detail=f"cannot encrypt or send: {type(exc).__name__}")
            if outcome.status != "retry" or outcome.auth_rejected:
                return outcome
            if outcome.retry_after is not None and outcome.code == 429:
                self._paused[origin] = time.monotonic() + outcome.retry_after
            delay = outcome.retry_after if outcome.retry_after is not None else 0.5 * 2 ** attempt
            if attempt == self.settings.retries or delay > self.settings.max_retry_wait:
                break
            await asyncio.sleep(delay)
        return outcome

    def _vapid_header(self, audience: str) -> str:
        """The Authorization header for `audience`, signed once per hour per push service."""
        assert self.keys is not None
        cached = self._vapid_cache.get(audience)
        now = time.time()
        if cached is None or cached[1] - now < 11 * 3600:
            exp = int(now) + 12 * 3600
            contact = self.section.contact if self.section else ""
            header = self.keys.private.sign({"aud": audience, "exp": exp, "sub": contact})
            cached = (str(header["Authorization"]), float(exp))
            self._vapid_cache[audience] = cached
        return cached[0]

    async def _push_once(self, target: Target, data: bytes, topic: str, origin: str) -> Outcome:
        import aiohttp
        from pywebpush import WebPusher  # type: ignore[import-untyped, unused-ignore]

        assert self._session is not None
        info = {"endpoint": target.endpoint, "keys": {"p256dh": target.p256dh, "auth": target.auth}}
        body = WebPusher(info).encode(data, "aes128gcm")["body"]
        headers = {
            "Authorization": self._vapid_header(origin),
            "TTL": str(int(self.settings.ttl)),
            "Urgency": self.settings.urgency,
            "Topic": topic,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        try:
            async with self._session.post(target.endpoint, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                                          allow_redirects=False) as response:
                text = (await response.content.read(300)).decode("utf-8", "replace")
                return classify(response.status, response.headers.get("Retry-After"), text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome("retry", detail=f"network error: {type(exc).__name__}")


def _ssl_context(section: WebPushSection, base_dir: Path) -> ssl.SSLContext | bool:
    """TLS settings for push requests: the system CAs, plus `ca_file` when given."""
    if not section.ca_file:
        return True
    ca = Path(section.ca_file).expanduser()
    return ssl.create_default_context(cafile=str(ca if ca.is_absolute() else base_dir / ca))


def classify(status: int, retry_after: str | None, text: str = "") -> Outcome:
    """What a push service's answer means for one subscription (RFC 8030, RFC 8292)."""
    brief = " ".join(text.split())[:120]
    if status in (200, 201, 202):
        return Outcome("sent", status)
    if status in (404, 410):
        return Outcome("gone", status, f"{status}: subscription expired or unsubscribed")
    if status == 429 or status >= 500:
        return Outcome("retry", status, f"{status} {brief}".strip(), parse_retry_after(retry_after))
    if status in (401, 403):
        return Outcome("retry", status, f"{status}: VAPID rejected {brief}".strip(), auth_rejected=True)
    if status == 413:
        return Outcome("failed", status, "413: payload too large")
    return Outcome("failed", status, f"{status} {brief}".strip())


def payload_bytes(body: str, extra: dict[str, Any]) -> bytes:
    """The JSON the service worker receives: title, lead, url, image, tag (+ icon, badge)."""
    data = {"title": extra.get("title", ""), "lead": body, "url": extra.get("url", ""),
            "image": extra.get("image", ""), "tag": extra.get("tag", "")}
    for optional in ("icon", "badge"):
        if extra.get(optional):
            data[optional] = extra[optional]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _shorten_to(text: str, limit: int) -> str:
    lo, hi, best = 0, unit_count(text) - 1, ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = shorten(text, mid)
        if count_graphemes(candidate) <= limit:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> WebPushChannel:
    assert isinstance(settings, Settings)
    channel = WebPushChannel(name, settings, context)
    section = channel.section
    if section is not None and not section.vapid_private_key.get_secret_value().strip():
        path = key_file_path(section, context.base_dir)
        if not path.exists():  # like a missing secret: wait for it instead of failing every story
            raise ChannelUnavailable(f"no VAPID key yet ({path}); create it with `siar webpush init` "
                                     "or set webpush.vapid_private_key")
    return channel
