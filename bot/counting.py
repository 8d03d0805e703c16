"""Length by each platform's own rules, and the rich-text spans some platforms need.

- X: twitter-text weighted length (NFC, URLs 23, CJK and emoji weigh 2), limit 280.
- Mastodon: grapheme clusters with every http(s) URL counted as 23, limit 500 by default.
- Bluesky: grapheme clusters, limit 300; links and hashtags as facets in UTF-8 byte offsets.
- Telegram: UTF-16 code units of the text after HTML entity parsing (4096, caption 1024).
- Threads: grapheme clusters, except that an emoji counts as its UTF-8 bytes, limit 500.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import regex

from bot.types import Facet

# twitter-text is imported where it counts (X, Mastodon, Bluesky, Threads): with its emoji
# tables and pkg_resources it is ~10 MiB of a daemon that may post to none of them.


@dataclass(frozen=True)
class Budget:
    """A platform's length rule: how to count (`unit`, `count`) and the `limit`."""

    unit: str
    limit: int
    count: Callable[[str], int]


def graphemes(text: str) -> list[str]:
    """The user-perceived characters (extended grapheme clusters) of `text`."""
    return list(regex.findall(r"\X", text))


def count_graphemes(text: str) -> int:
    return len(regex.findall(r"\X", text))


def count_utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def count_x(text: str) -> int:
    """X's weighted length (twitter-text v3 rules, as X counts a post)."""
    from twitter_text import parse_tweet

    return int(parse_tweet(unicodedata.normalize("NFC", text)).weightedLength)


_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}\u20e3]")


def count_threads(text: str) -> int:
    """Threads' length of a post's text (limit 500).

    Meta: "Text posts are limited to 500 characters. Emojis are counted as the number of UTF-8
    bytes", with "characters" linked to grapheme splitting. So each grapheme cluster counts one,
    unless it is an emoji (it holds a pictographic, regional-indicator or keycap code point):
    then its whole UTF-8 encoding counts (😀 4, ❤️ 6, 👍🏽 8, 🇮🇩 8, a ZWJ family 25).
    """
    total = 0
    for cluster in regex.findall(r"\X", text):
        total += len(cluster.encode("utf-8")) if _EMOJI.search(cluster) else 1
    return total


def web_urls(text: str) -> list[tuple[int, int, str]]:
    """(start, end, url) of each http(s) URL in `text`, in str indices, as platforms link them."""
    from twitter_text import extract_urls_with_indices

    out = []
    for found in extract_urls_with_indices(text):
        url = found["url"]
        if url.lower().startswith(("http://", "https://")):
            start, end = found["indices"]
            out.append((start, end, url))
    return out


def count_mastodon(text: str, url_length: int = 23) -> int:
    """Mastodon's length: graphemes, each URL counted as `url_length` characters."""
    pieces, last = [], 0
    for start, end, _ in web_urls(text):
        pieces.append(text[last:start])
        pieces.append("x" * url_length)
        last = end
    pieces.append(text[last:])
    return count_graphemes("".join(pieces))


_TAG = re.compile(r"<[^>]*>")


def telegram_text(html_text: str) -> str:
    """The text Telegram shows for an HTML-mode message (tags removed, entities decoded)."""
    return html.unescape(_TAG.sub("", html_text))


def count_telegram(html_text: str) -> int:
    """Telegram's length of an HTML-mode message: UTF-16 units after entity parsing."""
    return count_utf16(telegram_text(html_text))


def escape_html(text: str) -> str:
    """`text` safe inside Telegram HTML (only <, > and & need escaping, quotes in attributes)."""
    return html.escape(text, quote=True)


_HASHTAG = regex.compile(r"(?<![\p{L}\p{M}\p{N}_&/#])#([\p{L}\p{M}\p{N}_]*[\p{L}\p{M}][\p{L}\p{M}\p{N}_]*)")


def _occurrences(text: str, part: str) -> list[int]:
    found, at = [], text.find(part)
    while at >= 0:
        found.append(at)
        at = text.find(part, at + len(part))
    return found


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


def link_text(url: str, path_max: int = 15) -> str:
    """What Bluesky's own app shows for a link: host and the start of the path, "…" after
    `path_max` characters ("medcom.id/internasional…"); `url` itself if it is not http(s)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return url
    host = parts.netloc.lower().removeprefix("www.")
    path = (parts.path if parts.path != "/" else "") + (f"?{parts.query}" if parts.query else "")
    return host + (path if len(path) <= path_max else path[: path_max - 2] + "…")


def bluesky_facets(
    text: str, known_urls: Sequence[str] = (), display: Mapping[str, str] | None = None
) -> list[Facet]:
    """Link and hashtag facets of `text` in UTF-8 byte offsets (tags without '#').

    `known_urls` (the story's link) are faceted wherever they occur, even when twitter-text's
    URL rules would not recognise them (an unusual domain ending, say). `display` maps a
    shortened link text shown in the post to the full URL its facet carries.
    """
    facets = []
    taken: list[tuple[int, int]] = []
    shown = [
        (at, at + len(label), url)
        for label, url in (display or {}).items()
        if label
        for at in _occurrences(text, label)
    ]
    spans = {
        (start, end, url)
        for start, end, url in web_urls(text)
        if not any(s < end and start < e for s, e, _ in shown)
    }
    spans.update(shown)
    for url in known_urls:
        at = text.find(url) if url else -1
        while at >= 0:
            if not any(s <= at < e for s, e, _ in spans):
                spans.add((at, at + len(url), url))
            at = text.find(url, at + len(url))
    for start, end, url in sorted(spans):
        if any(s <= start < e for s, e in taken):
            continue
        facets.append(Facet(_byte_offset(text, start), _byte_offset(text, end), "link", url))
        taken.append((start, end))
    for match in _HASHTAG.finditer(text):
        start, end = match.span()
        if any(s <= start < e for s, e in taken) or len(match.group(1)) > 64:
            continue
        facets.append(Facet(_byte_offset(text, start), _byte_offset(text, end), "tag", match.group(1)))
    return sorted(facets, key=lambda f: f.start)
