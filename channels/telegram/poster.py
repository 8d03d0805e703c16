"""`type = "telegram"`: posts each story to a Telegram channel or group, in HTML, with buttons.

With an image the post goes as a photo with the text as its caption, fitted to the caption
limit (1024). Why not a text message with a large link preview when the text is longer: the
preview depends on Telegram's crawler reading the site's og:image (it may show nothing, or an
old cached image), while a photo post always shows the story's own picture, is one message and
one notification, and a news lead cut at a word boundary with "…" still reads well because the
"Baca selengkapnya" button is right under it. If Telegram refuses the photo (bad URL, too big),
the full text goes as a message with a link preview instead: a story is never dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from telegram import LinkPreviewOptions
from telegram.error import BadRequest, ChatMigrated, TelegramError

from bot.channel import ChannelContext, ChannelSettings, RetryLater
from bot.counting import Budget, count_telegram
from bot.kit import BaseChannel
from bot.types import Length, Payload, Post, Receipt, Story
from channels.telegram.app import TelegramApp, app_for, telegram_section
from channels.telegram.buttons import keyboard_buttons, message_url, reply_markup
from channels.telegram.config import PosterSettings
from channels.telegram.errors import photo_refused, telegram_error
from channels.telegram.store import TelegramStore

log = logging.getLogger("siar.telegram")
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024

DEFAULT_TEMPLATE = """\
<b>{% if breaking %}{{ breaking }} {% endif %}{{ title }}</b>

{{ lead }}

{{ hashtags }}
"""


@dataclass(frozen=True)
class PhotoPost(Payload):
    """A photo post's full text, sent as a message if Telegram refuses the photo."""

    fallback_text: str = ""
    fallback_length: int = 0


class TelegramChannel(BaseChannel[PosterSettings]):
    """One Telegram chat (channel or group) that receives every routed story. Not resumable:
    Telegram has no idempotency key, so sending a row twice may post twice."""

    TYPE = "telegram"
    DEFAULT_TEMPLATE = DEFAULT_TEMPLATE
    HTML = True

    def __init__(self, name: str, settings: PosterSettings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self.language = telegram_section(context).language
        self.bot: TelegramApp | None = None
        self.store: TelegramStore | None = None
        self.chat: str | int = settings.chat

    async def start(self) -> None:
        if self.context.database is not None:
            self.store = TelegramStore(self.context.database)
            moved = await self.store.moved_chat(str(self.settings.chat))
            if moved is not None:
                log.info(
                    "channel %s: chat %s moved to %s earlier; using the new id",
                    self.name,
                    self.settings.chat,
                    moved,
                )
                self.chat = moved
        bot = app_for(self.context)
        await bot.acquire()
        self.bot = bot

    async def close(self) -> None:
        if self.bot is not None:
            await self.bot.release()
            self.bot = None

    def render(self, story: Story) -> Post:
        full = self._fit(story, TEXT_LIMIT)
        buttons = keyboard_buttons(story, self.context, self.language) if self.settings.buttons else ()
        if story.image and self.settings.photo:
            caption = self._fit(story, CAPTION_LIMIT)
            return self.post(
                story,
                caption[0],
                Length("utf16", caption[1], CAPTION_LIMIT),
                parse_mode="HTML",
                buttons=buttons,
                media=(story.image,),
                payload=PhotoPost(full[0], full[1]),
            )
        return self.post(
            story, full[0], Length("utf16", full[1], TEXT_LIMIT), parse_mode="HTML", buttons=buttons
        )

    def _fit(self, story: Story, limit: int) -> tuple[str, int]:
        text, used, _ = self.renderer.fit(story, Budget("utf16", limit, count_telegram))
        return text, used

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Post it; errors are mapped (see errors.telegram_error); a moved group is remembered and retried."""
        assert self.bot is not None, "start() first"
        for _ in range(2):  # a second time only after ChatMigrated
            try:
                if post.media:
                    try:
                        message = await self._send_photo(post)
                    except BadRequest as exc:
                        if not photo_refused(exc):
                            raise
                        log.warning(
                            "channel %s: Telegram refused the photo %s (%s); sending text",
                            self.name,
                            post.media[0],
                            exc.message,
                        )
                        fallback = post.payload.fallback_text if isinstance(post.payload, PhotoPost) else ""
                        message = await self._send_text(post, fallback or post.text)
                else:
                    message = await self._send_text(post, post.text)
            except ChatMigrated as exc:
                await self._moved(exc.new_chat_id)
                continue
            except TelegramError as exc:
                raise telegram_error(exc, self.chat, retry_on_timeout=self.settings.retry_on_timeout) from exc
            return Receipt(remote_id=str(message.message_id), url=message_url(self.chat, message.message_id))
        raise RetryLater(f"chat {self.settings.chat} moved twice in a row; trying again later")

    async def _send_photo(self, post: Post) -> Any:
        assert self.bot is not None
        return await self.bot.app.bot.send_photo(
            self.chat,
            post.media[0],
            caption=post.text,
            parse_mode="HTML",
            reply_markup=reply_markup(post.buttons),
            disable_notification=self.settings.silent,
        )

    async def _send_text(self, post: Post, text: str) -> Any:
        assert self.bot is not None
        preview = LinkPreviewOptions(is_disabled=True)
        if self.settings.link_preview and post.story.url:
            preview = LinkPreviewOptions(url=post.story.url, prefer_large_media=True)
        return await self.bot.app.bot.send_message(
            self.chat,
            text,
            parse_mode="HTML",
            reply_markup=reply_markup(post.buttons),
            link_preview_options=preview,
            disable_notification=self.settings.silent,
        )

    async def _moved(self, new_chat: int) -> None:
        log.warning(
            "channel %s: chat %s became supergroup %s; remembering the new id", self.name, self.chat, new_chat
        )
        if self.store is not None:
            await self.store.remember_move(str(self.settings.chat), new_chat, self.now())
        self.chat = new_chat


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> TelegramChannel:
    assert isinstance(settings, PosterSettings)
    return TelegramChannel(name, settings, context)
