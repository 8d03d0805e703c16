"""`type = "webpush"`: the channel that pushes each story to the browsers that want it.

For each story it plans one delivery row per matching subscription (keyed by the outbox
idempotency key), pushes them in chunks with bounded concurrency (pywebpush encrypts with
aes128gcm, py_vapid signs the VAPID JWT), and records each outcome. A resumed row skips what
was pushed; a push that was in flight when the daemon died is marked `uncertain` and never
repeated, so nobody gets a story twice. The first channel to start also puts the subscribe
routes on the process's HTTP server (bot/web.py, `[http]`), shared by every webpush channel.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.channel import ChannelContext, ChannelSettings, ChannelUnavailable, Permanent, RetryLater
from bot.counting import Budget, count_graphemes
from bot.fetch import retry_after_seconds
from bot.render import PostRenderer, load_template_text, shorten, unit_count
from bot.types import Button, Length, Post, Receipt, Story
from channels.webpush.config import Settings, WebPushSection, http_config, normalize_origin
from channels.webpush.keys import KeyError_, VapidKeys, b64url, key_file_path, load_vapid
from channels.webpush.server import PushHttpServer
from channels.webpush.store import Outcome, SubscriptionStore, Target

if TYPE_CHECKING:
    from aiohttp import ClientSession

log = logging.getLogger("siar.webpush")
# A push message may carry at most 4096 bytes; aes128gcm adds 86 header + 16 tag + 1 pad bytes.
PAYLOAD_MAX = 3993
SHARED_KEY = "webpush.server"
DEFAULT_TEMPLATE = "{% if lead %}{{ lead }}{% else %}{{ site }}{% endif %}"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delay seconds or an HTTP date); None when absent/bad."""
    return retry_after_seconds(value, datetime.fromtimestamp(time.time() if now is None else now, UTC))


def story_tag(story: Story) -> str:
    """A short stable id of the story: the notification tag (a repeat replaces, never stacks)."""
    return "s" + hashlib.sha256((story.url or f"{story.feed}:{story.uid}").encode()).hexdigest()[:20]


def topic_header(value: str) -> str:
    """A Topic header value: at most 32 characters of the URL-safe base64 alphabet (RFC 8030)."""
    return b64url(hashlib.sha256(value.encode()).digest())[:32]



