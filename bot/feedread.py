"""A fast path for well-formed RSS 2.0 and Atom 1.0: lxml builds the entries siar reads.

feedparser stays the reference and the fallback. `read_fast` returns None for anything it does
not handle exactly as feedparser would — a DOCTYPE, `xml:base`, RSS 1.0, a document lxml finds
malformed, any element feedparser gives meaning to that this module does not know, duplicate
elements whose precedence is subtle — and the caller then parses with feedparser. What it
returns, feedparser-shaped plain dicts holding only the keys `bot.normalize` reads, equals
feedparser's on those keys (tests/test_feedread.py compares them over the whole corpus).

Why not feedparser always: on a 50-item feed it spends ~20 ms in a pure-Python SAX handler;
lxml's parse is ~1 ms and the per-element work here is a dict lookup.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from feedparser.datetimes import _parse_date
from feedparser.html import _cp1252
from feedparser.mixin import _FeedParserMixin
from feedparser.urls import _urljoin, make_safe_absolute_uri
from feedparser.util import FeedParserDict
from lxml import etree

from bot.charset import declared_encodings

ATOM = "http://www.w3.org/2005/atom"
_NAMESPACES: dict[str, str] = {uri.lower(): prefix for uri, prefix in _FeedParserMixin.namespaces.items()}
_LOOKS_LIKE_HTML = _FeedParserMixin.looks_like_html
_HTML_TYPES = _FeedParserMixin.html_types
_KEYMAP = set(FeedParserDict.keymap)
# Keys bot.normalize reads: an element feedparser would store under one of them unasked (an
# unknown element of that name) is beyond the fast path.
_READ_KEYS = {
    "link",
    "links",
    "guidislink",
    "id",
    "title",
    "title_detail",
    "summary",
    "content",
    "media_imagecaption",
    "tags",
    "author",
    "authors",
    "published",
    "published_parsed",
    "updated",
    "updated_parsed",
    "created",
    "created_parsed",
    "enclosures",
    "media_content",
    "media_thumbnail",
    "language",
}
# Elements feedparser handles that write only keys siar never reads (when they hold only text).
_IGNORED = {
    "dc_publisher",
    "dc_rights",
    "rights",
    "copyright",
    "subtitle",
    "media_credit",
    "media_rating",
    "media_restriction",
    "media_license",
    "media_player",
    "expirationdate",
    "creativecommons_license",
    "cc_license",
}
_BAIL_BYTES = (b"<!DOCTYPE", b"<!doctype", b"<!ENTITY", b"xml:base", b"backend.userland.com")
_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "remove_comments": True,
    "remove_pis": True,
    "huge_tree": False,
    "recover": False,
}
_C1 = re.compile("[\x80-\x9f]")
_LINK_ENTITY = re.compile("&([A-Za-z0-9_]+);")
MAX_BYTES = 16 * 1024 * 1024  # larger documents go to feedparser (and its own limits)


_Entry = dict[str, Any]
_Depths = dict[str, int]
_State = dict[str, Any]


class Unsupported(Exception):
    """The document needs feedparser."""


@dataclass
class FeedDoc:
    """A parsed feed document: feedparser-shaped entries, the raw digest of each, feed fields."""

    entries: list[Any]
    digests: list[bytes]
    title: str = ""
    language: str = ""
    bozo: str = ""
    fast: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def digest(raw: bytes) -> bytes:
    """The digest of an entry's raw form (16 bytes of blake2b)."""
    return hashlib.blake2b(raw, digest_size=16).digest()


_UTF8 = {"utf-8", "utf8"}
_ASCII_SUPERSETS = _UTF8 | {"us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252", "cp1252"}
_XML_TYPES = ("application/xml", "text/xml", "application/rss+xml", "application/atom+xml")


