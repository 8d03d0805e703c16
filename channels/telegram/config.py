"""The Telegram configuration: the `[telegram]` section (the bot account) and the settings of
both channel types, `telegram` (a channel or group) and `telegram-subscribers` (the reader bot).

Importable without python-telegram-bot: the config is validated before any SDK is loaded.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from bot.channel import ChannelSettings
from bot.durations import Duration


class TelegramSection(BaseModel):
    """`[telegram]`: the bot account both Telegram channel types use."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr
    api_base_url: str = "https://api.telegram.org"  # requests go to {api_base_url}/bot{token}/METHOD
    admins: list[int] = []  # Telegram user ids allowed the admin commands; they receive alerts
    language: Literal["id", "en"] = "id"
    # Updates (commands, button presses) come by long polling unless webhook_url is set.
    webhook_url: str = ""  # public https URL Telegram posts updates to
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = Field(default=8443, ge=1, le=65535)
    webhook_path: str = "telegram"
    # Telegram sends it with every update (X-Telegram-Bot-Api-Secret-Token); required with a
    # webhook, so that nobody else can post forged updates to it.
    webhook_secret: SecretStr | None = None
    request_timeout: Duration = 30.0  # how long to wait for Telegram's answer

    secret_keys: ClassVar[tuple[str, ...]] = ("token", "webhook_secret")

    @property
    def bot_url(self) -> str:
        return self.api_base_url.rstrip("/") + "/bot"

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> TelegramSection:
        if self.webhook_url:
            if not self.webhook_url.startswith("https://"):
                raise ValueError("webhook_url: Telegram only posts updates to an https:// URL")
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if not secret:
                raise ValueError(
                    "webhook_secret is required with webhook_url: without it anyone who "
                    "finds the URL can post forged updates (1-256 characters A-Z a-z 0-9 _ -)"
                )
        return self


class PosterSettings(ChannelSettings):
    """`type = "telegram"`: posts every routed story to one channel or group."""

    type: str = "telegram"
    chat: str | int  # "@channelname" or a numeric chat id (-1001234567890)
    rate_limit: str = "20/min"
    photo: bool = True  # send the story's image as a photo with the post as caption
    link_preview: bool = True  # for text posts: show the story's link preview
    silent: bool = False  # disable_notification
    buttons: bool = True  # "Baca selengkapnya" and the [cta] links as inline buttons
    # A read timeout or a connection lost after the request went out may mean it was posted:
    # False marks such a row uncertain (see errors.telegram_error), True retries it (a duplicate is
    # possible).
    retry_on_timeout: bool = False
    # Breaking news (a `[[priority]]` rule's story) is pinned in the chat, and unpinned again
    # `pin_for` later (the bot needs the right to pin: can_edit_messages in a channel,
    # can_pin_messages in a group).
    pin_breaking: bool = True
    pin_for: Duration = Field(default=7200.0, gt=0)

    requires_section: ClassVar[str | None] = "telegram"


class ReaderSettings(ChannelSettings):
    """`type = "telegram-subscribers"`: the reader bot and the broadcast of each story."""

    type: str = "telegram-subscribers"
    rate_limit: str = "1000/s"  # stories per period; each story is one broadcast
    messages_per_second: float = Field(default=29.0, ge=0)  # overall; Telegram allows ~30; 0 = no limit
    allow_paid_broadcast: bool = False  # Telegram Stars paid broadcast: up to 1000 messages/s
    concurrency: int = Field(default=8, ge=1, le=256)  # requests in flight during a broadcast
    # Sections offered in /topik; empty = the sections seen in recent stories.
    topics: list[str] = Field(default_factory=list)
    top_tags: int = Field(default=8, ge=0, le=40)  # most frequent tags offered in /topik
    silent: bool = False
    # Commands one chat may send per minute; more are ignored (one reader cannot busy the bot).
    commands_per_minute: int = Field(default=12, ge=1, le=600)
    # A corrected story edits, a retracted one deletes, every reader's message of it (paced like
    # a broadcast, resumable). Off by default: one correction is as many requests as readers.
    edit_readers: bool = False
    delete_readers: bool = False

    requires_section: ClassVar[str | None] = "telegram"
