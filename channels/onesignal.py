"""`type = "onesignal"`: one OneSignal REST call per story, for sites whose readers subscribed there.

POST {api_base_url}/notifications with `Authorization: Key <REST API key>`. OneSignal
deduplicates by the body field `idempotency_key` (a UUID, kept 30 days), derived here from
the outbox idempotency key and the story's feed and uid, so a resent row never notifies twice
(the channel is resumable) and a fresh store's reused outbox id never hides a new story.
Targets `segments`, or with `topic_tag` the subscribers whose tag of that name equals the
story's section or one of its tags.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from bot.channel import ChannelContext, ChannelSettings, Permanent, RetryLater, Unauthorized, payload_of
from bot.counting import Budget, count_graphemes
from bot.durations import Duration
from bot.http_retry import retry_after_seconds
from bot.kit import BaseChannel
from bot.registry import ChannelType, Plugin
from bot.render import story_tag
from bot.types import Button, Length, Payload, Post, Receipt, Story

DEFAULT_TEMPLATE = "{% if lead %}{{ lead }}{% else %}{{ site }}{% endif %}"

NAMESPACE = uuid.UUID("4f0d3c1e-5a0b-4d8e-9a57-2b1f6c0e9d11")  # siar's namespace for idempotency keys


class Settings(ChannelSettings):
    secret_keys: ClassVar[tuple[str, ...]] = ("api_key",)

    type: str = "onesignal"
    app_id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")
    api_key: SecretStr = SecretStr("")  # the app's REST API key
    api_base_url: str = "https://api.onesignal.com"
    segments: list[str] = Field(default_factory=lambda: ["Total Subscriptions"])
    topic_tag: str = ""  # e.g. "topic": target subscribers whose tag "topic" matches the story
    ttl: Duration = 86400.0
    body_limit: int = Field(default=200, ge=20, le=1000)
    timeout: Duration = 15.0
    rate_limit: str = "60/min"


def idempotency_uuid(channel: str, key: str, story: Story) -> str:
    """A stable UUID for one outbox row of one story on one channel (OneSignal wants a UUID).

    OneSignal remembers a key for 30 days, and a fresh store (a new database, staging on the
    same app) restarts outbox ids at 1: with the story's feed and uid in it, such a row can
    never be dropped as a repeat of another story's notification.
    """
    return str(uuid.uuid5(NAMESPACE, f"{channel}:{key}:{story.feed}\n{story.uid}"))


def topic_values(story: Story) -> list[str]:
    """The story's section and tags, lower-cased and de-duplicated (at most 20)."""
    values = [v.strip().casefold() for v in (story.section, *story.tags) if v and v.strip()]
    return list(dict.fromkeys(values))[:20]


@dataclass(frozen=True)
class OneSignalPayload(Payload):
    title: str = ""
    tag: str = ""


class OneSignalChannel(BaseChannel[Settings]):
    """Resumable: OneSignal drops a repeated idempotency_key."""

    TYPE = "onesignal"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    RESUMABLE = True

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = self.http_client(base_url=self.settings.api_base_url.rstrip("/"))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def render(self, story: Story) -> Post:
        budget = Budget("graphemes", self.settings.body_limit, count_graphemes)
        text, used, values = self.renderer.fit(story, budget)
        return self.post(
            story,
            text,
            Length(budget.unit, used, budget.limit),
            buttons=(Button(values["read_more"], story.url),) if story.url else (),
            media=(story.image,) if story.image else (),
            payload=OneSignalPayload(
                f"{story.breaking} {story.title}" if story.breaking else story.title, story_tag(story)
            ),
        )

    def body(self, post: Post, idempotency_key: str) -> dict[str, Any]:
        """The JSON of the create-notification request."""
        parts = payload_of(post, OneSignalPayload)
        language = self.context.site.language or "en"
        title = parts.title or post.story.title
        body: dict[str, Any] = {
            "app_id": self.settings.app_id,
            "idempotency_key": idempotency_uuid(self.name, idempotency_key, post.story),
            "target_channel": "push",
            "headings": {"en": title, language: title},
            "contents": {"en": post.text or title, language: post.text or title},
            "web_url": post.story.url,
            "web_push_topic": parts.tag,
            "ttl": int(self.settings.ttl),
        }
        if post.story.breaking:
            body["priority"] = 10  # OneSignal's high priority: delivered at once, waking the device
        if post.story.image:
            body["chrome_web_image"] = post.story.image
        values = topic_values(post.story) if self.settings.topic_tag else []
        if self.settings.topic_tag:
            filters: list[dict[str, str]] = []
            for value in values:
                if filters:
                    filters.append({"operator": "OR"})
                filters.append(
                    {"field": "tag", "key": self.settings.topic_tag, "relation": "=", "value": value}
                )
            body["filters"] = filters
        else:
            body["included_segments"] = list(self.settings.segments)
        return body

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        if self._client is None:
            raise Permanent("the onesignal channel was not started")
        body = self.body(post, idempotency_key)
        if "filters" in body and not body["filters"]:
            return Receipt(note="the story has no section or tag to target")
        headers = {
            "Authorization": f"Key {self.settings.api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }
        try:
            response = await self._client.post("/notifications", json=body, headers=headers)
        except httpx.TimeoutException as exc:  # safe to repeat: the idempotency key dedups
            raise RetryLater(f"OneSignal did not answer in time ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise RetryLater(f"cannot reach OneSignal ({type(exc).__name__})") from None
        return self._receipt(response.status_code, response.headers.get("Retry-After"), response.text)

    def _receipt(self, status: int, retry_after: str | None, text: str) -> Receipt:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        errors = data.get("errors") if isinstance(data, dict) else None
        brief = _brief(errors) or re.sub(r"\s+", " ", text)[:150]
        if status == 429 or status >= 500:
            raise RetryLater(f"OneSignal {status}: {brief}", after=retry_after_seconds(retry_after))
        if status in (401, 403):
            raise Unauthorized(f"OneSignal {status}: the REST API key is not accepted ({brief})")
        if status >= 400:
            raise Permanent(f"OneSignal {status}: {brief}")
        remote_id = str(data.get("id") or "") if isinstance(data, dict) else ""
        if not remote_id:
            return Receipt(note=f"nobody to notify ({brief or 'no recipients'})")
        return Receipt(remote_id=remote_id, note=f"notification {remote_id}")


def _brief(errors: Any) -> str:
    if isinstance(errors, list):
        return "; ".join(str(e) for e in errors)[:200]
    if isinstance(errors, dict):
        return "; ".join(f"{k}: {v}" for k, v in errors.items())[:200]
    return ""


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> OneSignalChannel:
    assert isinstance(settings, Settings)
    return OneSignalChannel(name, settings, context)


PLUGIN = Plugin("onesignal", (ChannelType("onesignal", Settings, create),))
