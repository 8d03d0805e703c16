"""bot.net / bot.addresses / bot.http_retry: the address guard, the guarded client, Retry-After,
and "did the request leave?" with real httpx and aiohttp errors against local servers."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import httpx
import pytest

from bot.addresses import AddressGuard, guard_for_feed
from bot.backoff import MAX_RETRY_AFTER
from bot.config import Config
from bot.http_retry import (
    aiohttp_request_may_have_left,
    request_may_have_left,
    retry_after_seconds,
)
from bot.net import BlockedAddress, guard_for_story, http_client
from tests.feedserver import FeedServer, Route

# --- the guard ------------------------------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("169.254.169.254", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.10", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.200", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.0.8", "IETF"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("::ffff:127.0.0.1", "loopback address (IPv4-mapped 127.0.0.1)"),
    ("::ffff:a00:1", "private address (IPv4-mapped 10.0.0.1)"),
    ("::ffff:169.254.169.254", "link-local address (IPv4-mapped"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("::8.8.8.8", "IPv4-compatible"),
    ("2002:7f00:1::1", "loopback address (6to4 for 127.0.0.1)"),
    ("2002:a9fe:a9fe::", "link-local address (6to4 for 169.254.169.254)"),
    ("64:ff9b::7f00:1", "loopback address (NAT64 for 127.0.0.1)"),
    ("64:ff9b::a00:1", "private address (NAT64 for 10.0.0.1)"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("100::1", "discard-only"),
    ("4000::1", "reserved"),
]
ALLOWED = [
    "8.8.8.8",
    "93.184.216.34",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
    "172.32.0.1",
    "100.128.0.1",
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_guard_refuses_special_addresses_with_a_reason(address: str, why: str) -> None:
    reason = AddressGuard().refusal(address)
    assert reason is not None and why in reason, (address, reason)


@pytest.mark.parametrize("address", ALLOWED)
def test_guard_allows_public_addresses(address: str) -> None:
    assert AddressGuard().refusal(address) is None


def test_allow_private_opens_intranets_but_not_metadata_or_tricks() -> None:
    guard = AddressGuard(allow_private=True)
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.5",
        "100.64.1.1",
        "::1",
        "fd00::5",
        "::ffff:10.0.0.1",
        "2002:c0a8:1::",
    ):
        assert guard.refusal(address) is None, address
    for address in (
        "169.254.169.254",
        "fe80::1",
        "::ffff:169.254.169.254",
        "224.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "2001::1",
        "::127.0.0.1",
    ):
        assert guard.refusal(address) is not None, address


def test_guard_for_feed_allows_the_feeds_own_host_only() -> None:
    guard = guard_for_feed("http://10.0.0.7:8080/feed.xml", allow_private=False)
    assert guard.refusal("10.0.0.7") is None and guard.refusal("10.0.0.8") is not None
    named = guard_for_feed("https://Intranet.Example.TEST./rss", allow_private=False)
    assert named.allows_host("intranet.example.test") and not named.allows_host("other.example.test")
    v6 = guard_for_feed("http://[FD00::0001]:81/rss", allow_private=False)
    assert v6.refusal("fd00::1") is None and v6.refusal("fd00::2") is not None
    for local in ("file:///srv/feeds/a.xml", "feeds/a.xml", "/srv/a.xml"):
        guard = guard_for_feed(local, allow_private=False)
        assert guard.allowed_hosts == frozenset() and guard.refusal("127.0.0.1") is not None
    assert guard_for_feed("file:///a.xml", allow_private=True).refusal("10.0.0.1") is None


def test_guard_for_story_uses_the_feed_else_refuses_all_private() -> None:
    config = Config.model_validate(
        {
            "feeds": [
                {"name": "intl", "url": "http://192.168.7.7/rss"},
                {"name": "lan", "url": "file:///srv/lan.xml", "allow_private": True},
            ]
        }
    )
    assert guard_for_story(config, "intl").refusal("192.168.7.7") is None
    assert guard_for_story(config, "intl").refusal("192.168.7.8") is not None
    assert guard_for_story(config, "lan").refusal("192.168.7.8") is None
    assert guard_for_story(config, "other").refusal("192.168.7.7") is not None
    assert guard_for_story(None, "intl") == AddressGuard()


# --- the guarded client ---------------------------------------------------------------------


def resolver_for(
    table: dict[str, list[str]], calls: list[str] | None = None
) -> Callable[[str], Awaitable[list[str]]]:
    async def resolve(host: str) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


async def test_guarded_client_refuses_private_names_and_literals(feed_server: FeedServer) -> None:
    feed_server.routes["/page"] = Route(body=b"secret")
    port = feed_server.httpd.server_address[1]
    async with http_client(user_agent="t", timeout=5, guard=AddressGuard()) as client:
        for url, address in [
            (f"http://127.0.0.1:{port}/page", "127.0.0.1"),
            (f"http://localhost:{port}/page", None),
            (f"http://[::1]:{port}/page", "::1"),
            (f"http://[::ffff:127.0.0.1]:{port}/page", "::ffff:7f00:1"),
        ]:
            with pytest.raises(BlockedAddress) as caught:
                await client.get(url)
            assert caught.value.target == url and "loopback" in caught.value.reason
            assert str(caught.value).startswith(f"refusing {url}: ")
            if address:
                assert caught.value.address == address
    assert feed_server.requests == []
    async with http_client(user_agent="t", timeout=5) as plain:  # the control: it is reachable
        assert (await plain.get(f"http://127.0.0.1:{port}/page")).content == b"secret"


async def test_guarded_client_connects_to_the_checked_address_and_keeps_the_name(
    feed_server: FeedServer,
) -> None:
    feed_server.routes["/page"] = Route(body=b"hello")
    port = feed_server.httpd.server_address[1]
    calls: list[str] = []
    guard = AddressGuard(allowed_hosts=frozenset({"news.example.test"}))
    resolver = resolver_for({"news.example.test": ["127.0.0.1"]}, calls)
    async with http_client(user_agent="t", timeout=5, guard=guard, resolver=resolver) as client:
        response = await client.get(f"http://news.example.test:{port}/page")
    # the name exists only in our resolver: the connection went to the address it checked
    assert response.content == b"hello" and calls == ["news.example.test"]
    assert feed_server.requests[0][1]["host"] == f"news.example.test:{port}"


async def test_a_name_with_any_refused_address_is_refused() -> None:
    resolver = resolver_for({"mixed.example.test": ["93.184.216.34", "10.0.0.1"]})
    async with http_client(user_agent="t", timeout=5, guard=AddressGuard(), resolver=resolver) as client:
        with pytest.raises(BlockedAddress) as caught:
            await client.get("http://mixed.example.test/")
    assert caught.value.address == "10.0.0.1" and caught.value.reason == "a private address"


async def test_unresolvable_name_is_a_connect_error() -> None:
    async with http_client(
        user_agent="t", timeout=5, guard=AddressGuard(), resolver=resolver_for({})
    ) as client:
        with pytest.raises(httpx.ConnectError, match=r"cannot resolve nowhere\.example\.test"):
            await client.get("http://nowhere.example.test/")


async def test_redirect_to_a_refused_address_is_refused_at_that_hop(feed_server: FeedServer) -> None:
    port = feed_server.httpd.server_address[1]
    feed_server.routes["/secret"] = Route(body=b"secret")
    feed_server.routes["/go"] = Route(status=302, redirect_to=f"http://127.0.0.1:{port}/secret")
    guard = AddressGuard(allowed_hosts=frozenset({"news.example.test"}))
    resolver = resolver_for({"news.example.test": ["127.0.0.1"]})
    async with http_client(user_agent="t", timeout=5, guard=guard, resolver=resolver) as client:
        with pytest.raises(BlockedAddress) as caught:
            await client.get(f"http://news.example.test:{port}/go")
    assert caught.value.target == f"http://127.0.0.1:{port}/secret"
    assert [path for path, _ in feed_server.requests] == ["/go"]


@asynccontextmanager
async def fake_proxy(answer: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A forward proxy on 127.0.0.1 that answers every request itself (never connects out)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0])
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_env_proxy_is_used_its_address_allowed_and_targets_still_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    resolver = resolver_for({"public.example.test": ["93.184.216.34"], "inward.example.test": ["10.0.0.1"]})
    async with fake_proxy(b"via proxy") as (proxy_url, seen):
        monkeypatch.setenv("http_proxy", proxy_url)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        async with http_client(user_agent="t", timeout=5, guard=AddressGuard(), resolver=resolver) as client:
            response = await client.get("http://public.example.test/story")
            with pytest.raises(BlockedAddress, match=r"10\.0\.0\.1 is a private address"):
                await client.get("http://inward.example.test/")
    assert response.content == b"via proxy"
    assert seen == [b"GET http://public.example.test/story HTTP/1.1"]


# --- Retry-After ----------------------------------------------------------------------------

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("1_000", None),
        ("0x10", None),
        (True, None),
        (float("nan"), None),
        ([], None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        (-3, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("1e309", MAX_RETRY_AFTER),
        ("9" * 5000, MAX_RETRY_AFTER),
        (10**12, MAX_RETRY_AFTER),
        (10**400, MAX_RETRY_AFTER),
        (float("inf"), MAX_RETRY_AFTER),
        (float("-inf"), 0.0),
        ("86401", MAX_RETRY_AFTER),
        ("Wed, 01 May 2024 12:02:00 GMT", 120.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
        ("Wed, 01 May 2024 12:00:30", 30.0),
        ("Wed, 01 May 2024 14:00:30 +0200", 30.0),
        ("Mon, 99 Foo 2024 99:99:99 GMT", None),
        ("Thu, 01 Jan 0001 00:00:00 GMT", 0.0),
    ],
)
def test_retry_after_table(value: object, expected: float | None) -> None:
    assert retry_after_seconds(value, NOW) == expected  # type: ignore[arg-type]


def test_retry_after_cap_naive_now_and_the_real_clock() -> None:
    assert retry_after_seconds("600", NOW, cap=300) == 300
    assert retry_after_seconds("Wed, 01 May 2024 12:01:00 GMT", NOW.replace(tzinfo=None)) == 60.0
    soon = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60), usegmt=True)
    assert 55 <= retry_after_seconds(soon) <= 60  # type: ignore[operator]
    assert retry_after_seconds("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_RETRY_AFTER


# --- did the request leave? -----------------------------------------------------------------


@asynccontextmanager
async def raw_server(behaviour: str) -> AsyncIterator[int]:
    """127.0.0.1 server: "close" closes after reading the request head, "hang" never answers."""
    handlers: set[asyncio.Task[object]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if behaviour == "hang":
                await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await server.wait_closed()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def httpx_error(url: str, **kwargs: object) -> BaseException:
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as client:
        try:
            await client.post(url, content=b"x", **kwargs)  # type: ignore[arg-type]
        except BaseException as exc:  # the error is the result
            return exc
    raise AssertionError(f"{url} answered")


async def test_httpx_errors_before_sending_did_not_leave() -> None:
    refused = await httpx_error(f"http://127.0.0.1:{free_port()}/")
    assert isinstance(refused, httpx.ConnectError) and not request_may_have_left(refused)
    bad = await httpx_error("ftp://127.0.0.1/")
    assert isinstance(bad, httpx.UnsupportedProtocol) and not request_may_have_left(bad)
    assert not request_may_have_left(BlockedAddress("http://10.0.0.1/", "10.0.0.1", "a private address"))
    wrapped = RuntimeError("httpx.ConnectError: ...")  # as python-telegram-bot wraps it
    wrapped.__cause__ = refused
    assert not request_may_have_left(wrapped)


async def test_httpx_errors_after_sending_may_have_left() -> None:
    async with raw_server("close") as port:
        closed = await httpx_error(f"http://127.0.0.1:{port}/")
    assert isinstance(closed, httpx.RemoteProtocolError) and request_may_have_left(closed)
    async with raw_server("hang") as port:
        slow = await httpx_error(f"http://127.0.0.1:{port}/")
        assert isinstance(slow, httpx.ReadTimeout) and request_may_have_left(slow)
        # a pool timeout: the only connection is busy with a request that never ends
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1), timeout=httpx.Timeout(5, pool=0.3)
        ) as client:
            first = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/"))
            await asyncio.sleep(0.2)
            with pytest.raises(httpx.PoolTimeout) as pool:
                await client.get(f"http://127.0.0.1:{port}/")
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
    assert not request_may_have_left(pool.value)
    try:  # an error raised while handling a refused connect says nothing about the new request
        try:
            raise httpx.ConnectError("first attempt")
        except httpx.ConnectError:
            raise httpx.ReadError("second attempt") from None
    except httpx.ReadError as exc:
        assert request_may_have_left(exc)
    assert request_may_have_left(RuntimeError("unknown")) and request_may_have_left(TimeoutError())


async def aiohttp_error(url: str, **timeout: float) -> BaseException:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(**timeout)) as session:
        try:
            async with session.post(url, data=b"x") as response:
                await response.read()
        except BaseException as exc:  # the error is the result
            return exc
    raise AssertionError(f"{url} answered")


async def test_aiohttp_errors() -> None:
    refused = await aiohttp_error(f"http://127.0.0.1:{free_port()}/", total=2)
    assert isinstance(refused, aiohttp.ClientConnectorError) and not aiohttp_request_may_have_left(refused)
    async with raw_server("close") as port:
        closed = await aiohttp_error(f"http://127.0.0.1:{port}/", total=2)
    assert isinstance(closed, aiohttp.ServerDisconnectedError) and aiohttp_request_may_have_left(closed)
    async with raw_server("hang") as port:
        slow = await aiohttp_error(f"http://127.0.0.1:{port}/", sock_read=0.3)
        assert isinstance(slow, aiohttp.SocketTimeoutError) and aiohttp_request_may_have_left(slow)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            first = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/"))
            await asyncio.sleep(0.2)
            with pytest.raises(aiohttp.ConnectionTimeoutError) as waiting:
                await session.get(f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(connect=0.3))
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
    assert not aiohttp_request_may_have_left(waiting.value)
    assert not aiohttp_request_may_have_left(aiohttp.InvalidUrlClientError("nope"))
    assert aiohttp_request_may_have_left(aiohttp.InvalidUrlRedirectClientError("nope", "bad location"))
    assert aiohttp_request_may_have_left(TimeoutError()) and aiohttp_request_may_have_left(ValueError())


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` (and its key), signed by itself: the only CA the client trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_verifies_the_name_while_connecting_to_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path, "news.example.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read by httpx.create_ssl_context
    guard = AddressGuard(allowed_hosts=frozenset({"news.example.test", "other.example.test"}))
    resolver = resolver_for({"news.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]})
    try:
        async with http_client(user_agent="t", timeout=5, guard=guard, resolver=resolver) as client:
            response = await client.get(f"https://news.example.test:{port}/")
            # the same address under another name: the certificate does not match, so it fails
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.get(f"https://other.example.test:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert response.content == b"ok" and seen_sni == ["news.example.test", "other.example.test"]
