"""Editorial control (issue 12, the core): breaking news, corrections, retractions, quiet hours
and digests — against the fake channel and the real store, with a clock the tests move."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.app import App, build, channel_context
from bot.channel import Permanent, RetryLater, Uncertain
from bot.config import Config, ConfigError
from bot.corrections import NOISE_LIMIT, Change, Post, changes, fingerprint, plan
from bot.daemon import digest_planner, prepare
from bot.delivery import Attempt, Policy, transition
from bot.digests import due_slot
from bot.editorial import DEFAULT_LABEL, PriorityRule, breaking_label
from bot.kit import BaseChannel
from bot.normalize import parse_feed
from bot.render import PostRenderer
from bot.retractions import Capability, Row
from bot.retractions import plan as retraction_plan
from bot.schedule import DigestSettings
from bot.schema import outbox, stories
from bot.types import Digest, Length, Published, Story
from tests.fakes import Clock, FakeChannel, Settings
from tests.feedserver import FeedServer, Route, rss
from tests.test_postgres import pg_url as pg_url  # the fixture: a fresh PostgreSQL database

NIGHT = datetime(2020, 10, 9, 23, 0, tzinfo=UTC)  # site timezone UTC in these tests


def item(n: int, title: str | None = None, **extra: str) -> dict[str, str]:
    hour = 10 + n  # later n: newer
    return {
        "title": title or f"Story {n}",
        "link": f"https://e.example/{n}",
        "guid": f"g{n}",
        "description": f"Lead of story {n}.",
        "pubDate": f"Fri, 09 Oct 2020 {hour:02d}:00:00 +0000",
        **extra,
    }


@dataclass
class Env:
    app: App
    clock: Clock
    server: FeedServer
    channels: dict[str, FakeChannel]

    @property
    def config(self) -> Config:
        return self.app.config

    def publish(self, *items: dict[str, str]) -> None:
        self.server.routes["/f"] = Route(body=rss(list(items)))

    async def poll(self) -> None:
        result = await self.app.poller.poll(self.config.feeds[0], force=True)
        assert not result.failed, result.error

    async def rows(self, **where: Any) -> list[dict[str, Any]]:
        query = select(outbox).order_by(outbox.c.id)
        for key, value in where.items():
            query = query.where(outbox.c[key] == value)
        async with self.app.store.db.read() as conn:
            return [r._asdict() for r in (await conn.execute(query)).all()]

    async def story(self, n: int) -> dict[str, Any]:
        (found,) = await self.app.store.stories.find(f"https://e.example/{n}")
        return found

    async def decisions(self, n: int) -> list[tuple[str | None, str, str]]:
        story = await self.story(n)
        return [
            (d["channel"], d["decision"], d["detail"] or "")
            for d in await self.app.store.stories.decisions_of(story["id"])
        ]


CONFIG = """
    [site]
    timezone = "UTC"

    [[feeds]]
    name = "f"
    url = "{url}"
    first_run = "all"

    {extra}
"""


@pytest.fixture
async def env_factory(
    feed_server: FeedServer, make_config: Callable[[str], Config], fake_type: None
) -> AsyncIterator[Callable[..., Any]]:
    """Builds an app on the real store with fake channels ("fake" unless named) and a clock."""
    made: list[App] = []

    async def make(
        extra: str = "",
        channels: tuple[str, ...] = ("fake",),
        start: datetime | None = None,
        store: str = "",
    ) -> Env:
        tables = "".join(
            f'[channels.{n}]\ntype = "fake"\n' for n in channels if f"[channels.{n}]" not in extra
        )
        if store:  # another database than the temporary SQLite file
            tables = f'[store]\nurl = "{store}"\n\n' + tables
        config = make_config(CONFIG.format(url=feed_server.url("/f"), extra=tables + extra))
        clock = Clock(start or datetime(2020, 10, 9, 20, 0, tzinfo=UTC))
        fakes = {n: FakeChannel(n, config.channels[n]) for n in config.channels}
        app = build(config, channels=dict(fakes), clock=clock)
        await prepare(app)
        made.append(app)
        return Env(app, clock, feed_server, fakes)

    yield make
    for app in made:
        await app.close()


# --- breaking news ------------------------------------------------------------------------------


BREAKING = """
    [[priority]]
    title_pattern = "^(BREAKING|Berita Terkini):"
    label = "🔴 TERKINI"
