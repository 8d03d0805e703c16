"""`type = "bluesky"`: posts to one Bluesky (AT Protocol) account through its PDS.

Exactly once: the post's record key is derived from the outbox row and the story (a TID built
from the story's publication time plus a hash), so a retry after a timeout, a 5xx or a crash
writes the same key; the PDS refuses to create a record twice, and finding the record under that
key means the post is already out (AlreadyDone).

Session: createSession is limited (about 30 per 5 minutes, 300 a day), so the session is logged
in once, saved to a file (mode 0600, next to the SQLite store) on every create/refresh, reused
on restart and refreshed by the SDK; only a dead refresh token leads to a new login.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import SecretStr, field_validator

from bot import images
from bot.channel import (
    AlreadyDone,
    ChannelContext,
    ChannelError,
    ChannelSettings,
    Permanent,
    RetryLater,
    Unauthorized,
    payload_of,
)
from bot.counting import Budget, bluesky_facets, count_graphemes, graphemes, link_text
from bot.durations import Duration
from bot.http_retry import retry_after_seconds
from bot.kit import BaseChannel
from bot.registry import ChannelType, Plugin
from bot.render import RenderError
from bot.types import Digest, Facet, Length, Payload, Post, Published, Receipt, Story

AsyncClient = Any  # atproto.AsyncClient; the SDK has no type information


def _sdk() -> Any:
    """The atproto SDK, imported only when a Bluesky channel runs (a missing SDK disables only it)."""
    import atproto
    import atproto.exceptions

    return atproto


log = logging.getLogger("siar.bluesky")
T = TypeVar("T")

DEFAULT_TEMPLATE = """\
{% if breaking %}{{ breaking }} {% endif %}{{ title }}

{{ url }}

