"""The X channel: rendering within X's weighted 280, and posting to a strict local fake of X."""

from __future__ import annotations

import dataclasses
import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import App, build
from bot.backoff import MAX_RETRY_AFTER
from bot.channel import (
    AlreadyDone,
    ChannelContext,
    ChannelError,
    HashtagSettings,
    Permanent,
    RetryLater,
    Uncertain,
)
from bot.cleaning import CleaningRules
from bot.config import Config
from bot.counting import count_x
from bot.daemon import prepare
from bot.normalize import parse_feed
from bot.site import CTA, Site
from bot.types import Length, Post, Story
from channels import x
from tests.conftest import SAMPLE
from tests.fake_x import KEYS, Answer, FakeX, oauth_signature
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route

FOLLOW = "Ikuti media sosial medcom.id dan dapatkan berbagai keuntungan"
CONTEXT = ChannelContext(site=Site(name="medcom.id"), cta=CTA(follow_text=FOLLOW))
SEED_TAGS = "#VladimirPutin #Rusia #KonflikArmeniaAzerbaijan"


def sample_stories() -> list[Story]:
    parsed = parse_feed(
        SAMPLE.read_bytes(), "https://www.medcom.id/rss/internasional", {}, CleaningRules(), "medcom"
    )
    return parsed.stories


def seed_story() -> Story:
    return next(s for s in sample_stories() if s.uid == "medcom-4KZ9mA2b")


def channel(
    base: str = "https://api.twitter.com", context: ChannelContext = CONTEXT, **overrides: Any
) -> x.XChannel:
    values: dict[str, Any] = {"type": "x", **KEYS, "api_base_url": base, "timeout": 3, **overrides}
    return x.create("x", x.Settings.model_validate(values), context)


@pytest.fixture
def fake_x() -> Iterator[FakeX]:
    with FakeX() as server:
        yield server


def post_of(text: str) -> Post:
    story = Story(uid="1", feed="f", url="https://e.example/1", title="t")
    return Post(channel="x", type="x", story=story, text=text, length=Length("weighted", count_x(text), 280))


# --- rendering ---------------------------------------------------------------------------------


def test_seed_story_fits_with_link_hashtags_and_cta() -> None:
    story = seed_story()
    post = channel().render(story)
    assert post.text == (
        f"Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian\n\n{story.url}\n{SEED_TAGS}\n\n{FOLLOW}"
    )
    assert post.length.used == count_x(post.text) <= 280 and post.length.limit == 280
    assert post.length.used == 206  # the 112-character link counts 23, as on X


def test_hashtags_are_kept_as_many_as_fit_and_the_cta_goes_first() -> None:
    story = seed_story()
    tags = SEED_TAGS.split()
    ch = channel()
    seen_counts = set()
    cta_dropped = False
    # Lengthen the title word by word: the CTA must go before any hashtag, then hashtags go
    # from the end, and the kept ones are always the most that fit.
    for words in range(0, 40):
        longer = dataclasses.replace(story, title=story.title + " kata" * words)
        post = ch.render(longer)
        assert story.url in post.text and post.length.used <= 280
        kept = list(post.payload.hashtags)  # type: ignore[union-attr]
        assert kept == tags[: len(kept)] and " ".join(kept) in post.text
        seen_counts.add(len(kept))
        if FOLLOW in post.text:
            assert kept == tags and not cta_dropped
            continue
        cta_dropped = True
        if len(kept) < len(tags) and longer.title in post.text:
            values = {**ch.renderer.variables(longer), "cta_follow": "", "cta_notify": "", "cta_links": []}
            richer = ch.renderer.render({**values, "hashtags": " ".join(tags[: len(kept) + 1])})
            assert count_x(richer) > 280  # one more would not have fit
    assert cta_dropped and seen_counts == {0, 1, 2, 3}


