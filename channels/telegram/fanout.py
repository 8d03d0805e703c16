"""`type = "telegram-subscribers"`: the reader bot, and the broadcast of each story to its readers.

One outbox row per story is one broadcast in the core fan-out ledger (bot.fanout): its audience
(active subscribers whose topics match) is fixed once, then each reader is paced by the token's
`ChatPacer` (≤ `messages_per_second` overall, one message per chat per second, ≤ 19 a minute
per group): its turn comes a little ahead of its moment (0.1–0.25 s), the reader is marked
`sending` meanwhile, and the request leaves at the moment (`ChatPacer.go`), not whenever the
ledger's write finished. After a crash the few readers whose message was in flight are
`uncertain` (never messaged twice); the rest resume.

Broadcast messages do not go through python-telegram-bot's `Bot` (its per-request overhead and
httpx's connection pool capped a broadcast at ~150 messages/s): they are posted, form encoded
exactly as PTB encodes them, to `{api_base_url}/bot{token}/sendMessage` through one aiohttp
session with keep-alive connections, and each answer is mapped the way PTB maps it
(`_outcome`). The interactive bot (commands, buttons, replies) still uses PTB.

Readers get a text message with a large link preview (not a photo): one compact notification
per story, the preview shows the site's own picture and title.

Readers' own preferences (`readerbot`: /senyap, /ringkasan): a reader's quiet hours send the
message without a notification (breaking news still notifies); a digest-only reader gets the
digests and breaking news, nothing else. With `edit_readers` / `delete_readers`, a correction or
a retraction is a broadcast too (its own key in the ledger): one editMessageText or
deleteMessage per reader message the original broadcast recorded, paced and resumable alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from telegram import LinkPreviewOptions
from yarl import URL

from bot.channel import ChannelContext, ChannelSettings, Permanent, RetryLater, Unauthorized
from bot.counting import Budget, count_telegram
from bot.fanout import Broadcaster, RecipientOutcome, RecipientStatus
from bot.http_retry import aiohttp_request_may_have_left, retry_after_seconds
from bot.kit import BaseChannel
from bot.schedule import in_quiet, parse_clock
from bot.types import Digest, Length, Post, Published, Receipt, Story
from channels.telegram.app import TelegramApp, app_for, telegram_section
from channels.telegram.buttons import keyboard_buttons, reply_markup
from channels.telegram.config import ReaderSettings
from channels.telegram.errors import bad_request_kind
from channels.telegram.pacing import MAX_LEAD, MIN_LEAD, ChatPacer
from channels.telegram.poster import DIGEST_TEMPLATE, TEXT_LIMIT
from channels.telegram.readerbot import ReaderBot
from channels.telegram.store import Subscriber, TelegramStore
from channels.telegram.topics import wants

log = logging.getLogger("siar.telegram.fanout")
PACER_SPACING = 0.85  # closest two broadcast messages may go, in 1/messages_per_second
MAX_TRIES = 4  # per reader, for answers that may succeed later (5xx, flood control)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# What an edit's or a deletion's 400 answers mean for one reader (see errors.BAD_REQUESTS).
EDIT_ANSWERS: dict[str, RecipientStatus] = {"not_modified": "sent", "message_gone": "gone"}
DELETE_ANSWERS: dict[str, RecipientStatus] = {"message_gone": "gone"}


def reader_quiet_hours(value: str | None) -> tuple[time, time] | None:
    """A reader's stored quiet hours ("22:00-06:00") as times; None when unset or unreadable."""
    if not value or "-" not in value:
        return None
    start, _, end = value.partition("-")
    try:
        return parse_clock(start), parse_clock(end)
    except ValueError:
        return None


def audience_wants(sub: Subscriber, post: Post, everyone_gets_digests: bool) -> bool:
    """Whether reader `sub` gets `post`: a digest goes to digest-only readers (to everyone on a
    digest-only channel); any other post to the readers whose topics match, except the
    digest-only ones, who get breaking news only."""
    if post.digest is not None:
        return sub.digest_only or everyone_gets_digests
    if sub.digest_only and not post.story.breaking:
        return False
    return wants(sub, post.story)


DEFAULT_TEMPLATE = """\
<b>{% if breaking %}{{ breaking }} {% endif %}{{ title }}</b>

{{ lead }}

{{ hashtags }}
"""


