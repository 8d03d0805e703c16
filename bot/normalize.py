"""Feed bytes to Stories: feedparser off the event loop, then one clean `Story` per entry."""

from __future__ import annotations

import asyncio
import calendar
import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser

from bot.charset import repair_mojibake, utf8_body
from bot.cleaning import CleaningRules, clean_lead, fold, html_paragraphs, html_to_text, shorten_at_sentence
from bot.feedread import FeedDoc, fast_allowed, read_fast
from bot.types import Story

_TRACKING = re.compile(
    r"^(utm_[a-z_]*|fbclid|gclid|dclid|gbraid|wbraid|msclkid|mc_cid|mc_eid|igshid|yclid|_ga|ocid)$",
    re.IGNORECASE,
)
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|gif|webp|avif)(\?|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedFeed:
    """What a feed document held: its stories (newest first) and whether it was well formed."""

    stories: list[Story]
    title: str = ""
    language: str = ""
    bozo: str = ""  # the parser's complaint about a malformed document, if any
    hashes: dict[str, str] = field(default_factory=dict)  # story uid -> `entry_hash` of its entry


def canonical_url(url: str, base: str = "") -> str:
    """`url` made absolute, without tracking parameters, fragment, default port or host case."""
    if len(url) > 2048 or len(base) > 2048:  # not worth remembering
        return _canonical_url(url, base)
    return _canonical_cached(url, base)


def _canonical_url(url: str, base: str) -> str:
    url = fold(url)
    if base:
        url = urljoin(base, url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)]
    return urlunsplit((scheme, host, parts.path or ("/" if host else ""), urlencode(query), ""))


# A poll asks for the same link up to three times (its uid, its story, its de-duplication key):
# pure, so remembered (a few MB at most: 8,192 links of at most 2 kB).
_canonical_cached = functools.lru_cache(maxsize=8192)(_canonical_url)


def is_web_link(url: str) -> bool:
    """Whether `url` is an absolute http(s) link with a host: the only links siar posts or shows."""
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def identity_url(url: str, hosts: Sequence[str]) -> str:
    """The form of `url` that names its story, for de-duplication (never for posting).

    Canonical (`canonical_url`), and then blind to what does not change the story: http versus
    https, default ports, a trailing slash, and which of the site's `hosts` (www., m. …) served
    it — those all become the first of `hosts`.
    """
    url = canonical_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return url
    host = parts.hostname
    aliases = [h.lower() for h in hosts]
    if host in aliases:
        host = aliases[0]
    if port is not None and port not in (80, 443):
        host = f"{host}:{port}"
    return urlunsplit(("https", host, parts.path.rstrip("/"), parts.query, ""))


def link_key(url: str, hosts: Sequence[str]) -> str:
    """The de-duplication key of a link: sha256 hex of its `identity_url`."""
    return hashlib.sha256(identity_url(url, hosts).encode()).hexdigest()


def story_key(story: Story, hosts: Sequence[str]) -> str:
    """The de-duplication key of `story`: its link's key, or (linkless) sha256 hex of feed:uid."""
    if story.url:
        return link_key(story.url, hosts)
    return hashlib.sha256(f"{story.feed}:{story.uid}".encode()).hexdigest()


# A character reference to a lone surrogate (&#xD800;) makes feedparser raise for the whole feed.
_SURROGATE_REF = re.compile(rb"&#(?:[xX]0*[dD][89a-fA-F][0-9a-fA-F]{2}|0*5[5-7][0-9]{3});")
# html.parser is quadratic on some malformed markup: text beyond this is never needed for a lead.
HTML_MAX = 20_000  # characters; a lead needs the first few paragraphs only
TITLE_MAX = 300

_MRSS_PREFIX = re.compile(rb"xmlns:([A-Za-z_][\w.-]*)\s*=\s*[\"']http://search\.yahoo\.com/mrss/?[\"']")


