"""`siar feeds import|export`: OPML files shaped like real readers' exports, odd and hostile
ones, the config file's bytes, and the command as operators run it."""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import subprocess
import sys
import time
from datetime import date
from email.utils import parsedate_to_datetime
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import load_config
from bot.feed_import import (
    ExistingFeed,
    ImportOptions,
    NewFeed,
    feed_name,
    plan_import,
    slug,
    url_key,
    url_problem,
)
from bot.feedlist import ImportConflict, add_tables, render_tables, replace_file, table_values
from bot.feeds_command import import_feeds
from bot.opml import MAX_OPML_BYTES, MAX_OUTLINES, OpmlError, read_opml
from tests.feedserver import FeedServer, Route

ROOT = Path(__file__).parent.parent
OPML = Path(__file__).parent / "data" / "opml"
SHIPPED_CONFIG = ROOT / "config.toml"
TODAY = date(2024, 5, 7)


def siar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python main.py ARGS` as an operator runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


# What each reader's export yields in an empty config: (name, url, folder path or categories).
EXPORTS: dict[str, list[tuple[str, str, str]]] = {
    "feedly.opml": [
        ("bbc-news-world", "http://feeds.bbci.co.uk/news/world/rss.xml", "World"),
        (
            "al-jazeera-breaking-news-world-news-and-video-from-al",
            "https://www.aljazeera.com/xml/rss/all.xml",
            "World",
        ),
        ("ars-technica-all-content", "https://feeds.arstechnica.com/arstechnica/index", "Tech"),
    ],
    "inoreader.opml": [  # the same feed in two folders: once
        ("antara-news-terkini", "https://www.antaranews.com/rss/terkini.xml", "Nasional"),
        ("tempo-co", "https://rss.tempo.co/nasional", "Nasional"),
    ],
    "netnewswire.opml": [
        ("daring-fireball", "https://daringfireball.net/feeds/json", ""),
        ("quanta-magazine", "https://www.quantamagazine.org/feed/", "Science"),
        ("nasa-breaking-news", "https://www.nasa.gov/news-release/feed/", "Science / Space"),
    ],
    "thunderbird.opml": [
        ("the-guardian-world", "https://www.theguardian.com/world/rss", "Blogs & News Feeds"),
        ("deutsche-welle-dw-com-deutsch", "https://rss.dw.com/rdf/rss-de-all", "Blogs & News Feeds"),
    ],
    "miniflux.opml": [  # no type attribute at all
        ("hacker-news", "https://news.ycombinator.com/rss", "All"),
        ("lwn-net", "https://lwn.net/headlines/rss", "All"),
        ("cnbc-indonesia", "https://www.cnbcindonesia.com/news/rss", "Ekonomi"),
    ],
    "freshrss.opml": [  # its HTML+XPath scraping source is left out
        ("framablog", "https://framablog.org/feed/", "Uncategorized"),
        (
            "le-monde-fr-actualites-et-infos-en-france-et-dans-le-monde",
            "https://www.lemonde.fr/rss/une.xml",
            "Uncategorized",
        ),
    ],
    "theoldreader.opml": [
        (
            "reuters-world-news",
            "https://www.reutersagency.com/feed/?best-topics=political-general&post_type=best",
            "",
        ),
        ("the-straits-times", "https://www.straitstimes.com/news/asia/rss.xml", "Asia"),
    ],
    "newsblur.opml": [
        ("npr-topics-news", "https://feeds.npr.org/1001/rss.xml", ""),
        (
            "kompas-com-news",
            "https://rss.kompas.com/api/feed/social?sort=latest&limit=50",
            "Daily / Morning",
        ),
    ],
    "spec2-categories.opml": [  # ISO-8859-1, category attributes, link/include/comment outlines
        ("cnet-news-com", "http://news.com.com/2547-1_3-0-5.xml", "/Tech/News, gadgets"),
        ("weather", "http://weather.example.com/boston.xml", "/Boston/Weather"),
        ("neue-zurcher-zeitung", "https://www.nzz.ch/recent.rss", "/Schweiz/Zürich"),
        ("cafe-babel", "http://cafebabel.example.com/feed", "/Europe"),
    ],
    "lowercase-attributes.opml": [  # xmlurl, XMLURL, title without text
        ("slashdot", "https://rss.slashdot.org/Slashdot/slashdotMain", ""),
        ("kottke", "https://feeds.kottke.org/main", ""),
        ("title-only-when-text-is-empty", "https://example.org/title-only.xml", ""),
    ],
    "bom-utf8.opml": [("detik-com-berita", "https://rss.detik.com/index.php/detikcom", "")],
    "windows-1252.opml": [
        ("les-echos-finance", "https://services.lesechos.fr/rss/les-echos-finance-marches.xml", "Économie")
    ],
    "utf16.opml": [
        ("novosti-kommersant", "https://www.kommersant.ru/RSS/news.xml", ""),
        ("xinhuawang-xinwen", "http://www.xinhuanet.com/politics/news_politics.xml", ""),
    ],
    "entities.opml": [
        ("tom-jerry-s-weekly", "https://example.com/feed?a=1&b=2", ""),
        ("resume-daily", "https://example.com/r%C3%A9sum%C3%A9.xml", ""),
        ("quotes-and-apostrophes", "https://example.com/quotes.rss", ""),
    ],
}


def read(name: str) -> bytes:
    path = OPML / name
    assert path.exists(), f"test data {path} is missing"
    return path.read_bytes()


def plan_of(name: str) -> list[NewFeed]:
    return plan_import(read_opml(read(name), name), [], ImportOptions()).add


def inserted(old: str, new: str) -> str:
    """The text `new` adds to `old`, asserting that it is one insertion and nothing else."""
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    changes = [op for op in ops if op[0] != "equal"]
    assert len(changes) == 1 and changes[0][0] == "insert", changes
    _, _, _, j1, j2 = changes[0]
    assert new[:j1] + new[j2:] == old
    return new[j1:j2]


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    """The shipped config.toml (comments, layout, a [[feeds]] table mid-file) in tmp_path."""
    path = tmp_path / "config.toml"
    shutil.copy(SHIPPED_CONFIG, path)
    return path


# --- reading real readers' exports ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_reader_export_gives_its_feeds_with_folders(name: str) -> None:
    got = [(f.name, f.url, f.category) for f in plan_of(name)]
    assert got == EXPORTS[name]


def test_what_readers_export_besides_feeds_is_named_with_its_line() -> None:
    freshrss = plan_import(read_opml(read("freshrss.opml"), "f"), [], ImportOptions())
    assert [(x.line, x.reason) for x in freshrss.left] == [
        (11, 'type="html+xpath" is a web-scraping source, not an RSS/Atom feed')
    ]
    spec = plan_import(read_opml(read("spec2-categories.opml"), "s"), [], ImportOptions())
    assert [(x.title, x.reason) for x in spec.left] == [
        ("Scripting News: links", 'no xmlUrl (type="link": a link to a page)'),
        ("Directory of states", 'no xmlUrl (type="include": an included outline file)'),
        ("A remark, not a feed", "no xmlUrl (and no feeds inside)"),
    ]
    inoreader = plan_import(read_opml(read("inoreader.opml"), "i"), [], ImportOptions())
    assert [(x.line, x.reason, x.duplicate) for x in inoreader.left] == [
        (12, "same URL as the entry at line 9", True)
    ]


def test_titles_come_out_as_plain_text_in_any_encoding() -> None:
    titles = {
        name: [f.title for f in read_opml(read(name), name).feeds]
        for name in ("windows-1252.opml", "utf16.opml", "entities.opml", "bom-utf8.opml")
    }
    assert titles["windows-1252.opml"] == ["Les Échos – Finance €"]
    assert titles["utf16.opml"] == ["Новости — Коммерсантъ", "新华网 新闻"]
    assert titles["entities.opml"] == [
        "Tom & Jerry’s Weekly",  # &amp;amp; and escaped <b> markup in text, as the spec allows
        "Résumé Daily",  # HTML entities an XML parser does not know
        "Quotes \"and\" 'apostrophes'",
    ]
    assert titles["bom-utf8.opml"] == ["Detik.com – Berita"]
    assert read_opml(read("windows-1252.opml"), "w").title == "Exporté — Windows"
    thunderbird = read_opml(read("thunderbird.opml"), "t")
    assert thunderbird.title == "Thunderbird OPML Export - Blogs & News Feeds"
    assert thunderbird.feeds[0].html_url == "https://www.theguardian.com/world"


def test_odd_entries_are_refused_with_a_clear_reason_or_named_apart() -> None:
    existing = [ExistingFeed("medcom-internasional", ("https://www.medcom.id/rss/internasional",))]
    plan = plan_import(read_opml(read("odd.opml"), "odd.opml"), existing, ImportOptions())
    assert [(f.name, f.url) for f in plan.add] == [
        ("tech-news", "https://technews.example.com/rss"),
        ("tech-news-2", "https://other.example.org/tech.xml"),  # collide after slugging
        ("tech-news-3", "https://third.example.net/feed"),
        ("padded", "https://padded.example.com/feed.xml"),  # surrounding whitespace trimmed
        ("untitled-example-news-rss-xml", "https://www.untitled.example/news/rss.xml"),
        ("emoji-example-feed", "https://emoji.example/feed"),
        ("evil-channels-evil-type-console", "https://evil.example/feed"),
        ("an-extremely-long-title-that-goes-on-and-on-well-past-any", "https://long.example/feed"),
    ]
    reasons = {left.line: left.reason for left in plan.left}
    assert reasons == {
        8: "same URL as the entry at line 5",  # HTTP, host case, :443, trailing slash
        9: "same URL as the entry at line 5",  # a fragment
        10: "URL contains a space or a control character (percent-encode it, e.g. %20)",
        13: "feed: URLs are a browser hint, not an address; use the http(s) URL it stands for",
        14: "only http:// and https:// feeds can be imported (javascript:)",
        15: "only http:// and https:// feeds can be imported (data:)",
        16: "only http:// and https:// feeds can be imported (file:)",
        17: "only http:// and https:// feeds can be imported (no scheme)",
        18: "URL has no host",
        19: "not a valid URL (Port out of range 0-65535)",
        20: "URL contains ${…}, which siar would fill from its environment; refused",
        21: "no xmlUrl (and no feeds inside)",
        22: "no xmlUrl (and no feeds inside)",
        25: "a feed named 'medcom-internasional' is already configured (add it by hand if it differs)",
        28: 'type="json" is a JSON Feed, not an RSS/Atom feed',
        29: "no xmlUrl (and no feeds inside)",
    }


@pytest.mark.parametrize("name", ["billion-laughs.opml", "external-entity.opml"])
def test_entity_bombs_and_external_entities_are_refused_quickly(name: str) -> None:
    started = time.monotonic()
    with pytest.raises(OpmlError, match="declares XML entities or external resources"):
        read_opml(read(name), name)
    assert time.monotonic() - started < 1


def test_no_external_dtd_or_entity_is_ever_fetched(feed_server: FeedServer) -> None:
    feed_server.routes["/evil.dtd"] = Route(b'<!ENTITY x "boom">', content_type="application/xml-dtd")
    outline = '<body><outline text="a" type="rss" xmlUrl="https://a.example/f"/></body></opml>'
    dtd = f'<!DOCTYPE opml SYSTEM "{feed_server.url("/evil.dtd")}"><opml version="2.0">{outline}'
    assert [f.title for f in read_opml(dtd.encode(), "dtd").feeds] == ["a"]
    entity = (
        f'<!DOCTYPE opml [<!ENTITY e SYSTEM "{feed_server.url("/evil.dtd")}">]>'
        f'<opml version="2.0"><head><title>&e;</title></head>{outline}'
    )
    with pytest.raises(OpmlError):
        read_opml(entity.encode(), "entity")
    assert feed_server.requests == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (read("not-opml.xml"), "not an OPML document (root element <rss>)"),
        (read("truncated.opml"), "not well-formed XML (unclosed token"),
        (b'<?xml version="1.0" encoding="x-klingon"?><opml/>', "unknown text encoding 'x-klingon'"),
        (b'<?xml version="1.0" encoding="base64"?><opml/>', "unknown text encoding 'base64'"),
        (b"<opml><head><title>caf\xe9</title></head></opml>", "not valid utf-8 text (byte 22)"),
        (b"x" * (MAX_OPML_BYTES + 1), "larger than 10 MiB"),
        (
            b"<opml><body>" + b"<outline/>" * (MAX_OUTLINES + 1) + b"</body></opml>",
            f"more than {MAX_OUTLINES} outlines",
        ),
    ],
    ids=["rss", "truncated", "unknown-encoding", "bytes-codec", "bad-utf8", "too-large", "too-many"],
)
def test_unusable_files_are_refused_naming_the_file(data: bytes, message: str) -> None:
    with pytest.raises(OpmlError) as caught:
        read_opml(data, "upload.opml")
    assert str(caught.value).startswith("upload.opml: ")
    assert message in str(caught.value)


# --- names and URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "name"),
    [
        ("Medcom — Internasional", "medcom-internasional"),
        ("Kompas.com: Berita Terkini!", "kompas-com-berita-terkini"),
        ("Ελληνικά Νέα", "ellinika-nea"),
        ("Les Échos – Finance €", "les-echos-finance"),
        ("  --  ", "example-org-rss-news-xml"),
        ("🙂", "example-org-rss-news-xml"),
    ],
)
def test_feed_names_from_titles(title: str, name: str) -> None:
    assert feed_name(title, "https://www.example.org/rss/news.xml") == name


@given(st.text(max_size=300))
def test_every_derived_name_is_a_valid_feed_name(title: str) -> None:
    name = feed_name(title, "https://www.example.org/feed")
    assert 0 < len(name) <= 60
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in name)
    assert not name.startswith("-") and not name.endswith("-") and "--" not in name
    assert slug(name) == name


def test_many_feeds_with_one_title_get_numbered_names() -> None:
    body = "".join(f'<outline text="News" type="rss" xmlUrl="https://n{i}.example/rss"/>' for i in range(12))
    opml = read_opml(f"<opml><body>{body}</body></opml>".encode(), "news.opml")
    existing = [ExistingFeed("news-3", ("https://elsewhere.example/",))]
    names = [f.name for f in plan_import(opml, existing, ImportOptions()).add]
    assert names[:4] == ["news", "news-2", "news-4", "news-5"]
    assert len(set(names)) == 12


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://Example.COM/feed/", "https://example.com/feed", True),
        ("http://example.com/feed", "https://example.com:443/feed", True),
        ("https://example.com/feed#x", "https://example.com/feed", True),
        ("https://bücher.example/rss", "https://xn--bcher-kva.example/rss", True),
        ("https://example.com/Feed", "https://example.com/feed", False),  # paths keep their case
        ("https://example.com/feed?lang=id", "https://example.com/feed?lang=en", False),
        ("https://example.com:8443/feed", "https://example.com/feed", False),
    ],
)
def test_url_normalisation_for_duplicates(a: str, b: str, same: bool) -> None:
    assert (url_key(a) == url_key(b)) is same


def test_a_configured_feed_matches_by_its_expanded_url_too() -> None:
    opml = read_opml(read("feedly.opml"), "feedly.opml")
    existing = [ExistingFeed("bbc", ("${BBC_URL}", "http://feeds.bbci.co.uk/news/world/rss.xml/"))]
    plan = plan_import(opml, existing, ImportOptions())
    assert [f.name for f in plan.add] == [
        "al-jazeera-breaking-news-world-news-and-video-from-al",
        "ars-technica-all-content",
    ]
    assert plan.left[0].reason == "same URL as configured feed 'bbc'"


def test_url_problems() -> None:
    assert url_problem("https://example.com/feed?q=a%20b") is None
    assert url_problem("https://example.com/" + "a" * 2100) == "URL longer than 2048 characters"
    assert url_problem("https://example.com/\x00") is not None
    assert url_problem("feed:https://example.com/rss") is not None


# --- the config file -------------------------------------------------------------------------


def test_import_into_the_shipped_config_keeps_every_other_byte(
    config_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = config_copy.read_text(encoding="utf-8")
    assert import_feeds(load_config(config_copy), str(OPML / "odd.opml"), ImportOptions(), False) == 0
    after = config_copy.read_text(encoding="utf-8")
    added = inserted(before, after)
    # Right after the existing feed's last key, before the comment that introduces the console.
    assert after.index(added) < after.index("# Prints every post in a readable block.")
    assert "\n# Prints every post in a readable block. Needs no account" in after
    config = load_config(config_copy)
    assert [f.name for f in config.feeds][:2] == ["medcom-internasional", "tech-news"]
    assert len(config.feeds) == 9
    assert {f.first_run for f in config.feeds[1:]} == {"skip"}
    # A title cannot break out of its comment: the outline that tried adds no table of its own.
    assert "evil" not in config.channels
    evil = next(line for line in added.splitlines() if "[channels.evil]" in line)
    assert evil.startswith("# OPML: ")
    assert "added 8 feed(s)" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_each_reader_export_imports_into_a_loadable_config(
    name: str, config_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = config_copy.read_text(encoding="utf-8")
    options = ImportOptions(interval="15m", section_from_category=True)
    assert import_feeds(load_config(config_copy), str(OPML / name), options, False) == 0
    inserted(before, config_copy.read_text(encoding="utf-8"))
    config = load_config(config_copy)
    assert [(f.name, f.url) for f in config.feeds[1:]] == [(n, u) for n, u, _ in EXPORTS[name]]
    assert {f.interval for f in config.feeds[1:]} == {900.0}
    sections = [f.section for f in config.feeds[1:]]
    assert sections == [_innermost(category) for _, _, category in EXPORTS[name]]


def _innermost(category: str) -> str | None:
    first = category.split(", ")[0]
    return first.replace(" / ", "/").strip("/").rsplit("/", 1)[-1] or None


def test_without_the_flag_the_folder_is_only_a_comment(config_copy: Path) -> None:
    before = config_copy.read_text(encoding="utf-8")
    import_feeds(load_config(config_copy), str(OPML / "netnewswire.opml"), ImportOptions(), False)
    added = inserted(before, config_copy.read_text(encoding="utf-8"))
    assert '# OPML: "NASA Breaking News" (Science / Space)\n[[feeds]]\nname = "nasa-breaking-news"' in added
    assert "section" not in added
    assert all(f.section is None for f in load_config(config_copy).feeds)


LAYOUTS = {
    "no-feeds-yet": '[site]\nname = "x"  # kept\n\n# the console\n[channels.console]\ntype = "console"\n',
    "crlf": '# CRLF file\r\n[[feeds]]\r\nname = "a"\r\nurl = "https://a.example/"\r\n\r\n# next\r\n[cta]\r\n',
    "no-final-newline": '[[feeds]]\nname = "a"\nurl = "https://a.example/"',
    "feeds-last-with-trailing-comment": '[[feeds]]\nname = "a"\nurl = "https://a.example/"\n# bye\n',
    "header-inside-a-string": (
        '[[feeds]]\nname = "a"\nurl = "https://a.example/"\n\n[cta]\nfollow_text = """\n'
        '[[feeds]]\nnot a table\n"""\n'
    ),
    "empty": "",
    "comments-only": "# nothing configured yet\n",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_tables_are_added_in_any_layout_without_touching_the_rest(layout: str, tmp_path: Path) -> None:
    old = LAYOUTS[layout]
    path = tmp_path / "config.toml"
    new_feeds = [NewFeed("b", "https://b.example/feed", "B", "Folder", None, 3)]
    options = ImportOptions()
    newline = "\r\n" if layout == "crlf" else "\n"
    block = render_tables(new_feeds, options, "b.opml", TODAY, newline)
    new = add_tables(old, block, [table_values(f, options) for f in new_feeds], path)
    added = inserted(old, new)
    assert "[[feeds]]" in added
    if layout == "crlf":
        assert "\n" not in new.replace("\r\n", "")
    path.write_text(new, encoding="utf-8", newline="")
    assert [f.name for f in load_config(path).feeds][-1] == "b"


def test_tables_that_would_not_load_are_not_written(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    old = '[[feeds]]\nname = "a"\nurl = "https://a.example/"\n'
    bad = ImportOptions(first_run="sometimes")  # what the CLI refuses before it gets here
    feeds = [NewFeed("b", "https://b.example/", "B", "", None, 1)]
    block = render_tables(feeds, bad, "x.opml", TODAY)
    with pytest.raises(ImportConflict) as caught:
        add_tables(old, block, [table_values(f, bad) for f in feeds], path)
    assert caught.value.problems[0].startswith(f"{path}:11: feeds[1].first_run: must be")
    inline = 'feeds = [{ name = "a", url = "https://a.example/" }]\n'
    with pytest.raises(ImportConflict, match="not written as \\[\\[feeds\\]\\] tables"):
        add_tables(inline, block, [table_values(f, bad) for f in feeds], path)


def test_the_file_is_replaced_atomically_keeping_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"# old\n")
    path.chmod(0o640)
    replace_file(path, b"# new\n", b"# old\n")
    assert path.read_bytes() == b"# new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]
    with pytest.raises(ImportConflict, match="changed while importing"):
        replace_file(path, b"# newer\n", b"# old\n")  # someone saved the file meanwhile
    assert path.read_bytes() == b"# new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_very_long_export_imports_in_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = "".join(
        f'<outline text="Folder {f}">'
        + "".join(
            f'<outline text="Daily News {i % 40}" type="rss" xmlUrl="https://f{f}.example/rss/{i}"/>'
            for i in range(50)
        )
        + "</outline>"
        for f in range(100)
    )
    opml = tmp_path / "big.opml"
    opml.write_text(f'<?xml version="1.0"?><opml version="2.0"><body>{folders}</body></opml>')
    path = tmp_path / "config.toml"
    path.write_text("")
    started = time.monotonic()
    assert import_feeds(load_config(path), str(opml), ImportOptions(), False) == 0
    config = load_config(path)
    elapsed = time.monotonic() - started
    assert len(config.feeds) == 5000
    assert len({f.name for f in config.feeds}) == 5000
    assert config.feeds[-1].name == "daily-news-9-200"  # "Daily News 9" for the 200th time
    assert elapsed < 30, f"importing 5,000 feeds took {elapsed:.1f}s"


# --- the command -----------------------------------------------------------------------------


def test_cli_dry_run_prints_the_tables_and_writes_nothing(config_copy: Path) -> None:
    before = config_copy.read_bytes()
    done = siar("feeds", "import", str(OPML / "feedly.opml"), "--dry-run", "--config", str(config_copy))
    assert done.returncode == 0, done.stderr
    assert "would add 3 feed(s)" in done.stdout
    assert (
        '[[feeds]]\nname = "bbc-news-world"\nurl = "http://feeds.bbci.co.uk/news/world/rss.xml"'
        in done.stdout
    )
    assert 'first_run = "skip"' in done.stdout
    assert config_copy.read_bytes() == before


def test_cli_import_twice_adds_once(config_copy: Path) -> None:
    first = siar(
        "--config", str(config_copy), "feeds", "import", str(OPML / "miniflux.opml"), "--interval", "10m"
    )
    assert first.returncode == 0, first.stderr
    assert "added 3 feed(s)" in first.stdout
    after_first = config_copy.read_bytes()
    second = siar("--config", str(config_copy), "feeds", "import", str(OPML / "miniflux.opml"))
    assert second.returncode == 0, second.stderr
    assert "nothing to add" in second.stdout
    assert "skipped 3 already configured" in second.stdout
    assert config_copy.read_bytes() == after_first
    checked = siar("check", "--config", str(config_copy))
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--first-run", "everything"], '--first-run: must be "skip", "all" or "latest:N"'),
        (["--interval", "1s"], "--interval: polling more often than every 10s is not polite"),
        (["--interval", "soon"], "--interval: 'soon' is not a duration"),
    ],
)
def test_cli_refuses_bad_options(config_copy: Path, args: list[str], message: str) -> None:
    done = siar("feeds", "import", str(OPML / "feedly.opml"), *args, "--config", str(config_copy))
    assert done.returncode == 2
    assert message in done.stderr


def test_cli_refuses_a_bomb_and_a_config_it_cannot_extend(tmp_path: Path, config_copy: Path) -> None:
    before = config_copy.read_bytes()
    bomb = siar("feeds", "import", str(OPML / "billion-laughs.opml"), "--config", str(config_copy))
    assert bomb.returncode == 2
    assert "billion-laughs.opml: declares XML entities" in bomb.stderr
    assert config_copy.read_bytes() == before
    inline = tmp_path / "inline.toml"
    inline.write_text('feeds = [{ name = "a", url = "https://a.example/" }]\n')
    done = siar("feeds", "import", str(OPML / "feedly.opml"), "--config", str(inline))
    assert done.returncode == 2
    assert "nothing written" in done.stderr and "not written as [[feeds]] tables" in done.stderr
    missing = siar("feeds", "import", str(tmp_path / "nope.opml"), "--config", str(config_copy))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr and "nope.opml" in missing.stderr


ROUND_TRIP_CONFIG = """\
[site]
name = "Newsroom"

[[feeds]]
name = "BBC_World"
url = "https://feeds.bbci.co.uk/news/world/rss.xml"
section = "Dunia"

[[feeds]]
name = "antara.terkini"
url = "https://www.antaranews.com/rss/terkini.xml"
interval = "10m"

[[feeds]]
name = "partner"
url = "https://partner.example/feed?key=${PARTNER_KEY}"

[[feeds]]
name = "local-sample"
url = "medcom-internasional.xml"
"""


def test_export_writes_opml2_with_urls_as_written(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(ROUND_TRIP_CONFIG)
    done = siar("feeds", "export", "--config", str(config), env={"PARTNER_KEY": "s3cret-partner-key"})
    assert done.returncode == 0, done.stderr
    assert "s3cret-partner-key" not in done.stdout + done.stderr
    root = SafeET.fromstring(done.stdout.encode())
    assert root.get("version") == "2.0"
    assert root.findtext("head/title") == "Newsroom feeds (siar)"
    created = parsedate_to_datetime(root.findtext("head/dateCreated") or "")
    assert abs(time.time() - created.timestamp()) < 120
    outlines = [o.attrib for o in root.iter("outline")]
    assert [(o["text"], o["type"], o["xmlUrl"]) for o in outlines] == [
        ("BBC_World", "rss", "https://feeds.bbci.co.uk/news/world/rss.xml"),
        ("antara.terkini", "rss", "https://www.antaranews.com/rss/terkini.xml"),
        ("partner", "rss", "https://partner.example/feed?key=${PARTNER_KEY}"),
        ("local-sample", "rss", "medcom-internasional.xml"),
    ]
    assert outlines[0]["category"] == "/Dunia"
    assert "htmlUrl" not in outlines[0]
    assert "feed partner: url written as in the file, ${…} unexpanded" in done.stderr
    assert "feed local-sample: medcom-internasional.xml is a local file" in done.stderr


def test_round_trip_export_then_import_into_an_empty_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTNER_KEY", "s3cret-partner-key")
    source = tmp_path / "source.toml"
    source.write_text(ROUND_TRIP_CONFIG)
    exported = tmp_path / "feeds.opml"
    env = {"PARTNER_KEY": "s3cret-partner-key"}
    done = siar("feeds", "export", "--output", str(exported), "--config", str(source), env=env)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o666 & ~_umask()
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    done = siar("feeds", "import", str(exported), "--section-from-category", "--config", str(empty), env=env)
    assert done.returncode == 0, done.stderr
    original = {f.name: (f.url, f.section) for f in load_config(source).feeds}
    back = {f.name: (f.url, f.section) for f in load_config(empty).feeds}
    plain = ("BBC_World", "antara.terkini")
    assert back == {name: original[name] for name in plain}
    assert "URL contains ${…}" in done.stdout  # partner: refused, never expanded
    assert "only http:// and https:// feeds can be imported (no scheme)" in done.stdout  # local file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
