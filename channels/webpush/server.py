"""The subscribe server (`[webpush] listen`): a small aiohttp app under /push/.

It serves the subscribe page, the service worker, the embeddable widget and the JSON endpoints
that store subscriptions, with origin checks, a per-client rate limit and size limits. Static
assets live in `channels/webpush/static/`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.durations import parse_rate
from channels.webpush.config import WebPushSection, normalize_origin, split_listen
from channels.webpush.store import SubscriptionStore
from channels.webpush.subscription import InvalidRequest, parse_subscription

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("siar.webpush")
STATIC = Path(__file__).parent / "static"
PREFIX = "/push"


@functools.cache
def static_file(name: str) -> bytes:
    """A file of channels/webpush/static (read once)."""
    return (STATIC / name).read_bytes()


def load_strings(language: str) -> dict[str, Any]:
    """The page's texts in `language` ("id" or "en")."""
    data: dict[str, dict[str, Any]] = json.loads(static_file("strings.json"))
    return {**data["en"], **data.get(language, {})}



class ClientLimiter:
    """A token bucket per client address, pruned so that it cannot grow without bound."""

    def __init__(self, rate: str, max_clients: int = 10_000) -> None:
        self.count, self.period = parse_rate(rate)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.count), now))
        tokens = min(float(self.count), tokens + (now - last) * self.count / self.period)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed

