"""Fetching feeds politely: conditional GET, timeouts, a size cap, redirects, Retry-After.

`Fetcher.fetch` never raises for a feed's own trouble; it returns a `FetchResult` whose `error`
says what went wrong, so one bad feed never stops the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import httpx

from bot.http_retry import retry_after_seconds
from bot.net import AddressGuard, BlockedAddress, Resolver, env_proxy, http_client


@dataclass(frozen=True)
class FetchResult:
    """The outcome of one fetch: a body, "not modified", or an error."""

    url: str  # the final URL, after redirects
    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False
    permanent_redirect: str | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    error: str | None = None

    @property
    def body_hash(self) -> str | None:
        return hashlib.sha256(self.body).hexdigest() if self.body is not None else None


class Fetcher:
    """Shares one HTTP connection pool across all feeds.

    A feed's own URL (the operator configured it: no address guard) is fetched with aiohttp,
    a fifth of httpx's CPU per request (benchmarks/README.md, "feed fetches"): most polls are
    an unchanged feed answered 304, where the HTTP client is nearly all the cost. URLs a feed
    controls (article pages, images, hubs: `guard`) and an injected `transport` go through
    httpx and bot.net's address guard. Both paths give the same `FetchResult` for the same
    answer (tests/test_fetch.py runs them side by side).
    """

    FAST = True  # False: every URL through httpx (tests compare the two paths)

    def __init__(
        self,
        user_agent: str,
        timeout: float = 20.0,
        max_bytes: int = 5_000_000,
        base_dir: Path = Path("."),
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.base_dir = base_dir
        self.timeout = timeout
        self.user_agent, self.transport, self.resolver = user_agent, transport, resolver
        self.client = self._new_client(None)
        self.guarded: dict[AddressGuard, httpx.AsyncClient] = {}  # one pool per guard (per feed)
        self.fast = transport is None and self.FAST  # feeds' own URLs through aiohttp (see the class)
        self._session: aiohttp.ClientSession | None = None  # made in the running loop
        self._proxies = urllib.request.getproxies_environment()  # HTTP(S)_PROXY, ALL_PROXY, NO_PROXY
        self._proxy_of: dict[tuple[str, str], str | None] = {}

    def _new_client(self, guard: AddressGuard | None) -> httpx.AsyncClient:
        client = http_client(
            user_agent=self.user_agent,
            timeout=self.timeout,
            guard=guard,
            transport=self.transport,
            resolver=self.resolver,
        )
        client.headers.update(
            {
                "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, "
                "text/xml;q=0.8, */*;q=0.5",
                # Only what _Decoder can inflate under the size cap (no brotli/zstd bombs).
                "Accept-Encoding": "gzip, deflate",
            }
        )
        return client

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.client.aclose()
        for client in self.guarded.values():
            await client.aclose()
        self.guarded.clear()

    async def fetch(
        self,
        url: str,
        etag: str | None = None,
        last_modified: str | None = None,
        timeout: float | None = None,
        accept: str | None = None,
        guard: AddressGuard | None = None,
    ) -> FetchResult:
        """Fetch `url` (http(s), file:// or a local path), conditionally when etag/date given.

        With `guard` (for URLs a feed controls: article pages, images) only http(s) is fetched,
        and every connection, redirects included, goes to addresses the guard allows."""
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            if guard is not None and guard not in self.guarded:
                self.guarded[guard] = self._new_client(guard)
            if guard is None and self.fast:
                return await self._fetch_fast(url, etag, last_modified, timeout, accept)
            client = self.client if guard is None else self.guarded[guard]
            return await self._fetch_http(client, url, etag, last_modified, timeout, accept)
        if guard is not None:  # a feed's link must never read the daemon's own files
            return FetchResult(url, error=f"refusing {url[:200]}: not an http(s) URL")
        return await self._fetch_file(url)

    async def _fetch_http(
        self,
        client: httpx.AsyncClient,
        url: str,
        etag: str | None,
        last_modified: str | None,
        timeout: float | None,
        accept: str | None,
    ) -> FetchResult:
        headers = _conditional(etag, last_modified, accept)
        try:
            async with asyncio.timeout((timeout or self.timeout) * 2):
                async with client.stream(
                    "GET", url, headers=headers, timeout=timeout or httpx.USE_CLIENT_DEFAULT
                ) as response:
                    return await self._read(url, response)
        except TimeoutError:
            return FetchResult(url, error=f"timed out fetching {url}")
        except httpx.TooManyRedirects:
            return FetchResult(url, error=f"too many redirects from {url}")
        except httpx.TimeoutException:
            return FetchResult(url, error=f"timed out fetching {url}")
        except BlockedAddress as exc:
            return FetchResult(url, error=str(exc))
        except httpx.HTTPError as exc:
            return FetchResult(url, error=f"cannot fetch {url}: {_reason(exc)}")
        except (httpx.InvalidURL, ValueError, UnicodeError) as exc:  # a malformed link or host name
            return FetchResult(url, error=f"cannot fetch {url}: invalid URL ({type(exc).__name__})")

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={k: v for k, v in self.client.headers.items() if k.lower() != "host"},
                connector=aiohttp.TCPConnector(limit=100, limit_per_host=20, ttl_dns_cache=60),
                auto_decompress=False,  # inflated here under the size cap (_Decoder)
                # Proxies are chosen here (_proxy_for): aiohttp's trust_env would look them up
                # in a worker thread on every request, a third of a 304's CPU.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _proxy_for(self, url: str) -> str | None:
        """The proxy for `url` from the environment (as at start), chosen as httpx chooses it."""
        parts = urlsplit(url)
        key = (parts.scheme.lower(), parts.hostname or "")
        if key not in self._proxy_of:
            self._proxy_of[key] = env_proxy(self._proxies, *key)
        return self._proxy_of[key]

    async def _fetch_fast(
        self, url: str, etag: str | None, last_modified: str | None, timeout: float | None, accept: str | None
    ) -> FetchResult:
        headers = _conditional(etag, last_modified, accept)
        seconds = timeout or self.timeout
        limits = aiohttp.ClientTimeout(total=None, connect=min(seconds, 10.0), sock_read=seconds)
        try:
            async with asyncio.timeout(seconds * 2):
                async with self._session_now().get(
                    url,
                    headers=headers,
                    timeout=limits,
                    max_redirects=8,
                    allow_redirects=True,
                    proxy=self._proxy_for(url),
                ) as response:
                    return await self._read_fast(url, response)
        except TimeoutError:  # asyncio's and aiohttp's (ServerTimeoutError is one)
            return FetchResult(url, error=f"timed out fetching {url}")
        except aiohttp.TooManyRedirects:
            return FetchResult(url, error=f"too many redirects from {url}")
        except aiohttp.InvalidURL:
            return FetchResult(url, error=f"cannot fetch {url}: invalid URL (InvalidURL)")
        except aiohttp.ClientConnectorCertificateError as exc:
            return FetchResult(
                url, error=f"cannot fetch {url}: TLS certificate refused ({exc.certificate_error})"
            )
        except aiohttp.ClientConnectorDNSError as exc:
            return FetchResult(url, error=f"cannot fetch {url}: cannot resolve the name ({exc.os_error})")
        except aiohttp.ClientConnectorError as exc:
            return FetchResult(url, error=f"cannot fetch {url}: {_reason(exc.os_error)}")
        except aiohttp.ClientError as exc:
            return FetchResult(url, error=f"cannot fetch {url}: {_reason(exc)}")
        except (ValueError, UnicodeError) as exc:  # a malformed link or host name
            return FetchResult(url, error=f"cannot fetch {url}: invalid URL ({type(exc).__name__})")

    async def _read_fast(self, url: str, response: aiohttp.ClientResponse) -> FetchResult:
        permanent = _permanent([hop.status for hop in response.history], str(response.url))
        headers: dict[str, str] = {}
        for key, value in response.headers.items():  # repeated ones joined, as httpx does
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return await self._answer(
            url,
            str(response.url),
            response.status,
            response.reason or "",
            headers,
            permanent,
            response.content.iter_any(),
        )

    async def _read(self, url: str, response: httpx.Response) -> FetchResult:
        permanent = _permanent([hop.status_code for hop in response.history], str(response.url))
        headers = {k.lower(): v for k, v in response.headers.items()}
        return await self._answer(
            url,
            str(response.url),
            response.status_code,
            response.reason_phrase,
            headers,
            permanent,
            response.aiter_raw(),
        )

    async def _answer(
        self,
        url: str,
        final: str,
        status: int,
        reason: str,
        headers: dict[str, str],
        permanent: str | None,
        raw: AsyncIterator[bytes],
    ) -> FetchResult:
        """The result of an answer: `headers` lower-cased, `raw` the body as sent (either
        client's), read here only when it is wanted, and never past the size cap."""
        retry_after = retry_after_seconds(headers.get("retry-after"), datetime.now(UTC))
        base = FetchResult(
            final,
            status=status,
            headers=headers,
            permanent_redirect=permanent,
            retry_after=retry_after,
            etag=headers.get("etag"),
            last_modified=headers.get("last-modified"),
        )
        if status == 304:
            # A 304 has no body, but a response closed unread closes its connection too: read
            # the nothing, so the next poll of this server reuses the connection (a new TCP
            # connection per unchanged poll was most of a 304's CPU).
            async for _ in raw:
                break
            return replace(base, not_modified=True)
        if status >= 400:
            return replace(base, error=f"HTTP {status} {reason or 'error'} from {url}")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return replace(base, error=f"{url} is {declared} bytes, over the {self.max_bytes} cap")
        try:
            decoder = _Decoder(headers.get("content-encoding", ""), self.max_bytes)
        except ValueError as exc:
            return replace(base, error=f"{url}: {exc}")
        chunks, size = [], 0
        try:
            # Raw bytes, inflated here under the cap: a client would inflate a whole chunk at once.
            async for data in raw:
                chunk = decoder.feed(data)
                size += len(chunk)
                chunks.append(chunk)
            chunks.append(decoder.flush())
        except _TooBig:
            return replace(base, error=f"{url} is over the {self.max_bytes}-byte cap")
        except zlib.error as exc:
            return replace(base, error=f"{url}: broken compressed body ({exc})")
        body = b"".join(chunks)
        if not body:  # a CMS glitch, not a feed without news: never a successful poll
            return replace(base, error=f"empty response from {url}")
        return replace(base, body=body)

    async def _fetch_file(self, url: str) -> FetchResult:
        parts = urlsplit(url)
        raw = unquote(parts.path) if parts.scheme.lower() == "file" else url
        path = self.base_dir / Path(raw)  # an absolute `raw` replaces base_dir
        try:
            body = await asyncio.to_thread(_read_capped, path, self.max_bytes)
        except _TooBig as exc:
            return FetchResult(url, error=f"{path} is {exc.args[0]} bytes, over the {self.max_bytes} cap")
        except OSError as exc:
            return FetchResult(url, error=f"cannot read {path}: {exc.strerror or exc}")
        return FetchResult(path.as_uri(), status=200, body=body)


def _conditional(etag: str | None, last_modified: str | None, accept: str | None) -> dict[str, str]:
    """The request headers of a conditional GET (and an `Accept` of the caller's)."""
    headers: dict[str, str] = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    if accept:
        headers["Accept"] = accept
    return headers


def _permanent(hops: list[int], final: str) -> str | None:
    """`final` when the redirects (`hops`, their statuses) were all permanent (301/308): only
    an unbroken chain of permanent moves says the feed moved for good."""
    return final if hops and all(status in (301, 308) for status in hops) else None


class _TooBig(Exception):
    pass


class _Decoder:
    """Inflates a gzip/deflate body chunk by chunk, never producing more than `cap` bytes."""

    def __init__(self, encoding: str, cap: int) -> None:
        encoding = encoding.strip().lower()
        self.cap, self.size = cap, 0
        self.inflater: Any = None
        if encoding in ("gzip", "x-gzip"):
            self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.inflater = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise ValueError(f"unsupported Content-Encoding {encoding!r}")

    def feed(self, data: bytes) -> bytes:
        if self.inflater is None:
            out = data
        else:
            out = self.inflater.decompress(data, self.cap - self.size + 1)
            if self.inflater.unconsumed_tail:
                raise _TooBig(self.size + len(out))
        self.size += len(out)
        if self.size > self.cap:
            raise _TooBig(self.size)
        return out

    def flush(self) -> bytes:
        if self.inflater is None:
            return b""
        out: bytes = self.inflater.flush()  # only what is buffered: the tail was consumed
        self.size += len(out)
        if self.size > self.cap:
            raise _TooBig(self.size)
        return out


def _read_capped(path: Path, cap: int) -> bytes:
    size = path.stat().st_size
    if size > cap:
        raise _TooBig(size)
    return path.read_bytes()


def _reason(exc: BaseException) -> str:
    """What went wrong, in words: anyio's happy eyeballs hides a refused connection behind "All
    connection attempts failed"; the first cause in the chain that says more is shown too."""
    text = f"{type(exc).__name__}: {exc}"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return f"connection refused ({text})"
        seen = seen.__cause__ or seen.__context__
    return text
