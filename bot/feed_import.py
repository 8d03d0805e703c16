"""Which of an OPML file's feeds become new `[[feeds]]` tables, under which names, and why not.

`plan_import(subscriptions, existing, options)` is pure: it checks each URL (http(s) only, no
spaces, no `${…}`), skips a feed whose URL (after normalisation) or derived name is already
configured, derives a unique name from the outline's title and returns the plan. Writing it
into the file is `bot.feedlist`'s job.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from anyascii import anyascii

from bot.opml import OpmlFeed, Subscriptions

MAX_URL_CHARS = 2048
MAX_NAME_CHARS = 60
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # what bot.config.FeedConfig accepts as a name


@dataclass(frozen=True)
class ImportOptions:
    interval: str | None = None  # as the operator wrote it, e.g. "10m"; None keeps the default
    first_run: str = "skip"  # importing 200 feeds must never flood the channels
    section_from_category: bool = False


@dataclass(frozen=True)
class NewFeed:
    """A `[[feeds]]` table to add."""

    name: str
    url: str
    title: str
    category: str  # the folder path ("Tech / AI") or category attribute, for the comment
    section: str | None
    line: int


@dataclass(frozen=True)
class Left:
    """An OPML entry not imported: `duplicate` ones are already configured, others unusable."""

    title: str
    url: str
    line: int
    reason: str
    duplicate: bool = False


@dataclass
class ImportPlan:
    add: list[NewFeed] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)


@dataclass(frozen=True)
class ExistingFeed:
    """A configured feed: its name and its URL as written (and expanded, when it differs)."""

    name: str
    urls: tuple[str, ...]


def plan_import(
    subscriptions: Subscriptions, existing: Iterable[ExistingFeed], options: ImportOptions
) -> ImportPlan:
    """The new feeds of `subscriptions` and what is left out, each with its reason."""
    plan = ImportPlan(
        left=[Left(u.title, "", u.line, u.reason) for u in subscriptions.unusable],
    )
    urls: dict[str, str] = {}  # url_key -> who has it, for messages
    configured: set[str] = set()
    for feed in existing:
        configured.add(feed.name)
        for url in feed.urls:
            urls.setdefault(url_key(url), f"configured feed {feed.name!r}")
    names = set(configured)
    counters: dict[str, int] = {}
    for item in subscriptions.feeds:
        url = item.xml_url
        problem = url_problem(url)
        if problem:
            plan.left.append(Left(item.title, url, item.line, problem))
            continue
        key = url_key(url)
        if key in urls:
            plan.left.append(Left(item.title, url, item.line, f"same URL as {urls[key]}", True))
            continue
        base = item.name if item.name and _NAME.fullmatch(item.name) else feed_name(item.title, url)
        if base in configured:
            # Probably the same feed at another address (http→https, a new feedburner URL):
            # adding it again could post its stories twice.
            reason = f"a feed named {base!r} is already configured (add it by hand if it differs)"
            plan.left.append(Left(item.title, url, item.line, reason, True))
            continue
        name = _unique(base, names, counters)
        names.add(name)
        urls[key] = f"the entry at line {item.line}"
        plan.add.append(_new_feed(item, name, url, options))
    plan.left.sort(key=lambda left: left.line)
    return plan


def _new_feed(item: OpmlFeed, name: str, url: str, options: ImportOptions) -> NewFeed:
    category = " / ".join(item.folders) or ", ".join(item.categories)
    section = None
    if options.section_from_category:
        if item.folders:
            section = item.folders[-1]
        elif item.categories:
            section = item.categories[0].strip("/").rsplit("/", 1)[-1] or None
    return NewFeed(name, url, item.title, category, section, item.line)


def url_problem(url: str) -> str | None:
    """Why `url` cannot become a feed's URL, or None if it can."""
    if len(url) > MAX_URL_CHARS:
        return f"URL longer than {MAX_URL_CHARS} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "URL contains a space or a control character (percent-encode it, e.g. %20)"
    if "${" in url:
        # siar expands ${NAME} from its environment: an imported URL must not pull a secret
        # into a request to someone else's server.
        return "URL contains ${…}, which siar would fill from its environment; refused"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "feed":
        return "feed: URLs are a browser hint, not an address; use the http(s) URL it stands for"
    if scheme not in ("http", "https"):
        shown = f"{scheme}:" if scheme else "no scheme"
        return f"only http:// and https:// feeds can be imported ({shown})"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if not parts.hostname:
        return "URL has no host"
    return None


def url_key(url: str) -> str:
    """`url` reduced to what decides "the same feed": scheme (http = https) and host in any
    case, default port, trailing slash and fragment do not count."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return text
    host = parts.hostname.lower()
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    netloc = host if port in (None, 80, 443) else f"{host}:{port}"
    if parts.username is not None:
        netloc = f"{parts.username}@{netloc}"
    query = f"?{parts.query}" if parts.query else ""
    return f"https://{netloc}{parts.path.rstrip('/')}{query}"


def feed_name(title: str, url: str) -> str:
    """A `[[feeds]] name` for a feed: its title transliterated and slugged ("Medcom —
    Internasional" → "medcom-internasional"), else its host and path."""
    name = slug(title)
    if not name:
        parts = urlsplit(url)
        host = (parts.hostname or "").removeprefix("www.")
        name = slug(f"{host} {parts.path}") or "feed"
    return name


def slug(text: str) -> str:
    """`text` in lower-case ASCII letters, digits and single hyphens, at most 60 characters."""
    # Symbols go first: anyascii spells emoji and currency signs out (":smile:", "EUR").
    letters = "".join(c for c in text if not unicodedata.category(c).startswith("S"))
    words = re.sub(r"[^a-z0-9]+", "-", anyascii(letters).lower()).strip("-")
    if len(words) > MAX_NAME_CHARS:
        cut = words[: MAX_NAME_CHARS + 1].rsplit("-", 1)[0]  # end on a whole word when one fits
        words = cut if len(cut) >= MAX_NAME_CHARS // 2 else words[:MAX_NAME_CHARS]
    return words.rstrip("-")


def _unique(base: str, taken: set[str], counters: dict[str, int]) -> str:
    """`base`, else `base-2`, `base-3`, … (the first free one; `counters` remembers where the
    search for each base stopped, so 5,000 feeds called "News" stay fast)."""
    if base not in taken:
        return base
    number = counters.get(base, 2)
    while True:
        suffix = f"-{number}"
        name = base[: MAX_NAME_CHARS - len(suffix)].rstrip("-") + suffix
        number += 1
        if name not in taken:
            counters[base] = number
            return name
