"""A strict local fake of Meta's Graph APIs — Facebook Page, Instagram, Threads — for tests.

`async with FakeGraph() as meta:` listens on 127.0.0.1 with one port per host Meta uses:
`meta.graph_url` (graph.facebook.com: Pages, and Instagram with Facebook Login),
`meta.instagram_url` (graph.instagram.com: Instagram Login), `meta.threads_url`
(graph.threads.net) and `meta.media_url` (a public image host: `meta.serve_image(...)`).

It checks what Meta checks: a versioned path (/vNN.N/…), an access token (the `access_token`
query/form field or `Authorization: Bearer`) that is known, of that host, unexpired and not
revoked (else 190 with the documented subcode), the permissions the endpoint needs (10/200),
and each platform's content rules (see fake_graph_facebook.py, fake_graph_media.py,
fake_graph_rules.py). Answers carry the usage headers (X-App-Usage, X-Business-Use-Case-Usage).

Tests control the clock (`meta.advance(seconds)`: token expiry, 24 h windows, container
expiry), container states (`meta.instagram.plans.append(ContainerPlan(...))`) and faults
(`meta.fail(rate_limited(4))`, `meta.fail(lost_answer("POST media_publish"))`), and read what
arrived: `meta.page.posts`, `meta.instagram.published`, `meta.threads.published`,
`meta.requests`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fake_graph_facebook import FacebookPage
from tests.fake_graph_media import ContainerPlan as ContainerPlan
from tests.fake_graph_media import Fetched, InstagramAccount, ThreadsAccount
from tests.fake_graph_rules import (
    MAX_IMAGE_BYTES,
    Call,
    GraphError,
    Token,
    invalid_parameter,
    missing_token,
    no_such_object,
    unknown_token,
)
from tests.fake_graph_tokens import APP_ID as APP_ID
from tests.fake_graph_tokens import APP_SECRET as APP_SECRET
from tests.fake_graph_tokens import DAY, FB_USER_ID, LONG_LIVED, TokenDesk
from tests.fake_graph_tokens import IG_LOGIN_TOKEN as IG_LOGIN_TOKEN
from tests.fake_graph_tokens import IG_USER_ID as IG_USER_ID
from tests.fake_graph_tokens import PAGE_ID as PAGE_ID
from tests.fake_graph_tokens import PAGE_TOKEN as PAGE_TOKEN
from tests.fake_graph_tokens import THREADS_TOKEN as THREADS_TOKEN
from tests.fake_graph_tokens import THREADS_USER_ID as THREADS_USER_ID
from tests.fake_graph_tokens import USER_TOKEN as USER_TOKEN

_VERSION = re.compile(r"^v\d+\.\d+$")
_traces = itertools.count(1)

Handler = Callable[[Call], Awaitable[dict[str, Any]]]

# --- scripted faults -----------------------------------------------------------------------

DEFAULT_MESSAGES = {
    1: "An unknown error has occurred.",
    2: "An unexpected error has occurred. Please retry your request later.",
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    368: "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    80001: "(#80001) There have been too many calls to this Page account. Wait a bit and try again.",
    80002: "(#80002) There have been too many calls to this Instagram account. Wait a bit and try again.",
}
# HTTP statuses: 403 for code 4 is seen in real answers, the rest are ASSUMED; channels must
# classify on error.code, never on the status.
DEFAULT_STATUS = {1: 500, 2: 503, 4: 403, 17: 403}


@dataclass
class Fault:
    """A scripted answer for the next `count` requests to `on` ("POST media_publish", "*", …).

    By default the request is refused with this Graph error. `after` carries the request out
    first (the post exists) and then answers with the error; `drop` carries it out and closes
    the connection without any answer. `raw` answers with that non-JSON body instead (a proxy's
    5xx page). `usage` sets the usage headers' percentages on that answer."""

    code: int = 2
    on: str = "*"
    status: int | None = None
    subcode: int | None = None
    message: str = ""
    transient: bool | None = None
    count: int = 1
    after: bool = False
    drop: bool = False
    raw: str | None = None
    usage: int | None = None
    regain_minutes: int = 0

    def error(self) -> GraphError:
        return GraphError(
            self.status or DEFAULT_STATUS.get(self.code, 400),
            self.code,
            self.message or DEFAULT_MESSAGES.get(self.code, f"(#{self.code}) Error"),
            subcode=self.subcode,
            transient=self.transient,
        )


