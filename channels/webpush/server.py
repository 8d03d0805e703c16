"""The subscribe routes under /push/ of the shared HTTP server (bot/web.py, `[http]`).

They serve the subscribe page, the service worker, the embeddable widget and the JSON endpoints
that store subscriptions, with origin checks, per-client rate limits and quotas (the client
address from bot/web.py, X-Forwarded-For believed only from trusted proxies) and size limits.
Static assets live in `channels/webpush/static/`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bot.config import HttpConfig, parse_networks
from bot.web import HttpServer, release_server, shared_server
from bot.web_requests import ClientLimiter, RequestRefused, client_address, read_json
from channels.webpush.config import WebPushSection, http_config, normalize_origin
from channels.webpush.store import SubscriptionStore
from channels.webpush.subscription import InvalidRequest, parse_subscription

__all__ = ["PREFIX", "ClientLimiter", "PushHttpServer", "load_strings", "static_file"]

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


class PushHttpServer:
    """The subscribe page, service worker, widget and subscription endpoints under /push/: a
    route provider for the shared HTTP server (`attach`), or, through `start`, on the process's
    server for its `[http]` address."""

    def __init__(
        self,
        section: WebPushSection,
        subs: SubscriptionStore,
        public_key: str,
        site_name: str = "",
        notify_text: str = "",
        http: HttpConfig | None = None,
    ) -> None:
        self.section = section
        self.subs = subs
        self.public_key = public_key
        self.site_name = section.site_name or site_name or "siar"
        self.notify_text = notify_text
        self.http = http or http_config(None, section)
        self.limiter = ClientLimiter(section.client_rate_limit)
        self.new_subscriptions = ClientLimiter(section.new_subscriptions_per_client)
        self.strings = load_strings(section.language)
        self.server: HttpServer | None = None
        self._owns_server = False
        self._cache: dict[str, bytes] = {}

    @property
    def public_url(self) -> str:
        """Where readers reach the page: `[webpush] public_url`, else /push/ on the server's URL."""
        if self.section.public_url:
            return self.section.public_url
        return self.server.external_url(PREFIX + "/") if self.server is not None else ""

    @property
    def origins(self) -> set[str]:
        own = normalize_origin(self.public_url)
        return {*self.section.allowed_origins, *([own] if own else [])}

    def routes(self) -> list[web.RouteDef]:
        """Every route under /push/."""
        routes = [
            web.get(PREFIX, self._redirect),
            web.get(PREFIX + "/", self._page),
            web.get(PREFIX + "/sw.js", self._sw),
            web.get(PREFIX + "/widget.js", self._widget),
            web.get(PREFIX + "/vapid-public-key", self._vapid_public_key),
            web.get(PREFIX + "/health", self._health),
        ]
        for name in ("subscribe", "unsubscribe", "click"):
            routes.append(web.post(f"{PREFIX}/{name}", getattr(self, f"_{name}")))
            routes.append(web.route("OPTIONS", f"{PREFIX}/{name}", self._preflight))
        for asset in ("page.js", "page.css", "icon.svg"):
            routes.append(web.get(f"{PREFIX}/{asset}", self._asset))
        return routes

    def attach(self, server: HttpServer) -> None:
        """Add the /push/ routes to `server` (before it starts)."""
        server.add_routes(self.routes(), prefix=PREFIX)
        self.server = server
        self._cache.clear()

    async def start(self) -> None:
        """Serve /push/ on the process's server for `self.http.listen`, starting it if needed.

        OSError when it cannot listen; RuntimeError when that server already runs without
        /push/ (another component started it first)."""

        server = shared_server(self.http)
        try:
            if PREFIX not in server.prefixes:
                self.attach(server)
            self.server = server
            await server.start()
        except BaseException:
            self.server = None
            await release_server(server)
            raise
        self._owns_server = True
        self._cache.clear()
        log.info("web push: subscribe page at %s (listening on %s)", self.public_url, server.name)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def stop(self) -> None:
        """Give the server back (it stops after its last user)."""

        if self.server is not None and self._owns_server:
            self._owns_server = False
            await release_server(self.server)
        self.server = None

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
            env = Environment(loader=FileSystemLoader(STATIC), autoescape=select_autoescape(["html"]))
            config_json = json.dumps(self._page_config(), ensure_ascii=False).replace("<", "\\u003c")
            text = env.get_template(name).render(
                s=self.strings,
                site_name=self.site_name,
                topics=self.section.topics,
                language=self.section.language,
                config_json=config_json,
            )
            self._cache[name] = text.encode()
        return self._cache[name]

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(PREFIX + "/")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=self._render("page.html"), content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' https: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def _sw(self, request: web.Request) -> web.StreamResponse:
        body = static_file("sw.js")
        response = web.Response(body=body, content_type="text/javascript", charset="utf-8")
        response.headers["Cache-Control"] = "no-cache"  # browsers check the worker for updates
        return response

    async def _widget(self, request: web.Request) -> web.StreamResponse:
        if "widget.js" not in self._cache:
            config = {
                "base": self.public_url,
                "publicKey": self.public_key,
                "text": self.notify_text or self.strings["headline"],
                "button": self.strings["button"],
                "close": self.strings["close"],
                "error": self.strings["error_generic"],
                "done": self.strings["subscribed"],
            }
            script = static_file("widget.js").decode()
            script = script.replace(
                "__SIAR_CONFIG__", json.dumps(config, ensure_ascii=False).replace("<", "\\u003c")
            )
            self._cache["widget.js"] = script.encode()
        response = web.Response(
            body=self._cache["widget.js"], content_type="text/javascript", charset="utf-8"
        )
        response.headers["Cache-Control"] = "public, max-age=300"
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.path.rsplit("/", 1)[1]
        types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        response = web.Response(body=static_file(name), content_type=types[name.rsplit(".", 1)[1]])
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    async def _vapid_public_key(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(text=self.public_key, content_type="text/plain")
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    # JSON endpoints

    def _client(self, request: web.Request) -> str:
        """The client's address (X-Forwarded-For only from the server's trusted proxies)."""
        if self.server is not None:
            return self.server.client_address(request)

        return client_address(request, parse_networks(self.http.trusted_proxies))

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        origin = normalize_origin(request.headers.get("Origin", ""))
        if origin and origin in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.StreamResponse:
        origin = normalize_origin(request.headers.get("Origin", ""))
        if not origin or origin not in self.origins:
            return web.Response(status=403)
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        return self._cors(request, response)

    def _error(self, request: web.Request, status: int, message: str) -> web.StreamResponse:
        return self._cors(request, web.json_response({"ok": False, "error": message}, status=status))

    async def _checked_json(self, request: web.Request, max_bytes: int = 4096) -> Any:
        """The request's JSON after the origin, rate and size checks; RequestRefused otherwise."""
        origin = normalize_origin(request.headers.get("Origin", ""))
        if not origin or origin not in self.origins:
            raise RequestRefused(403, "origin not allowed")
        if not self.limiter.allow(self._client(request)):
            raise RequestRefused(429, "too many requests; try again in a minute")
        return await read_json(request, max_bytes=max_bytes, max_depth=8)

    def _admit_new(self, client: str) -> None:
        """The per-client quota of new subscriptions (updates do not count)."""
        if not self.new_subscriptions.allow(client):
            raise RequestRefused(429, "too many new subscriptions from your address; try again later")

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        try:
            data = await self._checked_json(request)
            sub = parse_subscription(data, [t.id for t in self.section.topics], self.section.push_hosts)
            replaces = data.get("replaces") if isinstance(data, dict) else None
            if replaces is not None and (not isinstance(replaces, str) or len(replaces) > 1024):
                raise InvalidRequest("replaces: expected the old endpoint URL")
            origin = normalize_origin(request.headers.get("Origin", "")) or ""
            client = self._client(request)
            new = await self.subs.save(
                sub,
                origin,
                self.section.max_subscriptions,
                replaces,
                admit=lambda: self._admit_new(client),
                unconfirmed_after=timedelta(seconds=self.section.unconfirmed_after),
            )
        except RequestRefused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        log.info(
            "web push: %s subscription (%s)",
            "new" if new else "updated",
            ", ".join(sub.topics) or "all topics",
        )
        return self._cors(
            request, web.json_response({"ok": True, "topics": list(sub.topics)}, status=201 if new else 200)
        )

    async def _unsubscribe(self, request: web.Request) -> web.StreamResponse:
        try:
            data = await self._checked_json(request)
            sub = data.get("subscription", data) if isinstance(data, dict) else None
            endpoint = sub.get("endpoint") if isinstance(sub, dict) else None
            if not isinstance(endpoint, str) or not 0 < len(endpoint) <= 1024:
                raise InvalidRequest('expected {"endpoint": URL}')
            removed = await self.subs.remove(endpoint)
        except RequestRefused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        return self._cors(request, web.json_response({"ok": True, "removed": removed}))

    async def _click(self, request: web.Request) -> web.StreamResponse:
        try:
            data = await self._checked_json(request, 2048)
            tag, url = (data.get("tag"), data.get("url")) if isinstance(data, dict) else (None, None)
            if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tag):
                raise InvalidRequest("tag: expected the notification tag")
            if not isinstance(url, str) or len(url) > 2000 or not url.startswith(("https://", "http://")):
                raise InvalidRequest("url: expected the story URL")
            counted = await self.subs.record_click(tag, url)
        except RequestRefused as exc:
            return self._error(request, exc.status, exc.message)
        except InvalidRequest as exc:
            return self._error(request, 400, str(exc))
        return self._cors(request, web.json_response({"ok": True, "counted": counted}))
