"""`type = "onesignal"` against a local fake of OneSignal's create-notification endpoint."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from bot.channel import ChannelContext, Permanent, RetryLater
from bot.config import Config
from bot.site import CTA, Site
from bot.types import Story
from channels.onesignal import OneSignalChannel, Settings

APP_ID = "5eb5a37e-b458-11e3-ac11-000c2940e62c"
KEY = "os_v2_app_testkey"
STORY = Story(
    uid="1",
    feed="f",
    url="https://www.example.com/internasional/1",
    title="Gencatan senjata",
    lead="Warga kembali ke rumah.",
    section="Internasional",
    tags=("Gaza", "Israel"),
    image="https://img.example.com/1.jpg",
)


class FakeOneSignal:
    """Strict where OneSignal is: `Key` auth, known app, UUID idempotency keys (deduplicated)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.created: dict[str, str] = {}  # idempotency_key -> notification id
        self.script: deque[tuple[int, dict[str, str], dict[str, Any]]] = deque()

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Key {KEY}":
            return web.json_response(
                {
                    "errors": [
                        "Access denied.  Please include an 'Authorization: ...' header with a valid API key"
                    ]
                },
                status=403,
            )
        body = await request.json()
        self.calls.append(body)
        if self.script:
            status, headers, data = self.script.popleft()
            return web.json_response(data, status=status, headers=headers)
        if body.get("app_id") != APP_ID:
            return web.json_response({"errors": ["app_id not found"]}, status=400)
        key = body.get("idempotency_key", "")
        if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", key):
            return web.json_response({"errors": ["idempotency_key must be a UUID"]}, status=400)
        if ("filters" in body) == ("included_segments" in body):
            return web.json_response({"errors": ["use segments or filters"]}, status=400)
        notification = self.created.setdefault(key, f"n-{len(self.created) + 1}")
        return web.json_response({"id": notification})


