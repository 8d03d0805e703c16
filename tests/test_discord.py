"""The Discord channel: the story as an embed within Discord's limits, posted to a strict local fake."""

from __future__ import annotations

import dataclasses
import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import App, build
from bot.channel import ChannelContext, ChannelError, Permanent, RetryLater, Uncertain
from bot.cleaning import CleaningRules
from bot.config import Config
from bot.daemon import prepare
from bot.normalize import parse_feed
from bot.site import CTA, FollowLink, Site
from bot.types import Story
from channels import discord
from tests.conftest import SAMPLE
from tests.fake_discord import TOKEN, WEBHOOK_ID, Answer, FakeDiscord, check_message
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route

CTA_TEXTS = CTA(
    follow_text="Ikuti media sosial medcom.id",
    follow_links=[FollowLink(label="Instagram", url="https://www.instagram.com/medcom.id")],
    notify_text="Aktifkan notifikasi",
    notify_url="https://www.medcom.id/push/",
)
CONTEXT = ChannelContext(site=Site(name="medcom.id"), cta=CTA_TEXTS)


def sample_stories() -> list[Story]:
    return parse_feed(
        SAMPLE.read_bytes(), "https://www.medcom.id/rss/internasional", {}, CleaningRules(), "medcom"
    ).stories


def story_by(uid: str) -> Story:
    return next(s for s in sample_stories() if s.uid == uid)


def channel(
    url: str = f"https://discord.com/api/webhooks/{WEBHOOK_ID}/{TOKEN}",
    context: ChannelContext = CONTEXT,
    **overrides: Any,
) -> discord.DiscordChannel:
    values: dict[str, Any] = {"type": "discord", "webhook_url": url, "timeout": 3, **overrides}
    return discord.create("discord", discord.Settings.model_validate(values), context)


@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    with FakeDiscord() as server:
        yield server


def payload_of(post: Any) -> dict[str, Any]:
    body = {
        "content": post.text,
        "embeds": [post.to_dict()["extra"]["embed"]],
        "allowed_mentions": {"parse": []},
    }
    return body


# --- rendering ---------------------------------------------------------------------------------


def test_seed_story_embed() -> None:
    story = story_by("medcom-4KZ9mA2b")
    post = channel(color="#E4002B", username="medcom.id").render(story)
    embed = post.to_dict()["extra"]["embed"]
    assert embed["title"] == "Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian"
    assert embed["url"] == story.url
    assert embed["description"] == story.lead  # nothing in it needed escaping
    assert embed["image"] == {"url": story.image}
    assert embed["footer"] == {"text": "medcom.id · Internasional"}
    assert embed["author"] == {"name": "Marcheilla Ariesta"}
    assert embed["timestamp"] == "2020-10-09T06:53:00+00:00"
    assert embed["color"] == 0xE4002B
    assert post.text == (
        "Ikuti media sosial medcom.id · [Instagram](<https://www.instagram.com/medcom.id>)"
        "\nAktifkan notifikasi: <https://www.medcom.id/push/>"
    )
    assert post.to_dict()["extra"]["username"] == "medcom.id"
    assert discord.embed_length(embed) <= discord.EMBED_TOTAL_MAX
    assert post.length.used == len(post.text) and post.length.limit == 2000
    assert check_message(payload_of(post)) is None


def test_hostile_text_cannot_ping_or_format() -> None:
    story = dataclasses.replace(
        story_by("medcom-Qw9Er5Ty"), lead="@everyone **gratis** [klik](https://evil.example) <@123>\n# Judul"
    )
    post = channel().render(story)
    description = post.to_dict()["extra"]["embed"]["description"]
    assert description == (
        "@everyone \\*\\*gratis\\*\\* \\[klik\\](https://evil.example) \\<@123\\>\n\\# Judul"
    )
    assert "image" not in post.to_dict()["extra"]["embed"]  # the story has none


