"""Every platform from the shipped config.toml, side by side: the seed story renders within each
platform's own limit with its link and hashtags, and any story keeps Telegram's HTML valid."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import make_channels
from bot.channel import Channel
from bot.cleaning import CleaningRules
from bot.config import Config, load_config
from bot.counting import count_graphemes, count_mastodon, count_telegram, count_x
from bot.normalize import parse_feed
from bot.types import Post, Story
from tests.conftest import SAMPLE
from tests.fake_telegram import parse_html, utf16_len

ROOT = Path(__file__).parent.parent
HASHTAGS = ["#VladimirPutin", "#Rusia", "#KonflikArmeniaAzerbaijan"]


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The shipped config.toml, with a VAPID key so that the webpush channel can render too."""
    from py_vapid import Vapid

    vapid = Vapid()
    vapid.generate_keys()
    monkeypatch.setenv("SIAR_VAPID_PRIVATE_KEY", vapid.private_pem().decode())
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    return load_config(tmp_path / "config.toml")


def seed() -> Story:
    parsed = parse_feed(SAMPLE.read_bytes(), "https://www.medcom.id/rss", {}, CleaningRules(), "medcom")
    return parsed.stories[0]


def measured(post: Post) -> int:
    """The post's length by the platform's own rule, computed here independently of the channel."""
    counters = {
        "x": count_x,
        "mastodon": count_mastodon,
        "bluesky": count_graphemes,
        "telegram": count_telegram,
        "telegram-subscribers": count_telegram,
    }
    return counters.get(post.type, count_graphemes)(post.text)


def test_seed_story_renders_right_on_every_platform(shipped: Config) -> None:
    channels, unavailable = make_channels(shipped, include_disabled=True)
    assert unavailable == {}
    expected = {"console", "telegram", "pembaca", "x", "discord", "mastodon", "bluesky", "webpush"}
    assert expected <= set(channels)
    story = seed()
    for name, channel in channels.items():
        post = channel.render(story)
        assert post.length.used <= post.length.limit, name
        if post.type in ("x", "mastodon", "bluesky", "telegram", "telegram-subscribers", "console"):
            assert measured(post) == post.length.used, name
            # the link is in the text, or (Telegram) on the "Baca selengkapnya" button under it,
            # or (Bluesky) shown short with a facet carrying it
            assert (
                story.url in post.text
                or any(b.url == story.url for b in post.buttons)
                or any(f.kind == "link" and f.value == story.url for f in post.facets)
            ), name
            present = [tag for tag in HASHTAGS if tag in post.text]
            assert present == HASHTAGS[: len(present)] and present, name  # in order, as many as fit
        if post.type in ("telegram", "telegram-subscribers"):
            assert post.parse_mode == "HTML"
            plain, entities = parse_html(post.text)  # raises as Telegram would on bad HTML
            assert entities <= 100 and utf16_len(plain) <= post.length.limit
            assert any(b.url == story.url for b in post.buttons)
        if post.type == "bluesky":
            raw = post.text.encode()
            spans = {raw[f.start : f.end].decode(): f for f in post.facets}
            (link,) = [f for f in post.facets if f.kind == "link"]
            shown = raw[link.start : link.end].decode()
            assert link.value == story.url and shown.startswith("medcom.id/") and shown in post.text
            assert set(HASHTAGS) & set(spans)
        if post.type == "discord":
            assert post.to_dict()["extra"]["embed"]["url"] == story.url
        if post.type == "webpush":  # the body is the lead; title, link and image travel beside it
            extra = post.to_dict()["extra"]
            assert (extra["title"], extra["url"], extra["image"]) == (story.title, story.url, story.image)
            assert post.text and post.text in story.lead and count_graphemes(post.text) <= 200


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=1500)


@pytest.fixture
def telegram_channels(shipped: Config) -> dict[str, Channel]:
    channels, _ = make_channels(shipped, include_disabled=True)
    return {name: channels[name] for name in ("telegram", "pembaca")}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    title=texts,
    lead=texts,
    tags=st.lists(st.text(max_size=40), max_size=10),
    image=st.sampled_from(["", "https://cdn.example/a.jpg"]),
)
def test_any_story_is_valid_telegram_html_within_limits(
    telegram_channels: dict[str, Channel], title: str, lead: str, tags: list[str], image: str
) -> None:
    story = Story(
        uid="1",
        feed="f",
        url='https://www.medcom.id/internasional/x-1?a=<b>&c="d"',
        title=title,
        lead=lead,
        tags=tuple(tags),
        image=image,
    )
    for name, channel in telegram_channels.items():
        post = channel.render(story)
        plain, entities = parse_html(post.text)  # raises as Telegram would on bad HTML
        limit = 1024 if post.media else 4096
        assert utf16_len(plain) == post.length.used <= min(limit, post.length.limit), name
        assert entities <= 100
        assert any(b.url == story.url for b in post.buttons) or html.escape(story.url) in post.text
