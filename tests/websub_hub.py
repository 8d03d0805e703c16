"""A WebSub hub written from the W3C Recommendation (2018), for tests and benchmarks.

§5.1 subscription requests (form-encoded POST: hub.mode, hub.topic, hub.callback, hub.secret,
hub.lease_seconds) are answered 202 and verified afterwards (§5.3: a GET to the callback with
hub.mode, hub.topic, hub.challenge, hub.lease_seconds; only a 2xx whose body is the challenge
verifies; anything else leaves the state unchanged). Leases are enforced (§5.3.1: never
perpetual; `max_lease` caps what subscribers ask for). `publish` distributes content (§7: POST with
the topic's Content-Type, Link rel=hub and rel=self, X-Hub-Signature HMAC of the body with the
subscriber's secret, §7.1) to unexpired subscriptions; a 410 ends the subscription. `deny`
sends §5.2's denial. Strict where the spec is: a request without the required parameters or with
a secret of 200 bytes or more is refused with 400.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from bot.websub_protocol import sign


@dataclass
class HubSubscription:
    topic: str
    callback: str
    secret: str
    lease: int
    expires: float  # time.monotonic()


@dataclass
class Hub:
    max_lease: int = 864000
    method: str = "sha256"  # the signature algorithm it uses
    refuse: int | None = None  # answer every subscription request with this status
    subscriptions: dict[tuple[str, str], HubSubscription] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)  # every §5.1 form received
    verifications: list[tuple[str, str, int, bool]] = field(default_factory=list)  # mode, topic, status, ok
    deliveries: list[tuple[str, int]] = field(default_factory=list)  # callback, status

    def __post_init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.port = 0
        self._verifying: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> Hub:
        app = web.Application()
        app.router.add_post("/", self._request)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        """The hub goes away: no answers, no deliveries (its port stays known for a restart)."""
        for task in list(self._verifying):
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    def active(self, topic: str) -> list[HubSubscription]:
        now = time.monotonic()
        return [s for s in self.subscriptions.values() if s.topic == topic and s.expires > now]

    async def _request(self, request: web.Request) -> web.Response:
        if not request.content_type == "application/x-www-form-urlencoded":
            return web.Response(status=400, text="expected application/x-www-form-urlencoded")
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(form)
        mode, topic, callback = form.get("hub.mode"), form.get("hub.topic"), form.get("hub.callback")
        if mode not in ("subscribe", "unsubscribe") or not topic or not callback:
            return web.Response(status=400, text="hub.mode, hub.topic and hub.callback are required")
        if len(form.get("hub.secret", "").encode()) >= 200:
            return web.Response(status=400, text="hub.secret must be less than 200 bytes")
        if self.refuse is not None:
            return web.Response(status=self.refuse, text="this hub refuses for now")
        task = asyncio.create_task(self._verify(form))
        self._verifying.add(task)
        task.add_done_callback(self._verifying.discard)
        return web.Response(status=202, text="accepted; verifying")

    async def _verify(self, form: dict[str, str]) -> None:
        mode, topic, callback = form["hub.mode"], form["hub.topic"], form["hub.callback"]
        lease = min(int(form.get("hub.lease_seconds") or self.max_lease), self.max_lease)
        challenge = secrets.token_urlsafe(16)
        query = {"hub.mode": mode, "hub.topic": topic, "hub.challenge": challenge}
        if mode == "subscribe":
            query["hub.lease_seconds"] = str(lease)
        ok, status = await self._get(callback, query, challenge)
        self.verifications.append((mode, topic, status, ok))
        if not ok:  # §5.1: the state stays as it was
            return
        if mode == "subscribe":
            self.subscriptions[(topic, callback)] = HubSubscription(
                topic, callback, form.get("hub.secret", ""), lease, time.monotonic() + lease
            )
        else:
            self.subscriptions.pop((topic, callback), None)

    async def _get(self, callback: str, query: dict[str, str], challenge: str | None) -> tuple[bool, int]:
        assert self.session is not None
        sep = "&" if "?" in callback else "?"
        try:
            async with self.session.get(callback + sep + urlencode(query)) as response:
                body = await response.text()
                return 200 <= response.status < 300 and (
                    challenge is None or body == challenge
                ), response.status
        except aiohttp.ClientError:
            return False, 0

    async def deny(self, topic: str, callback: str, reason: str = "not allowed") -> int:
        """§5.2: tell the subscriber its subscription is denied (and drop it)."""
        self.subscriptions.pop((topic, callback), None)
        _, status = await self._get(
            callback, {"hub.mode": "denied", "hub.topic": topic, "hub.reason": reason}, None
        )
        return status

    async def publish(
        self, topic: str, body: bytes, content_type: str = "application/rss+xml", self_url: str | None = None
    ) -> list[int]:
        """§7: distribute `body` to every unexpired subscription of `topic`; their statuses."""
        assert self.session is not None
        statuses = []
        for sub in self.active(topic):
            headers = {
                "Content-Type": content_type,
                "Link": f'<{self.url}>; rel="hub", <{self_url or topic}>; rel="self"',
            }
            if sub.secret:
                headers["X-Hub-Signature"] = sign(sub.secret, body, self.method)
            async with self.session.post(sub.callback, data=body, headers=headers) as response:
                statuses.append(response.status)
                self.deliveries.append((sub.callback, response.status))
                if response.status == 410:
                    self.subscriptions.pop((sub.topic, sub.callback), None)
        return statuses