def rate_limited(code: int = 4, *, on: str = "*", regain_minutes: int = 5, count: int = 1) -> Fault:
    """A throttle answer (4, 17, 32, 613, 80001, 80002) with usage headers at 100 %."""
    return Fault(code, on, count=count, usage=100, regain_minutes=regain_minutes)


def blocked(*, on: str = "*", subcode: int | None = 1390008) -> Fault:
    """368: temporarily blocked for policy reasons (not transient)."""
    return Fault(368, on, subcode=subcode, transient=False)


def transient(code: int = 2, *, on: str = "*") -> Fault:
    """1 or 2: a temporary failure with is_transient true."""
    return Fault(code, on, transient=True)


def server_error(
    status: int = 502, *, on: str = "*", raw: str | None = "<html>502 Bad Gateway</html>"
) -> Fault:
    return Fault(2, on, status=status, raw=raw, transient=True)


def lost_answer(on: str, *, count: int = 1) -> Fault:
    """Carry the request out, then close the connection: the client cannot know it worked."""
    return Fault(on=on, drop=True, count=count)


@dataclass
class Seen:
    """One request as the fake received it (the token's value kept apart) and its answer's status
    (0: the connection was closed without an answer)."""

    method: str
    host: str
    endpoint: str
    path: str
    params: dict[str, str]
    token: str | None
    status: int = 0


@dataclass
class Route:
    endpoint: str
    handler: Handler
    business: tuple[str, str] | None = None  # (type, id) for X-Business-Use-Case-Usage
    needs_token: bool = True


class _Refused(Exception):
    """Routing found nothing; raised after the token check, as Graph does."""

    def __init__(self, error: GraphError) -> None:
        self.error = error


# --- the fake ------------------------------------------------------------------------------


