"""Shared rendering: templates, hashtags, calls to action and fitting a post into its limit.

Every channel renders through `PostRenderer.fit`: it fills the channel's Jinja2 template with the
story and, while the result is over the platform's limit by the platform's own counting, drops
hashtags from the end, then shortens the lead at a word boundary with "…", then the title. URLs
and hashtags are inserted whole, and text is only cut between words or grapheme clusters.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import regex
from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

from bot.channel import ChannelContext, HashtagSettings
from bot.counting import Budget, graphemes
from bot.paths import resolve_path
from bot.types import Story

ELLIPSIS = "…"
_MONTHS = {
    "id": [
        "Januari",
        "Februari",
        "Maret",
        "April",
        "Mei",
        "Juni",
        "Juli",
        "Agustus",
        "September",
        "Oktober",
        "November",
        "Desember",
    ],
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
}
_DAYS = {
    "id": ["Senin", "Selasa", "Rabu", "Kamis", "Jumat", "Sabtu", "Minggu"],
    "en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
}
READ_MORE = {"id": "Baca selengkapnya", "en": "Read more"}


class RenderError(Exception):
    """A template that cannot render, or cannot fit its limit; the message names the channel."""


# --- hashtags --------------------------------------------------------------------------------

_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_LETTER = regex.compile(r"[\p{L}\p{M}]")


def hashtag(tag: str) -> str | None:
    """ "vladimir putin" -> "VladimirPutin"; None when nothing usable is left (or only digits)."""
    tag = unicodedata.normalize("NFC", tag)
    words = _WORD.findall(tag)
    if not words:
        return None
    text = "".join(w[:1].upper() + w[1:] for w in words)
    if not _LETTER.search(text):  # only digits or number signs: platforms do not link those
        return None
    return text


def hashtags(tags: Sequence[str], settings: HashtagSettings) -> list[str]:
    """The story's tags as '#Hashtag' strings: mapped, excluded, de-duplicated, at most `max`."""
    excluded = {e.casefold() for e in settings.exclude}
    mapping = {k.casefold(): v for k, v in settings.mapping.items()}
    out: list[str] = []
    seen: set[str] = set()
    for tag in tags:
        if len(out) >= settings.max:
            break
        if tag.casefold() in excluded:
            continue
        mapped = mapping.get(tag.casefold())
        text = hashtag(mapped) if mapped is not None else hashtag(tag)
        if text and text.casefold() not in seen and text.casefold() not in excluded:
            seen.add(text.casefold())
            out.append("#" + text)
    return out


# --- ids -------------------------------------------------------------------------------------


def story_tag(story: Story) -> str:
    """A short stable id of the story: a notification's tag (a repeat replaces, never stacks)."""
    return "s" + hashlib.sha256((story.url or f"{story.feed}:{story.uid}").encode()).hexdigest()[:20]


# --- mentions ------------------------------------------------------------------------------

_MENTION = re.compile(r"(?<![A-Za-z0-9_!#$%&*@＠])([@＠])(?=[A-Za-z0-9_])")


def defuse_mentions(text: str) -> str:
    """`text` with every would-be @mention (X's `@user`, Mastodon's `@user@instance`) broken by
    a zero-width space after the '@': feed text must never notify an account."""
    return _MENTION.sub("\\1\u200b", text)


# --- dates -----------------------------------------------------------------------------------


def format_published(when: datetime | None, timezone: str, language: str) -> str:
    """ "Jumat, 9 Oktober 2020 13:53 WIB" (or the English form) in the site's time zone."""
    if when is None:
        return ""
    local = when.astimezone(ZoneInfo(timezone))
    lang = language if language in _MONTHS else "en"
    day, month = _DAYS[lang][local.weekday()], _MONTHS[lang][local.month - 1]
    zone = local.tzname() or ""
    clock = local.strftime("%H:%M")
    return f"{day}, {local.day} {month} {local.year} {clock} {zone}".strip()


# --- shortening ------------------------------------------------------------------------------


def _units(text: str) -> tuple[list[str], str]:
    """Pieces `text` may be cut between: words (with their spaces) or, if one word, graphemes."""
    words = re.findall(r"\S+\s*", text)
    if len(words) > 1:
        return words, "words"
    return graphemes(text), "graphemes"


def shorten(text: str, keep: int) -> str:
    """The first `keep` cut units of `text` followed by '…' ('' for keep == 0)."""
    units, _ = _units(text)
    if keep >= len(units):
        return text
    if keep <= 0:
        return ""
    return "".join(units[:keep]).rstrip(" ,;:-–—") + ELLIPSIS


def unit_count(text: str) -> int:
    return len(_units(text)[0]) if text else 0


# --- templates -------------------------------------------------------------------------------


