"""WebSub subscriptions: stories out in seconds from feeds that advertise a hub.

When a poll fetches a feed that advertises a hub (`Link` header, else the feed's own
`<link rel="hub">` / `<atom:link rel="hub">`, bot/websub_protocol.py), siar subscribes at the hub
with a callback on the shared HTTP server (`[http] public_url` + `/websub/<random id>`) and a
random secret per subscription. The hub verifies the intent (a GET echoed with its challenge);
each content distribution request (a POST) is checked against the secret's HMAC signature, and a
verified one polls the feed at once (the feed itself is fetched again: the body is only a doorbell,
so nothing the hub says ever becomes a story). While subscribed, the feed is still polled every
`websub_poll_interval` as a safety net; a hub that denies, lets the lease lapse or stays silent
while that poll finds new stories sends the feed back to its normal `interval`.

Subscriptions live in the `websub_subscriptions` table (bot/websub_store.py), so a restart keeps
them; leases are renewed before they end; a feed removed by a reload (or no longer advertising a
hub) is unsubscribed. Hub URLs come from feeds, so every request to a hub goes through the feed's
address guard (bot/net.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from aiohttp import web

from bot.addresses import AddressGuard
from bot.config import Config, FeedConfig
from bot.db import Database
from bot.fetch import FetchResult
from bot.metrics import Metrics, NullMetrics
from bot.net import Resolver, guard_for_feed, http_client
from bot.pipeline import PollResult
from bot.web import HttpServer, release_server, shared_server
from bot.websub_protocol import Discovery, discover, renew_at, signature_problem, valid_challenge
from bot.websub_store import Subscription, Subscriptions

log = logging.getLogger("siar.websub")
PREFIX = "/websub"
LEASE = 10 * 86400  # what siar asks for (§8.2: "10 days is a good default"); the hub decides
MISS_GRACE = 120.0  # a notification this recent may still be on its way to the triggered poll
Clock = Callable[[], datetime]
# Set inside a poll that a verified notification started: such a poll is not the safety net.
_NOTIFIED: contextvars.ContextVar[bool] = contextvars.ContextVar("websub_notified", default=False)
# Set by a poll's fetch when the subscription was already trusted then (each poll is a task).
_TRUSTED_FETCH: contextvars.ContextVar[bool] = contextvars.ContextVar("websub_trusted", default=False)


class WebSub:
    """The subscriber: discovery (`fetched`), the safety net (`polled`), the callback routes,
    lease upkeep (`tick`) and reloads (`reloaded`). Inactive without `[http] public_url`."""

    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        poll: Callable[[FeedConfig], Awaitable[None]],
        retime: Callable[[FeedConfig], None],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or NullMetrics()
        self.store = Subscriptions(db)
        self.clock = clock
        self.poll = poll  # a poll of the feed, as the scheduler runs it
        self.retime = retime  # reschedule the feed's polls at `interval(feed)` from now
        self.transport, self.resolver = transport, resolver
        self.active = bool(config.http.public_url)
        self.tick_every = 5.0
        self.pending_timeout = 300.0  # a hub that has not verified by then is asked again
        self.subs: dict[str, Subscription] = {}
        self.by_id: dict[str, str] = {}  # callback id -> feed name
        self.rejected = 0  # notifications ignored (forged, unsigned, for no subscription)
        self.retry_at: dict[str, datetime] = {}  # feed -> no new request to its hub before
        self._failures: dict[str, int] = {}
        self._polling: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._requests: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # feeds with a request to their hub in flight
        self._clients: dict[AddressGuard, httpx.AsyncClient] = {}
        self._server: HttpServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._said_off = False
        self._warned_at: dict[str, datetime] = {}
        self._failing: set[str] = set()  # feeds whose last poll failed: polled at their own rate

    # --- what the daemon calls ----------------------------------------------------------------

    def enabled(self, feed: FeedConfig) -> bool:
        return self.active and feed.websub and feed.url.lower().startswith(("http://", "https://"))

    def interval(self, feed: FeedConfig) -> float:
        """How often to poll `feed`: the safety-net rate while a trusted subscription holds."""
        sub = self.subs.get(feed.name)
        if (
            self.enabled(feed)
            and sub is not None
            and sub.state == "subscribed"
            and sub.feed_url == feed.url
            and feed.name not in self._failing
        ):
            return max(feed.interval, feed.websub_poll_interval)
        return feed.interval

    async def start(self) -> None:
        """Load the stored subscriptions, serve the callbacks, unsubscribe feeds that are gone."""
        if not self.active:
            return
        for sub in await self.store.all():
            self._set(sub)
        server = shared_server(self.config.http)
        try:
            if PREFIX not in server.prefixes:
                server.add_routes(self.routes(), prefix=PREFIX)
            await server.start()
        except OSError as exc:  # polling goes on without it
            await release_server(server)
            self.active = False
            log.error(
                "WebSub is off: cannot listen on %s (%s); polling as usual", self.config.http.listen, exc
            )
            return
        except BaseException:
            await release_server(server)
            raise
        self._server = server
        feeds = {f.name: f for f in self.config.feeds}
        for name, sub in list(self.subs.items()):
            feed = feeds.get(name)
            if feed is None or not self.enabled(feed) or feed.url != sub.feed_url:
                self._spawn(self._unsubscribe(sub, guard_for_feed(sub.feed_url, False)))
            elif sub.state == "subscribed":
                log.info("feed %s: WebSub subscription at %s kept from the last run", name, sub.hub)
        self._ticker = asyncio.create_task(self._tick_loop(), name="websub")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        pending = [*self._requests, *self._polling.values()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=5.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        if self._server is not None:
            self._server.remove_routes(PREFIX)
            await release_server(self._server)
            self._server = None

    def fetched(self, feed: FeedConfig, result: FetchResult) -> None:
        """A poll fetched `feed` (pipeline observer): subscribe, move or renew as it advertises."""
        sub = self.subs.get(feed.name)
        # Only a poll that fetched while the hub was trusted can find it silent (`polled`).
        _TRUSTED_FETCH.set(sub is not None and sub.state == "subscribed")
        if result.body is None or result.error or not feed.websub:
            return
        try:
            self._discovered(feed, result)
        except Exception:  # a hostile feed's links must never cost its poll
            log.exception("feed %s: WebSub discovery failed", feed.name)

    def _discovered(self, feed: FeedConfig, result: FetchResult) -> None:
        found = discover(result.headers, result.body, result.url)
        if not self.active:
            if found.hub and not self._said_off:
                self._said_off = True
                log.info(
                    "WebSub is off: feed %s advertises the hub %s, but [http] public_url is not set "
                    "(a hub needs a public callback URL); polling as usual",
                    feed.name,
                    found.hub,
                )
            return
        if not self.enabled(feed) or feed.name in self._busy:
            return
        sub = self.subs.get(feed.name)
        if not found.hub:
            if sub is not None and sub.state != "unsubscribing":
                log.info("feed %s: no longer advertises a WebSub hub; unsubscribing", feed.name)
                self._spawn(self._unsubscribe(sub, self._guard(feed)), feed.name)
            return
        topic = found.self_url or result.url
        if sub is not None and (sub.hub, sub.topic, sub.feed_url) == (found.hub, topic, feed.url):
            if sub.state in ("subscribed", "silent", "pending"):
                return
            if sub.state in ("denied", "failed", "expired") and self._waiting(feed.name):
                return
        elif self._waiting(feed.name):
            return
        self._spawn(self._subscribe(feed, found, topic), feed.name)

    def polled(self, feed: FeedConfig, result: PollResult) -> None:
        """A poll of `feed` ended (pipeline observer). A feed whose polls fail is polled at its
        own rate (with the poller's back-off) until one succeeds: a notification whose poll
        failed must not wait for the safety net. A safety-net poll that finds stories the hub
        never announced means the hub is not delivering."""
        trusted = _TRUSTED_FETCH.get()
        _TRUSTED_FETCH.set(False)
        failing = result.outcome in ("error", "backoff")
        if failing != (feed.name in self._failing):
            if failing:
                self._failing.add(feed.name)
            else:
                self._failing.discard(feed.name)
            self.retime(feed)
        sub = self.subs.get(feed.name)
        new_stories = result.new_stories
        if _NOTIFIED.get() or not new_stories or not trusted or sub is None or sub.state != "subscribed":
            return
        now = self.clock()
        if sub.notified_at is not None and now - sub.notified_at < timedelta(seconds=MISS_GRACE):
            return
        log.warning(
            "feed %s: the safety-net poll found %d new stories the hub %s did not announce; "
            "polling every %ds again until the hub delivers",
            feed.name,
            new_stories,
            sub.hub,
            int(feed.interval),
        )
        self._set(replace(sub, state="silent", last_error="the hub did not announce new stories"))
        self.retime(feed)
        self._spawn(self._subscribe(feed, Discovery((sub.hub,), sub.topic), sub.topic), feed.name)

    async def reloaded(self, changes: Any, new: Config) -> None:
        """Reloader follower: unsubscribe feeds that were removed, turned off or moved."""
        old = {f.name: f for f in self.config.feeds}
        self.config = new
        self.retry_at.clear()  # a reload is the operator's word: ask denying or failing hubs again
        if not self.active:
            return
        feeds = {f.name: f for f in new.feeds}
        for name, sub in list(self.subs.items()):
            feed = feeds.get(name)
            if feed is None or not self.enabled(feed) or feed.url != sub.feed_url:
                before = old.get(name)
                guard = self._guard(before) if before else guard_for_feed(sub.feed_url, False)
                self._spawn(self._unsubscribe(sub, guard), name)
                if feed is not None:
                    self.retime(feed)

    # --- the callback -------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PREFIX + "/{id}", self._verify), web.post(PREFIX + "/{id}", self._notified)]

    async def _verify(self, request: web.Request) -> web.StreamResponse:
        """§5.2/§5.3: the hub confirms (subscribe, unsubscribe) or denies; echo the challenge
        only for what siar asked for."""
        sub = await self._sub_of(request)
        query = request.query
        mode, topic = query.get("hub.mode", ""), query.get("hub.topic", "")
        if sub is None or topic != sub.topic:
            return web.Response(status=404, text="no such subscription")
        if mode == "denied":
            reason = query.get("hub.reason", "")[:200]
            log.warning(
                "feed %s: the hub %s denied the subscription (%s)", sub.feed, sub.hub, reason or "no reason"
            )
            self._set(replace(sub, state="denied", last_error=f"denied: {reason}"))
            self.retry_at[sub.feed] = self.clock() + timedelta(days=1)
            self._back_to_polling(sub.feed)
            await self.store.save(self.subs[sub.feed])
            return web.Response(status=200, text="")
        challenge = query.get("hub.challenge", "")
        if not valid_challenge(challenge):
            return web.Response(status=400, text="bad hub.challenge")
        if mode == "unsubscribe" and sub.state == "unsubscribing":
            self._forget(sub)
            await self.store.delete(sub.feed, sub.callback_id)
            log.info("feed %s: unsubscribed from %s", sub.feed, sub.hub)
        elif mode == "subscribe" and sub.state in ("pending", "subscribed", "silent", "expired", "failed"):
            lease = _lease(query.get("hub.lease_seconds"))
            now = self.clock()
            fresh = sub.state in ("pending", "expired", "failed")
            sub = replace(
                sub,
                state="silent" if sub.state == "silent" else "subscribed",
                lease_seconds=lease,
                expires_at=now + timedelta(seconds=lease),
                last_error=None,
            )
            self._set(sub)
            self._failures.pop(sub.feed, None)
            feed = self._feed(sub.feed)
            if fresh and feed is not None:
                log.info("feed %s: subscribed at %s (lease %ds)", sub.feed, sub.hub, lease)
                self.retime(feed)
                self._trigger(feed)  # what appeared between discovery and now
            await self.store.save(sub)
        else:
            return web.Response(status=404, text="not pending")
        return web.Response(status=200, body=challenge.encode(), content_type="application/octet-stream")

    async def _notified(self, request: web.Request) -> web.StreamResponse:
        """§7: a content distribution request. Acknowledged with 2xx whatever its signature
        (§7.1.2 allows it, and a forger learns nothing); only a verified one polls the feed."""
        sub = await self._sub_of(request)
        if sub is None or sub.state == "unsubscribing":
            self.metrics.websub_notification(sub.feed if sub else "", "unknown")
            return web.Response(status=410, text="no such subscription")  # §7: the hub may drop it
        body = await request.read()
        problem = signature_problem(sub.secret, request.headers.get("X-Hub-Signature"), body)
        feed = self._feed(sub.feed)
        if problem is not None or feed is None:
            self.rejected += 1
            self.metrics.websub_notification(sub.feed, "rejected")
            self._warn(sub.feed, f"notification ignored: {problem or 'the feed is not configured'}")
            return web.Response(status=202, text="")
        now = self.clock()
        if sub.state == "silent":
            log.info("feed %s: the hub %s delivers again; back to the safety-net rate", sub.feed, sub.hub)
            sub = replace(sub, state="subscribed", last_error=None)
            self._set(sub)
            self.retime(feed)
        self._set(replace(sub, notified_at=now))
        self.metrics.websub_notification(sub.feed, "verified")
        self._trigger(feed)
        self._spawn(self._save(self.subs[sub.feed]))
        return web.Response(status=202, text="")

    async def _sub_of(self, request: web.Request) -> Subscription | None:
        """The subscription a callback belongs to: this daemon's, or (daemons sharing PostgreSQL
        behind one public_url) one another daemon made, read from the store."""
        callback_id = request.match_info.get("id", "")
        name = self.by_id.get(callback_id)
        sub = self.subs.get(name) if name else None
        if sub is not None and sub.callback_id == callback_id:
            return sub
        if not 16 <= len(callback_id) <= 64:
            return None
        stored = await self.store.get(callback_id=callback_id)
        if stored is not None and stored.state != "unsubscribing":
            self._set(stored)
        return stored

    # --- polls --------------------------------------------------------------------------------

    def _trigger(self, feed: FeedConfig) -> None:
        """Poll `feed` now; a notification arriving during that poll polls it once more after."""
        if feed.name in self._polling:
            self._again.add(feed.name)
            return
        self._polling[feed.name] = asyncio.create_task(self._triggered(feed), name=f"websub:{feed.name}")

    async def _triggered(self, feed: FeedConfig) -> None:
        _NOTIFIED.set(True)
        try:
            while True:
                self._again.discard(feed.name)
                await self.poll(self._feed(feed.name) or feed)
                if feed.name not in self._again:
                    break
        finally:
            self._polling.pop(feed.name, None)

    def _back_to_polling(self, name: str) -> None:
        feed = self._feed(name)
        if feed is not None:
            self.retime(feed)
            self._trigger(feed)  # catch up at once: the hub may have missed something

    # --- requests to the hub ------------------------------------------------------------------

    async def _subscribe(self, feed: FeedConfig, found: Discovery, topic: str) -> None:
        now = self.clock()
        old = self.subs.get(feed.name)  # as it is now, not as it was when this was asked for
        if old is None:  # another daemon sharing the store may have subscribed it already
            stored = await self.store.get(feed=feed.name)
            wanted = (found.hub, topic, feed.url)
            if stored is not None and (stored.hub, stored.topic, stored.feed_url) == wanted:
                if stored.state in ("pending", "subscribed", "silent"):
                    self._set(stored)
                    self.retime(feed)
                    return
                old = stored
        if old is not None and old.hub != found.hub and old.state != "unsubscribing":
            await self._unsubscribe(old, self._guard(feed))
        renewing = (
            old is not None and old.hub == found.hub and old.topic == topic and old.feed_url == feed.url
        )
        if renewing and old is not None:
            sub = replace(old, requested_at=now)
        else:
            sub = Subscription(
                feed.name,
                feed.url,
                found.hub,
                topic,
                secrets.token_urlsafe(24),
                secrets.token_urlsafe(32),
                requested_at=now,
            )
            log.info("feed %s: subscribing at the WebSub hub %s (topic %s)", feed.name, found.hub, topic)
        if sub.state not in ("subscribed", "silent"):
            sub = replace(sub, state="pending")
        await self._save(sub)  # before asking: the hub may verify before it answers
        form = {
            "hub.mode": "subscribe",
            "hub.topic": topic,
            "hub.callback": self._callback(sub),
            "hub.secret": sub.secret,
            "hub.lease_seconds": str(LEASE),
        }
        error = await self._ask(feed.name, sub.hub, form, self._guard(feed))
        if error is None:
            self._failures.pop(feed.name, None)
            return
        failures = self._failures.get(feed.name, 0) + 1
        self._failures[feed.name] = failures
        delay = min(60.0 * 2 ** (failures - 1), 6 * 3600.0)
        self.retry_at[feed.name] = self.clock() + timedelta(seconds=delay)
        log.warning(
            "feed %s: WebSub subscription refused: %s (next try in %ds)", feed.name, error, int(delay)
        )
        current = self.subs.get(feed.name)
        if current is not None and current.callback_id == sub.callback_id and current.state == "pending":
            await self._save(replace(current, state="failed", last_error=error))

    async def _unsubscribe(self, sub: Subscription, guard: AddressGuard) -> None:
        sub = replace(sub, state="unsubscribing", requested_at=self.clock())
        await self._save(sub)
        form = {"hub.mode": "unsubscribe", "hub.topic": sub.topic, "hub.callback": self._callback(sub)}
        error = await self._ask(sub.feed, sub.hub, form, guard)
        if error is not None:  # nothing more to do: the callback answers 410 from now on
            log.warning("feed %s: WebSub unsubscription failed: %s", sub.feed, error)
            self._forget(sub)
            await self.store.delete(sub.feed, sub.callback_id)

    async def _ask(self, feed: str, hub: str, form: dict[str, str], guard: AddressGuard) -> str | None:
        """POST `form` to `hub` (§5.1); None when accepted, else why not."""
        client = self._clients.get(guard)
        if client is None:
            client = self._clients[guard] = http_client(
                user_agent=self.config.fetch.user_agent,
                timeout=self.config.fetch.timeout,
                guard=guard,
                transport=self.transport,
                resolver=self.resolver,
            )
        try:
            async with client.stream("POST", hub, data=form) as response:
                if 200 <= response.status_code < 300:
                    return None
                head = b""  # the hub's explanation (§5.1.2), never more than a few KB of it
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) >= 4096:
                        break
        except httpx.HTTPError as exc:
            return f"cannot reach the hub {hub}: {exc}"
        except (httpx.InvalidURL, ValueError) as exc:
            return f"cannot reach the hub {hub}: invalid URL ({type(exc).__name__})"
        detail = " ".join(head.decode("utf-8", "replace").split())[:200]
        return f"the hub {hub} answered HTTP {response.status_code}" + (f": {detail}" if detail else "")

    # --- leases -------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_every)
            try:
                self.tick()
            except Exception:
                log.exception("websub: lease upkeep failed")

    def tick(self) -> None:
        """Renew leases before they end, notice those that ended, ask again where hubs are silent."""
        now = self.clock()
        for name, sub in list(self.subs.items()):
            feed = self._feed(name)
            if name in self._busy:
                continue
            if sub.state == "unsubscribing":
                if sub.requested_at and now - sub.requested_at > timedelta(seconds=self.pending_timeout):
                    self._forget(sub)
                    self._spawn(self.store.delete(sub.feed, sub.callback_id))
                continue
            if feed is None or not self.enabled(feed):
                continue
            if sub.state in ("subscribed", "silent") and sub.expires_at and sub.lease_seconds:
                if now >= sub.expires_at:
                    log.warning(
                        "feed %s: the WebSub lease at %s ended unrenewed; polling as usual", name, sub.hub
                    )
                    self._set(replace(sub, state="expired", last_error="lease ended"))
                    self._spawn(self._save(self.subs[name]))
                    self._back_to_polling(name)
                elif now >= renew_at(sub.expires_at, sub.lease_seconds) and not self._recent(sub, now):
                    self._spawn(self._subscribe(feed, Discovery((sub.hub,), sub.topic), sub.topic), name)
            elif sub.state == "pending" and sub.requested_at:
                if now - sub.requested_at > timedelta(seconds=self.pending_timeout):
                    self._spawn(self._subscribe(feed, Discovery((sub.hub,), sub.topic), sub.topic), name)
            elif sub.state in ("expired", "failed") and not self._waiting(name):
                self._spawn(self._subscribe(feed, Discovery((sub.hub,), sub.topic), sub.topic), name)

    def _recent(self, sub: Subscription, now: datetime) -> bool:
        """A renewal was asked for lately (the hub has yet to verify it)."""
        wait = min(self.pending_timeout, (sub.lease_seconds or LEASE) / 4)
        return sub.requested_at is not None and now - sub.requested_at < timedelta(seconds=wait)

    # --- bookkeeping --------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None], feed: str | None = None) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("websub: %s failed", feed or "bookkeeping")
            finally:
                if feed is not None:
                    self._busy.discard(feed)

        if feed is not None:
            self._busy.add(feed)
        task = asyncio.create_task(run())
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    def _set(self, sub: Subscription) -> None:
        old = self.subs.get(sub.feed)
        if old is not None and old.callback_id != sub.callback_id:
            self.by_id.pop(old.callback_id, None)
        self.subs[sub.feed] = sub
        self.by_id[sub.callback_id] = sub.feed
        self.metrics.websub_subscribed(sub.feed, sub.state == "subscribed")

    async def _save(self, sub: Subscription) -> None:
        self._set(sub)
        await self.store.save(sub)

    def _forget(self, sub: Subscription) -> None:
        self.by_id.pop(sub.callback_id, None)
        if self.subs.get(sub.feed, sub).callback_id == sub.callback_id:
            self.subs.pop(sub.feed, None)
            self.metrics.websub_subscribed(sub.feed, False)
            feed = self._feed(sub.feed)
            if feed is not None:  # still configured: back to its own interval
                self.retime(feed)

    def _feed(self, name: str) -> FeedConfig | None:
        for feed in self.config.feeds:
            if feed.name == name:
                return feed
        return None

    def _guard(self, feed: FeedConfig) -> AddressGuard:
        return guard_for_feed(feed.url, feed.allow_private)

    def _callback(self, sub: Subscription) -> str:
        assert self._server is not None
        return self._server.external_url(f"{PREFIX}/{sub.callback_id}")

    def _waiting(self, name: str) -> bool:
        until = self.retry_at.get(name)
        return until is not None and self.clock() < until

    def _warn(self, feed: str, message: str) -> None:
        """One line per feed per minute: forged requests must not flood the log."""
        now = self.clock()
        last = self._warned_at.get(feed)
        if last is None or now - last > timedelta(minutes=1):
            self._warned_at[feed] = now
            log.warning("feed %s: WebSub %s (%d ignored so far)", feed, message, self.rejected)


def _lease(value: str | None) -> int:
    """The hub's lease (§5.3, required for subscribe); siar's request when it gave none."""
    try:
        lease = int(value or "")
    except ValueError:
        return LEASE
    return lease if lease > 0 else LEASE
