"""Daily quotas (bot.budgets.DailyQuotas) and X's `daily_cap` on them: a cap is per account, not
per daemon, so daemons sharing one PostgreSQL store (the machine's server on 127.0.0.1) must
never pass it together.

The check this replaces counted the posts sent today and let a post go when `sent < cap`: two
daemons that both read `cap - 1` each posted one (cap + 1 in all), and nothing is recorded as
sent until X has answered, so every post in flight was invisible to the others. The races here
are real: separate engines (one per "daemon") on one database, started together with
asyncio.gather, and X's answers held back long enough for the posts to overlap."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.app import App, build
from bot.budgets import DailyQuotas
from bot.channel import AlreadyDone, ChannelContext, Permanent, RetryLater, Uncertain
from bot.config import Config
from bot.counting import count_x
from bot.daemon import prepare
from bot.outbox import Finish
from bot.site import CTA, Site
from bot.store import Store
from bot.types import Decision, Length, Post, Story
from channels import x
from tests.fake_x import DUPLICATE, KEYS, Answer, FakeX
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route
from tests.test_postgres import NOW, PG, new, pg_url
from tests.test_x import CONFIG, FOLLOW, fake_x, rows, x_env

__all__ = ["fake_x", "pg_url", "x_env"]

DAY = date(2020, 10, 9)
JAKARTA = Site(name="medcom.id", timezone="Asia/Jakarta")  # NOW (07:00 UTC) is 14:00 there


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """What the pg_url fixture gives, for a fixture that only sometimes needs it."""
    name = f"siar_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def quotas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DailyQuotas]:
    """The same quotas without a store, on SQLite and on a fresh PostgreSQL database."""
    if request.param == "memory":
        yield DailyQuotas(None)
        return
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 's.db'}"
        else:
            url = await stack.enter_async_context(fresh_database())
        store = Store(url, tmp_path)
        stack.push_async_callback(store.close)
        await store.migrate()
        yield DailyQuotas(store.db)


# --- the quotas --------------------------------------------------------------------------------


async def test_a_cap_grants_exactly_cap_slots_a_day(quotas: DailyQuotas) -> None:
    taken = [await quotas.take("k", DAY, 3) for _ in range(5)]
    assert [(t.granted, t.used) for t in taken] == [(True, 1), (True, 2), (True, 3), (False, 3), (False, 3)]
    assert await quotas.used("k", DAY) == 3
    assert (await quotas.take("k", DAY + timedelta(days=1), 3)).granted  # a new day
    assert (await quotas.take("other", DAY, 3)).granted  # another key
    assert not (await quotas.take("k", DAY, 3)).granted  # the other day's slot changed nothing


async def test_a_slot_given_back_is_taken_again(quotas: DailyQuotas) -> None:
    assert (await quotas.take("k", DAY, 2)).granted and (await quotas.take("k", DAY, 2)).granted
    await quotas.give_back("k", DAY)
    assert await quotas.used("k", DAY) == 1
    again = await quotas.take("k", DAY, 2)
    assert again.granted and again.used == 2
    assert not (await quotas.take("k", DAY, 2)).granted
    for _ in range(3):
        await quotas.give_back("k", DAY)
    assert await quotas.used("k", DAY) == 0  # never below zero
    await quotas.give_back("never", DAY)  # nothing to give back: harmless


async def test_uses_known_from_elsewhere_raise_the_count_and_never_lower_it(quotas: DailyQuotas) -> None:
    """`floor` is what the outbox says was sent today: a store upgraded mid-day counts them."""
    first = await quotas.take("k", DAY, 5, floor=3)
    assert (first.granted, first.used) == (True, 4)
    assert (await quotas.take("k", DAY, 5, floor=1)).used == 5  # a lower floor changes nothing
    lifted = await quotas.take("k", DAY, 9, floor=8)
    assert (lifted.granted, lifted.used) == (True, 9)
    refused = await quotas.take("k", DAY, 9, floor=2)
    assert (refused.granted, refused.used) == (False, 9)
    over = await quotas.take("new", DAY, 2, floor=2)  # no row yet, already at the cap
    assert (over.granted, over.used) == (False, 2)
    assert await quotas.used("new", DAY) == 0


async def test_days_before_yesterday_are_pruned(quotas: DailyQuotas) -> None:
    """A daemon whose clock is past midnight must not erase the day another daemon still counts
    in (nor a slot given back just after midnight): yesterday stays, older days go."""
    before, yesterday = DAY - timedelta(days=2), DAY - timedelta(days=1)
    for day in (before, yesterday):
        await quotas.take("k", day, 3)
    await quotas.take("other", before, 3)
    await quotas.take("k", DAY, 3)
    assert await quotas.used("k", before) == 0  # gone with the new day
    assert await quotas.used("k", yesterday) == 1
    assert not (await quotas.take("k", yesterday, 1)).granted  # still counted
    assert await quotas.used("other", before) == 1  # not this key's
    assert await quotas.used("k", DAY) == 1


async def test_daemons_racing_for_the_last_slots_get_exactly_cap(pg_url: str) -> None:
    """Four daemons (an engine each) reserve 5 slots each at once, six days running, for a cap
    of 7 of which 3 are used: 4 granted per day, each slot number once. A check-then-count
    (read `used`, compare, write `used + 1`) lets every racer that read 3 through."""
    stores = [Store(pg_url, Path(".")) for _ in range(4)]
    await stores[0].migrate()
    try:
        racers = [DailyQuotas(s.db) for s in stores]
        for d in range(6):
            day = DAY + timedelta(days=d)
            for _ in range(3):
                assert (await racers[d % 4].take("k", day, 7)).granted
            taken = await asyncio.gather(*(q.take("k", day, 7) for q in racers for _ in range(5)))
            granted = sorted(t.used for t in taken if t.granted)
            assert granted == [4, 5, 6, 7], (d, taken)
            assert all(t.used == 7 for t in taken if not t.granted)
            assert await racers[0].used("k", day) == 7
    finally:
        for store in stores:
            await store.close()


async def test_racers_on_sqlite_are_serialised_by_the_write_lock(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    await store.migrate()
    try:
        quotas = DailyQuotas(store.db)
        taken = await asyncio.gather(*(quotas.take("k", DAY, 5) for _ in range(12)))
        assert sorted(t.used for t in taken if t.granted) == [1, 2, 3, 4, 5]
    finally:
        await store.close()


# --- X's daily cap through the quotas ----------------------------------------------------------


def x_channel(fake: FakeX, store: Store | None, clock: Clock, **overrides: Any) -> x.XChannel:
    """An X channel named "x" as one daemon makes it: the quotas and the outbox of `store`."""
    context = ChannelContext(site=JAKARTA, cta=CTA(follow_text=FOLLOW), clock=clock)
    if store is not None:

        async def sent_since(channel: str, since: datetime) -> int:
            return await store.outbox.sent_since(channel, since, confirmed=True)

        context = dataclasses.replace(context, database=store.db, sent_since=sent_since)
    values = {"type": "x", **KEYS, "api_base_url": fake.base, "timeout": 3, **overrides}
    return x.create("x", x.Settings.model_validate(values), context)


def x_post(n: int) -> Post:
    story = Story(uid=f"p{n}", feed="f", url=f"https://e.example/p{n}", title=f"Post {n}")
    text = f"{story.title} {story.url}"
    return Post(channel="x", type="x", story=story, text=text, length=Length("weighted", count_x(text), 280))


async def record_sent(store: Store, n: int) -> None:
    """`n` posts of channel "x" X confirmed today (at NOW), in the outbox."""
    state = await store.feeds.get("f", "u")
    await store.stories.record_poll(state, [new(i, Decision("x", "queued")) for i in range(n)], NOW)
    for i in range(n):
        item = await store.outbox.claim("x", NOW, "w")
        assert item is not None
        await store.outbox.finish(item.id, Finish("sent", "sent", remote_id=f"9{i}"), NOW)


async def send(channel: x.XChannel, n: int) -> str:
    """Post number `n`: "sent", or the reason of a RetryLater or Permanent."""
    try:
        await channel.send(x_post(n), idempotency_key=f"k{n}")
    except (RetryLater, Permanent) as exc:
        return exc.reason
    return "sent"


async def test_two_x_channels_on_one_postgres_store_never_pass_the_cap(pg_url: str, fake_x: FakeX) -> None:
    """Cap 3, two posts already sent today (the outbox says so). Two daemons' X channels send two
    posts each, all four at once, X taking 0.3 s to answer: exactly one more post is made. The
    old count-then-post check read 2 (< 3) in all four and made four (6 today)."""
    stores = [Store(pg_url, Path(".")) for _ in range(2)]
    await stores[0].migrate()
    clock = Clock()
    channels = [x_channel(fake_x, s, clock, daily_cap=3, on_cap="defer") for s in stores]
    try:
        await record_sent(stores[0], 2)
        fake_x.hang = 0.3
        outcomes = await asyncio.gather(
            *(send(ch, 10 * i + j) for i, ch in enumerate(channels) for j in range(2))
        )
        assert outcomes.count("sent") == 1, outcomes
        assert len(fake_x.posts) == 1 and len(fake_x.requests) == 1
        refused = [o for o in outcomes if o != "sent"]
        assert all(o == "daily cap of 3 reached (3 posts today); waiting for the next day" for o in refused)
        day = x.local_day(clock(), "Asia/Jakarta")[0].date()
        assert await channels[1].quotas.used("channel:x", day) == 3
    finally:
        for ch in channels:
            await ch.close()
        for store in stores:
            await store.close()


async def test_a_post_x_did_not_make_gives_its_slot_back(tmp_path: Path, fake_x: FakeX) -> None:
    """Cap 1: a 503, a 403 and an "already posted" answer each give the day's only slot back,
    so the next post is made; a post whose answer is lost keeps it (it may be on X)."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    await store.migrate()
    ch = x_channel(fake_x, store, Clock(), daily_cap=1, on_cap="skip", timeout=0.5)
    try:
        fake_x.script.extend(
            [
                Answer(503, {"title": "Service Unavailable"}),
                Answer(403, {"title": "Forbidden", "detail": "not allowed"}),
                Answer(403, DUPLICATE),
            ]
        )
        assert (await send(ch, 1)).startswith("X server error (503")
        assert (await send(ch, 2)).startswith("X refused the post (403")
        with pytest.raises(AlreadyDone, match="already posted"):
            await ch.send(x_post(3), idempotency_key="k3")
        assert await ch.quotas.used("channel:x", DAY) == 0
        fake_x.hang = 1.5  # the answer is lost: the post may be on X
        with pytest.raises(Uncertain):
            await send(ch, 4)
        fake_x.hang = 0.0
        assert await send(ch, 5) == 'daily cap of 1 reached (1 posts today); skipped (on_cap = "skip")'
        assert len(fake_x.requests) == 4  # the fifth was refused before anything was sent
    finally:
        await ch.close()
        await store.close()


