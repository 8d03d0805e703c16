"""Editorial actions on `type = "telegram"` against the strict fake Bot API: corrections edit the
message (text or caption), retractions delete it (48-hour rule), breaking news is loud and pinned
then unpinned after `pin_for`, quiet hours silence ordinary posts, and the digest is an HTML list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.app import App, build
from bot.channel import AlreadyDone, Permanent
from bot.config import Config
from bot.daemon import prepare
from bot.types import Digest, Published, Story
from channels.telegram.poster import TelegramChannel, parse_remote_id
from tests.fake_telegram import TOKEN, FakeTelegram, parse_html, utf16_len
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route, rss

CONFIG = """
    [site]
    name = "Medcom"
    url = "https://www.medcom.id"
    timezone = "Asia/Jakarta"

    [telegram]
    token = "{token}"
    api_base_url = "{api}"
    admins = [900]
    request_timeout = 5

    [[feeds]]
    name = "f"
    url = "http://127.0.0.1:9/f"

    [channels.tg]
    type = "telegram"
    chat = "@siarnews"
    rate_limit = "1000/s"
    quiet_hours = "22:00-06:00"
    {extra}
"""
NOON = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)  # 12:00 in Jakarta
NIGHT = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)  # 23:00 in Jakarta: quiet hours


@dataclass
class Env:
    fake: FakeTelegram
    app: App
    clock: Clock
    alerts: list[str]

    @property
    def channel(self) -> TelegramChannel:
        channel = self.app.channels["tg"]
        assert isinstance(channel, TelegramChannel)
        return channel

    async def post(self, story: Story) -> Published:
        receipt = await self.channel.send(self.channel.render(story), idempotency_key="k")
        return Published(receipt.remote_id, receipt.url, self.clock())


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as tg:
        tg.channel(-1001, username="siarnews")
        tg.user(900, "Admin")
        yield tg


@pytest.fixture
def make_env(make_config: Callable[[str], Config], fake: FakeTelegram) -> Callable[..., object]:
    async def make(extra: str = "") -> Env:
        config = make_config(CONFIG.format(token=TOKEN, api=fake.url, extra=extra))
        clock = Clock(NOON)
        fake.clock = lambda: clock().timestamp()
        app = build(config, clock=clock)
        assert not app.unavailable, app.unavailable
        alerts: list[str] = []

        async def sink(source: str, message: str) -> None:
            alerts.append(f"{source}: {message}")

        app.channels["tg"].context.alerts.add_sink(sink)  # type: ignore[attr-defined]
        await prepare(app)
        env = Env(fake, app, clock, alerts)
        # Rate limits are tested elsewhere; here a loaded machine must not turn one slow request
        # into a flood-control answer for the next (the pacer counts real seconds).
        assert env.channel.bot is not None
        env.channel.bot.pacer.chat_gap = 0.0
        fake.per_chat_per_s = 1000
        return env

    return make


@pytest.fixture
async def env(make_env: Callable[..., object]) -> AsyncIterator[Env]:
    made: Env = await make_env()  # type: ignore[misc]
    yield made
    await made.app.close()


def story(**changes: object) -> Story:
    base = {
        "uid": "1",
        "feed": "f",
        "url": "https://www.medcom.id/nasional/1-banjir",
        "title": "Banjir di Jakarta",
        "lead": "Air naik <b>dua meter</b> & terus naik.",
        "section": "Nasional",
    }
    return Story(**{**base, **changes})  # type: ignore[arg-type]


# --- corrections ---------------------------------------------------------------------------


async def test_correction_edits_the_text_message(env: Env) -> None:
    published = await env.post(story())
    (message,) = env.fake.messages(-1001)
    assert parse_remote_id(published.remote_id) == (message["message_id"], False)

    corrected = env.channel.render(story(title="Banjir di Jakarta Utara"))
    receipt = await env.channel.edit(corrected, published, idempotency_key="e1")
    assert receipt.remote_id == published.remote_id and receipt.url == published.url
    assert message["plain"].startswith("Banjir di Jakarta Utara") and message["edits"] == 1
    assert [c[0] for c in env.fake.calls].count("editMessageText") == 1
    # Telegram refuses an edit that changes nothing: the correction is already there.
    with pytest.raises(AlreadyDone):
        await env.channel.edit(corrected, published, idempotency_key="e1")
    assert message["edits"] == 1


async def test_correction_edits_a_photo_posts_caption(env: Env) -> None:
    published = await env.post(story(image="https://img.example/1.jpg"))
    (message,) = env.fake.messages(-1001)
    assert published.remote_id.endswith(":caption")
    await env.channel.edit(
        env.channel.render(story(image="https://img.example/1.jpg", title="Banjir surut")),
        published,
        idempotency_key="e1",
    )
    assert message["caption"].startswith("<b>Banjir surut</b>")
    assert "editMessageText" not in [c[0] for c in env.fake.calls]
    # The corrected story lost its image and has a long lead: the caption is still fitted to 1024.
    await env.channel.edit(
        env.channel.render(story(title="Banjir surut lagi", lead="Panjang sekali. " * 200)),
        published,
        idempotency_key="e2",
    )
    assert utf16_len(message["plain"]) <= 1024 and message["plain"].startswith("Banjir surut lagi")


async def test_a_photo_post_stored_as_a_bare_id_is_edited_as_a_caption(env: Env) -> None:
    published = await env.post(story(image="https://img.example/1.jpg"))
    bare = Published(published.remote_id.split(":")[0], published.url, published.posted_at)
    await env.channel.edit(env.channel.render(story(title="Dikoreksi")), bare, idempotency_key="e1")
    assert env.fake.messages(-1001)[0]["caption"].startswith("<b>Dikoreksi</b>")


async def test_editing_a_message_deleted_by_hand_is_permanent(env: Env) -> None:
    published = await env.post(story())
    env.fake.messages(-1001)[0]["deleted"] = True
    with pytest.raises(Permanent, match="no longer in @siarnews"):
        await env.channel.edit(env.channel.render(story(title="X")), published, idempotency_key="e1")


async def test_remote_id_that_is_not_ours_is_permanent(env: Env) -> None:
    with pytest.raises(Permanent, match="not a Telegram message id"):
        await env.channel.delete(Published("at://did:plc:x/app.bsky.feed.post/1"), idempotency_key="d")


# --- retractions -------------------------------------------------------------------------------


async def test_retraction_deletes_once(env: Env) -> None:
    published = await env.post(story())
    receipt = await env.channel.delete(published, idempotency_key="d1")
    assert receipt.note == "deleted" and env.fake.live(-1001) == []
    with pytest.raises(AlreadyDone, match="gone"):
        await env.channel.delete(published, idempotency_key="d1")


async def test_retraction_after_48_hours_is_permanent_with_the_reason(env: Env) -> None:
    published = await env.post(story())
    env.clock.advance(47 * 3600)
    second = await env.post(story(uid="2", title="Kedua"))
    env.clock.advance(2 * 3600)
    with pytest.raises(Permanent) as caught:
        await env.channel.delete(published, idempotency_key="d1")
    assert "49 h ago" in caught.value.reason and "within 48 hours" in caught.value.reason
    assert len(env.fake.live(-1001)) == 2
    await env.channel.delete(second, idempotency_key="d2")  # 2 hours old: still allowed
    assert len(env.fake.live(-1001)) == 1


async def test_an_admin_with_delete_rights_deletes_older_posts(env: Env) -> None:
    published = await env.post(story())
    env.fake.chats[-1001].bot_rights.add("can_delete_messages")
    env.clock.advance(72 * 3600)
    await env.channel.delete(published, idempotency_key="d1")
    assert env.fake.live(-1001) == []


# --- breaking news and quiet hours ------------------------------------------------------------


async def test_quiet_hours_silence_ordinary_posts_but_not_breaking_news(env: Env) -> None:
    env.clock.now = NIGHT
    await env.post(story())
    await env.post(story(uid="2", breaking="🔴 BREAKING", title="Gempa"))
    env.clock.now = NOON
    await env.post(story(uid="3"))
    quiet, loud, day = env.fake.messages(-1001)
    assert quiet["disable_notification"] is True
    assert loud["disable_notification"] is False
    assert day["disable_notification"] is False
    assert loud["plain"].startswith("🔴 BREAKING Gempa")  # the default template's prefix


async def test_breaking_news_is_pinned_and_unpinned_after_pin_for(env: Env) -> None:
    first = await env.post(story(breaking="🔴 BREAKING", title="Gempa"))
    first_id, _ = parse_remote_id(first.remote_id)
    chat = env.fake.chats[-1001]
    assert chat.pinned == [first_id]
    env.clock.advance(3600)
    second = await env.post(story(uid="2", breaking="🔴 BREAKING", title="Gempa susulan"))
    second_id, _ = parse_remote_id(second.remote_id)
    assert chat.pinned == [first_id, second_id]  # the first one has 1 h of its 2 h left
    env.clock.advance(3600)
    assert await env.channel.unpin_due() == 1  # the periodic task's work
    assert chat.pinned == [second_id]
    env.clock.advance(3600)
    await env.post(story(uid="3", title="Biasa"))  # a later send unpins too
    assert chat.pinned == [] and "unpinChatMessage" in [c[0] for c in env.fake.calls]
    assert await env.channel.unpin_due() == 0  # nothing is unpinned twice


async def test_deleting_a_pinned_post_forgets_the_pin(env: Env) -> None:
    published = await env.post(story(breaking="🔴 BREAKING"))
    await env.channel.delete(published, idempotency_key="d1")
    env.clock.advance(3 * 3600)
    assert await env.channel.unpin_due() == 0
    assert "unpinChatMessage" not in [c[0] for c in env.fake.calls]


async def test_without_pin_rights_the_post_still_goes_and_admins_are_told(env: Env) -> None:
    env.fake.chats[-1001].bot_rights.discard("can_edit_messages")
    published = await env.post(story(breaking="🔴 BREAKING"))
    assert published.remote_id and env.fake.chats[-1001].pinned == []
    assert any("cannot pin breaking news" in a and "not enough rights" in a.lower() for a in env.alerts)


async def test_a_silent_channel_still_rings_for_breaking_news(make_env: Callable[..., object]) -> None:
    env: Env = await make_env("silent = true")  # type: ignore[misc]
    try:
        await env.post(story())
        await env.post(story(uid="2", breaking="🔴 BREAKING"))
        assert [m["disable_notification"] for m in env.fake.messages(-1001)] == [True, False]
        assert env.fake.messages(-1001)[1]["pin_notification"] is True
    finally:
        await env.app.close()


async def test_pin_breaking_off(make_env: Callable[..., object]) -> None:
    env: Env = await make_env('pin_breaking = false\n    pin_for = "30m"')  # type: ignore[misc]
    try:
        await env.post(story(breaking="🔴 BREAKING"))
        assert env.fake.chats[-1001].pinned == []
        assert env.channel.settings.pin_for == 1800
    finally:
        await env.app.close()


# --- digests ---------------------------------------------------------------------------------


async def test_digest_is_an_html_list_of_linked_titles_within_4096(env: Env) -> None:
    stories = tuple(
        story(uid=str(i), url=f"https://www.medcom.id/n/{i}", title=f"Judul <{i}> " + "panjang " * 12)
        for i in range(50)
    )
    digest = Digest("Rangkuman pagi", stories, more=3)
    post = env.channel.render_digest(digest)
    assert post.digest is not None and post.digest.title == "Rangkuman pagi" and post.parse_mode == "HTML"
    plain, entities = parse_html(post.text)
    assert entities <= 100
    assert utf16_len(plain) <= 4096 and plain.startswith("Rangkuman pagi")
    kept = post.text.count("<a href=")
    assert 10 < kept < 50 and f"… +{3 + 50 - kept}" in plain
    assert '<a href="https://www.medcom.id/n/0">Judul &lt;0&gt;' in post.text
    await env.channel.send(post, idempotency_key="dg")
    (message,) = env.fake.messages(-1001)
    assert message["link_preview_options"] == {"is_disabled": True}


# --- the fake Bot API is strict where Telegram is ----------------------------------------------


async def test_the_fake_edits_deletes_and_pins_by_telegrams_rules(fake: FakeTelegram) -> None:
    import aiohttp

    async def call(method: str, **params: object) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{fake.url}/bot{TOKEN}/{method}", json=params) as response,
        ):
            body = await response.json()
            return response.status, body.get("description", "") if not body["ok"] else "ok"

    now = [1_700_000_000.0]
    fake.clock = lambda: now[0]
    fake.per_chat_per_s = 1000
    assert await call("sendMessage", chat_id=-1001, text="a") == (200, "ok")
    assert await call("editMessageText", chat_id=-1001, message_id=1, text="a") == (
        400,
        "Bad Request: message is not modified: specified new message content and reply markup "
        "are exactly the same as a current content and reply markup of the message",
    )
    assert await call("editMessageCaption", chat_id=-1001, message_id=1, caption="b") == (
        400,
        "Bad Request: there is no caption in the message to edit",
    )
    assert await call("editMessageText", chat_id=-1001, message_id=9, text="b") == (
        400,
        "Bad Request: message to edit not found",
    )
    assert await call("unpinChatMessage", chat_id=-1001, message_id=1) == (
        400,
        "Bad Request: message to unpin not found",
    )
    fake.chats[-1001].bot_rights = {"can_post_messages"}
    assert await call("pinChatMessage", chat_id=-1001, message_id=1) == (
        400,
        "Bad Request: not enough rights to manage pinned messages in the chat",
    )
    now[0] += 48 * 3600
    assert await call("deleteMessage", chat_id=-1001, message_id=1) == (
        400,
        "Bad Request: message can't be deleted",
    )
    fake.chats[-1001].bot_rights.add("can_delete_messages")  # an admin may delete older ones
    assert await call("deleteMessage", chat_id=-1001, message_id=1) == (200, "ok")
    assert await call("deleteMessage", chat_id=-1001, message_id=1) == (
        400,
        "Bad Request: message to delete not found",
    )


# --- through the core: feed -> correction -> retraction -> pin coming down -------------------

E2E = """
    [site]
    name = "Medcom"
    timezone = "UTC"

    [telegram]
    token = "{token}"
    api_base_url = "{api}"

    [[feeds]]
    name = "f"
    url = "{feed}"
    first_run = "all"

    [[priority]]
    title_pattern = "^BREAKING:"
    label = "🔴 TERKINI"

    [channels.tg]
    type = "telegram"
    chat = "@siarnews"
    rate_limit = "1000/s"

    [channels.readers]
    type = "telegram-subscribers"
    edit_readers = true
    delete_readers = true
