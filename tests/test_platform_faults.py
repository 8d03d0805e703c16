"""Platform faults per channel type, through the dispatcher and the outbox (issue 8, "The proofs").

Each channel posts one story through a fault proxy in front of its strict local fake (web push:
the fake push service's own scripting, its endpoints being the subscriptions). The proxy spoils
the first send request in one way:

  e429     429 with the platform's own rate-limit answer (Retry-After / retry_after: 1 s)
  e5xx     503 from a gateway (not carried out)
  timeout  no answer within the channel's timeout (not carried out)
  reset    carried out by the platform, then the connection is closed before the answer
  e401     the platform refuses the credentials (not carried out)
  e403     the platform forbids the action (not carried out)
  badjson  carried out, then a 200 answer whose JSON is cut off

Then the clock moves past every retry and the channel is drained again. Nothing is lost and
nothing is posted twice: the row is `sent` with exactly one post at the platform, or `failed`
(nothing posted) / `uncertain` (at most one post) with a reason that `status` lists.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.app import App, build
from bot.config import Config
from bot.daemon import prepare
from bot.lock import StoreLock
from channels.webpush.keys import init_command
from tests.fake_discord import TOKEN as DISCORD_TOKEN
from tests.fake_discord import WEBHOOK_ID, FakeDiscord
from tests.fake_mastodon import FakeMastodon
from tests.fake_push import FakePushService
from tests.fake_telegram import TOKEN as TELEGRAM_TOKEN
from tests.fake_telegram import FakeTelegram
from tests.fake_x import KEYS, FakeX
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route, rss
from tests.test_onesignal import APP_ID, KEY, FakeOneSignal

# 49 cases of a few seconds each (timeouts, retries): about 2.5 minutes together.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
FAULTS = ("e429", "e5xx", "timeout", "reset", "e401", "e403", "badjson")
CHANNELS = ("x", "mastodon", "bluesky", "discord", "telegram", "webpush", "onesignal")
HANG = 4.0  # seconds the proxy holds a request for `timeout`; every channel here waits 1.5 s
STORY = {"title": "Gencatan senjata di Gaza", "link": "https://e.example/gaza/1", "guid": "g1"}
# What each fault may end in (the row's status), and how many posts the platform may then hold.
ALLOWED = {
    "e429": {"sent"},
    "e5xx": {"sent"},
    "timeout": {"sent", "uncertain"},
    "reset": {"sent", "uncertain"},
    "e401": {"failed"},
    "e403": {"failed"},
    "badjson": {"sent", "uncertain"},
}
CARRIED_OUT = {"reset", "badjson"}  # the platform did post: exactly one post whatever the row says


# --- the fault proxy ----------------------------------------------------------------------------


@dataclass
class FaultProxy:
    """Forwards everything to `upstream`, but spoils the first request whose "METHOD path"
    matches `send` with `fault` (answers from `answers`, the platform's own shapes)."""

    upstream: str
    send: re.Pattern[str]
    answers: dict[str, tuple[int, dict[str, str], Any]]
    fault: str | None = None
    spoiled: int = 0
    seen: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None and self._runner is not None
        await self._session.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        skip = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            data = await answer.read()
            keep = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")
            }
            return answer.status, keep, data

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        line = f"{request.method} {request.path}"
        self.seen.append(line)
        fault = self.fault
        if fault is not None and self.send.search(line):
            self.fault = None
            self.spoiled += 1
            if fault == "timeout":
                await asyncio.sleep(HANG)  # the client has given up by now; nothing was forwarded
                return web.Response(status=504)
            if fault == "reset":
                await self._forward(request, body)  # carried out
                assert request.transport is not None
                request.transport.close()
                return web.Response()  # never written: the connection is gone
            if fault == "badjson":
                await self._forward(request, body)  # carried out
                return web.Response(status=200, body=b'{"id": "1170', content_type="application/json")
            status, headers, data = self.answers[fault]
            raw = data if isinstance(data, bytes) else json.dumps(data).encode()
            kind = "text/html" if isinstance(data, bytes) else "application/json"
            return web.Response(status=status, headers=headers, body=raw, content_type=kind)
        status, headers, data = await self._forward(request, body)
        return web.Response(status=status, headers=headers, body=data)