async def test_two_daemons_drain_one_postgres_outbox_within_the_cap(
    pg_url: str,
    fake_x: FakeX,
    feed_server: FeedServer,
    sample_bytes: bytes,
    make_config: Callable[[str], Config],
    x_env: None,
) -> None:
    """Two whole daemons (config, store, dispatcher) on one PostgreSQL store drain the sample
    feed's four X posts together with a cap of 3, X taking 0.3 s to answer: each claims a row at
    once, then another. The old check saw 0 sent for the first pair and 2 for the second, and let
    all four go; the reservations make exactly three."""
    feed_server.routes["/intl"] = Route(body=sample_bytes)
    text = (
        CONFIG.replace("FEED", feed_server.url("/intl"))
        .replace("BASE", fake_x.base)
        .replace("FOLLOW", FOLLOW)
        .replace("EXTRA", f'daily_cap = 3\non_cap = "defer"\n\n[store]\nurl = "{pg_url}"')
    )
    config = make_config(text)
    clock = Clock()
    apps: list[App] = [build(config, clock=clock) for _ in range(2)]
    try:
        for app in apps:
            await prepare(app)
        await apps[0].poller.poll(config.feeds[0], force=True)
        fake_x.hang = 0.3
        await asyncio.gather(*(app.dispatcher.drain() for app in apps))
        items = await rows(apps[0])
        assert sorted(i["status"] for i in items) == ["pending", "sent", "sent", "sent"]
        assert len(fake_x.posts) == 3 and len(fake_x.requests) == 3
        (waiting,) = [i for i in items if i["status"] == "pending"]
        assert waiting["last_error"].startswith("daily cap of 3 reached")
        assert waiting["next_attempt_at"] == datetime(2020, 10, 9, 17, 0, 1, tzinfo=UTC)  # local midnight
    finally:
        for app in apps:
            await app.close()
