"""The reader bot end to end: users play against the fake Bot API, stories arrive from a feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bot.app import App, build
from bot.channel import Permanent
from bot.config import Config
from bot.daemon import prepare
from bot.fanout import RecipientOutcome
from bot.types import Story
from channels.telegram.fanout import SubscriberChannel
from channels.telegram.pacing import ChatPacer
from channels.telegram.store import Subscriber
from channels.telegram.texts import fit_report
from channels.telegram.topics import offered_topics, toggle, wants
from tests.fake_telegram import TOKEN, FakeTelegram, parse_html, utf16_len
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route, rss

CONFIG = """
    [site]
    name = "Medcom"

    [cta]
    follow_text = "Ikuti kami di media sosial"
    follow_links = [{{ label = "Instagram", url = "https://instagram.com/medcom" }}]

    [telegram]
    token = "{token}"
    api_base_url = "{api}"
    admins = [900]

    [[feeds]]
    name = "f"
    url = "{feed}"
    first_run = "all"

    [channels.tg]
    type = "telegram"
    chat = "@siarnews"
    rate_limit = "1000/s"

    [channels.readers]
    type = "telegram-subscribers"
    top_tags = {top_tags}
"""
A = {"title": "Putin di Sochi", "link": "https://m.example/int/1", "guid": "1", "category": "Internasional"}
B = {"title": "Timnas menang", "link": "https://m.example/ola/2", "guid": "2", "category": "Olahraga"}
C = {"title": "Erdogan ke Rusia", "link": "https://m.example/int/3", "guid": "3", "category": "Internasional"}
D = {"title": "Liga dimulai", "link": "https://m.example/ola/4", "guid": "4", "category": "Olahraga"}


@dataclass
class Env:
    fake: FakeTelegram
    app: App
    clock: Clock
    feeds: FeedServer

    @property
    def readers(self) -> SubscriberChannel:
        channel = self.app.channels["readers"]
        assert isinstance(channel, SubscriberChannel)
        return channel

    async def say(self, user: int, text: str, chat: int | None = None) -> dict[str, Any]:
        """`user` writes `text`; returns the bot's answer."""
        where = chat if chat is not None else user
        before = len(self.fake.messages(where))
        self.fake.send_text(user, text, chat_id=chat)
        return (await self.fake.wait_sent(where, before + 1))[-1]

    async def publish(self, *items: dict[str, str]) -> None:
        self.feeds.routes["/f"] = Route(body=rss(list(items)), etag=False)
        await self.app.poller.poll(self.app.config.feeds[0], force=True)
        await self.app.dispatcher.drain()

    async def subscriber(self, chat: int) -> Subscriber | None:
        assert self.readers.store is not None
        return await self.readers.store.subscriber("readers", chat)


@pytest.fixture
def start_env(make_config: Callable[[str], Config], feed_server: FeedServer) -> Callable[..., Any]:
    async def start(fake: FakeTelegram, *, quick_replies: bool = True, top_tags: int = 0) -> Env:
        config = make_config(
            CONFIG.format(token=TOKEN, api=fake.url, feed=feed_server.url("/f"), top_tags=top_tags)
        )
        clock = Clock()
        app = build(config, clock=clock)
        assert not app.unavailable, app.unavailable
        await prepare(app)
        assert app.dispatcher.started == set(app.channels)  # prepare() started them
        env = Env(fake, app, clock, feed_server)
        if quick_replies:  # tests talk faster than people: no 1 s between answers in one chat
            assert env.readers.pacer is not None
            env.readers.pacer.chat_gap = 0.0
            fake.per_chat_per_s = 1000
        return env

    return start


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as tg:
        tg.channel(-1001, username="siarnews")
        tg.user(1, "Ani", language="id")
        tg.user(2, "Bob", language="en")
        tg.user(900, "Admin", language="id")
        yield tg


