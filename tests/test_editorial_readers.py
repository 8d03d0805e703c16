"""The reader bot's editorial side against the strict fake Bot API: readers' own quiet hours
(/senyap) and digest-only choice (/ringkasan), and corrections / retractions reaching every
reader's message (`edit_readers`, `delete_readers`) through the fan-out ledger, resumably."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.app import App, build
from bot.channel import Permanent, RetryLater
from bot.config import Config
from bot.daemon import prepare
from bot.types import Digest, Published, Story
from channels.telegram.fanout import SubscriberChannel
from channels.telegram.readerbot import parse_reader_hours
from channels.telegram.store import Subscriber
from tests.fake_telegram import TOKEN, FakeTelegram
from tests.fakes import Clock

CONFIG = """
    [site]
    name = "Medcom"
    timezone = "Asia/Jakarta"

    [telegram]
    token = "{token}"
    api_base_url = "{api}"
    admins = [900]

    [[feeds]]
    name = "f"
    url = "http://127.0.0.1:9/f"

    [channels.readers]
    type = "telegram-subscribers"
    {extra}
"""
NOON = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)  # 12:00 in Jakarta
NIGHT = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)  # 23:00 in Jakarta


@dataclass
class Env:
    fake: FakeTelegram
    app: App
    clock: Clock

    @property
    def readers(self) -> SubscriberChannel:
        channel = self.app.channels["readers"]
        assert isinstance(channel, SubscriberChannel)
        return channel

    async def say(self, user: int, text: str) -> dict[str, Any]:
        before = len(self.fake.messages(user))
        self.fake.send_text(user, text)
        return (await self.fake.wait_sent(user, before + 1))[-1]

    async def subscriber(self, chat: int) -> Subscriber:
        assert self.readers.store is not None
        found = await self.readers.store.subscriber("readers", chat)
        assert found is not None
        return found

    async def broadcast(self, story: Story, key: str) -> Published:
        receipt = await self.readers.send(self.readers.render(story), idempotency_key=key)
        return Published(receipt.remote_id, receipt.url, self.clock())

    def news(self, chat: int) -> list[dict[str, Any]]:
        """What `chat` got from broadcasts (not the bot's replies)."""
        return [m for m in self.fake.messages(chat) if "link_preview_options" in m]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as tg:
        tg.user(1, "Ani", language="id")
        tg.user(2, "Bob", language="en")
        tg.user(3, "Cici", language="id")
        tg.user(900, "Admin")
        yield tg


@pytest.fixture
def make_env(make_config: Callable[[str], Config], fake: FakeTelegram) -> Callable[..., Any]:
    made: list[App] = []

    async def make(extra: str = "") -> Env:
        config = make_config(CONFIG.format(token=TOKEN, api=fake.url, extra=extra))
        clock = Clock(NOON)
        fake.clock = lambda: clock().timestamp()
        app = build(config, clock=clock)
        assert not app.unavailable, app.unavailable
        await prepare(app)
        made.append(app)
        env = Env(fake, app, clock)
        assert env.readers.pacer is not None
        env.readers.pacer.chat_gap = 0.0  # tests talk faster than people
        fake.per_chat_per_s = 1000
        for user in (1, 2, 3):
            await env.say(user, "/start")
        return env

    return make


@pytest.fixture
async def env(make_env: Callable[..., Any]) -> AsyncIterator[Env]:
    made: Env = await make_env(
        'edit_readers = true\n    delete_readers = true\n    digest = { at = ["07:00"] }'
    )
    yield made
    await made.app.close()


def story(**changes: object) -> Story:
    base = {"uid": "1", "feed": "f", "url": "https://m.example/n/1", "title": "Banjir", "section": "Nasional"}
    return Story(**{**base, **changes})  # type: ignore[arg-type]


# --- /senyap -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,stored",
    [
        ("22-06", "22:00-06:00"),
        ("22:30-6", "22:30-06:00"),
        ("22.00 - 06.00", "22:00-06:00"),
        ("1-5", "01:00-05:00"),
        ("22-22", None),
        ("25-06", None),
        ("malam", None),
        ("22:61-06", None),
    ],
)
def test_reader_hours_are_parsed_strictly(text: str, stored: str | None) -> None:
    assert parse_reader_hours(text) == stored


