"""`siar check` and `siar preview`: what each channel would post, without sending anything.

`check` validates the configuration as the daemon will use it (the same channel set-up and
template checks as `run`), so what `check` rejects never starts silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from bot.app import make_channels
from bot.channel import Channel, utc_now
from bot.config import Config, FeedConfig
from bot.editorial import DEFAULT_LABEL, label
from bot.fetch import Fetcher
from bot.filters import rejection
from bot.normalize import parse_feed_async
from bot.schedule import DigestSettings
from bot.types import Digest, Post, Story, story_dict

DIGEST_MAX = DigestSettings.model_fields["max"].default
DIGEST_TITLE = DigestSettings.model_fields["title"].default
SAMPLE = Story(
    uid="check",
    feed="check",
    url="https://example.com/a/very/long/path/to/a-story",
    title="Check " * 40,
    lead="Lead sentence. " * 200,
    tags=tuple(f"tag {i}" for i in range(20)),
    section="Section",
    published=datetime(2020, 10, 9, 6, 53, tzinfo=UTC),
)


def check(config: Config) -> int:
    """Print what would run; exit 2 (with the channel named) when a template cannot render."""
    console = Console()
    console.print(
        f"[bold]config[/] {config.path}  [bold]store[/] {config.redact(config.store.url)}",
        markup=True,
        highlight=False,
    )
    feeds = Table("feed", "url", "interval", "first_run", "filters", title="Feeds")
    for f in config.feeds:
        filters = ", ".join(
            k
            for k in (
                "include_categories",
                "exclude_categories",
                "include_url",
                "include_keywords",
                "exclude_keywords",
                "max_age",
            )
            if getattr(f, k)
        )
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
            needs = type(settings).requires_section
            if needs and needs not in config.sections and config.disabled[name].startswith("needs"):
                problems.append(
                    f"channels.{name}: type {settings.type!r} needs a [{needs}] section "
                    f"(see the README); none is in {config.path}"
                )
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
    _print_editorial(console, config)
    if problems:
        print("configuration error:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    console.print("[green]configuration is valid[/]")
    return 0


def editorial_rows(config: Config) -> list[tuple[str, str, str, str]]:
    """(channel, corrections, quiet hours, digest) of the channels with editorial settings."""
    rows: list[tuple[str, str, str, str]] = []
    for name, settings in config.channels.items():
        quiet = ""
        if settings.quiet_hours is not None:
            start, end = settings.quiet_hours
            quiet = f"{start:%H:%M}-{end:%H:%M} {settings.quiet}"
        digest = ""
        if settings.digest is not None:
            when = (
                ", ".join(f"{t:%H:%M}" for t in settings.digest.at)
                or f"every {int(settings.digest.every or 0)}s"
            )
            digest = f"{when}, max {settings.digest.max}" + (", digest only" if settings.digest.only else "")
        if quiet or digest or settings.on_correction != "edit":
            rows.append((name, settings.on_correction, quiet or "-", digest or "-"))
    return rows


def _print_editorial(console: Console, config: Config) -> None:
    rows = editorial_rows(config)
    if rows:
        table = Table("channel", "on_correction", "quiet hours", "digest", title="Editorial")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for i, rule in enumerate(config.priority):
        keys = ", ".join(
            f"{key} {value}"
            for key, value in (
                ("feeds", rule.feeds),
                ("sections", rule.sections),
                ("tags", rule.tags),
                ("title", rule.title_pattern.source if rule.title_pattern else None),
            )
            if value
        )
        console.print(f"breaking news rule {i + 1}: {keys} -> {rule.label!r}", highlight=False, markup=False)


@dataclass(frozen=True)
class RenderFailure:
    """A story one channel could not render: reported per story, the others go on."""

    channel: Channel
    story: Story
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel.name,
            "type": self.channel.type,
            "story": story_dict(self.story),
            "error": self.error,
        }


def render_all(channel: Channel, stories: list[Story]) -> list[Post | RenderFailure]:
    """Each story rendered for `channel`, or why it could not be."""
    out: list[Post | RenderFailure] = []
    for story in stories:
        try:
            out.append(channel.render(story))
        except Exception as exc:  # one story that cannot render never stops the others
            out.append(RenderFailure(channel, story, str(exc) or type(exc).__name__))
    return out


def marked(stories: list[Story], config: Config, force: bool) -> list[Story]:
    """`stories` labelled by the `[[priority]]` rules; `force` (--breaking): every one as
    breaking news (the label of the rule it matches, else of the first rule, else the default)."""
    stories = label(stories, config.priority)
    if not force:
        return stories
    fallback = config.priority[0].label if config.priority else DEFAULT_LABEL
    return [s if s.breaking else replace(s, breaking=fallback) for s in stories]


def render_digest(channel: Channel, stories: list[Story], now: datetime) -> Post | RenderFailure:
    """`stories` as `channel`'s digest (its `digest` settings, or the defaults), newest first."""
    settings = channel.settings.digest
    most = settings.max if settings is not None else DIGEST_MAX
    title = settings.title if settings is not None else DIGEST_TITLE
    ordered = sorted(stories, key=lambda s: s.published or now, reverse=True)
    if not ordered:
        return RenderFailure(channel, SAMPLE, "no stories for a digest (check the feed and the filters)")
    digest = Digest(title, tuple(ordered[:most]), more=max(0, len(ordered) - most), at=now)
    try:
        return channel.render_digest(digest)
    except Exception as exc:
        return RenderFailure(channel, ordered[0], f"digest: {exc}" or type(exc).__name__)


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
    fetcher = Fetcher(
        config.fetch.user_agent, config.fetch.timeout, config.fetch.max_bytes, base_dir=config.path.parent
    )
    posts: list[Post | RenderFailure] = []
    roundups: dict[str, list[Story]] = {}  # --digest: each channel's stories
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
            parsed = await parse_feed_async(
                result.body, result.url, result.headers, config.cleaning, feed.name, feed.section
            )
            for channel in channels.values():
                listens = channel.settings.feeds is None or feed.name in channel.settings.feeds
                if not listens and not (args.file and not args.feed):
                    continue
                # Content filters only: max_age is about timing, and a preview of an old file or
                # a quiet feed should still show what the posts look like.
                feed_rules = feed.model_copy(update={"max_age": None})
                channel_rules = channel.settings.model_copy(update={"max_age": None})
                eligible = [
                    s
                    for s in marked(parsed.stories, config, getattr(args, "breaking", False))
                    if rejection(s, feed_rules, now) is None and rejection(s, channel_rules, now) is None
                ]
                if getattr(args, "digest", False):
                    roundups.setdefault(channel.name, []).extend(eligible)
                else:
                    posts.extend(render_all(channel, eligible[: max(0, args.limit)]))
    finally:
        await fetcher.close()
    for name, stories in roundups.items():
        posts.append(render_digest(channels[name], stories, now))
    await prepare_media(channels, posts)
    return _report(posts, failed, args.json)


