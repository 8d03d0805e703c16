"""`type = "telegram-subscribers"`: the reader bot, and the fan-out of each story to its readers.

One outbox row per story is one broadcast. `send` fixes the audience (active subscribers whose
topics match) as per-chat rows in `tg_deliveries`, then sends to them in small batches, paced by
`ChatPacer` (≤ `messages_per_second` overall, one message per chat per second, ≤ 19 a minute
per group). A batch is marked `sending` in one statement before it goes and its results are
written in one transaction after it: after a crash, `pending` chats are sent and the few
`sending` ones are not (they may have the story already), so a resumed broadcast never messages
anyone twice. That is why this channel is `resumable`.

Broadcast messages do not go through python-telegram-bot's `Bot` (its per-request overhead and
httpx's connection pool capped a broadcast at ~150 messages/s): they are posted, form encoded
exactly as PTB encodes them, to `{api_base_url}/bot{token}/sendMessage` through one aiohttp
session with keep-alive connections, and each answer is mapped the way PTB maps it (see
`_outcome`). The interactive bot (commands, buttons, replies) still uses PTB.

Readers get a text message with a large link preview (not a photo): one compact notification
per story, the preview shows the site's own picture and title.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

from pydantic import Field

from bot.channel import ChannelContext, ChannelSettings, Permanent
from bot.counting import Budget, count_telegram
from bot.render import PostRenderer, load_template_text
from bot.types import Length, Post, Receipt, Story

if TYPE_CHECKING:
    from aiohttp import ClientSession

    from bot.telegram_bot import ChatPacer, ReaderBot
    from bot.telegram_store import TelegramStore
    from channels.telegram_api import TelegramBot

log = logging.getLogger("siar.telegram.fanout")
PACER_SPACING = 0.85  # closest two broadcast messages may go, in 1/messages_per_second
MAX_TRIES = 4  # per chat, for answers that may succeed later (5xx, flood control)

DEFAULT_TEMPLATE = """\
<b>{{ title }}</b>

{{ lead }}

