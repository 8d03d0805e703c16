"""`type = "telegram-subscribers"`: the reader bot, and the fan-out of each story to its readers.

One outbox row per story is one broadcast. `send` fixes the audience (active subscribers whose
topics match) as per-chat rows in `tg_deliveries`, then sends to them in small batches, paced by
`ChatPacer` (≤ `messages_per_second` overall, one message per chat per second, ≤ 19 a minute
per group). A batch is marked `sending` before it goes and each result is written after it:
after a crash, `pending` chats are sent and the few `sending` ones are not (they may have the
story already), so a resumed broadcast never messages anyone twice. That is why this channel is
`resumable`.

Readers get a text message with a large link preview (not a photo): one compact notification
per story, the preview shows the site's own picture and title.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from bot.channel import ChannelContext, ChannelSettings, Permanent
from bot.counting import Budget, count_telegram
from bot.render import PostRenderer, load_template_text
from bot.types import Length, Post, Receipt, Story

if TYPE_CHECKING:
    from bot.telegram_bot import ChatPacer, ReaderBot
    from bot.telegram_store import TelegramStore
    from channels.telegram_api import TelegramBot

log = logging.getLogger("siar.telegram.fanout")
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
        self.pacer = ChatPacer(per_second=rate)
        self.reader = ReaderBot(self.name, self.store, self.context.store, self.context,
                                language=self.language, admins=self.section.admins,
                                sections=self.settings.topics, top_tags=self.settings.top_tags,
                                pacer=self.pacer, clock=self._now)
        self.bot.extras["reader"] = self.reader
        await self.bot.acquire()
        self.reader.register(self.bot.app)
        await self.reader.set_commands(self.bot.app)
        await self.bot.receive_updates()

    async def close(self) -> None:
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
        markups = self._markups(post.story)
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
            if await self._send_batch(key, post, chats, languages, kinds, markups):
                troubled += 1
                await asyncio.sleep(min(30.0, 0.5 * 2 ** troubled))  # Telegram failing: back off
            else:
                troubled = 0
        return BroadcastReport(planned, await store.delivery_counts(key))

    async def _send_batch(self, key: str, post: Post, chats: list[int], languages: dict[int, str],
                          kinds: dict[int, str], markups: dict[str, Any]) -> bool:
        """Send to `chats`; True if Telegram failed some (5xx, network). On cancellation the
        chats not yet started stay pending."""
        assert self.store is not None
        results: dict[int, Outcome] = {}
        started: set[int] = set()
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        fatal: list[BaseException] = []

        async def one(chat: int) -> None:
            async with semaphore:
                if fatal:
                    return
                language = languages.get(chat, self.language)
                is_group = kinds.get(chat, "private") in ("group", "supergroup")
                assert self.pacer is not None
                await self.pacer.wait(chat, is_group)
                started.add(chat)
                try:
                    results[chat] = await self._send_one(key, chat, post, markups[language])
                except Permanent as exc:
                    fatal.append(exc)
                    results[chat] = Outcome("pending", None, exc.reason)

        def rows() -> list[tuple[int, str, int | None, str]]:
            outcomes = [(c, *self._row(results.get(c), c in started)) for c in chats]
            return [o for o in outcomes if o[1] != "moved"]  # a moved chat's row has its new id

        try:
            await asyncio.gather(*(one(c) for c in chats))
        except asyncio.CancelledError:
            await asyncio.shield(self.store.finish(key, rows(), self._now()))
            raise
        await self.store.finish(key, rows(), self._now())
        if fatal:
            raise fatal[0]
        return any(o.detail.startswith("network:") for o in results.values())

    @staticmethod
    def _row(outcome: Outcome | None, started: bool) -> tuple[str, int | None, str]:
        if outcome is None:
            return ("uncertain", None, "interrupted while sending") if started else ("pending", None, "")
        return outcome.status, outcome.message_id, outcome.detail

    def _markups(self, story: Story) -> dict[str, Any]:
        from channels.telegram import keyboard_buttons, reply_markup

        return {lang: reply_markup(keyboard_buttons(story, self.context, lang)) for lang in ("id", "en")}

    async def _send_one(self, key: str, chat: int, post: Post, markup: Any) -> Outcome:
        """One reader's message, with every Telegram answer turned into the row's next state."""
        import httpx
        from telegram import LinkPreviewOptions
        from telegram.error import (
            BadRequest,
            ChatMigrated,
            Forbidden,
            InvalidToken,
            NetworkError,
            RetryAfter,
            TimedOut,
        )

        from channels.telegram_api import retry_after_seconds

        assert self.bot is not None and self.store is not None and self.pacer is not None
        preview = LinkPreviewOptions(url=post.story.url, prefer_large_media=True) if post.story.url \
            else LinkPreviewOptions(is_disabled=True)
        extra: dict[str, Any] = {}
        if self.settings.allow_paid_broadcast:
            extra["allow_paid_broadcast"] = True
        try:
            message = await self.bot.app.bot.send_message(
                chat, post.text, parse_mode="HTML", reply_markup=markup, link_preview_options=preview,
                disable_notification=self.settings.silent, **extra)
        except RetryAfter as exc:
            after = retry_after_seconds(exc)
            log.warning("channel %s: flood control, pausing the broadcast %.0fs", self.name, after)
            self.pacer.pause(after)
            return Outcome("pending", None, f"flood control {after:g}s")
        except Forbidden as exc:
            await self.store.unsubscribe(self.name, chat, "blocked", self._now())
            return Outcome("failed", None, f"unsubscribed: {exc.message}")
        except ChatMigrated as exc:
            await self.store.move_subscriber(self.name, chat, exc.new_chat_id, self._now())
            await self.store.move_delivery(key, chat, exc.new_chat_id, self._now())
            return Outcome("moved")
        except InvalidToken as exc:
            raise Permanent("Telegram refused the bot token ([telegram] token)") from exc
        except BadRequest as exc:
            if "chat not found" in exc.message.lower():
                await self.store.unsubscribe(self.name, chat, "chat not found", self._now())
            return Outcome("failed", None, exc.message)
        except TimedOut as exc:
            if isinstance(exc.__cause__, httpx.ConnectTimeout | httpx.PoolTimeout):
                return Outcome("pending", None, "timed out before sending")
            return Outcome("uncertain", None, "no answer after sending")
        except NetworkError as exc:
            return Outcome("pending", None, f"network: {exc.message}")
        return Outcome("sent", message.message_id)


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> SubscriberChannel:
    assert isinstance(settings, Settings)
    return SubscriberChannel(name, settings, context)
