"""Wiring in one place: `build(config, …)` makes every part, each replaceable for tests."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bot import registry
from bot.admin import Admin
from bot.channel import Alerts, Channel, ChannelContext, ChannelUnavailable, utc_now
from bot.config import Config
from bot.dispatcher import Dispatcher
from bot.fetch import Fetcher
from bot.metrics import Metrics, NullMetrics
from bot.net import guard_for_story
from bot.pipeline import FeedPoller
from bot.render import RenderError
from bot.store import Store

log = logging.getLogger("siar")
Clock = Callable[[], datetime]


@dataclass
class App:
    config: Config
    store: Store
    fetcher: Fetcher
    channels: dict[str, Channel]
    poller: FeedPoller
    dispatcher: Dispatcher
    clock: Clock
    context: ChannelContext
    unavailable: dict[str, str] = field(default_factory=dict)  # channel -> why it cannot run
    metrics: Metrics = field(default_factory=NullMetrics)
    admin: Admin | None = None

    async def close(self) -> None:
        for name, channel in self.channels.items():
            if name not in self.dispatcher.started:
                continue
            try:
                await channel.close()
            except Exception:
                log.exception("channel %s: error while closing", name)
        await self.fetcher.close()
        await self.store.close()


def channel_context(config: Config, store: Store | None = None, clock: Clock = utc_now) -> ChannelContext:
    """What the core lends the channels of `config` (with the store's services when given)."""
    context = ChannelContext(
        site=config.site,
        cta=config.cta,
        base_dir=config.path.parent,
        user_agent=config.fetch.user_agent,
        clock=clock,
        alerts=Alerts(config.redact),
        sections=config.sections,
        guard_for=lambda feed: guard_for_story(config, feed),
        redact=config.redact,
        http=config.http if "http" in config.model_fields_set else None,
    )
    if store is not None:

        async def sent_since(channel: str, since: datetime) -> int:
            return await store.outbox.sent_since(channel, since, confirmed=True)

        context.database = store.db
        context.sent_since = sent_since
        context.fanout = store.fanout
        context.stories = store.stories
        context.reports = store.reports
    return context


def make_channels(
    config: Config, context: ChannelContext | None = None, *, include_disabled: bool = False
) -> tuple[dict[str, Channel], dict[str, str]]:
    """(channels that can run, {name: reason} for those that cannot)."""
    context = context or channel_context(config)
    ready: dict[str, Channel] = {}
    unavailable: dict[str, str] = {}
    for name, settings in config.channels.items():
        if not settings.enabled:
            continue
        if name in config.disabled and not include_disabled:
            unavailable[name] = config.disabled[name]
            continue
        try:
            ready[name] = registry.create_channel(name, settings, context)
        except ImportError as exc:
            unavailable[name] = f"needs a package that is not installed ({exc.name or exc})"
        except (RenderError, ChannelUnavailable) as exc:  # disables this channel, not the daemon
            unavailable[name] = str(exc)
    return ready, unavailable


def migrations() -> list[Path]:
    """The channel packages' migration folders (the core's own are always applied)."""
    return registry.REGISTRY.migrations()


def build(
    config: Config,
    *,
    channels: dict[str, Channel] | None = None,
    store: Store | None = None,
    fetcher: Fetcher | None = None,
    clock: Clock = utc_now,
    context: ChannelContext | None = None,
) -> App:
    """Every part of a running siar, from `config` unless given."""
    store = store or Store(config.store.url, config.path.parent)
    context = context or channel_context(config, store, clock)
    unavailable: dict[str, str] = {}
    if channels is None:
        channels, unavailable = make_channels(config, context)
    fetcher = fetcher or Fetcher(
        config.fetch.user_agent, config.fetch.timeout, config.fetch.max_bytes, base_dir=config.path.parent
    )
    metrics = make_metrics(config)
    context.metrics = metrics
    worker = f"{socket.gethostname()}:{os.getpid()}"
    dispatcher = Dispatcher(config, store, channels, clock, worker, context.alerts, metrics)
    poller = FeedPoller(
        config,
        store,
        fetcher,
        clock,
        targets_of(config, channels, unavailable),
        context.alerts,
        unavailable,
        metrics,
        channels,
    )
    admin = Admin(config, store, clock, channels, dispatcher.wake)
    context.admin = admin
    return App(
        config, store, fetcher, channels, poller, dispatcher, clock, context, unavailable, metrics, admin
    )


def make_metrics(config: Config) -> Metrics:
    """Prometheus metrics of `config`'s feeds and channels; recording nothing when
    `[metrics] listen = ""`."""
    if not config.metrics.listen:
        return NullMetrics()
    return Metrics([f.name for f in config.feeds], [n for n, c in config.channels.items() if c.enabled])


def targets_of(config: Config, channels: dict[str, Channel], unavailable: dict[str, str]) -> dict[str, Any]:
    """The channels that get outbox rows: those that run here, and those waiting for a secret
    (they get `not_running` decisions)."""
    targets: dict[str, Any] = {name: channel.settings for name, channel in channels.items()}
    targets.update({name: config.channels[name] for name in unavailable if name in config.channels})
    return targets
