"""Channel types to their modules in `channels/`, imported only when a config names them.

Each module provides `Settings` (a `ChannelSettings` subclass, importable without the platform's
SDK) and `create(name, settings, context) -> Channel`. The core never imports a channel by name;
a missing SDK disables only the channels that need it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import cast

from bot.channel import Channel, ChannelContext, ChannelSettings

MODULES: dict[str, str] = {
    "console": "channels.console",
}


class UnknownChannelType(KeyError):
    pass


def known_types() -> list[str]:
    """Every channel type this build knows, sorted."""
    return sorted(MODULES)


def _module(kind: str) -> ModuleType:
    try:
        return importlib.import_module(MODULES[kind])
    except KeyError as exc:
        raise UnknownChannelType(kind) from exc


def settings_class(kind: str) -> type[ChannelSettings]:
    """The settings model of channel type `kind`; UnknownChannelType if there is none."""
    return cast(type[ChannelSettings], _module(kind).Settings)


def create_channel(name: str, settings: ChannelSettings, context: ChannelContext) -> Channel:
    """A ready-to-start channel; ImportError when the platform's SDK is not installed."""
    return cast(Channel, _module(settings.type).create(name, settings, context))
