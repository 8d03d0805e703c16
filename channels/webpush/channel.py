"""`type = "webpush"`: the channel that pushes each story to the browsers that want it.

Each story is one broadcast in the core batched fan-out ledger (bot.fanout_batches): its
audience (every subscription whose topics match) is fixed once in batches of `batch_size`,
then pushed with bounded concurrency over keep-alive connections (transports.py: the lean HTTP/1.1
client of http1.py by default, every connection checked by the address guard; encryption: encryption.py,
the aes128gcm of pywebpush without its per-push objects; the VAPID JWT is signed once per push
service origin and reused until an hour before it expires: keys.VapidSigner). Every daemon
sharing the store helps: it claims batches of any open broadcast of this channel. A resumed
broadcast skips what was pushed; a push in flight when its daemon died is `uncertain` and never
repeated, so nobody gets a story twice. The first channel to start also puts the subscribe
routes on the process's HTTP server (bot/web.py, `[http]`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.channel import (
    ChannelContext,
    ChannelSettings,
    ChannelUnavailable,
    Permanent,
    RetryLater,
    payload_of,
)
from bot.counting import Budget, count_graphemes
from bot.fanout import RecipientOutcome, RecipientStatus
from bot.fanout_batches import Apply, BatchLedger, BatchWorker, Deliver, Prepare
from bot.http_retry import retry_after_seconds
from bot.kit import BaseChannel
from bot.paths import resolve_path
from bot.render import RenderError, shorten, story_tag, unit_count
from bot.types import Button, Digest, Length, Payload, Post, Published, Receipt, Story
from channels.webpush.config import Settings, WebPushSection, http_config, normalize_origin
from channels.webpush.encryption import BadSubscriptionKey, encrypt
from channels.webpush.keys import VapidKeyError, VapidKeys, VapidSigner, b64url, key_file_path, load_vapid
from channels.webpush.server import PushHttpServer
from channels.webpush.store import SubscriptionStore, Target
from channels.webpush.transports import PushTransport, make_transport, push_guard

log = logging.getLogger("siar.webpush")
# A push message may carry at most 4096 bytes; aes128gcm adds 86 header + 16 tag + 1 pad bytes.
PAYLOAD_MAX = 3993
SHARED_KEY = "webpush.server"
MAX_TRIES = 5  # pushes to one subscription for one story (429/5xx/network), over all attempts
DEFAULT_TEMPLATE = "{% if lead %}{{ lead }}{% else %}{{ site }}{% endif %}"


def topic_header(value: str) -> str:
    """A Topic header value: at most 32 characters of the URL-safe base64 alphabet (RFC 8030)."""
    return b64url(hashlib.sha256(value.encode()).digest())[:32]


_FINAL: dict[str, RecipientStatus] = {
    "sent": "sent",
    "gone": "gone",
    "failed": "failed",
    "uncertain": "uncertain",
}


@dataclass(frozen=True)
class PushAnswer:
    """What a push service answered for one subscription."""

    status: str  # sent, gone, failed, retry, uncertain (it went out; no answer came)
    code: int | None = None
    detail: str = ""
    retry_after: float | None = None
    auth_rejected: bool = False

    def outcome(self, subscription_id: int) -> RecipientOutcome:
        status: RecipientStatus = _FINAL.get(self.status, "retry")
        return RecipientOutcome(subscription_id, status, self.detail, retry_after=self.retry_after)


@dataclass(frozen=True)
class WebPushPayload(Payload):
    """What the service worker receives besides the body text."""

    title: str = ""
    url: str = ""
    image: str = ""
    tag: str = ""
    icon: str = ""
    badge: str = ""


@dataclass
class _Shared:
    """One HTTP server per process, however many webpush channels use it."""

    server: PushHttpServer | None = None
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WebPushChannel(BaseChannel[Settings]):
    """Pushes each story to the browsers whose subscription wants it (resumable: the ledger
    keeps per-subscription progress)."""

    TYPE = "webpush"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    RESUMABLE = True

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        # Without the section (e.g. `preview` of a disabled channel) it renders but cannot send.
        self.section = context.section("webpush", WebPushSection)
        self.keys: VapidKeys | None = None
        self.key_problem = "" if self.section else "the webpush channel needs a [webpush] section"
        self._uses_server = False
        self.subs: SubscriptionStore | None = None
        self._transport: PushTransport | None = None
        self._origins: dict[str, str] = {}  # "https://host:port" -> its normalized origin
        self.signer: VapidSigner | None = None
        self.batches: BatchLedger | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._helper: asyncio.Task[None] | None = None
        self._stopping = False
        self._paused: dict[str, float] = {}  # push service origin -> monotonic time it accepts again
        self._sending: set[str] = set()  # broadcasts this daemon's `send` is working on

    # lifecycle

    async def start(self) -> None:
        if self.section is None:
            return
        try:
            self.keys = load_vapid(self.section, self.context.base_dir)
        except VapidKeyError as exc:
            self.key_problem = str(exc)
            log.error("channel %s: %s", self.name, exc)
            await self.context.alert(self.name, self.key_problem)
            return
        if self.context.database is None or self.context.fanout is None:
            self.key_problem = "no store: web push needs the siar store for its subscriptions"
            return
        self.subs = SubscriptionStore(self.context.database, self.context.clock)
        self.batches = BatchLedger(self.context.database)
        self.signer = VapidSigner(self.keys, self.section.contact)
        # Connections: twice `concurrency`, as this daemon's own broadcast and its help with
        # another one may run at once (measured: benchmarks/README.md, "web push").
        self._transport = make_transport(
            "http2" if self.settings.http2 else self.settings.client,
            answer=push_answer,
            outcome=_outcome,
            guard=push_guard(self.section.push_hosts),
            ssl_context=_ssl_context(self.section, self.context.base_dir),
            user_agent=self.context.user_agent,
            limit=2 * self.settings.concurrency,
        )
        await self._start_server()
        if self.settings.share_broadcasts and self.context.database.engine.dialect.name == "postgresql":
            self._helper = asyncio.create_task(self._help_loop(), name=f"webpush {self.name}: help")

    async def _start_server(self) -> None:
        shared = self.context.shared.get(SHARED_KEY, _Shared, _Shared)
        async with shared.lock:
            shared.users += 1
            self._uses_server = True
            if shared.server is not None:
                return
            assert self.subs is not None and self.keys is not None and self.section is not None
            http = http_config(self.context.http, self.section)
            ignored = sorted({"listen", "trust_forwarded_for"} & self.section.model_fields_set)
            if self.context.http is not None and ignored:
                log.warning("web push: [http] is set, so [webpush] %s is ignored", ", ".join(ignored))
            server = PushHttpServer(
                self.section,
                self.subs,
                self.keys.public,
                site_name=self.context.site.name,
                notify_text=self.context.cta.notify_text,
                http=http,
            )
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
        return self.context.shared.get(SHARED_KEY, _Shared, _Shared).server

    async def close(self) -> None:
        self._stopping = True
        if self._helper is not None:  # finishes the batch it holds (seconds), then stops
            try:
                await asyncio.wait_for(self._helper, self.settings.timeout + 5)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("channel %s: helper stopped with an error", self.name)
            self._helper = None
        shared = self.context.shared.get(SHARED_KEY, _Shared, _Shared)
        if self._uses_server:
            self._uses_server = False
            async with shared.lock:
                shared.users -= 1
                if shared.users <= 0 and shared.server is not None:
                    await shared.server.stop()
                    shared.server = None
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

    # rendering

    def render(self, story: Story) -> Post:
        title = f"{story.breaking} {story.title}" if story.breaking else story.title
        if unit_count(title) and count_graphemes(title) > self.settings.title_limit:
            title = _shorten_to(title, self.settings.title_limit)
        section = self.section
        payload = WebPushPayload(
            title,
            story.url,
            story.image,
            story_tag(story),
            section.icon if section else "",
            section.badge if section else "",
        )

        def size(text: str) -> int:
            if count_graphemes(text) > self.settings.body_limit:
                return PAYLOAD_MAX + 1
            return len(payload_bytes(text, payload))

        text, used, values = self.renderer.fit(story, Budget("bytes", PAYLOAD_MAX, size))
        return self.post(
            story,
            text,
            Length("bytes", used, PAYLOAD_MAX),
            buttons=(Button(values["read_more"], story.url),) if story.url else (),
            media=(story.image,) if story.image else (),
            payload=payload,
        )

    def render_digest(self, digest: Digest) -> Post:
        """The roundup as one notification: the digest's title, its stories' titles as the body
        (as many as fit `body_limit` and the payload size), opening the site."""
        section = self.section
        url = self.context.site.url or digest.stories[0].url
        title = digest.title
        if count_graphemes(title) > self.settings.title_limit:
            title = _shorten_to(title, self.settings.title_limit)
        when = digest.at.isoformat() if digest.at else ""
        tag = "d" + hashlib.sha256(f"{self.name}\n{digest.title}\n{when}".encode()).hexdigest()[:20]
        payload = WebPushPayload(
            title, url, "", tag, section.icon if section else "", section.badge if section else ""
        )
        stories = list(digest.stories)
        for keep in range(len(stories), 0, -1):
            lines = [f"• {s.breaking + ' ' if s.breaking else ''}{s.title}" for s in stories[:keep]]
            more = digest.more + len(stories) - keep
            text = "\n".join(lines + ([f"… +{more}"] if more else []))
            if keep == 1 and count_graphemes(text) > self.settings.body_limit:
                text = _shorten_to(text, self.settings.body_limit)  # one long title: cut at a word
            used = len(payload_bytes(text, payload))
            if count_graphemes(text) <= self.settings.body_limit and used <= PAYLOAD_MAX:
                return self.post(
                    stories[0],
                    text,
                    Length("bytes", used, PAYLOAD_MAX),
                    buttons=(Button(self.renderer.variables(stories[0])["read_more"], url),),
                    payload=payload,
                    digest=dataclasses.replace(digest, stories=tuple(stories[:keep]), more=more),
                )
        raise RenderError(f"channel {self.name!r}: not even one title fits the digest notification")

    # sending

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        if self.keys is None or self.subs is None or self.section is None or self.batches is None:
            raise Permanent(self.key_problem or "the webpush channel was not started")
        payload = payload_of(post, WebPushPayload)
        subs, section, key = self.subs, self.section, idempotency_key
        await subs.expect_clicks(payload.tag, post.story.url)  # only pushed stories' clicks count
        data = payload_bytes(post.text, payload)
        topic = topic_header(self.name if self.settings.replace_unseen else payload.tag)
        tally = _Tally()
        ttl, urgency = self.delivery(post.story)

        async def audience() -> list[int]:
            if post.digest is not None:  # everyone who wants any of its stories
                return await subs.audience_any(post.digest.stories, section.topics)
            return await subs.audience(post.story, section.topics)

        prepare, apply = self._preparer(data, topic, ttl, urgency, tally)
        self._sending.add(key)  # its batches are this send's: the help loop leaves them alone
        try:
            result = await self._worker().run(
                key,
                audience,
                json.dumps({"data": data.decode(), "topic": topic, "ttl": ttl, "urgency": urgency}).encode(),
                prepare,
                apply=apply,
                budget=self.settings.send_timeout * 0.8,
            )
        finally:
            self._sending.discard(key)
        self.context.metrics.subscribers(self.name, await subs.count())
        if result.planned == 0:
            return Receipt(remote_id=key, note="no subscriber wants this story")
        note = result.summary("subscriptions")
        if tally.answers and tally.auth_rejected == tally.answers:
            raise Permanent(
                f"every push service rejected our VAPID signature ({tally.auth_detail}); "
                "check the VAPID key and webpush.contact, then `siar resend`"
            )
        if result.remaining:
            reason = tally.retry_detail or "time budget used, or other daemons still at work"
            raise RetryLater(
                f"{result.remaining} of {result.planned} pushes to do ({reason}); {note}",
                after=result.retry_after,
                attempt=result.progressed == 0,
            )
        log.info("channel %s: %s", self.name, note)
        return Receipt(remote_id=key, note=note)

    def _worker(self) -> BatchWorker:
        assert self.batches is not None
        return BatchWorker(
            self.batches,
            self.name,
            self.context.clock,
            self.holder,
            concurrency=self.settings.concurrency,
            batch_size=self.settings.batch_size,
            max_tries=MAX_TRIES,
            lease=self.settings.lease,
            metrics=self.context.metrics,
        )

    def _preparer(
        self, data: bytes, topic: str, ttl: int, urgency: str, tally: _Tally
    ) -> tuple[Prepare, Apply]:
        """`prepare(batch)` for the batch worker (one query for the batch's subscriptions) and
        `apply(outcomes)`, what the outcomes mean for the subscriptions (only rows a success
        changes are written: Target.stamped)."""
        subs = self.subs
        assert subs is not None
        stamped: set[int] = set()  # of this broadcast's prepared subscriptions

        async def prepare(ids: Sequence[int]) -> Deliver:
            targets = await subs.targets(ids)
            stamped.update(i for i, t in targets.items() if t.stamped)

            async def deliver(subscription_id: int) -> RecipientOutcome:
                target = targets.get(subscription_id)
                if target is None:
                    return RecipientOutcome(
                        subscription_id, "gone", "unsubscribed since the story was planned"
                    )
                answer = await self._deliver(target, data, topic, ttl, urgency)
                tally.add(answer)
                return answer.outcome(subscription_id)

            return deliver

        async def apply(outcomes: Sequence[RecipientOutcome]) -> None:
            ids = {o.recipient for o in outcomes}
            done = frozenset(ids & stamped)
            stamped.difference_update(ids)
            await subs.apply(outcomes, self.settings.max_failures, done)

        return prepare, apply

    async def help_once(self) -> int:
        """Work batches of any open broadcast of this channel that nobody holds (planned by
        another daemon, or left by a dead one); returns the recipients finished."""
        assert self.batches is not None
        finished = 0
        for key in await self.batches.open_keys(self.name, self.context.clock()):
            if key in self._sending:  # this daemon's own send works it, `concurrency` at a time
                continue
            message = await self.batches.message(key)
            if self._stopping or message is None:
                break
            job = json.loads(message)
            prepare, apply = self._preparer(
                job["data"].encode(), job["topic"], job["ttl"], job["urgency"], _Tally()
            )
            done, _, _ = await self._worker().work(
                prepare,
                apply=apply,
                key=key,
                stop=lambda: self._stopping,
            )
            finished += done
        return finished

    async def _help_loop(self) -> None:
        while not self._stopping:
            try:
                await self.help_once()
            except Exception:
                log.exception("channel %s: cannot help with a broadcast", self.name)
            for _ in range(int(self.settings.help_interval * 10)):
                if self._stopping:
                    return
                await asyncio.sleep(0.1)

    def delivery(self, story: Story) -> tuple[int, str]:
        """(TTL, Urgency) of a push: breaking news is `high` with `breaking_ttl` (when shorter
        than `ttl`), quiet hours `very-low`, else the channel's own."""
        if story.breaking:
            return int(min(self.settings.ttl, self.settings.breaking_ttl)), "high"
        if self.quiet_now(story):
            return int(self.settings.ttl), "very-low"
        return int(self.settings.ttl), self.settings.urgency

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        raise Permanent("web push cannot be recalled: a delivered notification cannot be changed")

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        raise Permanent("web push cannot be recalled: the notification is on the readers' devices")

    async def _deliver(self, target: Target, data: bytes, topic: str, ttl: int, urgency: str) -> PushAnswer:
        """One subscription: push, retrying quickly on 429/5xx/network errors when the wait is short."""
        origin = self._origin(target.endpoint)
        outcome = PushAnswer("retry", detail="not tried")
        for attempt in range(self.settings.retries + 1):
            wait = self._paused.get(origin, 0.0) - time.monotonic()
            if wait > self.settings.max_retry_wait:
                return PushAnswer("retry", detail=f"{origin} asked us to wait", retry_after=wait)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                outcome = await self._push_once(target, data, topic, origin, ttl, urgency)
            except Exception as exc:  # a corrupt stored key, an encryption bug: this one only
                log.exception("channel %s: cannot push to subscription %d", self.name, target.subscription_id)
                return PushAnswer("failed", detail=f"cannot encrypt or send: {type(exc).__name__}")
            if outcome.status != "retry" or outcome.auth_rejected:
                return outcome
            log.debug("channel %s: push to %s: %s; trying again", self.name, origin, outcome.detail)
            if outcome.retry_after is not None and outcome.code == 429:
                self._paused[origin] = time.monotonic() + outcome.retry_after
            delay = outcome.retry_after if outcome.retry_after is not None else 0.5 * 2**attempt
            if attempt == self.settings.retries or delay > self.settings.max_retry_wait:
                break
            await asyncio.sleep(delay)
        return outcome

    def _origin(self, endpoint: str) -> str:
        """The push service origin of `endpoint` (the VAPID audience), cached per prefix."""
        cut = endpoint.find("/", 8)
        prefix = endpoint[:cut] if cut > 0 else endpoint
        origin = self._origins.get(prefix)
        if origin is None:
            if len(self._origins) > 10_000:  # endpoints come from browsers: bound the cache
                self._origins.clear()
            origin = self._origins[prefix] = normalize_origin(prefix) or prefix
        return origin

    async def _push_once(
        self, target: Target, data: bytes, topic: str, origin: str, ttl: int, urgency: str
    ) -> PushAnswer:
        assert self.signer is not None and self._transport is not None
        try:
            body = encrypt(data, target.p256dh, target.auth)
        except BadSubscriptionKey as exc:
            return PushAnswer("failed", detail=f"unusable subscription keys: {exc}")
        headers = {
            "Authorization": self.signer.header(origin),
            "TTL": str(ttl),
            "Urgency": urgency,
            "Topic": topic,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        answer: PushAnswer = await self._transport.post(target.endpoint, headers, body, self.settings.timeout)
        return answer


def _outcome(status: str, detail: str) -> PushAnswer:
    """A PushAnswer without an HTTP answer: retry (nothing left), uncertain, failed."""
    return PushAnswer(status, detail=detail)


@dataclass
class _Tally:
    """What the push services answered during one send (counts, not a list: a million pushes)."""

    answers: int = 0
    auth_rejected: int = 0
    auth_detail: str = ""
    retry_detail: str = ""

    def add(self, answer: PushAnswer) -> None:
        self.answers += 1
        if answer.auth_rejected:
            self.auth_rejected += 1
            self.auth_detail = self.auth_detail or answer.detail
        elif answer.status == "retry":
            self.retry_detail = self.retry_detail or answer.detail


def _ssl_context(section: WebPushSection, base_dir: Path) -> ssl.SSLContext:
    """TLS settings for push requests: the system CAs, plus `ca_file` when given."""
    context = ssl.create_default_context()
    if section.ca_file:
        context.load_verify_locations(cafile=str(resolve_path(section.ca_file, base_dir)))
    return context


def push_answer(status: int, retry_after: str | None, text: str = "") -> PushAnswer:
    """What a push service's answer means for one subscription (RFC 8030, RFC 8292)."""
    brief = " ".join(text.split())[:120]
    if status in (200, 201, 202):
        return PushAnswer("sent", status)
    if status in (404, 410):
        return PushAnswer("gone", status, f"{status}: subscription expired or unsubscribed")
    if status == 429 or status >= 500:
        return PushAnswer("retry", status, f"{status} {brief}".strip(), retry_after_seconds(retry_after))
    if status in (401, 403):
        return PushAnswer("retry", status, f"{status}: VAPID rejected {brief}".strip(), auth_rejected=True)
    if status == 413:
        return PushAnswer("failed", status, "413: payload too large")
    return PushAnswer("failed", status, f"{status} {brief}".strip())


def payload_bytes(body: str, payload: WebPushPayload) -> bytes:
    """The JSON the service worker receives: title, lead, url, image, tag (+ icon, badge)."""
    data = {
        "title": payload.title,
        "lead": body,
        "url": payload.url,
        "image": payload.image,
        "tag": payload.tag,
    }
    if payload.icon:
        data["icon"] = payload.icon
    if payload.badge:
        data["badge"] = payload.badge
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
            raise ChannelUnavailable(
                f"no VAPID key yet ({path}); create it with `siar webpush init` "
                "or set webpush.vapid_private_key"
            )
    return channel
