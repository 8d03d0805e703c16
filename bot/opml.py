"""OPML subscription lists: read any feed reader's export safely, write OPML 2.0.

`read_opml(data, source)` gives the feeds an export lists (with their folder path) and the
outlines it could not use, each with its line and why; it raises `OpmlError` when the file as a
whole is unusable (not XML, not OPML, too large, an entity bomb). `build_opml(outlines, …)`
gives an OPML 2.0 document. Parsing goes through defusedxml: no DTD entity is ever expanded,
no external resource is ever read.
"""

from __future__ import annotations

import codecs
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from html.entities import html5

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

MAX_OPML_BYTES = 10 * 1024 * 1024  # a reader's export of 10,000 feeds is about 2.5 MB
MAX_OUTLINES = 50_000
# Outline types that carry an xmlUrl but are not RSS/Atom feeds: OPML's own link/include kinds
# and FreshRSS's web-scraping sources ("HTML+XPath", "JSON+DotNotation", …).
_NOT_FEED_TYPES = {"link": "a link to a page", "include": "an included outline file"}
_XML_DECL = re.compile(rb"^<\?xml[^>]{0,200}?encoding\s*=\s*[\"']([A-Za-z0-9._:-]{1,40})[\"']")
_UNDEFINED_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}
_TAG = re.compile(r"<[^<>]*>")
# siar's export names each feed in an attribute of its own namespace (OPML 2.0 allows that), so
# that importing its own export gives the same names back.
SIAR_NAMESPACE = "urn:siar:feeds"
_SIAR_NAME = f"{{{SIAR_NAMESPACE}}}name"


class OpmlError(ValueError):
    """The file is not a usable OPML document; the message names the file and why."""


@dataclass(frozen=True)
class OpmlFeed:
    """One subscription: `title` is the outline's text (else its title attribute), plain text."""

    title: str
    xml_url: str
    html_url: str | None
    folders: tuple[str, ...]  # the enclosing category outlines, outermost first
    categories: tuple[str, ...]  # the `category` attribute's entries, e.g. ("/Tech/AI", "news")
    line: int
    name: str | None = None  # the feed's siar name, when siar exported the file (siar:name)


@dataclass(frozen=True)
class Unusable:
    """An outline that is not a feed siar can read, and why."""

    title: str
    line: int
    reason: str


@dataclass
class Subscriptions:
    """What one OPML file lists."""

    source: str
    title: str = ""
    feeds: list[OpmlFeed] = field(default_factory=list)
    unusable: list[Unusable] = field(default_factory=list)


def read_opml(data: bytes, source: str) -> Subscriptions:
    """The feeds `data` (an OPML file's bytes, any encoding it declares) lists; OpmlError if the
    file is unusable. `source` names the file in messages."""
    if len(data) > MAX_OPML_BYTES:
        raise OpmlError(f"{source}: larger than {MAX_OPML_BYTES // 1_048_576} MiB; not an OPML export")
    text = _decode(data, source)
    try:
        return _parse(text, source)
    except ET.ParseError as exc:
        if "undefined entity" not in str(exc):
            raise OpmlError(f"{source}: not well-formed XML ({exc})") from None
    # HTML entities such as &eacute; are common in hand-made OPML; XML does not define them.
    try:
        return _parse(_UNDEFINED_ENTITY.sub(_numeric_entity, text), source)
    except ET.ParseError as exc:
        raise OpmlError(f"{source}: not well-formed XML ({exc})") from None


def _numeric_entity(match: re.Match[str]) -> str:
    name = match.group(1)
    if name in _XML_ENTITIES:
        return match.group(0)
    char = html5.get(name + ";")
    return "".join(f"&#{ord(c)};" for c in char) if char else match.group(0)


def _decode(data: bytes, source: str) -> str:
    """The document as text: its BOM, else its declared encoding, else UTF-8."""
    encoding = _encoding_of(data)
    try:
        return data.decode(encoding)
    except LookupError:  # unknown, or a bytes-to-bytes codec such as "base64"
        raise OpmlError(f"{source}: declares an unknown text encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        raise OpmlError(
            f"{source}: not valid {encoding} text (byte {exc.start}); re-export it as UTF-8"
        ) from None