@dataclass
class _Shared:
    """One HTTP server per process, however many webpush channels use it."""

    server: PushHttpServer | None = None
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WebPushChannel:
    """Pushes each story to the browsers whose subscription wants it."""

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        self.name = name
        self.type = "webpush"
        self.resumable = True  # per-subscription rows: a resumed row never pushes twice
        self.settings = settings
        self.context = context
        sections = getattr(context.config, "sections", None) or {}
        section = sections.get("webpush")
        # Without the section (e.g. `preview` of a disabled channel) it renders but cannot send.
        self.section = section if isinstance(section, WebPushSection) else None
        template = load_template_text(settings.template, DEFAULT_TEMPLATE, context.base_dir)
        self.renderer = PostRenderer(name, template, context, tag_settings=settings.hashtags)
        self.keys: VapidKeys | None = None
        self.key_problem = "" if self.section else "the webpush channel needs a [webpush] section"
        self._uses_server = False
        self.subs: SubscriptionStore | None = None
        self._session: ClientSession | None = None
        self._vapid_cache: dict[str, tuple[str, float]] = {}
        self._paused: dict[str, float] = {}  # push service origin -> monotonic time it accepts again

    # lifecycle

    async def start(self) -> None:
        import aiohttp

        if self.section is None:
            return
        try:
            self.keys = load_vapid(self.section, self.context.base_dir)
        except KeyError_ as exc:
            self.key_problem = str(exc)
            log.error("channel %s: %s", self.name, exc)
            await self.context.alert(self.name, self.key_problem)
            return
        if self.context.store is None:
            self.key_problem = "no store: web push needs the siar store for its subscriptions"
            return
        self.subs = SubscriptionStore(self.context.store, self.context.clock)
        ssl_context = _ssl_context(self.section, self.context.base_dir)
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency, ssl=ssl_context)
        self._session = aiohttp.ClientSession(connector=connector, headers={
            "User-Agent": self.context.user_agent})
        await self.subs.prune(self.subs.clock() - timedelta(days=7))
        await self._start_server()

    async def _start_server(self) -> None:
        shared: _Shared = self.context.shared.setdefault(SHARED_KEY, _Shared())
        async with shared.lock:
            shared.users += 1
            self._uses_server = True
            if shared.server is not None:
                return
            assert self.subs is not None and self.keys is not None and self.section is not None
            cta = self.context.cta
            site = self.context.site
            http = http_config(self.context.config, self.section)
            ignored = sorted({"listen", "trust_forwarded_for"} & self.section.model_fields_set)
            if http is getattr(self.context.config, "http", None) and ignored:
                log.warning("web push: [http] is set, so [webpush] %s is ignored", ", ".join(ignored))
            server = PushHttpServer(self.section, self.subs, self.keys.public,
                                    site_name=getattr(site, "name", ""),
                                    notify_text=getattr(cta, "notify_text", ""), http=http)
            try:
                await server.start()
            except (OSError, RuntimeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                message = f"cannot listen on {http.listen}: {reason}"
                log.error("web push: %s; the subscribe page is down, pushes still go out", message)
                await self.context.alert(self.name, message)
                return
            shared.server = server

    @property
    def server(self) -> PushHttpServer | None:
        shared: _Shared | None = self.context.shared.get(SHARED_KEY)
        return shared.server if shared else None

    async def close(self) -> None:
        shared: _Shared | None = self.context.shared.get(SHARED_KEY)
        if shared is not None and self._uses_server:
            self._uses_server = False
            async with shared.lock:
                shared.users -= 1
                if shared.users <= 0 and shared.server is not None:
                    await shared.server.stop()
                    shared.server = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # rendering

    def render(self, story: Story) -> Post:
        title = story.title
        if unit_count(title) and count_graphemes(title) > self.settings.title_limit:
            title = _shorten_to(title, self.settings.title_limit)
        extra: dict[str, Any] = {"title": title, "url": story.url, "image": story.image,
                                 "tag": story_tag(story)}
        if self.section and self.section.icon:
            extra["icon"] = self.section.icon
        if self.section and self.section.badge:
            extra["badge"] = self.section.badge

        def size(text: str) -> int:
            if count_graphemes(text) > self.settings.body_limit:
                return PAYLOAD_MAX + 1
            return len(payload_bytes(text, extra))

        text, used, values = self.renderer.fit(story, Budget("bytes", PAYLOAD_MAX, size))
        return Post(channel=self.name, type=self.type, story=story, text=text,
                    length=Length("bytes", used, PAYLOAD_MAX),
                    buttons=(Button(values["read_more"], story.url),) if story.url else (),
                    media=(story.image,) if story.image else (), extra=extra)

    # sending

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        if self.keys is None or self.subs is None or self._session is None or self.section is None:
            raise Permanent(self.key_problem or "the webpush channel was not started")
        subs = self.subs
        key = idempotency_key
        total = await subs.plan(key, post.story, self.section.topics)
        lost = await subs.abandon_in_flight(key)
        if lost:
            log.warning("channel %s: %d pushes of %s were in flight when an earlier attempt stopped;"
                        " not repeated", self.name, lost, key)
        if total == 0:
            return Receipt(remote_id=key, note="no subscriber wants this story")
        await subs.expect_clicks(str(post.extra.get("tag")), post.story.url)  # only these count
        data = payload_bytes(post.text, post.extra)
        topic = topic_header(self.name if self.settings.replace_unseen else str(post.extra.get("tag")))
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        after_id, deferred, attempted, rejected = 0, [], 0, 0

        async def one(target: Target, started: set[int], done: dict[int, Outcome]) -> Outcome:
            async with semaphore:
                await subs.begin(target.delivery_id)  # `sending` only now, not for the whole batch
                started.add(target.delivery_id)
                outcome = await self._deliver(target, data, topic)
                done[target.delivery_id] = outcome
                return outcome

        while True:
            targets = await subs.claim(key, after_id, self.settings.batch_size)
            if not targets:
                break
            after_id = max(t.delivery_id for t in targets)
            owners = {t.delivery_id: t.subscription_id for t in targets}
            started: set[int] = set()
            done: dict[int, Outcome] = {}
            try:
                outcomes = await asyncio.gather(*(one(t, started, done) for t in targets))
            except asyncio.CancelledError:
                # Shutdown or send_timeout: keep what is known. Pushes still in flight stay
                # `sending` (uncertain at the resume); those that never started go out then.
                unstarted = [t.delivery_id for t in targets if t.delivery_id not in started]
                await asyncio.shield(self._interrupted(dict(done), owners, unstarted))
                raise
            await subs.finish({t.delivery_id: o for t, o in zip(targets, outcomes, strict=True)},
                              owners, self.settings.max_failures)
            attempted += len(targets)
            rejected += sum(1 for o in outcomes if o.auth_rejected)
            deferred += [o for o in outcomes if o.status == "retry"]
        tally = await subs.tally(key)
        note = (f"pushed to {tally.get('sent', 0)} of {total} subscriptions"
                f"; {tally.get('gone', 0)} expired (removed); {tally.get('failed', 0)} failed"
                f"; {tally.get('uncertain', 0)} uncertain")
        if attempted and rejected == attempted:
            raise Permanent(f"every push service rejected our VAPID signature ({deferred[0].detail}); "
                            "check the VAPID key and webpush.contact, then `siar resend`")
        if tally.get("retry", 0):
            waits = [o.retry_after for o in deferred if o.retry_after is not None]
            reason = deferred[0].detail if deferred else "push service busy"
            raise RetryLater(f"{tally['retry']} of {total} pushes to retry ({reason}); {note}",
                             after=max(waits) if waits else None)
        log.info("channel %s: %s", self.name, note)
        return Receipt(remote_id=key, note=note)

    async def _interrupted(self, done: dict[int, Outcome], owners: dict[int, int],
                           unstarted: list[int]) -> None:
        """Record the pushes of a cancelled batch that finished; release those never started."""
        assert self.subs is not None
        try:
            if done:
                await self.subs.finish(done, owners, self.settings.max_failures)
            await self.subs.release(unstarted)
        except Exception:  # the resume then counts them as in flight: never twice, maybe none
            log.exception("channel %s: cannot record an interrupted batch", self.name)

    async def _deliver(self, target: Target, data: bytes, topic: str) -> Outcome:
        """One subscription: push, retrying quickly on 429/5xx/network errors when the wait is short."""
        origin = normalize_origin(target.endpoint) or target.endpoint
        outcome = Outcome("retry", detail="not tried")
        for attempt in range(self.settings.retries + 1):
            wait = self._paused.get(origin, 0.0) - time.monotonic()
            if wait > self.settings.max_retry_wait:
                return Outcome("retry", detail=f"{origin} asked us to wait", retry_after=wait)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                outcome = await self._push_once(target, data, topic, origin)
            except Exception as exc:  # a corrupt stored key, an encryption bug: this one only
                log.exception("channel %s: cannot push to subscription %d", self.name, target.subscription_id)
                return Outcome("failed", detail=f"cannot encrypt or send: {type(exc).__name__}")
            if outcome.status != "retry" or outcome.auth_rejected:
                return outcome
            if outcome.retry_after is not None and outcome.code == 429:
                self._paused[origin] = time.monotonic() + outcome.retry_after
            delay = outcome.retry_after if outcome.retry_after is not None else 0.5 * 2 ** attempt
            if attempt == self.settings.retries or delay > self.settings.max_retry_wait:
                break
            await asyncio.sleep(delay)
        return outcome

    def _vapid_header(self, audience: str) -> str:
        """The Authorization header for `audience`, signed once per hour per push service."""
        assert self.keys is not None
        cached = self._vapid_cache.get(audience)
        now = time.time()
        if cached is None or cached[1] - now < 11 * 3600:
            exp = int(now) + 12 * 3600
            contact = self.section.contact if self.section else ""
            header = self.keys.private.sign({"aud": audience, "exp": exp, "sub": contact})
            cached = (str(header["Authorization"]), float(exp))
            self._vapid_cache[audience] = cached
        return cached[0]

    async def _push_once(self, target: Target, data: bytes, topic: str, origin: str) -> Outcome:
        import aiohttp
        from pywebpush import WebPusher  # type: ignore[import-untyped, unused-ignore]

        assert self._session is not None
        info = {"endpoint": target.endpoint, "keys": {"p256dh": target.p256dh, "auth": target.auth}}
        body = WebPusher(info).encode(data, "aes128gcm")["body"]
        headers = {
            "Authorization": self._vapid_header(origin),
            "TTL": str(int(self.settings.ttl)),
            "Urgency": self.settings.urgency,
            "Topic": topic,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        try:
            async with self._session.post(target.endpoint, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                                          allow_redirects=False) as response:
                text = (await response.content.read(300)).decode("utf-8", "replace")
                return classify(response.status, response.headers.get("Retry-After"), text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome("retry", detail=f"network error: {type(exc).__name__}")


def _ssl_context(section: WebPushSection, base_dir: Path) -> ssl.SSLContext | bool:
    """TLS settings for push requests: the system CAs, plus `ca_file` when given."""
    if not section.ca_file:
        return True
    ca = Path(section.ca_file).expanduser()
    return ssl.create_default_context(cafile=str(ca if ca.is_absolute() else base_dir / ca))


def classify(status: int, retry_after: str | None, text: str = "") -> Outcome:
    """What a push service's answer means for one subscription (RFC 8030, RFC 8292)."""
    brief = " ".join(text.split())[:120]
    if status in (200, 201, 202):
        return Outcome("sent", status)
    if status in (404, 410):
        return Outcome("gone", status, f"{status}: subscription expired or unsubscribed")
    if status == 429 or status >= 500:
        return Outcome("retry", status, f"{status} {brief}".strip(), parse_retry_after(retry_after))
    if status in (401, 403):
        return Outcome("retry", status, f"{status}: VAPID rejected {brief}".strip(), auth_rejected=True)
    if status == 413:
        return Outcome("failed", status, "413: payload too large")
    return Outcome("failed", status, f"{status} {brief}".strip())


def payload_bytes(body: str, extra: dict[str, Any]) -> bytes:
    """The JSON the service worker receives: title, lead, url, image, tag (+ icon, badge)."""
    data = {"title": extra.get("title", ""), "lead": body, "url": extra.get("url", ""),
            "image": extra.get("image", ""), "tag": extra.get("tag", "")}
    for optional in ("icon", "badge"):
        if extra.get(optional):
            data[optional] = extra[optional]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _shorten_to(text: str, limit: int) -> str:
    lo, hi, best = 0, unit_count(text) - 1, ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = shorten(text, mid)
        if count_graphemes(candidate) <= limit:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> WebPushChannel:
    assert isinstance(settings, Settings)
    channel = WebPushChannel(name, settings, context)
    section = channel.section
    if section is not None and not section.vapid_private_key.get_secret_value().strip():
        path = key_file_path(section, context.base_dir)
        if not path.exists():  # like a missing secret: wait for it instead of failing every story
            raise ChannelUnavailable(f"no VAPID key yet ({path}); create it with `siar webpush init` "
                                     "or set webpush.vapid_private_key")
    return channel