{{ hashtags }}
"""
POST_LIMIT = 300  # graphemes (app.bsky.feed.post text maxGraphemes)
THUMB_LIMIT = 1_000_000  # bytes (app.bsky.embed.external thumb maxSize)
THUMB_SIDE = 2000  # pixels; a card shows far less, and Bluesky's CDN resizes anyway
IMAGE_DOWNLOAD_LIMIT = 15_000_000
CARD_DESCRIPTION_LIMIT = 300  # graphemes; the card shows a few lines
COLLECTION = "app.bsky.feed.post"
LOGIN_BACKOFF = 600.0  # after a refused password, do not ask again for this many seconds
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


class Settings(ChannelSettings):
    type: str = "bluesky"
    service: str = "https://bsky.social"  # the account's PDS (or the entryway), or a local test PDS
    handle: str  # e.g. "medcom.bsky.social" (or the account's DID)
    app_password: SecretStr = SecretStr("")  # an app password, never the account password
    language: str | None = None  # BCP-47, e.g. "id"; default: the story's, else [site] language
    card: bool = True  # attach an external link card (title, description, thumbnail)
    session_file: str | None = None  # default: .bluesky-<channel>.session next to the store
    timeout: Duration = 20.0
    rate_limit: str = "20/min"
    secret_keys: ClassVar[tuple[str, ...]] = ("app_password",)

    @field_validator("service")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError('must be the PDS base URL, e.g. "https://bsky.social"')
        return value.removesuffix("/xrpc")

    @field_validator("handle")
    @classmethod
    def _no_at(cls, value: str) -> str:
        return value.strip().lstrip("@")


# --- pure helpers ----------------------------------------------------------------------------


def tid(value: int) -> str:
    """A 13-character AT Protocol TID for a 63-bit integer (base32-sortable, big-endian)."""
    value &= (1 << 63) - 1
    out = []
    for _ in range(13):
        out.append(_TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def record_key(idempotency_key: str, story: Story) -> str:
    """The post's record key: a TID whose time is the story's publication (to the second) and whose
    sub-second part and clock id come from a hash of the outbox row and the story, so it is the
    same on every attempt for one row and differs between rows."""
    digest = int.from_bytes(
        hashlib.sha256(f"{idempotency_key}\n{story.feed}\n{story.uid}".encode()).digest()[:8], "big"
    )
    published = story.published or datetime(2020, 1, 1, tzinfo=UTC)
    micros = int(published.timestamp()) * 1_000_000 + digest % 1_000_000
    micros = max(0, min(micros, (1 << 53) - 1))
    return tid((micros << 10) | ((digest >> 20) & 1023))


def post_language(language: str) -> str | None:
    """'id' / 'en-US' / 'pt_BR' as BCP-47; None when nothing usable."""
    code = language.strip().replace("_", "-")
    primary = code.split("-")[0]
    return code if primary.isalpha() and 2 <= len(primary) <= 3 else None


def _clip(text: str, limit: int) -> str:
    pieces = graphemes(text)
    return text if len(pieces) <= limit else "".join(pieces[: limit - 1]).rstrip() + "…"


def shrink_image(data: bytes, content_type: str, limit: int = THUMB_LIMIT) -> tuple[bytes, str]:
    """`data` itself when small enough and a web format, else a JPEG re-encoded (smaller and
    smaller) until it is within `limit` bytes. Raises ValueError (ImageRefused) when it cannot
    be done, or when the image has too many pixels to decode safely."""
    return images.shrink_image(data, content_type, max_bytes=limit, max_side=THUMB_SIDE)


# --- the channel -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkCard:
    uri: str
    title: str
    description: str
    image: str = ""


@dataclass(frozen=True)
class BlueskyPayload(Payload):
    langs: tuple[str, ...] = ()
    card: LinkCard | None = None


class BlueskyChannel(BaseChannel[Settings]):
    """One account, one session, kept across restarts in `session_path`. Resumable:
    deterministic record keys make a resend unable to create a second post."""

    TYPE = "bluesky"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    RESUMABLE = True
    CAN_DELETE = True  # com.atproto.repo.deleteRecord; a Bluesky post cannot be edited

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self.session_path = self._session_path()
        self.logins = 0  # createSession calls made by this channel (tests and logs)
        self._client: AsyncClient | None = None
        self._login_refused_at: float | None = None
        self._lock = asyncio.Lock()

    def _session_path(self) -> Path:
        if self.settings.session_file:
            return self.context.resolve_path(self.settings.session_file)
        database = self.context.database
        folder = database.sqlite_path.parent if database and database.sqlite_path else self.context.base_dir
        return folder / f".bluesky-{self.name}.session"

    # --- rendering ---------------------------------------------------------------------------

    def render(self, story: Story) -> Post:
        """The post: the link shown short (host and path start, as Bluesky's app shows links:
        a 300-character Google News link would not fit) with a facet carrying the full URL."""
        budget = Budget("graphemes", POST_LIMIT, count_graphemes)
        shown = link_text(story.url) if story.url else ""
        text, used, _ = self.renderer.fit(story, budget, optional_cta=True, overrides={"url": shown})
        language = post_language(self.settings.language or story.language or self.context.site.language)
        card = None
        if self.settings.card and story.url:
            card = LinkCard(
                story.url,
                _clip(story.title, CARD_DESCRIPTION_LIMIT),
                _clip(story.lead, CARD_DESCRIPTION_LIMIT),
                story.image,
            )
        facets = bluesky_facets(text, [story.url], {shown: story.url} if shown else None)
        return self.post(
            story,
            text,
            Length(budget.unit, used, budget.limit),
            facets=tuple(facets),
            payload=BlueskyPayload((language,) if language else (), card),
        )

    # --- lifecycle and session ---------------------------------------------------------------

    def _new_client(self) -> AsyncClient:
        sdk = _sdk()
        request = sdk.AsyncRequest(timeout=self.settings.timeout)
        client = sdk.AsyncClient(self.settings.service, request=request)
        client.on_session_change(self._save_session)
        return client

    async def start(self) -> None:
        """Create the client and import a saved session; no network call (login happens lazily)."""
        self._client = self._new_client()
        saved = self._read_saved_session()
        if saved:
            try:
                await self._client.login(session_string=saved, fetch_bsky_profile=False)
                log.info("channel %s: reusing the saved Bluesky session", self.name)
            except Exception as exc:  # a corrupt file must not stop the daemon; log in instead
                log.warning(
                    "channel %s: saved session unusable (%s); will log in", self.name, type(exc).__name__
                )
                self._client = self._new_client()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.request.close()
            self._client = None

    def _read_saved_session(self) -> str | None:
        try:
            data = json.loads(self.session_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (
            not isinstance(data, dict)
            or data.get("service") != self.settings.service
            or str(data.get("handle", "")).lower() != self.settings.handle.lower()
        ):
            return None  # the config now names another account or server
        session = data.get("session")
        return session if isinstance(session, str) and session else None

    async def _save_session(self, event: Any, session: Any) -> None:
        """Persist the session string on create/refresh (0600; it holds the account's tokens)."""
        if getattr(event, "value", event) == "import":
            return
        text = json.dumps(
            {"service": self.settings.service, "handle": self.settings.handle, "session": session.export()}
        )
        tmp = self.session_path.with_name(self.session_path.name + ".tmp")
        try:
            self.session_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.session_path)
        except OSError as exc:
            log.warning(
                "channel %s: cannot save the Bluesky session to %s (%s)",
                self.name,
                self.session_path,
                exc.strerror,
            )

    def _has_session(self) -> bool:
        return self._client is not None and getattr(self._client, "_session", None) is not None

    async def _login(self) -> None:
        """createSession with the app password; errors mapped to ChannelError."""
        at = _sdk().exceptions

        if self._login_refused_at is not None and time.monotonic() - self._login_refused_at < LOGIN_BACKOFF:
            raise Unauthorized("Bluesky refused the handle/app password recently; fix app_password")
        if self._client is None:
            self._client = self._new_client()
        self.logins += 1
        log.info("channel %s: logging in to %s as %s", self.name, self.settings.service, self.settings.handle)
        try:
            await self._client.login(
                self.settings.handle, self.settings.app_password.get_secret_value(), fetch_bsky_profile=False
            )
        except at.RateLimitExceededError as exc:
            raise RetryLater("createSession is rate limited", after=self._after(exc)) from None
        except (at.UnauthorizedError, at.BadRequestError) as exc:
            self._login_refused_at = time.monotonic()
            raise Unauthorized(
                f"Bluesky refused the login ({_xrpc_error(exc)}); check handle and app_password"
            ) from None
        except at.NetworkError as exc:
            raise RetryLater(f"cannot reach {self.settings.service} ({_xrpc_error(exc)})") from None
        except at.RequestException as exc:
            raise RetryLater(f"login failed ({_xrpc_error(exc)})") from None
        self._login_refused_at = None

    async def _authed(self, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Run `call` with a session; on a dead token refresh (or log in again) and run it once more."""
        at = _sdk().exceptions

        async with self._lock:
            if not self._has_session():
                await self._login()
        assert self._client is not None
        try:
            return await call(self._client)
        except (at.UnauthorizedError, at.BadRequestError, at.LoginRequiredError) as exc:
            if not _token_problem(exc):
                raise
            log.info("channel %s: session token refused (%s); renewing it", self.name, _xrpc_error(exc))
        async with self._lock:
            try:
                await self._client._refresh_and_set_session()
            except Exception:
                await self._login()
        return await call(self._client)

    # --- sending -----------------------------------------------------------------------------

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        sdk = _sdk()
        at, models = sdk.exceptions, sdk.models

        if self._client is None:
            await self.start()
        rkey = record_key(idempotency_key, post.story)
        payload = payload_of(post, BlueskyPayload)
        embed = await self._card(payload.card, post.story)
        now = self.now()
        record = models.AppBskyFeedPost.Record(
            text=post.text,
            created_at=now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            langs=list(payload.langs) or None,
            facets=[_facet_model(f) for f in post.facets] or None,
            embed=embed,
        )

        async def create(client: AsyncClient) -> Any:
            assert client._session is not None
            data = models.ComAtprotoRepoCreateRecord.Data(
                repo=client._session.did, collection=COLLECTION, record=record, rkey=rkey
            )
            return await client.com.atproto.repo.create_record(data)

        try:
            created = await self._authed(create)
        except at.RateLimitExceededError as exc:
            raise RetryLater("rate limited by the PDS", after=self._after(exc)) from None
        except (at.UnauthorizedError, at.LoginRequiredError) as exc:
            raise Unauthorized(f"Bluesky refused the post ({_xrpc_error(exc)})") from None
        except at.AtProtocolError as exc:
            # the record may exist: an earlier attempt of this row, or this one before a 5xx/timeout
            if await self._exists(rkey):
                raise AlreadyDone(f"already posted (record {rkey} exists)") from None
            if isinstance(exc, at.NetworkError) or _status(exc) >= 500:
                raise RetryLater(f"PDS error ({_xrpc_error(exc)})") from None
            raise Permanent(f"the PDS rejected the post ({_xrpc_error(exc)})") from None
        except ChannelError:
            raise
        except Exception as exc:
            # The connection broke after the request went out, or the answer was unreadable: the
            # record may exist. Its key is fixed per row, so looking it up (and a later
            # createRecord, which the PDS refuses for an existing key) can never post twice.
            if await self._exists(rkey):
                raise AlreadyDone(f"already posted (record {rkey} exists)") from None
            raise RetryLater(f"no usable answer from the PDS ({type(exc).__name__}: {exc})") from None
        return Receipt(remote_id=str(created.uri), url=self._web_url(rkey))

    # --- editorial actions --------------------------------------------------------------------

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        raise Permanent("Bluesky posts cannot be edited; the correction is not shown on Bluesky")

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """com.atproto.repo.deleteRecord of the post's record key; a record the repository no
        longer has is AlreadyDone (deleteRecord itself would quietly succeed)."""
        sdk = _sdk()
        at, models = sdk.exceptions, sdk.models
        did, rkey = post_uri_parts(published.remote_id)
        if self._client is None:
            await self.start()

        async def remove(client: AsyncClient) -> bool:
            assert client._session is not None
            if client._session.did != did:
                raise Permanent(f"{published.remote_id} belongs to another account ({did})")
            try:
                await client.com.atproto.repo.get_record(
                    models.ComAtprotoRepoGetRecord.Params(repo=did, collection=COLLECTION, rkey=rkey)
                )
            except at.BadRequestError as exc:
                if _xrpc_field(exc, "error") == "RecordNotFound":
                    return False
                raise
            await client.com.atproto.repo.delete_record(
                models.ComAtprotoRepoDeleteRecord.Data(repo=did, collection=COLLECTION, rkey=rkey)
            )
            return True

        try:
            deleted = await self._authed(remove)
        except at.RateLimitExceededError as exc:
            raise RetryLater("rate limited by the PDS", after=self._after(exc)) from None
        except (at.UnauthorizedError, at.LoginRequiredError) as exc:
            raise Unauthorized(f"Bluesky refused the deletion ({_xrpc_error(exc)})") from None
        except at.AtProtocolError as exc:  # deleting again is harmless: network and 5xx retry
            if isinstance(exc, at.NetworkError) or _status(exc) >= 500:
                raise RetryLater(f"PDS error ({_xrpc_error(exc)})") from None
            raise Permanent(f"the PDS refused the deletion ({_xrpc_error(exc)})") from None
        if not deleted:
            raise AlreadyDone(f"record {rkey} is gone from the repository already")
        return Receipt(remote_id=published.remote_id, url=published.url, note="deleted")

    def render_digest(self, digest: Digest) -> Post:
        """One post with the top stories that fit 300 graphemes, each title a link facet to its
        story (shown links would all shorten to the same "medcom.id/…")."""
        budget = Budget("graphemes", POST_LIMIT, count_graphemes)
        stories = list(digest.stories)
        for keep in range(len(stories), 0, -1):
            text, facets = digest.title.strip(), []
            for story in stories[:keep]:
                text += "\n• "
                start = len(text.encode("utf-8"))
                text += " ".join(story.title.split())
                if story.url:
                    facets.append(Facet(start, len(text.encode("utf-8")), "link", story.url))
            more = digest.more + len(stories) - keep
            if more:
                text += f"\n… +{more}"
            if count_graphemes(text) <= POST_LIMIT:
                language = post_language(self.settings.language or self.context.site.language)
                return self.post(
                    stories[0],
                    text,
                    Length(budget.unit, count_graphemes(text), budget.limit),
                    facets=tuple(facets),
                    payload=BlueskyPayload((language,) if language else ()),
                    digest=dataclasses.replace(digest, stories=tuple(stories[:keep]), more=more),
                )
        raise RenderError(f"channel {self.name!r}: not even one story fits the digest post")

    def _web_url(self, rkey: str) -> str:
        return f"https://bsky.app/profile/{self.settings.handle}/post/{rkey}"

    async def _exists(self, rkey: str) -> bool:
        models = _sdk().models

        async def get(client: AsyncClient) -> Any:
            assert client._session is not None
            return await client.com.atproto.repo.get_record(
                models.ComAtprotoRepoGetRecord.Params(
                    repo=client._session.did, collection=COLLECTION, rkey=rkey
                )
            )

        try:
            await self._authed(get)
            return True
        except Exception:
            return False

    def _after(self, exc: Any) -> float | None:
        """Seconds until the PDS's rate-limit window resets (ratelimit-reset, else retry-after)."""
        reset = getattr(exc, "reset_at", None)
        if isinstance(reset, datetime):
            return retry_after_seconds((reset - self.now()).total_seconds())
        return retry_after_seconds(getattr(exc, "retry_after", None))

    # --- link card ---------------------------------------------------------------------------

    async def _card(self, card: LinkCard | None, story: Story) -> Any:
        """The external embed for the post's card; the thumbnail is best effort, never fatal."""
        models = _sdk().models

        if card is None:
            return None
        thumb = await self._thumb(card.image, story) if card.image else None
        return models.AppBskyEmbedExternal.Main(
            external=models.AppBskyEmbedExternal.External(
                uri=card.uri, title=card.title, description=card.description, thumb=thumb
            )
        )

    async def _thumb(self, url: str, story: Story) -> Any:
        try:
            data, content_type = await self._download(url, story)
            data, content_type = await asyncio.to_thread(shrink_image, data, content_type)

            async def upload(client: AsyncClient) -> Any:
                return await client.upload_blob(data)

            return (await self._authed(upload)).blob
        except (ValueError, httpx.HTTPError, RetryLater, Permanent) as exc:
            log.warning("channel %s: card without thumbnail (%s: %s)", self.name, url, _reason(exc))
        except Exception as exc:  # an SDK error uploading the blob must not cost the post
            log.warning("channel %s: card without thumbnail (%s: %s)", self.name, url, type(exc).__name__)
        return None

    async def _download(self, url: str, story: Story) -> tuple[bytes, str]:
        """The image, fetched without any Bluesky credentials through the story's feed's address
        guard; ValueError (ImageRefused) or httpx.HTTPError (BlockedAddress among them) on failure."""
        async with self.http_client(guard=self.guard(story), follow_redirects=True) as client:
            image = await images.fetch_image(client, url, max_bytes=IMAGE_DOWNLOAD_LIMIT)
        return image.data, image.content_type


def _facet_model(facet: Facet) -> Any:
    models = _sdk().models

    feature: Any
    if facet.kind == "link":
        feature = models.AppBskyRichtextFacet.Link(uri=facet.value)
    elif facet.kind == "tag":
        feature = models.AppBskyRichtextFacet.Tag(tag=facet.value)
    else:
        feature = models.AppBskyRichtextFacet.Mention(did=facet.value)
    return models.AppBskyRichtextFacet.Main(
        features=[feature],
        index=models.AppBskyRichtextFacet.ByteSlice(byte_start=facet.start, byte_end=facet.end),
    )


def post_uri_parts(uri: str) -> tuple[str, str]:
    """(did, record key) of "at://DID/app.bsky.feed.post/RKEY"; Permanent for anything else."""
    parts = uri.split("/")
    if len(parts) != 5 or parts[:2] != ["at:", ""] or parts[3] != COLLECTION or not parts[4]:
        raise Permanent(f"{uri!r} is not a Bluesky post this channel stored")
    return parts[2], parts[4]


def _status(exc: Any) -> int:
    response = getattr(exc, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def _xrpc_field(exc: Any, key: str) -> str:
    """A field ("error", "message") of the XRPC error body behind an SDK error, or ""."""
    content = getattr(getattr(exc, "response", None), "content", None)
    value = getattr(content, key, None) or (content.get(key) if isinstance(content, dict) else None)
    return str(value or "")


def _xrpc_error(exc: Any) -> str:
    """'400 InvalidRequest: message' from an SDK error, without request data or tokens."""
    response = getattr(exc, "response", None)
    if response is None:
        return type(exc).__name__
    name, message = _xrpc_field(exc, "error"), _xrpc_field(exc, "message")
    return f"{response.status_code} {name}{': ' + message[:200] if message else ''}".strip()


# XRPC error names meaning our session tokens are stale (not that the request is wrong).
STALE_SESSION = frozenset({"ExpiredToken", "InvalidToken", "AuthMissing", "AuthenticationRequired"})


def _token_problem(exc: Any) -> bool:
    """True when the error says our session tokens are stale, not that the request is wrong."""
    if isinstance(exc, _sdk().exceptions.LoginRequiredError):
        return True
    return _xrpc_field(exc, "error") in STALE_SESSION


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or exc or type(exc).__name__)


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> BlueskyChannel:
    assert isinstance(settings, Settings)
    return BlueskyChannel(name, settings, context)


PLUGIN = Plugin("bluesky", (ChannelType("bluesky", Settings, create),))
