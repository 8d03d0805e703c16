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
from typing import TYPE_CHECKING, Any, ClassVar

from bot.channel import (
    ChannelContext,
    ChannelSettings,
    Permanent,
    RetryLater,
    Uncertain,
)
from bot.counting import Budget, count_telegram
from bot.render import READ_MORE, PostRenderer, load_template_text
from bot.types import Button, Length, Post, Receipt, Story

if TYPE_CHECKING:
    from bot.telegram_store import TelegramStore
    from channels.telegram_api import TelegramBot

log = logging.getLogger("siar.telegram")
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024

DEFAULT_TEMPLATE = """\
<b>{{ title }}</b>

{{ lead }}

{{ hashtags }}
"""


class Settings(ChannelSettings):
    type: str = "telegram"
    chat: str | int  # "@channelname" or a numeric chat id (-1001234567890)
    rate_limit: str = "20/min"
    photo: bool = True  # send the story's image as a photo with the post as caption
    link_preview: bool = True  # for text posts: show the story's link preview
    silent: bool = False  # disable_notification
    buttons: bool = True  # "Baca selengkapnya" and the [cta] links as inline buttons
    # A read timeout or a connection lost after the request went out may mean it was posted:
    # False marks such a row uncertain (see `classify`), True retries it (a duplicate is possible).
    retry_on_timeout: bool = False

    requires_section: ClassVar[str | None] = "telegram"


def keyboard_buttons(story: Story, context: ChannelContext, language: str) -> tuple[Button, ...]:
    """Read more (story URL), then the follow-us links, then the notification link, from [cta]."""
    cta = context.cta
    buttons = []
    if story.url:
        buttons.append(Button(cta.read_more_text or READ_MORE[language], story.url))
    buttons += [Button(link.label, link.url) for link in cta.follow_links if link.label and link.url]
    if cta.notify_url:
        label = cta.notify_text or ("Aktifkan notifikasi" if language == "id" else "Get notifications")
        buttons.append(Button(label[:64], cta.notify_url))
    return tuple(buttons)


def reply_markup(buttons: tuple[Button, ...]) -> Any:
    """Read more alone on the first row, the other buttons two per row."""
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup

    if not buttons:
        return None
    rows = [[InlineKeyboardButton(buttons[0].text, url=buttons[0].url)]]
    rest = [InlineKeyboardButton(b.text, url=b.url) for b in buttons[1:]]
    rows += [rest[i:i + 2] for i in range(0, len(rest), 2)]
    return InlineKeyboardMarkup(rows)


def message_url(chat: str | int, message_id: int) -> str:
    """The public t.me link of a message (private links for numeric supergroup/channel ids)."""
    text = str(chat)
    if text.startswith("@"):
        return f"https://t.me/{text[1:]}/{message_id}"
    if text.startswith("-100"):
        return f"https://t.me/c/{text[4:]}/{message_id}"
    return ""


