"""`type = "telegram"` end to end: siar -> python-telegram-bot -> the strict fake Bot API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.app import App, build
from bot.channel import Permanent, RetryLater, Uncertain
from bot.config import Config
from bot.daemon import prepare
from bot.types import Story
from channels.telegram.poster import TelegramChannel
from tests.fake_telegram import TOKEN, FakeTelegram, parse_html, utf16_len
from tests.fakes import Clock
from tests.feedserver import FeedServer, Route, rss

CONFIG = """
    [site]
    name = "Medcom"
    url = "https://www.medcom.id"

    [cta]
    follow_text = "Ikuti kami"
    follow_links = [{{ label = "Instagram", url = "https://instagram.com/medcom" }},
                    {{ label = "YouTube", url = "https://youtube.com/medcom" }}]
    notify_text = "Aktifkan notifikasi"
    notify_url = "https://www.medcom.id/notifikasi"

    [telegram]
    token = "{token}"
    api_base_url = "{api}"
    admins = [900]
    request_timeout = {timeout}

    [[feeds]]
    name = "f"
    url = "{feed}"
    first_run = "all"

    [channels.tg]
    type = "telegram"
    chat = "{chat}"
    rate_limit = "1000/s"
"""


@dataclass
class Env:
    fake: FakeTelegram
    app: App
    clock: Clock

    @property
    def channel(self) -> TelegramChannel:
        channel = self.app.channels["tg"]
        assert isinstance(channel, TelegramChannel)
        return channel


@pytest.fixture
def make_env(
    make_config: Callable[[str], Config], feed_server: FeedServer, tmp_path: Path
) -> Callable[..., object]:
    apps: list[App] = []

    async def make(fake: FakeTelegram, chat: str = "@siarnews", timeout: float = 5.0) -> Env:
        config = make_config(
            CONFIG.format(token=TOKEN, api=fake.url, feed=feed_server.url("/f"), chat=chat, timeout=timeout)
        )
        clock = Clock()
        app = build(config, clock=clock)
        assert not app.unavailable, app.unavailable
        await prepare(app)
        apps.append(app)
        return Env(fake, app, clock)

    return make


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as tg:
        tg.channel(-1001, username="siarnews")
        tg.user(900, "Admin")
        yield tg


@pytest.fixture
async def env(fake: FakeTelegram, make_env: Callable[..., object]) -> AsyncIterator[Env]:
    made = await make_env(fake)  # type: ignore[misc]
    yield made
    await made.app.close()


def story(**changes: object) -> Story:
    base = {
        "uid": "1",
        "feed": "f",
        "url": "https://www.medcom.id/internasional/1-putin",
        "title": "Putin & <Erdogan> bertemu",
        "lead": "Pertemuan <b>penting</b> di Sochi & Ankara.",
        "tags": ("rusia", "turki"),
        "section": "Internasional",
    }
    return Story(**{**base, **changes})  # type: ignore[arg-type]


# --- the fake itself is strict ------------------------------------------------------------


@pytest.mark.parametrize(
    "html,error",
    [
        ("<p>x</p>", 'Unsupported start tag "p"'),
        ("<b>x", "Can't find end tag"),
        ("<b><i>x</b></i>", "Unmatched end tag"),
        ("1 < 2", "Unsupported start tag"),
        ("<a>x</a>", "needs an href"),
    ],
)
def test_fake_rejects_bad_html(html: str, error: str) -> None:
    with pytest.raises(Exception, match=error):
        parse_html(html)


async def test_fake_enforces_telegram_rules(fake: FakeTelegram) -> None:
    fake.user(1)
    async with httpx.AsyncClient(base_url=f"{fake.url}/bot{TOKEN}") as client:

        async def call(method: str, **data: object) -> httpx.Response:
            return await client.post(f"/{method}", json=data)

        assert (await call("sendMessage", chat_id=404, text="x")).json()[
            "description"
        ] == "Bad Request: chat not found"
        assert (await call("sendMessage", chat_id=1, text="😀" * 2049)).status_code == 400  # 4098 units
        assert (await call("sendMessage", chat_id=1, text="😀" * 2048)).status_code == 200
        throttled = await call("sendMessage", chat_id=1, text="again")
        assert throttled.status_code == 429 and throttled.json()["parameters"]["retry_after"] >= 1
        many = "".join(f"<b>{i}</b>" for i in range(101))
        fake.limits = False
        assert (
            "too many entities"
            in (await call("sendMessage", chat_id=1, text=many, parse_mode="HTML")).json()["description"]
        )
        caption = await call("sendPhoto", chat_id=1, photo="https://x/p.jpg", caption="a" * 1025)
        assert caption.json()["description"] == "Bad Request: message caption is too long"
        bad = await client.post("/sendMessage".replace("", ""), json={"chat_id": 1})
        assert bad.status_code == 400
        wrong = await httpx.AsyncClient().post(f"{fake.url}/bot1:wrong/getMe")
        assert wrong.status_code == 401


# --- render -----------------------------------------------------------------------------------


async def test_render_escapes_feed_text_and_adds_buttons(env: Env) -> None:
    post = env.channel.render(story())
    assert post.parse_mode == "HTML"
    assert post.text.startswith("<b>Putin &amp; &lt;Erdogan&gt; bertemu</b>")
    plain, _ = parse_html(post.text)  # what Telegram would accept and show
    assert "Pertemuan <b>penting</b> di Sochi & Ankara." in plain and "#Rusia #Turki" in plain
    assert [(b.text, b.url) for b in post.buttons] == [
        ("Baca selengkapnya", "https://www.medcom.id/internasional/1-putin"),
        ("Instagram", "https://instagram.com/medcom"),
        ("YouTube", "https://youtube.com/medcom"),
        ("Aktifkan notifikasi", "https://www.medcom.id/notifikasi"),
    ]


async def test_render_fits_telegram_counting(env: Env) -> None:
    long = story(lead="Kata 😀 " * 900, image="https://img.example/1.jpg")
    post = env.channel.render(long)
    plain, _ = parse_html(post.text)
    assert post.length.limit == 1024 and utf16_len(plain) <= 1024 < utf16_len(long.lead)
    assert post.length.used == utf16_len(plain.strip())
    assert plain.split("\n\n")[1].endswith("…")  # the lead was cut at a word, not the title
    fallback, _ = parse_html(post.payload.fallback_text)  # type: ignore[union-attr]
    assert 1024 < utf16_len(fallback) <= 4096
    text_only = env.channel.render(story(lead="Kata 😀 " * 900))
    assert text_only.length.limit == 4096 and text_only.media == ()


# --- send through python-telegram-bot ------------------------------------------------------------


async def test_text_post_reaches_the_channel(env: Env) -> None:
    receipt = await env.channel.send(env.channel.render(story()), idempotency_key="siar-1")
    (message,) = env.fake.messages(-1001)
    assert receipt.url == f"https://t.me/siarnews/{message['message_id']}"
    assert message["parse_mode"] == "HTML" and message["plain"].startswith("Putin & <Erdogan>")
    keyboard = message["reply_markup"]["inline_keyboard"]
    assert keyboard[0] == [
        {"text": "Baca selengkapnya", "url": "https://www.medcom.id/internasional/1-putin"}
    ]
    assert [b["text"] for b in keyboard[1]] == ["Instagram", "YouTube"]
    assert message["link_preview_options"]["url"] == "https://www.medcom.id/internasional/1-putin"


async def test_photo_post_with_caption(env: Env) -> None:
    await env.channel.send(
        env.channel.render(story(image="https://img.example/1.jpg")), idempotency_key="siar-1"
    )
    (message,) = env.fake.messages(-1001)
    assert message["method"] == "sendPhoto" and message["photo"] == "https://img.example/1.jpg"
    assert message["caption"].startswith("<b>Putin")


async def test_refused_photo_falls_back_to_text(env: Env) -> None:
    env.fake.photo_errors["https://img.example/huge.jpg"] = "Bad Request: failed to get HTTP URL content"
    post = env.channel.render(story(image="https://img.example/huge.jpg", lead="Panjang " * 300))
    await env.channel.send(post, idempotency_key="siar-1")
    (message,) = env.fake.messages(-1001)
    assert message["method"] == "sendMessage"
    assert message["text"] == post.payload.fallback_text and len(message["plain"]) > 1024  # type: ignore[union-attr]


async def test_retry_after_is_exact(env: Env) -> None:
    env.fake.fail(429, "Too Many Requests: retry after 7", parameters={"retry_after": 7})
    with pytest.raises(RetryLater) as caught:
        await env.channel.send(env.channel.render(story()), idempotency_key="siar-1")
    assert caught.value.after == 7
    assert env.fake.messages(-1001) == []


@pytest.mark.parametrize(
    "code,description,kind,reason",
    [
        (403, "Forbidden: bot is not a member of the channel chat", Permanent, "may not post in @siarnews"),
        (400, "Bad Request: chat not found", Permanent, "chat @siarnews not found"),
        (500, "Internal Server Error", RetryLater, "failing"),
        (502, "Bad Gateway", RetryLater, "failing"),
    ],
)
async def test_errors_are_mapped(
    env: Env, code: int, description: str, kind: type[Exception], reason: str
) -> None:
    env.fake.fail(code, description, method="sendMessage")
    with pytest.raises(kind) as caught:
        await env.channel.send(env.channel.render(story()), idempotency_key="siar-1")
    assert reason in str(caught.value)


async def test_unknown_chat_is_permanent(fake: FakeTelegram, make_env: Callable[..., object]) -> None:
    made = await make_env(fake, chat="@nosuchchannel")  # type: ignore[misc]
    with pytest.raises(Permanent, match="chat @nosuchchannel not found"):
        await made.channel.send(made.channel.render(story()), idempotency_key="siar-1")
    await made.app.close()


async def test_read_timeout_is_uncertain(fake: FakeTelegram, make_env: Callable[..., object]) -> None:
    made = await make_env(fake, timeout=0.3)  # type: ignore[misc]
    fake.delays["sendMessage"] = 1.0
    with pytest.raises(Uncertain, match="may or may not be out"):
        await made.channel.send(made.channel.render(story()), idempotency_key="siar-1")
    await made.app.close()


async def test_migrated_group_is_remembered(fake: FakeTelegram, make_env: Callable[..., object]) -> None:
    fake.group(-55, "Redaksi")
    fake.migrate(-55, -1005500)
    made = await make_env(fake, chat="-55")  # type: ignore[misc]
    await made.channel.send(made.channel.render(story()), idempotency_key="siar-1")
    assert len(fake.messages(-1005500)) == 1 and fake.messages(-55) == []
    await made.app.close()
    fake.limits = False  # the restart comes quicker than Telegram's 1 message/s per chat
    again = await make_env(fake, chat="-55")  # type: ignore[misc]  # a restart: no migrate error
    calls = len(fake.calls)
    await again.channel.send(again.channel.render(story(uid="2")), idempotency_key="siar-2")
    assert [c[2] for c in fake.calls[calls:] if c[0] == "sendMessage"] == [200]
    assert len(fake.messages(-1005500)) == 2
    await again.app.close()


# --- the whole way: feed -> store -> dispatcher -> Telegram ------------------------------------


async def test_feed_to_channel_once_and_alerts(env: Env, feed_server: FeedServer) -> None:
    feed_server.routes["/f"] = Route(
        body=rss(
            [
                {
                    "title": "Satu & dua",
                    "link": "https://www.medcom.id/a/1",
                    "guid": "1",
                    "category": "Nasional",
                },
                {"title": "Tiga", "link": "https://www.medcom.id/a/2", "guid": "2"},
            ]
        )
    )
    env.fake.fail(403, "Forbidden: bot was kicked from the channel chat", method="sendMessage", count=1)
    await env.app.poller.poll(env.app.config.feeds[0], force=True)
    await env.app.dispatcher.drain()
    texts = env.fake.texts(-1001)
    assert len(texts) == 1  # the first failed permanently, the second went out
    alerts = env.fake.messages(900)
    assert len(alerts) == 1 and "kicked" in alerts[0]["plain"] and alerts[0]["plain"].startswith("⚠️ siar: tg")
    await env.app.poller.poll(env.app.config.feeds[0], force=True)
    await env.app.dispatcher.drain()
    assert len(env.fake.texts(-1001)) == 1  # nothing twice


# --- a lost connection: retried only when nothing can have been sent ----------------------------


def ptb_error(cause: Exception) -> Exception:
    """The exception python-telegram-bot's HTTPXRequest raises for an httpx error (chained)."""
    from telegram.error import NetworkError, TimedOut

    try:
        raise cause
    except httpx.TimeoutException as err:
        try:
            raise TimedOut from err
        except TimedOut as wrapped:
            return wrapped
    except httpx.HTTPError as err:
        try:
            raise NetworkError(f"httpx.{err.__class__.__name__}: {err}") from err
        except NetworkError as wrapped:
            return wrapped


