"""`type = "discord"`: posts an embed through a channel webhook (httpx, `?wait=true`).

The story goes in one embed (title linked to the story, the lead as description, the image, a
footer with the site and the story's time as the embed timestamp, the configured colour); the
message content is the channel's template (by default the site's calls to action). Mentions are
never parsed (`allowed_mentions: {"parse": []}`), so feed text can never ping anyone.

Discord counts limits in Unicode code points (its API measures Python `len`): content 2000, embed
title 256, description 4096, footer 2048, author 256, and the sum of those fields 6000. Webhooks
accept no idempotency key (Discord's `enforce_nonce` is for bot messages only), so an answer lost
after the request left makes the post uncertain rather than risking a second copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import Field, SecretStr, field_validator

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
from bot.counting import Budget
from bot.durations import Duration
from bot.http_retry import request_may_have_left, retry_after_seconds
from bot.kit import BaseChannel
from bot.registry import ChannelType, Plugin
from bot.render import RenderError, shorten, unit_count
from bot.types import Digest, Length, Payload, Post, Published, Receipt, Story

CONTENT_MAX = 2000
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FOOTER_MAX = 2048
AUTHOR_MAX = 256
EMBED_TOTAL_MAX = 6000
# Masked links in <> so Discord adds no link previews of its own under the story's embed.
DEFAULT_TEMPLATE = """\
{% if cta_follow %}
{{ cta_follow }}{% for link in cta_links %} · [{{ link.label }}](<{{ link.url }}>){% endfor %}

{% endif %}
{% if cta_notify %}
{{ cta_notify }}{% if notify_url %}: <{{ notify_url }}>{% endif %}
{% endif %}
"""
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
UNKNOWN_MESSAGE = 10008  # Discord's error code for a message that is not (or no longer) there
PROACTIVE_WAIT_MAX = 5.0  # seconds send() sleeps itself when the bucket is empty; longer: retry later


class Settings(ChannelSettings):
    type: str = "discord"
    # https://discord.com/api/webhooks/ID/TOKEN (Channel settings → Integrations → Webhooks).
    # It is a secret: anyone with it can post. Empty disables the channel with a warning.
    webhook_url: SecretStr = SecretStr("")
    api_base_url: str | None = None  # replaces scheme and host of webhook_url (proxy, tests)
    username: str | None = Field(default=None, min_length=1, max_length=80)
    avatar_url: str | None = None
    color: int = 0x5865F2  # "#RRGGBB" or a number
    author: bool = True  # show the story's author above the title
    timeout: Duration = 15.0
    rate_limit: str = "20/min"  # Discord allows about 30 messages a minute per webhook channel

    secret_keys: ClassVar[tuple[str, ...]] = ("webhook_url",)

    def secret_parts(self) -> list[str]:
        """The webhook's token and its id/token path: an error body that echoes the URL path
        must not carry them into logs, alerts or `status`."""
        url = self.webhook_url.get_secret_value()
        path = [p for p in urlsplit(url).path.split("/") if p] if url else []
        parts = [path[-1], "/".join(path[-2:])] if len(path) >= 2 else []
        return [p for p in parts if len(p) >= 8]

    @field_validator("color", mode="before")
    @classmethod
    def _colour(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(?:#|0x)?([0-9A-Fa-f]{6})\s*", value)
            if not match:
                raise ValueError('must be a colour like "#E4002B" or a number')
            return int(match.group(1), 16)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 0xFFFFFF:
            raise ValueError("must be between 0 and 0xFFFFFF")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if text and not re.match(r"(?i)^https?://[^/\s]+/\S*$", text):
            raise ValueError("must be the webhook's https:// URL")  # never echo the secret
        return SecretStr(text)

    @field_validator("api_base_url")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"(?i)^https?://[^/\s]+$", value):
            raise ValueError('must be a scheme and host like "http://127.0.0.1:8080"')
        return value


# --- fitting text into code-point limits ---------------------------------------------------


def fit_chars(text: str, limit: int, transform: Callable[[str], str] = lambda t: t) -> str:
    """`transform(text)`, or of the longest word/grapheme-boundary shortening ("…") that fits."""
    if limit <= 0 or not text:
        return ""
    whole = transform(text)
    if len(whole) <= limit:
        return whole
    lo, hi, best = 0, unit_count(text) - 1, ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = transform(shorten(text, mid))
        if len(candidate) <= limit:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    if not best and len(text.split()) > 1:  # even one word is too long: cut inside the first
        return fit_chars(text.split()[0], limit, transform)
    return best


_MARKDOWN = re.compile(r"([\\*_~`|<>\[\]])")
_LINE_START = re.compile(r"(?m)^(\s*)([#>\-+]|\d+\.)")


def escape_markdown(text: str) -> str:
    """Feed text shown literally in Discord markdown: no bold, links, headings, lists or quotes."""
    text = _MARKDOWN.sub(r"\\\1", text)

    def protect(m: re.Match[str]) -> str:
        mark = m.group(2)
        return m.group(1) + (mark[:-1] + "\\." if mark.endswith(".") else "\\" + mark)

    return _LINE_START.sub(protect, text)


def embed_length(embed: Mapping[str, Any]) -> int:
    """The characters Discord counts toward an embed's 6000 total."""
    total = len(embed.get("title", "")) + len(embed.get("description", ""))
    total += len(embed.get("footer", {}).get("text", "")) + len(embed.get("author", {}).get("name", ""))
    for item in embed.get("fields", []):
        total += len(item.get("name", "")) + len(item.get("value", ""))
    return total


