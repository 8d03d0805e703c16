"""The reader bot: commands, topic buttons, group rules, blocks, admin commands, and pacing.

Readers talk to it in Indonesian or English (`/start`, `/stop`, `/topik` `/topics`,
`/terbaru` `/latest`, `/bahasa` `/language`, `/bantuan` `/help`); `[telegram] admins` also get
`/status` and `/stats`, which everyone else cannot tell from unknown text. Subscribers and their
topics live in `bot.telegram_store`. `ChatPacer` keeps every message the bot sends (replies and
broadcasts alike) under Telegram's limits.

Topics are keys: "s:<section>" and "t:<tag>" (casefolded); a subscriber without topics gets
everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from telegram import (
    BotCommand,
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

from bot.counting import count_utf16
from bot.telegram_store import Subscriber, TelegramStore
from bot.types import Story

log = logging.getLogger("siar.telegram.bot")
Ctx = ContextTypes.DEFAULT_TYPE

TEXTS: dict[str, dict[str, str]] = {
    "id": {
        "welcome": "👋 Selamat datang di <b>{site}</b>!\nAnda akan menerima berita terbaru di sini begitu "
                   "terbit. Pilih topik dengan /topik, lihat berita terbaru dengan /terbaru, berhenti "
                   "dengan /stop.",
        "welcome_back": "Anda sudah berlangganan {site}. Atur topik dengan /topik.",
        "stopped": "Anda berhenti berlangganan {site}. Kirim /start untuk berlangganan lagi.",
        "not_subscribed": "Anda belum berlangganan. Kirim /start dulu.",
        "group_admin_only": "Hanya admin grup yang bisa mengatur langganan grup ini.",
        "topics": "Pilih topik yang ingin Anda terima (✅ = aktif). Tanpa pilihan = semua berita.",
        "topics_all": "Semua topik",
        "topics_done": "Selesai",
        "topics_saved": "Topik disimpan.",
        "no_topics": "Belum ada topik; Anda menerima semua berita.",
        "latest": "📰 <b>Berita terbaru</b>",
        "no_stories": "Belum ada berita.",
        "language": "Pilih bahasa:",
        "language_set": "Bahasa diganti ke Bahasa Indonesia.",
        "help": "Perintah:\n/start — berlangganan\n/stop — berhenti\n/topik — pilih topik\n"
                "/terbaru — 5 berita terbaru\n/bahasa — ganti bahasa\n/bantuan — bantuan ini",
        "unknown": "Maaf, saya tidak mengerti. Kirim /bantuan untuk daftar perintah.",
        "follow": "Ikuti kami",
    },
    "en": {
        "welcome": "👋 Welcome to <b>{site}</b>!\nYou will get the newest stories here as soon as they are "
                   "published. Choose topics with /topics, see the latest with /latest, stop with /stop.",
        "welcome_back": "You are already subscribed to {site}. Choose topics with /topics.",
        "stopped": "You have unsubscribed from {site}. Send /start to subscribe again.",
        "not_subscribed": "You are not subscribed yet. Send /start first.",
        "group_admin_only": "Only group admins can manage this group's subscription.",
        "topics": "Choose the topics you want (✅ = on). Nothing chosen = all stories.",
        "topics_all": "All topics",
        "topics_done": "Done",
        "topics_saved": "Topics saved.",
        "no_topics": "No topics yet; you get every story.",
        "latest": "📰 <b>Latest stories</b>",
        "no_stories": "No stories yet.",
        "language": "Choose a language:",
        "language_set": "Language set to English.",
        "help": "Commands:\n/start — subscribe\n/stop — unsubscribe\n/topics — choose topics\n"
                "/latest — 5 latest stories\n/language — change language\n/help — this help",
        "unknown": "Sorry, I did not understand. Send /help for the commands.",
        "follow": "Follow us",
    },
}
COMMANDS = {
    "id": [("start", "Berlangganan berita"), ("stop", "Berhenti berlangganan"), ("topik", "Pilih topik"),
           ("terbaru", "5 berita terbaru"), ("bahasa", "Ganti bahasa"), ("bantuan", "Bantuan")],
    "en": [("start", "Subscribe to the news"), ("stop", "Unsubscribe"), ("topics", "Choose topics"),
           ("latest", "5 latest stories"), ("language", "Change language"), ("help", "Help")],
}
GROUP_KINDS = (ChatType.GROUP, ChatType.SUPERGROUP)
REPORT_LIMIT = 4000  # UTF-16 units of text in an admin report (Telegram's limit is 4096)


# --- admin reports ------------------------------------------------------------------------------

def fit_report(lines: Sequence[tuple[str, bool]], limit: int = REPORT_LIMIT) -> str:
    """Plain `(text, bold)` lines -> a Telegram HTML message showing at most `limit` UTF-16 units.

    The plain text is fitted first, dropping whole lines from the end (and saying how many),
    and only then escaped and formatted: a cut never falls inside a tag or an entity."""
    texts = [text for text, _ in lines]
    sizes = [count_utf16(text) for text in texts]
    keep = len(lines)
    if sum(sizes) + len(lines) - 1 > limit:
        note_size = count_utf16(f"… {len(lines)} more") + 1  # the note and its line break
        used, keep = 0, 0
        while keep < len(lines) and used + sizes[keep] + (1 if keep else 0) + note_size <= limit:
            used += sizes[keep] + (1 if keep else 0)
            keep += 1
        if keep == 0:  # one enormous first line: cut it, at a character
            head = texts[0]
            while count_utf16(head) > limit - note_size:
                head = head[:len(head) - max(1, (count_utf16(head) - limit + note_size) // 2)]
            return f"{html.escape(head)}\n{html.escape(f'… {len(lines) - 1} more')}"
    out = [f"<b>{html.escape(text)}</b>" if bold and text else html.escape(text)
           for text, bold in lines[:keep]]
    if keep < len(lines):
        out.append(html.escape(f"… {len(lines) - keep} more"))
    return "\n".join(out)


# --- pure topic logic ---------------------------------------------------------------------------

def story_topics(story: Story) -> set[str]:
    """The topic keys a story belongs to."""
    keys = {f"t:{t.casefold()}" for t in story.tags}
    if story.section:
        keys.add(f"s:{story.section.casefold()}")
    return keys


def wants(subscriber: Subscriber, story: Story) -> bool:
    """Whether `subscriber` gets `story`: no topics = everything, else any topic in common."""
    if not subscriber.topics:
        return True
    return bool(story_topics(story) & set(subscriber.topics))


def offered_topics(sections: Sequence[str], stories: Sequence[Story], top_tags: int) -> list[tuple[str, str]]:
    """(key, label) of the configured sections, then the `top_tags` most frequent tags."""
    out: dict[str, str] = {}
    for name in sections:
        out.setdefault(f"s:{name.casefold()}", name)
    counts = Counter(t.casefold() for s in stories for t in s.tags)
    labels = {t.casefold(): t for s in stories for t in s.tags}
    for tag, _ in counts.most_common():
        if len([k for k in out if k.startswith("t:")]) >= top_tags:
            break
        out.setdefault(f"t:{tag}", "#" + labels[tag])
    return list(out.items())


def toggle(current: tuple[str, ...] | None, key: str, offered: Sequence[str]) -> tuple[str, ...] | None:
    """The topics after pressing `key` (None = everything, which shows every topic as on)."""
    chosen = set(offered) if current is None else set(current)
    chosen ^= {key}
    if not chosen or chosen >= set(offered):
        return None
    return tuple(sorted(chosen))


def topic_data(key: str) -> str:
    """Callback data for a topic button (short and fixed-size: Telegram allows 64 bytes)."""
    return "tp:" + hashlib.sha1(key.encode()).hexdigest()[:12]


# --- pacing ---------------------------------------------------------------------------------------

class ChatPacer:
    """Spaces messages: `per_second` overall, one per chat per `chat_gap` s, `group_per_minute`.

    Every message the bot sends goes through `wait(chat, is_group)`, replies included, so a
    broadcast never hits a chat the bot has just answered. A RetryAfter pauses everything.
    `per_second = 0` switches the global limit off (benchmarks, self-hosted Bot API servers).
    `min_spacing` is the closest two releases may be, as a fraction of the gap: after a stall the
    pacer catches up that much faster than `per_second`. Close to 1 leaves Telegram's 30/s
    window a margin for uneven network delays (a burst of releases may arrive closer still).
    """

    def __init__(self, per_second: float = 29.0, chat_gap: float = 1.05, group_per_minute: int = 19,
                 clock: Callable[[], float] = time.monotonic, min_spacing: float = 0.5) -> None:
        self.gap = 1.0 / per_second if per_second > 0 else 0.0
        self.min_spacing = min_spacing
        self.chat_gap = chat_gap
        self.group_per_minute = group_per_minute
        self.clock = clock
        self.per_second = max(1, int(per_second))
        self._released: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self._last: dict[int, float] = {}
        self._groups: dict[int, deque[float]] = defaultdict(deque)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def chat_ready_at(self, chat: int, is_group: bool) -> float:
        at = self._last.get(chat, -1e9) + self.chat_gap
        window = self._groups.get(chat)
        if is_group and window and len(window) >= self.group_per_minute:
            at = max(at, window[-self.group_per_minute] + 60.5)
        return at

    async def wait(self, chat: int, is_group: bool = False) -> None:
        """Return when a message to `chat` may go; it is counted as sent from then on."""
        while True:
            now = self.clock()
            ready = max(self.chat_ready_at(chat, is_group), self._paused_until)
            if ready <= now:
                break
            await asyncio.sleep(ready - now)
        if self.gap:
            # One waiter at a time, spaced from the previous actual release: a stalled event loop
            # then delays messages instead of releasing several waiters in a burst.
            # At most `per_second` releases in any sliding second (so a late wake-up may catch up
            # within that budget) and never two closer than `min_spacing` gaps.
            async with self._lock:
                while True:
                    now = self.clock()
                    while self._released and now - self._released[0] >= 1.0:
                        self._released.popleft()
                    wait = 0.0
                    if len(self._released) >= self.per_second:
                        wait = self._released[0] + 1.0 - now
                    if self._released:
                        wait = max(wait, self._released[-1] + self.gap * self.min_spacing - now)
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                self._released.append(now)
        self.record(chat, is_group)

    def record(self, chat: int, is_group: bool = False) -> None:
        now = self.clock()
        self._last[chat] = now
        if is_group:
            window = self._groups[chat]
            window.append(now)
            while window and now - window[0] > 61:
                window.popleft()


# --- the bot ------------------------------------------------------------------------------------

class ReaderBot:
    """Handlers of the reader bot of subscriber channel `name`."""

    def __init__(self, name: str, store: TelegramStore, core_store: Any, context: Any, *,
                 language: str, admins: Sequence[int], sections: Sequence[str], top_tags: int,
                 pacer: ChatPacer, clock: Callable[[], datetime] | None = None) -> None:
        self.name = name
        self.store = store
        self.core_store = core_store
        self.context = context
        self.language = language
        self.admins = set(admins)
        self.sections = list(sections)
        self.top_tags = top_tags
        self.pacer = pacer
        self.clock = clock or (lambda: datetime.now(UTC))
        self.site = getattr(context.site, "name", "siar")

    def register(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Add every handler to `app` (one per line, commands first)."""
        app.add_handler(CommandHandler("start", self.start))
        app.add_handler(CommandHandler("stop", self.stop))
        app.add_handler(CommandHandler(["topik", "topics"], self.topics))
        app.add_handler(CommandHandler(["terbaru", "latest"], self.latest))
        app.add_handler(CommandHandler(["bahasa", "language"], self.choose_language))
        app.add_handler(CommandHandler(["bantuan", "help"], self.help))
        app.add_handler(CommandHandler("status", self.status))
        app.add_handler(CommandHandler("stats", self.stats))
        app.add_handler(CallbackQueryHandler(self.button))
        app.add_handler(ChatMemberHandler(self.member_changed, ChatMemberHandler.MY_CHAT_MEMBER))
        app.add_handler(MessageHandler(filters.ChatType.PRIVATE, self.unknown))
        app.add_error_handler(self.on_error)

    async def set_commands(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Register the command menu: default language, plus Indonesian and English menus."""
        for code, commands in (("", COMMANDS[self.language]), ("id", COMMANDS["id"]), ("en", COMMANDS["en"])):
            await app.bot.set_my_commands([BotCommand(c, d) for c, d in commands],
                                          scope=BotCommandScopeDefault(), language_code=code or None)

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

    async def reply(self, update: Update, text: str, markup: InlineKeyboardMarkup | None = None) -> None:
        chat = update.effective_chat
        if chat is None:
            return
        await self.pacer.wait(chat.id, chat.type in GROUP_KINDS)
        await chat.get_bot().send_message(chat.id, text, parse_mode=ParseMode.HTML, reply_markup=markup,
                                          link_preview_options=None)

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
            await self.reply(update, self._text(await self._lang(update), "group_admin_only"))
            return None
        return chat

    def _follow_markup(self, language: str) -> InlineKeyboardMarkup | None:
        cta = self.context.cta
        buttons = [InlineKeyboardButton(link.label, url=link.url) for link in cta.follow_links]
        if cta.notify_url and cta.notify_text:
            buttons.append(InlineKeyboardButton(cta.notify_text[:64], url=cta.notify_url))
        rows = [buttons[i:i + 2] for i in range(0, len(buttons), 2)]
        return InlineKeyboardMarkup(rows) if rows else None

    def _text(self, language: str, key: str) -> str:
        return TEXTS[language][key].format(site=html.escape(self.site))

    # --- commands -----------------------------------------------------------------------------

    async def start(self, update: Update, context: Ctx) -> None:
        """/start: subscribe this chat (groups: admins only) and welcome it."""
        chat = await self._admin_chat(update)
        if chat is None:
            return
        name = chat.title or chat.full_name or ""
        new = await self.store.subscribe(self.name, chat.id, chat.type, self._user_lang(update), name,
                                         self.clock())
        language = await self._lang(update)
        key = "welcome" if new else "welcome_back"
        cta = self.context.cta
        text = self._text(language, key)
        if new and cta.follow_text:
            text += "\n\n" + html.escape(cta.follow_text)
        await self.reply(update, text, self._follow_markup(language) if new else None)

    async def stop(self, update: Update, context: Ctx) -> None:
        """/stop: unsubscribe and confirm."""
        chat = await self._admin_chat(update)
        if chat is None:
            return
        language = await self._lang(update)
        await self.store.unsubscribe(self.name, chat.id, "stopped", self.clock())
        await self.reply(update, self._text(language, "stopped"))

    async def _offered(self) -> list[tuple[str, str]]:
        stories = await self.core_store.latest_stories(200)
        sections = self.sections or sorted({s.section for s in stories if s.section})
        return offered_topics(sections, stories, self.top_tags)

    def _topics_markup(self, sub: Subscriber, offered: list[tuple[str, str]],
                       language: str) -> InlineKeyboardMarkup:
        chosen = set(k for k, _ in offered) if sub.topics is None else set(sub.topics)
        buttons = [InlineKeyboardButton(("✅ " if key in chosen else "▫️ ") + label[:40],
                                        callback_data=topic_data(key)) for key, label in offered]
        rows = [buttons[i:i + 2] for i in range(0, len(buttons), 2)]
        rows.append([InlineKeyboardButton(self._text(language, "topics_all"), callback_data="tp:all"),
                     InlineKeyboardButton(self._text(language, "topics_done"), callback_data="tp:done")])
        return InlineKeyboardMarkup(rows)

    async def topics(self, update: Update, context: Ctx) -> None:
        """/topik: the topic keyboard."""
        chat = update.effective_chat
        assert chat is not None
        language = await self._lang(update)
        sub = await self.store.subscriber(self.name, chat.id)
        if sub is None or not sub.active:
            await self.reply(update, self._text(language, "not_subscribed"))
            return
        offered = await self._offered()
        if not offered:
            await self.reply(update, self._text(language, "no_topics"))
            return
        await self.reply(update, self._text(language, "topics"), self._topics_markup(sub, offered, language))

    async def latest(self, update: Update, context: Ctx) -> None:
        """/terbaru: the five newest stories as links."""
        language = await self._lang(update)
        stories = await self.core_store.latest_stories(5)
        if not stories:
            await self.reply(update, self._text(language, "no_stories"))
            return
        lines = [self._text(language, "latest")]
        lines += [f'• <a href="{html.escape(s.url)}">{html.escape(s.title)}</a>' for s in stories]
        await self.reply(update, "\n".join(lines))

    async def choose_language(self, update: Update, context: Ctx) -> None:
        """/bahasa: two buttons."""
        language = await self._lang(update)
        markup = InlineKeyboardMarkup([[InlineKeyboardButton("Bahasa Indonesia", callback_data="lang:id"),
                                        InlineKeyboardButton("English", callback_data="lang:en")]])
        await self.reply(update, self._text(language, "language"), markup)

    async def help(self, update: Update, context: Ctx) -> None:
        """/bantuan: the command list."""
        await self.reply(update, self._text(await self._lang(update), "help"))

    async def unknown(self, update: Update, context: Ctx) -> None:
        """Anything else in a private chat: a short pointer to /bantuan."""
        await self.reply(update, self._text(await self._lang(update), "unknown"))

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
        fresh = Subscriber(sub.chat_id, sub.kind, sub.language, topics, True, sub.name)
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

    async def status(self, update: Update, context: Ctx) -> None:
        """/status (admins): feeds, queues and recent failures."""
        if not self._is_admin(update):
            await self.unknown(update, context)
            return
        # Plain text, fitted before it is escaped. The feeds can be many: they come last,
        # failing ones first, so that what does not fit is healthy feeds.
        lines: list[tuple[str, bool]] = [("siar status", True), ("", False),
                                         ("Queues (pending / failed / uncertain)", True)]
        for channel, counts in sorted((await self.core_store.counts()).items()):
            lines.append((f"{channel}: {counts['pending'] + counts['sending']} / "
                          f"{counts['failed']} / {counts['uncertain']}", False))
        problems = await self.core_store.recent_problems(5)
        if problems:
            lines += [("", False), ("Recent problems", True)]
            lines += [(f"#{p['id']} {p['channel']}: {str(p['last_error'])[:100]}", False) for p in problems]
        lines += [("", False), ("Feeds", True)]
        for state in sorted(await self.core_store.feed_states(), key=lambda s: (not s.failures, s.name)):
            mark = "✅" if not state.failures else f"❌ {state.failures}×"
            error = f" — {(state.last_error or '')[:80]}" if state.failures else ""
            lines.append((f"{mark} {state.name}{error}", False))
        await self.reply(update, fit_report(lines))

    async def stats(self, update: Update, context: Ctx) -> None:
        """/stats (admins): subscribers and today's posts per channel."""
        if not self._is_admin(update):
            await self.unknown(update, context)
            return
        zone = ZoneInfo(getattr(self.context.site, "timezone", "UTC"))
        local = self.clock().astimezone(zone)
        midnight = (local - timedelta(hours=local.hour, minutes=local.minute, seconds=local.second,
                                      microseconds=local.microsecond)).astimezone(UTC)
        counts = await self.store.subscriber_counts(self.name)
        posts = await self.store.posts_since(midnight)
        lines: list[tuple[str, bool]] = [("Subscribers", True)]
        lines += [(f"{kind}: {n}", False) for kind, n in sorted(counts.items())] or [("none", False)]
        lines += [("", False), ("Posts today", True)]
        lines += [(f"{ch}: {n}", False) for ch, n in sorted(posts.items())] or [("none", False)]
        lines.append((f"reader messages: {await self.store.sent_since(midnight)}", False))
        await self.reply(update, fit_report(lines))

    async def on_error(self, update: object, context: Ctx) -> None:
        error = context.error
        if isinstance(error, TelegramError):
            log.warning("reader bot: %s: %s", type(error).__name__, error)
        else:
            log.error("reader bot: handler failed", exc_info=error)