def fast_allowed(body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether feedparser would decode `body` as UTF-8 (or it is ASCII, decoded alike by all
    the charsets it could pick) under these response headers (lower-cased names), as lxml does."""
    http, xml = declared_encodings(body, headers)
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in _XML_TYPES:
        return False  # feedparser flags other types; its bozo message must be the one given
    if body.isascii():
        return all(name in _ASCII_SUPERSETS for name in (http, xml) if name is not None)
    if xml is not None and xml not in _UTF8:
        return False
    if not content_type:  # feedparser assumes ISO-8859-1 unless the document declares UTF-8
        return xml is not None
    return http is None or http in _UTF8


def read_fast(
    body: bytes, headers: Mapping[str, str], known: Container[bytes] = frozenset()
) -> FeedDoc | None:
    """The document's entries when it is well-formed RSS 2.0 or Atom 1.0 that this module reads
    exactly as feedparser does; None otherwise (parse it with feedparser then).

    An entry whose raw digest is in `known` is not read at all: its place in `entries` is None.
    """
    if len(body) > MAX_BYTES or any(marker in body for marker in _BAIL_BYTES):
        return None
    try:
        root = etree.fromstring(body, etree.XMLParser(**_PARSER_OPTIONS))
    except (etree.XMLSyntaxError, ValueError):
        return None
    try:
        return _Reader(headers).read(root, known)
    except Unsupported:
        return None


def _text(el: Any) -> str:
    if len(el):  # child elements: markup feedparser would rebuild, or nesting with precedence
        raise Unsupported(el.tag)
    return str(el.text or "")


def _attrs(el: Any) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for key, value in el.attrib.items():
        if key[0] == "{":
            raise Unsupported(f"namespaced attribute {key}")
        attrs[key.lower()] = value
    return attrs


def _content_type(value: str) -> str:
    return str(_FeedParserMixin.map_content_type(value))


class _Reader:
    def __init__(self, headers: Mapping[str, str]) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        contentloc = lowered.get("content-location", "")
        self.base = make_safe_absolute_uri("", contentloc) or make_safe_absolute_uri(contentloc) or ""
        self.lang: str | None = lowered.get("content-language") or None
        self.atom = False

    # --- the document ----------------------------------------------------------------------

    def read(self, root: Any, known: Container[bytes]) -> FeedDoc:
        tag = root.tag
        if tag == "rss":
            if (root.get("version") or "").strip() not in ("2.0", "0.91", "0.92"):
                raise Unsupported("rss version")
            channels = [c for c in root if c.tag == "channel"]
            if len(channels) != 1 or any(c.tag == "item" for c in root):
                raise Unsupported("channel layout")
            feed, items = channels[0], [c for c in channels[0] if c.tag == "item"]
        elif tag == "{http://www.w3.org/2005/Atom}feed":
            self.atom = True
            feed, items = root, [c for c in root if c.tag == "{http://www.w3.org/2005/Atom}entry"]
        else:
            raise Unsupported(str(tag))
        if not items:
            raise Unsupported("no entries")  # feedparser's bozo message is then the one to give
        lang = root.get("{http://www.w3.org/XML/1998/namespace}lang", root.get("lang"))
        language = (lang if lang is not None else self.lang) or ""
        if lang == "":
            language = ""
        language = language.replace("_", "-")
        title = ""
        for child in feed:
            name = self._name(child)
            if name == "language" or name == "dc_language":
                language = self._pop(_text(child))
            elif name == "title" and not title:  # feedparser keeps the first non-empty one
                title = self._pop(_text(child))
        digests = [digest(etree.tostring(item)) for item in items]
        entries = [None if d in known else self._entry(item) for d, item in zip(digests, items, strict=True)]
        return FeedDoc(entries, digests, title=title, language=language, fast=True)

    def _name(self, el: Any) -> str:
        """feedparser's name for `el`: canonical prefix (or the document's) + '_' + local name."""
        tag = el.tag
        if not isinstance(tag, str):
            raise Unsupported("entity or other node")
        if tag[0] != "{":
            return str(tag.lower())
        uri, local = tag[1:].split("}", 1)
        prefix = _NAMESPACES.get(uri.lower())
        if prefix is None:
            prefix = el.prefix or ""
            if not prefix:
                raise Unsupported(f"default namespace {uri}")
        return f"{prefix}_{local.lower()}" if prefix else local.lower()

    # --- feedparser's `pop` for text it expects ----------------------------------------------

    def _pop(self, text: str, *, uri: bool = False) -> str:
        output = text.strip()
        if uri and output:
            output = _urljoin(self.base, output)
        if output.isascii():  # neither repair below can change it
            return output
        try:  # feedparser's repair of UTF-8 read as ISO-8859-1
            output = output.encode("iso-8859-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
        return output.translate(_cp1252) if _C1.search(output) else output

    # --- one entry ----------------------------------------------------------------------------

    def _entry(self, item: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        depths: dict[str, int] = {}
        state = {"guidislink": False, "content": False, "description": 0, "title_done": False}
        if item.attrib:
            for key in item.attrib:
                if key not in ("{http://www.w3.org/XML/1998/namespace}lang", "lang"):
                    raise Unsupported("item attributes")
        for child in item:
            self._element(entry, depths, state, child, 1)
        if "links" in entry:  # what FeedParserDict derives from them on reading
            entry["enclosures"] = [
                {k: v for k, v in link.items() if k != "rel"}
                for link in entry["links"]
                if link.get("rel") == "enclosure"
            ]
        return entry

    def _put(self, entry: dict[str, Any], depths: dict[str, int], key: str, value: Any, depth: int) -> None:
        old = depths.get(key)
        if old is None or depth <= old:
            depths[key] = depth
            entry[key] = value

    def _element(
        self, entry: dict[str, Any], depths: dict[str, int], state: dict[str, Any], el: Any, depth: int
    ) -> None:
        name = self._name(el)
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, entry, depths, state, el, depth)
            return
        if name in _IGNORED and not len(el):
            return
        if hasattr(_FeedParserMixin, f"_start_{name}") or hasattr(_FeedParserMixin, f"_end_{name}"):
            raise Unsupported(f"element {name}")
        if name in _READ_KEYS or name in _KEYMAP:
            raise Unsupported(f"element named like a field: {name}")
        for inner in el.iterdescendants():  # feedparser still handles what an unknown wraps
            inner_name = self._name(inner)
            if (
                inner_name in _HANDLERS
                or inner_name in _READ_KEYS
                or inner_name in _KEYMAP
                or hasattr(_FeedParserMixin, f"_start_{inner_name}")
                or hasattr(_FeedParserMixin, f"_end_{inner_name}")
            ):
                raise Unsupported(f"{inner_name} inside {name}")
        # an unknown element: feedparser stores it under its name, which siar never reads

    # handlers: each mirrors feedparser's _start_x/_end_x for the keys siar reads

    def _title(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        if state["title_done"]:
            raise Unsupported("second title")
        attrs = _attrs(el)
        kind = _content_type(attrs.get("type", "text/plain"))
        if kind not in ("text/plain", "text/html"):
            raise Unsupported(f"title type {kind}")
        value = self._pop(_text(el))
        if not self.atom and kind == "text/plain" and _LOOKS_LIKE_HTML(value):
            kind = "text/html"
        self._put(entry, depths, "title", value, d)
        entry["title_detail"] = {"type": kind}
        state["title_done"] = bool(value)

    def _link(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        attrs = _attrs(el)
        attrs.setdefault("rel", "alternate")
        attrs.setdefault("type", "application/atom+xml" if attrs["rel"] == "self" else "text/html")
        attrs = _enforce_href(attrs)
        if "href" in attrs:
            attrs["href"] = _urljoin(self.base, attrs["href"])
        links = entry.setdefault("links", [])
        links.append(attrs)
        if "href" in attrs:
            if len(el):
                raise Unsupported("link with children")
            if attrs["rel"] == "alternate" and _content_type(attrs["type"]) in _HTML_TYPES:
                entry["link"] = attrs["href"]
            return
        value = self._pop(_text(el), uri=True)
        value = _LINK_ENTITY.sub(r"&\g<1>", value.replace("&amp;", "&"))
        entry["link"] = value
        if value:
            links[-1]["href"] = value

    def _guid(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        attrs = _attrs(el)
        guidislink = attrs.get("ispermalink", "true") == "true"
        value = self._pop(_text(el), uri=guidislink)
        self._put(entry, depths, "id", value, d)
        entry.setdefault("guidislink", guidislink and "link" not in entry)
        if guidislink:
            entry.setdefault("link", value)

    def _summary(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        if "summary" in entry and not state["content"]:
            raise Unsupported("a second summary becomes content")
        state["description"] += 1
        if state["description"] > 1:
            raise Unsupported("several descriptions")
        kind = _content_type(_attrs(el).get("type", "text/html" if el.tag == "description" else "text/plain"))
        if kind not in ("text/plain", "text/html"):
            raise Unsupported(f"summary type {kind}")
        self._put(entry, depths, "summary", self._pop(_text(el)), d)

    def _content(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        attrs = _attrs(el)
        if "src" in attrs or "mode" in attrs:
            raise Unsupported("content src or mode")
        kind = (
            "text/html"
            if self._name(el) == "content_encoded"
            else _content_type(attrs.get("type", "text/plain"))
        )
        if kind not in ("text/plain", "text/html"):
            raise Unsupported(f"content type {kind}")
        state["content"] = True
        value = self._pop(_text(el))
        entry.setdefault("content", []).append({"type": kind, "value": value})
        entry.setdefault("summary", value)

    def _category(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        attrs = _attrs(el)
        tags = entry.setdefault("tags", [])
        _add_tag(tags, attrs.get("term"), attrs.get("scheme", attrs.get("domain")), attrs.get("label"))
        value = self._pop(_text(el))
        if not value:
            return
        if tags and not tags[-1]["term"]:
            tags[-1]["term"] = value
        else:
            _add_tag(tags, value, None, None)

    def _author(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        if el.attrib:
            raise Unsupported("author attributes")
        detail: dict[str, str] = {}
        entry.setdefault("authors", []).append(detail)
        if len(el):
            if (el.text or "").strip():
                raise Unsupported("author text beside elements")
            for child in el:
                name = self._name(child)
                if name == "name":
                    detail["name"] = _text(child).strip()
                elif name == "email":
                    detail["email"] = _text(child).strip()
                elif name in ("uri", "url", "homepage"):
                    detail["href"] = self._pop(_text(child), uri=True)
                elif hasattr(_FeedParserMixin, f"_start_{name}") or len(child) or (child.tail or "").strip():
                    raise Unsupported(f"{name} in author")
            self._put(entry, depths, "author", "", d)
            who, mail = detail.get("name"), detail.get("email")
            if who and mail:
                entry["author"] = f"{who} ({mail})"
            elif who:
                entry["author"] = who
            elif mail:
                entry["author"] = mail
            return
        self._put(entry, depths, "author", self._pop(_text(el)), d)
        _author_detail(str(entry.get("author") or ""), detail)

    def _language(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        self._put(entry, depths, "language", self._pop(_text(el)), d)

    def _enclosure(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        attrs = _attrs(el)
        attrs = _enforce_href(attrs)
        attrs["rel"] = "enclosure"
        entry.setdefault("links", []).append(attrs)
        if len(el):
            raise Unsupported("enclosure children")

    def _media_content(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        entry.setdefault("media_content", []).append(_attrs(el))
        for child in el:  # feedparser handles nested media:thumbnail and the caption alike
            self._element(entry, depths, state, child, d + 1)

    def _media_thumbnail(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        attrs = _attrs(el)
        entry.setdefault("media_thumbnail", []).append(attrs)
        url = self._pop(_text(el), uri=True)
        if url.strip() and "url" not in attrs:
            attrs["url"] = url

    def _media_imagecaption(self, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        attrs = _attrs(el)
        if attrs:
            entry["media_imagecaption"] = attrs  # feedparser keeps an unknown element's attributes
            if len(el):
                raise Unsupported("caption children")
            return
        self._put(entry, depths, "media_imagecaption", self._pop(_text(el)), d)


_EMAIL = re.compile(
    r"(([a-zA-Z0-9\_\-\.\+]+)@((\[[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.)|(([a-zA-Z0-9\-]+\.)+))"
    r"([a-zA-Z]{2,4}|[0-9]{1,3})(\]?))(\?subject=\S+)?"
)


def _author_detail(author: str, detail: dict[str, str]) -> None:
    """feedparser's `_sync_author_detail` for an author given as text ("mail (Name)")."""
    if not author:
        return
    email = None
    match = _EMAIL.search(author)
    if match:
        email = match.group(0)
        author = author.replace(email, "").replace("()", "").replace("<>", "").replace("&lt;&gt;", "")
        author = author.strip()
        if author and author[0] == "(":
            author = author[1:]
        if author and author[-1] == ")":
            author = author[:-1]
        author = author.strip()
    if author:
        detail["name"] = author
    if email:
        detail["email"] = email