GATEWAY: tuple[int, dict[str, str], Any] = (
    503,
    {},
    b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
)


# --- a minimal Bluesky PDS: the XRPC calls the channel makes -------------------------------------


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'at+jwt'})}.{part(claims)}.c2lnbmF0dXJl"


class FakePDS:
    """createSession / refreshSession / createRecord (one per rkey) / getRecord, with a Bearer
    token checked like a PDS does. The real PDS is tested in test_bluesky.py (node)."""

    DID = "did:plc:siartest0000000000000000"

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.token = ""
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _tokens(self) -> dict[str, Any]:
        now = int(time.time())
        self.token = _jwt({"scope": "com.atproto.appPass", "sub": self.DID, "iat": now, "exp": now + 7200})
        refresh = _jwt({"scope": "com.atproto.refresh", "sub": self.DID, "iat": now, "exp": now + 86400})
        return {"accessJwt": self.token, "refreshJwt": refresh, "did": self.DID, "handle": "siar.test"}

    async def _xrpc(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method == "com.atproto.server.createSession":
            body = await request.json()
            if body.get("password") != "app-pass-word":
                return web.json_response({"error": "AuthenticationRequired", "message": "bad"}, status=401)
            return web.json_response(self._tokens())
        if method == "com.atproto.server.refreshSession":
            return web.json_response(self._tokens())
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "InvalidToken", "message": "Bad token"}, status=400)
        if method == "com.atproto.repo.createRecord":
            body = await request.json()
            rkey = body["rkey"]
            if rkey in self.records:
                return web.json_response(
                    {"error": "InvalidRequest", "message": "Record already exists"}, status=400
                )
            self.records[rkey] = body["record"]
            return web.json_response({"uri": self._uri(rkey), "cid": "bafyreib2rxk3rh6kzwq"})
        if method == "com.atproto.repo.getRecord":
            rkey = request.query["rkey"]
            if rkey not in self.records:
                return web.json_response({"error": "RecordNotFound", "message": "not found"}, status=400)
            return web.json_response(
                {"uri": self._uri(rkey), "cid": "bafyreib2rxk3rh6kzwq", "value": self.records[rkey]}
            )
        return web.json_response({"error": "MethodNotImplemented", "message": method}, status=501)

    def _uri(self, rkey: str) -> str:
        return f"at://{self.DID}/app.bsky.feed.post/{rkey}"

    async def __aenter__(self) -> FakePDS:
        app = web.Application()
        app.router.add_route("*", "/xrpc/{method}", self._xrpc)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class ProxiedX(FakeX):
    """The fake X behind the proxy: it checks OAuth signatures made for the proxy's URL."""

    signed_base = ""

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def base(self) -> str:
        return self.signed_base or self.upstream


# --- one platform at a time ---------------------------------------------------------------------


@dataclass
class Platform:
    config: str  # TOML for the channel named "c" (and its sections)
    posts: Callable[[], int]  # posts the platform holds
    proxy: FaultProxy | None = None
    spoil: Callable[[str], None] | None = None  # web push: script the fake instead


