from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.cleaning import CleaningRules, clean_lead, html_paragraphs
from bot.normalize import canonical_url, parse_feed

RULES = CleaningRules()
CORPUS = Path(os.environ.get("SIAR_CORPUS", Path(__file__).parents[2] / "shared" / "corpus"))


def sample(sample_bytes: bytes):
    return parse_feed(sample_bytes, "https://www.medcom.id/rss/internasional", {}, RULES, "medcom")


def test_seed_story_is_clean(sample_bytes: bytes) -> None:
    parsed = sample(sample_bytes)
    assert len(parsed.stories) == 4
    story = parsed.stories[0]
    assert story.uid == "medcom-4KZ9mA2b"
    assert story.title == "Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian"
    assert story.url == ("https://www.medcom.id/internasional/eropa-amerika/"
                         "4KZ9mA2b-putin-ajak-menlu-azerbaijan-dan-armenia-bahas-perdamaian")
    assert story.lead.startswith("Moskow: Presiden Rusia Vladimir Putin mengundang")
    assert story.lead.endswith("Jumat, 9 Oktober 2020.")
    for boilerplate in ("Baca", "Bagaimana tanggapan", "(FJR)", "<", "&amp;", "Foto: AFP"):
        assert boilerplate not in story.lead
    assert story.section == "Internasional"
    assert story.tags == ("vladimir putin", "rusia", "konflik armenia-azerbaijan")
    assert story.author == "Marcheilla Ariesta"
    assert story.published == datetime(2020, 10, 9, 6, 53, tzinfo=UTC)
    assert story.image.startswith("https://cdn.medcom.id/") and story.image.endswith("?w=720")
    assert story.image_alt.startswith("Presiden Rusia Vladimir Putin undang")
    assert story.language == "id"


def test_hostile_markup_becomes_plain_text(sample_bytes: bytes) -> None:
    story = next(s for s in sample(sample_bytes).stories if s.uid == "medcom-Qw9Er5Ty")
    assert "<" not in story.title and "Tebal" in story.title and "&" in story.title
    assert "alert(1)" not in story.lead
    assert "🇮🇩👨\u200d👩\u200d👧" in story.lead  # emoji with joiners kept intact
    assert "< > &" in story.lead
    assert story.tags == ("C++ & Rust", "東京", "2020")
    assert story.image == ""


def test_full_article_content_is_cleaned_of_every_boilerplate() -> None:
    html = ("<p>Satu.</p><p>Baca juga: <a href='x'>Lain</a></p><p>BACA: x</p>"
            "<p>Bagaimana tanggapan anda mengenai artikel ini?</p><p>Dua. (FJR)</p><p>(WAH/FJR)</p>")
    paragraphs, _ = html_paragraphs(html)
    assert clean_lead(paragraphs, RULES) == "Satu. Dua."


def test_custom_rules_from_config_apply() -> None:
    rules = CleaningRules(drop_paragraphs=["^Simak berita"], builtin=False)
    paragraphs, _ = html_paragraphs("<p>Isi.</p><p>Simak berita lain</p><p>Baca: tetap</p>")
    assert clean_lead(paragraphs, rules) == "Isi. Baca: tetap"


def test_long_lead_is_cut_at_a_sentence() -> None:
    rules = CleaningRules(lead_max_chars=50)
    lead = clean_lead(["Kalimat pertama cukup panjang. Kalimat kedua juga panjang sekali ya."], rules)
    assert lead == "Kalimat pertama cukup panjang."


@pytest.mark.parametrize(("raw", "canonical"), [
    ("https://Example.COM:443/a/b?utm_source=rss&id=3&fbclid=x#top", "https://example.com/a/b?id=3"),
    ("http://example.com:80", "http://example.com/"),
    ("https://example.com/p?gclid=1&utm_medium=feed", "https://example.com/p"),
    ("https://example.com:8443/x?b=2&a=1", "https://example.com:8443/x?b=2&a=1"),
    (" https://example.com/spaced \n", "https://example.com/spaced"),
])
def test_canonical_url(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical


def test_relative_links_resolve_against_the_feed_url() -> None:
    body = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
            b"<item><title>A</title><link>/news/a?utm_source=x</link></item></channel></rss>")
    story = parse_feed(body, "https://site.example/rss", {}, RULES, "f").stories[0]
    assert story.url == "https://site.example/news/a"
    assert story.uid == story.url  # no guid: the canonical link is the id