async def test_quiet_hours_silence_a_readers_news_but_not_breaking_news(env: Env) -> None:
    answer = await env.say(1, "/senyap 22-06")
    assert "22:00-06:00" in answer["plain"] and "Asia/Jakarta" in answer["plain"]
    assert (await env.subscriber(1)).quiet_hours == "22:00-06:00"
    english = await env.say(2, "/quiet 21:30-05:00")
    assert "Quiet hours set: 21:30-05:00" in english["plain"]

    env.clock.now = NIGHT
    await env.broadcast(story(), "b1")
    await env.broadcast(story(uid="2", title="Gempa", breaking="🔴 BREAKING"), "b2")
    env.clock.now = NOON
    await env.broadcast(story(uid="3", title="Siang"), "b3")
    ani = [m["disable_notification"] for m in env.news(1)]
    bob = [m["disable_notification"] for m in env.news(2)]
    cici = [m["disable_notification"] for m in env.news(3)]
    assert ani == [True, False, False]  # quiet at night; breaking news rings; noon rings
    assert bob == [True, False, False]
    assert cici == [False, False, False]  # no quiet hours of her own
    assert env.news(1)[1]["plain"].startswith("🔴 BREAKING Gempa")


async def test_quiet_off_show_and_bad_input(env: Env) -> None:
    await env.say(1, "/senyap 22-06")
    shown = await env.say(1, "/senyap")
    assert "Jam senyap Anda: 22:00-06:00" in shown["plain"] and "/senyap off" in shown["plain"]
    bad = await env.say(1, "/senyap <malam>")
    assert "Jam tidak dikenali: <malam>" in bad["plain"]
    assert (await env.subscriber(1)).quiet_hours == "22:00-06:00"  # unchanged
    off = await env.say(1, "/senyap off")
    assert "dimatikan" in off["plain"] and (await env.subscriber(1)).quiet_hours is None


async def test_not_subscribed_readers_are_told(env: Env) -> None:
    await env.say(3, "/stop")
    assert "belum berlangganan" in (await env.say(3, "/senyap 22-06"))["plain"]
    assert "belum berlangganan" in (await env.say(3, "/ringkasan"))["plain"]


async def test_help_lists_the_new_commands(env: Env) -> None:
    assert "/senyap 22-06" in (await env.say(1, "/bantuan"))["plain"]
    assert "/ringkasan" in (await env.say(1, "/bantuan"))["plain"]
    english = (await env.say(2, "/help"))["plain"]
    assert "/quiet 22-06" in english and "/digest" in english
    assert [c["command"] for c in env.fake.commands["id"]][4:6] == ["senyap", "ringkasan"]
    assert [c["command"] for c in env.fake.commands["en"]][4:6] == ["quiet", "digest"]


# --- /ringkasan ----------------------------------------------------------------------------------


async def test_digest_only_readers_get_digests_and_breaking_news_only(env: Env) -> None:
    on = await env.say(1, "/ringkasan")
    assert "hanya menerima ringkasan" in on["plain"] and (await env.subscriber(1)).digest_only
    await env.broadcast(story(), "b1")
    await env.broadcast(story(uid="2", title="Gempa", breaking="🔴 BREAKING"), "b2")
    digest = Digest("Rangkuman pagi", (story(), story(uid="2", title="Gempa")))
    post = env.readers.render_digest(digest)
    assert post.digest is not None and post.digest.title == "Rangkuman pagi"
    await env.readers.send(post, idempotency_key="d1")
    assert [m["plain"].split("\n")[0] for m in env.news(1)] == ["🔴 BREAKING Gempa", "Rangkuman pagi"]
    assert [m["plain"].split("\n")[0] for m in env.news(2)] == ["Banjir", "🔴 BREAKING Gempa"]
    off = await env.say(1, "/ringkasan")
    assert "kembali menerima" in off["plain"] and not (await env.subscriber(1)).digest_only