@pytest.fixture
async def env(fake: FakeTelegram, start_env: Callable[..., Any]) -> AsyncIterator[Env]:
    made: Env = await start_env(fake)
    yield made
    await made.app.close()


# --- pure parts ---------------------------------------------------------------------------------


def test_topics_toggle_and_match() -> None:
    stories = [
        Story(uid=str(i), feed="f", url=f"https://x/{i}", title="t", section="Internasional", tags=tags)
        for i, tags in enumerate([("Rusia", "Putin"), ("rusia",), ("Turki",)])
    ]
    offered = offered_topics(["Internasional", "Olahraga"], stories, top_tags=2)
    assert offered == [
        ("s:internasional", "Internasional"),
        ("s:olahraga", "Olahraga"),
        ("t:rusia", "#rusia"),
        ("t:putin", "#Putin"),
    ]
    keys = [k for k, _ in offered]
    only_sport = toggle(toggle(toggle(None, "s:internasional", keys), "t:rusia", keys), "t:putin", keys)
    assert only_sport == ("s:olahraga",)
    assert toggle(only_sport, "s:olahraga", keys) is None  # nothing chosen = everything
    sub = Subscriber(1, "private", "id", only_sport, True)
    assert not wants(sub, stories[0]) and wants(sub, Story("9", "f", "u", "t", section="OLAHRAGA"))
    assert wants(Subscriber(1, "private", "id", None, True), stories[2])


def test_fit_report_counts_utf16_and_never_cuts_markup() -> None:
    assert fit_report([("a", True), ("", False), ("b & <c>", False)]) == "<b>a</b>\n\nb &amp; &lt;c&gt;"
    lines = [("Judul <&>", True)] + [("😀" * 100, False)] * 50  # 200 UTF-16 units a line
    text = fit_report(lines, limit=1000)
    plain, _ = parse_html(text)  # valid Telegram HTML
    assert text.startswith("<b>Judul &lt;&amp;&gt;</b>\n") and utf16_len(plain) <= 1000
    assert plain.split("\n")[1:] == ["😀" * 100] * 4 + ["… 46 more"]
    huge, _ = parse_html(fit_report([("😀" * 3000, False), ("b", True)]))
    assert utf16_len(huge) <= 4000 and huge.endswith("😀\n… 1 more")


async def test_pacer_spaces_chats_groups_and_overall() -> None:
    now = [0.0]
    pacer = ChatPacer(per_second=10, chat_gap=1.0, group_per_minute=2, clock=lambda: now[0])

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    real_sleep = asyncio.sleep
    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        times = []
        for chat in (1, 2, 1, -5, -5, -5):
            await pacer.wait(chat, group=chat < 0)
            times.append(round(now[0], 2))
    finally:
        asyncio.sleep = real_sleep
    assert times[:2] == [0.0, 0.05]  # never closer than half the 10/s gap
    assert times[2] == 1.0  # the same chat waits a second
    assert round(times[4] - times[3], 6) >= 1.0 and times[5] - times[3] >= 60  # 2/min for that group
    burst = []
    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        for chat in range(100, 112):
            await pacer.wait(chat)
            burst.append(now[0])
    finally:
        asyncio.sleep = real_sleep
    assert round(burst[10] - burst[0], 6) >= 1.0  # at most 10 in any second


async def test_a_turn_handed_out_early_is_kept_and_a_late_one_is_taken_again() -> None:
    now = [0.0]
    pacer = ChatPacer(per_second=10, chat_gap=1.0, clock=lambda: now[0])

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    real_sleep = asyncio.sleep
    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        first = await pacer.wait(1, lead=0.2)
        assert first == 0.2 and now[0] == 0.0  # handed out 0.2 s before its moment
        await pacer.go(1, first)
        assert now[0] == 0.2
        second = await pacer.wait(2, lead=0.2)
        now[0] = second + 0.5  # its work took longer than the lead
        await pacer.go(2, second)
        assert pacer.retaken == 1
        assert pacer.waiting_time(2) >= 0.99  # counted from when it goes, not from its old turn
    finally:
        asyncio.sleep = real_sleep


