"""The faster text paths equal the ones they replace: the whitespace fold, and HTML to text by
libxml2 (lxml) where it reads as html.parser does; hostile markup stays linear."""

from __future__ import annotations

import random
import re
import time

import feedparser

from bot import cleaning
from bot.cleaning import CleaningRules, fold, html_paragraphs
from bot.normalize import parse_feed
from tests.test_feedread import corpus_files

_SPACE = re.compile(r"\s+")


def old_fold(text: str) -> str:
    text = "".join(ch for ch in text if ch >= " " or ch in "\t\n\r")
    return _SPACE.sub(" ", text).strip()


def reference(html: str) -> tuple[list[str], list[str]]:
    parser = cleaning._TextExtractor()
    parser.feed(html)
    parser.close()
    paragraphs = [fold("".join(block)) for block in parser.blocks]
    return [p for p in paragraphs if p], parser.images


def test_fold_equals_the_character_by_character_fold() -> None:
    alphabet = [chr(i) for i in range(0x40)] + list(
        "\xa0\x85\u2028\u2029\u3000\u200b\ufeff\x7fa é\u1680\u202f"
    )
    rng = random.Random(7)
    for _ in range(50_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        assert fold(text) == old_fold(text), repr(text)


def test_html_to_text_equals_html_parser_on_every_corpus_fragment() -> None:
    fragments: set[str] = set()
    for path in corpus_files():
        doc = feedparser.parse(path.read_bytes(), sanitize_html=False, resolve_relative_uris=False)
        for entry in doc.entries:
            fragments.update(str(entry.get(k))[:20_000] for k in ("title", "summary") if entry.get(k))
            fragments.update(str(c.get("value", ""))[:20_000] for c in entry.get("content", []) or [])
    by_lxml = [f for f in fragments if "<" in f and cleaning._NOT_FOR_LXML.search(f) is None]
    assert len(by_lxml) > 300  # the lxml path is taken, or this proves nothing
    differing = [f[:200] for f in fragments if html_paragraphs(f) != reference(f)]
    assert not differing, differing[:5]


PARTS = (
    *("<p>", "</p>", "<b>", "</b>", " ", "  \n ", "x", "yy z", "&amp;", "&eacute;", "&#233;", "<br>"),
    *("<br/>", "<div>", "</div>", "<i>", "</i>", "<img src='a.jpg'>", '<img src="b&amp;c.png"/>'),
    *("<a href='u'>", "</a>", "<li>", "</li>", "<ul>", "</ul>", "<span>", "</span>", "<h2>", "</h2>"),
    *("<blockquote>", "</blockquote>", "<figure>", "</figure>", "<figcaption>", "\t", "é", "<hr>"),
    *("<pre>", "</pre>", "<font>", "<center>", "</center>", "<u>", "<sup>", "</sup>", "<em>", "</em>"),
)


def test_html_to_text_equals_html_parser_on_generated_markup() -> None:
    rng = random.Random(11)
    by_lxml = 0
    for _ in range(20_000):
        html = "".join(rng.choice(PARTS) for _ in range(rng.randint(1, 14)))
        by_lxml += cleaning._NOT_FOR_LXML.search(html) is None and cleaning._well_nested(html)
        assert html_paragraphs(html) == reference(html), repr(html)
    assert by_lxml > 2_000


def test_hostile_markup_stays_linear() -> None:
    """Megabytes of nesting, unclosed tags and references in one entry: done in seconds (the
    bound is ~50x what it takes on this machine, as a guard against quadratic paths only)."""
    hostile = [
        "<div>" * 200_000,
        "<b><i>" * 100_000 + "x" + "</i></b>" * 100_000,
        "<a " * 200_000 + ">",
        "<a " * 7_000,  # left open: html.parser's quadratic case, bounded by HTML_MAX
        "&amp" * 200_000,
        "<p>a</p>\n" * 100_000,
        "<" * 400_000,
    ]
    for markup in hostile:
        began = time.process_time()
        html_paragraphs(markup)
        item = f"<item><guid>1</guid><title>t</title><description><![CDATA[{markup}]]></description></item>"
        body = f'<rss version="2.0"><channel>{item}</channel></rss>'.encode()
        parse_feed(body, "https://e.example/", {}, CleaningRules(), "f")
        assert time.process_time() - began < 20, markup[:20]
