"""Shared rendering: hashtags, dates, and fitting any story into any budget."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.channel import ChannelContext, HashtagSettings
from bot.counting import Budget, count_graphemes, count_utf16, graphemes
from bot.render import PostRenderer, RenderError, format_published, hashtag, hashtags
from bot.site import CTA, FollowLink, Site
from bot.types import Story

CONTEXT = ChannelContext(
    site=Site(),
    cta=CTA(
        follow_text="Ikuti media sosial kami",
        notify_text="Aktifkan notifikasi",
        follow_links=[FollowLink(label="IG", url="https://instagram.com/x")],
    ),
)
TEMPLATE = "{{ title }}\n\n{{ lead }}\n\n{{ url }}\n{{ hashtags }}\n\n{{ cta_follow }}"


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("vladimir putin", "VladimirPutin"),
        ("rusia", "Rusia"),
        ("konflik armenia-azerbaijan", "KonflikArmeniaAzerbaijan"),
        ("東京", "東京"),
        ("C++ & Rust", "CRust"),
        ("2020", None),
        ("  ", None),
        ("!!!", None),
        ("COVID-19", "COVID19"),
        ("Ünïcödé wörds", "ÜnïcödéWörds"),
        ("G20 summit", "G20Summit"),
    ],
)
def test_hashtag(tag: str, expected: str | None) -> None:
    assert hashtag(tag) == expected


def test_hashtags_dedup_exclude_map_and_max() -> None:
    tags = ["Rusia", "rusia", "vladimir putin", "Berita", "2020", "konflik armenia-azerbaijan", "PBB"]
    rules = HashtagSettings(max=3, exclude=["berita"], mapping={"PBB": "PerserikatanBangsaBangsa"})
    assert hashtags(tags, rules) == ["#Rusia", "#VladimirPutin", "#KonflikArmeniaAzerbaijan"]
    assert hashtags(["pbb"], rules) == ["#PerserikatanBangsaBangsa"]


@pytest.mark.parametrize(("limit", "expected"), [(0, []), (1, ["#Rusia"]), (2, ["#Rusia", "#Pbb"])])
def test_hashtags_max_is_exact_even_at_zero(limit: int, expected: list[str]) -> None:
    assert hashtags(["Rusia", "pbb", "moskow"], HashtagSettings(max=limit)) == expected


def test_published_in_site_zone_and_language() -> None:
    when = datetime(2020, 10, 9, 6, 53, tzinfo=UTC)
    assert format_published(when, "Asia/Jakarta", "id") == "Jumat, 9 Oktober 2020 13:53 WIB"
    assert format_published(when, "Europe/London", "en") == "Friday, 9 October 2020 07:53 BST"


def story(
    title: str = "Judul", lead: str = "Lead.", tags: tuple[str, ...] = (), url: str = "https://e.example/a"
) -> Story:
    return Story(uid="1", feed="f", url=url, title=title, lead=lead, tags=tags)


def test_fitting_drops_hashtags_then_shortens_lead_then_title() -> None:
    renderer = PostRenderer("t", TEMPLATE, CONTEXT, tag_settings=HashtagSettings(max=5))
    s = story(
        "Judul berita yang panjang sekali",
        "Kalimat satu dua tiga empat lima enam tujuh.",
        ("satu", "dua", "tiga"),
    )
    full, used, _ = renderer.fit(s, Budget("graphemes", 1000, count_graphemes))
    assert "#Satu #Dua #Tiga" in full
    text, used, values = renderer.fit(s, Budget("graphemes", used - 3, count_graphemes))
    assert values["hashtag_list"] == ["#Satu", "#Dua"] and values["lead"] == s.lead
    text, used, values = renderer.fit(s, Budget("graphemes", 110, count_graphemes))
    assert values["hashtag_list"] == [] and values["lead"].endswith("…")
    assert values["title"] == s.title and used <= 110
    text, used, values = renderer.fit(s, Budget("graphemes", 70, count_graphemes))
    assert values["lead"] == "" and values["title"].endswith("…") and used <= 70
    assert s.url in text


def test_template_errors_name_the_channel_and_line() -> None:
    with pytest.raises(RenderError, match=r"channel 'tg': template error at line 2"):
        PostRenderer("tg", "{{ title }}\n{% if %}", CONTEXT)
    # A misspelled variable fails when the channel is made (check, preview, run alike), not
    # at every post.
    with pytest.raises(RenderError, match=r"channel 'tg'.*no_such_thing"):
        PostRenderer("tg", "{{ title }}\n{{ no_such_thing }}", CONTEXT)


@pytest.mark.parametrize(
    "tag",
    [
        '{% include "x.j2" %}',
        '{% import "x.j2" as x %}',
        '{% from "x.j2" import y %}',
        '{% extends "base.j2" %}',
    ],
)
def test_templates_are_one_text(tag: str) -> None:
    """`{% include %}` once crashed preview with a TypeError while run started: now it is a
    template error naming the channel and line, wherever the template is loaded."""
    with pytest.raises(RenderError, match=r"channel 'tg': template error at line 2: .* is not available"):
        PostRenderer("tg", "{{ title }}\n" + tag, CONTEXT)


def test_a_filter_failing_on_a_value_is_a_render_error() -> None:
    with pytest.raises(RenderError, match=r"channel 'tg'"):
        PostRenderer("tg", "{{ title | round }}", CONTEXT)  # TypeError: a str has no round


def test_a_template_that_cannot_fit_is_an_error_not_a_cut_post() -> None:
    renderer = PostRenderer("tg", "x" * 50 + " {{ url }}", CONTEXT)
    with pytest.raises(RenderError, match="over the limit of 40"):
        renderer.fit(story(), Budget("graphemes", 40, count_graphemes))


def test_html_templates_escape_feed_text() -> None:
    renderer = PostRenderer("tg", "<b>{{ title }}</b> {{ lead }}", CONTEXT, html=True)
    text, _, _ = renderer.fit(story('<script>"x" & y</script>', "a < b"), Budget("utf16", 100, count_utf16))
    assert text == "<b>&lt;script&gt;&#34;x&#34; &amp; y&lt;/script&gt;</b> a &lt; b"


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=400)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=texts,
    lead=texts,
    tags=st.lists(texts, max_size=8),
    path=st.text("abcdefghijklmnopqrstuvwxyz0123456789-_/", min_size=1, max_size=80),
    limit=st.integers(min_value=60, max_value=600),
)
def test_any_story_fits_any_budget_with_its_url_whole(
    title: str, lead: str, tags: list[str], path: str, limit: int
) -> None:
    url = f"https://news.example/{path}"
    renderer = PostRenderer(
        "t",
        "{{ title }}\n{{ lead }}\n{{ url }}\n{{ hashtags }}",
        CONTEXT,
        tag_settings=HashtagSettings(max=8),
    )
    text, used, values = renderer.fit(
        story(title, lead, tuple(tags), url), Budget("graphemes", limit, count_graphemes)
    )
    assert used == count_graphemes(text) <= limit
    assert url in text
    for tag in values["hashtag_list"]:
        assert tag in text
    # a shortened title or lead is a prefix of whole grapheme clusters of the original
    for field, original in (("title", title), ("lead", lead)):
        value: str = values[field]
        if value.endswith("…") and value != original:
            kept = graphemes(value[:-1])
            assert graphemes(original)[: len(kept)] == kept or original.startswith(value[:-1].rstrip())