async def platform(name: str, stack: AsyncExitStack, sync: ExitStack, tmp: Path) -> Platform:
    """Start `name`'s fake and the fault proxy in front of it."""

    async def proxy(
        upstream: str, send: str, answers: dict[str, tuple[int, dict[str, str], Any]]
    ) -> FaultProxy:
        return await stack.enter_async_context(FaultProxy(upstream, re.compile(send), answers))

    if name == "x":
        fake_x = ProxiedX()
        sync.enter_context(fake_x)
        p = await proxy(
            fake_x.upstream,
            r"^POST /2/tweets$",
            {
                "e429": (
                    429,
                    {"x-rate-limit-reset": str(int(time.time()) + 1), "Retry-After": "1"},
                    {
                        "title": "Too Many Requests",
                        "detail": "Too Many Requests",
                        "type": "about:blank",
                        "status": 429,
                    },
                ),
                "e5xx": GATEWAY,
                "e401": (
                    401,
                    {},
                    {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"},
                ),
                "e403": (
                    403,
                    {},
                    {
                        "title": "Forbidden",
                        "type": "about:blank",
                        "status": 403,
                        "detail": "You are not permitted to perform this action.",
                    },
                ),
            },
        )
        fake_x.signed_base = p.base  # the client signs the proxy's URL
        keys = "\n".join(f'{k} = "{v}"' for k, v in KEYS.items())
        return Platform(
            f'[channels.c]\ntype = "x"\napi_base_url = "{p.base}"\n{keys}\n', lambda: len(fake_x.posts), p
        )
    if name == "mastodon":
        masto = sync.enter_context(FakeMastodon())
        p = await proxy(
            masto.base,
            r"^POST /api/v1/statuses$",
            {
                "e429": (
                    429,
                    {"Retry-After": "1", "X-RateLimit-Remaining": "0"},
                    {"error": "Too many requests"},
                ),
                "e5xx": GATEWAY,
                "e401": (401, {}, {"error": "The access token is invalid"}),
                "e403": (403, {}, {"error": "This action is not allowed"}),
            },
        )
        conf = f'[channels.c]\ntype = "mastodon"\ninstance = "{p.base}"\naccess_token = "{masto.token}"\n'
        return Platform(conf, lambda: len(masto.statuses), p)
    if name == "bluesky":
        pds = await stack.enter_async_context(FakePDS())
        p = await proxy(
            pds.base,
            r"^POST /xrpc/com\.atproto\.repo\.createRecord$",
            {
                "e429": (
                    429,
                    {"ratelimit-reset": str(int(time.time()) + 1), "Retry-After": "1"},
                    {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                ),
                "e5xx": GATEWAY,
                "e401": (401, {}, {"error": "AuthenticationRequired", "message": "Authentication Required"}),
                "e403": (403, {}, {"error": "Forbidden", "message": "this account may not post"}),
            },
        )
        conf = (
            f'[channels.c]\ntype = "bluesky"\nservice = "{p.base}"\nhandle = "siar.test"\n'
            f'app_password = "app-pass-word"\nsession_file = "{tmp / "bsky.session"}"\n'
        )
        return Platform(conf, lambda: len(pds.records), p)
    if name == "discord":
        discord = sync.enter_context(FakeDiscord())
        p = await proxy(
            discord.base,
            r"^POST /api/webhooks/",
            {
                "e429": (
                    429,
                    {"Retry-After": "1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1"},
                    {"message": "You are being rate limited.", "retry_after": 1.0, "global": False},
                ),
                "e5xx": GATEWAY,
                "e401": (401, {}, {"message": "Invalid Webhook Token", "code": 50027}),
                "e403": (403, {}, {"message": "Missing Access", "code": 50001}),
            },
        )
        url = f"https://discord.com/api/webhooks/{WEBHOOK_ID}/{DISCORD_TOKEN}"
        conf = f'[channels.c]\ntype = "discord"\nwebhook_url = "{url}"\napi_base_url = "{p.base}"\n'
        return Platform(conf, lambda: len(discord.messages), p)
    if name == "telegram":
        tg = await stack.enter_async_context(FakeTelegram())
        tg.channel(-1001234567890, "siarnews")
        p = await proxy(
            tg.url,
            r"/(sendMessage|sendPhoto)$",
            {
                "e429": (
                    429,
                    {"Retry-After": "1"},
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": "Too Many Requests: retry after 1",
                        "parameters": {"retry_after": 1},
                    },
                ),
                "e5xx": GATEWAY,
                "e401": (401, {}, {"ok": False, "error_code": 401, "description": "Unauthorized"}),
                "e403": (
                    403,
                    {},
                    {
                        "ok": False,
                        "error_code": 403,
                        "description": "Forbidden: bot is not a member of the channel chat",
                    },
                ),
            },
        )
        conf = (
            f'[telegram]\ntoken = "{TELEGRAM_TOKEN}"\napi_base_url = "{p.base}"\nrequest_timeout = "1.5s"\n'
            '[channels.c]\ntype = "telegram"\nchat = "@siarnews"\n'
        )
        return Platform(conf, lambda: len(tg.sent), p)
    if name == "onesignal":
        fake = FakeOneSignal()
        app = web.Application()
        app.router.add_post("/notifications", fake.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        stack.push_async_callback(runner.cleanup)
        p = await proxy(
            f"http://127.0.0.1:{runner.addresses[0][1]}",
            r"^POST /notifications$",
            {
                "e429": (429, {"Retry-After": "1"}, {"errors": ["API rate limit exceeded"]}),
                "e5xx": GATEWAY,
                "e401": (
                    401,
                    {},
                    {"errors": ["Access denied.  Please include an 'Authorization: ...' header"]},
                ),
                "e403": (403, {}, {"errors": ["This app is suspended"]}),
            },
        )
        conf = f'[channels.c]\ntype = "onesignal"\napp_id = "{APP_ID}"\napi_key = "{KEY}"\n'
        conf += f'api_base_url = "{p.base}"\n'
        return Platform(conf, lambda: len(fake.created), p)
    raise AssertionError(name)


# --- the test -----------------------------------------------------------------------------------


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    with FeedServer() as server:
        server.routes["/f"] = Route(body=rss([STORY]))
        yield server


COMMON = """
[daemon]
retry_base = "5s"
retry_max = "30s"

[[feeds]]
name = "f"
url = "{feed}"
first_run = "all"
"""
TUNING = 'rate_limit = "1000/s"\ntimeout = "1.5s"\n'


async def run_case(
    channel: str, fault: str, tmp_path: Path, feed: FeedServer, make_config: Callable[[str], Config]
) -> tuple[dict[str, Any], int, dict[str, Any], int]:
    """(the outbox row, posts at the platform, the status report, requests spoiled)."""
    async with AsyncExitStack() as stack:
        with ExitStack() as sync:
            if channel == "webpush":
                push = await stack.enter_async_context(FakePushService(tmp_path / "push"))
                text = COMMON.format(feed=feed.url("/f")) + (
                    f'[webpush]\nlisten = "127.0.0.1:0"\ncontact = "mailto:r@example.com"\n'
                    'vapid_key_file = "vapid.pem"\npush_hosts = ["127.0.0.1"]\n'
                    f'ca_file = "{push.cert_file}"\n'
                    '[channels.c]\ntype = "webpush"\nretries = 0\n' + TUNING
                )
                config = make_config(text)
                assert init_command(config, out=open("/dev/null", "w")) == 0  # noqa: ASYNC230
                plat = Platform("", lambda: len(push.messages))
            else:
                plat = await platform(channel, stack, sync, tmp_path)
                config = make_config(COMMON.format(feed=feed.url("/f")) + plat.config + TUNING)
            clock = Clock(datetime.now(UTC))  # rate-limit resets are read against the real clock
            app = build(config, clock=clock)
            assert "c" in app.channels, app.unavailable
            lock = await prepare(app)
            try:
                if channel == "webpush":
                    sub = await subscribe(app, push)
                    held = spoil_push(push, sub, fault)
                    if held is not None:
                        stack.callback(held.set)  # before the service stops: it waits for it
                else:
                    assert plat.proxy is not None
                    plat.proxy.fault = fault
                await app.poller.poll(config.feeds[0], force=True)
                await app.dispatcher.drain()
                for _ in range(4):  # past every retry the row may be waiting for
                    clock.advance(120)
                    await app.dispatcher.drain()
                (story,) = await app.store.stories.find(STORY["link"])
                (row,) = await app.store.stories.outbox_of(story["id"])
                if channel == "webpush" and row["status"] != "failed":
                    row = {**row, **await recipient_of(app, row["id"])}
                report = await app.store.reports.status(config)
                spoiled = 1 if channel == "webpush" else (plat.proxy.spoiled if plat.proxy else 0)
                return row, plat.posts(), report, spoiled
            finally:
                await app.close()
                await close_lock(lock)


async def close_lock(lock: StoreLock | None) -> None:
    if lock is not None:
        lock.release()


async def subscribe(app: App, push: FakePushService) -> dict[str, Any]:
    channel = app.channels["c"]
    keys = channel.keys  # type: ignore[attr-defined]
    server = channel.server  # type: ignore[attr-defined]
    sub = push.new_subscription(keys.public)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            server.public_url + "subscribe",
            data=json.dumps({"subscription": sub, "topics": []}),
            headers={"Content-Type": "application/json", "Origin": server.public_url.split("/push")[0]},
        ) as answer,
    ):
        assert answer.status == 201, await answer.text()
    return sub


