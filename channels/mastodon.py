"""`type = "mastodon"`: posts a status to one account on a Mastodon instance.

httpx rather than Mastodon.py: the daemon is asyncio and Mastodon.py is synchronous (requests),
so every call would need a thread; httpx is already a dependency, and talking to the four
endpoints we use directly lets us map every status code and rate-limit header ourselves.

Exactly once: every status carries an `Idempotency-Key` derived from the outbox row (and the
story), so a retry after a timeout, a 5xx or a crash returns the status the first attempt made
instead of posting again. Mastodon keeps idempotency keys for one hour only, so an ambiguous
failure older than that is reported as Uncertain instead of being retried blindly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import httpx
from pydantic import SecretStr, field_validator

from bot.channel import (
    AlreadyDone,
    ChannelContext,
    ChannelSettings,
    Permanent,
    RetryLater,
    Unauthorized,
    Uncertain,
    payload_of,
)
from bot.counting import Budget, count_graphemes, count_mastodon, graphemes
from bot.durations import Duration
from bot.http_retry import request_may_have_left, retry_after_seconds
from bot.images import fetch_image
from bot.kit import BaseChannel
from bot.registry import ChannelType, Plugin
from bot.render import defuse_mentions
from bot.types import Digest, Length, Payload, Post, Published, Receipt, Story

log = logging.getLogger("siar.mastodon")

# The short call to action only when title, lead and hashtags fit first (see PostRenderer.fit).
DEFAULT_TEMPLATE = """\
{% if breaking %}{{ breaking }} {% endif %}{{ title }}

{{ lead }}

{{ url }}

{{ hashtags }}
{% if cta_follow %}

{{ cta_follow }}
{% endif %}
"""
DEFAULT_MAX_CHARACTERS = 500
DEFAULT_URL_LENGTH = 23
DEFAULT_IMAGE_LIMIT = 16 * 1024 * 1024
ALT_TEXT_LIMIT = 1500  # Mastodon's media description limit
IDEMPOTENCY_WINDOW = 55 * 60.0  # Mastodon forgets an Idempotency-Key after one hour


class Settings(ChannelSettings):
    type: str = "mastodon"
    instance: str  # base URL of the instance (or a local fake / proxy), e.g. https://mastodon.social
    access_token: SecretStr = SecretStr("")  # needs the write:statuses (and write:media) scope
    visibility: Literal["public", "unlisted", "private", "direct"] = "public"
    language: str | None = None  # ISO 639 code; default: the story's language, else [site] language
    upload_image: bool = False  # attach the story image (with alt text) instead of relying on the card
    sensitive: bool = False
    spoiler_text: str = ""  # content warning; counts toward the instance's character limit
    timeout: Duration = 20.0  # per request
    secret_keys: ClassVar[tuple[str, ...]] = ("access_token",)

    @field_validator("instance")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError('must be the instance\'s base URL, e.g. "https://mastodon.social"')
        return value


class InstanceLimits:
    """The instance's status rules, read once from /api/v2/instance (or v1) and then cached."""

    def __init__(
        self,
        max_characters: int = DEFAULT_MAX_CHARACTERS,
        url_length: int = DEFAULT_URL_LENGTH,
        image_size_limit: int = DEFAULT_IMAGE_LIMIT,
        loaded: bool = False,
    ) -> None:
        self.max_characters = max_characters
        self.url_length = url_length
        self.image_size_limit = image_size_limit
        self.loaded = loaded

    @classmethod
    def from_instance(cls, data: dict[str, Any]) -> InstanceLimits | None:
        """Limits from an instance document, None when it carries none (old or odd servers)."""
        config = _table(data, "configuration")
        statuses, media = _table(config, "statuses"), _table(config, "media_attachments")
        chars = statuses.get("max_characters", data.get("max_toot_chars"))  # max_toot_chars: Pleroma/glitch
        if not isinstance(chars, int) or chars <= 0:
            return None
        url_length = statuses.get("characters_reserved_per_url")
        image = media.get("image_size_limit")
        return cls(
            chars,
            url_length if isinstance(url_length, int) and url_length > 0 else DEFAULT_URL_LENGTH,
            image if isinstance(image, int) and image > 0 else DEFAULT_IMAGE_LIMIT,
            loaded=True,
        )


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def status_language(language: str) -> str | None:
    """'en-US' -> 'en': Mastodon wants an ISO 639 code; None when there is nothing usable."""
    code = language.strip().replace("_", "-").split("-")[0].lower()
    return code if code.isalpha() and 2 <= len(code) <= 3 else None


