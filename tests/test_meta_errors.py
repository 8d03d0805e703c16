"""Meta's refusals, mapped: rate limits and usage headers, tokens (invalid, expired, expiring),
permissions, blocks, temporary errors, media fetch failures, containers that fail or expire,
the publishing limits, and lost answers — looked up, never resent blindly."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.channel import Permanent, RetryLater, Unauthorized, Uncertain
from bot.types import Story
from channels.meta.errors import classify
from channels.meta.graph import GraphFailure, usage_pause
from tests.fake_graph import (
    APP_ID,
    APP_SECRET,
    PAGE_ID,
    PAGE_TOKEN,
    THREADS_USER_ID,
    ContainerPlan,
    Fault,
    blocked,
    lost_answer,
    rate_limited,
    server_error,
    transient,
)
from tests.meta_world import World, jpeg, seed_story, world

DAY = 86400


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, ig_quota=2, threads_quota=2) as w:
        yield w


def story(w: World, n: int = 0) -> Story:
    url = w.meta.serve_image("lead.jpg", jpeg(1200, 800))
    base = seed_story()
    return dataclasses.replace(base, uid=f"{base.uid}-{n}", title=f"{base.title} ({n})", image=url)


def count(w: World, endpoint: str) -> int:
    return sum(1 for r in w.meta.requests if r.endpoint == endpoint)


# --- rate limits and usage ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80001])
async def test_rate_limits_wait_for_the_regain_time_and_hold_the_channel(w: World, code: int) -> None:
    channel = await w.start(w.facebook())
    w.meta.fail(rate_limited(code, on="POST feed", regain_minutes=7))
    with pytest.raises(RetryLater) as caught:
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert caught.value.after == 7 * 60 and caught.value.attempt is False
    assert "rate limit" in caught.value.reason
    before = len(w.meta.requests)
    with pytest.raises(RetryLater):  # held: no request until the time has passed
        await channel.send(channel.render(story(w, 1)), idempotency_key="2")
    assert len(w.meta.requests) == before
    w.meta.advance(7 * 60 + 1)
    await channel.send(channel.render(story(w, 2)), idempotency_key="3")
    assert len(w.meta.page.posts) == 1


async def test_usage_headers_slow_the_channel_down_before_the_limit(w: World) -> None:
    channel = await w.start(w.facebook())
    w.meta.usage = {"call_count": 93, "total_cputime": 10, "total_time": 12}
    await channel.send(channel.render(story(w)), idempotency_key="1")  # the answer reads 93 %
    with pytest.raises(RetryLater, match="93% of the hourly allowance") as caught:
        await channel.send(channel.render(story(w, 1)), idempotency_key="2")
    assert caught.value.after and caught.value.after > 200 and caught.value.attempt is False
    assert len(w.meta.page.posts) == 1


def test_usage_pause_table() -> None:
    assert usage_pause(10, 0) == 0
    assert usage_pause(80, 0) == 60
    assert usage_pause(95, 0) == 300 and usage_pause(95, 1200) == 1200
    assert usage_pause(100, 0) == 600 and usage_pause(100, 420) == 420


# --- tokens --------------------------------------------------------------------------------------


async def test_refused_token_is_alerted_once_and_the_channel_waits(w: World) -> None:
    channel = await w.start(w.facebook())
    w.meta.revoke(PAGE_TOKEN, 460)
    for n in range(3):
        with pytest.raises(RetryLater, match="waiting for a new access token") as caught:
            await channel.send(channel.render(story(w, n)), idempotency_key=str(n))
        assert caught.value.attempt is False
    assert len(w.alerts) == 1
    source, message = w.alerts[0]
    assert source == "fb" and "password was changed" in message and "/me/accounts" in message
    assert count(w, "POST feed") == 1  # the others waited without trying
    assert PAGE_TOKEN not in message


async def test_expired_token_fails_start_saying_how_to_renew(w: World) -> None:
    w.meta.add_token(
        "THshort",
        host="threads",
        user_id=THREADS_USER_ID,
        expires_in=3600,
        scopes={"threads_basic", "threads_content_publish"},
    )
    channel = w.threads(access_token="THshort")
    w.meta.advance(3601)
    for _ in range(2):
        with pytest.raises(Unauthorized, match=r"token expired.*th_refresh_token"):
            await channel.start()
    assert w.alerts == []  # the dispatcher alerts once for a channel that cannot start
    with pytest.raises(RetryLater, match="waiting for a new access token"):  # posts wait
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert count(w, "POST threads") == 0


async def test_token_expiring_within_7_days_is_alerted_once_with_how_to_renew(w: World) -> None:
    channel = await w.start(w.threads())
    assert w.alerts == []  # 60 days left
    w.meta.advance(54 * DAY)
    await channel.send(channel.render(story(w)), idempotency_key="1")  # a day passed: checked again
    assert len(w.alerts) == 1 and "expires on" in w.alerts[0][1] and "th_refresh_token" in w.alerts[0][1]
    await channel.check_token()
    assert len(w.alerts) == 1
    assert count(w, "GET debug_token") == 3


async def test_token_without_a_permission_names_it_at_start(w: World) -> None:
    w.meta.add_token("EAAweak", kind="PAGE", profile_id=PAGE_ID, scopes={"pages_read_engagement"})
    channel = w.facebook(access_token="EAAweak")
    with pytest.raises(Unauthorized, match="pages_manage_posts"):
        await channel.start()


async def test_app_token_reads_debug_token(w: World) -> None:
    await w.start(w.facebook(app_token=f"{APP_ID}|{APP_SECRET}"))
    (seen,) = [r for r in w.meta.requests if r.endpoint == "GET debug_token"]
    assert seen.token == f"{APP_ID}|{APP_SECRET}" and seen.status == 200


# --- permissions, blocks, temporary errors ----------------------------------------------------------


async def test_missing_permission_is_permanent_and_named(w: World) -> None:
    w.meta.add_token("THnopub", host="threads", user_id=THREADS_USER_ID, scopes={"threads_basic"})
    channel = w.threads(access_token="THnopub")
    with pytest.raises(Permanent, match="threads_content_publish") as at_start:
        await channel.start()
    assert isinstance(at_start.value, Unauthorized)
    w.meta.fail(
        Fault(10, on="POST media", message="(#10) Application does not have permission for this action")
    )
    ig = w.instagram()
    await ig.start()
    with pytest.raises(Permanent, match="missing permission instagram_basic, instagram_content_publish"):
        await ig.send(ig.render(story(w)), idempotency_key="1")
    w.meta.fail(
        Fault(
            200,
            on="POST feed",
            message="(#200) If posting to a page, requires both pages_read_engagement and pages_manage_posts",
        )
    )
    fb = w.facebook()
    await fb.start()
    with pytest.raises(Permanent, match="pages_read_engagement, pages_manage_posts"):
        await fb.send(fb.render(story(w)), idempotency_key="2")


async def test_blocked_368_holds_for_hours_and_alerts_once(w: World) -> None:
    channel = await w.start(w.instagram())
    w.meta.fail(blocked(on="POST media"))
    with pytest.raises(RetryLater, match="temporarily blocked") as caught:
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert caught.value.after == 6 * 3600
    with pytest.raises(RetryLater, match="temporarily blocked"):
        await channel.send(channel.render(story(w, 1)), idempotency_key="2")
    assert len(w.alerts) == 1 and count(w, "POST media") == 1


@pytest.mark.parametrize("code", [1, 2])
async def test_temporary_errors_are_retried(w: World, code: int) -> None:
    channel = await w.start(w.threads())
    w.meta.fail(transient(code, on="POST threads"))
    with pytest.raises(RetryLater) as caught:
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert caught.value.attempt is True and f"code {code}" in caught.value.reason
    await channel.send(channel.render(story(w)), idempotency_key="1")
    assert len(w.meta.threads.published) == 1


async def test_card_meta_cannot_fetch_is_retried_naming_public_url(w: World) -> None:
    w.http = w.http.model_copy(update={"public_url": "http://127.0.0.1:9/"})  # nothing listens there
    channel = await w.start(w.instagram())
    with pytest.raises(RetryLater, match="public_url") as caught:
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert "9004/2207052" in caught.value.reason and caught.value.attempt is True
    assert w.meta.instagram.published == []


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (GraphFailure(400, 36003, "aspect ratio", 2207009), Permanent),
        (GraphFailure(400, -2, "Timeout", 2207003), RetryLater),
        (GraphFailure(400, 100, "Invalid parameter"), Permanent),
        (GraphFailure(400, 506, "(#506) Duplicate status message"), Exception),
        (GraphFailure(400, 190, "expired", 463), Unauthorized),
        (GraphFailure(403, 4, "limit", transient=True), RetryLater),
        (GraphFailure(502, 0, "<html>"), RetryLater),
    ],
)
def test_classify_table(failure: GraphFailure, kind: type[Exception]) -> None:
    assert isinstance(classify(failure, "Facebook", "posting"), kind)


# --- containers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "plan", "reason"),
    [
        ("instagram", ContainerPlan(1, "ERROR", 2207052), "2207052: Meta could not fetch the card"),
        ("instagram", ContainerPlan(0, "EXPIRED"), "expired"),
        ("threads", ContainerPlan(0, "ERROR", "UNKNOWN"), "container ERROR: UNKNOWN"),
        ("threads", ContainerPlan(2, "EXPIRED"), "expired"),
    ],
)
async def test_container_error_or_expired_fails_with_the_reason(
    w: World, platform: str, plan: ContainerPlan, reason: str
) -> None:
    channel = await w.start(w.instagram() if platform == "instagram" else w.threads())
    account = w.meta.instagram if platform == "instagram" else w.meta.threads
    account.plans.append(plan)
    with pytest.raises(Permanent, match=reason):
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert account.published == []


async def test_container_still_in_progress_is_retried_later(w: World) -> None:
    channel = await w.start(w.instagram(poll_timeout=0.05))
    w.meta.instagram.plans.append(ContainerPlan(in_progress_polls=1000))
    with pytest.raises(RetryLater, match="still IN_PROGRESS"):
        await channel.send(channel.render(story(w)), idempotency_key="1")


# --- publishing limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["instagram", "threads"])
async def test_publishing_limit_defers_until_the_oldest_post_leaves_the_window(
    w: World, platform: str
) -> None:
    channel = await w.start(w.instagram() if platform == "instagram" else w.threads())
    for n in range(2):
        await channel.send(channel.render(story(w, n)), idempotency_key=str(n))
        w.meta.advance(3600)
    with pytest.raises(RetryLater, match="publishing limit reached \\(2 of 2") as caught:
        await channel.send(channel.render(story(w, 3)), idempotency_key="3")
    assert caught.value.attempt is False
    assert caught.value.after == pytest.approx(DAY - 2 * 3600 + 60, abs=5)
    assert caught.value.after is not None
    w.meta.advance(caught.value.after)
    await channel.send(channel.render(story(w, 3)), idempotency_key="3")


@pytest.mark.parametrize("platform", ["instagram", "threads"])
async def test_publishing_limit_skip_drops_the_post(w: World, platform: str) -> None:
    channel = await w.start(
        w.instagram(on_cap="skip") if platform == "instagram" else w.threads(on_cap="skip")
    )
    for n in range(2):
        await channel.send(channel.render(story(w, n)), idempotency_key=str(n))
    with pytest.raises(Permanent, match='on_cap = "skip"'):
        await channel.send(channel.render(story(w, 3)), idempotency_key="3")
    create = "POST media" if platform == "instagram" else "POST threads"
    assert count(w, create) == 2  # no container made for the dropped post


async def test_limit_reached_between_check_and_publish_is_the_cap_too(w: World) -> None:
    channel = await w.start(w.instagram())
    w.meta.fail(Fault(9, on="POST media_publish", subcode=2207042))
    with pytest.raises(RetryLater, match="publishing limit") as caught:
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert caught.value.attempt is False


# --- lost answers ------------------------------------------------------------------------------------


async def test_lost_answer_after_feed_is_found_on_the_page(w: World) -> None:
    channel = await w.start(w.facebook())
    w.meta.fail(lost_answer("POST feed"))
    receipt = await channel.send(channel.render(story(w)), idempotency_key="1")
    (arrived,) = w.meta.page.posts
    assert receipt.remote_id == arrived.id and "lost answer" in receipt.note
    assert count(w, "POST feed") == 1  # never sent twice


async def test_lost_answer_that_cannot_be_looked_up_is_uncertain(w: World) -> None:
    channel = await w.start(w.facebook())
    w.meta.fail(lost_answer("POST feed"), transient(2, on="GET feed"))
    with pytest.raises(Uncertain, match="siar resend"):
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert count(w, "POST feed") == 1


async def test_feed_temporary_error_after_posting_is_found_not_repeated(w: World) -> None:
    channel = await w.start(w.facebook())
    w.meta.fail(Fault(2, on="POST feed", after=True, transient=True))
    receipt = await channel.send(channel.render(story(w)), idempotency_key="1")
    assert receipt.remote_id == w.meta.page.posts[0].id and len(w.meta.page.posts) == 1


async def test_feed_proxy_error_not_found_is_uncertain(w: World) -> None:
    channel = await w.start(w.facebook())
    w.meta.fail(server_error(on="POST feed"))
    with pytest.raises(Uncertain):
        await channel.send(channel.render(story(w)), idempotency_key="1")


@pytest.mark.parametrize("platform", ["instagram", "threads"])
async def test_lost_publish_answer_is_found_by_the_container(w: World, platform: str) -> None:
    channel = await w.start(w.instagram() if platform == "instagram" else w.threads())
    account = w.meta.instagram if platform == "instagram" else w.meta.threads
    publish = "POST media_publish" if platform == "instagram" else "POST threads_publish"
    w.meta.fail(lost_answer(publish))
    receipt = await channel.send(channel.render(story(w)), idempotency_key="1")
    (published,) = account.published
    assert receipt.remote_id == published.id and receipt.url.endswith(published.id)
    assert count(w, publish) == 1


@pytest.mark.parametrize("platform", ["instagram", "threads"])
async def test_publish_refused_by_a_proxy_publishes_the_same_container_again(w: World, platform: str) -> None:
    channel = await w.start(w.instagram() if platform == "instagram" else w.threads())
    account = w.meta.instagram if platform == "instagram" else w.meta.threads
    publish = "POST media_publish" if platform == "instagram" else "POST threads_publish"
    w.meta.fail(server_error(on=publish))
    await channel.send(channel.render(story(w)), idempotency_key="1")
    assert len(account.published) == 1
    assert count(w, publish) == 2 and len(account.containers) == 1


async def test_threads_media_not_found_just_after_finished_is_published_after_a_wait(w: World) -> None:
    channel = await w.start(w.threads())
    w.meta.fail(Fault(24, on="POST threads_publish", subcode=4279009, message="Media Not Found"))
    await channel.send(channel.render(story(w)), idempotency_key="1")
    assert len(w.meta.threads.published) == 1


async def test_lost_publish_with_unreadable_container_is_uncertain(w: World) -> None:
    channel = await w.start(w.instagram())

    async def finished_at_once(container: str) -> None:  # (the fake's containers are)
        return None

    channel.wait_finished = finished_at_once  # type: ignore[method-assign]
    w.meta.fail(lost_answer("POST media_publish"), Fault(2, on="GET container", count=10))
    with pytest.raises(Uncertain):
        await channel.send(channel.render(story(w)), idempotency_key="1")
    assert len(w.meta.instagram.published) == 1 and count(w, "POST media_publish") == 1


async def test_wrong_app_token_is_alerted_once_and_the_token_checks_itself(w: World) -> None:
    channel = await w.start(w.facebook(app_token=f"{APP_ID}|wrong-secret"))
    await channel.check_token()
    assert len(w.alerts) == 1 and "app_token was refused" in w.alerts[0][1]
    assert "wrong-secret" not in w.alerts[0][1]
    (checked,) = [r for r in w.meta.requests if r.endpoint == "GET debug_token" and r.status == 200][:1]
    assert checked.token == PAGE_TOKEN
    await channel.send(channel.render(story(w)), idempotency_key="1")
    assert len(w.meta.page.posts) == 1
