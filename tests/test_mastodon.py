"""The Mastodon channel against a strict local fake of the API (and mastodon_mock end to end)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.channel import ChannelContext, Permanent, RetryLater, Uncertain
from bot.cleaning import CleaningRules
from bot.config import Config
from bot.counting import count_mastodon
from bot.net import guard_for_story
from bot.normalize import parse_feed
from bot.site import CTA, Site
from bot.types import Story
from channels.mastodon import MastodonChannel, Settings, create, outgoing_key
from tests.fake_mastodon import FakeMastodon, Fault, mastodon_length
from tests.feedserver import FeedServer, Route

SAMPLE = Path(__file__).parent / "data" / "medcom-internasional.xml"
CONTEXT = ChannelContext(site=Site(name="medcom.id", language="id"), cta=CTA())


def sample_story() -> Story:
    feed = parse_feed(
        SAMPLE.read_bytes(), "https://www.medcom.id/rss/internasional", {}, CleaningRules(), "medcom"
    )
    return feed.stories[0]


@pytest.fixture
def fake() -> Iterator[FakeMastodon]:
    with FakeMastodon() as server:
        yield server


def channel_for(
    base: str, token: str = "secret-token", config: Config | None = None, **keys: object
) -> MastodonChannel:
    settings = Settings.model_validate({"type": "mastodon", "instance": base, "access_token": token, **keys})
    # a fresh context each time: instance limits are cached per context
    context = ChannelContext(
        site=CONTEXT.site, cta=CONTEXT.cta, guard_for=lambda feed: guard_for_story(config, feed)
    )
    return create("masto", settings, context)


def feed_on(story: Story, server: FeedServer) -> Config:
    """A config whose feed (the story's) lives on `server`: its images there pass the address guard."""
    return Config.model_validate({"feeds": [{"name": story.feed, "url": server.url("/feed.xml")}]})


@pytest.fixture
async def channel(fake: FakeMastodon) -> AsyncIterator[MastodonChannel]:
    ch = channel_for(fake.base)
    await ch.start()
    yield ch
    await ch.close()


async def test_sample_story_posted_with_headers_language_and_hashtags(
    fake: FakeMastodon, channel: MastodonChannel
) -> None:
    story = sample_story()
    post = channel.render(story)
    receipt = await channel.send(post, idempotency_key="siar-7")
    assert receipt.remote_id == "100" and receipt.url.endswith("/100")
    (status,) = fake.statuses
    assert status["content"] == post.text
    assert story.url in status["content"]
    assert "#VladimirPutin #Rusia #KonflikArmeniaAzerbaijan" in status["content"]
    assert status["language"] == "id" and status["visibility"] == "public"
    assert post.length.used == mastodon_length(post.text, 23) <= 500
    method, path, headers = fake.requests[-1]
    assert (method, path) == ("POST", "/api/v1/statuses")
    assert headers["authorization"] == "Bearer secret-token"
    assert headers["idempotency-key"] == outgoing_key("siar-7", story)
    assert headers["idempotency-key"].startswith("siar-7-")


async def test_same_row_twice_is_one_status(fake: FakeMastodon, channel: MastodonChannel) -> None:
    post = channel.render(sample_story())
    first = await channel.send(post, idempotency_key="siar-1")
    again = await channel.send(post, idempotency_key="siar-1")
    assert first == again and len(fake.statuses) == 1
    await channel.send(post, idempotency_key="siar-2")
    assert len(fake.statuses) == 2


async def test_instance_limits_are_read_once_and_used_for_rendering(fake: FakeMastodon) -> None:
    fake.max_characters, fake.url_length = 140, 10
    ch = channel_for(fake.base)
    story = sample_story()
    assert ch.render(story).length.limit == 500  # defaults before start()
    await ch.start()
    post = ch.render(story)
    assert post.length.limit == 140 and post.length.used <= 140
    assert post.length.used == count_mastodon(post.text, 10) == mastodon_length(post.text, 10)
    assert story.url in post.text
    await ch.send(post, idempotency_key="siar-1")
    await ch.send(ch.render(story), idempotency_key="siar-2")
    assert sum(1 for _, p, _ in fake.requests if p.endswith("/instance")) == 1
    await ch.close()


@pytest.mark.parametrize(("v2", "v1", "expected"), [(False, True, 140), (False, False, 500)])
async def test_instance_limits_fall_back_to_v1_then_defaults(
    fake: FakeMastodon, v2: bool, v1: bool, expected: int
) -> None:
    fake.max_characters, fake.v2_instance, fake.v1_instance = 140, v2, v1
    ch = channel_for(fake.base)
    await ch.start()
    assert ch.render(sample_story()).length.limit == expected
    await ch.close()


async def test_too_long_text_is_refused_by_the_fake(fake: FakeMastodon, channel: MastodonChannel) -> None:
    """The fake is strict: a post over the limit (bypassing render) is a 422 -> Permanent with its text."""
    post = channel.render(sample_story())
    long_post = post.__class__(**{**post.__dict__, "text": "kata " * 120})
    with pytest.raises(Permanent, match="character limit of 500"):
        await channel.send(long_post, idempotency_key="siar-9")
    assert fake.statuses == []


async def test_spoiler_text_counts_toward_the_limit(fake: FakeMastodon) -> None:
    fake.max_characters = 200
    ch = channel_for(fake.base, spoiler_text="Konflik bersenjata " * 5, sensitive=True)
    await ch.start()
    post = ch.render(sample_story())
    assert post.length.limit == 200 - len("Konflik bersenjata " * 5)
    await ch.send(post, idempotency_key="siar-1")
    assert fake.statuses[0]["spoiler_text"] == "Konflik bersenjata " * 5 and fake.statuses[0]["sensitive"]
    await ch.close()


async def test_429_waits_for_the_rate_limit_reset(fake: FakeMastodon, channel: MastodonChannel) -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=120)).isoformat().replace("+00:00", "Z")
    fake.faults.append(
        Fault(
            429,
            {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
            {"error": "Too many requests"},
        )
    )
    with pytest.raises(RetryLater) as caught:
        await channel.send(channel.render(sample_story()), idempotency_key="siar-1")
    assert caught.value.after is not None and 110 <= caught.value.after <= 120
    fake.faults.append(Fault(429, {"Retry-After": "33"}, {"error": "Too many requests"}))
    with pytest.raises(RetryLater) as caught:
        await channel.send(channel.render(sample_story()), idempotency_key="siar-1")
    assert caught.value.after == 33
    assert fake.statuses == []


async def test_5xx_after_create_then_retry_gives_the_first_status(
    fake: FakeMastodon, channel: MastodonChannel
) -> None:
    fake.faults.append(Fault(502, {}, {"error": "Bad gateway"}, after_create=True))
    post = channel.render(sample_story())
    with pytest.raises(RetryLater, match="502"):
        await channel.send(post, idempotency_key="siar-3")
    receipt = await channel.send(post, idempotency_key="siar-3")
    assert len(fake.statuses) == 1 and receipt.remote_id == fake.statuses[0]["id"]


async def test_ambiguous_failure_older_than_the_idempotency_window_is_uncertain(
    fake: FakeMastodon, channel: MastodonChannel
) -> None:
    fake.faults.append(Fault(503, {}, {"error": "Unavailable"}))
    post = channel.render(sample_story())
    with pytest.raises(RetryLater):
        await channel.send(post, idempotency_key="siar-4")
    key = outgoing_key("siar-4", post.story)
    channel._ambiguous[key] = time.monotonic() - 3600  # the first failure was an hour ago
    with pytest.raises(Uncertain):
        await channel.send(post, idempotency_key="siar-4")
    assert fake.statuses == []


async def test_401_is_permanent_and_never_shows_the_token(fake: FakeMastodon) -> None:
    ch = channel_for(fake.base, token="wrong-token-123")
    await ch.start()
    with pytest.raises(Permanent) as caught:
        await ch.send(ch.render(sample_story()), idempotency_key="siar-1")
    assert "401" in caught.value.reason and "wrong-token-123" not in caught.value.reason
    await ch.close()


async def test_network_error_is_retry_later() -> None:
    with FakeMastodon() as gone:
        base = gone.base
    ch = channel_for(base, timeout=2)
    await ch.start()  # never raises, keeps the defaults
    with pytest.raises(RetryLater, match="network"):
        await ch.send(ch.render(sample_story()), idempotency_key="siar-1")
    await ch.close()


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def test_image_upload_with_alt_text_and_no_token_to_the_image_host(fake: FakeMastodon) -> None:
    story = sample_story()
    with FeedServer() as images:
        images.routes["/putin.png"] = Route(body=_png(), content_type="image/png")
        story = Story(**{**story.__dict__, "image": images.url("/putin.png")})
        ch = channel_for(fake.base, upload_image=True, config=feed_on(story, images))
        await ch.start()
        post = ch.render(story)
        assert post.media == (story.image,)
        await ch.send(post, idempotency_key="siar-1")
        await ch.close()
        image_headers = images.requests[0][1]
    assert "authorization" not in image_headers
    (media,) = fake.media.values()
    assert media["description"] == story.image_alt and media["size"] == len(_png())
    assert fake.statuses[0]["media_ids"] == [media["id"]]
    assert any(p.startswith("/api/v1/media/") for _, p, _ in fake.requests)  # waited for processing


async def test_image_failure_posts_without_image(fake: FakeMastodon) -> None:
    with FeedServer() as images:
        story = Story(**{**sample_story().__dict__, "image": images.url("/missing.jpg"), "image_alt": ""})
        ch = channel_for(fake.base, upload_image=True, config=feed_on(story, images))
        await ch.start()
        await ch.send(ch.render(story), idempotency_key="siar-1")
        await ch.close()
        assert [p for p, _ in images.requests] == ["/missing.jpg"]
    assert fake.media == {} and fake.statuses[0]["media_ids"] == []


async def test_an_image_on_a_private_address_is_never_fetched(fake: FakeMastodon) -> None:
    with FeedServer() as images:
        images.routes["/putin.png"] = Route(body=_png(), content_type="image/png")
        story = Story(**{**sample_story().__dict__, "image": images.url("/putin.png")})
        ch = channel_for(fake.base, upload_image=True)  # no feed context: every private address refused
        await ch.start()
        await ch.send(ch.render(story), idempotency_key="siar-1")
        await ch.close()
        assert images.requests == []
    assert fake.media == {} and fake.statuses[0]["media_ids"] == []


def test_settings_validate_and_name_the_secret() -> None:
    assert Settings.secret_keys == ("access_token",)
    assert Settings(type="mastodon", instance="https://m.example/").instance == "https://m.example"
    with pytest.raises(ValueError, match="base URL"):
        Settings(type="mastodon", instance="m.example")
    with pytest.raises(ValueError):
        Settings.model_validate({"type": "mastodon", "instance": "https://m.example", "visibility": "all"})


async def test_end_to_end_with_mastodon_mock() -> None:
    """Against mastodon_mock (a stateful Mastodon API): post, read back, resend with the same key."""
    from mastodon_mock.testing import MockServer

    with MockServer() as server:
        ch = channel_for(server.base_url, token="alice_token", visibility="unlisted")
        await ch.start()
        story = sample_story()
        post = ch.render(story)
        receipt = await ch.send(post, idempotency_key="siar-11")
        again = await ch.send(post, idempotency_key="siar-11")
        await ch.close()
        client = server.client("alice")
        statuses = await asyncio.to_thread(client.account_statuses, client.me()["id"])
    assert again.remote_id == receipt.remote_id
    (status,) = statuses
    assert str(status["id"]) == receipt.remote_id
    assert status["visibility"] == "unlisted" and status["language"] == "id"
    assert story.url in status["content"] and "#VladimirPutin" in status["content"]


# --- property: any story fits any instance's limit --------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=400)
_tags = st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=30), max_size=8)
_urls = st.builds(
    lambda host, tld, path: f"https://{host}.{tld}/{path}",
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=30).filter(
        lambda h: not h.startswith("-") and not h.endswith("-")
    ),
    st.sampled_from(["com", "id", "co.id", "org", "news"]),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/", max_size=300),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=_text,
    lead=_text,
    tags=_tags,
    url=_urls,
    limit=st.integers(100, 1000),
    url_length=st.integers(5, 40),
)
def test_any_story_fits_the_instance_limit(
    title: str, lead: str, tags: list[str], url: str, limit: int, url_length: int
) -> None:
    ch = channel_for("https://m.example")
    ch.limits.max_characters, ch.limits.url_length, ch.limits.loaded = limit, url_length, True
    story = Story(uid="1", feed="f", url=url, title=title, lead=lead, tags=tuple(tags))
    post = ch.render(story)
    assert post.length.used == count_mastodon(post.text, url_length) <= limit
    assert url in post.text.split()