@dataclass(frozen=True)
class DiscordPayload(Payload):
    embed: dict[str, Any] = field(default_factory=dict)
    username: str = ""
    avatar_url: str = ""


class DiscordChannel(BaseChannel[Settings]):
    """One Discord channel webhook (no idempotency key: not resumable)."""

    TYPE = "discord"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    CAN_EDIT = True  # PATCH /webhooks/{id}/{token}/messages/{message_id}
    CAN_DELETE = True

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self.budget = Budget("characters", CONTENT_MAX, len)
        self._http: httpx.AsyncClient | None = None
        self._bucket_empty_until = 0.0  # time.monotonic() when Discord said the bucket refills

    async def start(self) -> None:
        if self._http is None:
            self._http = self._make_client()

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # --- render ------------------------------------------------------------------------------

    def render(self, story: Story) -> Post:
        content, used, _ = self.renderer.fit(story, self.budget)
        payload = DiscordPayload(
            self.embed(story), self.settings.username or "", self.settings.avatar_url or ""
        )
        return self.post(
            story,
            content,
            Length(self.budget.unit, used, self.budget.limit),
            media=(story.image,) if story.image else (),
            payload=payload,
        )

    def embed(self, story: Story) -> dict[str, Any]:
        """The story as a Discord embed within every per-field limit and the 6000 total."""
        site = self.context.site
        embed: dict[str, Any] = {"type": "rich", "color": self.settings.color}
        shown = f"{story.breaking} {story.title}" if story.breaking else story.title
        title = fit_chars(" ".join(shown.split()), TITLE_MAX)
        if title:
            embed["title"] = title
        if story.url.lower().startswith(("http://", "https://")):
            embed["url"] = story.url
        author = fit_chars(" ".join(story.author.split()), AUTHOR_MAX) if self.settings.author else ""
        if author:
            embed["author"] = {"name": author}
        footer = fit_chars(
            " · ".join(" ".join(p.split()) for p in (site.name, story.section) if p.strip()), FOOTER_MAX
        )
        if footer:
            embed["footer"] = {"text": footer}
        if story.published is not None:
            embed["timestamp"] = story.published.isoformat()  # Discord shows it in the footer
        if story.image.lower().startswith(("http://", "https://")):
            embed["image"] = {"url": story.image}
        room = min(DESCRIPTION_MAX, EMBED_TOTAL_MAX - embed_length(embed))
        description = fit_chars(story.lead, room, escape_markdown)
        if description:
            embed["description"] = description
        return embed

    def render_digest(self, digest: Digest) -> Post:
        """The roundup as one embed: the digest title, then one field per story (its title,
        linked), as many as fit Discord's 25 fields and 6000 characters; "… +N" in the footer."""
        embed: dict[str, Any] = {"type": "rich", "color": self.settings.color}
        title = fit_chars(" ".join(digest.title.split()), TITLE_MAX)
        if title:
            embed["title"] = title
        stories = list(digest.stories)
        fields: list[dict[str, Any]] = []
        for story in stories[:FIELDS_MAX]:
            shown = f"{story.breaking} {story.title}" if story.breaking else story.title
            name = fit_chars(" ".join(shown.split()), FIELD_NAME_MAX) or "…"
            link = story.url if story.url.lower().startswith(("http://", "https://")) else ""
            value = f"[{self.renderer.variables(story)['read_more']}](<{link}>)" if link else "—"
            if len(value) > FIELD_VALUE_MAX:
                value = f"<{link}>" if len(link) + 2 <= FIELD_VALUE_MAX else "—"
            # a footer of up to ~12 characters is kept free for "… +N"
            candidate = [*fields, {"name": name, "value": value}]
            if embed_length({**embed, "fields": candidate}) > EMBED_TOTAL_MAX - 12:
                break
            fields.append({"name": name, "value": value, "inline": False})
        if not fields:
            raise RenderError(f"channel {self.name!r}: not even one story fits the digest embed")
        embed["fields"] = fields
        more = digest.more + len(stories) - len(fields)
        if more:
            embed["footer"] = {"text": f"… +{more}"}
        payload = DiscordPayload(embed, self.settings.username or "", self.settings.avatar_url or "")
        return self.post(
            stories[0],
            "",
            Length(self.budget.unit, 0, self.budget.limit),
            payload=payload,
            digest=dataclasses.replace(digest, stories=tuple(stories[: len(fields)]), more=more),
        )

    # --- send --------------------------------------------------------------------------------

    def _body(self, post: Post) -> dict[str, Any]:
        parts = payload_of(post, DiscordPayload)
        body: dict[str, Any] = {"embeds": [parts.embed], "allowed_mentions": {"parse": []}}
        if post.text:
            body["content"] = post.text
        return body

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        parts = payload_of(post, DiscordPayload)
        await self._respect_bucket()
        if self._http is None:
            self._http = self._make_client()
        body = self._body(post)
        if parts.username:
            body["username"] = parts.username
        if parts.avatar_url:
            body["avatar_url"] = parts.avatar_url
        try:
            response = await self._http.post(self._url(), json=body)
        except httpx.HTTPError as exc:
            if not request_may_have_left(exc):  # nothing reached Discord
                raise RetryLater(f"cannot reach Discord: {self._safe(exc)}") from None
            # sent (or partly sent), and no answer: the message may be in the channel
            raise Uncertain(
                f"Discord did not answer ({self._safe(exc)}); the message may be in the "
                "channel: check it before `siar resend`"
            ) from None
        self._note_bucket(response.headers)
        status = response.status_code
        if 200 <= status < 300:
            data = _json(response)
            message_id = str(data.get("id", "")) if isinstance(data, dict) else ""
            url = ""
            if message_id and isinstance(data, dict) and data.get("guild_id") and data.get("channel_id"):
                url = f"https://discord.com/channels/{data['guild_id']}/{data['channel_id']}/{message_id}"
            return Receipt(remote_id=message_id, url=url)
        raise self._error(status, response)

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        """PATCH the webhook message: its content and embed become the corrected story's. An edit
        repeated is harmless, so a lost answer is retried."""
        response = await self._message_request("PATCH", published, json=self._body(post))
        if response.status_code == 404 and _code(response) == UNKNOWN_MESSAGE:
            raise Permanent(
                f"Discord message {published.remote_id} is gone (deleted by hand?); nothing to edit"
            )
        if not 200 <= response.status_code < 300:
            raise self._error(response.status_code, response)
        return Receipt(remote_id=published.remote_id, url=published.url, note="edited")

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """DELETE the webhook message; "Unknown Message" means it is gone already."""
        response = await self._message_request("DELETE", published)
        if response.status_code == 404 and _code(response) == UNKNOWN_MESSAGE:
            raise AlreadyDone(f"Discord message {published.remote_id} is gone already")
        if not 200 <= response.status_code < 300:
            raise self._error(response.status_code, response)
        return Receipt(remote_id=published.remote_id, url=published.url, note="deleted")

    async def _message_request(self, method: str, published: Published, **kwargs: Any) -> httpx.Response:
        if not published.remote_id.isdigit():
            raise Permanent(f"{published.remote_id!r} is not a Discord message id this channel stored")
        await self._respect_bucket()
        if self._http is None:
            self._http = self._make_client()
        url = httpx.URL(self._url())
        params = {k: v for k, v in url.params.items() if k != "wait"}  # thread_id stays
        target = url.copy_with(path=f"{url.path.rstrip('/')}/messages/{published.remote_id}", params=params)
        try:
            response = await self._http.request(method, target, **kwargs)
        except httpx.HTTPError as exc:  # edits and deletions are safe to repeat
            raise RetryLater(f"Discord did not answer: {self._safe(exc)}") from None
        self._note_bucket(response.headers)
        return response

    def _error(self, status: int, response: Any) -> Exception:
        data = _json(response)
        message = _discord_message(data)
        if status == 429:
            after = retry_after(response.headers, data)
            scope = " (global)" if isinstance(data, dict) and data.get("global") else ""
            return RetryLater(f"Discord rate limit{scope} (429){message}", after=after)
        if status in (401, 403, 404):
            what = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}[status]
            return Unauthorized(
                f"Discord refused the webhook ({status} {what}{message}): it was "
                "deleted or its token is wrong; create a new webhook and update webhook_url"
            )
        if status >= 500:
            return RetryLater(f"Discord server error ({status}){message}")
        return Permanent(f"Discord refused the message ({status}){message}")

    # --- helpers -----------------------------------------------------------------------------

    def _make_client(self) -> httpx.AsyncClient:
        # A fresh connection per post: a stale pooled one could fail after the request left.
        return self.http_client(keepalive=False)

    def _url(self) -> str:
        url = self.settings.webhook_url.get_secret_value()
        if self.settings.api_base_url:
            base, parts = urlsplit(self.settings.api_base_url), urlsplit(url)
            url = urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))
        return str(httpx.URL(url).copy_merge_params({"wait": "true"}))

    def _safe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}".strip()
        secret = self.settings.webhook_url.get_secret_value()
        token = secret.rstrip("/").rsplit("/", 1)[-1] if secret else ""
        for value in (secret, token):
            if value:
                text = text.replace(value, "***")
        return text[:300]

    async def _respect_bucket(self) -> None:
        wait = self._bucket_empty_until - time.monotonic()
        if wait <= 0:
            return
        if wait > PROACTIVE_WAIT_MAX:
            raise RetryLater("Discord's rate limit bucket is empty", after=wait)
        await asyncio.sleep(wait)

    def _note_bucket(self, headers: Mapping[str, str]) -> None:
        if headers.get("x-ratelimit-remaining") == "0":
            reset_after = _number(headers.get("x-ratelimit-reset-after"))
            if reset_after is not None:
                self._bucket_empty_until = time.monotonic() + min(reset_after, 3600.0)


