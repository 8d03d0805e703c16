from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.charset import repair_mojibake, utf8_body
from bot.cleaning import CleaningRules, clean_lead, html_paragraphs
from bot.normalize import canonical_url, identity_url, is_web_link, parse_feed, story_key
from bot.patterns import IgnoreCasePattern
from bot.types import Story

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
    assert story.url == (
        "https://www.medcom.id/internasional/eropa-amerika/"
        "4KZ9mA2b-putin-ajak-menlu-azerbaijan-dan-armenia-bahas-perdamaian"
    )
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
    html = (
        "<p>Satu.</p><p>Baca juga: <a href='x'>Lain</a></p><p>BACA: x</p>"
        "<p>Bagaimana tanggapan anda mengenai artikel ini?</p><p>Dua. (FJR)</p><p>(WAH/FJR)</p>"
    )
    paragraphs, _ = html_paragraphs(html)
    assert clean_lead(paragraphs, RULES) == "Satu. Dua."


def test_custom_rules_from_config_apply() -> None:
    rules = CleaningRules(drop_paragraphs=[IgnoreCasePattern("^Simak berita")], builtin=False)
    paragraphs, _ = html_paragraphs("<p>Isi.</p><p>Simak berita lain</p><p>Baca: tetap</p>")
    assert clean_lead(paragraphs, rules) == "Isi. Baca: tetap"


def test_long_lead_is_cut_at_a_sentence() -> None:
    rules = CleaningRules(lead_max_chars=50)
    lead = clean_lead(["Kalimat pertama cukup panjang. Kalimat kedua juga panjang sekali ya."], rules)
    assert lead == "Kalimat pertama cukup panjang."


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("https://Example.COM:443/a/b?utm_source=rss&id=3&fbclid=x#top", "https://example.com/a/b?id=3"),
        ("http://example.com:80", "http://example.com/"),
        ("https://example.com/p?gclid=1&utm_medium=feed", "https://example.com/p"),
        ("https://example.com:8443/x?b=2&a=1", "https://example.com:8443/x?b=2&a=1"),
        (" https://example.com/spaced \n", "https://example.com/spaced"),
    ],
)
def test_canonical_url(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical


def test_relative_links_resolve_against_the_feed_url() -> None:
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        b"<item><title>A</title><link>/news/a?utm_source=x</link></item></channel></rss>"
    )
    story = parse_feed(body, "https://site.example/rss", {}, RULES, "f").stories[0]
    assert story.url == "https://site.example/news/a"
    assert story.uid == story.url  # no guid: the canonical link is the id


def test_atom_and_missing_dates_fall_back_to_first_seen() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        b"<title>t</title><entry><title type='html'>&lt;b&gt;Bold&lt;/b&gt; news</title>"
        b"<link href='https://a.example/1'/><id>tag:a,1</id>"
        b"<category term='World, Politics'/><category term='world'/>"
        b"<summary type='html'>&lt;p&gt;Lead &amp;amp; more&lt;/p&gt;&lt;img src='/i.png'&gt;</summary>"
        b"</entry></feed>"
    )
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
        assert not parsed.bozo.startswith("parser crashed"), (path, parsed.bozo)
        for story in parsed.stories:
            stories += 1
            assert story.uid, path
            assert story.url == "" or is_web_link(story.url), (path, story.url)
            assert story.image == "" or is_web_link(story.image), (path, story.image)
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
@given(
    st.binary(max_size=3000)
    | st.text(max_size=3000).map(
        lambda t: (
            '<?xml version="1.0"?><rss version="2.0"><channel><item><title>'
            + t
            + "</title><link>https://e.example/"
            + t[:20]
            + "</link><description>"
            + t
            + "</description><category>"
            + t[:30]
            + "</category></item></channel></rss>"
        ).encode("utf-8", "replace")
    )
)
def test_hostile_bytes_never_raise(body: bytes) -> None:
    parsed = parse_feed(body, "https://e.example/rss", {}, RULES, "f")
    for story in parsed.stories:
        assert story.uid and "\n" not in story.title


def test_surrogate_references_and_huge_markup_do_not_break_the_feed() -> None:
    import time

    hostile = "<a<a\u2039a" * 30000  # quadratic for html.parser without the cap
    body = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        "<item><title>Bad &#xD800; title &#55296;</title><link>https://e.example/1</link>"
        "<guid>g&#xdfff;1</guid><category>c&#xD800;</category></item>"
        f"<item><title>{'Panjang ' * 200}</title><link>https://e.example/2</link>"
        f"<description><![CDATA[{hostile}]]></description></item>"
        "</channel></rss>"
    ).encode()
    started = time.process_time()
    parsed = parse_feed(body, "https://e.example/rss", {}, RULES, "f")
    assert time.process_time() - started < 5
    assert len(parsed.stories) == 2
    first = next(s for s in parsed.stories if s.url.endswith("/1"))
    assert first.title == "Bad \ufffd title \ufffd"
    long = next(s for s in parsed.stories if s.url.endswith("/2"))
    assert len(long.title) <= 300 and long.title.endswith("…")