def test_feed_text_cannot_mention_accounts() -> None:
    story = next(s for s in sample_stories() if s.uid == "medcom-Qw9Er5Ty")
    post = channel().render(story)
    assert "@semua" not in post.text and "@\u200bsemua" in post.text
    assert post.story.title.endswith("@semua")  # the stored story is untouched


def test_a_custom_short_cta_and_template() -> None:
    post = channel(cta="Ikuti @medcom_id").render(seed_story())
    assert post.text.endswith("\n\nIkuti @medcom_id")  # the operator's own text is not defused
    post = channel(template="{{ title }} {{ url }}").render(seed_story())
    assert post.text == f"{seed_story().title} {seed_story().url}"


urls = st.builds(
    lambda host, path: f"https://{host}.example/{path}",
    st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_%./~-]{0,300}", fullmatch=True),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=st.text(max_size=400),
    lead=st.text(max_size=400),
    url=urls,
    tags=st.lists(st.text(max_size=40), max_size=6),
    follow=st.text(max_size=120),
)
def test_any_story_fits_280_with_its_url_whole(
    title: str, lead: str, url: str, tags: list[str], follow: str
) -> None:
    context = ChannelContext(site=Site(), cta=CTA(follow_text=follow))
    ch = x.create("x", x.Settings(type="x", hashtags=HashtagSettings(max=6)), context)
    post = ch.render(Story(uid="1", feed="f", url=url, title=title, lead=lead, tags=tuple(tags)))
    assert count_x(post.text) == post.length.used <= 280
    assert url in post.text


# --- the wire --------------------------------------------------------------------------------


async def test_post_is_signed_and_sent_as_json(fake_x: FakeX) -> None:
    ch = channel(fake_x.base)
    await ch.start()
    post = ch.render(seed_story())
    receipt = await ch.send(post, idempotency_key="siar-1")
    await ch.close()
    assert fake_x.posts == [post.text] and fake_x.problems == []
    (seen,) = fake_x.requests
    assert (seen.method, seen.path, seen.body) == ("POST", "/2/tweets", {"text": post.text})
    auth = seen.headers["authorization"]
    assert auth.startswith("OAuth ")
    for key in ("oauth_consumer_key", "oauth_signature", "oauth_nonce", "oauth_timestamp", "oauth_token"):
        assert f'{key}="' in auth
    assert seen.oauth["oauth_consumer_key"] == KEYS["consumer_key"]
    assert seen.oauth["oauth_token"] == KEYS["access_token"]
    assert abs(int(seen.oauth["oauth_timestamp"]) - time.time()) < 60
    # signed for the URL really requested (the fake verified it; check the check can fail)
    assert seen.oauth["oauth_signature"] != oauth_signature(
        "POST",
        "https://api.twitter.com/2/tweets",
        seen.oauth,
        KEYS["consumer_secret"],
        KEYS["access_token_secret"],
    )
    assert KEYS["consumer_secret"] not in auth and KEYS["access_token_secret"] not in auth
    assert receipt.remote_id and receipt.url == f"https://x.com/i/web/status/{receipt.remote_id}"


async def test_wrong_secret_is_permanent_and_never_shows_the_keys(fake_x: FakeX) -> None:
    ch = channel(fake_x.base, consumer_secret="not-the-right-secret")
    with pytest.raises(Permanent) as caught:
        await ch.send(ch.render(seed_story()), idempotency_key="siar-1")
    await ch.close()
    assert "401" in caught.value.reason and "Read and Write" in caught.value.reason
    assert fake_x.problems == ["bad signature"] and fake_x.posts == []
    for secret in [*KEYS.values(), "not-the-right-secret"]:
        assert secret not in caught.value.reason


async def test_over_280_is_refused_by_the_fake_like_x(fake_x: FakeX) -> None:
    ch = channel(fake_x.base)
    with pytest.raises(Permanent, match=r"403 Forbidden.*too long"):
        await ch.send(post_of("a" * 281), idempotency_key="siar-1")
    await ch.send(post_of("a" * 280), idempotency_key="siar-2")
    await ch.close()
    assert fake_x.posts == ["a" * 280]


