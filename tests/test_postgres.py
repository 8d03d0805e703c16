"""The same store on PostgreSQL (the machine's server on 127.0.0.1): migrations, the outbox,
and two daemons' workers racing for the same rows without ever both sending one."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from bot.normalize import story_key
from bot.outbox import Finish
from bot.store import Store
from bot.stories import NewStory
from bot.types import Decision, Story

PG = os.environ.get("SIAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = f"siar_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(PG)
    except OSError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG} ({exc}); .ci/run starts it")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def story(i: int) -> Story:
    return Story(
        uid=f"u{i}",
        feed="f",
        url=f"https://e.example/{i}",
        title=f"Story {i}",
        published=NOW,
        tags=("a", "b"),
    )


def new(i: int, *decisions: Decision) -> NewStory:
    return NewStory(story(i), list(decisions), key=story_key(story(i), ()))


async def test_store_works_on_postgres(pg_url: str) -> None:
    store = Store(pg_url, Path("."))
    try:
        await store.migrate()
        await store.migrate()  # idempotent
        state = await store.feeds.get("f", "https://e.example/rss")
        state = replace(state, first_run_done=True)
        ids = await store.stories.record_poll(
            state, [new(1, Decision("c", "queued")), new(2, Decision("c", "filtered", "r"))], NOW
        )
        assert len(ids) == 1
        assert (await store.feeds.get("f", "")).first_run_done
        item = await store.outbox.claim("c", NOW, "w1")
        assert item is not None and item.story == story(1)
        await store.outbox.finish(item.id, Finish("sent", "sent", remote_id="r1"), NOW)
        assert (await store.reports.counts())["c"]["sent"] == 1
        assert await store.stories.known_uids("f", ["u1", "u2", "u3"]) == {"u1", "u2"}
        found = await store.stories.find("https://e.example/1?utm_source=x")
        assert [d["decision"] for d in await store.stories.decisions_of(found[0]["id"])] == ["queued", "sent"]
        published = (await store.stories.outbox_of(found[0]["id"]))[0]["sent_at"]
        assert published.tzinfo is not None
    finally:
        await store.close()


async def test_two_daemons_share_the_outbox_without_double_sends(pg_url: str) -> None:
    first, second = Store(pg_url, Path(".")), Store(pg_url, Path("."))
    try:
        await first.migrate()
        state = await first.feeds.get("f", "u")
        await first.stories.record_poll(state, [new(i, Decision("c", "queued")) for i in range(40)], NOW)
        claimed: list[int] = []

        async def worker(store: Store, name: str) -> None:
            while (item := await store.outbox.claim("c", NOW, name)) is not None:
                claimed.append(item.id)
                await store.outbox.finish(item.id, Finish("sent", "sent"), NOW)

        await asyncio.gather(*(worker(s, f"{n}") for n, s in enumerate([first, second, first, second])))
        assert len(claimed) == 40 and len(set(claimed)) == 40
        assert (await second.reports.counts())["c"]["sent"] == 40
        # a claim older than the lease is recovered by the other daemon; a fresh one is left alone
        await first.stories.record_poll(state, [new(99, Decision("c", "queued"))], NOW)
        assert await first.outbox.claim("c", NOW, "crashing") is not None
        assert await second.outbox.recover_sending(NOW, stale_before=NOW - timedelta(minutes=15)) == 0
        assert (
            await second.outbox.recover_sending(
                NOW + timedelta(hours=1), stale_before=NOW + timedelta(minutes=30)
            )
            == 1
        )
        assert (await second.reports.counts())["c"]["uncertain"] == 1
    finally:
        await first.close()
        await second.close()


async def test_two_daemons_polling_the_same_feed_store_each_story_once(pg_url: str) -> None:
    first, second = Store(pg_url, Path(".")), Store(pg_url, Path("."))
    try:
        await first.migrate()
        batch = [new(i, Decision("c", "queued")) for i in range(30)]
        results = await asyncio.gather(
            first.stories.record_poll(await first.feeds.get("f", "u"), batch, NOW),
            second.stories.record_poll(await second.feeds.get("f", "u"), list(reversed(batch)), NOW),
        )
        assert len(results[0]) + len(results[1]) == 30
        counts = await first.reports.counts()
        assert counts["c"]["pending"] == 30
        assert len(await first.stories.known_uids("f", [f"u{i}" for i in range(30)])) == 30
    finally:
        await first.close()
        await second.close()
