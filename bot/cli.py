"""The command line: `siar [run|once|preview|check|status|why|resend] [--config PATH] …`.

Exit codes: 0 fine, 1 a feed or a delivery failed (once) or nothing found (why), 2 bad
configuration or usage, 3 another daemon holds the store.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from bot.app import build, make_channels, utc_now
from bot.config import Config, ConfigError, FeedConfig, load_config
from bot.daemon import run_daemon, run_once
from bot.fetch import Fetcher
from bot.filters import rejection
from bot.lock import AlreadyRunning
from bot.logs import setup_logging
from bot.normalize import link_key, parse_feed_async
from bot.render import RenderError
from bot.store import STATUSES, Store
from bot.types import Post, Story

COMMANDS = ("run", "once", "preview", "check", "status", "why", "resend", "webpush")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not erase a value given before the subcommand.
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="config file (default: $SIAR_CONFIG, else ./config.toml)")
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS)
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        default=argparse.SUPPRESS)
    top = argparse.ArgumentParser(prog="siar", parents=[common],
                                  description="News feeds to social platforms, each story once.")
    sub = top.add_subparsers(dest="command")
    sub.add_parser("run", parents=[common], help="run the daemon (default)")
    sub.add_parser("once", parents=[common], help="poll every feed once, deliver, exit")
    p = sub.add_parser("preview", parents=[common], help="show what each channel would post")
    p.add_argument("--feed", help="only this feed (its filters apply to --file too)")
    p.add_argument("--channel", help="only this channel")
    p.add_argument("--file", help="read stories from this feed file instead of fetching")
    p.add_argument("--limit", type=int, default=3, help="newest N stories (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    sub.add_parser("check", parents=[common], help="validate the config and show what would run")
    s = sub.add_parser("status", parents=[common], help="feeds, queues and recent failures")
    s.add_argument("--json", action="store_true")
    w = sub.add_parser("why", parents=[common], help="the decision log of one story")
    w.add_argument("story", metavar="URL_OR_ID")
    w.add_argument("--json", action="store_true")
    r = sub.add_parser("resend", parents=[common], help="queue an uncertain or failed post again")
    r.add_argument("outbox_id", type=int)
    wp = sub.add_parser("webpush", parents=[common], help="browser push set-up")
    wp.add_argument("action", choices=("init",), help="init: create the VAPID key pair")
    wp.add_argument("--force", action="store_true", help="replace an existing key file")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `siar` and `python main.py`; returns the exit code."""
    args = parser().parse_args(list(argv) if argv is not None else None)
    command = args.command or "run"
    path = getattr(args, "config", None) or os.environ.get("SIAR_CONFIG") or "config.toml"
    try:
        config = load_config(path)
    except ConfigError as exc:
        print("configuration error:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    setup_logging(getattr(args, "log_level", None) or config.daemon.log_level,
                  getattr(args, "log_format", None) or config.daemon.log_format, config.secrets)
    try:
        return asyncio.run(_dispatch(command, args, config))
    except AlreadyRunning as exc:
        print(f"siar: {exc}", file=sys.stderr)
        return 3
    except RenderError as exc:
        print(f"configuration error:\n  {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _dispatch(command: str, args: argparse.Namespace, config: Config) -> int:
    if command == "run":
        return await run_daemon(build(config))
    if command == "once":
        return await run_once(build(config))
    if command == "check":
        return check(config)
    if command == "preview":
        return await preview(config, args)
    if command == "webpush":
        return webpush_init(config, args.force)
    store = Store(config.store.url, config.path.parent)
    try:
        await store.migrate()
        if command == "status":
            return await status(config, store, args.json)
        if command == "why":
            return await why(store, args.story, args.json, config.site.hosts)
        if await store.resend(args.outbox_id, utc_now()):
            print(f"outbox row {args.outbox_id} queued again; the running daemon sends it shortly")
            return 0
        print(f"no uncertain or failed outbox row {args.outbox_id}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def webpush_init(config: Config, force: bool) -> int:
    """`siar webpush init`: handled by the webpush channel module when it is installed."""
    try:
        module = importlib.import_module("channels.webpush")
    except ImportError as exc:
        print(f"web push is not available in this installation ({exc})", file=sys.stderr)
        return 2
    return int(module.init_command(config, force=force))


# --- check -----------------------------------------------------------------------------------

SAMPLE = Story(uid="check", feed="check", url="https://example.com/a/very/long/path/to/a-story",
               title="Check " * 40, lead="Lead sentence. " * 200, tags=tuple(f"tag {i}" for i in range(20)),
               section="Section", published=datetime(2020, 10, 9, 6, 53, tzinfo=UTC))


def check(config: Config) -> int:
    """Print what would run; exit 2 (with the channel named) when a template cannot render."""
    console = Console()
    console.print(f"[bold]config[/] {config.path}  [bold]store[/] {config.redact(config.store.url)}",
                  markup=True, highlight=False)
    feeds = Table("feed", "url", "interval", "first_run", "filters", title="Feeds")
    for f in config.feeds:
        filters = ", ".join(k for k in ("include_categories", "exclude_categories", "include_url",
                                        "include_keywords", "exclude_keywords", "max_age")
                            if getattr(f, k))
        feeds.add_row(f.name, config.redact(f.url), f"{int(f.interval)}s", f.first_run, filters or "-")
    console.print(feeds)
    channels, unavailable = make_channels(config, include_disabled=True)
    table = Table("channel", "type", "state", "feeds", title="Channels")
    problems = []
    for name, settings in config.channels.items():
        state = "[green]runs[/]"
        if not settings.enabled:
            state = "off (enabled = false)"
        elif name in config.disabled:
            state = f"[yellow]waits: {config.disabled[name]}[/]"
        elif name in unavailable:
            state = f"[yellow]cannot run: {unavailable[name]}[/]"
            if "template" in unavailable[name]:
                problems.append(unavailable[name])
        if name in channels:
            try:
                channels[name].render(SAMPLE)
            except Exception as exc:
                problems.append(f"channels.{name}: {exc}")
                state = f"[red]template error: {exc}[/]"
        table.add_row(name, settings.type, state, ", ".join(settings.feeds or ["all"]))
    console.print(table)
    if problems:
        print("configuration error:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    console.print("[green]configuration is valid[/]")
    return 0


# --- preview ---------------------------------------------------------------------------------

async def preview(config: Config, args: argparse.Namespace) -> int:
    """Render the newest stories per channel; sends and stores nothing."""
    feeds = config.feeds if not args.feed else [f for f in config.feeds if f.name == args.feed]
    if args.feed and not feeds:
        print(f"no feed named {args.feed!r} in {config.path}", file=sys.stderr)
        return 2
    if args.file:
        feeds = feeds[:1] if args.feed else [FeedConfig(name="file", url=args.file)]
    channels, _ = make_channels(config, include_disabled=True)
    if args.channel:
        if args.channel not in channels:
            print(f"no enabled channel named {args.channel!r}", file=sys.stderr)
            return 2
        channels = {args.channel: channels[args.channel]}
    fetcher = Fetcher(config.fetch.user_agent, config.fetch.timeout, config.fetch.max_bytes,
                      base_dir=config.path.parent)
    posts: list[Post] = []
    failed = False
    now = utc_now()
    try:
        for feed in feeds:
            url = args.file or feed.url
            result = await fetcher.fetch(url)
            if result.error or result.body is None:
                print(f"feed {feed.name}: {result.error}", file=sys.stderr)
                failed = True
                continue
            parsed = await parse_feed_async(result.body, result.url, result.headers, config.cleaning,
                                            feed.name, feed.section)
            for channel in channels.values():
                listens = channel.settings.feeds is None or feed.name in channel.settings.feeds
                if not listens and not (args.file and not args.feed):
                    continue
                # Content filters only: max_age is about timing, and a preview of an old file or
                # a quiet feed should still show what the posts look like.
                feed_rules = feed.model_copy(update={"max_age": None})
                channel_rules = channel.settings.model_copy(update={"max_age": None})
                wanted = [s for s in parsed.stories if rejection(s, feed_rules, now) is None
                          and rejection(s, channel_rules, now) is None][: max(0, args.limit)]
                posts.extend(channel.render(s) for s in wanted)
    finally:
        await fetcher.close()
    if args.json:
        print(json.dumps([p.to_dict() for p in posts], ensure_ascii=False, indent=2))
    else:
        _print_posts(posts)
    return 1 if failed else 0


def _print_posts(posts: list[Post]) -> None:
    console = Console()
    by_story: dict[str, list[Post]] = {}
    for post in posts:
        by_story.setdefault(f"{post.story.feed}:{post.story.uid}", []).append(post)
    for group in by_story.values():
        console.rule(group[0].story.title)
        panels = []
        for post in group:
            extra = "".join(f"\n[{b.text}] {b.url}" for b in post.buttons)
            extra += "".join(f"\n(media) {m}" for m in post.media)
            panels.append(Panel(post.text + ("\n" + extra if extra else ""), width=60,
                                title=f"{post.channel} ({post.type})",
                                subtitle=f"{post.length.used}/{post.length.limit} {post.length.unit}"))
        console.print(Columns(panels))
    if not posts:
        console.print("no stories to show (check the feed and the filters)")


# --- status and why --------------------------------------------------------------------------

def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def status(config: Config, store: Store, as_json: bool) -> int:
    """Feeds, per-channel counts and recent problems."""
    states = {s.name: s for s in await store.feed_states()}
    counts = await store.counts()
    feeds: list[dict[str, Any]] = []
    for f in config.feeds:
        s = states.get(f.name)
        feeds.append({"name": f.name, "url": config.redact(f.url),
                      "last_success": _iso(s.last_success_at) if s else None,
                      "last_fetch": _iso(s.last_fetch_at) if s else None,
                      "failures": s.failures if s else 0,
                      "next_poll": _iso(s.next_poll_at) if s else None,
                      "last_error": config.redact(s.last_error) if s and s.last_error else None,
                      "moved_to": s.redirect_url if s else None})
    channels: dict[str, dict[str, Any]] = {}
    for name in sorted(set(config.channels) | set(counts)):
        settings = config.channels.get(name)
        state = "removed from config"
        if settings is not None:
            state = ("off" if not settings.enabled else
                     f"waiting: {config.disabled[name]}" if name in config.disabled else "active")
        channels[name] = {"type": settings.type if settings else None, "state": state,
                          **counts.get(name, dict.fromkeys(STATUSES, 0))}
    problems = [{k: _iso(v) for k, v in p.items()} for p in await store.recent_problems()]
    report = {"feeds": feeds, "channels": channels, "recent_failures": problems}
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    console = Console()
    table = Table("feed", "last success", "failures", "next poll", "last error", title="Feeds")
    for row in feeds:
        table.add_row(row["name"], str(row["last_success"] or "never"), str(row["failures"]),
                      str(row["next_poll"] or "-"), row["last_error"] or "")
    console.print(table)
    table = Table("channel", "type", "state", *STATUSES, title="Channels")
    for name, c in channels.items():
        table.add_row(name, str(c["type"]), c["state"], *(str(c[s]) for s in STATUSES))
    console.print(table)
    if problems:
        table = Table("id", "channel", "status", "attempts", "reason", "story", title="Recent problems")
        for p in problems:
            table.add_row(str(p["id"]), p["channel"], p["status"], str(p["attempts"]),
                          p["last_error"] or "", p["url"])
        console.print(table)
    return 0


async def why(store: Store, key: str, as_json: bool, hosts: Sequence[str] = ()) -> int:
    """The decision log of the stories matching `key` across channels."""
    found = await store.find_stories(key, link_key(key, hosts))
    report: list[dict[str, Any]] = []
    for story in found:
        report.append({
            "story": {"id": story["id"], "uid": story["uid"], "feed": story["feed"],
                      "url": story["url"], "title": story["title"],
                      "first_seen": _iso(story["first_seen_at"])},
            "decisions": [{k: _iso(v) for k, v in d.items() if k not in ("id", "story_id")}
                          for d in await store.decisions_of(story["id"])],
            "outbox": [{k: _iso(v) for k, v in o.items() if k in
                        ("id", "channel", "status", "attempts", "remote_id", "remote_url", "last_error")}
                       for o in await store.outbox_of(story["id"])],
        })
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    elif not report:
        print(f"no story matches {key!r} (give its link, its feed id, or the number from status)")
    console = Console()
    for item in report if not as_json else []:
        s = item["story"]
        console.rule(f"{s['title']}")
        console.print(f"{s['url']}\nfeed {s['feed']} · id {s['uid']} · first seen {s['first_seen']}")
        table = Table("when", "channel", "decision", "rule", "detail")
        for d in item["decisions"]:
            table.add_row(str(d["at"]), d["channel"] or "-", d["decision"], d["rule"] or "",
                          d["detail"] or "")
        console.print(table)
    return 0 if report else 1