def spoil_push(push: FakePushService, sub: dict[str, Any], fault: str) -> asyncio.Event | None:
    """The push service's side of each fault (its answers carry no JSON: `badjson` is a 201
    with a garbled body, which a push client never reads)."""
    if fault == "e429":
        push.script(sub, (429, {"Retry-After": "1"}))
    elif fault == "e5xx":
        push.script(sub, (503, {}))
    elif fault == "e401":
        push.script(sub, (401, {}))
    elif fault == "e403":
        push.script(sub, (403, {}))
    elif fault == "timeout":
        return push.hold(sub)  # delivered, never answered (until the test ends)
    elif fault == "reset":
        push.drop(sub)
    elif fault == "badjson":
        push.script(sub, (201, {"Content-Type": "application/json"}))
    return None


async def recipient_of(app: App, row_id: int) -> dict[str, Any]:
    """For a broadcast: its one recipient's status and detail stand for the row's (unless the
    whole row failed: then the recipient waits for `siar resend`)."""
    from sqlalchemy import select

    from bot.schema import fanout

    async with app.store.db.read() as conn:
        rows = (
            await conn.execute(
                select(fanout.c.status, fanout.c.detail).where(fanout.c.key == f"siar-{row_id}")
            )
        ).all()
    if not rows:  # web push keeps its progress in batches (bot.fanout_batches)
        from bot.fanout_batches import BatchLedger

        ledger = BatchLedger(app.store.db)
        ((recipient, status),) = (await ledger.states(f"siar-{row_id}")).items()
        return {"status": status, "last_error": (await ledger.details(f"siar-{row_id}")).get(recipient)}
    (r,) = rows
    return {"status": r.status, "last_error": r.detail}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_platform_fault_loses_and_repeats_nothing(
    channel: str,
    fault: str,
    tmp_path: Path,
    feed: FeedServer,
    make_config: Callable[[str], Config],
) -> None:
    async with asyncio.timeout(60):
        row, posts, report, spoiled = await run_case(channel, fault, tmp_path, feed, make_config)
    status, reason = row["status"], row["last_error"] or ""
    print(f"\n{channel:9} {fault:8} -> {status:9} posts={posts} reason={reason[:150]!r}")
    assert spoiled == 1, "the fault never happened: the test proves nothing"
    allowed = set(ALLOWED[fault])
    carried_out = set(CARRIED_OUT)
    if channel == "bluesky" and fault == "e401":
        allowed.add("sent")  # an expired access token: the channel logs in again and posts
    if channel == "webpush":
        carried_out.add("timeout")  # the push service took it, then never answered
        if fault == "badjson":
            allowed = {"sent"}  # a push answer's body is never read
    assert status in allowed, (status, reason)
    if status == "sent":
        assert posts == 1, f"sent, but the platform holds {posts} posts"
    else:
        assert reason, "a failed or uncertain row must say why"
        assert posts == (1 if fault in carried_out else 0), posts
    if fault in carried_out:
        assert posts == 1, "carried out once: never posted again"
    # `status` lists it: a failed or uncertain post by id, an uncertain recipient in its count
    problems = report["recent_failures"]
    if status == "failed" or (status == "uncertain" and channel != "webpush"):
        assert any(p["id"] == row["id"] and p["last_error"] for p in problems), problems
    if status == "uncertain" and channel == "webpush":
        assert report["channels"]["c"]["uncertain_recipients"] == 1, report["channels"]
