"""Web push: the subscribe endpoints' validation, and stories reaching browsers through a strict
local push service (VAPID verified, payload decrypted), exactly once, across expiry, rate limits
and a crash mid-fan-out."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import update

from bot.app import App, build, channel_context
from bot.config import Config, ConfigError
from bot.daemon import prepare
from bot.fanout import RecipientOutcome
from bot.lock import StoreLock
from bot.store import Store
from bot.types import Story
from channels.webpush import (
    PAYLOAD_MAX,
    ClientLimiter,
    Subscription,
    SubscriptionStore,
    Topic,
    WebPushChannel,
    WebPushPayload,
    http_config,
    init_command,
    load_vapid,
    payload_bytes,
    push_answer,
    split_listen,
    wanted_by,
)
from channels.webpush.config import WebPushSection
from channels.webpush.store import subscriptions
from channels.webpush.subscription import InvalidRequest
from tests.fake_push import FakePushService
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route, rss

CONFIG = """
{top}
[[feeds]]
name = "f"
url = "{feed}"
first_run = "all"

[webpush]
listen = "127.0.0.1:0"
language = "{language}"
contact = "mailto:redaksi@example.com"
vapid_key_file = "vapid.pem"
push_hosts = ["127.0.0.1"]
ca_file = "{ca}"
allowed_origins = ["https://www.example.com"]
client_rate_limit = "1000/min"
{webpush}
icon = "https://www.example.com/icon-192.png"
topics = [
  {{ id = "sport", label = "Olahraga" }},
  {{ id = "world", label = "Internasional", match = ["internasional"] }},
]

