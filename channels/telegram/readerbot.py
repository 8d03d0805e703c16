"""The reader bot: commands, topic buttons, group rules, blocks and admin commands.

Readers talk to it in Indonesian or English (`/start`, `/stop`, `/topik` `/topics`,
`/terbaru` `/latest`, `/senyap` `/quiet` (their own quiet hours), `/ringkasan` `/digest`
(digests only), `/bahasa` `/language`, `/bantuan` `/help`); `[telegram] admins` also get
`/status` and `/stats`, which everyone else cannot tell from unknown text. Subscribers and their
topics live in `channels.telegram.store`; what it says in `texts`.

One chat cannot busy the bot for the others: each chat may send `commands_per_minute`
commands (more are ignored, with one notice), and replies wait for their chat's turn
(Telegram: one message per chat per second) in tasks of their own, not in the update
workers every chat shares.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from telegram import (
    BotCommand,
    BotCommandScopeChat,
    BotCommandScopeDefault,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Update,
)
from telegram.constants import ChatMemberStatus, ChatType, ParseMode
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    ChatMemberHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.admin import Admin
from bot.channel import ChannelContext
from bot.counting import telegram_text
from channels.telegram.config import ReaderSettings, TelegramSection
from channels.telegram.store import Subscriber, TelegramStore
from channels.telegram.texts import ADMIN_COMMANDS, COMMANDS, TEXTS, fit_report
from channels.telegram.topics import offered_topics, toggle, topic_data

log = logging.getLogger("siar.telegram.bot")
Ctx = ContextTypes.DEFAULT_TYPE
Handler = Callable[[Update, Ctx], Coroutine[Any, Any, None]]
GROUP_KINDS = (ChatType.GROUP, ChatType.SUPERGROUP)


_HOURS = re.compile(r"^\s*(\d{1,2})(?:[:.](\d{2}))?\s*[-–—]\s*(\d{1,2})(?:[:.](\d{2}))?\s*$")


def parse_reader_hours(value: str) -> str | None:
    """ "22-06", "22:30-6", "22.00 - 06.00" -> "22:00-06:00" (as stored); None when it is not a
    span of two different times of day."""
    match = _HOURS.match(value)
    if match is None:
        return None
    h1, m1, h2, m2 = (int(g) if g else 0 for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        return None
    return f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}"


class CommandGate:
    """At most `per_minute` commands per chat in any sliding minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._seen: dict[int, deque[float]] = defaultdict(deque)
        self._warned: dict[int, float] = {}

    def allow(self, chat: int) -> bool:
        now = self.clock()
        window = self._seen[chat]
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= self.per_minute:
            return False
        window.append(now)
        if len(self._seen) > 50_000:  # forget quiet chats so the map cannot grow without end
            for key in [k for k, w in self._seen.items() if not w or now - w[-1] >= 60.0]:
                self._seen.pop(key, None)
        return True

    def warn_once(self, chat: int) -> bool:
        """True the first time a chat is refused within a minute (it gets one notice)."""
        now = self.clock()
        if now - self._warned.get(chat, -1e9) < 60.0:
            return False
        self._warned[chat] = now
        return True


