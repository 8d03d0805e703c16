"""A lean keep-alive HTTP/1.1 client for push requests: https POSTs of a few kilobytes.

Why not aiohttp or httpx: at a million pushes per story their per-request machinery (URL
objects, header multidicts, stream readers, tracing hooks) costs more CPU than the encryption;
this client writes one request per connection at a time from a prepared head and parses the
answer with a few `find`s (benchmarks/README.md, "web push", measures the two side by side).

Guarantees the channel relies on (tests/test_webpush_client.py):

- Every new connection resolves the host, refuses it when ANY address is refused by the
  `AddressGuard` (bot.addresses: loopback, private, link-local, … unless listed) and connects
  to the checked address itself, with TLS SNI and certificate check on the name (bot/net.py's
  rule for feed-controlled URLs, as endpoints come from browsers).
- The answer says what happened to the request: `NotSent` (nothing left: DNS, refused, TLS,
  guard, the pool full until the timeout), `AnswerLost` (it was written and no complete answer
  came: reset, timeout, garbage; it may have arrived), or an `Answer`.
- A pooled connection the server closed while idle is never written to (its EOF was seen);
  one idle longer than `idle_expiry` is closed rather than reused, since a server that closes
  it at the moment the request is written would make that push uncertain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import monotonic
from urllib.parse import urlsplit

import httpcore

from bot.addresses import AddressGuard
from bot.net import BlockedAddress, Resolver, checked_addresses, resolve_host

MAX_HEAD = 64 * 1024  # an answer's status line and headers
MAX_BODY = 64 * 1024  # read further than this and the connection is closed instead of reused
KEEP_TEXT = 300  # of an answer's body, for the log


class NotSent(Exception):
    """The request certainly did not leave (no byte of it was written)."""


class AnswerLost(Exception):
    """The request was written, and no complete answer came: it may have been acted on."""


class Refused(NotSent):
    """The address guard refused the endpoint's host (nothing was sent)."""


@dataclass(frozen=True)
class Answer:
    """A push service's answer: status, the Retry-After header, the start of the body."""

    status: int
    retry_after: str | None = None
    text: str = ""


@dataclass(frozen=True)
class _Origin:
    key: str  # "host:port", the pool's key
    host: str  # as in the URL (lower case; IPv6 without brackets)
    port: int
    host_header: bytes


