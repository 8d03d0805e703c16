"""Feed HTML to clean text: tags stripped, entities decoded, whitespace folded, boilerplate gone.

The boilerplate rules are data (`[cleaning]` in config.toml) so that a new site's habits ("Baca
juga: …", editor initials "(FJR)", reader polls) are a config change, not a code change.
"""

from __future__ import annotations

import re
import threading
from functools import cached_property
from html import unescape
from html.parser import HTMLParser
from typing import Any

from lxml import etree
from pydantic import BaseModel, ConfigDict

from bot.patterns import IgnoreCasePattern, Pattern, PatternError

# Paragraph-level boilerplate common on Indonesian news sites, and its English equivalents.
BUILTIN_DROP_PARAGRAPHS = (
    r"^(baca( juga)?|simak( juga)?|lihat( juga)?|tonton( juga)?|read( also| more)?|see also)\s*[:：]",
    r"^bagaimana tanggapan anda mengenai artikel ini\??$",
    r"^\(\s*[A-Z]{2,5}(\s*[/,]\s*[A-Z]{2,5})*\s*\)\.?$",  # editor initials: (FJR), (WAH/FJR)
    r"^(advertisement|iklan|scroll to continue with content)$",
)
# Removed from inside text, e.g. initials glued to the last sentence: "... tersebut. (FJR)".
BUILTIN_STRIP = (r"\s*\(\s*[A-Z]{2,5}(\s*[/,]\s*[A-Z]{2,5})*\s*\)\s*$",)
# Compiled by RE2 like the operator's own rules: a built-in rule must not backtrack either.
_BUILTIN_DROP = tuple(IgnoreCasePattern(r) for r in BUILTIN_DROP_PARAGRAPHS)
_BUILTIN_STRIP = tuple(Pattern(r) for r in BUILTIN_STRIP)

_BLOCK = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "figure",
    "figcaption",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "hr",
    "pre",
}
_SKIP = {"script", "style", "noscript", "iframe", "template", "svg", "object", "embed"}
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


class CleaningRules(BaseModel):
    """`[cleaning]`: RE2 patterns for paragraphs to drop (case-insensitive) and text to strip."""

    model_config = ConfigDict(extra="forbid")

    builtin: bool = True  # also apply the built-in rules above
    drop_paragraphs: list[IgnoreCasePattern] = []
    strip_patterns: list[Pattern] = []
    lead_max_chars: int = 600

    @cached_property
    def _drop(self) -> list[IgnoreCasePattern]:
        rules = [*(_BUILTIN_DROP if self.builtin else ()), *self.drop_paragraphs]
        if len(rules) < 2 or any("\\Q" in r.source for r in rules):  # \Q…\E would swallow the "|"
            return rules
        try:  # one alternation: one pass over each paragraph (4x faster than one per rule)
            return [IgnoreCasePattern("|".join(f"(?:{r.source})" for r in rules))]
        except PatternError:  # over RE2's memory budget together: one by one then
            return rules

    @cached_property
    def _strip(self) -> list[Pattern]:
        return [*(_BUILTIN_STRIP if self.builtin else ()), *self.strip_patterns]

    def keep(self, paragraph: str) -> bool:
        """False when `paragraph` is site boilerplate."""
        return not any(rule.search(paragraph) for rule in self._drop)

    def strip(self, text: str) -> str:
        """`text` without the strip patterns."""
        for rule in self._strip:
            text = rule.sub("", text)
        return text.strip()


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[list[str]] = [[]]
        self.images: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skipping += 1
        elif tag in _BLOCK:
            self.blocks.append([])
        if tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.images.append(src)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK:
            self.blocks.append([])

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.blocks[-1].append(data)


def fold(text: str) -> str:
    """`text` with every run of whitespace made one space, and no control characters.

    Linear and in C: `str.split()` splits at exactly the characters `\\s` matches (and strips).
    """
    if not text.isprintable():  # rare: only then look for control characters
        text = _CONTROL.sub("", text)
    return " ".join(text.split())


class _Collector:
    """The same extraction as `_TextExtractor`, as an lxml parser target (libxml2 tokenizes)."""

    def __init__(self) -> None:
        self.blocks: list[list[str]] = [[]]
        self.images: list[str] = []
        self._skipping = 0

    def reset(self) -> _Collector:
        self.blocks, self.images, self._skipping = [[]], [], 0
        return self

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if tag in _SKIP:
            self._skipping += 1
        elif tag in _BLOCK:
            self.blocks.append([])
        if tag == "img":
            src = attrib.get("src")
            if src:
                self.images.append(src)

    def end(self, tag: str) -> None:
        if tag in _SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK:
            self.blocks.append([])

    def data(self, data: str) -> None:
        if not self._skipping:
            self.blocks[-1].append(data)

    def close(self) -> None:
        return None