class ReaderBot:
    """Handlers of the reader bot of subscriber channel `name`."""

    def __init__(
        self,
        name: str,
        store: TelegramStore,
        context: ChannelContext,
        *,
        settings: ReaderSettings,
        section: TelegramSection,
    ) -> None:
        self.name = name
        self.store = store
        self.context = context
        self.language = section.language
        self.admins = set(section.admins)
        self.sections = list(settings.topics)
        self.has_digest = settings.digest is not None
        self.top_tags = settings.top_tags
        self.clock = context.clock
        self.site = context.site.name
        self.gate = CommandGate(settings.commands_per_minute)
        self._replies: set[asyncio.Task[None]] = set()

    def _limited(self, handler: Handler) -> Handler:
        """`handler`, for chats within their command budget."""

        async def limited(update: Update, context: Ctx) -> None:
            chat = update.effective_chat
            if chat is None or self.gate.allow(chat.id):
                await handler(update, context)
            elif self.gate.warn_once(chat.id):
                self.reply(update, self._text(self._user_lang(update), "too_many"))

        return limited

    async def close(self) -> None:
        """Let queued replies finish (briefly), then drop them."""
        if self._replies:
            _, pending = await asyncio.wait(set(self._replies), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def register(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Add every handler to `app` (one per line, commands first)."""
        gate = self._limited
        app.add_handler(CommandHandler("start", gate(self.start)))
        app.add_handler(CommandHandler("stop", gate(self.stop)))
        app.add_handler(CommandHandler(["topik", "topics"], gate(self.topics)))
        app.add_handler(CommandHandler(["terbaru", "latest"], gate(self.latest)))
        app.add_handler(CommandHandler(["senyap", "quiet"], gate(self.quiet)))
        app.add_handler(CommandHandler(["ringkasan", "digest"], gate(self.digest)))
        app.add_handler(CommandHandler(["bahasa", "language"], gate(self.choose_language)))
        app.add_handler(CommandHandler(["bantuan", "help"], gate(self.help)))
        app.add_handler(CommandHandler("status", gate(self.status)))
        app.add_handler(CommandHandler("stats", gate(self.stats)))
        app.add_handler(CommandHandler(["pause", "jeda"], gate(self.pause)))
        app.add_handler(CommandHandler(["resume", "lanjut"], gate(self.resume)))
        app.add_handler(CommandHandler(["resend", "kirimulang"], gate(self.resend)))
        app.add_handler(CommandHandler(["tarik", "retract"], gate(self.retract)))
        app.add_handler(CommandHandler(["why", "mengapa"], gate(self.why)))
        app.add_handler(CommandHandler(["feeds", "umpan"], gate(self.feeds)))
        app.add_handler(CommandHandler(["test", "uji"], gate(self.test)))
        app.add_handler(CallbackQueryHandler(gate(self.button)))
        app.add_handler(ChatMemberHandler(self.member_changed, ChatMemberHandler.MY_CHAT_MEMBER))
        app.add_handler(MessageHandler(filters.ChatType.PRIVATE, gate(self.unknown)))
        app.add_error_handler(self.on_error)

    async def set_commands(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Register the command menu: default language, plus Indonesian and English menus."""
        for code, commands in (("", COMMANDS[self.language]), ("id", COMMANDS["id"]), ("en", COMMANDS["en"])):
            await app.bot.set_my_commands(
                [BotCommand(c, d) for c, d in commands],
                scope=BotCommandScopeDefault(),
                language_code=code or None,
            )
        # Admins see their commands in their own chat's menu; nobody else does.
        menu = [BotCommand(c, d) for c, d in (*COMMANDS[self.language], *ADMIN_COMMANDS[self.language])]
        for admin in sorted(self.admins):
            try:
                await app.bot.set_my_commands(menu, scope=BotCommandScopeChat(admin))
            except TelegramError as exc:  # an admin who never talked to the bot: no chat yet
                log.info("reader bot: no admin menu for %s (%s)", admin, exc)

    # --- helpers ------------------------------------------------------------------------------

    async def _lang(self, update: Update) -> str:
        chat = update.effective_chat
        if chat is not None:
            sub = await self.store.subscriber(self.name, chat.id)
            if sub is not None:
                return sub.language
        return self._user_lang(update)

    def _user_lang(self, update: Update) -> str:
        user = update.effective_user
        code = (user.language_code or "") if user else ""
        return code[:2] if code[:2] in TEXTS else self.language

    def reply(self, update: Update, text: str, markup: InlineKeyboardMarkup | None = None) -> None:
        """Send `text` to the update's chat in a task of its own: it waits for the chat's turn
        (the bot's rate limiter) without holding an update worker other chats need."""
        chat = update.effective_chat
        if chat is None:
            return
        self._spawn(
            chat.get_bot().send_message(
                chat.id, text, parse_mode=ParseMode.HTML, reply_markup=markup, link_preview_options=None
            )
        )

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except TelegramError as exc:
                log.warning("reader bot: reply failed: %s: %s", type(exc).__name__, exc)
            except Exception:
                log.exception("reader bot: reply failed")

        task = asyncio.create_task(run())
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _group_admin(self, update: Update) -> bool:
        """True in private chats; in groups, whether the user is an admin of the group."""
        chat, user = update.effective_chat, update.effective_user
        if chat is None or user is None:
            return False
        if chat.type not in GROUP_KINDS:
            return True
        member = await chat.get_member(user.id)
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    async def _admin_chat(self, update: Update) -> Chat | None:
        """The chat, when the sender may manage its subscription; else None, after telling them."""
        chat = update.effective_chat
        assert chat is not None
        if not await self._group_admin(update):
            self.reply(update, self._text(await self._lang(update), "group_admin_only"))
            return None
        return chat

    def _follow_markup(self, language: str) -> InlineKeyboardMarkup | None:
        cta = self.context.cta
        buttons = [InlineKeyboardButton(link.label, url=link.url) for link in cta.follow_links]
        if cta.notify_url and cta.notify_text:
            buttons.append(InlineKeyboardButton(cta.notify_text[:64], url=cta.notify_url))
        rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
        return InlineKeyboardMarkup(rows) if rows else None

    def _text(self, language: str, key: str, **values: str) -> str:
        return TEXTS[language][key].format(site=html.escape(self.site), **values)

    # --- commands -----------------------------------------------------------------------------

    async def start(self, update: Update, context: Ctx) -> None:
        """/start: subscribe this chat (groups: admins only) and welcome it."""
        chat = await self._admin_chat(update)
        if chat is None:
            return
        name = chat.title or chat.full_name or ""
        new = await self.store.subscribe(
            self.name, chat.id, chat.type, self._user_lang(update), name, self.clock()
        )
        language = await self._lang(update)
        key = "welcome" if new else "welcome_back"
        cta = self.context.cta
        text = self._text(language, key)
        if new and cta.follow_text:
            text += "\n\n" + html.escape(cta.follow_text)
        self.reply(update, text, self._follow_markup(language) if new else None)

    async def stop(self, update: Update, context: Ctx) -> None:
        """/stop: unsubscribe and confirm."""
        chat = await self._admin_chat(update)
        if chat is None:
            return
        language = await self._lang(update)
        await self.store.unsubscribe(self.name, chat.id, "stopped", self.clock())
        self.reply(update, self._text(language, "stopped"))

    async def _offered(self) -> list[tuple[str, str]]:
        assert self.context.stories is not None
        stories = await self.context.stories.latest(200)
        sections = self.sections or sorted({s.section for s in stories if s.section})
        return offered_topics(sections, stories, self.top_tags)

    def _topics_markup(
        self, sub: Subscriber, offered: list[tuple[str, str]], language: str
    ) -> InlineKeyboardMarkup:
        chosen = set(k for k, _ in offered) if sub.topics is None else set(sub.topics)
        buttons = [
            InlineKeyboardButton(
                ("✅ " if key in chosen else "▫️ ") + label[:40], callback_data=topic_data(key)
            )
            for key, label in offered
        ]
        rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
        rows.append(
            [
                InlineKeyboardButton(self._text(language, "topics_all"), callback_data="tp:all"),
                InlineKeyboardButton(self._text(language, "topics_done"), callback_data="tp:done"),
            ]
        )
        return InlineKeyboardMarkup(rows)

    async def topics(self, update: Update, context: Ctx) -> None:
        """/topik: the topic keyboard."""
        chat = update.effective_chat
        assert chat is not None
        language = await self._lang(update)
        sub = await self.store.subscriber(self.name, chat.id)
        if sub is None or not sub.active:
            self.reply(update, self._text(language, "not_subscribed"))
            return
        offered = await self._offered()
        if not offered:
            self.reply(update, self._text(language, "no_topics"))
            return
        self.reply(update, self._text(language, "topics"), self._topics_markup(sub, offered, language))

    async def latest(self, update: Update, context: Ctx) -> None:
        """/terbaru: the five newest stories as links."""
        language = await self._lang(update)
        assert self.context.stories is not None
        # What this channel posted, not every stored story: filters and duplicates stay out.
        stories = await self.context.stories.latest_posted(self.name, 5)
        if not stories:
            self.reply(update, self._text(language, "no_stories"))
            return
        lines = [self._text(language, "latest")]
        lines += [f'• <a href="{html.escape(s.url)}">{html.escape(s.title)}</a>' for s in stories]
        self.reply(update, "\n".join(lines))

    async def _subscribed(self, update: Update) -> tuple[Subscriber, str] | None:
        """The chat's active subscription (groups: for its admins) and language; else None,
        after telling them why."""
        chat = await self._admin_chat(update)
        if chat is None:
            return None
        language = await self._lang(update)
        sub = await self.store.subscriber(self.name, chat.id)
        if sub is None or not sub.active:
            self.reply(update, self._text(language, "not_subscribed"))
            return None
        return sub, language

    async def quiet(self, update: Update, context: Ctx) -> None:
        """/senyap 22-06 | 22:30-06:00 | off: the reader's own quiet hours (no notification
        sound then; breaking news still notifies)."""
        found = await self._subscribed(update)
        if found is None:
            return
        sub, language = found
        zone = self.context.site.timezone
        args = context.args or []
        if not args:
            now = self._text(language, "quiet_none")
            if sub.quiet_hours:
                now = self._text(language, "quiet_now", hours=sub.quiet_hours, zone=zone)
            self.reply(update, now + "\n\n" + self._text(language, "quiet_usage"))
            return
        value = " ".join(args).strip()
        if value.lower() in ("off", "mati", "tidak", "no", "none"):
            await self.store.set_quiet_hours(self.name, sub.chat_id, None, self.clock())
            self.reply(update, self._text(language, "quiet_off"))
            return
        hours = parse_reader_hours(value)
        if hours is None:
            self.reply(update, self._text(language, "quiet_bad", value=html.escape(value[:40])))
            return
        await self.store.set_quiet_hours(self.name, sub.chat_id, hours, self.clock())
        self.reply(update, self._text(language, "quiet_set", hours=hours, zone=zone))

    async def digest(self, update: Update, context: Ctx) -> None:
        """/ringkasan: digests only (and breaking news), or every story again (a toggle)."""
        found = await self._subscribed(update)
        if found is None:
            return
        sub, language = found
        if not self.has_digest and not sub.digest_only:
            self.reply(update, self._text(language, "digest_none"))
            return
        await self.store.set_digest_only(self.name, sub.chat_id, not sub.digest_only, self.clock())
        self.reply(update, self._text(language, "digest_off" if sub.digest_only else "digest_on"))

    async def choose_language(self, update: Update, context: Ctx) -> None:
        """/bahasa: two buttons."""
        language = await self._lang(update)
        markup = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton("Bahasa Indonesia", callback_data="lang:id"),
                    InlineKeyboardButton("English", callback_data="lang:en"),
                ]
            ]
        )
        self.reply(update, self._text(language, "language"), markup)

    async def help(self, update: Update, context: Ctx) -> None:
        """/bantuan: the command list."""
        self.reply(update, self._text(await self._lang(update), "help"))

    async def unknown(self, update: Update, context: Ctx) -> None:
        """Anything else in a private chat: a short pointer to /bantuan."""
        self.reply(update, self._text(await self._lang(update), "unknown"))

    # --- buttons and membership ----------------------------------------------------------------

    async def button(self, update: Update, context: Ctx) -> None:
        """Topic toggles and language choice."""
        query = update.callback_query
        chat = update.effective_chat
        if query is None or chat is None or query.data is None:
            return
        language = await self._lang(update)
        if not await self._group_admin(update):
            await query.answer(self._text(language, "group_admin_only"), show_alert=True)
            return
        data = query.data
        now = self.clock()
        if data.startswith("lang:") and data[5:] in TEXTS:
            await self.store.set_language(self.name, chat.id, data[5:], now)
            await query.answer()
            await query.edit_message_text(self._text(data[5:], "language_set"))
            return
        sub = await self.store.subscriber(self.name, chat.id)
        if sub is None or not sub.active:
            await query.answer(self._text(language, "not_subscribed"), show_alert=True)
            return
        if data == "tp:done":
            await query.answer(self._text(language, "topics_saved"))
            await query.edit_message_text(self._text(language, "topics_saved"))
            return
        offered = await self._offered()
        keys = [k for k, _ in offered]
        if data == "tp:all":
            topics: tuple[str, ...] | None = None
        else:
            key = next((k for k in keys + list(sub.topics or ()) if topic_data(k) == data), None)
            if key is None:
                await query.answer()
                return
            topics = toggle(sub.topics, key, keys)
        if topics == sub.topics:
            await query.answer()
            return
        await self.store.set_topics(self.name, chat.id, topics, now)
        await query.answer()
        fresh = dataclasses.replace(sub, topics=topics, active=True)
        await query.edit_message_reply_markup(self._topics_markup(fresh, offered, language))

    async def member_changed(self, update: Update, context: Ctx) -> None:
        """The bot was blocked, or removed from a group: stop sending there."""
        change = update.my_chat_member
        if change is None:
            return
        status = change.new_chat_member.status
        if status in (ChatMemberStatus.BANNED, ChatMemberStatus.LEFT):
            reason = "blocked" if change.chat.type == ChatType.PRIVATE else "removed"
            if await self.store.unsubscribe(self.name, change.chat.id, reason, self.clock()):
                log.info("reader bot: chat %s unsubscribed (%s)", change.chat.id, reason)

    # --- admins --------------------------------------------------------------------------------

    def _is_admin(self, update: Update) -> bool:
        user = update.effective_user
        return user is not None and user.id in self.admins

    async def _admin_only(self, update: Update, context: Ctx) -> Admin | None:
        """The admin service for an admin; for anyone else the bot acts as if it did not know
        the command (admin commands stay invisible)."""
        if not self._is_admin(update) or self.context.admin is None:
            await self.unknown(update, context)
            return None
        return self.context.admin

    def _tell(self, update: Update, lines: list[str], bold_first: bool = True) -> None:
        self.reply(update, fit_report([(line, bold_first and i == 0) for i, line in enumerate(lines)]))

    async def pause(self, update: Update, context: Ctx) -> None:
        """/pause CHANNEL (admins): the channel's posts wait until /resume."""
        admin = await self._admin_only(update, context)
        if admin is None:
            return
        if len(context.args or []) != 1:
            self._tell(update, ["/pause CHANNEL", f"channels: {', '.join(sorted(admin.config.channels))}"])
            return
        user = update.effective_user
        _, message = await admin.pause((context.args or [""])[0], by=f"telegram:{user.id if user else '?'}")
        self._tell(update, [message], bold_first=False)

    async def resume(self, update: Update, context: Ctx) -> None:
        """/resume CHANNEL (admins)."""
        admin = await self._admin_only(update, context)
        if admin is None:
            return
        if len(context.args or []) != 1:
            paused = await admin.paused()
            self._tell(update, ["/resume CHANNEL", f"paused: {', '.join(sorted(paused)) or 'none'}"])
            return
        _, message = await admin.resume((context.args or [""])[0])
        self._tell(update, [message], bold_first=False)

    async def resend(self, update: Update, context: Ctx) -> None:
        """/resend ID (admins): an uncertain or failed post (its number from /status) again."""
        admin = await self._admin_only(update, context)
        if admin is None:
            return
        args = context.args or []
        if len(args) != 1 or not args[0].isdigit():
            self._tell(update, ["/resend ID", "ID: the number of a failed or uncertain post (/status)"])
            return
        _, message = await admin.resend(int(args[0]))
        self._tell(update, [message], bold_first=False)

    async def retract(self, update: Update, context: Ctx) -> None:
        """/tarik URL [reason] (admins): take a story back everywhere the platforms allow."""
        admin = await self._admin_only(update, context)
        if admin is None:
            return
        args = context.args or []
        if not args:
            self._tell(update, ["/tarik URL [reason]", "URL: the story's link, its feed id or its number"])
            return
        user = update.effective_user
        by = f"telegram:{user.id if user else '?'}"
        done, lines = await admin.retract(args[0], reason=" ".join(args[1:]), by=by)
        self._tell(update, lines, bold_first=done)

    async def why(self, update: Update, context: Ctx) -> None:
        """/why URL (admins): the decision log of a story."""
        admin = await self._admin_only(update, context)
        if admin is None:
            return
        args = context.args or []
        if len(args) != 1:
            self._tell(update, ["/why URL", "URL: the story's link, its feed id or its number"])
            return
        lines = admin.why_lines(await admin.why(args[0]))
        self._tell(update, lines or [f"no story matches {args[0]}"], bold_first=bool(lines))

    async def feeds(self, update: Update, context: Ctx) -> None:
        """/feeds (admins): each feed's state and last error."""
        admin = await self._admin_only(update, context)
        if admin is None:
            return
        lines = ["Feeds"]
        for feed in sorted(await admin.feeds(), key=lambda f: (not f["failures"], f["name"])):
            mark = "✅" if not feed["failures"] else f"❌ {feed['failures']}×"
            error = f" — {str(feed['last_error'])[:120]}" if feed["last_error"] else ""
            last = feed["last_success"] or "never"
            lines.append(f"{mark} {feed['name']} (last success {last}){error}")
        self._tell(update, lines)

    async def test(self, update: Update, context: Ctx) -> None:
        """/test (admins): the newest story as every channel would post it (nothing is posted)."""
        admin = await self._admin_only(update, context)
        if admin is None:
            return
        previews = await admin.previews()
        if not previews:
            self._tell(update, ["No stories yet."], bold_first=False)
        for preview in previews:
            head = f"{preview.channel} ({preview.type})"
            if preview.post is None:
                self._tell(update, [head, f"cannot render: {preview.error}"])
                continue
            post = preview.post
            text = post.text if post.parse_mode != "HTML" else telegram_text(post.text)
            length = f"{post.length.used}/{post.length.limit} {post.length.unit}"
            self._tell(update, [head, length, "", *text.splitlines()])

    async def status(self, update: Update, context: Ctx) -> None:
        """/status (admins): feeds, queues and recent failures."""
        if not self._is_admin(update):
            await self.unknown(update, context)
            return
        assert self.context.reports is not None
        lines = await self.context.reports.status_lines()
        self.reply(update, fit_report(lines))

    async def stats(self, update: Update, context: Ctx) -> None:
        """/stats (admins): subscribers and today's posts per channel."""
        if not self._is_admin(update):
            await self.unknown(update, context)
            return
        zone = ZoneInfo(self.context.site.timezone)
        local = self.clock().astimezone(zone)
        midnight = (
            local
            - timedelta(
                hours=local.hour, minutes=local.minute, seconds=local.second, microseconds=local.microsecond
            )
        ).astimezone(UTC)
        assert self.context.reports is not None and self.context.fanout is not None
        counts = await self.store.subscriber_counts(self.name)
        posts = await self.context.reports.posts_since(midnight)
        lines: list[tuple[str, bool]] = [("Subscribers", True)]
        lines += [(f"{kind}: {n}", False) for kind, n in sorted(counts.items())] or [("none", False)]
        lines += [("", False), ("Posts today", True)]
        lines += [(f"{ch}: {n}", False) for ch, n in sorted(posts.items())] or [("none", False)]
        lines.append((f"reader messages: {await self.context.fanout.sent_since(self.name, midnight)}", False))
        self.reply(update, fit_report(lines))

    async def on_error(self, update: object, context: Ctx) -> None:
        error = context.error
        if isinstance(error, TelegramError):
            log.warning("reader bot: %s: %s", type(error).__name__, error)
        else:
            log.error("reader bot: handler failed", exc_info=error)