def test_long_texts_are_cut_at_words_within_limits() -> None:
    words = "kata " * 3000
    story = Story(
        uid="1",
        feed="f",
        url="https://e.example/1",
        title=words,
        lead=words * 2,
        author="Penulis " * 100,
        section="Seksi " * 400,
    )
    context = ChannelContext(site=Site(name="S" * 3000), cta=CTA(follow_text="ikuti " * 1000))
    post = channel(context=context).render(story)
    embed = post.to_dict()["extra"]["embed"]
    assert len(embed["title"]) <= 256 and embed["title"].endswith("kata…")
    assert len(embed["author"]["name"]) <= 256 and len(embed["footer"]["text"]) <= 2048
    assert discord.embed_length(embed) <= 6000 and embed["description"].endswith("…")
    assert len(post.text) <= 2000
    assert check_message(payload_of(post)) is None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=st.text(max_size=600),
    lead=st.text(max_size=7000),
    author=st.text(max_size=300),
    section=st.text(max_size=300),
    site=st.text(max_size=2100),
    follow=st.text(max_size=2100),
)
def test_any_story_fits_discord_limits(
    title: str, lead: str, author: str, section: str, site: str, follow: str
) -> None:
    context = ChannelContext(site=Site(name=site), cta=CTA(follow_text=follow))
    story = Story(
        uid="1",
        feed="f",
        url="https://e.example/a?b=c",
        title=title,
        lead=lead,
        author=author,
        section=section,
        published=datetime(2020, 1, 1, tzinfo=UTC),
    )
    post = channel(context=context).render(story)
    embed = post.to_dict()["extra"]["embed"]
    assert len(post.text) <= 2000 and embed["url"] == story.url
    assert len(embed.get("title", "")) <= 256 and len(embed.get("description", "")) <= 4096
    assert discord.embed_length(embed) <= 6000
    body = payload_of(post)
    if not body["content"]:
        del body["content"]
    assert check_message(body) is None


def test_colour_and_url_settings_are_validated() -> None:
    assert discord.Settings(type="discord", color="#00ff7F").color == 0x00FF7F  # type: ignore[arg-type]
    for bad in (
        {"color": "red"},
        {"color": 0x1000000},
        {"webhook_url": "discord.com/x"},
        {"api_base_url": "127.0.0.1:80"},
    ):
        with pytest.raises(ValueError) as caught:
            discord.Settings.model_validate({"type": "discord", **bad})
        assert "discord.com/x" not in str(caught.value).split("input_value")[0]


# --- the wire --------------------------------------------------------------------------------


async def test_posts_the_embed_and_waits_for_the_message(fake_discord: FakeDiscord) -> None:
    ch = channel(fake_discord.webhook_url, username="medcom.id", avatar_url="https://e.example/a.png")
    await ch.start()
    post = ch.render(story_by("medcom-4KZ9mA2b"))
    receipt = await ch.send(post, idempotency_key="siar-1")
    await ch.close()
    assert fake_discord.problems == []
    (seen,) = fake_discord.requests
    assert seen.path == f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}" and seen.query == {"wait": ["true"]}
    assert seen.body == {
        "content": post.text,
        "embeds": [post.to_dict()["extra"]["embed"]],
        "allowed_mentions": {"parse": []},
        "username": "medcom.id",
        "avatar_url": "https://e.example/a.png",
    }
    assert receipt.remote_id == "1170000000000000001"


async def test_api_base_url_replaces_the_host_and_keeps_the_query(fake_discord: FakeDiscord) -> None:
    ch = channel(
        f"https://discord.com/api/webhooks/{WEBHOOK_ID}/{TOKEN}?thread_id=42", api_base_url=fake_discord.base
    )
    await ch.send(ch.render(story_by("medcom-4KZ9mA2b")), idempotency_key="siar-1")
    await ch.close()
    assert fake_discord.requests[0].query == {"thread_id": ["42"], "wait": ["true"]}
    assert len(fake_discord.messages) == 1


