"""Telegram: `type = "telegram"` posts to a channel or group, `type = "telegram-subscribers"`
runs the reader bot and broadcasts each story to its readers. Both share the `[telegram]`
section (the bot account) and one python-telegram-bot Application per token.

Read it in this order:

- `config`: `TelegramSection` (`[telegram]`), `PosterSettings`, `ReaderSettings`.
- `app`: the shared Application per token (updates, admin alerts), built with `pacing`'s rate
  limiter, through which every message the bot sends is paced.
- `poster`: `TelegramChannel`, channel and group posts (photo + caption or text + preview).
- `fanout`: `SubscriberChannel`, the broadcast to readers through the core fan-out ledger.
- `readerbot`: the commands readers and admins send; `topics`, `texts` beside it.
- `errors`: what a Bot API error means; `buttons`: the inline keyboards.
- `store`: subscribers (with their quiet hours and digest-only choice), moved chats and
  breaking-news pins; `migrations/`: their tables.

This module imports no python-telegram-bot: the config validates without it, and a missing SDK
disables only these channels.
"""

from __future__ import annotations

from pathlib import Path

from bot.channel import Channel, ChannelContext, ChannelSettings
from bot.registry import ChannelType, Plugin
from channels.telegram.config import PosterSettings, ReaderSettings, TelegramSection
from channels.telegram.store import metadata


def create_poster(name: str, settings: ChannelSettings, context: ChannelContext) -> Channel:
    from channels.telegram.poster import create

    return create(name, settings, context)


def create_reader(name: str, settings: ChannelSettings, context: ChannelContext) -> Channel:
    from channels.telegram.fanout import create

    return create(name, settings, context)


PLUGIN = Plugin(
    "telegram",
    (
        ChannelType("telegram", PosterSettings, create_poster),
        ChannelType("telegram-subscribers", ReaderSettings, create_reader),
    ),
    sections={"telegram": TelegramSection},
    migrations=Path(__file__).parent / "migrations",
    metadata=metadata,
)

__all__ = ["PLUGIN", "PosterSettings", "ReaderSettings", "TelegramSection"]