async def test_duplicate_content_is_already_done(fake_x: FakeX) -> None:
    ch = channel(fake_x.base)
    post = ch.render(seed_story())
    await ch.send(post, idempotency_key="siar-1")
    with pytest.raises(AlreadyDone, match="duplicate"):
        await ch.send(post, idempotency_key="siar-2")
    await ch.close()
    assert fake_x.posts == [post.text]


@pytest.mark.parametrize(
    ("answer", "kind", "after", "words"),
    [
        (
            Answer(
                429,
                {"title": "Too Many Requests", "detail": "Too Many Requests"},
                {"x-rate-limit-remaining": "0", "x-rate-limit-reset": "{now+120}"},
            ),
            RetryLater,
            121,
            "429",
        ),
        (Answer(429, {"title": "Too Many Requests"}, {"retry-after": "30"}), RetryLater, 31, "429"),
        (
            Answer(
                429,
                {"title": "Too Many Requests"},
                {
                    "x-rate-limit-remaining": "99",
                    "x-rate-limit-reset": "{now+60}",
                    "x-user-limit-24hour-remaining": "0",
                    "x-user-limit-24hour-reset": "{now+7200}",
                },
            ),
            RetryLater,
            7201,
            "429",
        ),
        (Answer(503, {"title": "Service Unavailable"}), RetryLater, None, "503"),
        (Answer(500, {}), RetryLater, None, "500"),
        (
            Answer(
                403,
                {
                    "detail": "You are not permitted to perform this action.",
                    "title": "Forbidden",
                    "status": 403,
                },
            ),
            Permanent,
            None,
            "not permitted",
        ),
        (
            Answer(401, {"title": "Unauthorized", "detail": "Unauthorized", "status": 401}),
            Permanent,
            None,
            "401",
        ),
        (Answer(400, {"errors": [{"message": "bad"}], "title": "Invalid Request"}), Permanent, None, "400"),
    ],
)
async def test_platform_errors_map_to_outcomes(
    fake_x: FakeX, answer: Answer, kind: type[ChannelError], after: float | None, words: str
) -> None:
    now = int(time.time())
    answer.headers = {
        k: str(now + int(v[5:-1])) if v.startswith("{now+") else v for k, v in answer.headers.items()
    }
    fake_x.script.append(answer)
    ch = channel(fake_x.base)
    with pytest.raises(kind) as caught:
        await ch.send(ch.render(seed_story()), idempotency_key="siar-1")
    await ch.close()
    assert words in caught.value.reason
    if isinstance(caught.value, RetryLater):
        if after is None:
            assert caught.value.after is None
        else:
            assert caught.value.after is not None and after - 3 <= caught.value.after <= after + 1
    assert fake_x.posts == []


def test_rate_limit_wait_table() -> None:
    now = 1_000_000.0
    assert x.rate_limit_wait({}, now) is None
    assert x.rate_limit_wait({"x-rate-limit-reset": "1000100"}, now) == 101
    assert x.rate_limit_wait({"x-rate-limit-reset": "999000"}, now) == 1  # already past: soon
    assert x.rate_limit_wait({"Retry-After": "Thu, 01 Jan 1970 11:46:40 GMT"}, now) == 1
    assert (
        x.rate_limit_wait(
            {"retry-after": "5", "x-rate-limit-reset": "1000050", "x-rate-limit-remaining": "0"}, now
        )
        == 51
    )
    assert (
        x.rate_limit_wait(
            {"x-app-limit-24hour-reset": str(now + 10 * 86400), "x-app-limit-24hour-remaining": "0"}, now
        )
        == MAX_RETRY_AFTER
    )  # one cap for all


async def test_read_timeout_after_sending_is_uncertain(fake_x: FakeX) -> None:
    fake_x.hang = 1.5
    ch = channel(fake_x.base, timeout=0.5)
    with pytest.raises(Uncertain, match="did not answer"):
        await ch.send(ch.render(seed_story()), idempotency_key="siar-1")
    await ch.close()
    assert len(fake_x.requests) == 1  # it did reach X