class PushHttpServer:
    """The subscribe page, service worker, widget and subscription endpoints under /push/."""

    def __init__(self, section: WebPushSection, subs: SubscriptionStore, public_key: str,
                 site_name: str = "", notify_text: str = "") -> None:
        self.section = section
        self.subs = subs
        self.public_key = public_key
        self.site_name = section.site_name or site_name or "siar"
        self.notify_text = notify_text
        self.limiter = ClientLimiter(section.client_rate_limit)
        self.strings = load_strings(section.language)
        self.public_url = section.public_url
        self._runner: web.AppRunner | None = None
        self._cache: dict[str, bytes] = {}

    @property
    def origins(self) -> set[str]:
        own = normalize_origin(self.public_url)
        return {*self.section.allowed_origins, *([own] if own else [])}

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024, middlewares=[_security_headers_factory()])
        app.router.add_get(PREFIX, self._redirect)
        app.router.add_get(PREFIX + "/", self._page)
        app.router.add_get(PREFIX + "/sw.js", self._sw)
        app.router.add_get(PREFIX + "/widget.js", self._widget)
        app.router.add_get(PREFIX + "/vapid-public-key", self._vapid_public_key)
        app.router.add_get(PREFIX + "/health", self._health)
        for name in ("subscribe", "unsubscribe", "click"):
            app.router.add_post(f"{PREFIX}/{name}", getattr(self, f"_{name}"))
            app.router.add_route("OPTIONS", f"{PREFIX}/{name}", self._preflight)
        for asset in ("page.js", "page.css", "icon.svg"):
            app.router.add_get(f"{PREFIX}/{asset}", self._asset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = split_listen(self.section.listen)
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if not self.public_url:
            bound = runner.addresses[0]
            shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            shown = f"[{shown}]" if ":" in shown else shown
            self.public_url = f"http://{shown}:{bound[1]}{PREFIX}/"
        self._cache.clear()
        log.info("web push: subscribe page at %s (listening on %s)", self.public_url, self.section.listen)

    @property
    def port(self) -> int:
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # pages and scripts

    def _page_config(self) -> dict[str, Any]:
        return {
            "publicKey": self.public_key,
            "language": self.section.language,
            "topics": [{"id": t.id, "label": t.label} for t in self.section.topics],
            "strings": self.strings,
        }

    def _render(self, name: str) -> bytes:
        if name not in self._cache:
            from jinja2 import Environment, FileSystemLoader, select_autoescape

            env = Environment(loader=FileSystemLoader(STATIC), autoescape=select_autoescape(["html"]))
            config_json = json.dumps(self._page_config(), ensure_ascii=False).replace("<", "\\u003c")
            text = env.get_template(name).render(
                s=self.strings, site_name=self.site_name, topics=self.section.topics,
                language=self.section.language, config_json=config_json)
            self._cache[name] = text.encode()
        return self._cache[name]

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        raise web.HTTPFound(PREFIX + "/")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.Response(body=self._render("page.html"), content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' https: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def _sw(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = static_file("sw.js")
        response = web.Response(body=body, content_type="text/javascript", charset="utf-8")
        response.headers["Cache-Control"] = "no-cache"  # browsers check the worker for updates
        return response

    async def _widget(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if "widget.js" not in self._cache:
            config = {"base": self.public_url, "publicKey": self.public_key,
                      "text": self.notify_text or self.strings["headline"],
                      "button": self.strings["button"], "close": self.strings["close"],
                      "error": self.strings["error_generic"], "done": self.strings["subscribed"]}
            script = static_file("widget.js").decode()
            script = script.replace("__SIAR_CONFIG__", json.dumps(config, ensure_ascii=False)
                                    .replace("<", "\\u003c"))
            self._cache["widget.js"] = script.encode()
        response = web.Response(body=self._cache["widget.js"], content_type="text/javascript",
                                charset="utf-8")
        response.headers["Cache-Control"] = "public, max-age=300"
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        name = request.path.rsplit("/", 1)[1]
        types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        response = web.Response(body=static_file(name),
                                content_type=types[name.rsplit(".", 1)[1]])
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    async def _vapid_public_key(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.Response(text=self.public_key, content_type="text/plain")
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _health(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        return web.json_response({"ok": True})

    # JSON endpoints

    def _client(self, request: web.Request) -> str:
        if self.section.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.split(",")[-1].strip()  # what our own proxy saw
        return request.remote or "?"

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        origin = normalize_origin(request.headers.get("Origin", ""))
        if origin and origin in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        origin = normalize_origin(request.headers.get("Origin", ""))
        if not origin or origin not in self.origins:
            return web.Response(status=403)
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        return self._cors(request, response)

    def _error(self, request: web.Request, status: int, message: str) -> web.StreamResponse:
        from aiohttp import web

        return self._cors(request, web.json_response({"ok": False, "error": message}, status=status))

    async def _checked_json(self, request: web.Request, max_bytes: int = 4096) -> Any:
        """The request's JSON after the origin, rate and size checks; InvalidRequest/_Refused."""
        origin = normalize_origin(request.headers.get("Origin", ""))
        if not origin or origin not in self.origins:
            raise _Refused(403, "origin not allowed")
        if not self.limiter.allow(self._client(request)):
            raise _Refused(429, "too many requests; try again in a minute")
        if request.content_type != "application/json":
            raise _Refused(415, "expected application/json")
        if request.content_length is not None and request.content_length > max_bytes:
            raise _Refused(413, f"request larger than {max_bytes} bytes")
        body = bytearray()  # to the end (a chunked or slow body comes in pieces), one byte past the cap
        while len(body) <= max_bytes:
            piece = await request.content.read(max_bytes + 1 - len(body))
            if not piece:
                break
            body += piece
        if len(body) > max_bytes:
            raise _Refused(413, f"request larger than {max_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest("not valid JSON") from exc

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            data = await self._checked_json(request)
            sub = parse_subscription(data, [t.id for t in self.section.topics], self.section.push_hosts)
            replaces = data.get("replaces") if isinstance(data, dict) else None
            if replaces is not None and (not isinstance(replaces, str) or len(replaces) > 1024):
                raise InvalidRequest("replaces: expected the old endpoint URL")
            origin = normalize_origin(request.headers.get("Origin", "")) or ""
            new = await self.subs.save(sub, origin, self.section.max_subscriptions, replaces)
        except _Refused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        log.info("web push: %s subscription (%s)", "new" if new else "updated",
                 ", ".join(sub.topics) or "all topics")
        return self._cors(request, web.json_response({"ok": True, "topics": list(sub.topics)},
                                                     status=201 if new else 200))

    async def _unsubscribe(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            data = await self._checked_json(request)
            sub = data.get("subscription", data) if isinstance(data, dict) else None
            endpoint = sub.get("endpoint") if isinstance(sub, dict) else None
            if not isinstance(endpoint, str) or not 0 < len(endpoint) <= 1024:
                raise InvalidRequest("expected {\"endpoint\": URL}")
            removed = await self.subs.remove(endpoint)
        except _Refused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        return self._cors(request, web.json_response({"ok": True, "removed": removed}))

    async def _click(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            data = await self._checked_json(request, 2048)
            tag, url = (data.get("tag"), data.get("url")) if isinstance(data, dict) else (None, None)
            if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tag):
                raise InvalidRequest("tag: expected the notification tag")
            if not isinstance(url, str) or len(url) > 2000 or not url.startswith(("https://", "http://")):
                raise InvalidRequest("url: expected the story URL")
            await self.subs.record_click(tag, url)
        except _Refused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        return self._cors(request, web.json_response({"ok": True}))


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _security_headers_factory() -> Any:
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        return response

    return middleware