# --- readers ------------------------------------------------------------------------------------


async def test_subscribe_choose_topic_and_get_only_matching_stories(env: Env) -> None:
    fake = env.fake
    assert [c["command"] for c in fake.commands["id"]] == [
        "start",
        "stop",
        "topik",
        "terbaru",
        "senyap",
        "ringkasan",
        "bahasa",
        "bantuan",
    ]
    assert [c["command"] for c in fake.commands["en"]][2] == "topics"
    assert fake.commands[""] == fake.commands["id"]  # [telegram] language = "id"
    welcome = await env.say(1, "/start")
    assert "Selamat datang" in welcome["plain"] and "Ikuti kami" in welcome["plain"]
    assert welcome["reply_markup"]["inline_keyboard"][0][0]["url"] == "https://instagram.com/medcom"
    assert "Welcome" in (await env.say(2, "/start"))["plain"]
    await env.publish(A, B)
    assert len(fake.messages(1)) == 3 and len(fake.messages(2)) == 3  # welcome + both stories
    keyboard = await env.say(2, "/topics")
    buttons = {
        b["text"]: b["callback_data"] for row in keyboard["reply_markup"]["inline_keyboard"] for b in row
    }
    assert "✅ Internasional" in buttons and "✅ Olahraga" in buttons
    query = fake.press(2, keyboard, buttons["✅ Internasional"])
    await fake.wait_for(lambda: query in fake.answered)
    await fake.wait_for(
        lambda: any(
            b["text"] == "▫️ Internasional"
            for row in fake.messages(2)[-1]["reply_markup"]["inline_keyboard"]
            for b in row
        )
    )
    await env.publish(A, B, C, D)
    texts_1, texts_2 = fake.texts(1), fake.texts(2)
    assert sum("Erdogan" in t for t in texts_1) == 1 and sum("Liga" in t for t in texts_1) == 1
    assert not any("Erdogan" in t for t in texts_2) and sum("Liga" in t for t in texts_2) == 1
    assert len(fake.messages(-1001)) == 4  # the channel got every story once
    story_message = fake.messages(1)[-1]
    assert story_message["reply_markup"]["inline_keyboard"][0][0]["text"] == "Baca selengkapnya"
    assert fake.messages(2)[-1]["reply_markup"]["inline_keyboard"][0][0]["text"] == "Read more"


async def test_block_unsubscribes_and_start_resubscribes(env: Env) -> None:
    await env.say(1, "/start")
    env.fake.block(1)
    await env.fake.wait_for(lambda: True)
    for _ in range(100):
        sub = await env.subscriber(1)
        if sub is not None and not sub.active:
            break
        await asyncio.sleep(0.02)
    assert sub is not None and not sub.active
    await env.publish(A)
    assert not [
        c for c in env.fake.calls if c[0] == "sendMessage" and c[1].get("chat_id") == "1" and c[2] == 403
    ]  # not even tried
    env.fake.unblock(1)
    assert "Selamat datang" in (await env.say(1, "/start"))["plain"]
    sub = await env.subscriber(1)
    assert sub is not None and sub.active


async def test_forbidden_during_broadcast_unsubscribes(env: Env) -> None:
    await env.say(1, "/start")
    await env.say(2, "/start")
    env.fake.chats[2].blocked = True  # blocked, and the update was missed
    await env.publish(A)
    assert len(env.fake.messages(1)) == 2 and len(env.fake.messages(2)) == 1
    sub = await env.subscriber(2)
    assert sub is not None and not sub.active


