"""Inline buttons under Telegram posts: "Baca selengkapnya" and the site's calls to action."""

from __future__ import annotations

from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.channel import ChannelContext
from bot.render import READ_MORE
from bot.types import Button, Story


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
    if not buttons:
        return None
    rows = [[InlineKeyboardButton(buttons[0].text, url=buttons[0].url)]]
    rest = [InlineKeyboardButton(b.text, url=b.url) for b in buttons[1:]]
    rows += [rest[i : i + 2] for i in range(0, len(rest), 2)]
    return InlineKeyboardMarkup(rows)


def message_url(chat: str | int, message_id: int) -> str:
    """The public t.me link of a message (private links for numeric supergroup/channel ids)."""
    text = str(chat)
    if text.startswith("@"):
        return f"https://t.me/{text[1:]}/{message_id}"
    if text.startswith("-100"):
        return f"https://t.me/c/{text[4:]}/{message_id}"
    return ""
