"""`type = "webpush"`: browser push notifications, from siar's own subscribe page to the reader.

The package owns the top-level `[webpush]` section, its tables and `siar webpush init`. Read it
in this order:

- `config`: `WebPushSection` (the `[webpush]` section) and `Settings` (`[channels.NAME]`).
- `channel`: `WebPushChannel` renders a story and fans it out to the matching subscriptions
  through the core fan-out ledger.
- `store`: the subscription and click tables and their queries.
- `subscription`: what a browser's subscription is, how its JSON is checked, which stories it
  wants.
- `server`: `PushHttpServer`, the subscribe page, service worker, widget and JSON endpoints
  under /push/ (static assets in `static/`), routes on the shared HTTP server of bot/web.py.
- `keys`: the VAPID key pair, and `init_command` for `siar webpush init`.
- `migrations/`: this package's tables (an Alembic branch of its own).
"""

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.channel import Channel, ChannelContext, ChannelSettings
from bot.config import Config, split_listen
from bot.registry import ChannelType, CliCommand, Plugin
from channels.webpush.config import Settings, Topic, WebPushSection, http_config
from channels.webpush.store import metadata as tables

if TYPE_CHECKING:
    from channels.webpush.channel import (
        DEFAULT_TEMPLATE,
        PAYLOAD_MAX,
        PushAnswer,
        WebPushChannel,
        WebPushPayload,
        payload_bytes,
        push_answer,
    )
    from channels.webpush.keys import b64url, init_command, load_vapid
    from channels.webpush.server import ClientLimiter, PushHttpServer
    from channels.webpush.store import SubscriptionStore
    from channels.webpush.subscription import Subscription, wanted_by

# What only a running web push channel needs (the channel with aiohttp, encryption and the
# subscribe page; cryptography for the keys) is imported on first use: every siar process
# imports this package to learn the channel type, most never push (README, memory).
_LAZY = {
    "DEFAULT_TEMPLATE": "channel",
    "PAYLOAD_MAX": "channel",
    "PushAnswer": "channel",
    "WebPushChannel": "channel",
    "WebPushPayload": "channel",
    "payload_bytes": "channel",
    "push_answer": "channel",
    "b64url": "keys",
    "init_command": "keys",
    "load_vapid": "keys",
    "ClientLimiter": "server",
    "PushHttpServer": "server",
    "SubscriptionStore": "store",
    "Subscription": "subscription",
    "wanted_by": "subscription",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def create(name: str, settings: ChannelSettings, context: ChannelContext) -> Channel:
    """The web push channel `name` (channel.create, imported now)."""
    from channels.webpush.channel import create as create_channel

    return create_channel(name, settings, context)


def _configure_init(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("init",), help="init: create the VAPID key pair")
    parser.add_argument("--force", action="store_true", help="replace an existing key file")


def _run_init(config: Config, args: argparse.Namespace) -> int:
    from channels.webpush.keys import init_command

    return init_command(config, force=args.force)


PLUGIN = Plugin(
    "webpush",
    (ChannelType("webpush", Settings, create),),
    sections={"webpush": WebPushSection},
    migrations=Path(__file__).parent / "migrations",
    metadata=tables,
    commands=(
        CliCommand(
            "webpush", "browser push set-up (init: create the VAPID key pair)", _configure_init, _run_init
        ),
    ),
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "PAYLOAD_MAX",
    "PLUGIN",
    "ClientLimiter",
    "PushAnswer",
    "PushHttpServer",
    "Settings",
    "Subscription",
    "SubscriptionStore",
    "Topic",
    "WebPushChannel",
    "WebPushPayload",
    "WebPushSection",
    "b64url",
    "create",
    "http_config",
    "init_command",
    "load_vapid",
    "payload_bytes",
    "push_answer",
    "split_listen",
    "wanted_by",
]
