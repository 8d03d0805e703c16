"""`type = "webpush"`: browser push notifications, from siar's own subscribe page to the reader.

The package owns the top-level `[webpush]` section. Read it in this order:

- `config`: `WebPushSection` (the `[webpush]` section) and `Settings` (`[channels.NAME]`).
- `channel`: `WebPushChannel` renders a story and fans it out to the matching subscriptions.
- `store`: the subscription, delivery and click tables and the queries the channel and the
  server use.
- `subscription`: what a browser's subscription is, how its JSON is checked, which stories it
  wants.
- `server`: `PushHttpServer`, the subscribe page, service worker, widget and JSON endpoints
  under /push/ (static assets in `static/`), routes on the shared HTTP server of bot/web.py.
- `keys`: the VAPID key pair, and `init_command` for `siar webpush init`.

This module re-exports what the rest of siar imports: the registry's `Settings`, `create` and
`WebPushSection`, the CLI's `init_command`, and what the onesignal channel and the tests use.
"""

from bot.config import split_listen
from channels.webpush.channel import (
    DEFAULT_TEMPLATE,
    PAYLOAD_MAX,
    WebPushChannel,
    classify,
    create,
    parse_retry_after,
    payload_bytes,
    story_tag,
)
from channels.webpush.config import Settings, Topic, WebPushSection, http_config
from channels.webpush.keys import b64url, init_command, load_vapid
from channels.webpush.server import ClientLimiter, PushHttpServer
from channels.webpush.store import Outcome, SubscriptionStore
from channels.webpush.subscription import Subscription, wanted_by

__all__ = [
    "DEFAULT_TEMPLATE",
    "PAYLOAD_MAX",
    "ClientLimiter",
    "Outcome",
    "PushHttpServer",
    "Settings",
    "Subscription",
    "SubscriptionStore",
    "Topic",
    "WebPushChannel",
    "WebPushSection",
    "b64url",
    "classify",
    "create",
    "http_config",
    "init_command",
    "load_vapid",
    "parse_retry_after",
    "payload_bytes",
    "split_listen",
    "story_tag",
    "wanted_by",
]