@pytest.mark.parametrize(
    ("answer", "kind", "after", "words"),
    [
        (
            Answer(
                429,
                {"message": "You are being rate limited.", "retry_after": 12.5, "global": False},
                {"Retry-After": "13", "X-RateLimit-Reset-After": "12.5", "X-RateLimit-Remaining": "0"},
            ),
            RetryLater,
            13.0,
            "rate limit",
        ),
        (
            Answer(429, {"message": "You are being rate limited.", "retry_after": 64.2, "global": True}, {}),
            RetryLater,
            64.2,
            "(global)",
        ),
        (Answer(429, None, {"X-RateLimit-Reset-After": "3.5"}), RetryLater, 3.5, "429"),
        (Answer(502, None), RetryLater, None, "502"),
        (Answer(500, {"message": "Internal Server Error", "code": 0}), RetryLater, None, "500"),
        (Answer(401, {"message": "Invalid Webhook Token", "code": 50027}), Permanent, None, "50027"),
        (Answer(403, {"message": "Missing Access", "code": 50001}), Permanent, None, "403"),
        (Answer(404, {"message": "Unknown Webhook", "code": 10015}), Permanent, None, "deleted"),
        (
            Answer(
                400,
                {
                    "code": 50035,
                    "message": "Invalid Form Body",
                    "errors": {
                        "embeds": {
                            "0": {
                                "title": {
                                    "_errors": [
                                        {
                                            "code": "BASE_TYPE_MAX_LENGTH",
                                            "message": "Must be 256 or fewer in length.",
                                        }
                                    ]
                                }
                            }
                        }
                    },
                },
            ),
            Permanent,
            None,
            "embeds.0.title: Must be 256",
        ),
    ],
)
async def test_platform_answers_map_to_outcomes(
    fake_discord: FakeDiscord, answer: Answer, kind: type[ChannelError], after: float | None, words: str
) -> None:
    fake_discord.script.append(answer)
    ch = channel(fake_discord.webhook_url)
    with pytest.raises(kind) as caught:
        await ch.send(ch.render(story_by("medcom-4KZ9mA2b")), idempotency_key="siar-1")
    await ch.close()
    assert words in caught.value.reason and TOKEN not in caught.value.reason
    if isinstance(caught.value, RetryLater):
        assert caught.value.after == after


async def test_a_real_deleted_webhook_is_permanent(fake_discord: FakeDiscord) -> None:
    ch = channel(fake_discord.webhook_url.replace(WEBHOOK_ID, "1"))
    with pytest.raises(Permanent, match="Unknown Webhook"):
        await ch.send(ch.render(story_by("medcom-4KZ9mA2b")), idempotency_key="siar-1")
    await ch.close()
    assert fake_discord.problems == ["unknown webhook"]


async def test_empty_bucket_waits_before_the_next_message(fake_discord: FakeDiscord) -> None:
    fake_discord.remaining, fake_discord.reset_after = 1, "0.6"  # empty for 0.6s after a success
    ch = channel(fake_discord.webhook_url)
    post = ch.render(story_by("medcom-4KZ9mA2b"))
    await ch.send(post, idempotency_key="siar-1")
    fake_discord.remaining = 1000
    started = time.monotonic()
    await ch.send(post, idempotency_key="siar-2")
    assert time.monotonic() - started >= 0.55  # slept instead of collecting a 429
    await ch.close()
    assert len(fake_discord.messages) == 2 and fake_discord.problems == []


async def test_a_long_empty_bucket_is_retry_later_without_a_request(fake_discord: FakeDiscord) -> None:
    ch = channel(fake_discord.webhook_url)
    ch._note_bucket({"x-ratelimit-remaining": "0", "x-ratelimit-reset-after": "60"})
    with pytest.raises(RetryLater) as caught:
        await ch.send(ch.render(story_by("medcom-4KZ9mA2b")), idempotency_key="siar-1")
    await ch.close()
    assert caught.value.after is not None and 58 < caught.value.after <= 60
    assert fake_discord.requests == []


async def test_read_timeout_after_sending_is_uncertain(fake_discord: FakeDiscord) -> None:
    fake_discord.hang = 1.5
    ch = channel(fake_discord.webhook_url, timeout=0.5)
    with pytest.raises(Uncertain) as caught:
        await ch.send(ch.render(story_by("medcom-4KZ9mA2b")), idempotency_key="siar-1")
    await ch.close()
    assert TOKEN not in caught.value.reason and len(fake_discord.requests) == 1


async def test_nothing_listening_is_retry_later() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = channel(f"http://127.0.0.1:{port}/api/webhooks/{WEBHOOK_ID}/{TOKEN}")
    with pytest.raises(RetryLater, match="cannot reach Discord") as caught:
        await ch.send(ch.render(story_by("medcom-4KZ9mA2b")), idempotency_key="siar-1")
    await ch.close()
    assert TOKEN not in caught.value.reason


