"""The public HTTP surface: one hardened aiohttp server per listen address (`[http]`), to which
components (web push, later WebSub callbacks, share cards, the Telegram webhook) add their
routes, each under its own prefix, before it starts.

Built in for every route: the connection guard of bot/web_connections.py (connection cap,
header-read and keep-alive timeouts, header size), a body size cap, security headers, and no
tracebacks for client errors (a refused or malformed request is one log line; a handler bug is
a 500 without details for the client and one traceback in the log). Route helpers live in
bot/web_requests.py and are re-exported here.

Until the daemon owns the server, components get it from `shared_server(config)` (one per
listen address per process) and give it back with `release_server`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.config import HttpConfig, parse_networks, split_listen
from bot.web_connections import ConnectionLimits, ConnectionPool, ConnectionStats
from bot.web_requests import (
    ClientLimiter,
    RequestRefused,
    client_address,
    in_networks,
    parse_address,
    read_json,
)

__all__ = [
    "ClientLimiter",
    "HttpServer",
    "RequestRefused",
    "client_address",
    "read_json",
    "release_server",
    "shared_server",
]

log = logging.getLogger("siar.http")
_PROTOCOL_LOG = logging.getLogger("siar.http.protocol")  # what aiohttp's RequestHandler logs
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a malformed request (bad request line, too many headers) with its traceback
    at ERROR; it is the client's fault, so make it one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            detail = " ".join(str(exc.message or exc).split())[:200]
            record.msg, record.args = "%s: refused (%s)", (record.getMessage(), detail)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_PROTOCOL_LOG.addFilter(_ClientErrorsInOneLine())


class _GuardedSite(web.BaseSite):
    """A TCP site whose protocol factory is the connection guard wrapped around aiohttp's."""

    __slots__ = ("_host", "_pool", "_port")

    def __init__(self, runner: web.AppRunner, host: str, port: int, pool: ConnectionPool) -> None:
        super().__init__(runner, backlog=128)
        self._host, self._port, self._pool = host, port, pool

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._pool, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class HttpServer:
    """One aiohttp server on `config.listen` with the hardening above; routes before `start`."""

    def __init__(self, config: HttpConfig | None = None, *, name: str = "") -> None:
        self.config = config or HttpConfig()
        self.name = name or self.config.listen
        self.host, self._requested_port = split_listen(self.config.listen)
        self.trusted_proxies = parse_networks(self.config.trusted_proxies)
        self.limits = ConnectionLimits(
            self.config.max_connections,
            self.config.header_timeout,
            self.config.keepalive_timeout,
            self.config.max_header_bytes,
            self.config.max_connections_per_address,
        )
        self.prefixes: list[str] = []
        self._routes: dict[str, list[web.AbstractRouteDef]] = {}
        self._runner: web.AppRunner | None = None
        self._pool: ConnectionPool | None = None
        self._stale = False  # routes changed while running: the next start() rebuilds

    def add_routes(self, routes: Iterable[web.AbstractRouteDef], *, prefix: str) -> None:
        """Add a component's routes, every one at `prefix` ("/push") or below it.

        ValueError when the prefix is taken or a route lies outside it. Added to a running
        server, they are served after its next `start()` (which then rebuilds the app on the
        same address: aiohttp freezes a router once it runs)."""
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix):
            raise ValueError(f'route prefix {prefix!r}: expected a path like "/push"')
        taken = [
            p
            for p in self.prefixes
            if p == prefix or p.startswith(prefix + "/") or prefix.startswith(p + "/")
        ]
        if taken:
            raise ValueError(f"http {self.name}: route prefix {prefix} overlaps {taken[0]}")
        routes = list(routes)
        for route in routes:
            path = str(getattr(route, "path", None) or getattr(route, "prefix", ""))
            if path != prefix and not path.startswith(prefix + "/"):
                raise ValueError(f"http {self.name}: route {path!r} is not under its prefix {prefix}")
        self.prefixes.append(prefix)
        self._routes[prefix] = routes
        self._stale = self._runner is not None

    def remove_routes(self, prefix: str) -> None:
        """Stop serving `prefix` (after the next `start()`); nothing when it is not mounted."""
        if self._routes.pop(prefix, None) is not None:
            self.prefixes.remove(prefix)
            self._stale = self._runner is not None

    @property
    def started(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound port (the real one when `listen` asked for port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError(f"http {self.name}: not started")
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        """The root URL the outside uses: `public_url`, else the bound address."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/") + "/"
        shown = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/"

    def external_url(self, path: str) -> str:
        """The URL the outside uses for `path` ("/push/" -> "https://www.example.com/siar/push/")."""
        return self.url + path.lstrip("/")

    @property
    def stats(self) -> ConnectionStats:
        return self._pool.stats if self._pool is not None else ConnectionStats()

    @property
    def open_connections(self) -> int:
        return len(self._pool.open) if self._pool is not None else 0

    def _is_trusted_proxy(self, peer: str) -> bool:
        address = parse_address(peer)
        return address is not None and in_networks(address, self.trusted_proxies)

    def client_address(self, request: web.BaseRequest) -> str:
        """The client's address, believing X-Forwarded-For only from `trusted_proxies`."""
        return client_address(request, self.trusted_proxies)

    async def start(self) -> None:
        """Listen (or, when the routes changed since, serve the new ones on the same address);
        OSError (e.g. the address is in use) leaves nothing running."""
        if self._runner is not None and not self._stale:
            return
        if self._runner is not None:  # same port, even when the first start chose one
            self._requested_port = self.port
            await self.stop()
        self._stale = False
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._middleware])
        for routes in self._routes.values():
            app.router.add_routes(routes)
        runner = web.AppRunner(
            app,
            access_log=None,
            logger=_PROTOCOL_LOG,
            shutdown_timeout=5.0,
            # aiohttp's own idle timer is only a backstop: the guard's fires first.
            keepalive_timeout=self.config.keepalive_timeout + self.config.header_timeout,
            # Per line as large as the total: the guard's 431 answers first, in one way.
            max_line_size=self.config.max_header_bytes,
            max_field_size=self.config.max_header_bytes,
            max_headers=100,
        )
        await runner.setup()
        assert runner.server is not None
        pool = ConnectionPool(runner.server, self.limits, self.name, self._is_trusted_proxy)
        try:
            await _GuardedSite(runner, self.host, self._requested_port, pool).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner, self._pool = runner, pool
        if self.name == self.config.listen and self._requested_port == 0:
            self.name = pool.name = f"{self.host}:{self.port}"
        log.info("http %s: listening (%s)", self.name, self.url)

    async def stop(self) -> None:
        """Stop listening, let requests in progress finish (≤ 5 s), close every connection."""
        runner, pool = self._runner, self._pool
        self._runner = None
        if runner is not None:
            await runner.cleanup()
        if pool is not None:
            pool.close_all()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self._pool.started(request.transport) if self._pool is not None else None
        if conn is not None:
            task = asyncio.current_task()  # the request's task: done once the response is sent
            if task is not None:
                task.add_done_callback(lambda _: conn.request_finished())
        try:
            if (request.content_length or 0) > self.config.max_body_bytes:
                raise RequestRefused(413, f"request larger than {self.config.max_body_bytes} bytes")
            response = await handler(request)
        except web.HTTPException as exc:
            _secure(exc)
            raise
        except RequestRefused as exc:
            response = web.json_response({"ok": False, "error": exc.message}, status=exc.status)
        except Exception:
            log.exception("http %s: %s %s failed", self.name, request.method, request.path)
            response = web.json_response({"ok": False, "error": "internal error"}, status=500)
        _secure(response)
        return response