MEDCOM = ["www.medcom.id", "m.medcom.id", "medcom.id"]
STORY = "https://www.medcom.id/internasional/dunia/Zp3Lk8Wd-sidang"


@pytest.mark.parametrize(
    ("url", "identity"),
    [
        (STORY, STORY),
        ("http://www.medcom.id/internasional/dunia/Zp3Lk8Wd-sidang", STORY),
        ("https://m.medcom.id/internasional/dunia/Zp3Lk8Wd-sidang/", STORY),
        ("http://M.MEDCOM.ID:80/internasional/dunia/Zp3Lk8Wd-sidang/?utm_source=x#top", STORY),
        ("https://medcom.id:443/internasional/dunia/Zp3Lk8Wd-sidang", STORY),
        ("https://www.medcom.id/?p=3", "https://www.medcom.id?p=3"),
        ("https://www.medcom.id", "https://www.medcom.id"),
        # not the site's hosts: only scheme, port and the trailing slash are ignored
        (
            "http://other.example/internasional/dunia/Zp3Lk8Wd-sidang/",
            "https://other.example/internasional/dunia/Zp3Lk8Wd-sidang",
        ),
        ("https://other.example:8443/a", "https://other.example:8443/a"),
        (
            "https://www.medcom.id/internasional/dunia/Zp3Lk8Wd-SIDANG",
            STORY[:-6] + "SIDANG",
        ),  # paths keep case
    ],
)
def test_identity_url(url: str, identity: str) -> None:
    assert identity_url(url, MEDCOM) == identity


def test_story_key_is_the_same_for_every_form_of_one_story_and_differs_otherwise() -> None:
    def key(url: str, uid: str = "1", feed: str = "f") -> str:
        return story_key(Story(uid=uid, feed=feed, url=url, title="t"), MEDCOM)

    assert key(STORY) == key("http://m.medcom.id/internasional/dunia/Zp3Lk8Wd-sidang/", uid="2", feed="g")
    assert key(STORY) != key(STORY + "-2")
    assert key(STORY) != key(STORY.replace("www.medcom.id", "other.example"))
    assert key("", uid="1") != key("", uid="2") and key("", feed="f") != key("", feed="g")
    assert len(key("")) == 64


def entry_feed(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>'
        + "".join(f"<item>{i}</item>" for i in items)
        + "</channel></rss>"
    ).encode()


@pytest.mark.parametrize(
    ("url", "usable"),
    [
        ("https://e.example/a", True),
        ("HTTP://e.example", True),
        ("https:///etc/passwd", False),
        ("javascript:alert(1)", False),
        ("data:text/html,x", False),
        ("/relative", False),
        ("", False),
        ("http://[::1", False),
    ],
)
def test_is_web_link(url: str, usable: bool) -> None:
    assert is_web_link(url) is usable


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,x",
        "vbscript:msgbox(1)",
        "mailto:a@b.example",
        "ftp://e.example/a",
    ],
)
def test_an_unusable_link_is_dropped(link: str) -> None:
    body = entry_feed(f"<title>Judul</title><link>{link}</link>")
    (story,) = parse_feed(body, "https://e.example/rss", {}, RULES, "f").stories
    assert story.url == "" and story.title == "Judul" and story.uid.startswith("sha1:")


@pytest.mark.parametrize("src", ["javascript:alert(1)", "data:image/png;base64,AAAA", "vbscript:x"])
def test_an_image_that_is_not_http_is_dropped(src: str) -> None:
    body = entry_feed(
        f"<title>A</title><link>https://e.example/a</link>"
        f'<enclosure url="{src}" type="image/jpeg"/>'
        f"<description><![CDATA[<img src='{src}'>]]></description>"
    )
    (story,) = parse_feed(body, "https://e.example/rss", {}, RULES, "f").stories
    assert story.image == ""


def news(name: str) -> bytes:
    path = CORPUS / "news" / name
    if not path.exists():
        pytest.fail(f"news corpus file not found at {path}; set SIAR_CORPUS to shared/corpus")
    return path.read_bytes()