async def test_group_needs_an_admin_and_leaving_unsubscribes(env: Env) -> None:
    env.fake.group(-70, "Warga", admins={1})
    refused = await env.say(2, "/start", chat=-70)
    assert "Only group admins" in refused["plain"] and await env.subscriber(-70) is None
    assert "Selamat datang" in (await env.say(1, "/start", chat=-70))["plain"]
    env.fake.migrate(-70, -10070)
    await env.publish(A)
    assert len(env.fake.messages(-10070)) == 1  # followed the group to its supergroup
    assert await env.subscriber(-70) is None and await env.subscriber(-10070) is not None
    env.fake.remove_bot(-10070, by=1)
    for _ in range(100):
        sub = await env.subscriber(-10070)
        if sub is not None and not sub.active:
            break
        await asyncio.sleep(0.02)
    assert sub is not None and not sub.active


async def test_flood_control_pauses_and_everyone_gets_it_once(env: Env) -> None:
    for user in (1, 2, 900):
        await env.say(user, "/start")
    env.fake.fail(
        429, "Too Many Requests: retry after 1", method="sendMessage", chat=2, parameters={"retry_after": 1}
    )
    await env.publish(A)
    assert [len(env.fake.messages(u)) for u in (1, 2, 900)] == [2, 2, 2]


async def test_latest_language_help_and_admin_commands(env: Env) -> None:
    await env.publish(A, B, C)
    latest = await env.say(1, "/terbaru")
    assert "Berita terbaru" in latest["plain"] and latest["plain"].count("•") == 3
    choose = await env.say(1, "/start") and await env.say(1, "/bahasa")
    query = env.fake.press(1, choose, "lang:en")
    await env.fake.wait_for(lambda: query in env.fake.answered)
    await env.fake.wait_for(lambda: env.fake.messages(1)[-1]["text"] == "Language set to English.")
    assert "/latest" in (await env.say(1, "/help"))["plain"]
    assert "did not understand" in (await env.say(1, "halo"))["plain"]
    not_admin = await env.say(1, "/status")
    assert "did not understand" in not_admin["plain"]
    status = await env.say(900, "/status")
    assert "Feeds" in status["plain"] and "readers" in status["plain"]
    stats = await env.say(900, "/stats")
    assert "Subscribers" in stats["plain"] and "tg: 3" in stats["plain"]


# --- broadcasts: pacing and crashes ------------------------------------------------------------


async def subscribe_many(env: Env, chats: range) -> None:
    store = env.readers.store
    assert store is not None
    for chat in chats:
        env.fake.user(chat)
        await store.subscribe("readers", chat, "private", "id", "", env.clock())


async def test_broadcast_stays_under_telegram_limits(
    fake: FakeTelegram, start_env: Callable[..., Any]
) -> None:
    env: Env = await start_env(fake, quick_replies=False)
    await subscribe_many(env, range(10, 50))
    await env.publish(A)
    assert len(fake.sent) == 41 and fake.rejected_429 == 0  # the channel post + 40 readers
    assert fake.max_in_window(1.0) <= 30
    await env.app.close()


async def test_restart_mid_broadcast_messages_nobody_twice(
    fake: FakeTelegram, start_env: Callable[..., Any]
) -> None:
    env: Env = await start_env(fake)
    await subscribe_many(env, range(10, 22))
    env.readers.settings.concurrency = 1  # one request in flight when it stops
    fake.hang_after(6)  # the channel post and 5 readers, then Telegram stops answering
    env.feeds.routes["/f"] = Route(body=rss([A]), etag=False)
    await env.app.poller.poll(env.app.config.feeds[0], force=True)
    env.app.dispatcher.start()
    await fake.wait_for(lambda: len(fake.sent) >= 7)
    await env.app.dispatcher.stop(grace=0.2)  # SIGTERM: the broadcast is cut off mid-way
    await env.app.close()
    fake._hang.set()
    fake._hang_after = None

    again: Env = await start_env(fake)  # the restart
    again.clock.advance(3600)
    await again.app.dispatcher.drain()
    per_chat = [len(fake.messages(c)) for c in range(10, 22)]
    assert per_chat == [1] * 12  # everyone once: the one in flight counted as delivered, not resent
    (story,) = await again.app.store.stories.find(A["link"])
    rows = {r["channel"]: r for r in await again.app.store.stories.outbox_of(story["id"])}
    assert rows["readers"]["status"] == "sent"
    decisions = [
        (d["decision"], d["detail"])
        for d in await again.app.store.stories.decisions_of(story["id"])
        if d["channel"] == "readers"
    ]
    assert [d for d, _ in decisions] == ["queued", "retry", "sent"]
    assert decisions[-1][1] == "sent to 11 of 12 readers; 0 failed, 1 uncertain"
    counts = await again.app.store.fanout.counts(f"siar-{rows['readers']['id']}")
    assert counts == {"sent": 11, "uncertain": 1}
    await again.app.close()