# Markup where libxml2 and html.parser may read differently; such fragments keep html.parser:
# declarations, comments, CDATA and processing instructions; raw-text elements; a '<' that
# opens no tag; a character reference without its ';'; control characters; whitespace-only
# attributes without quotes.
_NOT_FOR_LXML = re.compile(
    r"<[!?]|<(?:/?)(?:script|style|textarea|title|xmp|plaintext|noscript|noembed|noframes|iframe|"
    r"template|svg|math|select|option|table|tr|td|th|tbody|thead|tfoot|col|colgroup|caption|html|"
    r"head|body|frameset|frame|base|meta|link)\b|<(?![A-Za-z/])|</(?![A-Za-z])|&(?!(?:[A-Za-z][A-Za-z0-9]*|"
    r"#[0-9]+|#[xX][0-9A-Fa-f]+);)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|=\s*[^\s\"'>]",
    re.IGNORECASE,
)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
_VOID = {"br", "hr", "img", "wbr"}
_INLINE_ONLY = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre"}  # libxml2 closes them at a block


def _well_nested(html: str) -> bool:
    """Whether elements open and close in order, blocks all closed (libxml2 silently drops a
    stray end tag and closes open elements at a block, where html.parser marks a break or not)."""
    stack: list[str] = []
    for end, tag in _TAG.findall(html):
        tag = tag.lower()
        if tag in _VOID:
            continue
        if not end:
            if tag in _BLOCK and stack and (stack[-1] in _INLINE_ONLY or stack[-1] == tag == "li"):
                return False
            stack.append(tag)
        elif stack and stack[-1] == tag:
            stack.pop()
        elif tag in _BLOCK or tag in stack:
            return False
    return not any(tag in _BLOCK for tag in stack)


_LXML_PARSER_OPTIONS = {"no_network": True, "remove_comments": True, "remove_pis": True}


_local = threading.local()
OPEN_TAIL_MAX = 2_000  # characters after the last '>' that html.parser may read as open tags


def _lxml_parser() -> tuple[_Collector, Any]:
    """This thread's lxml parser and its target (lxml inspects a target on every new parser:
    a third of a millisecond; parsers are not shared between threads)."""
    made = getattr(_local, "parser", None)
    if made is None:
        collector = _Collector()
        made = _local.parser = (collector, etree.HTMLParser(target=collector, **_LXML_PARSER_OPTIONS))
    made[0].reset()
    return made


def html_paragraphs(html: str) -> tuple[list[str], list[str]]:
    """(clean text paragraphs, image URLs) of an HTML fragment."""
    if "<" not in html:  # plain text with character references: no parser needed
        text = fold(unescape(html)) if "&" in html else fold(html)
        return ([text] if text else []), []
    cut = html.rfind(">") + 1
    if len(html) - cut > OPEN_TAIL_MAX and "<" in html[cut:]:
        # A long run of tags left open at the end: html.parser rescans the rest from each '<'
        # (quadratic; 5 s for 20,000 characters). Hostile markup: its tail is text.
        paragraphs, images = html_paragraphs(html[:cut])
        tail = fold(unescape(html[cut:]))
        return [*paragraphs, tail] if tail else paragraphs, images
    # A tag left open at the end is text to html.parser and nothing to libxml2: html.parser then.
    if html.rfind("<") < html.rfind(">") and _NOT_FOR_LXML.search(html) is None and _well_nested(html):
        collector, parser = _lxml_parser()
        try:
            etree.fromstring(html, parser)
        except (etree.LxmlError, ValueError):
            pass  # html.parser below
        else:
            paragraphs = [fold("".join(block)) for block in collector.blocks]
            return [p for p in paragraphs if p], collector.images
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # HTMLParser is lenient; this guards against the truly broken
        # `<[^>]*>` would rescan to the end from every '<' of an unclosed run: quadratic
        return [fold(re.sub(r"<[^<>]*>", " ", html))], []
    paragraphs = [fold("".join(block)) for block in parser.blocks]
    return [p for p in paragraphs if p], parser.images


def html_to_text(html: str) -> str:
    """An HTML fragment (a title, say) as one line of clean text."""
    return " ".join(html_paragraphs(html)[0])


def clean_lead(paragraphs: list[str], rules: CleaningRules) -> str:
    """The story's lead: its paragraphs without boilerplate, at most `lead_max_chars` long."""
    kept = [rules.strip(p) for p in paragraphs if rules.keep(p)]
    kept = [p for p in kept if p and rules.keep(p)]
    lead = ""
    for paragraph in kept:
        candidate = f"{lead} {paragraph}".strip()
        if lead and len(candidate) > rules.lead_max_chars:
            break
        lead = candidate
    if len(lead) > rules.lead_max_chars:
        lead = shorten_at_sentence(lead, rules.lead_max_chars)
    return lead


def shorten_at_sentence(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a sentence end, else a word end with '…'."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if end >= limit // 2:
        return head[: end + 1]
    space = head[: limit - 1].rfind(" ")
    return (head[:space] if space > 0 else head[: limit - 1]).rstrip(" ,;:") + "…"
