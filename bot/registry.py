"""The channel types this build knows, filled by the channel packages themselves.

Every module or package in `channels/` exports `PLUGIN = Plugin(...)`: its channel types (the
settings model and a `create` function each), and optionally the top-level config sections it
owns (`[telegram]`, `[webpush]`), its migrations (an Alembic versions folder) and CLI commands
(`siar webpush init`). The core finds them by importing each module of the `channels` package
once (`discover`); it never names a platform. A module keeps its platform SDK imports inside
the functions that need them, so a missing SDK disables only the channels that use it; a module
that cannot even be imported is reported with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel
from sqlalchemy import MetaData

from bot.channel import Channel, ChannelContext, ChannelSettings

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger("siar.registry")
PACKAGE = "channels"


@dataclass(frozen=True)
class ChannelType:
    """`type = "NAME"` in `[channels.X]`: how to validate its table and make the channel."""

    name: str
    settings: type[ChannelSettings]
    create: Callable[[str, ChannelSettings, ChannelContext], Channel]


@dataclass(frozen=True)
class CliCommand:
    """A `siar NAME …` subcommand a channel package adds."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Config, argparse.Namespace], int]


@dataclass(frozen=True)
class Plugin:
    name: str
    types: tuple[ChannelType, ...]
    sections: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    migrations: Path | None = None
    metadata: MetaData | None = None  # its tables (what `migrations` must create; tested)
    commands: tuple[CliCommand, ...] = ()


class UnknownChannelType(KeyError):
    pass


class Registry:
    def __init__(self, package: str = PACKAGE) -> None:
        self.package = package
        self._plugins: dict[str, Plugin] = {}
        self.broken: dict[str, str] = {}  # module -> why it cannot be imported
        self._discovered = False

    def register(self, plugin: Plugin) -> None:
        """Add `plugin`'s types, sections, migrations and commands (a later one wins)."""
        self._plugins[plugin.name] = plugin

    def unregister(self, name: str) -> None:
        self._plugins.pop(name, None)

    def discover(self) -> None:
        """Import every module of the channels package once and register its PLUGIN."""
        if self._discovered:
            return
        self._discovered = True
        try:
            root = importlib.import_module(self.package)
        except ImportError as exc:
            self.broken[self.package] = str(exc)
            return
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
            module_name = f"{self.package}.{info.name}"
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # one broken platform module must not hide the others
                self.broken[module_name] = f"{type(exc).__name__}: {exc}"
                log.warning("channel module %s cannot be imported: %s", module_name, exc)
                continue
            plugin = getattr(module, "PLUGIN", None)
            if isinstance(plugin, Plugin):
                self._plugins.setdefault(plugin.name, plugin)

    def plugins(self) -> list[Plugin]:
        self.discover()
        return list(self._plugins.values())

    def types(self) -> dict[str, ChannelType]:
        return {t.name: t for p in self.plugins() for t in p.types}

    def known_types(self) -> list[str]:
        """Every channel type this build has, sorted."""
        return sorted(self.types())

    def channel_type(self, kind: str) -> ChannelType:
        """The type `kind`; UnknownChannelType (naming broken modules, if any) otherwise."""
        found = self.types().get(kind)
        if found is None:
            raise UnknownChannelType(kind)
        return found

    def sections(self) -> dict[str, type[BaseModel]]:
        return {name: model for p in self.plugins() for name, model in p.sections.items()}

    def migrations(self) -> list[Path]:
        return [p.migrations for p in self.plugins() if p.migrations is not None]

    def commands(self) -> list[CliCommand]:
        return [c for p in self.plugins() for c in p.commands]

    @contextmanager
    def registered(self, plugin: Plugin) -> Iterator[None]:
        """`plugin` registered for the duration of a `with` block (tests)."""
        self.register(plugin)
        try:
            yield
        finally:
            self.unregister(plugin.name)


REGISTRY = Registry()


def known_types() -> list[str]:
    return REGISTRY.known_types()


def settings_class(kind: str) -> type[ChannelSettings]:
    """The settings model of channel type `kind`; UnknownChannelType if there is none."""
    return REGISTRY.channel_type(kind).settings


def create_channel(name: str, settings: ChannelSettings, context: ChannelContext) -> Channel:
    """A ready-to-start channel; ImportError when the platform's SDK is not installed."""
    return REGISTRY.channel_type(settings.type).create(name, settings, context)


def unknown_type_message(kind: str) -> str:
    text = f"unknown channel type {kind!r}; one of {', '.join(known_types())}"
    if REGISTRY.broken:
        text += " (" + "; ".join(f"{m} cannot be imported: {why}" for m, why in REGISTRY.broken.items()) + ")"
    return text
