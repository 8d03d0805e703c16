"""Changing the configuration while siar runs (SIGHUP, `siar reload`).

The new file is loaded and validated beside the running one; a file with errors is refused
(logged with the same `file:line: key.path` errors, alerted) and siar keeps running on the old.
Otherwise only what changed is touched: feeds are scheduled, rescheduled or dropped; channels
that were added start; removed and changed channels stop taking posts, let a send in progress
finish on their old settings, and (changed ones) come back with the new settings. The store and
its outbox carry on: nothing is lost or sent twice. `[store]`, `[http]` and `[metrics]` need a
restart (their old values stay, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.app import App, channel_context, make_channels, targets_of
from bot.config import Config, ConfigError, FeedConfig, load_config

log = logging.getLogger("siar.reload")
RESTART_ONLY = ("store", "http", "metrics")
# Sections every channel's rendering or sending depends on: a change re-creates all channels.
SHARED = ("site", "cta", "fetch", "cards")


@dataclass
class Plan:
    """What a reload changes (names)."""

    feeds_added: list[str] = field(default_factory=list)
    feeds_removed: list[str] = field(default_factory=list)
    feeds_changed: list[str] = field(default_factory=list)
    channels_added: list[str] = field(default_factory=list)
    channels_removed: list[str] = field(default_factory=list)
    channels_changed: list[str] = field(default_factory=list)
    restart_only: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(
            (
                self.feeds_added,
                self.feeds_removed,
                self.feeds_changed,
                self.channels_added,
                self.channels_removed,
                self.channels_changed,
            )
        )

    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("feeds added:", self.feeds_added),
                ("feeds removed:", self.feeds_removed),
                ("feeds changed:", self.feeds_changed),
                ("channels added:", self.channels_added),
                ("channels removed:", self.channels_removed),
                ("channels changed:", self.channels_changed),
            )
            if names
        ]
        return "; ".join(parts) or "nothing changed"


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json") if model is not None else None


def _shared(config: Config, section: str) -> Any:
    """A shared section's value, whether the core or a channel package owns it ([cards])."""
    return getattr(config, section, None) or config.sections.get(section)


def _section_of(config: Config, name: str) -> Any:
    needs = type(config.channels[name]).requires_section
    return _dump(config.sections.get(needs)) if needs else None


def plan(old: Config, new: Config) -> Plan:
    """What changes from `old` to `new` (pure)."""
    result = Plan()
    old_feeds = {f.name: f for f in old.feeds}
    new_feeds = {f.name: f for f in new.feeds}
    result.feeds_added = sorted(new_feeds.keys() - old_feeds.keys())
    result.feeds_removed = sorted(old_feeds.keys() - new_feeds.keys())
    cleaning_changed = _dump(old.cleaning) != _dump(new.cleaning) or old.site.hosts != new.site.hosts
    result.feeds_changed = sorted(
        n
        for n in old_feeds.keys() & new_feeds.keys()
        if cleaning_changed or _dump(old_feeds[n]) != _dump(new_feeds[n])
    )
    everything = any(_dump(_shared(old, s)) != _dump(_shared(new, s)) for s in SHARED)
    live_old = {n for n, c in old.channels.items() if c.enabled}
    live_new = {n for n, c in new.channels.items() if c.enabled}
    result.channels_added = sorted(live_new - live_old)
    result.channels_removed = sorted(live_old - live_new)
    result.channels_changed = sorted(
        n
        for n in live_old & live_new
        if everything
        or _dump(old.channels[n]) != _dump(new.channels[n])
        or _section_of(old, n) != _section_of(new, n)
        or old.disabled.get(n) != new.disabled.get(n)
    )
    result.restart_only = [s for s in RESTART_ONLY if _dump(getattr(old, s)) != _dump(getattr(new, s))]
    return result


class Reloader:
    """Applies a new configuration file to a running app (one reload at a time)."""

    def __init__(
        self, app: App, schedule: Callable[[FeedConfig], None], unschedule: Callable[[str], None]
    ) -> None:
        self.app = app
        self.schedule = schedule  # add or replace a feed's poll job
        self.unschedule = unschedule
        # Told after each applied reload (bot/websub.py unsubscribes feeds that are gone).
        self.followers: list[Callable[[Plan, Config], Awaitable[None]]] = []

    async def reload(self) -> bool:
        """Read the config file again and apply it; False when it was refused or failed."""
        app = self.app
        try:
            new = load_config(app.config.path)
        except ConfigError as exc:
            message = (
                "the new configuration is refused; siar keeps running on the old one:\n  "
                + "\n  ".join(exc.problems)
            )
            log.error("reload: %s", message)
            app.metrics.reload("rejected")
            await app.context.alerts("reload", message)
            return False
        changes = plan(app.config, new)
        if changes.restart_only:
            log.warning(
                "reload: [%s] changed; those need a restart (siar keeps the old values)",
                "], [".join(changes.restart_only),
            )
            new = new.model_copy(update={s: getattr(app.config, s) for s in changes.restart_only})
        try:
            await self._apply(new, changes)
            for follower in self.followers:
                await follower(changes, new)
        except Exception as exc:  # a half-applied change is logged; the running parts carry on
            log.exception("reload: failed while applying (%s)", changes.summary())
            app.metrics.reload("failed")
            await app.context.alerts("reload", f"the new configuration could not be applied: {exc!r}")
            return False
        app.metrics.reload("applied")
        log.info("reload: applied (%s)", changes.summary())
        return True

    async def _apply(self, new: Config, changes: Plan) -> None:
        app = self.app
        old_context = app.context
        context = channel_context(new, app.store, app.clock)
        # One process, one set of shared things (a Telegram Application per token, alert sinks).
        context.shared, context.alerts, context.metrics, context.admin = (
            old_context.shared,
            old_context.alerts,
            old_context.metrics,
            old_context.admin,
        )
        context.alerts.redact = new.redact
        grace = new.daemon.shutdown_grace
        for name in [*changes.channels_removed, *changes.channels_changed]:
            started = name in app.dispatcher.started
            channel = await app.dispatcher.remove_channel(name, grace)
            app.channels.pop(name, None)
            app.unavailable.pop(name, None)
            if channel is not None and started:
                try:
                    await channel.close()
                except Exception:
                    log.exception("reload: channel %s: error while closing", name)
        wanted = set(changes.channels_added) | set(changes.channels_changed)
        subset = new.model_copy(update={"channels": {n: c for n, c in new.channels.items() if n in wanted}})
        made, unavailable = make_channels(subset, context)
        for name, channel in made.items():
            app.channels[name] = channel
            app.dispatcher.add_channel(name, channel)
        for name, reason in unavailable.items():
            app.unavailable[name] = reason
            log.warning("channel %s is disabled: %s", name, reason)
        app.config = app.dispatcher.config = app.poller.config = new
        if app.admin is not None:
            app.admin.config = new
        app.context = context
        app.poller.targets = targets_of(new, app.channels, app.unavailable)
        app.poller.unavailable = dict(app.unavailable)
        app.metrics.set_names([f.name for f in new.feeds], [n for n, c in new.channels.items() if c.enabled])
        for name in changes.feeds_removed:
            self.unschedule(name)
        feeds: dict[str, FeedConfig] = {f.name: f for f in new.feeds}
        for name in [*changes.feeds_added, *changes.feeds_changed]:
            self.schedule(feeds[name])