def outgoing_key(idempotency_key: str, story: Story) -> str:
    """The Idempotency-Key header: the outbox key plus the story, so a fresh store can never
    collide with a key a previous store used for another story within Mastodon's hour."""
    digest = hashlib.sha256(f"{story.feed}\n{story.uid}".encode()).hexdigest()[:16]
    return f"{idempotency_key}-{digest}"


@dataclass(frozen=True)
class MastodonPayload(Payload):
    visibility: str = "public"
    language: str | None = None
    spoiler_text: str = ""
    image_alt: str = ""


class MastodonChannel(BaseChannel[Settings]):
    """One account on one instance. Resumable: the Idempotency-Key makes a resend return the
    first status — for an hour; a row interrupted longer ago is marked uncertain, not resent."""

    TYPE = "mastodon"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    CAN_EDIT = True  # PUT /api/v1/statuses/:id
    CAN_DELETE = True  # DELETE /api/v1/statuses/:id
    RESUMABLE = True
    RESUME_WINDOW = IDEMPOTENCY_WINDOW

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self.limits = context.shared.get(
            f"mastodon-limits:{settings.instance}", InstanceLimits, InstanceLimits
        )
        self._client: httpx.AsyncClient | None = None
        self._ambiguous: dict[str, float] = {}  # key -> monotonic time of its first ambiguous failure

    # --- lifecycle ---------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self.http_client(base_url=self.settings.instance)
        return self._client

    async def start(self) -> None:
        await self._load_limits()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _load_limits(self) -> None:
        """Read the instance's limits once (v2, then v1); keep the defaults when neither answers."""
        if self.limits.loaded:
            return
        for path in ("/api/v2/instance", "/api/v1/instance"):
            try:
                response = await self._http().get(path)
                data = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                continue
            found = InstanceLimits.from_instance(data) if isinstance(data, dict) else None
            if found is not None:
                self.limits.__dict__.update(found.__dict__)
                log.info(
                    "channel %s: instance allows %d characters (URLs count %d)",
                    self.name,
                    found.max_characters,
                    found.url_length,
                )
                return
        log.warning(
            "channel %s: cannot read the instance's limits; using %d characters",
            self.name,
            self.limits.max_characters,
        )

    # --- rendering ---------------------------------------------------------------------------

    def budget(self) -> Budget:
        """The instance's character rule, minus the content warning (Mastodon counts both)."""
        url_length = self.limits.url_length
        limit = self.limits.max_characters - count_graphemes(self.settings.spoiler_text)

        def count(text: str) -> int:
            return count_mastodon(text, url_length)

        return Budget("graphemes", limit, count)

    def render(self, story: Story) -> Post:
        budget = self.budget()
        # `@user@instance` in a title would notify that account: feed text never mentions anyone.
        shown = dataclasses.replace(
            story, title=defuse_mentions(story.title), lead=defuse_mentions(story.lead)
        )
        text, used, _ = self.renderer.fit(shown, budget, optional_cta=True)
        language = status_language(self.settings.language or story.language or self.context.site.language)
        upload = self.settings.upload_image and bool(story.image)
        alt = "".join(graphemes(story.image_alt or story.title)[:ALT_TEXT_LIMIT]) if upload else ""
        payload = MastodonPayload(self.settings.visibility, language, self.settings.spoiler_text, alt)
        return self.post(
            story,
            text,
            Length(budget.unit, used, budget.limit),
            media=(story.image,) if upload else (),
            payload=payload,
        )

    def digest_budget(self) -> Budget:
        return self.budget()  # the instance's limit, Mastodon's counting (URLs 23)

    def render_digest(self, digest: Digest) -> Post:
        """One status with the top stories that fit the instance's limit."""
        post = super().render_digest(digest)
        language = status_language(self.settings.language or self.context.site.language)
        payload = MastodonPayload(self.settings.visibility, language, self.settings.spoiler_text)
        return dataclasses.replace(post, payload=payload, digest=post.digest or digest)

    # --- sending -----------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.access_token.get_secret_value()}"}

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        key = outgoing_key(idempotency_key, post.story)
        first_failure = self._ambiguous.get(key)
        if first_failure is not None and time.monotonic() - first_failure > IDEMPOTENCY_WINDOW:
            raise Uncertain(
                "an earlier attempt may have posted it and the instance's one-hour "
                "Idempotency-Key window has passed"
            )
        await self._load_limits()
        payload = payload_of(post, MastodonPayload)
        body: dict[str, Any] = {"status": post.text, "visibility": payload.visibility}
        if payload.language:
            body["language"] = payload.language
        if payload.spoiler_text:
            body["spoiler_text"] = payload.spoiler_text
        if self.settings.sensitive:
            body["sensitive"] = True
        if post.media:
            media_id = await self._upload_image(post.media[0], payload.image_alt, post.story)
            if media_id:
                body["media_ids"] = [media_id]
        try:
            response = await self._http().post(
                "/api/v1/statuses", json=body, headers={**self._auth(), "Idempotency-Key": key}
            )
        except httpx.HTTPError as exc:
            if request_may_have_left(exc):  # the key covers a resend only within the hour
                self._ambiguous.setdefault(key, time.monotonic())
            raise RetryLater(f"network error: {type(exc).__name__}") from None
        if response.status_code in (200, 201):
            self._ambiguous.pop(key, None)
            data = _json(response)
            url = data.get("url") or data.get("uri") or ""
            return Receipt(remote_id=str(data.get("id", "")), url=str(url))
        if response.status_code >= 500:
            self._ambiguous.setdefault(key, time.monotonic())
        raise self._error(response, "posting")

    # --- editorial actions --------------------------------------------------------------------

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        """PUT /api/v1/statuses/:id with the corrected text (the attachments stay). AlreadyDone
        when the status already reads so (its source, GET …/source, is compared first: an edit
        Mastodon shows as "edited" is made only when something changed)."""
        status_id = _status_id(published)
        payload = payload_of(post, MastodonPayload)
        source = await self._request("GET", f"/api/v1/statuses/{status_id}/source", "reading the status")
        if source.status_code == 404:
            raise Permanent(f"status {status_id} is gone (deleted by hand?); nothing to edit")
        if source.status_code != 200:
            raise self._error(source, "reading the status")
        current = _json(source)
        if current.get("text") == post.text and current.get("spoiler_text", "") == payload.spoiler_text:
            raise AlreadyDone("the status already reads like the corrected story")
        body: dict[str, Any] = {"status": post.text, "spoiler_text": payload.spoiler_text}
        if payload.language:
            body["language"] = payload.language
        if self.settings.sensitive:
            body["sensitive"] = True
        media = await self._media_ids(status_id)
        if media:
            body["media_ids"] = media  # PUT without media_ids would drop the attachments
        key = outgoing_key(idempotency_key, post.story)
        response = await self._request(
            "PUT", f"/api/v1/statuses/{status_id}", "editing", json=body, headers={"Idempotency-Key": key}
        )
        if response.status_code == 404:
            raise Permanent(f"status {status_id} is gone from the instance; nothing to edit")
        if response.status_code != 200:
            raise self._error(response, "editing")
        data = _json(response)
        return Receipt(remote_id=status_id, url=str(data.get("url") or published.url), note="edited")

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """DELETE /api/v1/statuses/:id; 404 (gone already) is AlreadyDone."""
        status_id = _status_id(published)
        response = await self._request("DELETE", f"/api/v1/statuses/{status_id}", "deleting")
        if response.status_code == 404:
            raise AlreadyDone(f"status {status_id} is gone from the instance already")
        if response.status_code != 200:
            raise self._error(response, "deleting")
        return Receipt(remote_id=status_id, url=published.url, note="deleted")

    async def _media_ids(self, status_id: str) -> list[str]:
        response = await self._request("GET", f"/api/v1/statuses/{status_id}", "reading the status")
        if response.status_code != 200:
            raise self._error(response, "reading the status")
        attachments = _json(response).get("media_attachments")
        return [str(m["id"]) for m in attachments or [] if isinstance(m, dict) and m.get("id")]

    async def _request(self, method: str, path: str, doing: str, **kwargs: Any) -> httpx.Response:
        """One authenticated request; a network failure is RetryLater (edits, deletions and
        reads are safe to repeat)."""
        headers = {**self._auth(), **kwargs.pop("headers", {})}
        try:
            return await self._http().request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise RetryLater(f"network error while {doing}: {type(exc).__name__}") from None

    def _error(self, response: httpx.Response, doing: str) -> Exception:
        """The ChannelError for a failed answer (never containing the token)."""
        status = response.status_code
        text = _error_text(response)
        if status == 429:
            return RetryLater(
                f"rate limited by the instance while {doing}", after=self._retry_after(response)
            )
        if status >= 500 or status == 408:
            return RetryLater(f"instance error {status} while {doing}{': ' + text if text else ''}")
        if status in (401, 403):
            return Unauthorized(
                f"the access token was refused ({status}{': ' + text if text else ''}); "
                "check access_token and its write:statuses scope"
            )
        if status == 422:
            return Permanent(f"the instance rejected the status: {text or 'unprocessable'}")
        if status == 409:
            # the same Idempotency-Key is still being processed by the instance
            return RetryLater(f"the instance is still processing this post (409) while {doing}", after=5)
        return Permanent(f"unexpected answer {status} while {doing}{': ' + text if text else ''}")

    def _retry_after(self, response: httpx.Response) -> float | None:
        """Seconds until the instance's rate-limit window resets (X-RateLimit-Reset, an ISO
        time), else its Retry-After; capped like every wait."""
        now = self.now()
        reset = response.headers.get("X-RateLimit-Reset")
        if reset:
            try:
                when = datetime.fromisoformat(reset.strip())
                when = when if when.tzinfo else when.replace(tzinfo=UTC)
                return retry_after_seconds((when - now).total_seconds())
            except ValueError:
                pass
        return retry_after_seconds(response.headers.get("Retry-After"), now)

    async def _upload_image(self, url: str, alt: str, story: Story) -> str | None:
        """Upload the story image and return its media id; None (post without it) on any failure."""
        image = await self._fetch_image(url, story)
        if image is None:
            return None
        data, content_type = image
        filename = url.rsplit("/", 1)[-1].split("?")[0] or "image"
        try:
            response = await self._http().post(
                "/api/v2/media",
                headers=self._auth(),
                files={"file": (filename, data, content_type)},
                data={"description": alt},
            )
            if response.status_code not in (200, 202):
                log.warning(
                    "channel %s: image upload refused (%d: %s); posting without it",
                    self.name,
                    response.status_code,
                    _error_text(response),
                )
                return None
            media = _json(response)
            media_id = str(media.get("id", ""))
            if response.status_code == 202 and not await self._wait_processed(media_id):
                log.warning("channel %s: image still processing; posting without it", self.name)
                return None
            return media_id or None
        except httpx.HTTPError as exc:
            log.warning(
                "channel %s: image upload failed (%s); posting without it", self.name, type(exc).__name__
            )
            return None

    async def _wait_processed(self, media_id: str, tries: int = 10) -> bool:
        """Mastodon answers 202 for media still processing; a status cannot attach it until then."""
        for attempt in range(tries):
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
            response = await self._http().get(f"/api/v1/media/{media_id}", headers=self._auth())
            if response.status_code == 200 and _json(response).get("url"):
                return True
            if response.status_code not in (200, 206):
                return False
        return False

    async def _fetch_image(self, url: str, story: Story) -> tuple[bytes, str] | None:
        """The image's bytes and sniffed type, fetched WITHOUT the instance's credentials through
        the story's feed's address guard; None on failure."""
        try:
            async with self.http_client(guard=self.guard(story), follow_redirects=True) as client:
                image = await fetch_image(client, url, max_bytes=self.limits.image_size_limit)
            return image.data, image.content_type
        except (httpx.HTTPError, ValueError) as exc:  # ImageRefused is a ValueError
            log.warning("channel %s: cannot fetch image %s (%s); posting without it", self.name, url, exc)
            return None


def _status_id(published: Published) -> str:
    if not published.remote_id.isdigit():
        raise Permanent(f"{published.remote_id!r} is not a Mastodon status id this channel stored")
    return published.remote_id


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_text(response: httpx.Response) -> str:
    """The instance's own error message (Mastodon: {"error": "..."}), shortened."""
    data = _json(response)
    text = data.get("error") or data.get("error_description") or ""
    if not text and not response.headers.get("content-type", "").startswith("application/json"):
        text = response.text.strip()
    return str(text)[:300]


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> MastodonChannel:
    assert isinstance(settings, Settings)
    return MastodonChannel(name, settings, context)


PLUGIN = Plugin("mastodon", (ChannelType("mastodon", Settings, create),))