async def test_hard_crash_leaves_in_flight_chats_alone(env: Env) -> None:
    await subscribe_many(env, range(10, 15))
    ledger = env.app.store.fanout
    await ledger.plan("siar-77", "readers", range(10, 15), env.clock())
    await ledger.write("siar-77", [10, 11], [], env.clock())  # their requests left; the process died
    post = env.readers.render(Story("1", "f", "https://m.example/1", "Judul"))
    receipt = await env.readers.send(post, idempotency_key="siar-77")
    assert [len(env.fake.messages(c)) for c in range(10, 15)] == [0, 0, 1, 1, 1]
    assert receipt.note == "sent to 3 of 5 readers; 0 failed, 2 uncertain"


# --- the broadcast's own HTTP path (aiohttp, not PTB's Bot): answers mapped like PTB maps them ----


async def test_broadcast_message_is_what_ptb_would_send(env: Env) -> None:
    await subscribe_many(env, range(10, 12))
    await env.say(2, "/start")  # an English reader
    await env.publish(A)
    message = env.fake.messages(10)[-1]
    assert message["parse_mode"] == "HTML" and message["disable_notification"] is False
    assert message["link_preview_options"] == {"url": A["link"], "prefer_large_media": True}
    assert "Putin di Sochi" in message["plain"] and "<b>" in message["text"]
    assert message["reply_markup"]["inline_keyboard"][0][0] == {"text": "Baca selengkapnya", "url": A["link"]}
    assert env.fake.messages(2)[-1]["reply_markup"]["inline_keyboard"][0][0]["text"] == "Read more"
    assert message["reply_markup"]["inline_keyboard"][1][0]["url"] == "https://instagram.com/medcom"


async def test_server_errors_are_retried_and_delivered_once(env: Env) -> None:
    await subscribe_many(env, range(10, 14))
    env.fake.fail(500, "Internal Server Error", method="sendMessage", chat=12)
    env.fake.fail(502, "Bad Gateway", method="sendMessage", chat=13)
    await env.publish(A)
    assert [len(env.fake.messages(c)) for c in range(10, 14)] == [1, 1, 1, 1]
    for chat, error in (("12", 500), ("13", 502)):
        tries = [c for c in env.fake.calls if c[0] == "sendMessage" and c[1].get("chat_id") == chat]
        assert [status for _, _, status in tries] == [error, 200]


async def test_chat_not_found_fails_and_unsubscribes_only_that_chat(env: Env) -> None:
    await subscribe_many(env, range(10, 13))
    store = env.readers.store
    assert store is not None
    await store.subscribe("readers", 555, "private", "id", "", env.clock())  # never talked to the bot
    post = env.readers.render(Story("1", "f", "https://m.example/1", "Judul"))
    receipt = await env.readers.send(post, idempotency_key="siar-5")
    assert receipt.note == "sent to 3 of 4 readers; 1 failed, 0 uncertain"
    gone = await env.subscriber(555)
    assert gone is not None and not gone.active
    for chat in range(10, 13):
        sub = await env.subscriber(chat)
        assert sub is not None and sub.active


