"""Channel types to their modules in `channels/`, imported only when a config names them.

Each module provides `Settings` (a `ChannelSettings` subclass, importable without the platform's
SDK) and `create(name, settings, context) -> Channel`. The core never imports a channel by name;
a missing SDK disables only the channels that need it.

Some platforms also own a top-level config section (`[telegram]`, `[webpush]`): SECTIONS maps
the section to the pydantic model that validates it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import cast

from pydantic import BaseModel

from bot.channel import Channel, ChannelContext, ChannelSettings

MODULES: dict[str, str] = {
    "console": "channels.console",
    "telegram": "channels.telegram",
    "telegram-subscribers": "channels.telegram_subscribers",
    "x": "channels.x",
    "mastodon": "channels.mastodon",
    "bluesky": "channels.bluesky",
    "discord": "channels.discord",
    "webpush": "channels.webpush",
    "onesignal": "channels.onesignal",
}
SECTIONS: dict[str, tuple[str, str]] = {
    "telegram": ("channels.telegram_api", "TelegramSection"),
    "webpush": ("channels.webpush", "WebPushSection"),
}


class UnknownChannelType(KeyError):
    pass


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def known_types() -> list[str]:
    """Every channel type this build has a module for, sorted."""
    return sorted(kind for kind, module in MODULES.items() if _exists(module))


def known_sections() -> list[str]:
    return sorted(name for name, (module, _) in SECTIONS.items() if _exists(module))


def _module(kind: str) -> ModuleType:
    if kind not in MODULES or not _exists(MODULES[kind]):
        raise UnknownChannelType(kind)
    return importlib.import_module(MODULES[kind])


def settings_class(kind: str) -> type[ChannelSettings]:
    """The settings model of channel type `kind`; UnknownChannelType if there is none."""
    return cast(type[ChannelSettings], _module(kind).Settings)


def section_class(name: str) -> type[BaseModel] | None:
    """The model of top-level section `name`, or None when no module provides it."""
    if name not in SECTIONS or not _exists(SECTIONS[name][0]):
        return None
    module, attr = SECTIONS[name]
    return cast(type[BaseModel], getattr(importlib.import_module(module), attr))


def create_channel(name: str, settings: ChannelSettings, context: ChannelContext) -> Channel:
    """A ready-to-start channel; ImportError when the platform's SDK is not installed."""
    return cast(Channel, _module(settings.type).create(name, settings, context))