@pytest.fixture
async def onesignal() -> AsyncIterator[tuple[FakeOneSignal, str]]:
    fake = FakeOneSignal()
    app = web.Application()
    app.router.add_post("/notifications", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def make_channel(onesignal: tuple[FakeOneSignal, str]) -> AsyncIterator[Callable[..., Any]]:
    channels: list[OneSignalChannel] = []

    async def make(**keys: Any) -> OneSignalChannel:
        keys = {"api_key": KEY, "api_base_url": onesignal[1], **keys}
        settings = Settings(type="onesignal", app_id=APP_ID, **keys)
        channel = OneSignalChannel("os", settings, ChannelContext(site=Site(language="id"), cta=CTA()))
        await channel.start()
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


async def test_one_call_per_story_to_segments(
    onesignal: tuple[FakeOneSignal, str], make_channel: Callable[..., Any]
) -> None:
    fake, _ = onesignal
    channel = await make_channel()
    post = channel.render(STORY)
    receipt = await channel.send(post, idempotency_key="siar-7")
    assert receipt.remote_id == "n-1"
    (call,) = fake.calls
    assert call["included_segments"] == ["Total Subscriptions"] and "filters" not in call
    assert call["headings"] == {"en": "Gencatan senjata", "id": "Gencatan senjata"}
    assert call["contents"]["id"] == "Warga kembali ke rumah."
    assert (call["web_url"], call["chrome_web_image"]) == (STORY.url, STORY.image)
    # A resumed row repeats the same idempotency key: OneSignal answers with the same notification.
    again = await channel.send(post, idempotency_key="siar-7")
    assert again.remote_id == "n-1" and len(fake.created) == 1
    assert (await channel.send(post, idempotency_key="siar-8")).remote_id == "n-2"


async def test_fresh_store_reusing_an_outbox_id_still_notifies(
    onesignal: tuple[FakeOneSignal, str], make_channel: Callable[..., Any]
) -> None:
    """OneSignal remembers keys for 30 days; a new database restarts outbox ids at 1, so the key
    carries the story too: another story on `siar-1` is a new notification, the same one is not."""
    fake, _ = onesignal
    channel = await make_channel()
    first = await channel.send(channel.render(STORY), idempotency_key="siar-1")
    other = Story(uid="9", feed="f", url="https://www.example.com/nasional/9", title="Berita lain")
    second = await channel.send(channel.render(other), idempotency_key="siar-1")  # after a store reset
    assert (first.remote_id, second.remote_id) == ("n-1", "n-2")
    same_url_other_feed = Story(uid="1", feed="g", url=STORY.url, title=STORY.title)
    third = await channel.send(channel.render(same_url_other_feed), idempotency_key="siar-1")
    assert third.remote_id == "n-3"
    again = await channel.send(channel.render(STORY), idempotency_key="siar-1")  # a resumed row
    assert again.remote_id == "n-1" and len(fake.created) == 3
    keys = [call["idempotency_key"] for call in fake.calls]
    assert keys[0] == keys[3] and len(set(keys)) == 3


async def test_topic_tag_targets_by_filters(
    onesignal: tuple[FakeOneSignal, str], make_channel: Callable[..., Any]
) -> None:
    fake, _ = onesignal
    channel = await make_channel(topic_tag="topic")
    await channel.send(channel.render(STORY), idempotency_key="siar-1")
    assert fake.calls[0]["filters"] == [
        {"field": "tag", "key": "topic", "relation": "=", "value": "internasional"},
        {"operator": "OR"},
        {"field": "tag", "key": "topic", "relation": "=", "value": "gaza"},
        {"operator": "OR"},
        {"field": "tag", "key": "topic", "relation": "=", "value": "israel"},
    ]
    bare = Story(uid="2", feed="f", url="https://www.example.com/2", title="Tanpa rubrik")
    receipt = await channel.send(channel.render(bare), idempotency_key="siar-2")
    assert "no section or tag" in receipt.note and len(fake.calls) == 1


@pytest.mark.parametrize(
    ("status", "headers", "data", "kind", "after"),
    [
        (429, {"Retry-After": "30"}, {"errors": ["API rate limit exceeded"]}, RetryLater, 30.0),
        (503, {}, {"errors": ["Service Unavailable"]}, RetryLater, None),
        (400, {}, {"errors": ["Message Notifications must have English language content"]}, Permanent, None),
    ],
)
async def test_errors_are_mapped(
    onesignal: tuple[FakeOneSignal, str],
    make_channel: Callable[..., Any],
    status: int,
    headers: dict[str, str],
    data: dict[str, Any],
    kind: type[Exception],
    after: float | None,
) -> None:
    fake, _ = onesignal
    channel = await make_channel()
    fake.script.append((status, headers, data))
    with pytest.raises(kind) as info:
        await channel.send(channel.render(STORY), idempotency_key="siar-1")
    assert data["errors"][0] in str(info.value)
    if isinstance(info.value, RetryLater):
        assert info.value.after == after


async def test_bad_key_is_permanent_and_not_echoed(make_channel: Callable[..., Any]) -> None:
    channel = await make_channel(api_key="wrong-secret-value")
    with pytest.raises(Permanent, match="REST API key is not accepted") as info:
        await channel.send(channel.render(STORY), idempotency_key="siar-1")
    assert "wrong-secret-value" not in str(info.value)


async def test_no_recipients_is_not_an_error(
    onesignal: tuple[FakeOneSignal, str], make_channel: Callable[..., Any]
) -> None:
    fake, _ = onesignal
    channel = await make_channel()
    fake.script.append((200, {}, {"id": "", "errors": ["All included players are not subscribed"]}))
    receipt = await channel.send(channel.render(STORY), idempotency_key="siar-1")
    assert receipt.remote_id == "" and "not subscribed" in receipt.note


async def test_unreachable_is_retried(make_channel: Callable[..., Any]) -> None:
    channel = await make_channel(api_base_url="http://127.0.0.1:9")
    with pytest.raises(RetryLater, match="cannot reach OneSignal"):
        await channel.send(channel.render(STORY), idempotency_key="siar-1")


def test_missing_key_disables_the_channel(make_config: Callable[[str], Config]) -> None:
    config = make_config(
        f'[channels.os]\ntype = "onesignal"\napp_id = "{APP_ID}"\napi_key = "${{NO_SUCH_ONESIGNAL_KEY}}"\n'
    )
    assert "NO_SUCH_ONESIGNAL_KEY" in config.disabled["os"]