async def test_refused_token_stops_the_broadcast_and_a_retry_finishes_it(env: Env) -> None:
    await subscribe_many(env, range(10, 16))
    env.readers.settings.concurrency = 1
    env.fake.fail(401, "Unauthorized", method="sendMessage", chat=12)
    post = env.readers.render(Story("1", "f", "https://m.example/1", "Judul"))
    with pytest.raises(Permanent, match="token"):
        await env.readers.send(post, idempotency_key="siar-6")
    assert [len(env.fake.messages(c)) for c in range(10, 16)] == [1, 1, 0, 0, 0, 0]
    receipt = await env.readers.send(post, idempotency_key="siar-6")  # the token works again
    assert [len(env.fake.messages(c)) for c in range(10, 16)] == [1] * 6
    assert receipt.note == "sent to 6 of 6 readers; 0 failed, 0 uncertain"


async def test_no_answer_is_uncertain_and_never_resent(env: Env) -> None:
    await subscribe_many(env, range(10, 13))
    readers = env.readers
    assert readers._session is not None
    await readers._session.close()
    readers.section.request_timeout = 0.3  # reopen the session with a short read timeout
    readers._open_session()
    env.fake.delays["sendMessage"] = 1.0
    post = readers.render(Story("1", "f", "https://m.example/1", "Judul"))
    receipt = await readers.send(post, idempotency_key="siar-7")
    assert receipt.note == "sent to 0 of 3 readers; 0 failed, 3 uncertain"
    del env.fake.delays["sendMessage"]
    await readers.send(post, idempotency_key="siar-7")  # a retry of the row sends nothing
    await asyncio.sleep(1.0)  # the fake answers the timed-out requests
    assert len([c for c in env.fake.calls if c[0] == "sendMessage"]) == 3


async def test_network_error_detail_never_shows_the_token(env: Env) -> None:
    readers = env.readers
    readers._send_url = readers._send_url.replace(f":{env.fake.port}/", ":9/")  # nothing listens there
    outcome = await readers._send_one(10, "text=x", {})
    assert outcome.status == "retry" and outcome.detail.startswith("network: ")
    assert TOKEN not in outcome.detail and TOKEN.split(":")[1] not in outcome.detail


async def test_connection_lost_after_sending_is_uncertain_and_never_resent(env: Env) -> None:
    await subscribe_many(env, range(10, 14))
    env.fake.limits = False  # a resend would not be held back by the 1 message/s per chat
    env.fake.drop(method="sendMessage", chat=11)  # delivered, then the connection is reset
    post = env.readers.render(Story("1", "f", "https://m.example/1", "Judul"))
    receipt = await env.readers.send(post, idempotency_key="siar-9")
    assert [len(env.fake.messages(c)) for c in range(10, 14)] == [1, 1, 1, 1]
    assert receipt.note == "sent to 3 of 4 readers; 0 failed, 1 uncertain"
    await env.readers.send(post, idempotency_key="siar-9")  # a retry of the row: nothing more
    assert [len(env.fake.messages(c)) for c in range(10, 14)] == [1, 1, 1, 1]
    assert len([c for c in env.fake.calls if c[0] == "sendMessage" and c[1].get("chat_id") == "11"]) == 1


async def test_group_moved_to_a_subscribed_supergroup_gets_it_once(env: Env) -> None:
    await subscribe_many(env, range(10, 13))
    store = env.readers.store
    assert store is not None
    env.fake.group(-70, "Warga")
    await store.subscribe("readers", -70, "group", "id", "Warga", env.clock())
    env.fake.migrate(-70, -10070)  # the supergroup subscribed on its own as well
    await store.subscribe("readers", -10070, "supergroup", "id", "Warga", env.clock())
    post = env.readers.render(Story("1", "f", "https://m.example/1", "Judul"))
    receipt = await env.readers.send(post, idempotency_key="siar-10")
    assert [len(env.fake.messages(c)) for c in (10, 11, 12, -10070)] == [1, 1, 1, 1]
    assert receipt.note == "sent to 4 of 5 readers; 1 failed, 0 uncertain"
    old, new = await env.subscriber(-70), await env.subscriber(-10070)
    assert old is not None and not old.active and new is not None and new.active
    assert [s.chat_id for s in await store.active_subscribers("readers")].count(-10070) == 1
    receipt = await env.readers.send(post, idempotency_key="siar-11")  # the next story: no error
    assert [len(env.fake.messages(c)) for c in (10, 11, 12, -10070)] == [2, 2, 2, 2]