def _report(posts: list[Post | RenderFailure], failed: bool, as_json: bool) -> int:
    failures = [p for p in posts if isinstance(p, RenderFailure)]
    for failure in failures:
        print(
            f"channel {failure.channel.name}: cannot render {failure.story.url or failure.story.uid}: "
            f"{failure.error}",
            file=sys.stderr,
        )
    if as_json:
        print(json.dumps([p.to_dict() for p in posts], ensure_ascii=False, indent=2))
    else:
        _print_posts(posts)
    return 1 if failed or failures else 0


async def prepare_media(channels: dict[str, Channel], posts: list[Post | RenderFailure]) -> None:
    """Make the files posts' media refer to (share cards) where a channel makes its own
    (`prepare_media(post) -> paths`), so editors can look at them; their paths go to stderr."""
    for post in posts:
        if isinstance(post, RenderFailure) or not post.media:
            continue
        make = getattr(channels.get(post.channel), "prepare_media", None)
        if make is None:
            continue
        try:
            for path in await make(post):
                print(f"channel {post.channel}: {path}", file=sys.stderr)
        except Exception as exc:  # a card that cannot be made never hides the posts
            print(
                f"channel {post.channel}: cannot make the media of {post.story.url}: {exc}", file=sys.stderr
            )


def _print_posts(posts: list[Post | RenderFailure]) -> None:
    console = Console()
    by_story: dict[str, list[Post | RenderFailure]] = {}
    for post in posts:
        digest = post.digest if isinstance(post, Post) else None
        key = f"digest: {digest.title}" if digest else f"{post.story.feed}:{post.story.uid}"
        by_story.setdefault(key, []).append(post)
    for key, group in by_story.items():
        console.rule(key if key.startswith("digest: ") else group[0].story.title)
        panels = []
        for post in group:
            if isinstance(post, RenderFailure):
                panels.append(
                    Panel(
                        f"cannot render: {post.error}",
                        width=60,
                        style="red",
                        title=f"{post.channel.name} ({post.channel.type})",
                    )
                )
                continue
            extra = "".join(f"\n[{b.text}] {b.url}" for b in post.buttons)
            extra += "".join(f"\n(media) {m}" for m in post.media)
            panels.append(
                Panel(
                    post.text + ("\n" + extra if extra else ""),
                    width=60,
                    title=f"{post.channel} ({post.type})",
                    subtitle=f"{post.length.used}/{post.length.limit} {post.length.unit}",
                )
            )
        console.print(Columns(panels))
    if not posts:
        console.print("no stories to show (check the feed and the filters)")
