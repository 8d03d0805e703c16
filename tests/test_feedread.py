"""The lxml fast path (bot/feedread.py) against feedparser, the reference: over every corpus
file both accept, the stories siar makes from either are equal, field for field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot import normalize
from bot.cleaning import CleaningRules
from bot.feedread import read_fast

CORPUS = Path(os.environ.get("SIAR_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
URL = "http://example.com/feed/"
HEADERS: tuple[dict[str, str], ...] = (
    {},
    {"content-type": "application/rss+xml; charset=utf-8"},
    {"content-type": "text/xml", "content-language": "id_ID"},
)


def corpus_files() -> list[Path]:
    roots = [CORPUS / "feedparser-tests", CORPUS / "news"]
    missing = [r for r in roots if not r.is_dir()]
    if missing:
        pytest.fail(f"the corpus is missing: {missing} (set SIAR_CORPUS to ../shared/corpus)")
    return sorted(p for r in roots for p in r.rglob("*") if p.is_file() and "LICENSE" not in p.name)


def reference(body: bytes, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> normalize.ParsedFeed:
    with monkeypatch.context() as patch:
        patch.setattr(normalize, "read_fast", lambda *args: None)
        return normalize.parse_feed(body, URL, headers, CleaningRules(), "f")


def test_fast_path_equals_feedparser_over_the_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = compared = 0
    differences: list[str] = []
    for path in corpus_files():
        body = path.read_bytes()
        for headers in HEADERS:
            doc = normalize.read_document(body, URL, headers)
            compared += 1
            if not doc.fast:
                continue
            fast += 1
            got = normalize.doc_stories(doc, CleaningRules(), "f")
            want = reference(body, headers, monkeypatch)
            if (got.stories, got.title, got.language) != (want.stories, want.title, want.language):
                differences.append(f"{path.relative_to(CORPUS)} {headers}")
    assert not differences, "the fast path differs from feedparser on:\n" + "\n".join(differences[:20])
    # the fast path must actually be taken, or this test proves nothing
    assert fast > compared // 5, (fast, compared)


def test_fast_path_takes_the_news_feeds_it_should() -> None:
    taken = []
    for name in ("rss_2.0_ilmessaggero.xml", "rss_2.0_nbcny.xml", "heise.atom", "tempo.xml"):
        path = next((CORPUS / "news").rglob(name))
        doc = normalize.read_document(path.read_bytes(), URL, {"content-type": "application/xml"})
        taken.append((name, doc.fast, len(doc.entries) > 0))
    assert all(fast and entries for _, fast, entries in taken), taken


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY x "y">]><rss version="2.0"><channel>'
        b"<item><title>&x;</title></item></channel></rss>",
        b'<rss version="2.0"><channel><item><title>a</title></item></channel>',  # truncated
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>',
        b'<rss version="2.0"><channel><item xml:base="http://x/"><link>a</link></item></channel></rss>',
        b'<rss version="2.0"><channel><item><itunes:summary xmlns:itunes="http://www.itunes.com/dtds/'
        b'podcast-1.0.dtd">s</itunes:summary></item></channel></rss>',
        b'<rss version="2.0"><channel><item><description>a</description><description>b'
        b"</description></item></channel></rss>",
    ],
)
def test_documents_beyond_the_fast_path_go_to_feedparser(body: bytes) -> None:
    assert read_fast(body, {"content-location": URL}) is None


def test_digest_is_of_the_raw_entry() -> None:
    def doc(description: str) -> bytes:
        return (
            '<rss version="2.0"><channel><item><guid>1</guid><description>'
            f"{description}</description></item><item><guid>2</guid></item></channel></rss>"
        ).encode()

    a = normalize.read_document(doc("one"), URL, {"content-type": "application/xml"})
    b = normalize.read_document(doc("two"), URL, {"content-type": "application/xml"})
    assert a.fast and b.fast
    assert a.digests[0] != b.digests[0] and a.digests[1] == b.digests[1]
