"""Any story renders within Meta's rules, measured by the fake's own counters (independent of the
channels' budgets): Facebook's message, Instagram's caption (2,200 characters, 30 hashtags,
20 @ tags, ending with the call to action and the link text), Threads' 500 with emoji as bytes,
5 links and a topic tag it accepts."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.channel import ChannelContext
from bot.config import HttpConfig
from bot.site import CTA, Site
from bot.types import Story
from channels.meta import facebook, instagram, threads
from tests.fake_graph_rules import (
    ig_caption_problem,
    is_web_url,
    threads_length,
    threads_links,
    threads_topic_problem,
)

FOLLOW = "Ikuti media sosial medcom.id dan dapatkan berbagai keuntungan 📲"
CONTEXT = ChannelContext(
    site=Site(name="medcom.id", url="https://www.medcom.id"),
    cta=CTA(follow_text=FOLLOW),
    base_dir=Path("/nonexistent"),
    http=HttpConfig(public_url="https://www.medcom.id/siar/"),
)
FB = facebook.create("fb", facebook.Settings(type="facebook", page_id="1", access_token="t"), CONTEXT)  # type: ignore[arg-type]
IG = instagram.create(
    "ig",
    instagram.Settings.model_validate(
        {"type": "instagram", "account_id": 1, "access_token": "t", "hashtags": {"max": 30}}
    ),
    CONTEXT,
)
THREADS = [
    threads.create(
        f"th-{media}",
        threads.Settings.model_validate(
            {"type": "threads", "account_id": 1, "access_token": "t", "media": media}
        ),
        CONTEXT,
    )
    for media in ("text", "card")
]

# Text with what makes captions hard: emoji and flags, CJK, RTL, combining marks, hashtags,
# @ tags, bare domains and URLs.
pieces = st.sampled_from(
    [
        "#Berita",
        "@medcom.id",
        "detik.com",
        "https://x.co/a",
        "🇮🇩",
        "👨‍👩‍👧",
        "東京",
        "مرحبا",
        "é",
        "#",
        "\n",
        " ",
    ]
)
texts = st.lists(
    st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30), pieces),
    max_size=120,
).map("".join)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=texts.filter(lambda t: t.strip() != ""),
    lead=texts,
    tags=st.lists(st.text(max_size=30), max_size=40),
    section=st.text(max_size=60),
)
def test_any_story_renders_within_every_meta_rule(
    title: str, lead: str, tags: list[str], section: str
) -> None:
    story = Story(
        uid="p",
        feed="f",
        url="https://www.medcom.id/internasional/dunia/a-story-with-a-long-path-0123456789",
        title=title,
        lead=lead,
        tags=tuple(tags),
        section=section,
        image="https://cdn.example/a.jpg",
    )
    post = FB.render(story)
    assert 0 < len(post.text) <= 63206 and post.length.used == len(post.text)

    post = IG.render(story)
    assert ig_caption_problem(post.text, 2200, 30, 20) is None, post.text
    assert post.text.endswith("Baca selengkapnya: link di bio") and FOLLOW in post.text
    assert is_web_url(post.media[0]) and post.media[0].startswith("https://www.medcom.id/siar/cards/")

    for channel in THREADS:
        post = channel.render(story)
        payload = post.to_dict()["extra"]
        assert threads_length(post.text) == post.length.used <= 500, post.text
        assert threads_links(post.text, payload.get("link_attachment", "")) <= 5, post.text
        tag = payload.get("topic_tag", "")
        assert not tag or threads_topic_problem(tag) is None, tag
        assert len(payload.get("alt_text", "")) <= 1000
