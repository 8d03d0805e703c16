"""One python-telegram-bot `Application` per bot token, shared by both Telegram channel types.

One HTTP pool, one update stream (Telegram allows a single `getUpdates` consumer per token;
with several daemons on PostgreSQL only one of them reads it: `updates.UpdateReader`),
one rate limiter for every message the bot sends (`pacing`), and one place that alerts the
admins. It runs inside siar's own asyncio loop (`initialize`/`start`, then
`updater.start_polling` or `start_webhook`), never `run_polling`, which would own the loop.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

from telegram import Update
from telegram.ext import Application, ApplicationBuilder, ApplicationHandlerStop, TypeHandler

from bot.budgets import RateBudgets
from bot.channel import ChannelContext, ChannelUnavailable
from bot.counting import escape_html
from channels.telegram.config import TelegramSection
from channels.telegram.pacing import ChatPacer, PacedRequests
from channels.telegram.store import TelegramStore
from channels.telegram.updates import UpdateReader

log = logging.getLogger("siar.telegram")
ALLOWED_UPDATES = ["message", "callback_query", "my_chat_member"]


def telegram_section(context: ChannelContext) -> TelegramSection:
    """The validated `[telegram]` section; ChannelUnavailable naming the key when it is missing."""
    found = context.section("telegram", TelegramSection)
    if found is None:
        raise ChannelUnavailable(
            "the Telegram channels need a [telegram] section with the bot token (telegram.token)"
        )
    return found


class TelegramApp:
    """One token's Application, started once however many channels use it."""

    def __init__(self, settings: TelegramSection, context: ChannelContext) -> None:
        self.settings = settings
        self.context = context
        shared = context.database is not None and not context.database.is_sqlite
        self.pacer = ChatPacer(
            shared=RateBudgets(context.database) if shared and context.database else None,
            key=token_key(settings),
        )
        self.app: Application[Any, Any, Any, Any, Any, Any] = build_application(settings, self.pacer)
        self.users = 0
        self.started = False
        self.receiving = False
        self.username = ""
        self.reader: Any = None  # the reader bot of this token, if one runs (one per token)
        self.updates: UpdateReader | None = None  # several daemons: who reads getUpdates

    async def acquire(self) -> None:
        """Start the Application if this is its first user; a failure leaves nothing counted."""
        if not self.started:
            await self.app.initialize()  # getMe: a wrong token fails here, with a clear error
            try:
                await self.app.start()
            except BaseException:
                await self.app.shutdown()
                raise
            self.started = True
            self.username = self.app.bot.username or ""
            log.info("telegram bot @%s connected to %s", self.username, self.settings.api_base_url)
            if self.settings.admins:
                self.context.alerts.add_sink(self.alert_admins)
        self.users += 1

    async def receive_updates(self) -> None:
        """Start taking updates (long polling, or the webhook when configured); idempotent."""
        if self.receiving:
            return
        updater = self.app.updater
        assert updater is not None
        s = self.settings
        db = self.context.database
        if s.webhook_url:
            secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
            if db is not None:  # an update handed to two daemons is handled by the first
                self.app.add_handler(TypeHandler(Update, self._first_sight), group=-1)
            await updater.start_webhook(
                listen=s.webhook_listen,
                port=s.webhook_port,
                url_path=s.webhook_path,
                webhook_url=s.webhook_url,
                secret_token=secret,
                allowed_updates=ALLOWED_UPDATES,
            )
        elif db is not None and not db.is_sqlite:  # several daemons: the lock's holder polls
            self.updates = UpdateReader(db, token_key(s), self._start_polling, self._stop_polling)
            self.updates.begin()
        else:
            await self._start_polling()
        self.receiving = True

    async def _start_polling(self) -> None:
        assert self.app.updater is not None
        await self.app.updater.start_polling(
            allowed_updates=ALLOWED_UPDATES,
            poll_interval=0.0,
            timeout=timedelta(seconds=10),
            error_callback=_polling_error,
        )

    async def _stop_polling(self) -> None:
        if self.app.updater is not None and self.app.updater.running:
            await self.app.updater.stop()

    async def _first_sight(self, update: Update, context: Any) -> None:
        """Webhook mode: stop the handlers of an update another daemon (or we) took already."""
        assert self.context.database is not None
        store = TelegramStore(self.context.database)
        if not await store.first_sight(token_key(self.settings)[9:], update.update_id, self.context.clock()):
            log.info("telegram: update %d was already handled; ignored", update.update_id)
            raise ApplicationHandlerStop

    async def release(self) -> None:
        """Stop the Application when its last user closes."""
        self.users = max(0, self.users - 1)
        if self.users > 0 or not self.started:
            return
        self.context.alerts.remove_sink(self.alert_admins)
        if self.updates is not None:
            await self.updates.end()
            self.updates = None
        updater = self.app.updater
        if updater is not None and updater.running:
            await updater.stop()
        self.receiving = False
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()
        self.started = False

    async def alert_admins(self, source: str, message: str) -> None:
        """The alert sink: one message to each admin (failures are logged, never raised)."""
        text = f"⚠️ <b>siar: {escape_html(source)}</b>\n{escape_html(message)}"[:4000]
        for admin in self.settings.admins:
            try:
                await self.app.bot.send_message(admin, text, parse_mode="HTML")
            except Exception as exc:  # an alert must never break the caller
                log.warning("cannot alert Telegram admin %s: %s", admin, type(exc).__name__)


def _polling_error(exc: Exception) -> None:
    log.warning("telegram: getUpdates failed (%s); polling continues", type(exc).__name__)


def token_key(settings: TelegramSection) -> str:
    """A name for the bot token that does not reveal it (shared objects, rate buckets, locks)."""
    return "telegram:" + hashlib.sha256(settings.token.get_secret_value().encode()).hexdigest()[:16]


def app_for(context: ChannelContext) -> TelegramApp:
    """The shared TelegramApp of the configured token (made on first use)."""
    settings = telegram_section(context)
    return context.shared.get(token_key(settings), TelegramApp, lambda: TelegramApp(settings, context))


def build_application(
    settings: TelegramSection, pacer: ChatPacer
) -> Application[Any, Any, Any, Any, Any, Any]:
    """A PTB Application pointed at `api_base_url`, every request paced by `pacer`."""
    timeout = settings.request_timeout
    base = settings.api_base_url.rstrip("/")
    return (
        ApplicationBuilder()
        .token(settings.token.get_secret_value())
        .base_url(f"{base}/bot")
        .base_file_url(f"{base}/file/bot")
        .connection_pool_size(64)
        .read_timeout(timeout)
        .write_timeout(timeout)
        .connect_timeout(10.0)
        .pool_timeout(timeout)
        .get_updates_read_timeout(20.0)
        .rate_limiter(PacedRequests(pacer))
        .concurrent_updates(8)
        .build()
    )