def test_atom_and_missing_dates_fall_back_to_first_seen() -> None:
    body = (b'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            b"<title>t</title><entry><title type='html'>&lt;b&gt;Bold&lt;/b&gt; news</title>"
            b"<link href='https://a.example/1'/><id>tag:a,1</id>"
            b"<category term='World, Politics'/><category term='world'/>"
            b"<summary type='html'>&lt;p&gt;Lead &amp;amp; more&lt;/p&gt;&lt;img src='/i.png'&gt;</summary>"
            b"</entry></feed>")
    seen = datetime(2024, 1, 1, tzinfo=UTC)
    story = parse_feed(body, "https://a.example/atom", {}, RULES, "f", now=seen).stories[0]
    assert story.title == "Bold news"
    assert story.lead == "Lead & more"
    assert story.published == seen
    assert story.categories == ("World", "Politics")
    assert story.image == "https://a.example/i.png"


def test_garbage_is_an_empty_result_not_an_exception() -> None:
    parsed = parse_feed(b"\x00\xff<html>not a feed", "https://x.example/", {}, RULES, "f")
    assert parsed.stories == [] and parsed.bozo


def _corpus_files() -> list[Path]:
    if not CORPUS.exists():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".xml", ".rss", ".atom"))


def test_every_corpus_feed_parses_without_crashing() -> None:
    files = _corpus_files()
    if not files:
        pytest.fail(f"corpus not found at {CORPUS}; set SIAR_CORPUS to shared/corpus")
    stories = 0
    for path in files:
        parsed = parse_feed(path.read_bytes(), "http://127.0.0.1/feed", {}, RULES, "corpus")
        for story in parsed.stories:
            stories += 1
            assert story.uid, path
            assert story.published is None or story.published.tzinfo is not None, path
            assert "\n" not in story.title and "<script" not in story.lead.lower(), path
    assert stories > 500


def test_real_news_feeds_yield_usable_stories() -> None:
    news = CORPUS / "news"
    if not news.exists():
        pytest.fail(f"news corpus not found at {news}")
    for path in sorted(p for p in news.rglob("*") if p.suffix in (".xml", ".rss", ".atom")):
        if "invalid" in path.name:
            continue
        parsed = parse_feed(path.read_bytes(), "https://news.example/feed", {}, RULES, "news")
        assert parsed.stories, path
        with_links = [s for s in parsed.stories if s.url.startswith("http")]
        assert len(with_links) >= len(parsed.stories) * 0.9, path
        assert all(s.title for s in parsed.stories), path


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000) | st.text(max_size=3000).map(lambda t: (
    '<?xml version="1.0"?><rss version="2.0"><channel><item><title>' + t
    + "</title><link>https://e.example/" + t[:20] + "</link><description>" + t
    + "</description><category>" + t[:30] + "</category></item></channel></rss>").encode("utf-8", "replace")))
def test_hostile_bytes_never_raise(body: bytes) -> None:
    parsed = parse_feed(body, "https://e.example/rss", {}, RULES, "f")
    for story in parsed.stories:
        assert story.uid and "\n" not in story.title


def test_surrogate_references_and_huge_markup_do_not_break_the_feed() -> None:
    import time

    hostile = "<a<a\u2039a" * 30000  # quadratic for html.parser without the cap
    body = ('<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
            "<item><title>Bad &#xD800; title &#55296;</title><link>https://e.example/1</link>"
            "<guid>g&#xdfff;1</guid><category>c&#xD800;</category></item>"
            f"<item><title>{'Panjang ' * 200}</title><link>https://e.example/2</link>"
            f"<description><![CDATA[{hostile}]]></description></item>"
            "</channel></rss>").encode()
    started = time.process_time()
    parsed = parse_feed(body, "https://e.example/rss", {}, RULES, "f")
    assert time.process_time() - started < 5
    assert len(parsed.stories) == 2
    first = next(s for s in parsed.stories if s.url.endswith("/1"))
    assert first.title == "Bad \ufffd title \ufffd"
    long = next(s for s in parsed.stories if s.url.endswith("/2"))
    assert len(long.title) <= 300 and long.title.endswith("…")