async def test_an_error_in_one_chat_leaves_the_rest_of_the_broadcast_alone(
    env: Env, monkeypatch: Any
) -> None:
    await subscribe_many(env, range(10, 16))
    store = env.readers.store
    assert store is not None
    env.fake.group(-70, "Warga")
    await store.subscribe("readers", -70, "group", "id", "Warga", env.clock())
    env.fake.migrate(-70, -10070)

    async def broken(*args: object) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(store, "move_subscriber", broken)  # recording the move fails
    env.readers.settings.concurrency = 2
    post = env.readers.render(Story("1", "f", "https://m.example/1", "Judul"))
    receipt = await env.readers.send(post, idempotency_key="siar-12")
    assert [len(env.fake.messages(c)) for c in range(10, 16)] == [1] * 6  # everyone else got it
    # The ledger had the move before the subscriber table's update failed: the group got it too.
    assert len(env.fake.messages(-10070)) == 1
    assert receipt.note == "sent to 7 of 7 readers; 0 failed, 0 uncertain"
    counts = await env.app.store.fanout.counts("siar-12")
    assert counts == {"sent": 7}  # every row recorded, none left `sending`
    calls = len(env.fake.calls)
    await asyncio.sleep(0.2)
    assert len(env.fake.calls) == calls  # no task still sending after send() returned


async def test_long_status_drops_whole_lines_and_stays_valid_html(env: Env) -> None:
    from bot.store import FeedState

    error = "HTTP 503: <html> & " + "x" * 100  # escaping makes it longer than it shows
    names = [f"berita-{i:02d} 😀" for i in range(70)]
    for name in names:
        await env.app.store.feeds.save(
            FeedState(name, f"https://m.example/{name}", failures=2, last_error=error)
        )
    await env.publish(A)  # the queues have rows
    reply = await env.say(900, "/status")
    plain = reply["plain"]
    assert utf16_len(plain) <= 4000
    lines = plain.split("\n")
    assert "Queues (pending / failed / uncertain)" in lines and "tg: 0 / 0 / 0" in lines
    shown = [line for line in lines if line.startswith("❌")]
    assert 10 < len(shown) < 70  # some feeds did not fit...
    assert set(shown) <= {f"❌ 2× {name} — {error[:80]}" for name in names}  # ...and no line is cut
    total = len(await env.app.store.feeds.all())  # these and the healthy feed "f"
    assert total == 71 and lines[-1] == f"… {total - len(shown)} more"


async def test_a_reader_bot_that_could_not_start_starts_on_the_next_try(
    fake: FakeTelegram, make_config: Callable[[str], Config], feed_server: FeedServer
) -> None:
    """Telegram unreachable at boot: every retry said "this bot token already runs a reader
    bot" until a restart, and the shared Application's user count leaked."""
    fake.fail(502, "Bad Gateway", method="getMe", count=1)
    config = make_config(CONFIG.format(token=TOKEN, api=fake.url, feed=feed_server.url("/f"), top_tags=0))
    app = build(config, clock=Clock())
    await app.store.migrate()
    assert not await app.dispatcher.start_channel("readers")
    assert await app.dispatcher.start_channel("readers")  # the next try works
    assert await app.dispatcher.start_channel("tg")  # the channel poster shares the Application
    readers = app.channels["readers"]
    assert isinstance(readers, SubscriberChannel) and readers.bot is not None
    assert readers.bot.users == 2 and readers.bot.reader is readers.reader
    fake.send_text(1, "/start")
    assert "Selamat datang" in (await fake.wait_sent(1, 1))[-1]["plain"]
    await app.close()
    assert readers.bot is None