class TelegramChannel:
    """One Telegram chat (channel or group) that receives every routed story."""

    def __init__(self, name: str, settings: Settings, context: ChannelContext) -> None:
        from channels.telegram_api import section

        self.name = name
        self.type = "telegram"
        # Telegram has no idempotency key: sending a row twice may post twice.
        self.resumable = False
        self.settings = settings
        self.context = context
        self.language = section(context).language
        template = load_template_text(settings.template, DEFAULT_TEMPLATE, context.base_dir)
        self.renderer = PostRenderer(name, template, context, html=True, tag_settings=settings.hashtags)
        self.bot: TelegramBot | None = None
        self.store: TelegramStore | None = None
        self.chat: str | int = settings.chat

    async def start(self) -> None:
        from bot.telegram_store import store_for
        from channels.telegram_api import bot_for

        if self.context.store is not None:
            self.store = store_for(self.context.store)
            moved = await self.store.moved_chat(str(self.settings.chat))
            if moved is not None:
                log.info("channel %s: chat %s moved to %s earlier; using the new id", self.name,
                         self.settings.chat, moved)
                self.chat = moved
        self.bot = bot_for(self.context)
        await self.bot.acquire()

    async def close(self) -> None:
        if self.bot is not None:
            await self.bot.release()
            self.bot = None

    def render(self, story: Story) -> Post:
        full = self._fit(story, TEXT_LIMIT)
        buttons = keyboard_buttons(story, self.context, self.language) if self.settings.buttons else ()
        if story.image and self.settings.photo:
            caption = self._fit(story, CAPTION_LIMIT)
            return Post(channel=self.name, type=self.type, story=story, text=caption[0],
                        length=Length("utf16", caption[1], CAPTION_LIMIT), parse_mode="HTML",
                        buttons=buttons, media=(story.image,),
                        extra={"fallback_text": full[0], "fallback_length": full[1]})
        return Post(channel=self.name, type=self.type, story=story, text=full[0],
                    length=Length("utf16", full[1], TEXT_LIMIT), parse_mode="HTML", buttons=buttons)

    def _fit(self, story: Story, limit: int) -> tuple[str, int]:
        text, used, _ = self.renderer.fit(story, Budget("utf16", limit, count_telegram))
        return text, used

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Post it; errors are mapped (see `classify`); a moved group is remembered and retried."""
        from telegram.error import BadRequest, ChatMigrated, TelegramError

        assert self.bot is not None, "start() first"
        for _ in range(2):  # a second time only after ChatMigrated
            try:
                if post.media:
                    try:
                        message = await self._send_photo(post)
                    except BadRequest as exc:
                        if not photo_refused(exc):
                            raise
                        log.warning("channel %s: Telegram refused the photo %s (%s); sending text",
                                    self.name, post.media[0], exc.message)
                        message = await self._send_text(post, post.extra.get("fallback_text", post.text))
                else:
                    message = await self._send_text(post, post.text)
            except ChatMigrated as exc:
                await self._moved(exc.new_chat_id)
                continue
            except TelegramError as exc:
                raise classify(exc, self.chat, retry_on_timeout=self.settings.retry_on_timeout) from exc
            return Receipt(remote_id=str(message.message_id), url=message_url(self.chat, message.message_id))
        raise RetryLater(f"chat {self.settings.chat} moved twice in a row; trying again later")

    async def _send_photo(self, post: Post) -> Any:
        assert self.bot is not None
        return await self.bot.app.bot.send_photo(
            self.chat, post.media[0], caption=post.text, parse_mode="HTML",
            reply_markup=reply_markup(post.buttons), disable_notification=self.settings.silent)

    async def _send_text(self, post: Post, text: str) -> Any:
        from telegram import LinkPreviewOptions

        assert self.bot is not None
        preview = LinkPreviewOptions(is_disabled=True)
        if self.settings.link_preview and post.story.url:
            preview = LinkPreviewOptions(url=post.story.url, prefer_large_media=True)
        return await self.bot.app.bot.send_message(
            self.chat, text, parse_mode="HTML", reply_markup=reply_markup(post.buttons),
            link_preview_options=preview, disable_notification=self.settings.silent)

    async def _moved(self, new_chat: int) -> None:
        log.warning("channel %s: chat %s became supergroup %s; remembering the new id", self.name,
                    self.chat, new_chat)
        if self.store is not None:
            clock = self.context.clock
            from datetime import UTC, datetime

            now = clock() if clock else datetime.now(UTC)
            await self.store.remember_move(str(self.settings.chat), new_chat, now)
        self.chat = new_chat


PHOTO_ERRORS = ("wrong file identifier", "failed to get http url content", "wrong type of the web page",
                "photo_invalid", "image_process_failed", "wrong remote file", "photo", "file")


def photo_refused(exc: Exception) -> bool:
    """True when a sendPhoto BadRequest is about the photo (so a text post may still work)."""
    message = str(exc).lower()
    if "chat not found" in message or "can't parse entities" in message:
        return False
    return any(marker in message for marker in PHOTO_ERRORS)


def classify(exc: Exception, chat: str | int, *, retry_on_timeout: bool = False) -> Exception:
    """The siar error kind of a python-telegram-bot error.

    The Bot API has no idempotency key and this channel is not resumable, so a request that
    may have reached Telegram must not be resent automatically: a second try could post the
    story twice. PTB turns every lost connection into NetworkError (TimedOut for timeouts), so
    the httpx error it chains says which case it is:

    - nothing was sent (httpx.ConnectError, ConnectTimeout, PoolTimeout): RetryLater;
    - an HTTP answer from Telegram (5xx, or another status PTB has no class for; no transport
      error chained): RetryLater, Telegram answers errors before it posts;
    - anything else (a read timeout, the server closing or resetting the connection after the
      request went out, a write error, an unknown error in the HTTP layer): Uncertain (shown by
      `siar status`, `siar resend` sends it), unless `retry_on_timeout` says duplicates are
      acceptable.
    """
    from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter

    from channels.telegram_api import retry_after_seconds

    text = str(exc)
    if isinstance(exc, RetryAfter):
        after = retry_after_seconds(exc)
        return RetryLater(f"Telegram flood control: retry after {after:g}s", after=after)
    if isinstance(exc, Forbidden):
        return Permanent(f"the bot may not post in {chat}: {text} (add it to the chat as an admin "
                         "that can post messages)")
    if isinstance(exc, InvalidToken):
        return Permanent("Telegram refused the bot token ([telegram] token)")
    if isinstance(exc, BadRequest):
        if "chat not found" in text.lower():
            return Permanent(f"chat {chat} not found: check `chat` and that the bot is a member")
        return Permanent(f"Telegram refused the post: {text}")
    if isinstance(exc, NetworkError):  # TimedOut included
        transport = transport_error(exc)
        if transport is None:  # Telegram answered with an HTTP error (5xx): it did not post
            return RetryLater(f"Telegram unreachable or failing: {text}")
        name = type(transport).__name__
        if not_sent(transport):
            return RetryLater(f"Telegram unreachable ({name}); nothing was sent")
        if retry_on_timeout:
            return RetryLater(f"connection to Telegram lost after sending ({name}); retrying "
                              "(retry_on_timeout)")
        return Uncertain(f"connection to Telegram lost after the request was sent ({name}); the post "
                         "may or may not be out")
    return Permanent(f"unexpected Telegram error: {type(exc).__name__}: {text}")


def transport_error(exc: BaseException) -> BaseException | None:
    """The HTTP layer's error behind a PTB NetworkError, or None when there is none: PTB raises
    NetworkError without a cause (or caused by its own "Invalid server response" when the body
    was not JSON, a proxy's HTML error page, say) for an HTTP error status it has no class for."""
    import httpx
    from telegram.error import TelegramError

    cause = exc.__cause__
    if cause is None or isinstance(cause, TelegramError):
        return None
    seen: set[int] = set()
    link: BaseException | None = cause
    while link is not None and id(link) not in seen:  # the httpx error, if something wrapped it
        if isinstance(link, httpx.HTTPError):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return cause  # "Unknown error in HTTP implementation": no telling how far it got


def not_sent(error: BaseException) -> bool:
    """True for httpx errors raised before any byte of the request went out."""
    import httpx

    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> TelegramChannel:
    assert isinstance(settings, Settings)
    return TelegramChannel(name, settings, context)