def _env(html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        autoescape=html,
        undefined=StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def load_template_text(template: str | None, default: str, base_dir: Path) -> str:
    """The template text: inline text, a path ending in .j2 (relative to config), or `default`."""
    if not template:
        return default
    if template.strip().endswith(".j2") and "\n" not in template:
        path = resolve_path(template.strip(), base_dir)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RenderError(f"cannot read template {path}: {exc.strerror}") from exc
    return template


_NO_CTA: dict[str, Any] = {"cta_follow": "", "cta_notify": "", "cta_links": []}
_ONE_FILE_ONLY = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
VALIDATION_STORY = Story(
    uid="validation",
    feed="validation",
    url="https://example.com/2020/10/09/a-story",
    title="A title",
    lead="A lead. Its second sentence.",
    author="An Author",
    published=datetime(2020, 10, 9, 6, 53, tzinfo=UTC),
    tags=("one tag", "another"),
    section="Section",
    categories=("Section", "one tag", "another"),
    image="https://example.com/image.jpg",
    language="id",
)


class PostRenderer:
    """One channel's template, ready to fill and fit."""

    def __init__(
        self,
        channel: str,
        template_text: str,
        context: ChannelContext,
        *,
        html: bool = False,
        tag_settings: HashtagSettings | None = None,
    ) -> None:
        self.channel = channel
        self.context = context
        self.html = html
        self.tag_settings = tag_settings or HashtagSettings()
        env = _env(html)
        try:
            for node in env.parse(template_text).find_all(_ONE_FILE_ONLY):
                kind = type(node).__name__.lower().replace("fromimport", "from … import")
                raise RenderError(
                    f"channel {channel!r}: template error at line {node.lineno}: "
                    f"{{% {kind} %}} is not available (a template is one text: inline, or "
                    "one .j2 file)"
                )
            self.template = env.from_string(template_text)
        except TemplateSyntaxError as exc:
            raise RenderError(
                f"channel {channel!r}: template error at line {exc.lineno}: {exc.message}"
            ) from exc
        # Fail now, at start, `check` and `preview` alike, rather than at every post: a misspelled
        # variable (StrictUndefined), a filter used wrongly.
        self.render(self.variables(VALIDATION_STORY))

    def variables(self, story: Story) -> dict[str, Any]:
        """What the template can use, with all hashtags and the full title and lead."""
        site, cta = self.context.site, self.context.cta
        tags = hashtags(story.tags, self.tag_settings)
        language = site.language
        return {
            "title": story.title,
            "lead": story.lead,
            "url": story.url,
            "hashtags": " ".join(tags),
            "hashtag_list": tags,
            "tags": list(story.tags),
            "section": story.section,
            "author": story.author,
            "published": format_published(story.published, site.timezone, language),
            "image": story.image,
            "site": site.name,
            "site_url": site.url,
            "cta_follow": cta.follow_text,
            "cta_links": [{"label": link.label, "url": link.url} for link in cta.follow_links],
            "cta_notify": cta.notify_text,
            "notify_url": cta.notify_url,
            "read_more": cta.read_more_text or READ_MORE.get(language, READ_MORE["en"]),
            "language": language,
            "breaking": story.breaking,
        }

    def render(self, values: dict[str, Any]) -> str:
        """The template filled with `values`; RenderError naming the channel and line."""
        try:
            text = self.template.render(**values)
        except Exception as exc:  # TemplateError, and what a filter raises (TypeError, …)
            line = getattr(exc, "lineno", None)
            where = f" at line {line}" if line else ""
            raise RenderError(f"channel {self.channel!r}: template error{where}: {exc}") from exc
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    def fit(
        self,
        story: Story,
        budget: Budget,
        *,
        optional_cta: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> tuple[str, int, dict[str, Any]]:
        """(text, used length, values used): the richest rendering of `story` within `budget`.

        `optional_cta`: the calls to action are the first thing to go — when title, lead and
        every hashtag do not fit beside them, the post goes without them (X, Mastodon,
        Bluesky: short posts where the story comes first). `overrides` replace template
        values (e.g. a shortened link text).
        """
        values = {**self.variables(story), **(overrides or {})}
        result = self._fit(values, budget)
        if optional_cta and any(values[k] for k in _NO_CTA):
            used = result[2]
            if any(used[k] != values[k] for k in ("hashtag_list", "title", "lead")):
                result = self._fit({**values, **_NO_CTA}, budget)
        return result

    def _fit(self, values: dict[str, Any], budget: Budget) -> tuple[str, int, dict[str, Any]]:
        tags: list[str] = values["hashtag_list"]

        def attempt(**changes: Any) -> tuple[str, int, dict[str, Any]]:
            current = {**values, **changes}
            current["hashtags"] = " ".join(current["hashtag_list"])
            text = self.render(current)
            return text, budget.count(text), current

        for n in range(len(tags), -1, -1):
            result = attempt(hashtag_list=tags[:n])
            if result[1] <= budget.limit:
                return result
        for field in ("lead", "title"):
            full: str = values[field]

            def shortened(k: int, f: str = field, t: str = full) -> tuple[str, int, dict[str, Any]]:
                return attempt(hashtag_list=[], **{f: shorten(t, k)})

            best = _largest_fitting(unit_count(full), shortened, budget.limit)
            if best is not None:
                return best
            values = {**values, field: ""}
        result = attempt(hashtag_list=[], **_NO_CTA)
        if result[1] <= budget.limit:
            return result
        raise RenderError(
            f"channel {self.channel!r}: the template alone is {result[1]} {budget.unit} long, "
            f"over the limit of {budget.limit}; shorten the template or the [cta] texts"
        )


def _largest_fitting(
    n_units: int, make: Callable[[int], tuple[str, int, dict[str, Any]]], limit: int
) -> tuple[str, int, dict[str, Any]] | None:
    """The result for the largest k in 0..n_units-1 whose rendering fits, by binary search."""
    lo, hi, best = 0, n_units - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        result = make(mid)
        if result[1] <= limit:
            best, lo = result, mid + 1
        else:
            hi = mid - 1
    return best
