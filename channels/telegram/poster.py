"""`type = "telegram"`: posts each story to a Telegram channel or group, in HTML, with buttons.

With an image the post goes as a photo with the text as its caption, fitted to the caption
limit (1024). Why not a text message with a large link preview when the text is longer: the
preview depends on Telegram's crawler reading the site's og:image (it may show nothing, or an
old cached image), while a photo post always shows the story's own picture, is one message and
one notification, and a news lead cut at a word boundary with "…" still reads well because the
"Baca selengkapnya" button is right under it. If Telegram refuses the photo (bad URL, too big),
the full text goes as a message with a link preview instead: a story is never dropped.

Editorial actions: a correction edits the message (`editMessageCaption` for a photo post, whose
receipt id is marked "123:caption", else `editMessageText`); a retraction deletes it (Telegram
allows that for 48 hours). Breaking news never goes silent and is pinned; each pin comes down
`pin_for` later (`tg_pins`, checked every minute and before every post). Posts in the channel's
quiet hours go without a notification. The digest is a bold title over a list of linked titles.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from telegram import LinkPreviewOptions
from telegram.error import BadRequest, ChatMigrated, Forbidden, TelegramError

from bot.channel import AlreadyDone, ChannelContext, ChannelSettings, Permanent, RetryLater
from bot.counting import Budget, count_telegram
from bot.kit import BaseChannel
from bot.types import Digest, Length, Payload, Post, Published, Receipt, Story
from channels.telegram.app import TelegramApp, app_for, telegram_section
from channels.telegram.buttons import keyboard_buttons, message_url, reply_markup
from channels.telegram.config import PosterSettings
from channels.telegram.errors import bad_request_kind, photo_refused, telegram_error
from channels.telegram.store import TelegramStore

log = logging.getLogger("siar.telegram")
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
CAPTION_MARK = ":caption"  # a photo post's remote id: "123:caption" (edits go to its caption)
UNPIN_EVERY = 60.0  # seconds between looks for breaking pins whose `pin_for` has passed
DELETE_WINDOW = timedelta(hours=48)  # Telegram: bots delete their messages within 48 hours

DIGEST_TEMPLATE = """\
<b>{{ digest_title }}</b>

{% for item in items %}
• {% if item.breaking %}{{ item.breaking }} {% endif %}<a href="{{ item.url }}">{{ item.title }}</a>
{% endfor %}
{% if more %}

