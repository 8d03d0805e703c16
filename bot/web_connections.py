"""The connection guard in front of aiohttp: a cap on open connections, a header-read timeout,
an idle timeout and a cap on the total size of a request's headers.

aiohttp's RequestHandler has a keep-alive timeout but nothing that bounds how long a client may
take to send a request's headers, how many connections are open, or the headers' total size
(only each line's). `ConnectionPool` is the protocol factory given to `loop.create_server`: each
accepted connection gets a `GuardedConnection`, a thin asyncio.Protocol that forwards every
event to the aiohttp RequestHandler it wraps (made by the runner's `web.Server`, aiohttp's own
protocol factory) and watches the bytes on their way in. Nothing of aiohttp is patched or
subclassed, so an aiohttp upgrade keeps working as long as its protocol stays an asyncio.Protocol.

A connection is in one of three states:
- `headers`: connected, or sending the next request after an idle spell. The header timer runs;
  header bytes are counted up to the blank line that ends them (431 past the cap).
- `busy`: a request reached the application (the server's middleware calls `request_started`)
  until its task, response included, is done. No timer: handlers bound their own reads.
- `idle`: between requests. The keep-alive timer runs; the first new byte starts `headers`.
At the connection cap, the connection that has waited longest in `headers` (blank line not yet
seen) or `idle` is closed to make room, so a client that sends its headers at once gets in even
while half-sent requests fill the cap; only when none is waiting is the newcomer refused (503).
Busy connections are bounded by the handlers (read_json's body timeout) and aiohttp's lingering.
One address (not a trusted proxy) may hold `max_per_address` connections, and at the cap the
room is taken from the address holding the most: a flood from a few addresses, even one that
reconnects as fast as it is closed, only ever closes its own connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("siar.http")

HEADERS, BUSY, IDLE, CLOSED = "headers", "busy", "idle", "closed"


def _canned(status: str, text: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(text)}\r\n\r\n{text}"
    ).encode()


_TIMEOUT = _canned("408 Request Timeout", "request headers not received in time\n")
_BUSY = _canned("503 Service Unavailable", "too many connections; try again shortly\n")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 256
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    max_header_bytes: int = 16_384
    max_per_address: int = 32  # 0: no cap


@dataclass
class ConnectionStats:
    """What the guard did since the server started (for tests, logs and later metrics)."""

    accepted: int = 0
    refused: int = 0  # 503: the address holds its share, or every connection is busy
    evicted: int = 0  # closed to make room for a newcomer
    header_timeouts: int = 0
    idle_timeouts: int = 0
    oversized_headers: int = 0


def _end_of_headers(data: bytes) -> int:
    """The index just past the blank line ending the headers in `data`, or -1."""
    ends = [i + n for i, n in ((data.find(b"\r\n\r\n"), 4), (data.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: the guard's bookkeeping around aiohttp's RequestHandler."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.state = HEADERS
        self.active = 0  # requests in progress (pipelining can overlap their bookkeeping)
        self.header_bytes = 0
        self.headers_ended = False
        self._tail = b""  # the last bytes seen, for a blank line split across reads
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol: forward to aiohttp, after the guard's checks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "?"
        if not self.pool.admit(self):
            self.state = CLOSED
            transport.write(_BUSY)
            transport.close()
            return
        self.inner = self.pool.make_handler()
        self._await_headers()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None or self.state == CLOSED:
            return
        if self.state == IDLE:
            self._await_headers()
        if self.state == HEADERS and not self.headers_ended and not self._count_header_bytes(data):
            return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.state = CLOSED
        self.pool.forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # the states

    def request_started(self) -> None:
        self.active += 1
        self.state = BUSY
        self._cancel_timer()
        self.pool.unwait(self)

    def request_finished(self) -> None:
        self.active -= 1
        if self.state != BUSY or self.active > 0:
            return
        self.state = IDLE
        self._arm(self.pool.limits.keepalive_timeout)

    def close(self, last_words: bytes = b"") -> None:
        """Close now, after `last_words` (a canned response) if any; aiohttp's handler hears it
        through connection_lost."""
        self._cancel_timer()
        self.state = CLOSED
        self.pool.forget(self)
        if self.transport is None:
            return
        if last_words:
            self.transport.write(last_words)
            self.transport.close()  # sends what was written first (a few bytes: always fits)
        else:
            self.transport.abort()

    def _await_headers(self) -> None:
        self.state = HEADERS
        self.header_bytes, self.headers_ended, self._tail = 0, False, b""
        self._arm(self.pool.limits.header_timeout)

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired)
        self.pool.wait(self)  # to the end: the longest waiting come first

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _count_header_bytes(self, data: bytes) -> bool:
        """Count `data` toward the header cap; False (and 431 sent) when it is exceeded."""
        seen = self._tail + data
        end = _end_of_headers(seen)
        self.header_bytes += (end if end >= 0 else len(seen)) - len(self._tail)
        if self.header_bytes > self.pool.limits.max_header_bytes:
            self.pool.oversized(self)
            return False
        self.headers_ended = end >= 0
        self._tail = seen[-3:]
        if self.headers_ended:  # a request is coming: no longer the first to make room
            self.pool.unwait(self)
        return True

    def _expired(self) -> None:
        self._timer = None
        if self.state == HEADERS:
            self.pool.timed_out(self, started=self.header_bytes > 0)
        elif self.state == IDLE:
            self.pool.stats.idle_timeouts += 1
            self.close()


class ConnectionPool:
    """The protocol factory for `loop.create_server`: admits, tracks and closes connections."""

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        limits: ConnectionLimits,
        name: str,
        exempt: Callable[[str], bool] = lambda peer: False,
    ) -> None:
        self.make_handler = make_handler  # aiohttp's web.Server: makes one RequestHandler
        self.limits = limits
        self.name = name
        self.exempt = exempt  # peers without a per-address cap: trusted proxies
        self.stats = ConnectionStats()
        self.open: dict[asyncio.BaseTransport, GuardedConnection] = {}
        self.per_peer: dict[str, int] = {}
        # Connections in `headers`/`idle`, per peer address, longest waiting first.
        self.waiting: dict[str, dict[GuardedConnection, None]] = {}

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self)

    def wait(self, conn: GuardedConnection) -> None:
        queue = self.waiting.setdefault(conn.peer, {})
        queue.pop(conn, None)
        queue[conn] = None

    def unwait(self, conn: GuardedConnection) -> None:
        queue = self.waiting.get(conn.peer)
        if queue is not None and queue.pop(conn, 0) is None and not queue:
            del self.waiting[conn.peer]

    def admit(self, conn: GuardedConnection) -> bool:
        """Make room for `conn`; False (refuse it) when its address holds its share already or
        when nothing can be closed for it."""
        assert conn.transport is not None
        per_peer = self.limits.max_per_address
        if per_peer and self.per_peer.get(conn.peer, 0) >= per_peer and not self.exempt(conn.peer):
            return self._refuse(conn, f"{conn.peer} holds {per_peer} connections already")
        if len(self.open) >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                return self._refuse(conn, "every connection is busy")
            self.stats.evicted += 1
            log.warning(
                "http %s: %d connections open (the cap); closed the longest waiting one of %s to "
                "admit one from %s",
                self.name,
                len(self.open),
                victim.peer,
                conn.peer,
            )
            victim.close()
        self.stats.accepted += 1
        self.open[conn.transport] = conn
        self.per_peer[conn.peer] = self.per_peer.get(conn.peer, 0) + 1
        return True

    def _victim(self) -> GuardedConnection | None:
        """The longest waiting connection of the address holding the most connections: a flood
        from a few addresses closes its own, never the one of a reader elsewhere."""
        if not self.waiting:
            return None
        peer = max(self.waiting, key=lambda p: self.per_peer.get(p, 0))
        return next(iter(self.waiting[peer]))

    def _refuse(self, conn: GuardedConnection, why: str) -> bool:
        self.stats.refused += 1
        log.warning("http %s: refused a connection from %s (503): %s", self.name, conn.peer, why)
        return False

    def forget(self, conn: GuardedConnection) -> None:
        self.unwait(conn)
        if conn.transport is not None and self.open.get(conn.transport) is conn:
            del self.open[conn.transport]
            left = self.per_peer.pop(conn.peer, 1) - 1
            if left:
                self.per_peer[conn.peer] = left

    def started(self, transport: asyncio.BaseTransport | None) -> GuardedConnection | None:
        """Mark the connection of `transport` busy (a request reached the app); None if unknown."""
        conn = self.open.get(transport) if transport is not None else None
        if conn is not None:
            conn.request_started()
        return conn

    def timed_out(self, conn: GuardedConnection, started: bool) -> None:
        self.stats.header_timeouts += 1
        log.info(
            "http %s: closed a connection from %s: no complete request headers within %g s",
            self.name,
            conn.peer,
            self.limits.header_timeout,
        )
        conn.close(_TIMEOUT if started else b"")

    def oversized(self, conn: GuardedConnection) -> None:
        self.stats.oversized_headers += 1
        log.warning(
            "http %s: refused a request from %s: headers larger than %d bytes (431)",
            self.name,
            conn.peer,
            self.limits.max_header_bytes,
        )
        conn.close(
            _canned(
                "431 Request Header Fields Too Large",
                f"request headers larger than {self.limits.max_header_bytes} bytes\n",
            )
        )

    def close_all(self) -> None:
        for conn in list(self.open.values()):
            conn.close()