async def test_nothing_listening_is_retry_later() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = channel(f"http://127.0.0.1:{port}")
    with pytest.raises(RetryLater, match="cannot connect"):
        await ch.send(ch.render(seed_story()), idempotency_key="siar-1")
    await ch.close()


# --- through config, store and dispatcher ----------------------------------------------------

CONFIG = """
    [site]
    name = "medcom.id"
    timezone = "Asia/Jakarta"

    [cta]
    follow_text = "FOLLOW"

    [daemon]
    retry_base = "30s"

    [[feeds]]
    name = "medcom"
    url = "FEED"
    first_run = "all"

    [channels.x]
    type = "x"
    consumer_key = "${X_CONSUMER_KEY}"
    consumer_secret = "${X_CONSUMER_SECRET}"
    access_token = "${X_ACCESS_TOKEN}"
    access_token_secret = "${X_ACCESS_TOKEN_SECRET}"
    api_base_url = "BASE"
    rate_limit = "1000/s"
    timeout = "3s"
    EXTRA
"""


@pytest.fixture
def x_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in KEYS.items():
        monkeypatch.setenv(f"X_{key.upper()}", value)


@pytest.fixture
def x_app(
    fake_x: FakeX,
    feed_server: FeedServer,
    sample_bytes: bytes,
    make_config: Callable[[str], Config],
    x_env: None,
) -> Callable[..., Any]:
    feed_server.routes["/intl"] = Route(body=sample_bytes)
    apps: list[App] = []

    async def start(extra: str = "", clock: Clock | None = None) -> tuple[App, Clock]:
        text = (
            CONFIG.replace("FEED", feed_server.url("/intl"))
            .replace("BASE", fake_x.base)
            .replace("FOLLOW", FOLLOW)
            .replace("EXTRA", textwrap.dedent(extra).strip())
        )
        config = make_config(text)
        clock = clock or Clock()
        app = build(config, clock=clock)
        apps.append(app)
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


async def test_sample_feed_end_to_end(x_app: Callable[..., Any], fake_x: FakeX) -> None:
    app, _ = await x_app()
    try:
        await app.dispatcher.drain()
        items = await rows(app)
        # every story exactly once, oldest first, each exactly as rendered
        assert fake_x.posts == [app.channels["x"].render(i["story"]).text for i in items]
        assert len(fake_x.posts) == 4 and fake_x.problems == []
        assert SEED_TAGS in fake_x.posts[-1] and seed_story().url in fake_x.posts[-1]
        assert all(
            i["status"] == "sent" and i["remote_id"] and i["decisions"] == ["queued", "sent"] for i in items
        )
        await app.dispatcher.drain()
        assert len(fake_x.requests) == 4
    finally:
        await app.close()


async def test_rate_limited_then_sent_after_the_reset(x_app: Callable[..., Any], fake_x: FakeX) -> None:
    fake_x.script.append(
        Answer(
            429,
            {"title": "Too Many Requests"},
            {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(time.time()) + 300)},
        )
    )
    app, clock = await x_app()
    try:
        await app.dispatcher.drain()
        first = (await rows(app))[0]
        assert first["status"] == "pending" and "429" in first["last_error"]
        wait = (first["next_attempt_at"] - clock.now).total_seconds()
        assert 297 <= wait <= 302
        assert len(fake_x.posts) == 3  # the others went out
        clock.advance(wait)
        await app.dispatcher.drain()
        first = (await rows(app))[0]
        assert (first["status"], first["attempts"]) == ("sent", 2)
        assert first["decisions"] == ["queued", "retry", "sent"]
        assert len(fake_x.posts) == 4 and len(fake_x.requests) == 5
    finally:
        await app.close()