def _secure(response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    headers["Server"] = "siar"  # not aiohttp's name and version
    if headers.get("Content-Type", "").startswith("text/html"):
        headers.setdefault("X-Frame-Options", "DENY")


_USERS: dict[HttpServer, int] = {}
_BY_ADDRESS: dict[tuple[int, str], HttpServer] = {}  # (event loop, listen) -> its server


def shared_server(config: HttpConfig) -> HttpServer:
    """The process's server for `config.listen`: made on first use, the same one afterwards (the
    first config wins). Port 0 ("any free port") is never shared. Give it back with
    `release_server`, which stops it after its last user."""
    key = (id(asyncio.get_running_loop()), config.listen.strip())
    server = _BY_ADDRESS.get(key)
    if server is None:
        server = HttpServer(config)
        if split_listen(config.listen)[1] != 0:
            _BY_ADDRESS[key] = server
    _USERS[server] = _USERS.get(server, 0) + 1
    return server


async def release_server(server: HttpServer) -> None:
    """One user fewer; the last one stops the server."""
    users = _USERS.pop(server, 1) - 1
    if users > 0:
        _USERS[server] = users
        return
    for key in [k for k, held in _BY_ADDRESS.items() if held is server]:
        del _BY_ADDRESS[key]
    await server.stop()