@dataclass
class FakeGraph:
    ig_quota: int = 50  # what content_publishing_limit reports; set 25, 50 or 100
    threads_quota: int = 250
    fetch_timeout: float = 5.0  # Meta's time to download a media URL (2207003 past it)
    start: float | None = None  # the fake clock's start (default: now)
    requests: list[Seen] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    tokens: dict[str, Token] = field(default_factory=dict)
    usage: dict[str, int] = field(
        default_factory=lambda: {"call_count": 1, "total_cputime": 1, "total_time": 1}
    )
    images: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    image_delay: float = 0.0  # seconds the image host waits before answering
    dropped: int = 0

    def __post_init__(self) -> None:
        self.now = float(int(self.start if self.start is not None else time.time()))
        self.page = FacebookPage(PAGE_ID, "Siar Test Page", IG_USER_ID)
        self.instagram = InstagramAccount(IG_USER_ID, self._fetch, self.ig_quota)
        self.threads = ThreadsAccount(THREADS_USER_ID, self._fetch, self.threads_quota)
        facebook = {
            "pages_show_list",
            "pages_manage_posts",
            "pages_read_engagement",
            "instagram_basic",
            "instagram_content_publish",
            "business_management",
        }
        self.add_token(USER_TOKEN, scopes=facebook, expires_in=LONG_LIVED)
        self.add_token(PAGE_TOKEN, kind="PAGE", scopes=facebook, user_id=FB_USER_ID, profile_id=PAGE_ID)
        self.add_token(
            IG_LOGIN_TOKEN,
            host="instagram",
            user_id=IG_USER_ID,
            expires_in=LONG_LIVED,
            scopes={"instagram_business_basic", "instagram_business_content_publish"},
        )
        self.add_token(
            THREADS_TOKEN,
            host="threads",
            user_id=THREADS_USER_ID,
            expires_in=LONG_LIVED,
            scopes={"threads_basic", "threads_content_publish", "threads_delete"},
        )
        self.desk = TokenDesk(self)
        self._ports: dict[int, str] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> FakeGraph:
        app = web.Application(client_max_size=MAX_IMAGE_BYTES * 2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for host in ("graph", "instagram", "threads", "media"):
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self._ports[site._server.sockets[0].getsockname()[1]] = host  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _url(self, host: str) -> str:
        port = next(p for p, h in self._ports.items() if h == host)
        return f"http://127.0.0.1:{port}"

    @property
    def graph_url(self) -> str:
        return self._url("graph")

    @property
    def instagram_url(self) -> str:
        return self._url("instagram")

    @property
    def threads_url(self) -> str:
        return self._url("threads")

    @property
    def media_url(self) -> str:
        return self._url("media")

    # --- what tests control ------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the fake clock (token expiry, rolling 24 h limits, container expiry)."""
        self.now += seconds

    def fail(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def serve_image(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        """Put an image on the fake's public media host; returns its URL."""
        self.images[name] = (data, content_type)
        return f"{self.media_url}/{name}"

    def add_token(
        self,
        value: str,
        *,
        host: str = "graph",
        kind: str = "USER",
        scopes: set[str] | None = None,
        user_id: str = FB_USER_ID,
        profile_id: str = "",
        expires_in: float | None = None,
        issued_ago: float = 0.0,
    ) -> Token:
        """Register a token. `expires_in` None: never expires (a Page token from a long-lived
        user token). Data access expires 90 days after issue."""
        issued = self.now - issued_ago
        token = Token(
            value,
            host,
            kind,
            user_id,
            set(scopes or ()),
            profile_id,
            issued,
            issued + expires_in if expires_in is not None else 0.0,
            issued + 90 * DAY,
        )
        self.tokens[value] = token
        return token

    def revoke(self, value: str, subcode: int = 460) -> None:
        """Invalidate a token the way a password change (460), app removal (458), logout (467) … does."""
        self.tokens[value].revoked = subcode

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        host = self._ports[request.transport.get_extra_info("sockname")[1]]
        if host == "media":
            return await self._serve_media(request)
        params = await _params(request)
        token_value = params.pop("access_token", None) or _bearer(request.headers.get("Authorization", ""))
        segments = [s for s in request.path.split("/") if s]
        version = segments.pop(0) if segments and _VERSION.match(segments[0]) else ""
        try:
            route: Route | _Refused = self._route(request.method, host, segments)
        except GraphError as error:
            route = _Refused(error)
        endpoint = route.endpoint if isinstance(route, Route) else f"{request.method} unknown"
        seen = Seen(request.method, host, endpoint, request.path, dict(params), token_value)
        self.requests.append(seen)
        trace = f"AfakeTrace{next(_traces):06d}"
        fault = None
        try:
            if isinstance(route, Route) and not route.needs_token:  # token exchange and refresh
                subject = Token("", host, "APP", "")
                call = Call(
                    request.method,
                    host,
                    segments,
                    {**params, "access_token": token_value or ""},
                    subject,
                    self.now,
                )
                body: dict[str, Any] | web.StreamResponse = await route.handler(call)
            else:
                if not version:
                    raise invalid_parameter("fake: siar must call a versioned path (/vNN.N/...)")
                token = self._authenticate(token_value, host)
                if isinstance(route, _Refused):
                    raise route.error
                fault = self._take_fault(route.endpoint)
                call = Call(request.method, host, segments, params, token, self.now)
                body = await self._carry_out(request, route, call, fault)
            status, extra = 200, {}
        except GraphError as error:
            status, body, extra = error.status, error.body(host, trace), error.headers
        if isinstance(body, web.StreamResponse):  # a raw answer, or none at all
            seen.status = body.status if fault and fault.raw is not None else 0
            return body
        seen.status = status
        headers = {**extra, "x-fb-trace-id": trace, "facebook-api-version": version or "v21.0"}
        if host != "threads":
            headers.update(self._usage_headers(route, fault))
        return web.json_response(body, status=status, headers=headers)

    async def _carry_out(
        self, request: web.Request, route: Route, call: Call, fault: Fault | None
    ) -> dict[str, Any] | web.StreamResponse:
        """Run the endpoint, with the scripted fault before or after it."""
        if fault and not (fault.after or fault.drop):
            if fault.raw is not None:
                return web.Response(status=fault.status or 502, text=fault.raw, content_type="text/html")
            raise fault.error()
        body = await route.handler(call)
        if fault and fault.drop:
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never written: the connection is gone
        if fault:
            raise fault.error()
        return body

    def _usage_headers(self, route: Route | _Refused, fault: Fault | None) -> dict[str, str]:
        usage, regain = dict(self.usage), 0
        if fault and fault.usage is not None:
            usage, regain = dict.fromkeys(usage, fault.usage), fault.regain_minutes
        headers = {"x-app-usage": json.dumps(usage)}
        if isinstance(route, Route) and route.business:
            kind, object_id = route.business
            headers["x-business-use-case-usage"] = json.dumps(
                {object_id: [{"type": kind, **usage, "estimated_time_to_regain_access": regain}]}
            )
        return headers

    def _take_fault(self, endpoint: str) -> Fault | None:
        for fault in self.faults:
            if fault.count > 0 and fault.on in ("*", endpoint):
                fault.count -= 1
                return fault
        return None

    def _authenticate(self, value: str | None, host: str) -> Token:
        if not value:
            raise missing_token()
        if value == f"{APP_ID}|{APP_SECRET}" and host == "graph":
            return Token(value, host, "APP", APP_ID)
        token = self.tokens.get(value)
        if token is None or token.host != host:
            raise unknown_token()
        problem = token.problem(self.now, APP_ID)
        if problem:
            raise problem
        return token

    async def _serve_media(self, request: web.Request) -> web.StreamResponse:
        if self.image_delay:
            await asyncio.sleep(self.image_delay)
        found = self.images.get(request.path.lstrip("/"))
        if found is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=found[0], content_type=found[1])

    async def _fetch(self, url: str) -> Fetched:
        """Download a media URL as Meta's crawler would (no auth, follows redirects, 8 MiB cap)."""
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self.fetch_timeout)
            async with self._session.get(url, timeout=timeout) as response:
                if response.status != 200:
                    return Fetched(failure=f"HTTP {response.status}")
                data = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        return Fetched(failure="too_large")
        except TimeoutError:
            return Fetched(failure="timeout")
        except aiohttp.ClientError as error:
            return Fetched(failure=f"unreachable: {error.__class__.__name__}")
        return Fetched(bytes(data))

    # --- routing -----------------------------------------------------------------------------

    def _route(self, method: str, host: str, path: list[str]) -> Route:
        key = (method, *path)
        if host != "graph" and path == ["refresh_access_token"] and method == "GET":
            return Route("GET refresh_access_token", self.desk.refresh, needs_token=False)
        if host == "threads" and path == ["access_token"] and method == "GET":
            return Route("GET access_token", self.desk.exchange_threads, needs_token=False)
        if host == "graph" and path == ["oauth", "access_token"] and method == "GET":
            return Route("GET oauth/access_token", self.desk.exchange_facebook, needs_token=False)
        if key == ("GET", "debug_token") and host in ("graph", "threads"):
            return Route("GET debug_token", self.desk.debug_token)
        if key == ("GET", "me"):
            return Route("GET me", self.desk.me)
        if host == "graph" and len(path) == 2 and path[1] == "accounts" and path[0] in ("me", FB_USER_ID):
            return Route("GET accounts", self.desk.accounts)
        if host == "graph" and path and (path[0] == PAGE_ID or path[0].startswith(PAGE_ID + "_")):
            return self._route_page(method, path)
        if host in ("graph", "instagram"):
            return self._route_instagram(method, path)
        return self._route_threads(method, path)

    def _route_page(self, method: str, path: list[str]) -> Route:
        page, business = self.page, ("pages", PAGE_ID)
        routes: dict[tuple[str, ...], tuple[str, Handler]] = {
            ("GET", PAGE_ID): ("GET page", page.node),
            ("POST", PAGE_ID, "feed"): ("POST feed", page.publish),
            ("GET", PAGE_ID, "feed"): ("GET feed", page.feed),
            ("GET", PAGE_ID, "published_posts"): ("GET published_posts", page.feed),
        }
        if len(path) == 1 and "_" in path[0]:
            routes.update(
                {
                    ("GET", path[0]): ("GET post", page.read),
                    ("POST", path[0]): ("POST post", page.edit),
                    ("DELETE", path[0]): ("DELETE post", page.delete),
                }
            )
        return _pick(routes, method, path, business)

    def _route_instagram(self, method: str, path: list[str]) -> Route:
        ig, business = self.instagram, ("instagram", IG_USER_ID)
        routes: dict[tuple[str, ...], tuple[str, Handler]] = {
            ("POST", IG_USER_ID, "media"): ("POST media", ig.create),
            ("GET", IG_USER_ID, "media"): ("GET media", ig.list_media),
            ("POST", IG_USER_ID, "media_publish"): ("POST media_publish", ig.publish),
            ("GET", IG_USER_ID, "content_publishing_limit"): ("GET content_publishing_limit", ig.limit),
        }
        if len(path) == 1 and path[0] in ig.containers:
            routes[("GET", path[0])] = ("GET container", ig.status)
        elif len(path) == 1:
            routes.update(
                {
                    ("GET", path[0]): ("GET ig_media", ig.get_media),
                    ("DELETE", path[0]): ("DELETE ig_media", ig.delete_media),
                }
            )
        return _pick(routes, method, path, business)

    def _route_threads(self, method: str, path: list[str]) -> Route:
        th = self.threads
        routes: dict[tuple[str, ...], tuple[str, Handler]] = {
            ("POST", THREADS_USER_ID, "threads"): ("POST threads", th.create),
            ("GET", THREADS_USER_ID, "threads"): ("GET threads", th.list_posts),
            ("POST", THREADS_USER_ID, "threads_publish"): ("POST threads_publish", th.publish),
            ("GET", THREADS_USER_ID, "threads_publishing_limit"): ("GET threads_publishing_limit", th.limit),
        }
        if len(path) == 1 and path[0] in th.containers:
            routes[("GET", path[0])] = ("GET threads_container", th.status)
        elif len(path) == 1:
            routes.update(
                {
                    ("GET", path[0]): ("GET threads_post", th.get_post),
                    ("DELETE", path[0]): ("DELETE threads_post", th.delete_post),
                }
            )
        return _pick(routes, method, path, None)


def _pick(
    routes: dict[tuple[str, ...], tuple[str, Handler]],
    method: str,
    path: list[str],
    business: tuple[str, str] | None,
) -> Route:
    found = routes.get((method, *path))
    if found is None:
        if len(path) > 1:
            raise GraphError(400, 2500, f"Unknown path components: /{'/'.join(path[1:])}")
        raise no_such_object(path[0] if path else "")
    return Route(found[0], found[1], business)


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() in ("bearer", "oauth") and value.strip() else None


async def _params(request: web.Request) -> dict[str, str]:
    """Query, form (urlencoded or multipart) and JSON body parameters, as Graph merges them."""
    params = dict(request.query)
    if request.body_exists:
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        elif request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()})
    return params