def _encoding_of(data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if data.startswith(b"<\x00?\x00"):
        return "utf-16-le"
    if data.startswith(b"\x00<\x00?"):
        return "utf-16-be"
    declared = _XML_DECL.match(data)
    return declared.group(1).decode("ascii") if declared else "utf-8"


def _parse(text: str, source: str) -> Subscriptions:
    builder = _OutlineWalker(source)
    # A str is parsed as the text it is; expat then ignores the declared encoding, which
    # _decode has applied already.
    parser = DefusedXMLParser(target=builder, forbid_dtd=False, forbid_entities=True)
    builder.parser = parser
    try:
        parser.feed(text)
        parser.close()
    except DefusedXmlException as exc:
        raise OpmlError(
            f"{source}: declares XML entities or external resources ({type(exc).__name__}); "
            "an OPML export never needs them, so the file is refused"
        ) from None
    if not builder.seen_root:
        raise OpmlError(f"{source}: not an OPML document (its root element is not <opml>)")
    return builder.result


@dataclass
class _Open:
    """An outline whose end tag has not come yet."""

    title: str
    line: int
    folder: bool  # no xmlUrl: a category whose children are its feeds
    children: int = 0


class _OutlineWalker:
    """The parser's target: follows the outline nesting without building a tree."""

    def __init__(self, source: str) -> None:
        self.parser: DefusedXMLParser | None = None
        self.result = Subscriptions(source)
        self.seen_root = False
        self.depth = 0
        self.in_body = self.in_title = False
        self.stack: list[_Open] = []
        self.outlines = 0

    def start(self, tag: str, attrs: Mapping[str, str]) -> None:
        self.depth += 1
        if self.depth == 1:
            if tag.lower() != "opml":
                raise OpmlError(f"{self.result.source}: not an OPML document (root element <{tag}>)")
            self.seen_root = True
        elif self.depth == 2:
            self.in_body = tag == "body"
        elif self.depth == 3 and tag == "title" and not self.in_body:
            self.in_title = True
        elif self.in_body and tag == "outline":
            self.outlines += 1
            if self.outlines > MAX_OUTLINES:
                raise OpmlError(f"{self.result.source}: more than {MAX_OUTLINES} outlines")
            if self.stack:
                self.stack[-1].children += 1
            self.stack.append(self._outline({k.lower(): v for k, v in attrs.items()}))

    def end(self, tag: str) -> None:
        self.depth -= 1
        self.in_title = False
        if self.in_body and tag == "outline" and self.stack:
            done = self.stack.pop()
            if done.folder and not done.children:
                self.result.unusable.append(
                    Unusable(done.title, done.line, "no xmlUrl (and no feeds inside)")
                )

    def data(self, text: str) -> None:
        if self.in_title and len(self.result.title) < 500:
            self.result.title += text

    def close(self) -> Subscriptions:
        return self.result

    def _line(self) -> int:
        expat = getattr(self.parser, "parser", None)
        return int(getattr(expat, "CurrentLineNumber", 0))

    def _outline(self, attrs: dict[str, str]) -> _Open:
        """Records a feed or an unusable outline; says whether it is a folder."""
        title = plain_text(attrs.get("text") or attrs.get("title") or "")
        url = attrs.get("xmlurl", "").strip()
        kind = attrs.get("type", "").strip().lower()
        line = self._line()
        if not url and kind in ("", "rss", "atom"):
            return _Open(title, line, folder=True)
        if not url or kind in _NOT_FEED_TYPES or "+" in kind or kind == "json":
            self.result.unusable.append(Unusable(title, line, _why_not(kind, url)))
            return _Open(title, line, folder=False)
        folders = tuple(o.title for o in self.stack if o.folder and o.title)
        categories = tuple(filter(None, map(plain_text, attrs.get("category", "").split(","))))
        html_url = attrs.get("htmlurl", "").strip() or None
        name = attrs.get(_SIAR_NAME.lower())
        self.result.feeds.append(OpmlFeed(title, url, html_url, folders, categories, line, name))
        return _Open(title, line, folder=False)


def _why_not(kind: str, url: str) -> str:
    what = _NOT_FEED_TYPES.get(kind) or ("a JSON Feed" if kind == "json" else "a web-scraping source")
    if not url:
        return f'no xmlUrl (type="{kind}": {what})'
    return f'type="{kind}" is {what}, not an RSS/Atom feed'


def plain_text(value: str) -> str:
    """`value` (an outline's text, which may hold escaped HTML) as one line of plain text."""
    text = _TAG.sub("", html.unescape(value)) if "<" in value or "&" in value else value
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


# --- writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutlineOut:
    """A feed as an export lists it."""

    text: str
    xml_url: str
    name: str | None = None  # written as siar:name
    html_url: str | None = None
    category: str | None = None  # one slash-delimited category, e.g. "/International"


def build_opml(outlines: Sequence[OutlineOut], title: str, created: datetime) -> bytes:
    """An OPML 2.0 document (UTF-8, with declaration) listing `outlines` flat, in order."""
    root = ET.Element("opml", {"version": "2.0", "xmlns:siar": SIAR_NAMESPACE})
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = title
    ET.SubElement(head, "dateCreated").text = format_datetime(created, usegmt=True)
    ET.SubElement(head, "docs").text = "http://opml.org/spec2.opml"
    body = ET.SubElement(root, "body")
    for outline in outlines:
        attrs = {"text": outline.text, "title": outline.text, "type": "rss", "xmlUrl": outline.xml_url}
        if outline.name:
            attrs["siar:name"] = outline.name
        if outline.html_url:
            attrs["htmlUrl"] = outline.html_url
        if outline.category:
            attrs["category"] = outline.category
        ET.SubElement(body, "outline", attrs)
    ET.indent(root, space="  ")
    document = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{document}\n'.encode()