"""


async def test_breaking_news_jumps_the_queue(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(BREAKING)
    # the breaking story is the newest: by publication order it would go last
    env.publish(item(3, "Berita Terkini: gempa"), item(1), item(2))
    await env.poll()
    rows = await env.rows()
    priorities = {r["story_id"]: r["priority"] for r in rows}
    assert sorted(priorities.values()) == [0, 0, 1]
    await env.app.dispatcher.drain()
    sent = env.channels["fake"].sent
    assert [p.story.title for p in sent] == ["Berita Terkini: gempa", "Story 1", "Story 2"]
    assert sent[0].story.breaking == "🔴 TERKINI" and sent[1].story.breaking == ""


@pytest.mark.parametrize(
    ("rule", "story", "matches"),
    [
        ({"feeds": ["f"]}, {}, True),
        ({"feeds": ["other"]}, {}, False),
        ({"sections": ["bencana"]}, {"section": "Bencana"}, True),
        ({"sections": ["bencana"]}, {"section": "Olahraga"}, False),
        ({"tags": ["Gempa"]}, {"tags": ("gempa", "aceh")}, True),
        ({"tags": ["gempa"]}, {"categories": ("Gempa",)}, True),
        ({"tags": ["gempa"]}, {"tags": ("banjir",)}, False),
        ({"title_pattern": "^BREAKING:"}, {"title": "BREAKING: x"}, True),
        ({"title_pattern": "^BREAKING:"}, {"title": "Not BREAKING: x"}, False),
        ({"title_pattern": "(?i)^breaking"}, {"title": "Breaking now"}, True),
        # every key given must hold
        ({"feeds": ["f"], "title_pattern": "^BREAKING"}, {"title": "calm"}, False),
        ({"feeds": ["f"], "sections": ["Bencana"]}, {"section": "Bencana"}, True),
    ],
)
def test_priority_rule_keys(rule: dict[str, Any], story: dict[str, Any], matches: bool) -> None:
    base = Story(uid="u", feed="f", url="https://e.example/u", title="t")
    assert PriorityRule.model_validate(rule).matches(replace(base, **story)) is matches


def test_first_matching_rule_gives_the_label() -> None:
    rules = [
        PriorityRule(sections=["Bencana"], label="⚠️ BENCANA"),
        PriorityRule(feeds=["f"]),
    ]
    story = Story(uid="u", feed="f", url="https://e.example/u", title="t", section="Bencana")
    assert breaking_label(story, rules) == "⚠️ BENCANA"
    assert breaking_label(replace(story, section="x"), rules) == DEFAULT_LABEL
    assert breaking_label(replace(story, feed="g", section="x"), rules) == ""


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('feeds = ["nope"]', "priority[0].feeds[0]: no feed is named 'nope'"),
        ('title_pattern = "(?<=x)y"', "priority[0].title_pattern: uses a look-behind"),
        ('label = "x"', "priority[0]: give at least one of feeds, sections, tags or title_pattern"),
        ('sections = ["a"]\nwhen = 1', "priority[0].when: unknown key"),
    ],
)
def test_priority_config_errors_name_key_and_line(
    make_config: Callable[[str], Config], table: str, expected: str
) -> None:
    text = f'[[feeds]]\nname = "f"\nurl = "f.xml"\n\n[[priority]]\n{table}\n'
    with pytest.raises(ConfigError) as caught:
        make_config(text)
    (problem,) = caught.value.problems
    assert expected in problem
    assert "config.toml:" in problem.split(": ")[0]  # file:line


def test_breaking_in_the_template(make_config: Callable[[str], Config]) -> None:
    config = make_config("")
    renderer = PostRenderer(
        "c", "{% if breaking %}{{ breaking }} {% endif %}{{ title }}", channel_context(config)
    )
    story = Story(uid="u", feed="f", url="https://e.example/u", title="Gempa")
    assert renderer.render(renderer.variables(story)) == "Gempa"
    assert renderer.render(renderer.variables(replace(story, breaking="🔴 BREAKING"))) == "🔴 BREAKING Gempa"


# --- corrections --------------------------------------------------------------------------------


async def test_a_corrected_story_edits_the_sent_post_once(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    fake = env.channels["fake"]
    env.publish(item(1, "Gempa M5 di Aceh"))
    await env.poll()
    await env.app.dispatcher.drain()
    (post,) = await env.rows()
    assert post["status"] == "sent"
    env.clock.advance(600)
    env.publish(item(1, "Gempa M6 di Aceh"))
    result = await env.app.poller.poll(env.config.feeds[0], force=True)
    assert result.channels == {"fake"}  # its worker is woken for the edit
    (edit,) = await env.rows(action="edit")
    assert (edit["target_id"], edit["priority"], edit["status"]) == (post["id"], 1, "pending")
    assert (None, "corrected", "changed: title") in await env.decisions(1)
    # retried like a post, then done once
    fake.script.append(RetryLater("busy", after=30))
    await env.app.dispatcher.drain()
    assert fake.edited == [] and (await env.rows(action="edit"))[0]["status"] == "pending"
    env.clock.advance(30)
    await env.app.dispatcher.drain()
    ((edited, published),) = fake.edited
    assert edited.story.title == "Gempa M6 di Aceh"
    assert published.remote_id == post["remote_id"] == "remote-1"
    assert ("fake", "edited", "") in [(c, d, "") for c, d, _ in await env.decisions(1)]
    # the same feed again, and the same correction from a later poll: no second edit
    await env.poll()
    env.server.routes["/f"] = Route(body=env.server.routes["/f"].body, etag=False)
    await env.poll()
    assert len(await env.rows(action="edit")) == 1
    # a second daemon that saw the feed before this one's update: the same edit, not another
    old = await env.story(1)
    async with env.app.store.db.write() as conn:
        await conn.execute(
            update(stories).where(stories.c.id == old["id"]).values(entry_hash="stale", fingerprint="stale")
        )
    env.server.routes["/f"] = Route(body=rss([item(1, "Gempa M6 di Aceh")], title="Another body"))
    await env.poll()
    assert len(await env.rows(action="edit")) == 1
    assert ("fake", "edit_queued", "its edit is queued already") in await env.decisions(1)
    await env.app.dispatcher.drain()
    assert len(fake.edited) == 1
    stored = await env.story(1)
    assert stored["title"] == "Gempa M6 di Aceh" and stored["fingerprint"] == fingerprint(edited.story)


async def test_feed_noise_is_not_a_correction(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1))
    await env.poll()
    await env.app.dispatcher.drain()
    before = await env.story(1)
    # the raw entry changes (its date, a category) but nothing a post shows
    env.publish(item(1, pubDate="Fri, 09 Oct 2020 12:30:00 +0000", category="Baru"))
    await env.poll()
    after = await env.story(1)
    assert after["entry_hash"] != before["entry_hash"]  # remembered, so it is not compared again
    assert after["fingerprint"] == before["fingerprint"]
    assert await env.rows(action="edit") == []
    assert not any(d == "corrected" for _, d, _ in await env.decisions(1))


async def test_known_hashes_name_the_entries_to_normalize_again(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1), item(2))
    await env.poll()
    stored = await env.app.store.stories.known_hashes("f", ["g1", "g2", "g9"])
    parsed = parse_feed(
        rss([item(1), item(2, "Changed")]), "https://e.example/f", {}, env.config.cleaning, "f"
    )
    assert set(stored) == {"g1", "g2"}
    assert stored["g1"] == parsed.hashes["g1"] and stored["g2"] != parsed.hashes["g2"]


async def test_pending_posts_go_out_corrected(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1, "Old title"))
    await env.poll()
    env.publish(item(1, "New title"))
    await env.poll()
    assert await env.rows(action="edit") == []
    assert ("fake", "corrected", "not sent yet: the corrected story goes out") in await env.decisions(1)
    await env.app.dispatcher.drain()
    (sent,) = env.channels["fake"].sent
    assert sent.story.title == "New title"


async def test_channels_that_do_not_edit_say_why(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(
        '[channels.quiet]\ntype = "fake"\non_correction = "ignore"\n', channels=("fake", "quiet", "stiff")
    )
    env.channels["stiff"].can_edit = False
    env.publish(item(1, "Before"))
    await env.poll()
    await env.app.dispatcher.drain()
    env.publish(item(1, "After"))
    await env.poll()
    assert [r["channel"] for r in await env.rows(action="edit")] == ["fake"]
    decided = {
        c: (d, detail) for c, d, detail in await env.decisions(1) if d in ("not_edited", "edit_queued")
    }
    assert decided["quiet"] == ("not_edited", 'on_correction = "ignore"')
    assert decided["stiff"][0] == "not_edited" and "cannot be edited" in decided["stiff"][1]
    assert decided["fake"][0] == "edit_queued"
    lines = env.app.admin.why_lines(await env.app.admin.why("https://e.example/1"))  # type: ignore[union-attr]
    assert any("stiff: not_edited — fake posts cannot be edited" in line for line in lines)


async def test_a_feed_rewriting_many_stories_edits_nothing(
    env_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    env = await env_factory()
    many = NOISE_LIMIT + 1
    env.publish(*(item(n) for n in range(many)))
    await env.poll()
    await env.app.dispatcher.drain()
    env.publish(*(item(n, f"Story {n} (updated)") for n in range(many)))
    with caplog.at_level(logging.WARNING, "siar.corrections"):
        await env.poll()
    assert await env.rows(action="edit") == []
    assert any(f"{many} stories changed at once" in r.getMessage() for r in caplog.records)
    decided = [(d, detail) for c, d, detail in await env.decisions(0) if c == "fake"]
    assert (
        "not_edited",
        f"{many} stories of the feed changed at once (more than {NOISE_LIMIT}): not edited",
    ) in decided
    assert (await env.story(0))["title"] == "Story 0 (updated)"  # recorded all the same


async def test_an_edit_whose_post_is_not_out_is_cancelled(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1, "A"))
    await env.poll()
    await env.app.dispatcher.drain()
    env.publish(item(1, "B"))
    await env.poll()
    (post,) = await env.rows(action="post")
    async with env.app.store.db.write() as conn:  # the operator found it uncertain meanwhile
        await conn.execute(update(outbox).where(outbox.c.id == post["id"]).values(status="uncertain"))
    await env.app.dispatcher.drain()
    (edit,) = await env.rows(action="edit")
    assert edit["status"] == "cancelled" and "the post is uncertain" in edit["last_error"]
    assert env.channels["fake"].edited == []


async def test_an_edit_cut_short_by_a_crash_is_done_again(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1, "A"), item(2))
    await env.poll()
    await env.app.dispatcher.drain()
    env.publish(item(1, "B"), item(2, "Story 2 new"))
    await env.poll()
    async with env.app.store.db.write() as conn:  # a crash mid-request: the edits left `sending`
        await conn.execute(update(outbox).where(outbox.c.action == "edit").values(status="sending"))
    assert await env.app.store.outbox.recover_sending(env.clock.now) == 2
    statuses = {(r["action"], r["status"]) for r in await env.rows()}
    assert statuses == {("post", "sent"), ("edit", "pending")}  # a post would be uncertain
    await env.app.dispatcher.drain()
    assert sorted(p.story.title for p, _ in env.channels["fake"].edited) == ["B", "Story 2 new"]


def _story(title: str = "t", **fields: Any) -> Story:
    return Story(uid="u", feed="f", url="https://e.example/u", title=title, **fields)


def test_changes_compare_only_entries_whose_raw_hash_changed() -> None:
    from bot.corrections import Known

    old = _story("Old")
    known = {"u": Known(1, "h1", fingerprint(old), old)}
    assert changes(known, [_story("New")], {"u": "h1"}) == []  # same raw entry: not even looked at
    (change,) = changes(known, [_story("New")], {"u": "h2"})
    assert change.corrected and change.what == ["title"]
    (same,) = changes(known, [_story("Old", tags=("x",))], {"u": "h3"})
    assert not same.corrected  # tags are not what a post shows
    legacy = {"u": Known(1, None, None, old)}  # stored before fingerprints: it only gets them
    assert not changes(legacy, [_story("New")], {"u": "h2"})[0].corrected
    gone = {"u": Known(1, "h1", fingerprint(old), old, retracted=True)}
    assert changes(gone, [_story("New")], {"u": "h2"}) == []


@pytest.mark.parametrize(
    ("status", "on_correction", "can_edit", "noisy", "expected"),
    [
        ("sent", "edit", True, 0, "edit_queued"),
        ("sent", "ignore", True, 0, "not_edited"),
        ("sent", "edit", False, 0, "not_edited"),
        ("sent", "edit", True, 9, "not_edited"),
        ("pending", "edit", True, 0, "corrected"),
        ("failed", "edit", True, 0, None),
        ("uncertain", "edit", True, 0, None),
    ],
)
def test_correction_plan_table(
    status: str, on_correction: str, can_edit: bool, noisy: int, expected: str | None
) -> None:
    change = Change(1, _story("A"), _story("B"), "fp", "h", True)
    settings = {"c": Settings(type="fake", on_correction=on_correction)}  # type: ignore[arg-type]
    decided = plan(change, [Post(7, "c", status)], settings, {"c": can_edit}, noisy=noisy)
    assert [d.decision for d in decided.decisions if d.channel] == ([expected] if expected else [])
    assert decided.edits == ([("c", 7)] if expected == "edit_queued" else [])


def test_an_edit_turned_off_by_a_setting_names_the_setting() -> None:
    """telegram-subscribers with `edit_readers = false`: Telegram can edit, the channel does not."""
    change = Change(1, _story("A"), _story("B"), "fp", "h", True)
    settings = {"c": Settings(type="fake", on_correction="edit")}  # type: ignore[arg-type]
    decided = plan(change, [Post(7, "c", "sent")], settings, {"c": False}, turned_off={"c": "edit_readers"})
    (made,) = [d for d in decided.decisions if d.channel]
    assert made.decision == "not_edited" and made.rule == "channels.c.edit_readers"
    assert made.detail.startswith("edit_readers = false") and "platform has no edit" not in made.detail


# --- delivery of editorial rows -----------------------------------------------------------------

PLAIN = Policy(resumable=False, max_attempts=3, send_timeout=60)
NOW = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("action", "attempt", "status", "decision"),
    [
        ("edit", Attempt("sent"), "sent", "edited"),
        ("edit", Attempt("already", "message is not modified"), "sent", "edited"),
        ("delete", Attempt("sent"), "sent", "deleted"),
        ("delete", Attempt("already", "gone"), "sent", "deleted"),
        ("digest", Attempt("sent"), "sent", "sent"),
        ("post", Attempt("already", "duplicate"), "sent", "already_sent"),
        ("edit", Attempt("moot", "nothing to edit"), "cancelled", "cancelled"),
        ("delete", Attempt("permanent", "too old to delete"), "failed", "failed"),
    ],
)
def test_transition_of_editorial_actions(action: str, attempt: Attempt, status: str, decision: str) -> None:
    step = transition(attempt, item_id=1, attempts=1, url="u", policy=PLAIN, now=NOW, action=action)
    assert (step.finish.status, step.finish.decision) == (status, decision)


# --- retractions --------------------------------------------------------------------------------


async def test_retract_deletes_sent_posts_and_cancels_waiting_ones(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(channels=("fake", "slow"))
    fake, slow = env.channels["fake"], env.channels["slow"]
    env.publish(item(1))
    await env.poll()
    slow.script.append(RetryLater("busy", after=600))
    await env.app.dispatcher.drain()
    assert admin_of(env) is not None
    done, report = await admin_of(env).retract("https://e.example/1", reason="wrong source", by="test")
    assert done, report
    assert report[0].startswith("retracted: Story 1")
    assert "  fake: deletion queued" in report and "  slow: not sent yet: cancelled" in report
    (deletion,) = await env.rows(action="delete")
    assert (deletion["channel"], deletion["priority"], deletion["status"]) == ("fake", 2, "pending")
    slow_row = (await env.rows(channel="slow"))[0]
    assert slow_row["status"] == "cancelled"
    env.clock.advance(600)
    await env.app.dispatcher.drain()
    assert [p.remote_id for p in fake.deleted] == ["remote-1"]
    assert slow.sent == []  # its row was cancelled before it could go
    assert ("fake", "deleted", "") in [(c, d, "") for c, d, _ in await env.decisions(1)]
    stored = await env.story(1)
    assert stored["retracted_at"] == env.clock.now - timedelta(seconds=600)
    assert stored["retract_reason"] == "wrong source"
    # again: nothing doubled
    done, report = await admin_of(env).retract("https://e.example/1", by="test")
    assert "  fake: its deletion is queued already" in report
    assert len(await env.rows(action="delete")) == 1


async def test_a_retracted_story_is_never_posted_again(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1))
    await env.poll()
    await admin_of(env).retract("https://e.example/1", by="test")
    await env.app.dispatcher.drain()
    assert env.channels["fake"].sent == []
    # the feed still carries it, corrected, and under a new id: nothing goes
    env.publish(item(1, "Story 1 corrected"), {**item(1), "guid": "another-id"})
    await env.poll()
    await env.app.dispatcher.drain()
    assert env.channels["fake"].sent == [] and env.channels["fake"].edited == []
    found = await env.app.store.stories.find("another-id")
    (decision,) = [d for d in await env.app.store.stories.decisions_of(found[0]["id"]) if d["channel"]]
    assert decision["decision"] == "retracted" and "retracted at" in decision["detail"]


async def test_a_retracted_story_cannot_be_resent(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1))
    await env.poll()
    env.channels["fake"].script.append(Uncertain("no answer"))
    await env.app.dispatcher.drain()
    (row,) = await env.rows()
    done, report = await admin_of(env).retract("https://e.example/1", by="test")
    assert done
    assert "  fake: outbox row 1 is uncertain (it may be out): check the platform by hand" in report
    refused, message = await admin_of(env).resend(row["id"])
    assert not refused and "its story was retracted" in message
    await env.app.dispatcher.drain()
    assert env.channels["fake"].sent == []


async def test_retract_where_the_platform_cannot_delete(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.channels["fake"].can_delete = False
    env.publish(item(1))
    await env.poll()
    await env.app.dispatcher.drain()
    done, report = await admin_of(env).retract("g1", by="test")  # by feed id
    assert done and "  fake: fake posts cannot be deleted by siar; remove it by hand" in report
    assert await env.rows(action="delete") == []
    nothing, message = await admin_of(env).retract("https://nowhere.example/", by="test")
    assert not nothing and "no story matches" in message[0]


@pytest.mark.parametrize(
    ("row", "capability", "decision", "detail"),
    [
        (Row(1, "c", "post", "sent", "r1"), Capability("mastodon", True), "delete_queued", "deletion queued"),
        (
            Row(1, "c", "post", "sent", "r1"),
            Capability("webpush", False),
            "not_deleted",
            "a web push notification cannot be recalled once delivered",
        ),
        (
            Row(1, "c", "post", "sent", None),
            Capability("x", True),
            "not_deleted",
            "sent, but the platform gave",
        ),
        (
            Row(1, "c", "post", "sending"),
            Capability("x", True),
            "delete_queued",
            "deletion queued (after it is sent)",
        ),
        (Row(1, "c", "post", "pending"), Capability("x", True), "retracted", "not sent yet: cancelled"),
        (
            Row(1, "c", "collect", "pending"),
            Capability("x", True),
            "retracted",
            "collected for a digest: cancelled",
        ),
        (Row(1, "c", "post", "uncertain"), Capability("x", True), "not_deleted", "outbox row 1 is uncertain"),
        (Row(1, "c", "post", "sent", "r1"), None, "delete_queued", "deletion queued when the channel runs"),
        (
            Row(1, "c", "post", "sent", "r1"),
            Capability("telegram-subscribers", False, "delete_readers"),
            "not_deleted",
            "delete_readers = false: the platform could delete it",
        ),
    ],
)
def test_retraction_plan_table(row: Row, capability: Capability | None, decision: str, detail: str) -> None:
    decided = retraction_plan([row], {"c": capability} if capability else {})
    (made,) = decided.decisions
    assert made.decision == decision and made.detail.startswith(detail)
    assert (decided.deletes == [("c", 1)]) is (decision == "delete_queued")
    assert (decided.cancel == [1]) is (decision == "retracted")


def admin_of(env: Env) -> Any:
    assert env.app.admin is not None
    return env.app.admin


async def test_the_fake_is_strict_about_edit_and_delete() -> None:
    fake = FakeChannel()
    fake.can_edit = fake.can_delete = False
    post = fake.render(_story())
    with pytest.raises(Permanent):
        await fake.edit(post, Published("r1"), idempotency_key="k")
    with pytest.raises(Permanent):
        await fake.delete(Published("r1"), idempotency_key="k")


# --- quiet hours --------------------------------------------------------------------------------

HOLD = """
    [channels.fake]
    type = "fake"
    quiet_hours = "22:00-06:00"
    quiet = "hold"
    max_age = "6h"