@pytest.mark.parametrize(
    "cause,kind",
    [
        (httpx.ConnectError("All connection attempts failed"), RetryLater),
        (httpx.ConnectTimeout("timed out"), RetryLater),
        (httpx.PoolTimeout("no connection"), RetryLater),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), Uncertain),
        (httpx.ReadError("Connection reset by peer"), Uncertain),
        (httpx.WriteError("Broken pipe"), Uncertain),
        (httpx.ReadTimeout("timed out"), Uncertain),
    ],
)
def test_transport_errors_are_retried_only_before_sending(cause: Exception, kind: type[Exception]) -> None:
    from channels.telegram.errors import telegram_error as classify

    assert type(classify(ptb_error(cause), "@siarnews")) is kind
    # retry_on_timeout: duplicates are acceptable, so anything transport-level is retried
    assert type(classify(ptb_error(cause), "@siarnews", retry_on_timeout=True)) is RetryLater


def test_error_status_with_unreadable_body_is_retried() -> None:
    """A proxy's HTML 502 page: PTB chains its failed JSON parse, not a transport error."""
    from telegram.error import NetworkError, TelegramError

    from channels.telegram.errors import telegram_error as classify

    try:
        try:
            try:
                raise ValueError("Expecting value: line 1 column 1 (char 0)")
            except ValueError as err:
                raise TelegramError("Invalid server response") from err
        except TelegramError as parse:
            raise NetworkError("Bad Gateway (502). Parsing the server response b'<html>' failed") from parse
    except NetworkError as exc:
        assert isinstance(classify(exc, "@siarnews"), RetryLater)