{{ hashtags }}
"""


class Settings(ChannelSettings):
    type: str = "telegram-subscribers"
    rate_limit: str = "1000/s"  # stories per period; each story is one broadcast
    messages_per_second: float = Field(default=29.0, ge=0)  # overall; Telegram allows ~30; 0 = no limit
    allow_paid_broadcast: bool = False  # Telegram Stars paid broadcast: up to 1000 messages/s
    concurrency: int = Field(default=8, ge=1, le=256)  # requests in flight during a broadcast
    # Sections offered in /topik; empty = the sections seen in recent stories.
    topics: list[str] = Field(default_factory=list)
    top_tags: int = Field(default=8, ge=0, le=40)  # most frequent tags offered in /topik
    silent: bool = False

    requires_section: ClassVar[str | None] = "telegram"


@dataclass
class Outcome:
    status: str  # sent, failed, pending (try again), uncertain, moved
    message_id: int | None = None
    detail: str = ""


@dataclass
class Batch:
    """What one batch's sends leave for the store: row results and chats to unsubscribe."""

    results: dict[int, Outcome] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)
    unsubscribe: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class BroadcastReport:
    planned: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class SubscriberChannel:
    """The reader bot (commands) and the broadcaster (send)."""

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        from channels.telegram_api import section

        self.name = name
        self.type = "telegram-subscribers"
        self.resumable = True
        self.settings = settings
        self.context = context
        self.section = section(context)
        self.language = self.section.language
        template = load_template_text(settings.template, DEFAULT_TEMPLATE, context.base_dir)
        self.renderer = PostRenderer(name, template, context, html=True, tag_settings=settings.hashtags)
        self.bot: TelegramBot | None = None
        self.store: TelegramStore | None = None
        self.reader: ReaderBot | None = None
        self.pacer: ChatPacer | None = None
        self._session: ClientSession | None = None  # broadcast sends (keep-alive pool)
        self._send_url = ""  # contains the token: never log it
        self._proxy: str | None = None
        self._proxy_auth: Any = None

    def _now(self) -> datetime:
        return self.context.clock() if self.context.clock else datetime.now(UTC)

    async def start(self) -> None:
        from bot.telegram_bot import ChatPacer, ReaderBot
        from bot.telegram_store import store_for
        from channels.telegram_api import bot_for

        if self.context.store is None:
            raise RuntimeError("the telegram-subscribers channel needs the store")
        self.store = store_for(self.context.store)
        self.bot = bot_for(self.context)
        if "reader" in self.bot.extras:
            raise RuntimeError(f"channel {self.name}: this bot token already runs a reader bot "
                               f"({self.bot.extras['reader'].name}); one per token")
        rate = self.settings.messages_per_second
        if rate > 30 and not self.settings.allow_paid_broadcast:
            log.warning("channel %s: messages_per_second %.0f is over Telegram's 30/s; using 29 "
                        "(set allow_paid_broadcast for more)", self.name, rate)
            rate = 29.0
        # Catching up after a stall at most ~18% faster than `rate` keeps a margin under
        # Telegram's 30/s for requests that arrive unevenly.
        self.pacer = ChatPacer(per_second=rate, min_spacing=PACER_SPACING)
        self.reader = ReaderBot(self.name, self.store, self.context.store, self.context,
                                language=self.language, admins=self.section.admins,
                                sections=self.settings.topics, top_tags=self.settings.top_tags,
                                pacer=self.pacer, clock=self._now)
        self.bot.extras["reader"] = self.reader
        await self.bot.acquire()
        self.reader.register(self.bot.app)
        await self.reader.set_commands(self.bot.app)
        await self.bot.receive_updates()
        self._open_session()

    def _open_session(self) -> None:
        import aiohttp
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        section = self.section
        self._send_url = f"{section.bot_url}{section.token.get_secret_value()}/sendMessage"
        # The environment's proxy (HTTPS_PROXY, NO_PROXY...), as PTB's httpx client would use it,
        # looked up once: aiohttp's trust_env does it in a thread for every request.
        try:
            proxy, self._proxy_auth = get_env_proxy_for_url(URL(self._send_url))
            self._proxy = str(proxy)
        except LookupError:
            self._proxy, self._proxy_auth = None, None
        # `connect` covers waiting for a pooled connection and connecting (nothing sent yet);
        # `sock_read` is how long an answer may take once the request is out.
        timeout = aiohttp.ClientTimeout(total=None, connect=section.request_timeout, sock_connect=10.0,
                                        sock_read=section.request_timeout)
        connector = aiohttp.TCPConnector(limit=max(self.settings.concurrency, 8), keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self.context.user_agent})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.bot is not None:
            self.bot.extras.pop("reader", None)
            await self.bot.release()
            self.bot = None

    def render(self, story: Story) -> Post:
        from channels.telegram import TEXT_LIMIT, keyboard_buttons

        text, used, _ = self.renderer.fit(story, Budget("utf16", TEXT_LIMIT, count_telegram))
        return Post(channel=self.name, type=self.type, story=story, text=text,
                    length=Length("utf16", used, TEXT_LIMIT), parse_mode="HTML",
                    buttons=keyboard_buttons(story, self.context, self.language))

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Broadcast `post` to every matching subscriber, resuming an interrupted broadcast."""
        # A cancellation (shutdown) propagates: the dispatcher keeps the row pending because
        # this channel is resumable, and the per-chat rows say where to resume.
        report = await self.broadcast(post, idempotency_key)
        c = report.counts
        note = (f"sent to {c.get('sent', 0)} of {report.planned} readers; {c.get('failed', 0)} failed, "
                f"{c.get('uncertain', 0)} uncertain")
        return Receipt(remote_id=idempotency_key, note=note)

    async def broadcast(self, post: Post, key: str) -> BroadcastReport:
        from bot.telegram_bot import wants

        assert self.store is not None and self.bot is not None, "start() first"
        store = self.store
        lost = await store.abandon_in_flight(key, self._now())
        if lost:
            log.warning("channel %s: %d readers may or may not have %s (siar stopped mid-send); "
                        "not resending to them", self.name, lost, post.story.url)
        audience = [s for s in await store.active_subscribers(self.name) if wants(s, post.story)]
        planned = await store.plan(key, self.name, [s.chat_id for s in audience], self._now())
        languages = {s.chat_id: s.language for s in audience}
        kinds = {s.chat_id: s.kind for s in audience}
        bodies = self._bodies(post)
        assert self.pacer is not None
        per_second = 1 / self.pacer.gap if self.pacer.gap else 200
        # A batch is about a second of sends: what a hard crash can leave `sending` (uncertain).
        batch = max(self.settings.concurrency, min(200, int(per_second)))
        troubled = 0
        while True:
            await store.give_up(key, MAX_TRIES, self._now())
            chats = await store.claim(key, batch, self._now())
            if not chats:
                break
            if await self._send_batch(key, chats, languages, kinds, bodies):
                troubled += 1
                await asyncio.sleep(min(30.0, 0.5 * 2 ** troubled))  # Telegram failing: back off
            else:
                troubled = 0
        return BroadcastReport(planned, await store.delivery_counts(key))

    async def _send_batch(self, key: str, chats: list[int], languages: dict[int, str],
                          kinds: dict[int, str], bodies: dict[str, str]) -> bool:
        """Send to `chats`; True if Telegram failed some (5xx, network). On cancellation the
        chats not yet started stay pending."""
        assert self.store is not None
        batch = Batch()
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        fatal: list[BaseException] = []
        pacer = self.pacer
        assert pacer is not None

        async def one(chat: int) -> None:
            # Never raises (but for cancellation): a failure here must not keep the batch's
            # results from being recorded or stop the other chats.
            try:
                async with semaphore:
                    if fatal:
                        return
                    body = bodies[languages.get(chat, self.language)]
                    await pacer.wait(chat, kinds.get(chat, "private") in ("group", "supergroup"))
                    batch.started.add(chat)
                    batch.results[chat] = await self._send_one(key, chat, body, batch)
            except Permanent as exc:
                fatal.append(exc)
                batch.results[chat] = Outcome("pending", None, exc.reason)
            except Exception as exc:
                # A bug or a database error: once the request may be out it is not sent again.
                log.exception("channel %s: sending to chat %s failed", self.name, chat)
                batch.results[chat] = (Outcome("uncertain", None, f"error: {self._safe(exc)}")
                                       if chat in batch.started else Outcome("pending", None, ""))

        def rows() -> list[tuple[int, str, int | None, str]]:
            outcomes = [(c, *self._row(batch.results.get(c), c in batch.started)) for c in chats]
            return [o for o in outcomes if o[1] != "moved"]  # a moved chat's row has its new id

        async def record() -> None:
            assert self.store is not None
            await self.store.finish(key, rows(), self._now(), bot=self.name, unsubscribe=batch.unsubscribe)

        try:
            # A TaskGroup: whatever ends the batch early, no send goes on unrecorded behind it.
            async with asyncio.TaskGroup() as group:
                for chat in chats:
                    group.create_task(one(chat))
        except asyncio.CancelledError:
            await asyncio.shield(record())
            raise
        await record()
        if fatal:
            raise fatal[0]
        return any(o.detail.startswith("network:") for o in batch.results.values())

    @staticmethod
    def _row(outcome: Outcome | None, started: bool) -> tuple[str, int | None, str]:
        if outcome is None:
            return ("uncertain", None, "interrupted while sending") if started else ("pending", None, "")
        return outcome.status, outcome.message_id, outcome.detail

    def _bodies(self, post: Post) -> dict[str, str]:
        """Per language, the form-encoded sendMessage parameters after `chat_id`, encoded as PTB
        encodes them (strings as they are, everything else JSON)."""
        from telegram import LinkPreviewOptions

        from channels.telegram import keyboard_buttons, reply_markup

        story = post.story
        preview = LinkPreviewOptions(url=story.url, prefer_large_media=True) if story.url \
            else LinkPreviewOptions(is_disabled=True)
        bodies = {}
        for lang in ("id", "en"):
            params: dict[str, Any] = {"text": post.text, "parse_mode": "HTML",
                                      "link_preview_options": preview.to_dict(),
                                      "disable_notification": self.settings.silent}
            markup = reply_markup(keyboard_buttons(story, self.context, lang))
            if markup is not None:
                params["reply_markup"] = markup.to_dict()
            if self.settings.allow_paid_broadcast:
                params["allow_paid_broadcast"] = True
            bodies[lang] = urlencode({k: v if isinstance(v, str) else json.dumps(v)
                                      for k, v in params.items()})
        return bodies

    async def _send_one(self, key: str, chat: int, body: str, batch: Batch) -> Outcome:
        """One reader's message, with every Telegram answer turned into the row's next state."""
        import aiohttp

        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self._send_url, data=f"chat_id={chat}&{body}", headers=FORM,
                                          proxy=self._proxy, proxy_auth=self._proxy_auth) as response:
                status, raw = response.status, await response.read()
        except aiohttp.ConnectionTimeoutError:  # no connection (pool or connect): nothing was sent
            return Outcome("pending", None, "timed out before sending")
        except (aiohttp.ServerTimeoutError, TimeoutError):
            return Outcome("uncertain", None, "no answer after sending")
        except aiohttp.ClientConnectorError as exc:  # no connection was made: nothing was sent
            return Outcome("pending", None, f"network: {self._safe(exc)}")
        except aiohttp.ClientError as exc:
            # Disconnected, reset, a broken answer...: the request may have been delivered, and
            # the Bot API has no idempotency key, so this chat is not sent to again.
            return Outcome("uncertain", None, f"network: {self._safe(exc)}; may have been delivered")
        return await self._outcome(key, chat, status, raw, batch)

    def _safe(self, exc: BaseException) -> str:
        """An exception as text, without the token (aiohttp may quote the URL)."""
        text = f"{type(exc).__name__}: {exc}"
        return text.replace(self.section.token.get_secret_value(), "<token>")[:200]

    async def _outcome(self, key: str, chat: int, status: int, raw: bytes, batch: Batch) -> Outcome:
        """Telegram's answer -> the row's next state, as python-telegram-bot classifies answers:
        `migrate_to_chat_id` (ChatMigrated), `retry_after` (RetryAfter), 403 Forbidden,
        401/404 InvalidToken, 400 BadRequest, anything else NetworkError."""
        assert self.store is not None and self.pacer is not None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            if 200 <= status <= 299:  # accepted, it seems, but not by a Bot API we understand
                return Outcome("uncertain", None, "unreadable answer from Telegram")
            data = {}
        if 200 <= status <= 299:
            result = data.get("result")
            message_id = result.get("message_id") if isinstance(result, dict) else None
            return Outcome("sent", int(message_id) if isinstance(message_id, int) else None)
        description = str(data.get("description") or f"HTTP {status}")
        parameters = data.get("parameters") or {}
        new_chat = parameters.get("migrate_to_chat_id") if isinstance(parameters, dict) else None
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        if new_chat:
            await self.store.move_subscriber(self.name, chat, int(new_chat), self._now())
            await self.store.move_delivery(key, chat, int(new_chat), self._now())
            return Outcome("moved")
        if retry_after:
            after = float(retry_after)
            log.warning("channel %s: flood control, pausing the broadcast %.0fs", self.name, after)
            self.pacer.pause(after)
            return Outcome("pending", None, f"flood control {after:g}s")
        if status == 403:
            batch.unsubscribe.append((chat, "blocked"))
            return Outcome("failed", None, f"unsubscribed: {description}")
        if status in (401, 404):
            raise Permanent("Telegram refused the bot token ([telegram] token)")
        if status == 400:
            if "chat not found" in description.lower():
                batch.unsubscribe.append((chat, "chat not found"))
            return Outcome("failed", None, description)
        return Outcome("pending", None, f"network: {description}")


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> SubscriberChannel:
    assert isinstance(settings, Settings)
    return SubscriberChannel(name, settings, context)