"""


async def test_quiet_hours_hold_posts_but_not_breaking_news(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(HOLD + BREAKING, start=NIGHT)
    late = "Fri, 09 Oct 2020 22:30:00 +0000"
    env.publish(item(1, pubDate=late), item(2, pubDate=late), item(5, "BREAKING: banjir", pubDate=late))
    await env.poll()
    await env.app.dispatcher.drain()
    fake = env.channels["fake"]
    assert [p.story.title for p in fake.sent] == ["BREAKING: banjir"]
    env.clock.now = NIGHT.replace(hour=5, minute=59) + timedelta(days=1)
    await env.app.dispatcher.drain()
    assert len(fake.sent) == 1  # still quiet
    env.clock.now = NIGHT.replace(hour=6) + timedelta(days=1)
    await env.app.dispatcher.drain()
    # story 1 (11:00) is 19 h old by then, past max_age 9h; story 2 too: both dropped with a reason
    assert [p.story.title for p in fake.sent] == ["BREAKING: banjir"]
    decided = [(d, detail) for c, d, detail in await env.decisions(1) if c == "fake"]
    assert decided[-1][0] == "cancelled" and "held through quiet hours" in decided[-1][1]


async def test_held_posts_go_when_quiet_hours_end_oldest_first(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(HOLD.replace('max_age = "6h"', 'max_age = "2d"'), start=NIGHT)
    env.publish(item(2), item(1))
    await env.poll()
    await env.app.dispatcher.drain()
    assert env.channels["fake"].sent == []
    env.clock.now = NIGHT.replace(hour=6) + timedelta(days=1)
    await env.app.dispatcher.drain()
    assert [p.story.title for p in env.channels["fake"].sent] == ["Story 1", "Story 2"]


async def test_quiet_digest_folds_posts_into_the_next_digest(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(
        """
        [channels.fake]
        type = "fake"
        quiet_hours = "22:00-06:00"
        quiet = "digest"
        digest = { at = ["07:00"], title = "Pagi" }
        """,
        start=NIGHT,
    )
    env.publish(item(1), item(2))
    await env.poll()
    await env.app.dispatcher.drain()
    fake = env.channels["fake"]
    assert fake.sent == []
    assert {r["action"] for r in await env.rows()} == {"collect"}
    assert ("fake", "held", "quiet hours: it joins the next digest") in await env.decisions(1)
    env.clock.now = NIGHT.replace(hour=7) + timedelta(days=1)
    assert len(await digest_planner(env.app).tick()) == 1
    await env.app.dispatcher.drain()
    (digest,) = fake.digests
    assert digest.digest is not None and digest.digest.title == "Pagi"
    assert [s.title for s in digest.digest.stories] == ["Story 2", "Story 1"]  # newest first


def test_quiet_digest_needs_a_digest(make_config: Callable[[str], Config], fake_type: None) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config('[channels.c]\ntype = "fake"\nquiet_hours = "22:00-06:00"\nquiet = "digest"\n')
    (problem,) = caught.value.problems
    assert ":4: channels.c.quiet: " in problem and "set `digest` too" in problem


class _Kit(BaseChannel[Settings]):
    TYPE = "kit"

    def render(self, story: Story) -> Any:
        return self.post(story, story.title, Length("graphemes", 1, 10))

    async def send(self, post: Any, *, idempotency_key: str) -> Any:
        raise NotImplementedError


def test_silent_quiet_hours_never_silence_breaking_news(make_config: Callable[[str], Config]) -> None:
    config = make_config('[site]\ntimezone = "UTC"\n')
    clock = Clock(NIGHT)
    kit = _Kit("k", Settings(type="fake", quiet_hours="22:00-06:00"), channel_context(config, clock=clock))  # type: ignore[arg-type]
    assert kit.quiet_now(_story()) is True
    assert kit.quiet_now(_story(breaking="🔴")) is False
    clock.now = NIGHT.replace(hour=12)
    assert kit.quiet_now(_story()) is False


# --- digests ------------------------------------------------------------------------------------

DIGEST_ONLY = """
    [channels.fake]
    type = "fake"
    digest = { at = ["07:00", "19:00"], max = 2, title = "Rangkuman", only = true }