def test_unknown_http_implementation_error_is_uncertain() -> None:
    from telegram.error import NetworkError

    from channels.telegram.errors import telegram_error as classify

    try:
        try:
            raise RuntimeError("h11 state machine confused")
        except RuntimeError as err:
            raise NetworkError(f"Unknown error in HTTP implementation: {err!r}") from err
    except NetworkError as exc:
        assert isinstance(classify(exc, "@siarnews"), Uncertain)


async def test_connection_dropped_after_posting_is_uncertain(env: Env) -> None:
    env.fake.drop(method="sendMessage")  # Telegram posts it, then the connection goes
    with pytest.raises(Uncertain, match="may or may not be out"):
        await env.channel.send(env.channel.render(story()), idempotency_key="siar-1")
    assert len(env.fake.messages(-1001)) == 1 and env.fake.dropped == 1


async def test_connection_dropped_with_retry_on_timeout_is_retried(env: Env) -> None:
    env.channel.settings.retry_on_timeout = True
    env.fake.drop(method="sendPhoto")
    with pytest.raises(RetryLater):
        await env.channel.send(
            env.channel.render(story(image="https://img.example/1.jpg")), idempotency_key="siar-1"
        )
    assert len(env.fake.messages(-1001)) == 1


async def test_dropped_post_is_not_resent_by_the_dispatcher(env: Env, feed_server: FeedServer) -> None:
    feed_server.routes["/f"] = Route(
        body=rss([{"title": "Satu", "link": "https://www.medcom.id/a/1", "guid": "1"}])
    )
    env.fake.drop(method="sendMessage")
    env.fake.limits = False  # a resend would not be held back by the 1 message/s per chat
    await env.app.poller.poll(env.app.config.feeds[0], force=True)
    await env.app.dispatcher.drain()
    env.clock.advance(3600)  # well past any backoff
    await env.app.dispatcher.drain()
    assert len(env.fake.texts(-1001)) == 1  # posted once, never again
    (found,) = await env.app.store.stories.find("https://www.medcom.id/a/1")
    rows = {r["channel"]: r for r in await env.app.store.stories.outbox_of(found["id"])}
    assert rows["tg"]["status"] == "uncertain"