… +{{ more }}
{% endif %}
"""


def remote_id(message_id: int, caption: bool) -> str:
    """What a post's receipt keeps: the message id, marked when the post is a photo's caption."""
    return f"{message_id}{CAPTION_MARK if caption else ''}"


def parse_remote_id(value: str) -> tuple[int, bool]:
    """(message id, is a caption) of a stored remote id; Permanent when it is none of ours."""
    number, caption = (value[: -len(CAPTION_MARK)], True) if value.endswith(CAPTION_MARK) else (value, False)
    if not number.isdigit():
        raise Permanent(f"{value!r} is not a Telegram message id this channel stored")
    return int(number), caption


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
    DIGEST_TEMPLATE = DIGEST_TEMPLATE
    HTML = True
    CAN_EDIT = True
    CAN_DELETE = True

    def __init__(self, name: str, settings: PosterSettings, context: ChannelContext) -> None:
        super().__init__(name, settings, context)
        self.language = telegram_section(context).language
        self.bot: TelegramApp | None = None
        self.store: TelegramStore | None = None
        self.chat: str | int = settings.chat
        self._unpinner: asyncio.Task[None] | None = None

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
        if self.store is not None and self.settings.pin_breaking:
            self._unpinner = asyncio.create_task(self._unpin_loop())

    async def close(self) -> None:
        if self._unpinner is not None:
            self._unpinner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._unpinner
            self._unpinner = None
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

    def digest_budget(self) -> Budget:
        return Budget("utf16", TEXT_LIMIT, count_telegram)

    def render_digest(self, digest: Digest) -> Post:
        """The roundup: a bold title and an HTML list of linked titles, within 4096."""
        post = super().render_digest(digest)
        return post if post.digest is not None else dataclasses.replace(post, digest=digest)

    def silent(self, post: Post) -> bool:
        """disable_notification: `silent`, or the channel's quiet hours; never for breaking news."""
        return not post.story.breaking and (self.settings.silent or self.quiet_now(post.story))

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        """Post it; errors are mapped (see errors.telegram_error); a moved group is remembered and
        retried. Breaking news is pinned (`pin_breaking`); pins past `pin_for` come down first."""
        assert self.bot is not None, "start() first"
        try:
            await self.unpin_due()
        except Exception:  # a pin coming down late never holds up a story
            log.exception("channel %s: unpinning breaking news failed", self.name)
        for _ in range(2):  # a second time only after ChatMigrated
            caption = False
            try:
                if post.media:
                    try:
                        message = await self._send_photo(post)
                        caption = True
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
            if post.story.breaking and post.digest is None and self.settings.pin_breaking:
                await self._pin(message.message_id)
            return Receipt(
                remote_id=remote_id(message.message_id, caption),
                url=message_url(self.chat, message.message_id),
            )
        raise RetryLater(f"chat {self.settings.chat} moved twice in a row; trying again later")

    # --- editorial actions ----------------------------------------------------------------------

    async def edit(self, post: Post, published: Published, *, idempotency_key: str) -> Receipt:
        """editMessageText, or editMessageCaption for a photo post. Editing twice is harmless
        (Telegram answers "message is not modified": AlreadyDone), so a lost answer is retried."""
        assert self.bot is not None, "start() first"
        message_id, caption = parse_remote_id(published.remote_id)
        try:
            try:
                await (self._edit_caption if caption else self._edit_text)(post, message_id)
            except BadRequest as exc:
                if bad_request_kind(exc) != "no_text" or caption:
                    raise
                await self._edit_caption(post, message_id)  # a photo post stored without the mark
        except BadRequest as exc:
            kind = bad_request_kind(exc)
            if kind == "not_modified":
                raise AlreadyDone("the message already reads like the corrected story") from exc
            if kind == "message_gone":
                raise Permanent(
                    f"message {message_id} is no longer in {self.chat} (deleted by hand?); nothing to edit"
                ) from exc
            raise telegram_error(exc, self.chat) from exc
        except TelegramError as exc:
            raise telegram_error(exc, self.chat, retry_on_timeout=True) from exc
        return Receipt(
            remote_id=published.remote_id,
            url=published.url or message_url(self.chat, message_id),
            note="edited",
        )

    async def _edit_text(self, post: Post, message_id: int) -> None:
        assert self.bot is not None
        text = post.text
        if isinstance(post.payload, PhotoPost) and post.payload.fallback_text:
            text = post.payload.fallback_text  # the photo was refused: the post went as text
        await self.bot.app.bot.edit_message_text(
            text,
            chat_id=self.chat,
            message_id=message_id,
            parse_mode="HTML",
            reply_markup=reply_markup(post.buttons),
            link_preview_options=self._preview(post),
        )

    async def _edit_caption(self, post: Post, message_id: int) -> None:
        assert self.bot is not None
        # The corrected story may have lost its image: its text is then fitted to 4096, too long.
        text = post.text if post.media else self._fit(post.story, CAPTION_LIMIT)[0]
        await self.bot.app.bot.edit_message_caption(
            chat_id=self.chat,
            message_id=message_id,
            caption=text,
            parse_mode="HTML",
            reply_markup=reply_markup(post.buttons),
        )

    async def delete(self, published: Published, *, idempotency_key: str) -> Receipt:
        """deleteMessage; "message to delete not found" is AlreadyDone. Telegram lets a bot delete
        its messages for 48 hours only (longer only with the can_delete_messages right)."""
        assert self.bot is not None, "start() first"
        message_id, _ = parse_remote_id(published.remote_id)
        try:
            await self.bot.app.bot.delete_message(self.chat, message_id)
        except BadRequest as exc:
            kind = bad_request_kind(exc)
            if kind == "message_gone":
                raise AlreadyDone(f"message {message_id} is gone from {self.chat} already") from exc
            if kind == "cannot_delete":
                raise Permanent(self._cannot_delete(message_id, published, exc.message)) from exc
            raise telegram_error(exc, self.chat) from exc
        except TelegramError as exc:
            raise telegram_error(exc, self.chat, retry_on_timeout=True) from exc
        if self.store is not None:
            await self.store.unpinned(self.name, str(self.chat), message_id, self.now(), "deleted")
        return Receipt(remote_id=published.remote_id, url=published.url, note="deleted")

    def _cannot_delete(self, message_id: int, published: Published, answer: str) -> str:
        age = ""
        if published.posted_at is not None:
            hours = (self.now() - published.posted_at).total_seconds() / 3600
            too_old = self.now() - published.posted_at >= DELETE_WINDOW
            age = f"; it was posted {hours:.0f} h ago" + (
                ", and bots may delete their messages only within 48 hours" if too_old else ""
            )
        return (
            f"Telegram refused to delete message {message_id} in {self.chat} ({answer}){age}: "
            "delete it by hand, or give the bot the right to delete messages"
        )

    # --- breaking-news pins -----------------------------------------------------------------------

    async def _pin(self, message_id: int) -> None:
        """Pin a breaking post (with a notification where the chat has them); a refusal is
        alerted, never a failed post: the story is out."""
        assert self.bot is not None
        try:
            await self.bot.app.bot.pin_chat_message(self.chat, message_id, disable_notification=False)
        except TelegramError as exc:
            await self.context.alert(
                self.name,
                f"cannot pin breaking news (message {message_id}) in {self.chat}: {exc} — the bot "
                "needs the right to pin (channels: edit messages; groups: pin messages)",
            )
            return
        if self.store is not None:
            now = self.now()
            await self.store.remember_pin(
                self.name, str(self.chat), message_id, now, now + timedelta(seconds=self.settings.pin_for)
            )

    async def unpin_due(self) -> int:
        """Unpin the breaking posts pinned `pin_for` ago or longer; returns how many came down.
        Runs before every send and every minute (`_unpin_loop`)."""
        if self.store is None or self.bot is None:
            return 0
        done = 0
        for pin in await self.store.due_pins(self.name, self.now()):
            detail = ""
            try:
                await self.bot.app.bot.unpin_chat_message(pin.chat, message_id=pin.message_id)
            except (BadRequest, Forbidden) as exc:  # gone, not pinned, no rights: asking again won't help
                detail = str(exc)
                log.warning("channel %s: cannot unpin message %s: %s", self.name, pin.message_id, exc)
            except TelegramError as exc:  # flood control, network: the next round tries again
                log.warning("channel %s: unpinning %s failed for now: %s", self.name, pin.message_id, exc)
                continue
            await self.store.unpinned(self.name, pin.chat, pin.message_id, self.now(), detail)
            done += 1
        return done

    async def _unpin_loop(self) -> None:
        while True:
            await asyncio.sleep(UNPIN_EVERY)
            try:
                await self.unpin_due()
            except Exception:  # the store or Telegram failing must not end the loop
                log.exception("channel %s: unpinning breaking news failed", self.name)

    async def _send_photo(self, post: Post) -> Any:
        assert self.bot is not None
        return await self.bot.app.bot.send_photo(
            self.chat,
            post.media[0],
            caption=post.text,
            parse_mode="HTML",
            reply_markup=reply_markup(post.buttons),
            disable_notification=self.silent(post),
        )

    def _preview(self, post: Post) -> LinkPreviewOptions:
        if self.settings.link_preview and post.story.url and post.digest is None:
            return LinkPreviewOptions(url=post.story.url, prefer_large_media=True)
        return LinkPreviewOptions(is_disabled=True)

    async def _send_text(self, post: Post, text: str) -> Any:
        assert self.bot is not None
        return await self.bot.app.bot.send_message(
            self.chat,
            text,
            parse_mode="HTML",
            reply_markup=reply_markup(post.buttons),
            link_preview_options=self._preview(post),
            disable_notification=self.silent(post),
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