def _enforce_href(attrs: dict[str, str]) -> dict[str, str]:
    href = attrs.get("url", attrs.get("uri", attrs.get("href")))
    if href:
        attrs.pop("url", None)
        attrs.pop("uri", None)
        attrs["href"] = href
    return attrs


def _add_tag(tags: list[dict[str, Any]], term: str | None, scheme: str | None, label: str | None) -> None:
    if not term and not scheme and not label:
        return
    value = {"term": term, "scheme": scheme, "label": label}
    if value not in tags:
        tags.append(value)


def _dated(key: str) -> Callable[..., None]:
    def handler(reader: _Reader, entry: _Entry, depths: _Depths, state: _State, el: Any, d: int) -> None:
        value = reader._pop(_text(el))
        entry[key] = value
        entry[f"{key}_parsed"] = _parse_date(value)

    return handler


_HANDLERS: dict[str, Callable[..., None]] = {
    "title": _Reader._title,
    "link": _Reader._link,
    "guid": _Reader._guid,
    "id": _Reader._guid,
    "description": _Reader._summary,
    "summary": _Reader._summary,
    "content": _Reader._content,
    "content_encoded": _Reader._content,
    "pubdate": _dated("published"),
    "published": _dated("published"),
    "issued": _dated("published"),
    "dcterms_issued": _dated("published"),
    "updated": _dated("updated"),
    "modified": _dated("updated"),
    "dc_date": _dated("updated"),
    "dcterms_modified": _dated("updated"),
    "created": _dated("created"),
    "dcterms_created": _dated("created"),
    "category": _Reader._category,
    "dc_subject": _Reader._category,
    "author": _Reader._author,
    "dc_creator": _Reader._author,
    "dc_author": _Reader._author,
    "language": _Reader._language,
    "dc_language": _Reader._language,
    "enclosure": _Reader._enclosure,
    "media_content": _Reader._media_content,
    "media_thumbnail": _Reader._media_thumbnail,
    "media_imagecaption": _Reader._media_imagecaption,
}