async def test_stats_counts_this_bots_readers_only(env: Env) -> None:
    await subscribe_many(env, range(10, 13))
    await env.publish(A)
    other = env.app.store.fanout  # another reader bot's broadcast in the same store
    await other.plan("siar-9999", "other-readers", range(1, 50), env.clock())
    await other.write("siar-9999", [], [RecipientOutcome(r, "sent") for r in range(1, 50)], env.clock())
    stats = await env.say(900, "/stats")
    assert "reader messages: 3" in stats["plain"], stats["plain"]


async def test_admin_pause_and_resume_hold_a_channels_posts_without_dropping_them(env: Env) -> None:
    await env.say(1, "/start")
    paused = await env.say(900, "/pause tg")
    assert "channel tg paused" in paused["plain"]
    assert "already paused" in (await env.say(900, "/jeda tg"))["plain"]  # the Indonesian name
    await env.publish(A)
    assert env.fake.messages(-1001) == [] and len(env.fake.messages(1)) == 2  # readers still get it
    counts = (await env.app.store.reports.counts())["tg"]
    assert counts["pending"] == 1  # held, not dropped
    resumed = await env.say(900, "/resume tg")
    assert "resumed; 1 posts waiting" in resumed["plain"]
    await env.app.dispatcher.drain()
    assert len(env.fake.messages(-1001)) == 1
    assert "no channel is named 'nope'" in (await env.say(900, "/pause nope"))["plain"]


async def test_admin_why_feeds_resend_and_test(env: Env) -> None:
    await env.publish(A)
    why = await env.say(900, f"/why {A['link']}")
    assert A["title"] in why["plain"] and "tg: sent" in why["plain"]
    feeds = await env.say(900, "/feeds")
    assert "✅ f" in feeds["plain"]
    (story,) = await env.app.store.stories.find(A["link"])
    row = next(r for r in await env.app.store.stories.outbox_of(story["id"]) if r["channel"] == "tg")
    refused = await env.say(900, f"/resend {row['id']}")
    assert "cannot be resent: it is sent" in refused["plain"]
    before = len(env.fake.messages(900))
    env.fake.send_text(900, "/test")
    previews = await env.fake.wait_sent(900, before + 2)  # one message per channel
    texts = [m["plain"] for m in previews[before:]]
    assert any(t.startswith("tg (telegram)") and A["title"] in t for t in texts)
    assert any(t.startswith("readers (telegram-subscribers)") for t in texts)


async def test_admin_retract_takes_a_story_back(env: Env) -> None:
    await env.publish(A)
    usage = await env.say(900, "/tarik")
    assert "/tarik URL" in usage["plain"]
    answer = await env.say(900, f"/tarik {A['link']} salah sumber")
    assert f"retracted: {A['title']}" in answer["plain"]
    (story,) = await env.app.store.stories.find(A["link"])
    assert story["retracted_at"] is not None and story["retract_reason"] == "salah sumber"
    decisions = await env.app.store.stories.decisions_of(story["id"])
    assert any(d["decision"] == "retracted" and "telegram:900" in (d["detail"] or "") for d in decisions)
    missing = await env.say(900, "/retract https://nowhere.example/x")
    assert "no story matches" in missing["plain"]


async def test_admin_commands_are_invisible_to_readers(env: Env) -> None:
    for command in ("/pause tg", "/feeds", "/test", "/why x", "/resend 1", "/tarik x"):
        assert "tidak mengerti" in (await env.say(1, command))["plain"]  # user 1 speaks Indonesian
    assert [c["command"] for c in env.fake.commands["chat:900"]][-9:] == [
        "status",
        "stats",
        "umpan",
        "jeda",
        "lanjut",
        "kirimulang",
        "tarik",
        "mengapa",
        "uji",
    ]
    assert "chat:1" not in env.fake.commands
