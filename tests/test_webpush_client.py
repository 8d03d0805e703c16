"""The lean HTTP/1.1 push client (channels/webpush/http1.py) and the push transports.

The client against a scripted TLS server (what each connection does is the test's to say):
keep-alive reuse, a server that closes between requests, a reset or a silence after the
request left (the push may have arrived: AnswerLost, so uncertain), answers framed every way
HTTP/1.1 allows, the address guard, the pool limit. Then the three transports (lean, aiohttp,
httpx of `http2 = true`, which speaks HTTP/1.1 to this service) against the strict fake push
service: the same PushAnswer for the same answer (201, 429, 410, 404, 413, 401, a dropped
connection, a refused address)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid  # type: ignore[import-untyped, unused-ignore]

from bot.addresses import AddressGuard
from channels.webpush import push_answer
from channels.webpush.channel import PushAnswer
from channels.webpush.encryption import encrypt
from channels.webpush.http1 import AnswerLost, NotSent, PushClient, Refused
from channels.webpush.keys import VapidKeys, VapidSigner, b64url
from channels.webpush.transports import make_transport, push_guard
from tests.fake_push import FakePushService, tls_files

LOOPBACK = AddressGuard(allowed_hosts=frozenset({"127.0.0.1"}))
HEADERS = {"TTL": "60", "Content-Encoding": "aes128gcm"}

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    """One accepted connection of the scripted server."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    arrived: asyncio.Event  # the server's: set by every request read
    requests: list[tuple[bytes, dict[str, str], bytes]] = field(default_factory=list)

    async def request(self) -> tuple[bytes, dict[str, str], bytes] | None:
        """The next request (request line, headers, body); None at the end of the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        line, *rest = head[:-4].split(b"\r\n")
        headers = {}
        for item in rest:
            name, _, value = item.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((line, headers, body))
        self.arrived.set()
        return line, headers, body

    async def answer(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    def reset(self) -> None:
        self.writer.transport.abort()


CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Scripted:
    """A TLS server on 127.0.0.1 running `handler` for each connection."""

    handler: Handler
    cafile: Path
    port: int = 0
    conns: list[Conn] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/push/1"

    def requests(self) -> list[tuple[bytes, dict[str, str], bytes]]:
        return [r for c in self.conns for r in c.requests]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []
    server_context, cafile = tls_files(tmp_path)

    async def start(handler: Handler) -> Scripted:
        scripted = Scripted(handler, cafile)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = Conn(reader, writer, scripted.arrived)
            scripted.conns.append(conn)
            try:
                await handler(conn)
            finally:
                writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server_context)
        servers.append(server)
        scripted.port = server.sockets[0].getsockname()[1]
        return scripted

    yield start
    for server in servers:
        server.close()


def client(cafile: Path, guard: AddressGuard = LOOPBACK, **kw: Any) -> PushClient:
    context = ssl.create_default_context(cafile=str(cafile))
    return PushClient(ssl_context=context, user_agent="siar-test", guard=guard, **kw)


async def answer_all(conn: Conn, raw: bytes = CREATED) -> None:
    while await conn.request() is not None:
        await conn.answer(raw)


async def test_keeps_the_connection_alive_and_sends_a_plain_request(serve: Any) -> None:
    server = await serve(answer_all)
    push = client(server.cafile)
    for n in range(3):
        answer = await push.post(server.url, HEADERS, b"body %d" % n, timeout=5)
        assert answer.status == 201
    assert push.connections_made == 1 and len(server.conns) == 1
    line, headers, body = server.requests()[2]
    assert line == b"POST /push/1 HTTP/1.1" and body == b"body 2"
    assert headers["host"] == f"127.0.0.1:{server.port}" and headers["content-length"] == "6"
    assert headers["ttl"] == "60" and headers["user-agent"] == "siar-test"
    await push.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Any) -> None:
    idle, hung_up = asyncio.Event(), asyncio.Event()

    async def one_then_close(conn: Conn) -> None:
        await conn.request()
        await conn.answer(CREATED)  # keep-alive by its words
        await idle.wait()  # the client has its answer and has pooled the connection
        conn.writer.close()  # then the server hangs up (an idle timeout)
        await conn.writer.wait_closed()
        hung_up.set()

    server = await serve(one_then_close)
    push = client(server.cafile)
    assert (await push.post(server.url, HEADERS, b"1", timeout=5)).status == 201
    idle.set()
    await asyncio.wait_for(hung_up.wait(), 5)
    await asyncio.sleep(0.1)  # the close reaches the client while its connection is idle
    assert (await push.post(server.url, HEADERS, b"2", timeout=5)).status == 201
    assert push.connections_made == 2 and [len(c.requests) for c in server.conns] == [1, 1]
    await push.aclose()


async def test_connection_close_and_http_1_0_answers_are_not_reused(serve: Any) -> None:
    answers = iter(
        [
            b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n",
            CREATED,
        ]
    )

    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.answer(next(answers))

    server = await serve(handler)
    push = client(server.cafile)
    for _ in range(3):
        assert (await push.post(server.url, HEADERS, b"x", timeout=5)).status == 201
    assert push.connections_made == 3
    await push.aclose()


async def test_a_reset_after_the_request_left_is_a_lost_answer(serve: Any) -> None:
    async def take_and_reset(conn: Conn) -> None:
        await conn.request()  # it arrived
        conn.reset()

    server = await serve(take_and_reset)
    push = client(server.cafile)
    with pytest.raises(AnswerLost):
        await push.post(server.url, HEADERS, b"x", timeout=5)
    assert len(server.requests()) == 1
    await push.aclose()


async def test_half_an_answer_then_close_is_a_lost_answer(serve: Any) -> None:
    async def half(conn: Conn) -> None:
        await conn.request()
        await conn.answer(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nabc")

    server = await serve(half)
    push = client(server.cafile)
    with pytest.raises(AnswerLost):
        await push.post(server.url, HEADERS, b"x", timeout=5)
    await push.aclose()


async def test_no_answer_within_the_timeout_is_a_lost_answer(serve: Any) -> None:
    release = asyncio.Event()

    async def silent(conn: Conn) -> None:
        await conn.request()
        await release.wait()

    server = await serve(silent)
    push = client(server.cafile)
    with pytest.raises(AnswerLost, match=r"within 0\.3 s"):
        await push.post(server.url, HEADERS, b"x", timeout=0.3)
    release.set()
    await push.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2x1 Created\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 201 Created\r\nno colon here\r\n\r\n",
    ],
)
async def test_an_unreadable_answer_is_a_lost_answer(serve: Any, raw: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(raw)
        await asyncio.sleep(1)

    server = await serve(handler)
    push = client(server.cafile)
    with pytest.raises(AnswerLost, match="unreadable"):
        await push.post(server.url, HEADERS, b"x", timeout=5)
    await push.aclose()


async def test_answers_framed_by_chunks_or_by_close_and_interim_answers(serve: Any) -> None:
    answers = iter(
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nslow \r\n",
            b"5\r\ndown!\r\n0\r\nX-Trailer: 1\r\n\r\n",
            CREATED,
        ]
    )

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(next(answers))
        await asyncio.sleep(0.05)
        await conn.answer(next(answers))  # the chunked answer's second half
        await conn.request()
        await conn.answer(next(answers))
        await conn.request()
        await conn.answer(b"HTTP/1.1 410 Gone\r\n\r\n" + b"y" * 400)  # framed by the close
        conn.writer.close()

    server = await serve(handler)
    push = client(server.cafile)
    first = await push.post(server.url, HEADERS, b"1", timeout=5)
    assert (first.status, first.retry_after, first.text) == (429, "7", "slow down!")
    assert (await push.post(server.url, HEADERS, b"2", timeout=5)).status == 201  # same connection
    last = await push.post(server.url, HEADERS, b"3", timeout=5)
    assert last.status == 410 and last.text == "y" * 300  # the start of the body only
    assert push.connections_made == 1
    await push.aclose()


async def test_the_address_guard_refuses_before_connecting(serve: Any) -> None:
    server = await serve(answer_all)

    async def inward(host: str) -> list[str]:
        return ["127.0.0.1"]

    push = client(server.cafile, guard=AddressGuard(), resolver=inward)
    with pytest.raises(Refused, match="loopback"):
        await push.post(server.url, HEADERS, b"x", timeout=5)  # an IP literal
    with pytest.raises(Refused, match="loopback"):
        await push.post(f"https://push.example.com:{server.port}/p", HEADERS, b"x", timeout=5)
    assert server.conns == [] and push.connections_made == 0
    await push.aclose()


async def test_a_name_is_connected_to_at_its_checked_address_with_tls_on_the_name(serve: Any) -> None:
    server = await serve(answer_all)
    asked: list[str] = []

    async def resolver(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    push = client(
        server.cafile, guard=AddressGuard(allowed_hosts=frozenset({"127.0.0.1"})), resolver=resolver
    )
    answer = await push.post(f"https://localhost:{server.port}/push/9", HEADERS, b"x", timeout=5)
    assert answer.status == 201 and asked == ["localhost"]  # the certificate names localhost
    assert server.requests()[0][1]["host"] == f"localhost:{server.port}"
    await push.aclose()


async def test_nothing_sent_when_the_connection_cannot_be_made(serve: Any, tmp_path: Path) -> None:
    server = await serve(answer_all)
    port = server.port
    for s in list(server.conns):
        s.writer.close()
    free = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    closed_port = free.sockets[0].getsockname()[1]
    free.close()
    await free.wait_closed()
    push = client(server.cafile)
    with pytest.raises(NotSent, match="cannot connect"):
        await push.post(f"https://127.0.0.1:{closed_port}/p", HEADERS, b"x", timeout=5)
    other_ca = tls_files(tmp_path / "other")[1]  # a certificate this client does not trust
    untrusting = client(other_ca)
    with pytest.raises(NotSent, match=r"SSL|certificate"):
        await untrusting.post(f"https://127.0.0.1:{port}/p", HEADERS, b"x", timeout=5)
    with pytest.raises(NotSent, match="line break"):
        await push.post(server.url, {"TTL": "1\r\nX-Evil: 1"}, b"x", timeout=5)
    with pytest.raises(NotSent, match="https"):
        await push.post(f"http://127.0.0.1:{port}/p", HEADERS, b"x", timeout=5)
    await push.aclose()
    await untrusting.aclose()


async def test_the_pool_limit_makes_requests_wait_for_a_connection(serve: Any) -> None:
    release = asyncio.Event()

    async def slow(conn: Conn) -> None:
        while await conn.request() is not None:
            await release.wait()
            await conn.answer(CREATED)

    server = await serve(slow)
    push = client(server.cafile, limit=1)
    first = asyncio.create_task(push.post(server.url, HEADERS, b"1", timeout=5))
    await asyncio.wait_for(server.arrived.wait(), 5)
    with pytest.raises(NotSent, match="no free connection"):  # the only one is busy throughout
        await push.post(server.url, HEADERS, b"2", timeout=0.2)
    waiting = [asyncio.create_task(push.post(server.url, HEADERS, b"3", timeout=5)) for _ in range(2)]
    await asyncio.sleep(0.05)
    release.set()
    answers = [await first, *await asyncio.gather(*waiting)]
    assert [a.status for a in answers] == [201, 201, 201]
    assert push.connections_made == 1 and len(server.requests()) == 3
    await push.aclose()


async def test_an_idle_connection_past_its_expiry_is_replaced(serve: Any) -> None:
    server = await serve(answer_all)
    push = client(server.cafile, idle_expiry=0.05)
    assert (await push.post(server.url, HEADERS, b"1", timeout=5)).status == 201
    await asyncio.sleep(0.1)
    assert (await push.post(server.url, HEADERS, b"2", timeout=5)).status == 201
    assert push.connections_made == 2
    await push.aclose()


async def test_cancelled_request_closes_its_connection(serve: Any) -> None:
    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await release.wait()
        await conn.answer(CREATED)
        await answer_all(conn)

    server = await serve(handler)
    push = client(server.cafile)
    task = asyncio.create_task(push.post(server.url, HEADERS, b"1", timeout=5))
    await asyncio.wait_for(server.arrived.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert (await push.post(server.url, HEADERS, b"2", timeout=5)).status == 201
    assert push.connections_made == 2  # the first one's late answer is never taken for the second
    await push.aclose()


# --- both transports against the strict fake push service ----------------------------------------


@dataclass
class World:
    push: FakePushService
    signer: VapidSigner
    public: str


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    vapid = Vapid()
    vapid.generate_keys()
    public = b64url(
        vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    async with FakePushService(tmp_path / "push") as push:
        yield World(push, VapidSigner(VapidKeys(vapid, public), "mailto:ops@example.com"), public)


def _outcome(status: str, detail: str) -> PushAnswer:
    return PushAnswer(status, detail=detail)


async def _push(
    world: World, kind: str, sub: dict[str, Any], push_hosts: list[str] | None = None
) -> PushAnswer:
    transport = make_transport(
        kind,
        answer=push_answer,
        outcome=_outcome,
        guard=push_guard(push_hosts if push_hosts is not None else ["127.0.0.1"]),
        ssl_context=ssl.create_default_context(cafile=str(world.push.cert_file)),
        user_agent="siar-test",
        limit=4,
    )
    try:
        keys = sub["keys"]
        headers = {
            "Authorization": world.signer.header(world.push.origin),
            "TTL": "60",
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        body = encrypt(json.dumps({"title": "t"}).encode(), keys["p256dh"], keys["auth"])
        answer: PushAnswer = await transport.post(sub["endpoint"], headers, body, 5)
        return answer
    finally:
        await transport.aclose()


@pytest.mark.parametrize("kind", ["lean", "aiohttp", "http2"])
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (None, ("sent", 201, None)),
        ((429, {"Retry-After": "7"}), ("retry", 429, 7.0)),
        ((503, {}), ("retry", 503, None)),
        ((410, {}), ("gone", 410, None)),
        ((413, {}), ("failed", 413, None)),
        ((401, {}), ("retry", 401, None)),  # auth_rejected: the channel's "VAPID rejected"
    ],
)
async def test_both_clients_read_push_answers_alike(
    world: World,
    kind: str,
    script: tuple[int, dict[str, str]] | None,
    expected: tuple[str, int, float | None],
) -> None:
    sub = world.push.new_subscription(world.public)
    if script is not None:
        world.push.script(sub, script)
    answer = await _push(world, kind, sub)
    assert (answer.status, answer.code, answer.retry_after) == expected
    assert answer.auth_rejected == (expected[1] == 401)
    assert len(world.push.delivered(sub)) == (1 if script is None else 0)


@pytest.mark.parametrize("kind", ["lean", "aiohttp", "http2"])
async def test_both_clients_unknown_endpoint_is_gone_and_a_drop_is_uncertain(world: World, kind: str) -> None:
    sub = world.push.new_subscription(world.public)
    unknown = dict(sub, endpoint=f"{world.push.origin}/push/nobody")
    assert (await _push(world, kind, unknown)).status == "gone"  # 404
    world.push.drop(sub)  # delivered, then the connection closes without an answer
    answer = await _push(world, kind, sub)
    assert answer.status == "uncertain" and "may have arrived" in answer.detail
    assert len(world.push.delivered(sub)) == 1


@pytest.mark.parametrize("kind", ["lean", "aiohttp", "http2"])
async def test_both_clients_refuse_an_address_push_hosts_does_not_name(world: World, kind: str) -> None:
    sub = world.push.new_subscription(world.public)
    answer = await _push(world, kind, sub, push_hosts=["fcm.googleapis.com"])
    assert answer.status == "failed" and "loopback" in answer.detail
    assert world.push.requests == []


def test_push_guard_allows_only_the_addresses_push_hosts_names() -> None:
    guard = push_guard(["fcm.googleapis.com", "127.0.0.1", "[::1]", "10.0.0.5"])
    assert guard.allowed_hosts == frozenset({"127.0.0.1", "::1", "10.0.0.5"})
    assert guard.refusal("127.0.0.2") is not None and guard.refusal("10.0.0.5") is None
    assert guard.refusal("8.8.8.8") is None
