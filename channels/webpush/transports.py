"""The ways a push request leaves: the lean HTTP/1.1 client (default), aiohttp, or httpx with
HTTP/2. Each answers a `PushAnswer` with the same meaning:

- `sent`, `gone`, `failed`, `retry` from the push service's status (`push_answer`);
- `retry` when the request certainly did not leave (DNS, refused, TLS, connect timeout);
- `uncertain` when it was written and no answer came (reset, read timeout): never repeated;
- `failed` when the endpoint's host resolves to an address siar never contacts (loopback,
  private, link-local, … unless `push_hosts` lists that address itself): every connection is
  checked with the address guard of bot/net.py, on the address actually connected to.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.addresses import AddressGuard, normalize_host
from bot.channel import ChannelUnavailable
from bot.http_retry import request_may_have_left
from bot.net import BlockedAddress, Resolver, checked_addresses, http_client, resolve_host
from channels.webpush.http1 import AnswerLost, NotSent, PushClient, Refused

__all__ = ["PushTransport", "make_transport", "push_guard"]


AnswerFactory = Callable[[int, str | None, str], Any]


class PushTransport(Protocol):
    """POSTs one encrypted push; answers a PushAnswer (never raises for network trouble)."""

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> Any: ...

    async def aclose(self) -> None: ...


def push_guard(push_hosts: list[str]) -> AddressGuard:
    """The address guard for push endpoints: public addresses, plus the IP addresses that
    `push_hosts` names itself (a private push service, the tests' 127.0.0.1)."""
    literal = set()
    for host in push_hosts:
        try:
            literal.add(str(ipaddress.ip_address(normalize_host(host))))
        except ValueError:
            continue
    return AddressGuard(allowed_hosts=frozenset(literal))


def make_transport(
    kind: str,
    *,
    answer: AnswerFactory,
    outcome: Callable[[str, str], Any],
    guard: AddressGuard,
    ssl_context: ssl.SSLContext,
    user_agent: str,
    limit: int,
    resolver: Resolver | None = None,
) -> PushTransport:
    """`kind` "lean" (default), "aiohttp" or "http2" (httpx + h2). `answer(status,
    retry_after, text)` makes the PushAnswer of an HTTP answer, `outcome(status, detail)` one
    without (retry, uncertain, failed)."""
    if kind == "lean":
        return _Lean(answer, outcome, guard, ssl_context, user_agent, limit, resolver)
    if kind == "aiohttp":
        return _Aiohttp(answer, outcome, guard, ssl_context, user_agent, limit, resolver)
    if kind == "http2":
        return _Httpx(answer, outcome, guard, ssl_context, user_agent, limit, resolver)
    raise ValueError(f"unknown push client {kind!r}")


class _Lean:
    def __init__(
        self,
        answer: AnswerFactory,
        outcome: Callable[[str, str], Any],
        guard: AddressGuard,
        ssl_context: ssl.SSLContext,
        user_agent: str,
        limit: int,
        resolver: Resolver | None,
    ) -> None:
        self.answer, self.outcome = answer, outcome
        self.client = PushClient(
            ssl_context=ssl_context, user_agent=user_agent, guard=guard, resolver=resolver, limit=limit
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> Any:
        try:
            got = await self.client.post(url, headers, body, timeout)
        except Refused as exc:
            return self.outcome("failed", str(exc))
        except NotSent as exc:
            return self.outcome("retry", f"network error: {exc}")
        except AnswerLost as exc:
            return self.outcome("uncertain", f"no answer from the push service ({exc}); it may have arrived")
        return self.answer(got.status, got.retry_after, got.text)

    async def aclose(self) -> None:
        await self.client.aclose()


class _GuardedResolver(AbstractResolver):
    """aiohttp connects to the addresses its resolver returns: these are checked ones."""

    def __init__(self, guard: AddressGuard, resolver: Resolver) -> None:
        self.guard, self.resolver = guard, resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await checked_addresses(self.guard, host, self.resolver, None)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class _Aiohttp:
    """aiohttp's HTTP/1.1 keep-alive client (the lean client's predecessor, kept as a fallback)."""

    def __init__(
        self,
        answer: AnswerFactory,
        outcome: Callable[[str, str], Any],
        guard: AddressGuard,
        ssl_context: ssl.SSLContext,
        user_agent: str,
        limit: int,
        resolver: Resolver | None,
    ) -> None:
        self.answer, self.outcome, self.guard = answer, outcome, guard
        connector = aiohttp.TCPConnector(
            limit=limit, ssl=ssl_context, resolver=_GuardedResolver(guard, resolver or resolve_host)
        )
        self.session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": user_agent})

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> Any:
        host = normalize_host(urlsplit(url).hostname or "")
        refusal = _literal_refusal(self.guard, host)  # aiohttp asks no resolver for an IP literal
        if refusal:
            return self.outcome("failed", f"refusing {host}: it is {refusal}")
        try:
            async with self.session.post(
                url,
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                text = (await response.content.read(300)).decode("utf-8", "replace")
                return self.answer(response.status, response.headers.get("Retry-After"), text)
        except BlockedAddress as exc:
            return self.outcome("failed", str(exc))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return self.outcome("retry", f"network error: {type(exc).__name__}")  # nothing left
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The push went out and no answer came (a reset, a read timeout): it may have been
            # delivered, so it is never pushed again automatically (`siar resend` does).
            why = f"no answer from the push service ({type(exc).__name__}); it may have arrived"
            return self.outcome("uncertain", why)

    async def aclose(self) -> None:
        await self.session.close()


def _literal_refusal(guard: AddressGuard, host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if guard.allows_host(host) else guard.refusal(host)


class _Httpx:
    """httpx with HTTP/2 where the push service offers it (ALPN), else 1.1; guarded connects."""

    def __init__(
        self,
        answer: AnswerFactory,
        outcome: Callable[[str, str], Any],
        guard: AddressGuard,
        ssl_context: ssl.SSLContext,
        user_agent: str,
        limit: int,
        resolver: Resolver | None,
    ) -> None:
        try:
            import h2  # noqa: F401
        except ImportError as exc:
            raise ChannelUnavailable(
                "http2 = true needs the h2 package (pip install 'httpx[http2]')"
            ) from exc
        self.answer, self.outcome = answer, outcome
        self.client = http_client(
            user_agent=user_agent,
            timeout=10.0,
            guard=guard,
            follow_redirects=False,
            resolver=resolver,
            ssl_context=ssl_context,
            http2=True,
            max_connections=limit,
            use_env_proxies=False,
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> Any:
        import httpx

        try:
            response = await self.client.post(url, content=body, headers=dict(headers), timeout=timeout)
        except BlockedAddress as exc:
            return self.outcome("failed", str(exc))
        except httpx.HTTPError as exc:
            if not request_may_have_left(exc):
                return self.outcome("retry", f"network error: {type(exc).__name__}")
            return self.outcome("uncertain", f"network error: {type(exc).__name__}; may have arrived")
        return self.answer(response.status_code, response.headers.get("Retry-After"), response.text[:300])

    async def aclose(self) -> None:
        await self.client.aclose()