def broken(body: bytes) -> bytes:
    """`body` with one byte that is never valid UTF-8, inside its first story."""
    at = body.index(b"<item")
    return body[:at] + b"\xff" + body[at:]


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("other/rbren__rss-parser/guardian.rss", {}),  # declares encoding="utf-8"
        ("indonesia/gtrdp__twitter-clustering/tempo.xml", {}),  # no declaration: UTF-8 by default
        (
            "indonesia/gtrdp__twitter-clustering/tempo.xml",
            {"Content-Type": "application/rss+xml; charset=UTF-8"},
        ),
    ],
)
def test_one_invalid_byte_in_a_utf8_feed_garbles_nothing_else(name: str, headers: dict[str, str]) -> None:
    body = news(name)
    whole = parse_feed(body, "https://news.example/feed", headers, RULES, "news").stories
    damaged = parse_feed(broken(body), "https://news.example/feed", headers, RULES, "news").stories
    assert [s.title for s in damaged] == [s.title for s in whole]
    assert [s.lead for s in damaged] == [s.lead for s in whole]
    assert any(not s.title.isascii() for s in whole)  # the test means something


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("other/rbren__rss-parser/encoding.rss", {}),  # declares iso-8859-1
        ("other/rbren__rss-parser/uolNoticias.rss", {}),  # Latin-1 without a declaration
        ("other/rbren__rss-parser/guardian.rss", {"Content-Type": "text/xml; charset=iso-8859-2"}),
    ],
)
def test_feeds_in_other_charsets_are_left_to_the_parser(name: str, headers: dict[str, str]) -> None:
    body = broken(news(name))
    assert utf8_body(body, headers) is body


def test_latin1_without_declaration_still_reads_right() -> None:
    stories = parse_feed(
        news("other/rbren__rss-parser/uolNoticias.rss"), "https://news.example/feed", {}, RULES, "news"
    ).stories
    assert "simulações de 2º turno" in stories[0].title


def test_mojibake_is_repaired_in_title_lead_author_and_tags() -> None:
    body = entry_feed(
        "<title>Tajam dari Lâ€™Oreal Infallible</title><link>https://e.example/1</link>"
        "<author>a@e.example (JosÃ© Sitompul)</author><category>CafÃ©</category>"
        "<category>Lâ€™Oreal, kecantikan</category>"
        "<description>MÃ¼nchen: â€œSegarâ€\x9d kata dia.</description>"
    )
    (story,) = parse_feed(body, "https://e.example/rss", {}, RULES, "f").stories
    assert story.title == "Tajam dari L’Oreal Infallible"
    assert story.lead == "München: “Segar” kata dia."
    assert "José Sitompul" in story.author
    assert story.categories == ("Café", "L’Oreal", "kecantikan")


def test_tempo_titles_have_no_mojibake_left() -> None:
    stories = parse_feed(
        news("indonesia/gtrdp__twitter-clustering/tempo.xml"), "https://news.example/feed", {}, RULES, "news"
    ).stories
    assert any("L’Oreal" in s.title for s in stories)
    assert not any("â€" in f"{s.title}{s.lead}" for s in stories)


@pytest.mark.parametrize(
    "text",
    [
        "naïve café",
        "Jokowi “menegaskan” itu—kata dia",
        "Côte d’Ivoire",
        "東京 2020 🇮🇩",
        "Sidang Umum PBB",
        "¿Qué?",
        "Façade",
        "Ñandú",
        "5 °C ± 2",
    ],
)
def test_legitimate_text_is_not_touched(text: str) -> None:
    assert repair_mojibake(text) == text


@pytest.mark.parametrize("fast", [True, False], ids=["lxml", "feedparser"])
def test_image_captions_with_a_type_attribute_keep_their_text(fast: bool, monkeypatch) -> None:
    """`<media:description type="plain">` is common (Media RSS allows type plain|html): its
    text is the alt text, never the attributes ("{'type': 'plain'}")."""
    import bot.normalize

    if not fast:
        monkeypatch.setattr(bot.normalize, "fast_allowed", lambda *args: False)
    body = b"""<?xml version="1.0"?><rss version="2.0" xmlns:m="http://search.yahoo.com/mrss/">
    <channel><title>t</title>
    <item><title>A</title><link>https://x.example/a</link><description>Lead a.</description>
      <m:content url="https://x.example/a.jpg" medium="image">
        <m:description type="plain">Putin in Moscow</m:description></m:content></item>
    <item><title>B</title><link>https://x.example/b</link><description>Lead b.</description>
      <m:content url="https://x.example/b.jpg" medium="image"/>
      <m:description type="html">&lt;b&gt;Caption&lt;/b&gt; &amp;amp; more</m:description></item>
    <item><title>C</title><link>https://x.example/c</link>
      <m:content url="https://x.example/c.jpg" medium="image"/>
      <m:description type="plain"/></item>
    </channel></rss>"""
    stories = parse_feed(body, "https://x.example/feed", {}, CleaningRules(), "f").stories
    alts = {s.title: s.image_alt for s in stories}
    assert alts == {"A": "Putin in Moscow", "B": "Caption & more", "C": ""}
    assert {s.title: s.lead for s in stories}["A"] == "Lead a."


def test_many_unclosed_captions_do_not_stall_the_rewrite() -> None:
    """The caption rewrite runs on feed bytes: 200,000 unclosed openings stay linear."""
    import time

    body = b'<rss xmlns:media="http://search.yahoo.com/mrss/"><channel>' + b"<media:description " * 200_000
    began = time.process_time()
    parse_feed(body, "https://x.example/feed", {}, CleaningRules(), "f")
    assert time.process_time() - began < 30  # quadratic would be hours