async def test_a_digest_only_channel_sends_digests_to_everyone(make_env: Callable[..., Any]) -> None:
    env: Env = await make_env('digest = { every = "1h", only = true }')
    try:
        await env.say(1, "/ringkasan")
        post = env.readers.render_digest(Digest("Rangkuman", (story(),)))
        await env.readers.send(post, idempotency_key="d")
        assert [len(env.news(chat)) for chat in (1, 2, 3)] == [1, 1, 1]
    finally:
        await env.app.close()


async def test_without_a_digest_the_reader_cannot_choose_digest_only(make_env: Callable[..., Any]) -> None:
    env: Env = await make_env()
    try:
        answer = await env.say(1, "/ringkasan")
        assert "belum mengirim ringkasan" in answer["plain"]
        assert not (await env.subscriber(1)).digest_only
        assert not env.readers.can_edit and not env.readers.can_delete  # both off by default
        # by a setting, not by the platform: corrections and retractions name the setting
        assert env.readers.turned_off == {"edit": "edit_readers", "delete": "delete_readers"}
        published = await env.broadcast(story(), "b1")
        with pytest.raises(Permanent, match="edit_readers is off"):
            await env.readers.edit(env.readers.render(story(title="X")), published, idempotency_key="e")
        with pytest.raises(Permanent, match="delete_readers is off"):
            await env.readers.delete(published, idempotency_key="d")
        assert not any(m.get("edits") or m.get("deleted") for m in env.news(1))
    finally:
        await env.app.close()


# --- corrections and retractions reach the readers --------------------------------------------


async def test_a_correction_edits_every_readers_message_once(env: Env) -> None:
    assert env.readers.can_edit and env.readers.can_delete
    published = await env.broadcast(story(), "b1")
    corrected = env.readers.render(story(title="Banjir surut"))
    receipt = await env.readers.edit(corrected, published, idempotency_key="e1")
    assert "edited for 3 of 3 readers" in receipt.note
    for chat in (1, 2, 3):
        (message,) = env.news(chat)
        assert message["plain"].startswith("Banjir surut") and message["edits"] == 1
    # Bob's English buttons survive the edit.
    assert env.news(2)[0]["reply_markup"]["inline_keyboard"][0][0]["text"] == "Read more"
    # Run again (a resend of the same row): the ledger has them all done; nothing more is sent.
    calls = len(env.fake.calls)
    await env.readers.edit(corrected, published, idempotency_key="e1")
    assert len(env.fake.calls) == calls
    # A second correction with the same text: Telegram says "not modified", which counts as done.
    again = await env.readers.edit(corrected, published, idempotency_key="e2")
    assert "edited for 3 of 3" in again.note and env.news(1)[0]["edits"] == 1


async def test_an_interrupted_correction_resumes_with_the_readers_left(env: Env) -> None:
    published = await env.broadcast(story(), "b1")
    env.fake.fail(500, "Internal Server Error", method="editMessageText", chat=2, count=100)
    corrected = env.readers.render(story(title="Banjir surut"))
    with pytest.raises(RetryLater, match="1 of 3 readers to do"):
        await env.readers.edit(corrected, published, idempotency_key="e1")
    env.fake.failures.clear()
    await env.readers.edit(corrected, published, idempotency_key="e1")
    assert [env.news(chat)[0].get("edits") for chat in (1, 2, 3)] == [1, 1, 1]


async def test_a_retraction_deletes_every_readers_message(env: Env) -> None:
    published = await env.broadcast(story(), "b1")
    env.news(3)[0]["deleted"] = True  # Cici deleted it herself
    receipt = await env.readers.delete(published, idempotency_key="x1")
    assert "deleted for 2 of 3 readers; 1 gone" in receipt.note
    assert all(m.get("deleted") for chat in (1, 2, 3) for m in env.news(chat))


async def test_readers_messages_older_than_48_hours_cannot_be_deleted(env: Env) -> None:
    published = await env.broadcast(story(), "b1")
    env.clock.advance(49 * 3600)
    receipt = await env.readers.delete(published, idempotency_key="x1")
    assert "3 failed" in receipt.note
    assert not any(m.get("deleted") for chat in (1, 2, 3) for m in env.news(chat))