def retry_after(headers: Mapping[str, str], data: Any) -> float | None:
    """Seconds Discord asks to wait after a 429: the longest of Retry-After,
    X-RateLimit-Reset-After and the JSON body's retry_after (None if none is given)."""
    lower = {k.lower(): v for k, v in headers.items()}
    values = [lower.get("retry-after"), lower.get("x-ratelimit-reset-after")]
    if isinstance(data, dict):
        values.append(data.get("retry_after"))
    waits = [w for w in (retry_after_seconds(v) for v in values) if w is not None]
    return max(waits) if waits else None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _code(response: Any) -> int | None:
    data = _json(response)
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, int) else None


def _discord_message(data: Any) -> str:
    """': message [code] (field errors)' from a Discord error body, or ''."""
    if not isinstance(data, dict) or not data.get("message"):
        return ""
    text = str(data["message"])
    if data.get("code"):
        text += f" [{data['code']}]"
    if isinstance(data.get("errors"), dict):
        text += f" {_field_errors(data['errors'])}"
    return ": " + " ".join(text.split())[:300]


def _field_errors(errors: dict[str, Any], path: str = "") -> str:
    found = []
    for key, value in errors.items():
        if key == "_errors" and isinstance(value, list):
            found += [f"{path or 'body'}: {e.get('message', e)}" for e in value if isinstance(e, dict)]
        elif isinstance(value, dict):
            found.append(_field_errors(value, f"{path}.{key}" if path else key))
    return "; ".join(f for f in found if f)


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> DiscordChannel:
    assert isinstance(settings, Settings)
    return DiscordChannel(name, settings, context)


PLUGIN = Plugin("discord", (ChannelType("discord", Settings, create),))
