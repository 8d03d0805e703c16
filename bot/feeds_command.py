"""`siar feeds import FILE.opml` and `siar feeds export`: feeds in bulk, from and to OPML.

Import adds `[[feeds]]` tables to the config file (nothing else in it changes), skipping feeds
already configured; export writes OPML 2.0 of the configured feeds with their URLs as written in
the file (`${…}` left unexpanded, so no secret leaves). Exit codes: 0 done (also when nothing
was new), 2 unusable OPML file, bad option, or tables that would not load (nothing written).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from pydantic import ValidationError

from bot.channel import utc_now
from bot.config import Config, FeedConfig
from bot.feed_import import ExistingFeed, ImportOptions, ImportPlan, plan_import
from bot.feedlist import (
    ImportConflict,
    add_tables,
    configured_feeds,
    render_tables,
    replace_file,
    table_values,
)
from bot.opml import MAX_OPML_BYTES, OpmlError, OutlineOut, build_opml, plain_text, read_opml
from bot.registry import CliCommand


def configure(parser: argparse.ArgumentParser) -> None:
    """The `feeds import` and `feeds export` subcommands and their options."""
    sub = parser.add_subparsers(dest="feeds_action", required=True, metavar="{import,export}")
    imp = sub.add_parser("import", help="add the feeds of an OPML file as [[feeds]] tables")
    imp.add_argument("file", metavar="FILE.opml", help='an OPML export ("-" reads standard input)')
    imp.add_argument("--dry-run", action="store_true", help="print what would be added; write nothing")
    imp.add_argument("--interval", help='polling interval of the new feeds, e.g. "10m" (default 5m)')
    imp.add_argument(
        "--first-run",
        default="skip",
        help='first poll of the new feeds: "skip" (default: post nothing old), "latest:N" or "all"',
    )
    imp.add_argument(
        "--section-from-category",
        action="store_true",
        help="set each feed's `section` to its OPML folder (default: folder only in a comment)",
    )
    exp = sub.add_parser("export", help="write the configured feeds as OPML 2.0")
    exp.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    for each in (imp, exp):  # `siar feeds import x.opml --config c.toml` reads as one expects
        each.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(config: Config, args: argparse.Namespace) -> int:
    """Runs `siar feeds import|export`; returns the exit code."""
    if args.feeds_action == "export":
        return export_feeds(config, args.output)
    try:
        options = _options(args)
    except ValueError as exc:
        print(f"siar feeds import: {exc}", file=sys.stderr)
        return 2
    return import_feeds(config, args.file, options, args.dry_run)


FEEDS_COMMAND = CliCommand("feeds", "import feeds from OPML, export them as OPML", configure, run)


def _options(args: argparse.Namespace) -> ImportOptions:
    """The options, checked by the same rules as the config file's keys."""
    values = {"name": "x", "url": "https://example.invalid/", "first_run": args.first_run}
    if args.interval is not None:
        values["interval"] = args.interval
    try:
        FeedConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-")
        raise ValueError(f"{option}: {str(err['msg']).removeprefix('Value error, ')}") from None
    return ImportOptions(args.interval, args.first_run, args.section_from_category)


def import_feeds(config: Config, file: str, options: ImportOptions, dry_run: bool) -> int:
    """Adds the new feeds of `file` to the config file (or only shows them, `dry_run`)."""
    source = "standard input" if file == "-" else file
    try:
        opml = read_opml(_read_capped(file), source)
    except OSError as exc:
        print(f"siar feeds import: cannot read {source}: {exc.strerror}", file=sys.stderr)
        return 2
    except OpmlError as exc:
        print(f"siar feeds import: {exc}", file=sys.stderr)
        return 2
    path = config.path
    before = path.read_bytes()
    text = before.decode("utf-8")
    plan = plan_import(opml, _existing(config, text), options)
    _report(plan, source, path, dry_run)
    if not plan.add:
        print(f"nothing to add: {path} already has every usable feed of {source}")
        return 0
    newline = "\r\n" if "\r\n" in text else "\n"
    label = plain_text(Path(file).name if file != "-" else "-")
    block = render_tables(plan.add, options, label, utc_now().date(), newline)
    expected = [table_values(feed, options) for feed in plan.add]
    try:
        new_text = add_tables(text, block, expected, path)
        if dry_run:
            print(f"\nwould add to {path}:\n")
            print(block, end="")
            return 0
        replace_file(path, new_text.encode("utf-8"), before)
    except ImportConflict as exc:
        print("siar feeds import: nothing written:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    print(
        f"added {len(plan.add)} feed(s) to {path} (first_run = {options.first_run!r}); "
        "the daemon polls them after its next start or reload"
    )
    return 0


def _read_capped(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read(MAX_OPML_BYTES + 1)
    with open(file, "rb") as handle:
        return handle.read(MAX_OPML_BYTES + 1)


def _existing(config: Config, text: str) -> list[ExistingFeed]:
    """Each configured feed with its URL as written and as expanded (either may match)."""
    expanded = {feed.name: feed.url for feed in config.feeds}
    out = []
    for table in configured_feeds(text):
        name, url = str(table.get("name", "")), str(table.get("url", ""))
        out.append(ExistingFeed(name, tuple(dict.fromkeys((url, expanded.get(name, url))))))
    return out


def _report(plan: ImportPlan, source: str, path: Path, dry_run: bool) -> None:
    verb = "would add" if dry_run else "adding"
    print(f"{source}: {verb} {len(plan.add)} feed(s) to {path}")
    for feed in plan.add:
        where = f"  [{feed.category}]" if feed.category else ""
        section = f"  section = {feed.section!r}" if feed.section else ""
        print(f"  + {feed.name}  {feed.url}{where}{section}")
    duplicates = [left for left in plan.left if left.duplicate]
    refused = [left for left in plan.left if not left.duplicate]
    if duplicates:
        print(f"skipped {len(duplicates)} already configured:")
        for left in duplicates:
            print(f'  = {source}:{left.line}: "{left.title}" {left.url}: {left.reason}')
    if refused:
        print(f"left out {len(refused)} unusable entr{'y' if len(refused) == 1 else 'ies'}:")
        for left in refused:
            url = f" {left.url}" if left.url else ""
            print(f'  ! {source}:{left.line}: "{left.title}"{url}: {left.reason}')


def export_feeds(config: Config, output: str | None) -> int:
    """Writes OPML 2.0 of the configured feeds to `output` or standard output."""
    text = config.path.read_text(encoding="utf-8")
    outlines = []
    for table in configured_feeds(text):
        name, url, section = str(table["name"]), str(table["url"]), table.get("section")
        if "${" in url:
            print(f"note: feed {name}: url written as in the file, ${{…}} unexpanded", file=sys.stderr)
        elif not url.lower().startswith(("http://", "https://")):
            print(f"note: feed {name}: {url} is a local file; feed readers cannot fetch it", file=sys.stderr)
        category = f"/{section}" if isinstance(section, str) and section else None
        outlines.append(OutlineOut(name, url, name=name, category=category))
    site = tomllib.loads(text).get("site", {}).get("name")
    title = f"{site} feeds (siar)" if isinstance(site, str) and site and "${" not in site else "siar feeds"
    document = build_opml(outlines, title, utc_now())
    if output is None:
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
    else:
        replace_file(Path(output), document, None)
        print(f"wrote {len(outlines)} feed(s) to {output}", file=sys.stderr)
    return 0