# --- through config, store and dispatcher ----------------------------------------------------

CONFIG = """
    [site]
    name = "medcom.id"

    [cta]
    follow_text = "Ikuti kami"

    [daemon]
    retry_base = "30s"

    [[feeds]]
    name = "medcom"
    url = "FEED"
    first_run = "all"

    [channels.discord]
    type = "discord"
    webhook_url = "${DISCORD_WEBHOOK_URL}"
    color = "#E4002B"
    rate_limit = "1000/s"
    timeout = "3s"
"""


@pytest.fixture
def discord_app(
    fake_discord: FakeDiscord,
    feed_server: FeedServer,
    sample_bytes: bytes,
    make_config: Callable[[str], Config],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    feed_server.routes["/intl"] = Route(body=sample_bytes)
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", fake_discord.webhook_url)

    async def start() -> tuple[App, Clock]:
        config = make_config(textwrap.dedent(CONFIG.replace("FEED", feed_server.url("/intl"))))
        assert TOKEN in config.secrets or fake_discord.webhook_url in config.secrets
        clock = Clock()
        app = build(config, clock=clock)
        await prepare(app)
        await app.poller.poll(config.feeds[0], force=True)
        return app, clock

    return start


async def rows(app: App) -> list[dict[str, Any]]:
    out = []
    for story in sorted(sample_stories(), key=lambda s: s.published or datetime.min.replace(tzinfo=UTC)):
        (found,) = await app.store.stories.find(story.url)
        (item,) = await app.store.stories.outbox_of(found["id"])
        decisions = [d["decision"] for d in await app.store.stories.decisions_of(found["id"])]
        out.append({**item, "decisions": decisions, "story": story})
    return out


async def test_sample_feed_end_to_end(discord_app: Callable[..., Any], fake_discord: FakeDiscord) -> None:
    app, _ = await discord_app()
    try:
        await app.dispatcher.drain()
        items = await rows(app)
        assert [m["embeds"][0]["title"] for m in fake_discord.messages] == [
            " ".join(i["story"].title.split()) for i in items
        ]
        assert all(
            m["content"] == "Ikuti kami"
            and m["allowed_mentions"] == {"parse": []}
            and m["embeds"][0]["color"] == 0xE4002B
            for m in fake_discord.messages
        )
        assert fake_discord.problems == []
        assert all(i["status"] == "sent" and i["remote_id"] for i in items)
        await app.dispatcher.drain()
        assert len(fake_discord.requests) == 4
    finally:
        await app.close()


async def test_rate_limited_then_sent(discord_app: Callable[..., Any], fake_discord: FakeDiscord) -> None:
    fake_discord.script.append(
        Answer(
            429,
            {"message": "You are being rate limited.", "retry_after": 7.25, "global": False},
            {"Retry-After": "8"},
        )
    )
    app, clock = await discord_app()
    try:
        await app.dispatcher.drain()
        first = (await rows(app))[0]
        assert first["status"] == "pending"
        assert (first["next_attempt_at"] - clock.now).total_seconds() == 8
        clock.advance(8)
        await app.dispatcher.drain()
        first = (await rows(app))[0]
        assert first["status"] == "sent" and first["decisions"] == ["queued", "retry", "sent"]
        assert len(fake_discord.messages) == 4 and len(fake_discord.requests) == 5
    finally:
        await app.close()


async def test_deleted_webhook_fails_and_alerts(
    discord_app: Callable[..., Any], fake_discord: FakeDiscord
) -> None:
    fake_discord.script.append(Answer(404, {"message": "Unknown Webhook", "code": 10015}))
    app, _ = await discord_app()
    alerts: list[str] = []

    async def alert(name: str, message: str) -> None:
        alerts.append(message)

    app.dispatcher.alert = alert
    try:
        await app.dispatcher.drain()
        first = (await rows(app))[0]
        assert first["status"] == "failed" and "Unknown Webhook" in first["last_error"]
        assert len(alerts) == 1 and TOKEN not in alerts[0]
    finally:
        await app.close()