"""


def entry(n: int, title: str) -> dict[str, str]:
    return {
        "title": title,
        "link": f"https://e.example/{n}",
        "guid": f"g{n}",
        "description": f"Lead {n}.",
        "pubDate": f"Fri, 09 Oct 2020 1{n}:00:00 +0000",
    }


async def test_corrections_retractions_and_pins_through_the_dispatcher(
    make_config: Callable[[str], Config], feed_server: FeedServer, fake: FakeTelegram
) -> None:
    fake.user(1, "Ani")
    fake.per_chat_per_s = 1000
    config = make_config(E2E.format(token=TOKEN, api=fake.url, feed=feed_server.url("/f")))
    clock = Clock(datetime(2020, 10, 9, 20, 0, tzinfo=UTC))
    fake.clock = lambda: clock().timestamp()
    app = build(config, clock=clock)
    await prepare(app)
    try:
        fake.send_text(1, "/start")
        await fake.wait_sent(1, 1)

        def news() -> list[dict[str, Any]]:
            return [m for m in fake.messages(1) if "link_preview_options" in m]

        feed_server.routes["/f"] = Route(body=rss([entry(1, "Gempa M5"), entry(2, "BREAKING: Banjir")]))
        await app.poller.poll(config.feeds[0], force=True)
        await app.dispatcher.drain()
        channel = {m["plain"].split("\n")[0]: m for m in fake.messages(-1001)}
        assert set(channel) == {"Gempa M5", "🔴 TERKINI BREAKING: Banjir"}
        assert fake.chats[-1001].pinned == [channel["🔴 TERKINI BREAKING: Banjir"]["message_id"]]
        assert len(news()) == 2

        clock.advance(600)  # the feed corrects a title: the channel post and the reader's message follow
        feed_server.routes["/f"] = Route(body=rss([entry(1, "Gempa M6"), entry(2, "BREAKING: Banjir")]))
        await app.poller.poll(config.feeds[0], force=True)
        await app.dispatcher.drain()
        assert channel["Gempa M5"]["plain"].startswith("Gempa M6") and channel["Gempa M5"]["edits"] == 1
        edited = [m for m in news() if m.get("edits")]
        assert len(edited) == 1 and edited[0]["plain"].startswith("Gempa M6")

        assert app.admin is not None  # the story is taken back: both messages go
        done, report = await app.admin.retract("https://e.example/1", reason="wrong", by="test")
        assert done and "  tg: deletion queued" in report and "  readers: deletion queued" in report
        await app.dispatcher.drain()
        assert channel["Gempa M5"]["deleted"] is True and edited[0]["deleted"] is True
        assert not channel["🔴 TERKINI BREAKING: Banjir"].get("deleted")

        clock.advance(2 * 3600)  # pin_for has passed: the next look takes the pin down
        tg = app.channels["tg"]
        assert isinstance(tg, TelegramChannel)
        assert await tg.unpin_due() == 1 and fake.chats[-1001].pinned == []
    finally:
        await app.close()
