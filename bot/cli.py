"""The command line: `siar [run|once|preview|check|status|why|resend|retract|pause|resume|reload|feeds] …`.

Exit codes: 0 fine, 1 a feed or a delivery failed (once) or nothing found (why), 2 bad
configuration or usage, 3 another daemon holds the store.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bot.admin import Admin
from bot.app import build, make_channels, migrations
from bot.channel import utc_now
from bot.config import Config, ConfigError, load_config
from bot.daemon import run_daemon, run_once
from bot.feeds_command import FEEDS_COMMAND
from bot.lock import AlreadyRunning, running_pid
from bot.logs import setup_logging
from bot.preview import check, preview
from bot.registry import REGISTRY
from bot.render import RenderError
from bot.store import STATUSES, Store


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not erase a value given before the subcommand.
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help="config file (default: $SIAR_CONFIG, else ./config.toml)"
    )
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS)
    common.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=argparse.SUPPRESS
    )
    top = argparse.ArgumentParser(
        prog="siar", parents=[common], description="News feeds to social platforms, each story once."
    )
    sub = top.add_subparsers(dest="command")
    sub.add_parser("run", parents=[common], help="run the daemon (default)")
    sub.add_parser("once", parents=[common], help="poll every feed once, deliver, exit")
    p = sub.add_parser("preview", parents=[common], help="show what each channel would post")
    p.add_argument("--feed", help="only this feed (its filters apply to --file too)")
    p.add_argument("--channel", help="only this channel")
    p.add_argument("--file", help="read stories from this feed file instead of fetching")
    p.add_argument("--limit", type=int, default=3, help="newest N stories (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.add_argument("--breaking", action="store_true", help="render the stories as breaking news")
    p.add_argument("--digest", action="store_true", help="show each channel's digest of the stories")
    sub.add_parser("check", parents=[common], help="validate the config and show what would run")
    s = sub.add_parser("status", parents=[common], help="feeds, queues and recent failures")
    s.add_argument("--json", action="store_true")
    w = sub.add_parser("why", parents=[common], help="the decision log of one story")
    w.add_argument("story", metavar="URL_OR_ID")
    w.add_argument("--json", action="store_true")
    r = sub.add_parser(
        "resend",
        parents=[common],
        help="queue an uncertain or failed post again (a broadcast: its uncertain recipients)",
    )
    r.add_argument("outbox_id", type=int)
    t = sub.add_parser(
        "retract",
        parents=[common],
        help="take a story back: cancel its waiting posts, delete the published ones where possible",
    )
    t.add_argument("story", metavar="URL_OR_ID", help="its link, its feed id, or the id from `siar why`")
    t.add_argument("--reason", default="", help="why (kept in the decision log)")
    for name, what in (
        ("pause", "hold a channel's posts (they wait; nothing is dropped)"),
        ("resume", "let a paused channel's posts go again"),
    ):
        sub.add_parser(name, parents=[common], help=what).add_argument("channel")
    sub.add_parser("reload", parents=[common], help="make the running daemon re-read its config (SIGHUP)")
    for command in (FEEDS_COMMAND, *REGISTRY.commands()):  # `siar webpush init` from its package
        command.configure(sub.add_parser(command.name, parents=[common], help=command.help))
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
        if command == "reload":
            print("not reloaded: the running daemon keeps its configuration", file=sys.stderr)
        return 2
    setup_logging(
        getattr(args, "log_level", None) or config.daemon.log_level,
        getattr(args, "log_format", None) or config.daemon.log_format,
        config.secrets,
    )
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
    for extra in (FEEDS_COMMAND, *REGISTRY.commands()):
        if extra.name == command:
            return extra.run(config, args)
    if command == "reload":
        return reload(config)
    store = Store(config.store.url, config.path.parent)
    try:
        await store.migrate(migrations())
        return await _store_command(command, args, config, store)
    finally:
        await store.close()


async def _store_command(command: str, args: argparse.Namespace, config: Config, store: Store) -> int:
    """The commands that read or write the store (beside a running daemon, or without one)."""
    if command == "status":
        return await status(config, store, args.json)
    if command == "why":
        return await why(store, args.story, args.json, config.site.hosts)
    if command == "retract":
        return await retract(config, store, args.story, args.reason)
    admin = Admin(config, store, utc_now)
    if command == "pause":
        done, message = await admin.pause(args.channel, by=f"cli:{getpass.getuser()}")
    elif command == "resume":
        done, message = await admin.resume(args.channel)
    else:
        done, message = await admin.resend(args.outbox_id)
    print(message, file=sys.stdout if done else sys.stderr)
    return 0 if done else 1


async def retract(config: Config, store: Store, ref: str, reason: str) -> int:
    """`siar retract`: the story's posts cancelled or deleted (a running daemon's workers send
    the deletions, this process only writes the store); the report per channel."""
    channels, _ = make_channels(config)  # what each platform can delete (nothing is started)
    admin = Admin(config, store, utc_now, channels)
    done, lines = await admin.retract(ref, reason=reason, by=f"cli:{getpass.getuser()}")
    print("\n".join(lines), file=sys.stdout if done else sys.stderr)
    queued = any("deletion queued" in line for line in lines)  # this run queued one
    if queued and running_pid(config.path) is None:
        print("no daemon is running: the deletions go out when `siar run` (or `siar once`) starts")
    return 0 if done else 1


def reload(config: Config) -> int:
    """`siar reload`: SIGHUP to the daemon running this config file (found by its pid file)."""
    pid = running_pid(config.path)
    if pid is None:
        print(f"no running siar daemon uses {config.path} (nothing to reload)", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGHUP)
    print(f"asked the daemon (pid {pid}) to reload {config.path}; its log says what changed")
    return 0


# --- status and why --------------------------------------------------------------------------


async def status(config: Config, store: Store, as_json: bool) -> int:
    """Feeds, per-channel counts and recent problems."""
    report = await store.reports.status(config)
    feeds, channels, problems = report["feeds"], report["channels"], report["recent_failures"]
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    console = Console()
    pushed = any(row["websub"] for row in feeds)
    columns = (
        "feed",
        "last success",
        "failures",
        "next poll",
        *(("websub",) if pushed else ()),
        "last error",
    )
    table = Table(*columns, title="Feeds")
    for row in feeds:
        websub = row["websub"]
        table.add_row(
            row["name"],
            str(row["last_success"] or "never"),
            str(row["failures"]),
            str(row["next_poll"] or "-"),
            *((f"{websub['state']} until {websub['expires'] or '?'}" if websub else "-",) if pushed else ()),
            row["last_error"] or "",
        )
    console.print(table)
    table = Table("channel", "type", "state", *STATUSES, "uncertain recipients", title="Channels")
    for name, c in channels.items():
        table.add_row(
            name, str(c["type"]), c["state"], *(str(c[s]) for s in STATUSES), str(c["uncertain_recipients"])
        )
    console.print(table)
    if problems:
        table = Table("id", "channel", "status", "attempts", "reason", "story", title="Recent problems")
        for p in problems:
            table.add_row(
                str(p["id"]), p["channel"], p["status"], str(p["attempts"]), p["last_error"] or "", p["url"]
            )
        console.print(table)
    return 0


async def why(store: Store, key: str, as_json: bool, hosts: Sequence[str] = ()) -> int:
    """The decision log of the stories matching `key` across channels."""
    report = await store.reports.why(key, hosts)
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
            table.add_row(
                str(d["at"]), d["channel"] or "-", d["decision"], d["rule"] or "", d["detail"] or ""
            )
        console.print(table)
    return 0 if report else 1