class SubscriberChannel(BaseChannel[ReaderSettings]):
    """The reader bot (commands) and the broadcaster (send). Resumable: per-reader progress."""

    TYPE = "telegram-subscribers"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    DIGEST_TEMPLATE = DIGEST_TEMPLATE
    HTML = True
    RESUMABLE = True

    def __init__(self, name: str, settings: ReaderSettings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self.can_edit = settings.edit_readers
        self.can_delete = settings.delete_readers
        self.turned_off = {
            action: setting
            for action, setting, on in (
                ("edit", "edit_readers", settings.edit_readers),
                ("delete", "delete_readers", settings.delete_readers),
            )
            if not on
        }
        self.section = telegram_section(context)
        self.language = self.section.language
        self.bot: TelegramApp | None = None
        self.store: TelegramStore | None = None
        self.reader: ReaderBot | None = None
        self._session: aiohttp.ClientSession | None = None  # broadcast sends (keep-alive pool)
        self._send_url = ""  # contains the token: never log it
        self._proxy: str | None = None
        self._proxy_auth: Any = None

    async def start(self) -> None:
        if self.context.database is None or self.context.fanout is None:
            raise RuntimeError("the telegram-subscribers channel needs the store")
        self.store = TelegramStore(self.context.database)
        bot = app_for(self.context)
        if bot.reader is not None and bot.reader.name != self.name:
            raise RuntimeError(
                f"channel {self.name}: this bot token already runs a reader bot "
                f"({bot.reader.name}); one per token"
            )
        rate = self.settings.messages_per_second
        if rate > 30 and not self.settings.allow_paid_broadcast:
            log.warning(
                "channel %s: messages_per_second %.0f is over Telegram's 30/s; using 29 "
                "(set allow_paid_broadcast for more)",
                self.name,
                rate,
            )
            rate = 29.0
        # Catching up after a stall at most ~18% faster than `rate` keeps a margin under
        # Telegram's 30/s for requests that arrive unevenly.
        bot.pacer.configure(rate, min_spacing=PACER_SPACING)
        # A reader's turn is handed out a little before its moment, to mark the reader `sending`
        # (the ledger's group commit) meanwhile; no longer ahead than half the requests in
        # flight can cover at this rate.
        bot.pacer.max_lead = min(MAX_LEAD, max(MIN_LEAD, 0.5 * self.settings.concurrency / max(rate, 1.0)))
        reader = ReaderBot(self.name, self.store, self.context, settings=self.settings, section=self.section)
        await bot.acquire()  # may fail (Telegram unreachable): nothing is left registered then
        try:
            reader.register(bot.app)
            await reader.set_commands(bot.app)
            await bot.receive_updates()
        except BaseException:
            await bot.release()
            raise
        self.bot, self.reader, bot.reader = bot, reader, reader
        self._open_session()

    @property
    def pacer(self) -> ChatPacer | None:
        """The token's rate limiter (every message of this bot waits on it), once started."""
        return self.bot.pacer if self.bot is not None else None

    def _open_session(self) -> None:
        section = self.section
        self._api_url = f"{section.bot_url}{section.token.get_secret_value()}/"
        self._send_url = self._api_url + "sendMessage"
        # The environment's proxy (HTTPS_PROXY, NO_PROXY...), as PTB's httpx client would use it,
        # looked up once: aiohttp's trust_env does it in a thread for every request.
        try:
            proxy, self._proxy_auth = get_env_proxy_for_url(URL(self._send_url))
            self._proxy = str(proxy)
        except LookupError:
            self._proxy, self._proxy_auth = None, None
        # `connect` covers waiting for a pooled connection and connecting (nothing sent yet);
        # `sock_read` is how long an answer may take once the request is out.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=section.request_timeout, sock_connect=10.0, sock_read=section.request_timeout
        )
        connector = aiohttp.TCPConnector(limit=max(self.settings.concurrency, 8), keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self.context.user_agent},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.reader is not None:
            await self.reader.close()
        if self.bot is not None:
            if self.bot.reader is self.reader:
                self.bot.reader = None
            await self.bot.release()
            self.bot = None
        self.reader = None

    def render(self, story: Story) -> Post:
        text, used, _ = self.renderer.fit(story, Budget("utf16", TEXT_LIMIT, count_telegram))
        return self.post(
            story,
            text,
            Length("utf16", used, TEXT_LIMIT),
            parse_mode="HTML",
            buttons=keyboard_buttons(story, self.context, self.language),
        )

    def digest_budget(self) -> Budget:
        return Budget("utf16", TEXT_LIMIT, count_telegram)

    def render_digest(self, digest: Digest) -> Post:
        """The roundup for digest-only readers: an HTML list of linked titles, within 4096."""
        post = super().render_digest(digest)
        return post if post.digest is not None else dataclasses.replace(post, digest=digest)

    def _reader_silent(self, sub: Subscriber | None, story: Story) -> bool:
        """disable_notification for one reader: `silent`, the channel's or the reader's own
        quiet hours; never for breaking news."""
        if story.breaking:
            return False
        if self.settings.silent or self.quiet_now(story):
            return True
        hours = reader_quiet_hours(sub.quiet_hours) if sub is not None else None
        return in_quiet(self.now(), hours, self.context.site.timezone)

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Broadcast `post` to every matching reader, resuming an interrupted broadcast.

        A cancellation (shutdown) propagates: the dispatcher keeps the row pending (this channel
        is resumable) and the ledger says where to resume."""
        assert self.store is not None and self.bot is not None and self.context.fanout is not None, (
            "start() first"
        )
        active = await self.store.active_subscribers(self.name)
        self.context.metrics.subscribers(self.name, len(active))
        digests_for_all = self.settings.digest is not None and self.settings.digest.only
        audience = {s.chat_id: s for s in active if audience_wants(s, post, digests_for_all)}
        bodies = {
            (language, silent): body
            for silent in (False, True)
            for language, body in self._bodies(post, silent).items()
        }
        unsubscribe: dict[int, str] = {}

        async def deliver(chat: int) -> RecipientOutcome:
            sub = audience.get(chat)
            language = sub.language if sub is not None and sub.language in ("id", "en") else self.language
            body = bodies[(language, self._reader_silent(sub, post.story))]
            return await self._send_one(chat, body, unsubscribe)

        return await self._broadcast(idempotency_key, audience, deliver, unsubscribe)

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        """Edit every reader's message of the story (`edit_readers`), as a broadcast of its own."""
        if not self.can_edit:
            raise Permanent(f"channel {self.name}: edit_readers is off; readers' messages are not edited")
        return await self._redo(published, idempotency_key, self._edit_bodies(post), EDIT_ANSWERS)

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """Delete every reader's message of the story (`delete_readers`), as a broadcast."""
        if not self.can_delete:
            raise Permanent(f"channel {self.name}: delete_readers is off; readers' messages stay")
        return await self._redo(published, idempotency_key, None, DELETE_ANSWERS)

    async def _redo(
        self,
        published: Published,
        idempotency_key: str,
        bodies: dict[str, str] | None,
        answers: dict[str, RecipientStatus],
    ) -> Receipt:
        """One request per reader message broadcast `published.remote_id` left: editMessageText
        with `bodies` (per language), or deleteMessage when None."""
        assert self.store is not None, "start() first"
        messages = await self.store.reader_messages(self.name, published.remote_id)
        subs = {s.chat_id: s for s in await self.store.active_subscribers(self.name)}
        audience: dict[int, Subscriber | None] = {chat: subs.get(chat) for chat in messages}
        method = "deleteMessage" if bodies is None else "editMessageText"
        unsubscribe: dict[int, str] = {}

        async def deliver(chat: int) -> RecipientOutcome:
            sub = audience.get(chat)
            head = f"chat_id={chat}&message_id={messages[chat]}"
            if bodies is not None:
                language = sub.language if sub is not None and sub.language in bodies else self.language
                head += "&" + bodies[language]
            outcome = await self._send_one(chat, head, unsubscribe, method=method, answers=answers)
            if outcome.status == "moved":  # a new supergroup: the old message ids mean nothing there
                detail = f"chat {chat} {outcome.detail}; its message is out of reach"
                return RecipientOutcome(chat, "failed", detail)
            return dataclasses.replace(outcome, remote_id=str(messages[chat]))

        verb = "deleted for" if bodies is None else "edited for"
        return await self._broadcast(idempotency_key, audience, deliver, unsubscribe, verb=verb)

    async def _broadcast(
        self,
        key: str,
        audience: Mapping[int, Subscriber | None],
        deliver: Callable[[int], Awaitable[RecipientOutcome]],
        unsubscribe: dict[int, str],
        *,
        verb: str = "sent to",
    ) -> Receipt:
        """Run broadcast `key` to `audience` through the ledger, paced; RetryLater while readers
        are left to do."""
        assert self.store is not None and self.bot is not None and self.context.fanout is not None
        store, pacer = self.store, self.bot.pacer

        async def plan() -> list[int]:
            return list(audience)

        # chat -> (the moment its request goes, when that turn was handed out): ChatPacer.go
        turns: dict[int, tuple[float, float]] = {}

        def group(chat: int) -> bool | None:
            sub = audience.get(chat)
            return sub.kind in ("group", "supergroup") if sub else None

        async def pace(chat: int) -> None:
            at = await pacer.wait(chat, group(chat), lead=pacer.lead)
            turns[chat] = (at, pacer.clock())

        async def paced(chat: int) -> RecipientOutcome:
            turn = turns.pop(chat, None)
            if turn is not None:  # the reader is marked `sending` now: its request goes on time
                pacer.learn(pacer.clock() - turn[1])
                await pacer.go(chat, turn[0], group(chat))
            return await deliver(chat)

        async def apply(outcomes: Sequence[RecipientOutcome]) -> None:
            now = self.now()
            for outcome in outcomes:
                if outcome.status == "moved" and outcome.moved_to is not None:
                    await store.move_subscriber(self.name, outcome.recipient, outcome.moved_to, now)
            gone = [
                (chat, unsubscribe.pop(chat))
                for chat in [o.recipient for o in outcomes]
                if chat in unsubscribe
            ]
            await store.unsubscribe_many(self.name, gone, now)

        per_second = 1 / pacer.gap if pacer.gap else 200
        # A batch is about a second of sends.
        broadcaster = Broadcaster(
            self.context.fanout,
            self.name,
            self.context.clock,
            concurrency=self.settings.concurrency,
            batch_size=max(self.settings.concurrency, min(200, int(per_second))),
            max_tries=MAX_TRIES,
            metrics=self.context.metrics,
        )
        result = await broadcaster.run(
            key,
            plan,
            paced,
            pace=pace,
            apply=apply,
            budget=self.settings.send_timeout * 0.8,
        )
        note = result.summary("readers").replace("sent to", verb, 1)  # "edited for 3 of 3 readers"
        if result.remaining:
            raise RetryLater(
                f"{result.remaining} of {result.planned} readers to do; {note}",
                after=result.retry_after,
                attempt=result.progressed == 0,
            )
        return Receipt(remote_id=key, note=note)

    def _bodies(self, post: Post, silent: bool) -> dict[str, str]:
        """Per language, the form-encoded sendMessage parameters after `chat_id`, encoded as PTB
        encodes them (strings as they are, everything else JSON)."""
        story = post.story
        preview = (
            LinkPreviewOptions(url=story.url, prefer_large_media=True)
            if story.url and post.digest is None
            else LinkPreviewOptions(is_disabled=True)
        )
        bodies = {}
        for lang in ("id", "en"):
            params: dict[str, Any] = {
                "text": post.text,
                "parse_mode": "HTML",
                "link_preview_options": preview.to_dict(),
                "disable_notification": silent,
            }
            markup = reply_markup(keyboard_buttons(story, self.context, lang))
            if markup is not None:
                params["reply_markup"] = markup.to_dict()
            if self.settings.allow_paid_broadcast:
                params["allow_paid_broadcast"] = True
            bodies[lang] = urlencode(
                {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
            )
        return bodies

    def _edit_bodies(self, post: Post) -> dict[str, str]:
        """Per language, the editMessageText parameters after `chat_id` and `message_id`."""
        story = post.story
        preview = (
            LinkPreviewOptions(url=story.url, prefer_large_media=True)
            if story.url
            else LinkPreviewOptions(is_disabled=True)
        )
        bodies = {}
        for lang in ("id", "en"):
            params: dict[str, Any] = {
                "text": post.text,
                "parse_mode": "HTML",
                "link_preview_options": preview.to_dict(),
            }
            markup = reply_markup(keyboard_buttons(story, self.context, lang))
            if markup is not None:
                params["reply_markup"] = markup.to_dict()
            bodies[lang] = urlencode(
                {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
            )
        return bodies

    async def _send_one(
        self,
        chat: int,
        body: str,
        unsubscribe: dict[int, str],
        *,
        method: str = "sendMessage",
        answers: dict[str, RecipientStatus] | None = None,
    ) -> RecipientOutcome:
        """One reader's request (a message, or `method` with `body` holding every parameter),
        with every Telegram answer turned into the reader's outcome (`answers`: what a 400 of
        each errors.BAD_REQUESTS kind means, e.g. "message is not modified" = done)."""
        assert self._session is not None, "start() first"
        url, data = self._send_url, f"chat_id={chat}&{body}"
        if method != "sendMessage":
            url, data = self._api_url + method, body
        try:
            async with self._session.post(
                url,
                data=data,
                headers=FORM,
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
            ) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not aiohttp_request_may_have_left(exc):  # nothing was sent
                return RecipientOutcome(chat, "retry", f"network: {self._safe(exc)}")
            # Disconnected, reset, no answer...: the message may have arrived, and the Bot API
            # has no idempotency key, so this reader is not sent to again.
            return RecipientOutcome(chat, "uncertain", f"network: {self._safe(exc)}; may have arrived")
        return self._outcome(chat, status, raw, unsubscribe, answers or {})

    def _safe(self, exc: BaseException) -> str:
        """An exception as text, without the token (aiohttp may quote the URL)."""
        text = f"{type(exc).__name__}: {exc}"
        return text.replace(self.section.token.get_secret_value(), "<token>")[:200]

    def _outcome(
        self,
        chat: int,
        status: int,
        raw: bytes,
        unsubscribe: dict[int, str],
        answers: dict[str, RecipientStatus] | None = None,
    ) -> RecipientOutcome:
        """Telegram's answer -> the reader's outcome, as python-telegram-bot classifies answers:
        `migrate_to_chat_id` (ChatMigrated), `retry_after` (RetryAfter), 403 Forbidden,
        401/404 InvalidToken, 400 BadRequest, anything else NetworkError."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            if 200 <= status <= 299:  # accepted, it seems, but not by a Bot API we understand
                return RecipientOutcome(chat, "uncertain", "unreadable answer from Telegram")
            data = {}
        if 200 <= status <= 299:
            result = data.get("result")
            message_id = result.get("message_id") if isinstance(result, dict) else None
            return RecipientOutcome(
                chat, "sent", remote_id=str(message_id) if isinstance(message_id, int) else None
            )
        description = str(data.get("description") or f"HTTP {status}")
        found = data.get("parameters")
        parameters: dict[str, Any] = found if isinstance(found, dict) else {}
        new_chat = parameters.get("migrate_to_chat_id")
        if isinstance(new_chat, int):
            return RecipientOutcome(chat, "moved", f"became {new_chat}", moved_to=new_chat)
        after = retry_after_seconds(parameters.get("retry_after"))
        if after is not None:
            assert self.bot is not None
            log.warning("channel %s: flood control, pausing the broadcast %.0fs", self.name, after)
            self.bot.pacer.pause(after)
            return RecipientOutcome(chat, "retry", f"flood control {after:g}s", retry_after=after)
        if status == 403:
            unsubscribe[chat] = "blocked"
            return RecipientOutcome(chat, "failed", f"unsubscribed: {description}")
        if status in (401, 404):
            raise Unauthorized("Telegram refused the bot token ([telegram] token)")
        if status == 400:
            kind = bad_request_kind(Exception(description))
            if kind in (answers or {}):
                return RecipientOutcome(chat, (answers or {})[kind], description)
            if kind == "chat_gone":
                unsubscribe[chat] = "chat not found"
            return RecipientOutcome(chat, "failed", description)
        return RecipientOutcome(chat, "retry", f"network: {description}")


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> SubscriberChannel:
    assert isinstance(settings, ReaderSettings)
    return SubscriberChannel(name, settings, context)