class _Connection(asyncio.Protocol):
    """One TLS connection, and the parse state of the answer it waits for: each `_step_*`
    consumes what it can from the buffer and returns True when the next step may go on."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.idle_since = monotonic()
        self._reset()

    def _reset(self) -> None:
        self.step: Callable[[], bool] = self._step_head
        self.status = 0
        self.retry_after: str | None = None
        self.keep_alive = True
        self.remaining = 0  # body or chunk bytes still to come
        self.body_read = 0
        self.text = bytearray()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():  # nothing asked: the server is confused
            self._close()
            return
        self.buffer += data
        try:
            while self.step():
                pass
        except ValueError as exc:
            self._fail(AnswerLost(f"unreadable answer: {exc}"))

    def eof_received(self) -> bool:
        self.closed = True
        if self.step == self._step_until_close and self.waiter is not None and not self.waiter.done():
            self._done()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.step == self._step_until_close:
                self._done()
            else:
                why = f"{type(exc).__name__}: {exc}" if exc else "the connection was closed"
                self._fail(AnswerLost(f"no answer ({why})"))

    # requests

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._reset()
        self.buffer.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def usable(self, now: float, expiry: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < expiry
        )

    def time_out(self, why: str) -> None:
        self._fail(AnswerLost(why))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        self.abort()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _done(self) -> bool:
        if self.buffer:  # more than one answer to one request: do not trust the connection
            self.keep_alive = False
        if not self.keep_alive:
            self._close()
        assert self.waiter is not None
        self.step = self._step_finished
        self.waiter.set_result(
            Answer(self.status, self.retry_after, self.text[:KEEP_TEXT].decode("utf-8", "replace"))
        )
        return False

    def _take(self, n: int) -> None:
        """Consume n body bytes from the buffer, keeping the first KEEP_TEXT."""
        if len(self.text) < KEEP_TEXT:
            self.text += self.buffer[: min(n, KEEP_TEXT - len(self.text))]
        del self.buffer[:n]
        self.body_read += n
        if self.body_read > MAX_BODY:  # enough: the status is known, the rest is not read
            self.keep_alive = False

    # the answer, step by step

    def _step_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ValueError("headers too long")
            return False
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
            raise ValueError("not an HTTP/1.x status line")
        status = int(parts[1])
        if not 100 <= status <= 599 or status == 101:
            raise ValueError(f"status {status}")
        if status < 200:
            return True  # an interim answer (100 Continue, 103): the real one follows
        self.status = status
        self.keep_alive = parts[0] == b"HTTP/1.1"
        length, chunked = self._headers(lines[1:])
        if status in (204, 304):
            length, chunked = 0, False
        if chunked:
            self.step = self._step_chunk_size
        elif length is not None:
            self.remaining, self.step = length, self._step_body
        else:
            self.keep_alive, self.step = False, self._step_until_close
        return True

    def _headers(self, lines: list[bytes]) -> tuple[int | None, bool]:
        """Reads the headers that matter; (Content-Length, chunked)."""
        length: int | None = None
        chunked = False
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError("a header line without a colon")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise ValueError("bad Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                if not value.lower().endswith(b"chunked"):
                    raise ValueError("a transfer coding other than chunked")
                chunked = True
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                self.keep_alive = b"close" not in tokens and (self.keep_alive or b"keep-alive" in tokens)
            elif name == b"retry-after":
                self.retry_after = value.decode("latin-1")
        return (None if chunked else length), chunked

    def _step_body(self) -> bool:
        n = min(self.remaining, len(self.buffer))
        self._take(n)
        self.remaining -= n
        if self.remaining and self.body_read <= MAX_BODY:
            return False
        return self._done()

    def _step_chunk_size(self) -> bool:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > 1024:
                raise ValueError("chunk size line too long")
            return False
        size = bytes(self.buffer[:end]).split(b";", 1)[0].strip()
        del self.buffer[: end + 2]
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise ValueError("bad chunk size")
        self.remaining = int(size, 16)
        self.step = self._step_chunk_data if self.remaining else self._step_trailers
        return True

    def _step_chunk_data(self) -> bool:
        n = min(self.remaining, len(self.buffer))
        self._take(n)
        self.remaining -= n
        if self.remaining:
            return self._done() if self.body_read > MAX_BODY else False
        self.step = self._step_chunk_end
        return True

    def _step_chunk_end(self) -> bool:
        if len(self.buffer) < 2:
            return False
        if self.buffer[:2] != b"\r\n":
            raise ValueError("a chunk not followed by CRLF")
        del self.buffer[:2]
        self.step = self._step_chunk_size
        return True

    def _step_trailers(self) -> bool:
        if self.buffer[:2] == b"\r\n":
            del self.buffer[:2]
            return self._done()
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ValueError("trailers too long")
            return False
        del self.buffer[: end + 4]
        return self._done()

    def _step_until_close(self) -> bool:
        self._take(len(self.buffer))
        return self._done() if self.body_read > MAX_BODY else False

    def _step_finished(self) -> bool:
        return False


class PushClient:
    """Keep-alive HTTP/1.1 connections to push services, at most `limit` open at once."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        user_agent: str,
        guard: AddressGuard,
        resolver: Resolver | None = None,
        limit: int = 100,
        idle_expiry: float = 15.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.ssl_context = ssl_context
        self.user_agent = user_agent.encode("latin-1")
        self.guard = guard
        self.resolver = resolver or resolve_host
        self.limit = limit
        self.idle_expiry = idle_expiry
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._open = 0  # connections open or being opened
        self._released = asyncio.Event()
        self._origins: dict[str, _Origin] = {}
        self._closed = False
        self.connections_made = 0  # new connections (tests, benchmarks)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> Answer:
        """POST `body` to `url` with `headers` (Host, Content-Length and User-Agent are added).

        Raises NotSent (Refused when the address guard refuses the host) or AnswerLost."""
        origin, target = self._split(url)
        head = [
            b"POST ",
            target,
            b" HTTP/1.1\r\nHost: ",
            origin.host_header,
            b"\r\nUser-Agent: ",
            self.user_agent,
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise NotSent(f"header {name!r} holds a line break")
            head.append(f"\r\n{name}: {value}".encode("latin-1"))
        head.append(b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        request = b"".join(head) + body
        deadline = monotonic() + timeout
        conn = await self._acquire(origin, deadline)
        answered = written = False
        try:
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise NotSent(f"no connection within {timeout:g} s")
            try:
                waiter = conn.send(request)
            except (OSError, RuntimeError) as exc:  # the transport refused it: nothing was written
                conn.abort()
                raise NotSent(f"cannot write the request: {exc}") from None
            written = True
            timer = asyncio.get_running_loop().call_later(
                remaining, conn.time_out, f"no answer within {timeout:g} s"
            )
            try:
                answer = await waiter
            finally:
                timer.cancel()
            answered = True
            return answer
        finally:
            self._release(origin, conn, reuse=answered or not written)

    # connections

    def _split(self, url: str) -> tuple[_Origin, bytes]:
        if not url.startswith("https://"):
            raise NotSent("push endpoints are https URLs")
        slash = url.find("/", 8)
        authority, target = (url[8:slash], url[slash:]) if slash > 0 else (url[8:], "/")
        if " " in target or "#" in target or not target.isprintable() or not target.isascii():
            raise NotSent("the endpoint's path is not a plain request target")
        origin = self._origins.get(authority)
        if origin is None:
            try:
                parts = urlsplit(f"https://{authority}/")
                port = parts.port or 443
            except ValueError as exc:
                raise NotSent(f"not a valid endpoint URL: {exc}") from None
            if not parts.hostname or parts.username is not None or not authority.isascii():
                raise NotSent("not a valid endpoint URL")
            host = parts.hostname
            shown = f"[{host}]" if ":" in host else host
            header = shown if port == 443 else f"{shown}:{port}"
            origin = _Origin(f"{host}:{port}", host, port, header.encode("ascii"))
            if len(self._origins) > 10_000:  # endpoints come from browsers: bound the cache
                self._origins.clear()
            self._origins[authority] = origin
        return origin, target.encode("ascii")

    async def _acquire(self, origin: _Origin, deadline: float) -> _Connection:
        if self._closed:
            raise NotSent("the client is closed")
        now = monotonic()
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.idle_expiry):
                return conn
            self._drop(conn)
        while self._open >= self.limit:
            if not self._evict_idle():
                self._released.clear()
                try:
                    await asyncio.wait_for(self._released.wait(), deadline - monotonic())
                except TimeoutError:
                    raise NotSent("no free connection within the timeout") from None
                idle = self._idle.get(origin.key)
                while idle:
                    conn = idle.pop()
                    if conn.usable(monotonic(), self.idle_expiry):
                        return conn
                    self._drop(conn)
        self._open += 1
        try:
            return await self._connect(origin, deadline)
        except BaseException:
            self._open -= 1
            self._released.set()
            raise

    def _evict_idle(self) -> bool:
        """Close one idle connection (of any origin) to make room; False when none is idle."""
        for conns in self._idle.values():
            if conns:
                self._drop(conns.pop(0))
                return True
        return False

    def _drop(self, conn: _Connection) -> None:
        conn.abort()
        self._open -= 1
        self._released.set()

    async def _connect(self, origin: _Origin, deadline: float) -> _Connection:
        timeout = min(self.connect_timeout, deadline - monotonic())
        if timeout <= 0:
            raise NotSent("timed out before connecting")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                addresses = await checked_addresses(self.guard, origin.host, self.resolver, timeout)
                failure: Exception | None = None
                for address in addresses:  # the next one when one is down, as a plain connect would
                    try:
                        _, conn = await loop.create_connection(
                            _Connection,
                            address,
                            origin.port,
                            ssl=self.ssl_context,
                            server_hostname=origin.host,
                        )
                    except (OSError, ssl.SSLError) as exc:
                        failure = exc
                        continue
                    self.connections_made += 1
                    return conn
                assert failure is not None
                raise failure
        except BlockedAddress as exc:
            raise Refused(f"refusing {origin.host}: {exc.address} is {exc.reason}") from None
        except TimeoutError:
            raise NotSent(f"connecting to {origin.host} timed out") from None
        except (OSError, ssl.SSLError, httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            raise NotSent(f"cannot connect to {origin.host}: {type(exc).__name__}: {exc}") from None

    def _release(self, origin: _Origin, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not self._closed and conn.keep_alive and not conn.closed:
            conn.waiter = None
            conn.idle_since = monotonic()
            self._idle.setdefault(origin.key, []).append(conn)
            self._released.set()
            return
        self._drop(conn)

    async def aclose(self) -> None:
        """Close every idle connection; requests in flight close theirs when they end."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)