"""


async def test_digest_only_channel_sends_one_roundup_per_slot(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(DIGEST_ONLY, start=datetime(2020, 10, 9, 18, 0, tzinfo=UTC))
    env.publish(item(1), item(2), item(3))
    await env.poll()
    await env.app.dispatcher.drain()
    fake = env.channels["fake"]
    assert fake.sent == []
    assert [r["action"] for r in await env.rows()] == ["collect"] * 3
    assert any(d == "collected" for _, d, _ in await env.decisions(1))
    planner = digest_planner(env.app)
    assert await planner.tick() == []  # 18:00: the 19:00 slot has not come
    env.clock.now = datetime(2020, 10, 9, 19, 0, 30, tzinfo=UTC)
    (first,) = await planner.tick()
    assert await planner.tick() == [] and await digest_planner(env.app).tick() == []  # a restart too
    (row,) = await env.rows(action="digest")
    assert row["id"] == first
    await env.app.dispatcher.drain()
    (digest,) = fake.digests
    assert digest.digest is not None
    assert [s.title for s in digest.digest.stories] == ["Story 3", "Story 2"] and digest.digest.more == 1
    assert {r["status"] for r in await env.rows(action="collect")} == {"cancelled"}
    assert any(d == "in digest" for _, d, _ in await env.decisions(1))
    # nothing new by the next slot: no empty digest
    env.clock.now = datetime(2020, 10, 10, 7, 0, tzinfo=UTC)
    assert await planner.tick() == []


async def test_two_daemons_queue_one_digest(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(DIGEST_ONLY, start=datetime(2020, 10, 9, 18, 0, tzinfo=UTC))
    env.publish(item(1))
    await env.poll()
    env.clock.now = datetime(2020, 10, 9, 19, 1, tzinfo=UTC)
    results = await asyncio.gather(digest_planner(env.app).tick(), digest_planner(env.app).tick())
    assert sorted(len(r) for r in results) == [0, 1]
    assert len(await env.rows(action="digest")) == 1


async def test_a_digest_leaves_out_stories_retracted_meanwhile(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(DIGEST_ONLY, start=datetime(2020, 10, 9, 18, 0, tzinfo=UTC))
    env.publish(item(1), item(2))
    await env.poll()
    env.clock.now = datetime(2020, 10, 9, 19, 0, tzinfo=UTC)
    await digest_planner(env.app).tick()
    await admin_of(env).retract("https://e.example/2", by="test")
    await env.app.dispatcher.drain()
    (digest,) = env.channels["fake"].digests
    assert digest.digest is not None and [s.title for s in digest.digest.stories] == ["Story 1"]


async def test_a_channel_posting_each_story_also_gets_its_digest(env_factory: Callable[..., Any]) -> None:
    env = await env_factory(
        '[channels.fake]\ntype = "fake"\ndigest = { every = "1h", title = "Jam ini" }\n',
        start=datetime(2020, 10, 9, 18, 10, tzinfo=UTC),
    )
    env.publish(item(1), item(2))
    await env.poll()
    await env.app.dispatcher.drain()
    fake = env.channels["fake"]
    assert len(fake.sent) == 2
    env.clock.now = datetime(2020, 10, 9, 19, 0, tzinfo=UTC)
    await digest_planner(env.app).tick()
    await env.app.dispatcher.drain()
    (digest,) = fake.digests
    assert digest.digest is not None and len(digest.digest.stories) == 2
    assert digest.to_dict()["digest"]["title"] == "Jam ini"


@pytest.mark.parametrize(
    ("now", "settings", "zone", "slot", "previous"),
    [
        ("2020-10-09T07:30", {"at": ["07:00", "19:00"]}, "UTC", "2020-10-09T07:00", "2020-10-08T19:00"),
        ("2020-10-09T06:59", {"at": ["07:00", "19:00"]}, "UTC", "2020-10-08T19:00", "2020-10-08T07:00"),
        # 07:00 in Jakarta is 00:00 UTC
        ("2020-10-09T00:00", {"at": ["07:00"]}, "Asia/Jakarta", "2020-10-09T00:00", "2020-10-08T00:00"),
        ("2020-10-09T07:29", {"every": "30m"}, "UTC", "2020-10-09T07:00", "2020-10-09T06:30"),
    ],
)
def test_due_slot(now: str, settings: dict[str, Any], zone: str, slot: str, previous: str) -> None:
    def utc(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    assert due_slot(utc(now), DigestSettings.model_validate(settings), zone) == (utc(slot), utc(previous))


def test_post_to_dict_shows_the_digest() -> None:
    fake = FakeChannel()
    story = _story("One")
    post = fake.render_digest(Digest("Pagi", (story,), more=4))
    shown = post.to_dict()["digest"]
    assert shown["title"] == "Pagi" and shown["more"] == 4 and shown["stories"][0]["title"] == "One"
    assert fake.render(story).to_dict()["digest"] is None


async def test_corrections_retractions_and_digests_on_postgres(
    env_factory: Callable[..., Any], pg_url: str
) -> None:
    env = await env_factory(
        '[channels.daily]\ntype = "fake"\ndigest = { every = "1h", only = true }\n',
        channels=("fake", "daily"),
        start=datetime(2020, 10, 9, 18, 10, tzinfo=UTC),
        store=pg_url,
    )
    assert not env.app.store.is_sqlite
    env.publish(item(1, "Before"), item(2))
    await env.poll()
    await env.app.dispatcher.drain()
    env.publish(item(1, "After"), item(2))
    await env.poll()
    await env.poll()  # the same correction again: one edit
    assert len(await env.rows(action="edit")) == 1
    await env.app.dispatcher.drain()
    assert [p.story.title for p, _ in env.channels["fake"].edited] == ["After"]
    await admin_of(env).retract("https://e.example/2", by="test")
    await admin_of(env).retract("https://e.example/2", by="test")
    assert len(await env.rows(action="delete")) == 1
    env.clock.now = datetime(2020, 10, 9, 19, 0, tzinfo=UTC)
    results = await asyncio.gather(digest_planner(env.app).tick(), digest_planner(env.app).tick())
    assert sorted(len(r) for r in results) == [0, 1]
    await env.app.dispatcher.drain()
    assert [p.remote_id for p in env.channels["fake"].deleted] == ["remote-2"]
    (digest,) = env.channels["daily"].digests
    assert digest.digest is not None and [s.title for s in digest.digest.stories] == ["After"]


async def test_edits_deletions_and_retracted_stories_are_not_posts(env_factory: Callable[..., Any]) -> None:
    env = await env_factory()
    env.publish(item(1, "A"), item(2))
    await env.poll()
    await env.app.dispatcher.drain()
    env.publish(item(1, "B"), item(2))
    await env.poll()
    await admin_of(env).retract("https://e.example/2", by="test")
    await env.app.dispatcher.drain()
    assert len(env.channels["fake"].edited) == 1 and len(env.channels["fake"].deleted) == 1
    stories = env.app.store.stories
    assert [s.title for s in await stories.latest_posted("fake")] == ["B"]  # once, and not story 2
    assert [s.title for s in await stories.latest()] == ["B"]
    since = env.clock.now - timedelta(days=1)
    assert await env.app.store.outbox.sent_since("fake", since) == 2  # the two posts only
    assert await env.app.store.reports.posts_since(since) == {"fake": 2}


async def test_once_sends_a_digest_that_is_due(
    feed_server: FeedServer, make_config: Callable[[str], Config], fake_type: None
) -> None:
    from bot.daemon import run_once

    feed_server.routes["/f"] = Route(body=rss([item(1), item(2)]))
    config = make_config(CONFIG.format(url=feed_server.url("/f"), extra=DIGEST_ONLY))
    fake = FakeChannel("fake", config.channels["fake"])
    clock = Clock(datetime(2020, 10, 9, 19, 0, tzinfo=UTC))  # the 19:00 slot
    assert await run_once(build(config, channels={"fake": fake}, clock=clock)) == 0
    (digest,) = fake.digests
    assert digest.digest is not None and [s.title for s in digest.digest.stories] == ["Story 2", "Story 1"]
    assert fake.sent == [digest]


def test_check_shows_the_editorial_settings(
    make_config: Callable[[str], Config],
    fake_type: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.preview import check, editorial_rows

    monkeypatch.setenv("COLUMNS", "200")  # rich tables: one line per row
    config = make_config(
        '[[feeds]]\nname = "f"\nurl = "f.xml"\n\n'
        '[channels.c]\ntype = "fake"\nquiet_hours = "22:00-06:00"\nquiet = "hold"\n'
        'digest = { at = ["07:00"], max = 5, only = true }\n\n'
        '[channels.plain]\ntype = "fake"\n\n'
        '[[priority]]\ntitle_pattern = "^BREAKING:"\n'
    )
    assert editorial_rows(config) == [("c", "edit", "22:00-06:00 hold", "07:00, max 5, digest only")]
    assert check(config) == 0
    out = capsys.readouterr().out
    assert "22:00-06:00 hold" in out and "07:00, max 5, digest only" in out
    assert "plain" not in out.split("Editorial")[1]  # no editorial settings, not listed
    assert "breaking news rule 1: title ^BREAKING: -> '🔴 BREAKING'" in out