async def test_duplicate_counts_as_sent(x_app: Callable[..., Any], fake_x: FakeX) -> None:
    app, _ = await x_app()
    try:
        seed = next(i for i in await rows(app) if i["story"].uid == "medcom-4KZ9mA2b")
        fake_x.posts.append(app.channels["x"].render(seed["story"]).text)  # posted before a crash
        await app.dispatcher.drain()
        seed = next(i for i in await rows(app) if i["story"].uid == "medcom-4KZ9mA2b")
        assert seed["status"] == "sent" and seed["decisions"] == ["queued", "already_sent"]
        assert seed["remote_id"] is None
        assert fake_x.problems == ["duplicate"] and len(fake_x.posts) == 4
    finally:
        await app.close()


async def test_daily_cap_defers_to_local_midnight(x_app: Callable[..., Any], fake_x: FakeX) -> None:
    # 2020-10-09 07:00 UTC is 14:00 in Jakarta; the next local midnight is 17:00 UTC
    app, clock = await x_app('daily_cap = 2\non_cap = "defer"')
    try:
        await app.dispatcher.drain()
        items = await rows(app)
        assert [i["status"] for i in items] == ["sent", "sent", "pending", "pending"]
        for item in items[2:]:
            assert "daily cap of 2 reached" in item["last_error"]
            assert item["next_attempt_at"] == datetime(2020, 10, 9, 17, 0, 1, tzinfo=UTC)
        assert len(fake_x.requests) == 2  # the cap is checked before anything is sent
        clock.advance(9 * 3600 + 59 * 60)  # 16:59 UTC: still the same local day
        await app.dispatcher.drain()
        assert len(fake_x.requests) == 2
        clock.now = datetime(2020, 10, 9, 17, 0, 1, tzinfo=UTC)
        await app.dispatcher.drain()
        assert [i["status"] for i in await rows(app)] == ["sent"] * 4
        assert len(fake_x.posts) == 4
    finally:
        await app.close()


async def test_daily_cap_skip_records_the_drop(x_app: Callable[..., Any], fake_x: FakeX) -> None:
    app, _ = await x_app('daily_cap = 3\non_cap = "skip"')
    try:
        await app.dispatcher.drain()
        items = await rows(app)
        assert [i["status"] for i in items] == ["sent", "sent", "sent", "failed"]
        assert items[3]["last_error"].startswith("daily cap of 3 reached")
        assert items[3]["decisions"] == ["queued", "failed"]
        assert len(fake_x.posts) == 3
    finally:
        await app.close()


async def test_daily_cap_counts_only_posts_x_created(x_app: Callable[..., Any], fake_x: FakeX) -> None:
    app, _ = await x_app('daily_cap = 4\non_cap = "skip"')
    try:
        seed = next(i for i in await rows(app) if i["story"].uid == "medcom-4KZ9mA2b")
        fake_x.posts.append(app.channels["x"].render(seed["story"]).text)
        await app.dispatcher.drain()
        assert [i["status"] for i in await rows(app)] == ["sent"] * 4
        ch = app.channels["x"]
        assert isinstance(ch, x.XChannel)
        midnight, _ = x.local_day(app.clock(), "Asia/Jakarta")
        assert await ch._sent_since(midnight) == 3  # the duplicate created no post
        assert await ch.quotas.used(ch.quota_key, midnight.date()) == 3  # and gave its slot back
        assert await ch._sent_since(midnight + timedelta(days=1)) == 0
    finally:
        await app.close()


def test_missing_secret_disables_only_this_channel(
    make_config: Callable[[str], Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in KEYS:
        monkeypatch.setenv(f"X_{key.upper()}", "set")
    monkeypatch.delenv("X_ACCESS_TOKEN_SECRET")
    config = make_config(
        CONFIG.replace("FEED", "https://e.example/f")
        .replace("BASE", "https://api.x.com")
        .replace("FOLLOW", "f")
        .replace("EXTRA", "")
    )
    assert "X_ACCESS_TOKEN_SECRET" in config.disabled["x"]
