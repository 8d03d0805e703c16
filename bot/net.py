"""The one guarded way out: an httpx client that checks every address it connects to.

With a guard, every TCP connection (so every redirect hop) resolves the host name, refuses
the request when ANY resolved address is refused (a name that also points inward is not worth
the risk), and connects to the checked address itself, so a second DNS answer cannot slip in
between check and connect (DNS rebinding). TLS SNI, certificate checks and the Host header
keep the name: httpcore hands the origin's host to `start_tls` apart from the connect call.

Proxies (HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY, as httpx reads them) are honoured:
the proxy's own address is configuration, never refused; the target's name is resolved here
and checked before each request, but the proxy resolves it again itself, so a guarded request
through a proxy is only as safe as that second lookup (operators should make the proxy refuse
private destinations too). The same request-level check applies to an injected `transport`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from bot.addresses import AddressGuard, guard_for_feed, normalize_host

Resolver = Callable[[str], Awaitable[list[str]]]
__all__ = [
    "AddressGuard",
    "BlockedAddress",
    "Resolver",
    "guard_for_feed",
    "guard_for_story",
    "http_client",
    "resolve_host",
]


class BlockedAddress(httpx.TransportError):
    """A request refused by the address guard before any connection was made.

    A TransportError so that code catching `httpx.HTTPError` treats it as a failed request;
    `target` is the URL (or host), `address` the refused IP, `reason` why it is refused.
    """

    def __init__(self, target: str, address: str, reason: str) -> None:
        super().__init__(f"refusing {target}: {address} is {reason}")
        self.target, self.address, self.reason = target, address, reason


async def resolve_host(host: str) -> list[str]:
    """The addresses `host` resolves to (system resolver, off the event loop), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(
    guard: AddressGuard, host: str, resolver: Resolver, timeout: float | None
) -> list[str]:
    """The addresses to connect to for `host`, all allowed by `guard`.

    Raises BlockedAddress (some address is refused), httpcore.ConnectError (the name does not
    resolve) or httpcore.ConnectTimeout (resolving took longer than `timeout`).
    """
    name = normalize_host(host)
    try:
        addresses = [name] if _is_ip(name) else await asyncio.wait_for(resolver(name), timeout)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {name} timed out") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {name}: {exc}") from None
    if not addresses:
        raise httpcore.ConnectError(f"{name} resolves to no address")
    if guard.allows_host(name):
        return addresses
    for address in addresses:
        reason = guard.refusal(address)
        if reason is not None:
            raise BlockedAddress(name, address, reason)
    return addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the guard checked."""

    def __init__(self, guard: AddressGuard, resolver: Resolver) -> None:
        self.guard, self.resolver = guard, resolver
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(self.guard, host, self.resolver, timeout)
        failure: Exception | None = None
        for address in addresses:  # the next one when one is down, as a plain connect would
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress(path, path, "a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncBaseTransport):
    """Routes each request (each redirect hop) through the guard: pinned direct connections,
    or a name check before handing it to a proxy or an injected transport."""

    def __init__(
        self,
        guard: AddressGuard,
        resolver: Resolver,
        transport: httpx.AsyncBaseTransport | None,
        keepalive: bool = True,
        *,
        ssl_context: ssl.SSLContext | None = None,
        http2: bool = False,
        max_connections: int = 100,
        use_env_proxies: bool = True,
    ) -> None:
        self.guard, self.resolver = guard, resolver
        self.custom = transport
        self.direct = httpx.AsyncHTTPTransport()
        # httpx takes no network backend, so its pool is rebuilt around ours (same defaults).
        self.direct._pool = httpcore.AsyncConnectionPool(
            # create_ssl_context honours SSL_CERT_FILE / SSL_CERT_DIR, as httpx's own default does.
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=(max_connections if http2 else min(20, max_connections))
            if keepalive
            else 0,
            keepalive_expiry=5.0,
            network_backend=_PinnedBackend(guard, resolver),
            http1=True,
            http2=http2,
        )
        use_proxies = transport is None and use_env_proxies
        self.proxies = urllib.request.getproxies_environment() if use_proxies else {}
        self.proxy_transports: dict[str, httpx.AsyncHTTPTransport] = {}

    def _route(self, url: httpx.URL) -> tuple[httpx.AsyncBaseTransport, bool]:
        """The transport for `url` and whether the name must be checked here (not on connect)."""
        if self.custom is not None:
            return self.custom, True
        proxy = env_proxy(self.proxies, url.scheme, url.raw_host.decode("ascii"))
        if proxy is None:
            return self.direct, False
        if proxy not in self.proxy_transports:
            self.proxy_transports[proxy] = httpx.AsyncHTTPTransport(proxy=proxy)
        return self.proxy_transports[proxy], True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport, check_name = self._route(request.url)
        try:
            if check_name:
                timeout = request.extensions.get("timeout", {}).get("connect")
                try:
                    host = request.url.raw_host.decode("ascii")  # IDNA-encoded, as DNS wants it
                    await checked_addresses(self.guard, host, self.resolver, timeout)
                except httpcore.ConnectTimeout as exc:
                    raise httpx.ConnectTimeout(str(exc), request=request) from None
                except httpcore.ConnectError as exc:
                    raise httpx.ConnectError(str(exc), request=request) from None
            return await transport.handle_async_request(request)
        except BlockedAddress as exc:  # name the URL (this hop's), not just the host
            raise BlockedAddress(str(request.url), exc.address, exc.reason) from None

    async def aclose(self) -> None:
        for transport in (self.direct, *self.proxy_transports.values(), self.custom):
            if transport is not None:
                await transport.aclose()


def env_proxy(proxies: dict[str, str], scheme: str, host: str) -> str | None:
    """The proxy for a `scheme` URL to `host` from `proxies` (urllib's reading of HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY and NO_PROXY), or None to connect directly."""
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


def http_client(
    *,
    user_agent: str,
    timeout: float,
    guard: AddressGuard | None = None,
    follow_redirects: bool = True,
    max_redirects: int = 8,
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    keepalive: bool = True,
    base_url: str = "",
    ssl_context: ssl.SSLContext | None = None,
    http2: bool = False,
    max_connections: int = 100,
    use_env_proxies: bool = True,
) -> httpx.AsyncClient:
    """An httpx client with siar's defaults; with `guard`, every connection is checked.

    Connects within min(timeout, 10) seconds. Without a guard it is a plain client (env proxies
    as httpx reads them). With one, a refused address raises BlockedAddress (an
    httpx.TransportError naming the URL, the address and why) before any connection is made.
    `resolver` replaces the system resolver (tests map test names to addresses).
    `keepalive=False`: a fresh connection per request (a pooled one the server had closed would
    fail after the request was written, which looks like a lost answer). With a guard:
    `ssl_context` (default: the system CAs), `http2` where the server offers it (needs h2),
    `max_connections`, and `use_env_proxies=False` to ignore HTTP(S)_PROXY.
    """
    if guard is not None:
        transport = _GuardedTransport(
            guard,
            resolver or resolve_host,
            transport,
            keepalive,
            ssl_context=ssl_context,
            http2=http2,
            max_connections=max_connections,
            use_env_proxies=use_env_proxies,
        )
    elif transport is None and not keepalive:
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    return httpx.AsyncClient(
        headers={"User-Agent": user_agent},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        transport=transport,
        base_url=base_url,
    )


def guard_for_story(config: Any, feed_name: str) -> AddressGuard:
    """The guard for URLs a story of feed `feed_name` carries (its image, its page): that feed's
    (see `guard_for_feed`), or one refusing every private address when `config` (a
    bot.config.Config, or None) has no such feed."""
    for feed in getattr(config, "feeds", None) or ():
        if feed.name == feed_name:
            return guard_for_feed(feed.url, bool(getattr(feed, "allow_private", False)))
    return AddressGuard()