def _rename_media_description(body: bytes) -> bytes:
    """Keep feedparser from taking media:description (an image caption) as the story summary.

    feedparser files `media:description` under `summary` and then moves the real `description`
    to `content`; renamed, the caption lands in `media_imagecaption` and the summary stays right.
    Its attributes (`type="plain"`) go: an unknown element with attributes is kept by
    feedparser as the attributes, not the caption. The attribute run is bounded, so the
    rewrite stays linear in the body whatever the feed holds.
    """
    for prefix in set(_MRSS_PREFIX.findall(body[:65536])):
        p = re.escape(prefix)
        body = re.sub(
            rb"<" + p + rb":description\b[^<>]{0,2000}?(/?)>", rb"<" + prefix + rb":imagecaption\1>", body
        )
        body = re.sub(rb"</" + p + rb":description\s*>", rb"</" + prefix + rb":imagecaption>", body)
    return body


def read_document(
    body: bytes, url: str, headers: Mapping[str, str], known: Container[bytes] = frozenset()
) -> FeedDoc:
    """The entries of `body` (fetched from `url`), each with its raw digest; never raises.

    Well-formed RSS 2.0 and Atom 1.0 take the lxml fast path (`bot.feedread`), which does not
    even read an entry whose digest is in `known` (None in its place); anything else is parsed
    by feedparser, the reference.
    """
    response_headers = {k.lower(): v for k, v in headers.items()}
    response_headers.setdefault("content-location", url)
    body = _SURROGATE_REF.sub(b"&#xFFFD;", _rename_media_description(utf8_body(body, response_headers)))
    if fast_allowed(body, response_headers):
        fast = read_fast(body, response_headers, known)
        if fast is not None:
            return fast
    try:
        # siar extracts plain text itself (bot.cleaning, script/style skipped) and resolves links
        # against each entry, so feedparser's HTML sanitizer and URI rewriting (a third of its
        # time) would be wasted work.
        doc = feedparser.parse(
            io.BytesIO(body),
            response_headers=response_headers,
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except Exception as exc:  # feedparser is tolerant, but a hostile file must not stop the daemon
        return FeedDoc([], [], bozo=f"parser crashed: {exc!r}")
    bozo = ""
    if doc.get("bozo"):
        bozo = str(doc.get("bozo_exception", "malformed feed"))[:300]
    return FeedDoc(
        list(doc.entries),
        [entry_digest(e) for e in doc.entries],
        title=str(doc.feed.get("title", "")),
        language=str(doc.feed.get("language", "")),
        bozo=bozo,
    )


def identify(
    body: bytes, url: str, headers: Mapping[str, str], remembered: Mapping[bytes, str]
) -> tuple[FeedDoc, list[str]]:
    """The document and each entry's uid ("" for none): the `remembered` uid of an entry whose
    raw digest was seen before (not even its uid is computed), else `entry_uid`."""
    doc = read_document(body, url, headers, remembered.keys())
    uids: list[str] = []
    for entry, entry_hash in zip(doc.entries, doc.digests, strict=True):
        uid = remembered.get(entry_hash)
        if uid is None:
            try:
                uid = entry_uid(entry)
            except Exception:  # as in doc_stories: one odd entry costs only itself
                uid = ""
        uids.append(uid)
    return doc, uids


def entry_digest(entry: Any) -> bytes:
    """The raw hash of a feedparser entry (`entry_hash`), to tell a known entry that changed
    from one that did not. The fast path digests the entry's XML bytes instead."""
    return bytes.fromhex(entry_hash(entry))


def entry_uid(entry: Any) -> str:
    """The uid `entry_to_story` gives `entry` ("" when it has neither link nor id nor title):
    cheap, so known entries are skipped before the costly cleaning."""
    return _identity(entry)[0]


def _identity(entry: Any) -> tuple[str, str, str | None]:
    """(uid, url, title if it had to be computed)."""
    link = _entry_link(entry)
    url = canonical_url(link) if link else ""
    if not is_web_link(url):
        url = ""
    guid = fold(str(entry.get("id") or ""))
    uid = guid or url
    if uid:
        return uid[:500], url, None
    title = shorten_at_sentence(repair_mojibake(_text_of(entry, "title")), TITLE_MAX)
    return ("sha1:" + hashlib.sha1(title.encode()).hexdigest() if title else ""), url, title


def parse_feed(
    body: bytes,
    url: str,
    headers: Mapping[str, str],
    rules: CleaningRules,
    feed_name: str,
    section: str | None = None,
    now: datetime | None = None,
) -> ParsedFeed:
    """Parse `body` (fetched from `url`) into stories; never raises on bad feeds."""
    doc = read_document(body, url, headers)
    return doc_stories(doc, rules, feed_name, section, now)


def doc_stories(
    doc: FeedDoc,
    rules: CleaningRules,
    feed_name: str,
    section: str | None = None,
    now: datetime | None = None,
    skip: Callable[[int], bool] | None = None,
) -> ParsedFeed:
    """The stories of a read document, newest first; entries for which `skip(index)` is true
    (known ones) are not normalized at all."""
    language = fold(doc.language)[:16]
    stories: list[Story] = []
    seen: set[str] = set()
    hashes: dict[str, str] = {}
    for index, entry in enumerate(doc.entries):
        try:
            if skip is not None and skip(index):
                continue
            story = entry_to_story(entry, feed_name, rules, language, section, now)
        except Exception:  # one odd entry must not cost the others
            continue
        if story is not None and story.uid not in seen:
            seen.add(story.uid)
            stories.append(story)
            hashes[story.uid] = doc.digests[index].hex()  # the entry's raw hash (corrections)
    stories.sort(key=lambda s: s.published or datetime.min.replace(tzinfo=UTC), reverse=True)
    return ParsedFeed(stories, title=fold(doc.title), language=language, bozo=doc.bozo, hashes=hashes)


def entry_hash(entry: Any) -> str:
    """sha256 hex of a feed entry's raw content as parsed (but the address it came from):
    equal hashes mean nothing of the entry changed, so only entries whose hash changed are
    normalized again (corrections)."""
    text = json.dumps(_without_base(entry), sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _without_base(value: Any) -> Any:
    """`value` without feedparser's `base` keys (the URL the feed was fetched from: a moved
    feed is not a changed entry)."""
    if isinstance(value, dict):
        return {k: _without_base(v) for k, v in value.items() if k != "base"}
    if isinstance(value, list | tuple) and not hasattr(value, "tm_year"):
        return [_without_base(v) for v in value]
    return value


async def parse_feed_async(
    body: bytes,
    url: str,
    headers: Mapping[str, str],
    rules: CleaningRules,
    feed_name: str,
    section: str | None = None,
) -> ParsedFeed:
    """`parse_feed` in a worker thread, so a big feed does not stall the event loop."""
    return await asyncio.to_thread(parse_feed, body, url, headers, rules, feed_name, section)


def entry_to_story(
    entry: Any,
    feed_name: str,
    rules: CleaningRules,
    language: str = "",
    section: str | None = None,
    now: datetime | None = None,
) -> Story | None:
    """A Story from one feedparser entry; None when it has neither link nor id nor title.

    A link that is not http(s) (javascript:, data:, a bare path) is dropped: such a story has
    `url == ""`, and routing never posts it. Mojibake in its texts is repaired.
    """
    uid, url, title_done = _identity(entry)
    if not uid:
        return None
    title = (
        title_done
        if title_done is not None
        else shorten_at_sentence(repair_mojibake(_text_of(entry, "title")), TITLE_MAX)
    )
    paragraphs, images = _body(entry)
    caption = _caption(entry)
    if not paragraphs and caption:
        paragraphs = [caption]
    lead = repair_mojibake(clean_lead(paragraphs, rules))
    if not title:
        title = lead[:120]
    categories = _categories(entry)
    chosen_section = section or (categories[0] if categories else "")
    tags = tuple(t for t in categories if t.casefold() != chosen_section.casefold())
    return Story(
        uid=uid,
        feed=feed_name,
        url=url,
        title=title,
        lead=lead,
        author=_author(entry),
        published=_published(entry) or now,
        tags=tags,
        section=chosen_section,
        categories=categories,
        image=_image(entry, images, url),
        image_alt=repair_mojibake(caption[:1000]),
        language=fold(str(entry.get("language") or language))[:16],
    )


def _caption(entry: Any) -> str:
    """The image caption (`media:description`) as plain text: captions come as text or as
    HTML (`type="html"`), and never as anything else (a dict would be a parser's attributes)."""
    value = entry.get("media_imagecaption")
    if not isinstance(value, str) or not value:
        return ""
    value = value[:HTML_MAX]
    return html_to_text(value) if "<" in value or "&" in value else fold(value)


def _entry_link(entry: Any) -> str:
    link = entry.get("link") or ""
    if not link:
        for candidate in entry.get("links", []):
            if candidate.get("rel", "alternate") == "alternate" and candidate.get("href"):
                return str(candidate["href"])
    if not link and entry.get("guidislink") and entry.get("id", "").startswith("http"):
        link = entry["id"]
    return str(link)


def _text_of(entry: Any, key: str) -> str:
    value = str(entry.get(key) or "")[:HTML_MAX]
    detail = entry.get(f"{key}_detail") or {}
    if detail.get("type", "text/html") in ("text/plain",):
        return fold(value)
    return html_to_text(value)


def _body(entry: Any) -> tuple[list[str], list[str]]:
    """Paragraphs of the entry's summary (else its content) and every image in either."""
    summary = str(entry.get("summary") or "")[:HTML_MAX]
    contents = [str(c.get("value", ""))[:HTML_MAX] for c in entry.get("content", []) or []]
    paragraphs, images = html_paragraphs(summary) if summary else ([], [])
    for content in contents:
        more_paragraphs, more_images = html_paragraphs(content)
        images.extend(more_images)
        if not paragraphs:
            paragraphs = more_paragraphs
    return paragraphs, images


def _categories(entry: Any) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for tag in entry.get("tags", []) or []:
        term = str(tag.get("term") or tag.get("label") or "")[:1000]  # parts > 100 chars are dropped
        for part in re.split(r"[,;|]", html_to_text(term) if "<" in term or "&" in term else term):
            part = repair_mojibake(fold(part)).strip(" #")
            if part and part.casefold() not in seen and len(part) <= 100:
                seen[part.casefold()] = part
    return tuple(seen.values())


def _author(entry: Any) -> str:
    author = entry.get("author") or ""
    if not author:
        names = [a.get("name", "") for a in entry.get("authors", []) or [] if a.get("name")]
        author = ", ".join(names)
    return repair_mojibake(fold(str(author))[:200])


def _published(entry: Any) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            try:
                return datetime.fromtimestamp(calendar.timegm(value), UTC)
            except (OverflowError, ValueError, TypeError):
                continue
    return None


def _image(entry: Any, body_images: list[str], base: str) -> str:
    candidates: list[str] = []
    for enclosure in entry.get("enclosures", []) or []:
        kind = str(enclosure.get("type") or "")
        href = str(enclosure.get("href") or enclosure.get("url") or "")
        if href and (kind.startswith("image/") or (not kind and _IMAGE_EXT.search(href))):
            candidates.append(href)
    for media in entry.get("media_content", []) or []:
        kind, medium = str(media.get("type") or ""), str(media.get("medium") or "")
        href = str(media.get("url") or "")
        if href and (
            medium == "image"
            or kind.startswith("image/")
            or (not kind and not medium and _IMAGE_EXT.search(href))
        ):
            candidates.append(href)
    candidates += [str(t.get("url")) for t in entry.get("media_thumbnail", []) or [] if t.get("url")]
    candidates += body_images
    for candidate in candidates:
        absolute = urljoin(base, fold(candidate)) if base else fold(candidate)
        if is_web_link(absolute):  # never javascript:, data: or a host-less https:///path
            return absolute
    return ""
