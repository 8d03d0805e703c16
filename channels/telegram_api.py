"""The `[telegram]` section and the one python-telegram-bot Application each bot token gets.

Both Telegram channel types (`telegram` posts to a channel or group, `telegram-subscribers` runs
the reader bot) share one `Application` per token, kept in `ChannelContext.shared`: one HTTP
pool, one update stream (Telegram allows a single `getUpdates` consumer per token) and one
place that alerts the admins. It runs inside siar's own asyncio loop (`initialize`/`start`,
`updater.start_polling` or `start_webhook`), never `run_polling`, which would own the loop.

This module imports python-telegram-bot only inside functions, so the config can be validated
without it.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bot.channel import ChannelContext

if TYPE_CHECKING:
    from telegram.ext import Application

log = logging.getLogger("siar.telegram")


class TelegramSection(BaseModel):
    """`[telegram]`: the bot account both Telegram channel types use."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr
    api_base_url: str = "https://api.telegram.org"  # requests go to {api_base_url}/bot{token}/METHOD
    admins: list[int] = []  # Telegram user ids allowed /status, /stats and sent alerts
    language: Literal["id", "en"] = "id"
    # Updates (commands, button presses) come by long polling unless webhook_url is set.
    webhook_url: str = ""  # public https URL Telegram posts updates to
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = Field(default=8443, ge=1, le=65535)
    webhook_path: str = "telegram"
    webhook_secret: SecretStr | None = None  # checked on every webhook request
    request_timeout: float = Field(default=30.0, gt=0)  # seconds to wait for Telegram's answer

    secret_keys: ClassVar[tuple[str, ...]] = ("token", "webhook_secret")

    @property
    def bot_url(self) -> str:
        return self.api_base_url.rstrip("/") + "/bot"


def section(context: ChannelContext) -> TelegramSection:
    """The validated `[telegram]` section; RuntimeError when the config has none."""
    config = context.config
    value = getattr(config, "sections", {}).get("telegram") if config is not None else None
    if not isinstance(value, TelegramSection):
        raise RuntimeError("the Telegram channels need a [telegram] section with the bot token")
    return value


def retry_after_seconds(exc: Any) -> float:
    """RetryAfter's wait in seconds (PTB 22 gives an int or a timedelta, depending on PTB_TIMEDELTA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass
class TelegramBot:
    """One token's Application, started once however many channels use it."""

    settings: TelegramSection
    context: ChannelContext
    app: Application[Any, Any, Any, Any, Any, Any]
    users: int = 0
    started: bool = False
    receiving: bool = False
    username: str = ""
    alert_sink_added: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    async def acquire(self) -> None:
        """Start the Application if this is its first user."""
        self.users += 1
        if not self.started:
            await self.app.initialize()  # getMe: a wrong token fails here, with a clear error
            await self.app.start()
            self.started = True
            self.username = self.app.bot.username or ""
            log.info("telegram bot @%s connected to %s", self.username, self.settings.api_base_url)
        if not self.alert_sink_added and self.settings.admins:
            self.context.alert_sinks.append(self.alert_admins)
            self.alert_sink_added = True

    async def receive_updates(self) -> None:
        """Start taking updates (polling, or the webhook when configured); idempotent."""
        if self.receiving:
            return
        updater = self.app.updater
        assert updater is not None
        s = self.settings
        if s.webhook_url:
            secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
            await updater.start_webhook(listen=s.webhook_listen, port=s.webhook_port, url_path=s.webhook_path,
                                        webhook_url=s.webhook_url, secret_token=secret,
                                        allowed_updates=ALLOWED_UPDATES)
        else:
            await updater.start_polling(allowed_updates=ALLOWED_UPDATES, poll_interval=0.0,
                                        timeout=timedelta(seconds=10), error_callback=_polling_error)
        self.receiving = True

    async def release(self) -> None:
        """Stop the Application when its last user closes."""
        self.users -= 1
        if self.users > 0 or not self.started:
            return
        if self.alert_sink_added and self.alert_admins in self.context.alert_sinks:
            self.context.alert_sinks.remove(self.alert_admins)
            self.alert_sink_added = False
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
        from bot.counting import escape_html

        text = f"⚠️ <b>siar: {escape_html(source)}</b>\n{escape_html(message)}"[:4000]
        for admin in self.settings.admins:
            try:
                await self.app.bot.send_message(admin, text, parse_mode="HTML")
            except Exception as exc:  # an alert must never break the caller
                log.warning("cannot alert Telegram admin %s: %s", admin, type(exc).__name__)


ALLOWED_UPDATES = ["message", "callback_query", "my_chat_member"]


def _polling_error(exc: Exception) -> None:
    log.warning("telegram: getUpdates failed (%s); polling continues", type(exc).__name__)


def bot_for(context: ChannelContext) -> TelegramBot:
    """The shared TelegramBot of the configured token (made on first use)."""
    settings = section(context)
    token = settings.token.get_secret_value()
    key = "telegram:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    existing = context.shared.get(key)
    if isinstance(existing, TelegramBot):
        return existing
    bot = TelegramBot(settings, context, build_application(settings))
    context.shared[key] = bot
    return bot


def build_application(settings: TelegramSection) -> Application[Any, Any, Any, Any, Any, Any]:
    """A PTB Application pointed at `api_base_url`, without a rate limiter (siar paces itself)."""
    from telegram.ext import ApplicationBuilder

    timeout = settings.request_timeout
    base = settings.api_base_url.rstrip("/")
    return (ApplicationBuilder().token(settings.token.get_secret_value())
            .base_url(f"{base}/bot").base_file_url(f"{base}/file/bot")
            .connection_pool_size(64).read_timeout(timeout).write_timeout(timeout)
            .connect_timeout(10.0).pool_timeout(timeout)
            .get_updates_read_timeout(20.0)
            .concurrent_updates(8)
            .build())