[channels.push]
type = "webpush"
rate_limit = "1000/s"
{channel}
"""
QUICK = 'concurrency = 4\nretries = 1\nmax_retry_wait = "5s"'
WEBPUSH = 'new_subscriptions_per_client = ["1000/min"]'
SITE = "https://www.example.com"
WORLD_STORY = {
    "title": "Gencatan senjata di Gaza",
    "link": "https://www.example.com/internasional/1",
    "guid": "1",
    "category": "Internasional",
    "description": '<p><img src="https://img.example.com/1.jpg">Warga kembali ke rumah.</p>',
}


@dataclass
class Env:
    app: App
    lock: StoreLock | None
    push: FakePushService
    config: Config
    clock: Clock
    feeds: FeedServer

    @property
    def channel(self) -> WebPushChannel:
        channel = self.app.channels["push"]
        assert isinstance(channel, WebPushChannel)
        return channel

    @property
    def base(self) -> str:
        server = self.channel.server
        assert server is not None
        return server.public_url

    @property
    def public_key(self) -> str:
        assert self.channel.keys is not None
        return self.channel.keys.public

    async def post(
        self,
        path: str,
        body: Any,
        origin: str | None = SITE,
        raw: bytes | None = None,
        forwarded_for: str = "",
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        if origin:
            headers["Origin"] = origin
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.base + path, data=raw if raw is not None else json.dumps(body), headers=headers) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def subscribe(self, topics: list[str] | None = None) -> dict[str, Any]:
        sub = self.push.new_subscription(self.public_key)
        status, body = await self.post("subscribe", {"subscription": sub, "topics": topics or []})
        assert status == 201, body
        return sub

    async def publish(self, *items: dict[str, str]) -> None:
        self.feeds.routes["/f"] = Route(body=rss(list(items)))
        await self.app.poller.poll(self.config.feeds[0], force=True)
        await self.app.dispatcher.drain()

    async def outbox(self) -> dict[str, Any]:
        (story,) = await self.app.store.stories.find(WORLD_STORY["link"])
        (row,) = await self.app.store.stories.outbox_of(story["id"])
        return row

    async def stop(self) -> None:
        if self.lock is None:
            return
        await self.app.close()
        self.lock.release()
        self.lock = None


@pytest.fixture
async def make_env(
    tmp_path: Path, feed_server: FeedServer, make_config: Callable[[str], Config]
) -> AsyncIterator[Callable[..., Awaitable[Env]]]:
    envs: list[Env] = []
    async with FakePushService(tmp_path / "push") as push:

        async def make(
            channel: str = QUICK, language: str = "id", *, top: str = "", webpush: str = WEBPUSH
        ) -> Env:
            config = make_config(
                CONFIG.format(
                    feed=feed_server.url("/f"),
                    ca=push.cert_file,
                    channel=channel,
                    language=language,
                    top=top,
                    webpush=webpush,
                )
            )
            if not (tmp_path / "vapid.pem").exists():
                assert init_command(config, out=io.StringIO()) == 0
            clock = Clock()
            app = build(config, clock=clock)
            assert "push" in app.channels, app.unavailable
            lock = await prepare(app)
            env = Env(app, lock, push, config, clock, feed_server)
            envs.append(env)
            return env

        yield make
        for env in envs:
            await env.stop()


@pytest.fixture
async def env(make_env: Callable[..., Awaitable[Env]]) -> Env:
    return await make_env()


# --- subscribe endpoint validation -------------------------------------------------------------


def valid(env: Env) -> dict[str, Any]:
    return env.push.new_subscription(env.public_key)


async def test_subscribe_stores_and_unsubscribe_removes(env: Env) -> None:
    sub = valid(env)
    assert await env.post("subscribe", {"subscription": sub, "topics": ["world"]}) == (
        201,
        {"ok": True, "topics": ["world"]},
    )
    status, _ = await env.post("subscribe", {"subscription": sub, "topics": ["sport"]})
    assert status == 200  # same endpoint: updated, not doubled
    rows = await env.channel.subs.all()  # type: ignore[union-attr]
    assert [(r["endpoint"], json.loads(r["topics"])) for r in rows] == [(sub["endpoint"], ["sport"])]
    status, body = await env.post("unsubscribe", {"endpoint": sub["endpoint"]})
    assert (status, body) == (200, {"ok": True, "removed": True})
    assert await env.channel.subs.count() == 0  # type: ignore[union-attr]


async def test_subscribe_refuses_other_origins(env: Env) -> None:
    for origin in (
        None,
        "https://evil.example",
        "http://www.example.com",
        "null",
        "https://www.example.com.evil.example",
    ):
        for path in ("subscribe", "unsubscribe", "click"):
            status, body = await env.post(path, {"subscription": valid(env)}, origin=origin)
            assert (status, body["error"]) == (403, "origin not allowed"), (origin, path)
    assert await env.channel.subs.count() == 0  # type: ignore[union-attr]


async def test_own_public_origin_is_allowed(env: Env) -> None:
    own = env.base.rsplit("/push/", 1)[0]
    status, _ = await env.post("subscribe", {"subscription": valid(env)}, origin=own)
    assert status == 201


def _mutate(sub: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    sub = json.loads(json.dumps(sub))
    target = sub
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return sub


BAD_SUBSCRIPTIONS = [
    ("endpoint", "http://127.0.0.1:1/push/x", "must be an https:// URL"),
    ("endpoint", "https://evil.example/push/x", "not a known push service"),
    ("endpoint", "https://user:pw@127.0.0.1/push/x", "must be an https:// URL"),
    ("endpoint", "https://127.0.0.1/" + "a" * 1100, "at most 1024"),
    ("endpoint", 42, "expected a URL"),
    ("keys.p256dh", "BBBB", "p256dh"),  # too short
    ("keys.p256dh", "B" + "A" * 86, "p256dh"),  # 65 bytes but not a point on P-256
    ("keys.p256dh", "not base64 !!", "p256dh"),
    ("keys.auth", "AAAAAAAAAAAAAAAAAAAAAAAA", "auth"),  # 18 bytes
    ("keys.auth", "+/+/+/+/+/+/+/+/+/+/+w", "auth"),  # base64, not base64url
    ("keys", None, "keys"),
    ("expirationTime", "tomorrow", "expirationTime"),
]


async def test_subscribe_validates_the_subscription(env: Env) -> None:
    for path, value, error in BAD_SUBSCRIPTIONS:
        sub = _mutate(valid(env), path, value)
        status, body = await env.post("subscribe", {"subscription": sub})
        assert status == 400 and error in body["error"], (path, value, body)
    assert await env.channel.subs.count() == 0  # type: ignore[union-attr]


async def test_subscribe_validates_topics_size_type_and_json(env: Env) -> None:
    status, body = await env.post("subscribe", {"subscription": valid(env), "topics": ["weather"]})
    assert (status, body["error"]) == (400, "topics: unknown topic 'weather'")
    status, body = await env.post("subscribe", {"subscription": valid(env), "topics": "world"})
    assert status == 400
    status, body = await env.post("subscribe", None, raw=b"{not json")
    assert (status, body["error"]) == (400, "not valid JSON")
    big = {"subscription": valid(env), "padding": "x" * 5000}
    status, body = await env.post("subscribe", big)
    assert status == 413 and "larger than 4096" in body["error"]
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            env.base + "subscribe",
            data=json.dumps(valid(env)),
            headers={"Origin": SITE, "Content-Type": "text/plain"},
        ) as r,
    ):
        assert r.status == 415
    assert await env.channel.subs.count() == 0  # type: ignore[union-attr]


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0.02)  # each piece arrives on its own


async def test_subscribe_reads_a_body_sent_in_pieces(env: Env) -> None:
    """A chunked or slowly sent body is read to its end, and still capped at 4096 bytes."""
    sub = valid(env)
    body = json.dumps({"subscription": sub, "topics": ["world"]}).encode()
    headers = {"Origin": SITE, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        async with s.post(env.base + "subscribe", data=_pieces(body, 40), headers=headers) as r:
            assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
            assert (r.status, await r.json()) == (201, {"ok": True, "topics": ["world"]})
        big = json.dumps({"subscription": valid(env), "padding": "x" * 5000}).encode()
        async with s.post(env.base + "subscribe", data=_pieces(big, 1000), headers=headers) as r:
            assert r.status == 413 and "larger than 4096" in (await r.json())["error"]
    assert [r["endpoint"] for r in await env.channel.subs.all()] == [sub["endpoint"]]  # type: ignore[union-attr]


async def test_subscribe_is_rate_limited_per_client(env: Env) -> None:
    server = env.channel.server
    assert server is not None
    server.limiter = ClientLimiter("3/min")
    answers = [(await env.post("subscribe", {"subscription": valid(env)}))[0] for _ in range(5)]
    assert answers == [201, 201, 201, 429, 429]
    assert (await env.post("unsubscribe", {"endpoint": "https://127.0.0.1/x"}))[0] == 429


# --- the holes found by probing the running daemon ----------------------------------------------

TRUSTED_PROXY = '[http]\nlisten = "127.0.0.1:0"\ntrusted_proxies = ["127.0.0.1"]\n'


async def test_deeply_nested_json_is_a_clear_400(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    deep = b'{"subscription": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    status, body = await env.post("subscribe", None, raw=deep)
    assert (status, body["error"]) == (400, "JSON nested deeper than 8 levels")
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(env: Env) -> None:
    """No [http] and trust_forwarded_for = false: the peer is the client, whatever it claims."""
    server = env.channel.server
    assert server is not None
    server.limiter = ClientLimiter("3/min")
    answers = [
        (await env.post("subscribe", {"subscription": valid(env)}, forwarded_for=f"203.0.113.{i}"))[0]
        for i in range(5)
    ]
    assert answers == [201, 201, 201, 429, 429]


async def test_forwarded_for_from_a_trusted_proxy_names_the_right_most_untrusted_hop(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    env = await make_env(top=TRUSTED_PROXY)
    server = env.channel.server
    assert server is not None
    server.limiter = ClientLimiter("2/min")
    # Hops left of the one our proxy saw are the client's own words: varying them gains nothing.
    spoofed = [
        (await env.post("subscribe", {"subscription": valid(env)}, forwarded_for=f"6.6.6.{i}, 198.51.100.7"))[
            0
        ]
        for i in range(3)
    ]
    assert spoofed == [201, 201, 429]
    other = await env.post("subscribe", {"subscription": valid(env)}, forwarded_for="198.51.100.8")
    assert other[0] == 201


async def test_a_flood_from_one_address_cannot_lock_out_new_readers(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    env = await make_env(
        top=TRUSTED_PROXY,
        webpush='new_subscriptions_per_client = ["3/h"]\nmax_subscriptions = 6\nunconfirmed_after = "1d"',
    )
    subs = env.channel.subs
    assert subs is not None

    async def subscribe(client: str, topics: list[str]) -> tuple[int, dict[str, Any], dict[str, Any]]:
        sub = valid(env)
        status, body = await env.post(
            "subscribe", {"subscription": sub, "topics": topics}, forwarded_for=client
        )
        return status, body, sub

    flood = [await subscribe("203.0.113.66", ["sport"]) for _ in range(10)]
    assert [status for status, _, _ in flood] == [201] * 3 + [429] * 7
    assert "too many new subscriptions" in flood[-1][1]["error"]
    env.clock.advance(60)
    readers = [await subscribe(f"198.51.100.{i}", ["world"]) for i in range(3)]
    assert [status for status, _, _ in readers] == [201] * 3
    status, body, _ = await subscribe("192.0.2.1", [])  # full, and everyone is fresh: refused
    assert (status, body["error"]) == (400, "this site has reached its subscription limit")

    await env.publish(WORLD_STORY)  # the three readers get a push; the flood's never did
    assert all(len(env.push.delivered(sub)) == 1 for _, _, sub in readers)
    env.clock.advance(2 * 86400)
    status, _, late = await subscribe("192.0.2.1", [])
    assert status == 201  # the oldest never-pushed subscription made room
    endpoints = {r["endpoint"] for r in await subs.all()}
    assert endpoints == {
        flood[1][2]["endpoint"],
        flood[2][2]["endpoint"],
        late["endpoint"],
        *(sub["endpoint"] for _, _, sub in readers),
    }

    # A failing subscription goes first, even if it was pushed to and is younger.
    async with env.app.store.db.write() as conn:
        await conn.execute(
            update(subscriptions)
            .where(subscriptions.c.endpoint == readers[2][2]["endpoint"])
            .values(failures=2)
        )
    status, _, _ = await subscribe("192.0.2.2", [])
    assert status == 201
    assert readers[2][2]["endpoint"] not in {r["endpoint"] for r in await subs.all()}


async def test_clicks_count_only_for_pushed_stories(env: Env) -> None:
    subs = env.channel.subs
    assert subs is not None
    for i in range(30):
        status, body = await env.post("click", {"tag": f"s{i:020x}", "url": f"https://e.example/{i}"})
        assert (status, body) == (200, {"ok": True, "counted": False})
    assert await subs.click_counts() == {}
    sub = await env.subscribe(["world"])
    await env.publish(WORLD_STORY)
    (payload,) = env.push.delivered(sub)
    assert await subs.click_counts() == {payload["tag"]: 0}
    for _ in range(2):
        status, body = await env.post("click", {"tag": payload["tag"], "url": WORLD_STORY["link"]})
        assert (status, body) == (200, {"ok": True, "counted": True})
    assert await subs.click_counts() == {payload["tag"]: 2}


def test_client_limiter_refills_and_stays_bounded() -> None:
    limiter = ClientLimiter("2/min", max_clients=3)
    assert [limiter.allow("a", now=0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("a", now=30)  # one token back after half a minute
    for i in range(10):
        limiter.allow(f"c{i}", now=31)
    assert len(limiter._buckets) == 3


async def test_cors_preflight_only_for_allowed_origins(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.options(
            env.base + "subscribe", headers={"Origin": SITE, "Access-Control-Request-Method": "POST"}
        ) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == SITE
        async with s.options(
            env.base + "subscribe",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        ) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


async def test_page_scripts_and_public_key_are_served(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(env.base) as r:
            page = await r.text()
            assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert "Aktifkan notifikasi" in page and "Dapatkan berita terbaru dari kami" in page
        assert "Olahraga" in page and "Firefox" in page and "Safari di iPhone" in page
        async with s.get(env.base + "vapid-public-key") as r:
            assert (await r.text()) == env.public_key
        async with s.get(env.base + "sw.js") as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
            assert "showNotification" in await r.text()
        async with s.get(env.base + "widget.js") as r:
            widget = await r.text()
            assert "__SIAR_CONFIG__" not in widget and json.dumps(env.base) in widget
        async with s.get(env.base + "nothing-here") as r:
            assert r.status == 404


async def test_page_in_english(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(language="en")
    async with aiohttp.ClientSession() as s, s.get(env.base) as r:
        page = await r.text()
    assert "Turn on notifications" in page and 'lang="en"' in page and "Aktifkan" not in page


# --- delivery ----------------------------------------------------------------------------------


async def test_story_reaches_only_the_matching_subscription_once(env: Env) -> None:
    world = await env.subscribe(["world"])
    sport = await env.subscribe(["sport"])
    await env.publish(WORLD_STORY)
    assert env.push.refused == []
    assert env.push.delivered(sport) == []
    (payload,) = env.push.delivered(world)
    assert payload == {
        "title": "Gencatan senjata di Gaza",
        "lead": "Warga kembali ke rumah.",
        "url": WORLD_STORY["link"],
        "image": "https://img.example.com/1.jpg",
        "tag": payload["tag"],
        "icon": "https://www.example.com/icon-192.png",
    }
    (message,) = env.push.messages
    assert message.claims["sub"] == "mailto:redaksi@example.com"
    assert message.claims["aud"] == env.push.origin
    assert (message.headers["TTL"], message.headers["Urgency"]) == ("86400", "normal")
    assert len(message.headers["Topic"]) == 32
    row = await env.outbox()
    assert row["status"] == "sent" and row["last_error"] is None
    # Nothing goes out again: the row is done.
    await env.app.dispatcher.drain()
    assert len(env.push.messages) == 1


async def test_subscription_without_topics_gets_everything(env: Env) -> None:
    everything = await env.subscribe([])
    await env.publish(
        WORLD_STORY,
        {
            "title": "Skor akhir",
            "link": "https://www.example.com/sport/2",
            "guid": "2",
            "category": "Olahraga",
        },
    )
    assert sorted(p["title"] for p in env.push.delivered(everything)) == [
        "Gencatan senjata di Gaza",
        "Skor akhir",
    ]


async def test_expired_subscription_is_removed(env: Env) -> None:
    gone = await env.subscribe(["world"])
    kept = await env.subscribe(["world"])
    env.push.script(gone, (410, {}))
    await env.publish(WORLD_STORY)
    assert len(env.push.delivered(kept)) == 1 and env.push.delivered(gone) == []
    assert [r["endpoint"] for r in await env.channel.subs.all()] == [kept["endpoint"]]  # type: ignore[union-attr]
    row = await env.outbox()
    assert row["status"] == "sent"
    (_, decisions) = row["id"], await env.app.store.stories.decisions_of(row["story_id"])
    assert "sent to 1 of 2 subscriptions; 1 gone" in decisions[-1]["detail"]


async def test_429_retry_after_is_honoured_inline(env: Env) -> None:
    sub = await env.subscribe()
    env.push.script(sub, (429, {"Retry-After": "1"}))
    started = time.monotonic()
    await env.publish(WORLD_STORY)
    assert time.monotonic() - started >= 1.0
    assert len(env.push.delivered(sub)) == 1
    assert [status for _, status in env.push.requests] == [429, 201]
    assert (await env.outbox())["status"] == "sent"


async def test_long_retry_after_defers_only_the_unfinished_pushes(env: Env) -> None:
    slow = await env.subscribe()
    fast = await env.subscribe()
    env.push.script(slow, (503, {"Retry-After": "120"}))
    await env.publish(WORLD_STORY)
    row = await env.outbox()
    assert row["status"] == "pending" and "1 of 2 pushes to do (503" in row["last_error"]
    assert (row["next_attempt_at"] - env.clock.now).total_seconds() == 120  # the service's word
    assert (len(env.push.delivered(fast)), len(env.push.delivered(slow))) == (1, 0)
    env.clock.advance(120)
    await env.app.dispatcher.drain()
    assert (len(env.push.delivered(fast)), len(env.push.delivered(slow))) == (1, 1)
    assert (await env.outbox())["status"] == "sent"


async def test_server_errors_without_retry_after_back_off_then_defer(env: Env) -> None:
    sub = await env.subscribe()
    env.push.script(sub, (500, {}), (502, {}))  # retries = 1: both attempts fail
    await env.publish(WORLD_STORY)
    row = await env.outbox()
    assert row["status"] == "pending" and "502" in row["last_error"]
    env.clock.advance(3600)
    await env.app.dispatcher.drain()
    assert len(env.push.delivered(sub)) == 1 and (await env.outbox())["status"] == "sent"


async def test_wrong_vapid_key_everywhere_is_permanent(env: Env) -> None:
    sub = env.push.new_subscription("BAnotherSitesKey")  # made with another applicationServerKey
    status, _ = await env.post("subscribe", {"subscription": sub})
    assert status == 201
    await env.publish(WORLD_STORY)
    row = await env.outbox()
    assert row["status"] == "failed" and "rejected our VAPID signature" in row["last_error"]
    assert any("applicationServerKey" in r for r in env.push.refused)
    assert (
        env.channel.subs is not None and await env.channel.subs.count() == 1
    )  # kept: a fixed key makes it work again


async def test_crash_mid_fan_out_resumes_without_pushing_twice(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    env = await make_env("concurrency = 1\nbatch_size = 1\nretries = 0")
    subs = [await env.subscribe() for _ in range(3)]
    held = env.push.hold(subs[1])
    env.feeds.routes["/f"] = Route(body=rss([WORLD_STORY]))
    await env.app.poller.poll(env.config.feeds[0], force=True)
    item = await env.app.store.outbox.claim("push", env.clock(), "test")
    assert item is not None
    post = env.channel.render(item.story)
    sending = asyncio.create_task(env.channel.send(post, idempotency_key=f"siar-{item.id}"))
    await asyncio.wait_for(env.push.arrived[env.push.id_of(subs[1])].wait(), 5)
    sending.cancel()  # the process dies while push 2 is in flight
    with pytest.raises(asyncio.CancelledError):
        await sending
    await env.stop()  # the outbox row stays `sending`, its second push `sending` too
    held.set()

    again = await make_env("concurrency = 1\nbatch_size = 1\nretries = 0")  # the restart
    await again.app.dispatcher.drain()
    row = await again.outbox()
    assert row["status"] == "sent"
    assert [len(again.push.delivered(s)) for s in subs] == [1, 1, 1]  # nobody twice
    delivered_requests = [sid for sid, status in again.push.requests if status == 201]
    assert sorted(delivered_requests) == sorted(again.push.id_of(s) for s in subs)
    decisions = await again.app.store.stories.decisions_of(row["story_id"])
    assert [d["decision"] for d in decisions] == ["queued", "resume", "sent"]
    assert "1 uncertain" in decisions[-1]["detail"]


async def test_cancel_mid_batch_leaves_unstarted_pushes_for_the_resume(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    """A batch claims several rows, but only the push that started may count as in flight."""
    settings = "concurrency = 1\nbatch_size = 3\nretries = 0"
    env = await make_env(settings)
    subs = [await env.subscribe() for _ in range(4)]  # two batches: three rows, then one
    held = env.push.hold(subs[0])
    env.feeds.routes["/f"] = Route(body=rss([WORLD_STORY]))
    await env.app.poller.poll(env.config.feeds[0], force=True)
    item = await env.app.store.outbox.claim("push", env.clock(), "test")
    assert item is not None
    post = env.channel.render(item.story)
    sending = asyncio.create_task(env.channel.send(post, idempotency_key=f"siar-{item.id}"))
    await asyncio.wait_for(env.push.arrived[env.push.id_of(subs[0])].wait(), 5)
    sending.cancel()  # shutdown or send_timeout while push 1 of the batch is in flight
    with pytest.raises(asyncio.CancelledError):
        await sending
    await env.stop()
    held.set()

    again = await make_env(settings)  # the restart
    await again.app.dispatcher.drain()
    row = await again.outbox()
    assert row["status"] == "sent"
    assert len(again.push.delivered(subs[0])) in (0, 1)  # in flight: maybe out, never twice
    assert [len(again.push.delivered(s)) for s in subs[1:]] == [1, 1, 1]
    decisions = await again.app.store.stories.decisions_of(row["story_id"])
    assert "sent to 3 of 4 subscriptions" in decisions[-1]["detail"]
    assert "1 uncertain" in decisions[-1]["detail"]


async def test_the_help_loop_leaves_this_daemons_own_broadcast_to_its_send(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    """`concurrency` bounds one daemon's pushes of a story (and what a kill can leave
    uncertain): its help loop does not also work the batches its own send is going through."""
    env = await make_env("concurrency = 1\nbatch_size = 1\nretries = 0")
    subs = [await env.subscribe() for _ in range(3)]
    held = env.push.hold(subs[0])
    env.feeds.routes["/f"] = Route(body=rss([WORLD_STORY]))
    await env.app.poller.poll(env.config.feeds[0], force=True)
    item = await env.app.store.outbox.claim("push", env.clock(), "test")
    assert item is not None
    post = env.channel.render(item.story)
    sending = asyncio.create_task(env.channel.send(post, idempotency_key=f"siar-{item.id}"))
    try:
        await asyncio.wait_for(env.push.arrived[env.push.id_of(subs[0])].wait(), 5)
        assert await env.channel.help_once() == 0  # batches 2 and 3 wait for the send's one slot
        assert [len(env.push.delivered(s)) for s in subs] == [1, 0, 0]
    finally:
        held.set()
    receipt = await sending
    assert "sent to 3 of 3" in receipt.note
    assert [len(env.push.delivered(s)) for s in subs] == [1, 1, 1]
    assert await env.channel.help_once() == 0  # nothing open is left


async def test_send_timeout_mid_batch_resumes_the_unstarted_pushes(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    env = await make_env('concurrency = 1\nbatch_size = 3\nretries = 0\nsend_timeout = "1s"')
    subs = [await env.subscribe() for _ in range(3)]
    held = env.push.hold(subs[0])  # never answers within send_timeout
    try:
        await env.publish(WORLD_STORY)  # times out: pending, to resume after the retry backoff
    finally:
        held.set()
    assert (await env.outbox())["status"] == "pending"
    env.clock.advance(3600)
    await env.app.dispatcher.drain()  # resumes: the held push is not repeated
    row = await env.outbox()
    assert row["status"] == "sent"
    assert [len(env.push.delivered(s)) for s in subs] == [1, 1, 1]
    decisions = await env.app.store.stories.decisions_of(row["story_id"])
    assert [d["decision"] for d in decisions][-2:] == ["retry", "sent"]
    assert "sent to 2 of 3 subscriptions" in decisions[-1]["detail"]
    assert "1 uncertain" in decisions[-1]["detail"]


# --- keys, config, rendering -------------------------------------------------------------------


async def test_init_command_writes_a_private_key_file_once(env: Env, tmp_path: Path) -> None:
    key_file = tmp_path / "vapid.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    before = key_file.read_bytes()
    out = io.StringIO()
    assert init_command(env.config, out=out) == 1  # refuses to overwrite
    assert key_file.read_bytes() == before
    assert init_command(env.config, force=True, out=out) == 0
    assert key_file.read_bytes() != before and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    section = env.config.sections["webpush"]
    new_public = load_vapid(cast(WebPushSection, section), tmp_path).public
    assert f"public key (applicationServerKey): {new_public}" in out.getvalue()
    assert new_public != env.public_key and len(new_public) == 87


async def test_key_from_environment_and_public_key_check(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = cast(WebPushSection, env.config.sections["webpush"])
    raw = section.model_copy(update={"vapid_key_file": "missing.pem"})
    with pytest.raises(Exception, match="siar webpush init"):
        load_vapid(raw, tmp_path)
    pem = (tmp_path / "vapid.pem").read_text()
    from pydantic import SecretStr

    from_env = section.model_copy(
        update={"vapid_private_key": SecretStr(pem), "vapid_key_file": "missing.pem"}
    )
    assert load_vapid(from_env, tmp_path).public == env.public_key
    wrong = from_env.model_copy(update={"vapid_public_key": "B" + "x" * 86})
    with pytest.raises(Exception, match="does not belong to the private key"):
        load_vapid(wrong, tmp_path)
    bad = section.model_copy(update={"vapid_private_key": SecretStr("c2VjcmV0LXZhbHVl")})
    with pytest.raises(Exception) as info:
        load_vapid(bad, tmp_path)
    assert "c2VjcmV0LXZhbHVl" not in str(info.value) and "not a valid P-256 key" in str(info.value)


def test_config_needs_contact_and_section(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError, match=r"webpush\.contact: required key is missing"):
        make_config('[webpush]\nlisten = "127.0.0.1:0"\n[channels.p]\ntype = "webpush"\n')
    with pytest.raises(ConfigError, match=r"webpush\.contact: must be"):
        make_config('[webpush]\ncontact = "redaksi@example.com"\n')
    config = make_config('[channels.p]\ntype = "webpush"\n')
    assert config.disabled["p"] == "needs a [webpush] section"
    config = make_config(
        '[webpush]\ncontact = "mailto:a@b.c"\nvapid_private_key = "${NO_SUCH_VAR_X}"\n'
        '[channels.p]\ntype = "webpush"\n'
    )
    assert "NO_SUCH_VAR_X" in config.disabled["p"]


def test_http_settings_precedence(make_config: Callable[[str], Config]) -> None:
    """[http] wins; without it the [webpush] keys supply listen, the root URL and trust."""
    contact = 'contact = "mailto:a@b.c"\n'
    config = make_config(
        "[webpush]\n" + contact + 'listen = "0.0.0.0:9000"\ntrust_forwarded_for = true\n'
        'public_url = "https://www.example.com/siar/push/"\n'
    )
    http = http_config(channel_context(config).http, config.sections["webpush"])  # type: ignore[arg-type]
    assert (http.listen, http.public_url, http.trusted_proxies) == (
        "0.0.0.0:9000",
        "https://www.example.com/siar/",
        ["127.0.0.1", "::1"],
    )  # never "anyone"
    config = make_config("[webpush]\n" + contact + 'public_url = "https://push.example.com/"\n')
    http = http_config(channel_context(config).http, config.sections["webpush"])  # type: ignore[arg-type]
    assert (http.listen, http.public_url, http.trusted_proxies) == ("127.0.0.1:8080", "", [])
    config = make_config(
        '[http]\nlisten = "127.0.0.1:9100"\ntrusted_proxies = ["10.0.0.0/8"]\n'
        "[webpush]\n" + contact + 'listen = "0.0.0.0:9000"\ntrust_forwarded_for = false\n'
    )
    assert (
        http_config(channel_context(config).http, cast(WebPushSection, config.sections["webpush"]))
        is config.http
    )
    assert (config.http.listen, config.http.trusted_proxies) == ("127.0.0.1:9100", ["10.0.0.0/8"])
    with pytest.raises(ConfigError, match=r"config.toml:3: http\.trusted_proxies: .*'10\.0\.0\.0/33' is not"):
        make_config('[http]\nlisten = "127.0.0.1:9100"\ntrusted_proxies = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match=r"http\.listen: must be \"HOST:PORT\""):
        make_config('[http]\nlisten = "localhost"\n')


def test_render_fits_the_push_payload(env: Env) -> None:
    story = Story(
        uid="1",
        feed="f",
        url="https://www.example.com/a",
        title="Judul " * 80,
        lead="Kalimat panjang sekali. " * 400,
        image="https://img.example.com/a.jpg",
    )
    post = env.channel.render(story)
    assert isinstance(post.payload, WebPushPayload)
    data = payload_bytes(post.text, post.payload)
    assert len(data) <= PAYLOAD_MAX and post.length.used == len(data)
    assert post.text.endswith("…") and len(post.text) <= 200
    assert post.payload.title.endswith("…") and len(post.payload.title) <= 120
    assert env.channel.render(story).to_dict()["extra"]["tag"] == post.payload.tag  # stable per story


@pytest.mark.parametrize(
    ("status", "header", "kind", "after"),
    [
        (201, None, "sent", None),
        (404, None, "gone", None),
        (410, None, "gone", None),
        (429, "7", "retry", 7.0),
        (503, None, "retry", None),
        (413, None, "failed", None),
        (400, None, "failed", None),
        (403, None, "retry", None),
    ],
)
def test_classify(status: int, header: str | None, kind: str, after: float | None) -> None:
    outcome = push_answer(status, header)
    assert (outcome.status, outcome.retry_after) == (kind, after)
    assert outcome.auth_rejected == (status == 403)


def test_listen_addresses() -> None:
    assert split_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_listen("[::1]:9") == ("::1", 9)
    assert split_listen(":80") == ("0.0.0.0", 80)
    with pytest.raises(ValueError):
        split_listen("localhost")


async def test_subscription_store_on_postgres(tmp_path: Path) -> None:
    """The same tables and queries on PostgreSQL (.ci/run starts it; see tests/test_postgres.py)."""
    admin_url = os.environ.get("SIAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"siar_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    store = Store(admin_url.rsplit("/", 1)[0] + "/" + name, tmp_path)
    try:
        await store.migrate()
        subs = SubscriptionStore(store.db)
        push = FakePushService(tmp_path)
        push.port = 443
        topics = [Topic(id="world", label="Internasional")]
        made = [push.new_subscription("k") for _ in range(3)]
        for i, sub in enumerate(made):
            parsed = Subscription(
                sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"], ("world",) if i else ("sport",)
            )
            assert await subs.save(parsed, SITE, 10) is True
        story = Story(uid="1", feed="f", url="https://e.example/1", title="t", section="Internasional")
        assert [wanted_by(story, t, topics) for t in ([], ["world"], ["sport"])] == [True, True, False]
        audience = await subs.audience(story, topics)
        assert len(audience) == 2
        targets = await subs.targets(audience)
        assert sorted(targets) == audience
        assert all(t.endpoint.startswith("https://") for t in targets.values())
        await subs.apply(
            [RecipientOutcome(audience[0], "sent"), RecipientOutcome(audience[1], "gone")], max_failures=5
        )
        assert await subs.count() == 2  # the gone one is removed
        assert await subs.audience(story, topics) == [audience[0]]
        assert await subs.record_click("s123", "https://e.example/1") is False  # never pushed
        await subs.expect_clicks("s123", "https://e.example/1")
        await subs.expect_clicks("s123", "https://e.example/1")
        assert await subs.record_click("s123", "https://e.example/1") is True
        assert await subs.click_counts() == {"s123": 1}
        old = SITE.replace("www", "old")
        extra = Subscription(
            push.new_subscription("k")["endpoint"], made[0]["keys"]["p256dh"], made[0]["keys"]["auth"]
        )
        with pytest.raises(InvalidRequest):  # full of live subscriptions (none failing, all fresh)
            await subs.save(extra, old, 2)
        assert await subs.save(extra, old, 2, unconfirmed_after=timedelta(0)) is True  # one made room
        assert await subs.count() == 2
    finally:
        await store.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_one_vapid_signature_per_push_service_until_it_nears_expiry(env: Env) -> None:
    subs = [await env.subscribe() for _ in range(3)]
    await env.publish(WORLD_STORY)
    assert [len(env.push.delivered(s)) for s in subs] == [1, 1, 1]
    signer = env.channel.signer
    assert signer is not None and signer.signed == 1  # three pushes to one origin, one signature
    first = {m.headers["Authorization"] for m in env.push.messages}
    assert len(first) == 1
    real = signer.clock
    signer.clock = lambda: real() + signer.lifetime - signer.renew_before + 1  # close to expiry
    second = dict(WORLD_STORY, guid="2", link="https://www.example.com/internasional/2")
    await env.publish(WORLD_STORY, second)
    assert [len(env.push.delivered(s)) for s in subs] == [2, 2, 2]  # the push service took it
    assert signer.signed == 2
    later = {m.headers["Authorization"] for m in env.push.messages[3:]}
    assert len(later) == 1 and later != first


async def test_a_push_that_timed_out_after_leaving_is_uncertain_not_repeated(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    env = await make_env('concurrency = 2\nretries = 2\ntimeout = "1s"')
    slow, fast = await env.subscribe(), await env.subscribe()
    held = env.push.hold(slow)  # the service takes it but answers too late
    try:
        await env.publish(WORLD_STORY)
    finally:
        held.set()
    row = await env.outbox()
    assert row["status"] == "sent"
    assert (len(env.push.delivered(slow)), len(env.push.delivered(fast))) == (1, 1)
    assert [sid for sid, _ in env.push.requests].count(env.push.id_of(slow)) <= 1  # never retried
    decisions = await env.app.store.stories.decisions_of(row["story_id"])
    assert "sent to 1 of 2 subscriptions" in decisions[-1]["detail"]
    assert "1 uncertain" in decisions[-1]["detail"]


# --- editorial (issue 12): breaking news, quiet hours, recall, digests -------------------------


def world(**changes: Any) -> Story:
    base = {
        "uid": "w1",
        "feed": "f",
        "url": "https://www.example.com/internasional/9",
        "title": "Gempa di Turki",
        "section": "Internasional",
    }
    return Story(**{**base, **changes})


async def test_breaking_news_is_urgent_and_short_lived_quiet_hours_very_low(
    make_env: Callable[..., Awaitable[Env]],
) -> None:
    env = await make_env(QUICK + '\nquiet_hours = "22:00-06:00"\nbreaking_ttl = "10m"')
    sub = await env.subscribe([])
    from datetime import UTC, datetime

    env.clock.now = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)  # 23:00 in Jakarta: quiet hours
    await env.channel.send(env.channel.render(world()), idempotency_key="q1")
    await env.channel.send(env.channel.render(world(uid="w2", breaking="🔴 BREAKING")), idempotency_key="q2")
    env.clock.now = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)  # noon
    await env.channel.send(env.channel.render(world(uid="w3", title="Siang")), idempotency_key="q3")
    assert [(m.headers["Urgency"], m.headers["TTL"]) for m in env.push.messages] == [
        ("very-low", "86400"),
        ("high", "600"),
        ("normal", "86400"),
    ]
    titles = [p["title"] for p in env.push.delivered(sub)]
    assert titles == ["Gempa di Turki", "🔴 BREAKING Gempa di Turki", "Siang"]


async def test_web_push_cannot_be_recalled(env: Env) -> None:
    from bot.channel import Permanent
    from bot.types import Published

    assert not env.channel.can_edit and not env.channel.can_delete
    with pytest.raises(Permanent, match="web push cannot be recalled"):
        await env.channel.delete(Published("siar-1"), idempotency_key="d")
    with pytest.raises(Permanent, match="web push cannot be recalled"):
        await env.channel.edit(env.channel.render(world()), Published("siar-1"), idempotency_key="e")


async def test_digest_is_one_notification_opening_the_site(make_env: Callable[..., Awaitable[Env]]) -> None:
    from bot.types import Digest

    env = await make_env(top='[site]\nname = "Contoh"\nurl = "https://www.example.com/"')

    sport = await env.subscribe(["sport"])
    news = await env.subscribe(["world"])
    stories = tuple(world(uid=str(i), title=f"Berita panjang nomor {i} " + "kata " * 8) for i in range(12))
    post = env.channel.render_digest(Digest("Rangkuman pagi", stories))
    assert post.digest is not None and post.length.used <= PAYLOAD_MAX
    await env.channel.send(post, idempotency_key="dg1")
    assert env.push.delivered(sport) == []  # none of its stories is sport
    (payload,) = env.push.delivered(news)
    assert payload["title"] == "Rangkuman pagi" and payload["url"] == "https://www.example.com/"
    lines = payload["lead"].split("\n")
    assert lines[0].startswith("• Berita panjang nomor 0") and lines[-1].startswith("… +")
    assert len(payload["lead"]) <= 200 and len(lines) - 1 + int(lines[-1][3:]) == 12
    assert post.digest is not None and len(post.digest.stories) == len(lines) - 1
