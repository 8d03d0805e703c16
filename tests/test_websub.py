"""WebSub (issue 11, "Out in seconds"): discovery, subscription with verification of intent,
signed notifications that poll at once, forged ones ignored, leases renewed, a hub that goes
away (denies, lapses, stays silent) sending the feed back to its normal rate, a reload that
removes the feed unsubscribing it, and a restart keeping the subscription. The hub is
tests/websub_hub.py, written from the W3C Recommendation; the daemon runs for real on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.app import build
from bot.config import Config, HttpConfig, load_config
from bot.daemon import Daemon
from bot.schema import websub_subscriptions
from bot.store import Store
from bot.web import HttpServer
from bot.websub import WebSub
from bot.websub_protocol import Discovery, discover, element_links, renew_at, sign, signature_problem
from bot.websub_store import Subscription, Subscriptions
from tests.fakes import FakeChannel
from tests.feedserver import FeedServer, Route
from tests.test_postgres import pg_url  # noqa: F401  (the fixture)
from tests.websub_hub import Hub

# --- the pure parts ------------------------------------------------------------------------------


def test_discovery_reads_the_link_header_first_and_resolves_relative_urls() -> None:
    headers = {"link": '</self.xml>; rel="self", <https://hub.example/>; rel="hub"'}
    body = b'<rss><channel><atom:link rel="hub" href="https://other.example/"/></channel></rss>'
    found = discover(headers, body, "https://news.example/feed")
    assert found.hubs == ("https://hub.example/",)
    assert found.self_url == "https://news.example/self.xml"


def test_discovery_reads_rss_atom_link_and_atom_link_but_never_an_items_links() -> None:
    rss = (
        b'<?xml version="1.0"?><rss xmlns:atom="http://www.w3.org/2005/Atom"><channel>'
        b"<link>https://news.example/</link>"
        b"<atom:link href='https://news.example/rss?a=1&amp;b=2' rel='self' type='application/rss+xml'/>"
        b'<atom:link rel="hub" href="https://pubsubhubbub.appspot.com/"/>'
        b'<item><atom:link rel="hub" href="https://evil.example/"/></item></channel></rss>'
    )
    found = discover({}, rss, "https://news.example/rss")
    assert found.hubs == ("https://pubsubhubbub.appspot.com/",)
    assert found.self_url == "https://news.example/rss?a=1&b=2"
    atom = (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><link rel="alternate" href="/"/>'
        b'<link rel="hub" href="https://hub.example/a"/><link rel="hub" href="https://hub.example/b"/>'
        b'<link href="/atom" rel="self"/><entry><link rel="hub" href="https://evil.example/"/></entry></feed>'
    )
    found = discover({}, atom, "https://news.example/atom?x")
    assert found.hubs == ("https://hub.example/a", "https://hub.example/b")
    assert found.self_url == "https://news.example/atom"
    assert discover({}, b"<rss><channel><link>https://x/</link></channel></rss>", "https://x/").hub == ""
    # Only http(s) hubs; odd markup never raises.
    assert discover({"link": "<javascript:x>; rel=hub"}, None, "https://x/").hub == ""
    assert element_links(b"<link rel='hub' href='http://[::1'/>" * 3, "https://x/") is not None


def test_signatures_of_every_recognized_method_and_the_forged_ones() -> None:
    body = b"<rss>new</rss>"
    for method in ("sha1", "sha256", "sha384", "sha512"):
        assert signature_problem("s3cret", sign("s3cret", body, method), body) is None
        assert (
            signature_problem("s3cret", sign("s3cret", body, method).upper().replace("SHA", "sha"), body)
            is None
        )
    assert "no X-Hub-Signature" in (signature_problem("s3cret", None, body) or "")
    assert "does not match" in (signature_problem("s3cret", sign("other", body), body) or "")
    assert "does not match" in (signature_problem("s3cret", sign("s3cret", body), body + b" ") or "")
    assert "unknown signature method" in (signature_problem("s3cret", "md5=abc", body) or "")
    assert signature_problem("s3cret", "sha256", body) is not None


def test_a_lease_is_renewed_well_before_it_ends() -> None:
    from datetime import UTC, datetime, timedelta

    end = datetime(2026, 1, 10, tzinfo=UTC)
    assert renew_at(end, 864000) == end - timedelta(days=1)
    assert renew_at(end, 600) == end - timedelta(seconds=60)
    assert renew_at(end, 4) == end - timedelta(seconds=2)


# --- the daemon, a feed and a hub on loopback ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feed_xml(ids: list[int], hub: str, self_url: str) -> bytes:
    items = "".join(
        f"<item><title>Story {i}</title><link>https://e.example/{i}</link><guid>g{i}</guid>"
        "<pubDate>Fri, 09 Oct 2020 13:53:00 +0700</pubDate></item>"
        for i in sorted(ids, reverse=True)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">'
        f'<channel><title>T</title><link>https://e.example/</link><atom:link rel="hub" href="{hub}"/>'
        f'<atom:link rel="self" href="{self_url}"/><description>d</description>{items}</channel></rss>'
    ).encode()


class World:
    """A feed server, a hub, a config file and daemons run on them one after the other."""

    def __init__(self, tmp_path: Path, feeds: FeedServer, hub: Hub) -> None:
        self.tmp_path, self.feeds, self.hub = tmp_path, feeds, hub
        self.port = free_port()
        self.public_url = f"http://127.0.0.1:{self.port}/"
        self.ids: dict[str, list[int]] = {}
        self.daemon: Daemon | None = None
        self.channel = FakeChannel("fake")
        self._task: asyncio.Task[int] | None = None
        self._stop = asyncio.Event()

    def topic(self, name: str) -> str:
        return self.feeds.url(f"/{name}.xml")

    def serve(self, name: str, ids: list[int]) -> bytes:
        self.ids[name] = ids
        body = feed_xml(ids, self.hub.url, self.topic(name))
        self.feeds.routes[f"/{name}.xml"] = Route(body=body)
        return body

    def write_config(self, names: list[str], extra: str = "", http: bool = True) -> Config:
        text = '[metrics]\nlisten = ""\n'
        if http:
            text += f'[http]\nlisten = "127.0.0.1:{self.port}"\npublic_url = "{self.public_url}"\n'
        for name in names:
            text += f'[[feeds]]\nname = "{name}"\nurl = "{self.topic(name)}"\ninterval = "10s"\n{extra}\n'
        path = self.tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(path)

    async def start(self, config: Config) -> Daemon:
        self.channel = FakeChannel("fake")
        app = build(config, channels={"fake": self.channel})
        self.daemon = Daemon(app)
        self.daemon.websub.tick_every = 0.05
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.daemon.run(self._stop))
        return self.daemon

    async def stop(self) -> None:
        if self._task is not None:
            self._stop.set()
            assert await asyncio.wait_for(self._task, 20) == 0
            self._task = None

    @property
    def websub(self) -> Any:
        assert self.daemon is not None
        return self.daemon.websub

    def interval(self, name: str) -> float:
        assert self.daemon is not None
        job = self.daemon.scheduler.get_job(f"feed:{name}")
        assert job is not None, f"feed {name} has no poll job"
        return float(job.trigger.interval.total_seconds())

    def state(self, name: str) -> str:
        sub = self.websub.subs.get(name)
        return sub.state if sub is not None else "none"

    def callback(self, name: str) -> str:
        return str(self.public_url + "websub/" + self.websub.subs[name].callback_id)

    async def subscribed(self, name: str) -> None:
        await until(lambda: self.state(name) == "subscribed", f"feed {name} subscribed")
        # and its catch-up poll (right after verification) has ended
        await until(lambda: name not in self.websub._polling, f"feed {name} catch-up poll ended")

    async def add_story(self, name: str, story: int, *, publish: bool = True) -> float:
        body = self.serve(name, [*self.ids[name], story])
        began = time.monotonic()
        if publish:
            assert await self.hub.publish(self.topic(name), body) == [202]
        return began

    def sent_titles(self) -> list[str]:
        return [p.story.title for p in self.channel.sent]


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def world(tmp_path: Path, feed_server: FeedServer) -> AsyncIterator[World]:
    hub = await Hub().start()
    world = World(tmp_path, feed_server, hub)
    try:
        yield world
    finally:
        await world.stop()
        await hub.stop()


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers or {}) as r:
        return r.status


async def get(url: str, params: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as r:
        return r.status, await r.text()


async def test_a_verified_notification_posts_the_story_within_seconds_and_polls_slow_meanwhile(
    world: World,
) -> None:
    world.serve("a", [1, 2])
    await world.start(world.write_config(["a"], extra='websub_poll_interval = "15m"'))
    await world.subscribed("a")
    form = world.hub.requests[0]
    assert form["hub.mode"] == "subscribe" and form["hub.topic"] == world.topic("a")
    assert form["hub.callback"].startswith(world.public_url + "websub/")
    assert len(form["hub.secret"]) >= 32 and form["hub.secret"] in world.websub.subs["a"].secret
    await until(lambda: bool(world.hub.verifications), "the hub recorded its verification")
    assert world.hub.verifications == [("subscribe", world.topic("a"), 200, True)]
    assert world.interval("a") == 900.0  # the safety net, not the 10s interval
    began = await world.add_story("a", 3)
    await until(lambda: "Story 3" in world.sent_titles(), "story 3 posted", timeout=5)
    assert time.monotonic() - began < 2.0
    assert world.sent_titles() == ["Story 3"]  # first_run skipped 1 and 2


async def test_forged_notifications_are_acknowledged_and_ignored_never_polled(world: World) -> None:
    world.serve("a", [1])
    world.serve("b", [1])
    world.write_config(["a", "b"])
    path = world.tmp_path / "config.toml"  # with metrics: the notifications are counted
    path.write_text(path.read_text().replace('listen = ""', f'listen = "127.0.0.1:{free_port()}"', 1))
    await world.start(load_config(path))
    await world.subscribed("a")
    await world.subscribed("b")
    hits = world.feeds.hits("/a.xml")
    secret_a, secret_b = world.websub.subs["a"].secret, world.websub.subs["b"].secret
    body = world.serve("a", [1, 2])  # a new story nobody may announce but the hub
    callback = world.callback("a")
    assert await post(callback, body, {"X-Hub-Signature": sign("guessed", body)}) == 202
    assert await post(callback, body) == 202  # no signature at all
    assert await post(callback, body, {"X-Hub-Signature": "md5=" + "0" * 32}) == 202
    assert await post(callback, body + b" ", {"X-Hub-Signature": sign(secret_a, body)}) == 202
    # b's genuine notification replayed to a's callback (another topic, another secret)
    other = world.serve("b", [1, 5])
    assert await post(callback, other, {"X-Hub-Signature": sign(secret_b, other)}) == 202
    assert await post(world.public_url + "websub/not-a-subscription", body) == 410
    await asyncio.sleep(0.5)
    assert world.feeds.hits("/a.xml") == hits, "a forged notification polled the feed"
    assert world.channel.sent == [] and world.websub.rejected == 5
    assert world.websub.subs["a"].notified_at is None
    # Intent: only for what siar asked for.
    wrong_topic = {
        "hub.mode": "subscribe",
        "hub.topic": world.topic("b"),
        "hub.challenge": "x",
        "hub.lease_seconds": "9",
    }
    assert (await get(callback, wrong_topic))[0] == 404
    unsubscribe = {"hub.mode": "unsubscribe", "hub.topic": world.topic("a"), "hub.challenge": "x"}
    assert (await get(callback, unsubscribe))[0] == 404  # siar never asked to leave
    bad = {"hub.mode": "subscribe", "hub.topic": world.topic("a"), "hub.challenge": "<script>"}
    assert (await get(callback, bad))[0] == 400
    # The real one, signed with a's secret by the hub, does poll.
    assert await world.hub.publish(world.topic("a"), body) == [202]
    await until(lambda: world.sent_titles() == ["Story 2"], "story 2 posted")
    assert world.daemon is not None
    registry = world.daemon.app.metrics.registry

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("siar_websub_notifications_total", feed="a", result="rejected") == 5
    assert sample("siar_websub_notifications_total", feed="a", result="verified") == 1
    assert sample("siar_websub_notifications_total", feed="other", result="unknown") == 1
    assert sample("siar_websub_subscribed", feed="a") == 1
    assert sample("siar_websub_subscribed", feed="b") == 1


async def test_every_signature_method_the_recommendation_names_is_accepted(world: World) -> None:
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    for story, method in enumerate(("sha1", "sha384", "sha512"), start=2):
        world.hub.method = method
        await world.add_story("a", story)
        title = f"Story {story}"
        await until(lambda: title in world.sent_titles(), f"{title} ({method})")  # noqa: B023


async def test_a_hub_that_denies_sends_the_feed_back_to_its_interval_at_once(world: World) -> None:
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    assert world.interval("a") == 900.0
    hits = world.feeds.hits("/a.xml")
    assert await world.hub.deny(world.topic("a"), world.callback("a")) == 200
    assert world.state("a") == "denied" and world.interval("a") == 10.0
    assert world.daemon is not None
    async with world.daemon.app.store.db.read() as conn:
        row = (await conn.execute(select(websub_subscriptions))).one()
    assert row.state == "denied" and row.last_error == "denied: not allowed"
    await until(lambda: world.feeds.hits("/a.xml") > hits, "a catch-up poll after the denial")
    assert world.hub.active(world.topic("a")) == []


async def test_leases_are_renewed_before_they_end(world: World) -> None:
    world.hub.max_lease = 3
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    first = world.websub.subs["a"].expires_at
    await until(lambda: len(world.hub.verifications) >= 3, "two renewals", timeout=8)
    assert all(ok for *_, ok in world.hub.verifications)
    assert world.websub.subs["a"].expires_at > first
    assert world.state("a") == "subscribed" and world.interval("a") == 900.0
    callbacks = {form["hub.callback"] for form in world.hub.requests}
    assert len(callbacks) == 1  # the same subscription renewed, not a second one
    await world.add_story("a", 2)
    await until(lambda: world.sent_titles() == ["Story 2"], "a notification after renewals")


async def test_a_hub_gone_for_good_lets_the_lease_lapse_and_polling_resumes(world: World) -> None:
    world.hub.max_lease = 2
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    assert world.interval("a") == 900.0
    await world.hub.stop()
    await until(lambda: world.state("a") in ("expired", "pending", "failed"), "the lease lapsed", timeout=6)
    assert world.interval("a") == 10.0
    sub = world.websub.subs["a"]
    assert sub.last_error


async def test_a_silent_hub_found_out_by_the_safety_net_and_trusted_again_when_it_delivers(
    world: World,
) -> None:
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    assert world.daemon is not None
    await world.add_story("a", 2, publish=False)  # published, but the hub never says so
    await world.daemon._poll_now(world.daemon.app.config.feed("a"))  # the safety-net poll
    assert world.sent_titles() == [] or world.sent_titles() == ["Story 2"]
    assert world.state("a") == "silent" and world.interval("a") == 10.0
    await until(lambda: len(world.hub.requests) >= 2, "subscription asked for again")
    await world.add_story("a", 3)  # the hub delivers again
    await until(lambda: world.state("a") == "subscribed", "trusted again")
    assert world.interval("a") == 900.0
    await until(lambda: "Story 3" in world.sent_titles(), "story 3 posted")


async def test_a_reload_that_removes_the_feed_unsubscribes_it(world: World) -> None:
    world.serve("a", [1])
    world.serve("b", [1])
    await world.start(world.write_config(["a", "b"]))
    await world.subscribed("a")
    await world.subscribed("b")
    callback = world.callback("a")
    world.write_config(["b"])
    assert world.daemon is not None and await world.daemon.reloader.reload()
    await until(lambda: "a" not in world.websub.subs, "a unsubscribed")
    assert world.hub.requests[-1]["hub.mode"] == "unsubscribe"
    assert world.hub.requests[-1]["hub.callback"] == callback
    await until(lambda: ("unsubscribe", world.topic("a"), 200, True) in world.hub.verifications, "verified")
    assert world.hub.active(world.topic("a")) == [] and len(world.hub.active(world.topic("b"))) == 1
    assert await post(callback, b"x", {"X-Hub-Signature": "sha256=00"}) == 410
    async with world.daemon.app.store.db.read() as conn:
        rows = (await conn.execute(select(websub_subscriptions.c.feed))).all()
    assert [r.feed for r in rows] == ["b"]
    # Turning WebSub off for a feed unsubscribes it too, and it polls at its interval again.
    world.write_config(["b"], extra="websub = false")
    assert await world.daemon.reloader.reload()
    await until(lambda: "b" not in world.websub.subs, "b unsubscribed")
    assert world.interval("b") == 10.0


async def test_a_restart_keeps_the_subscription(world: World) -> None:
    world.serve("a", [1])
    config = world.write_config(["a"])
    await world.start(config)
    await world.subscribed("a")
    callback, requests = world.callback("a"), len(world.hub.requests)
    await world.stop()
    await world.start(world.write_config(["a"]))
    await until(lambda: world.feeds.hits("/a.xml") >= 2, "the first poll after the restart")
    await asyncio.sleep(0.3)
    assert len(world.hub.requests) == requests, "asked the hub again after a restart"
    assert world.state("a") == "subscribed" and world.callback("a") == callback
    assert world.interval("a") == 900.0
    await world.add_story("a", 2)
    await until(lambda: world.sent_titles() == ["Story 2"], "posted by the restarted daemon")


async def test_without_a_public_url_websub_is_off_and_the_log_says_why_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.serve("a", [1])
    world.serve("b", [1])
    caplog.set_level(logging.INFO, logger="siar.websub")
    await world.start(world.write_config(["a", "b"], http=False))
    assert world.daemon is not None
    await until(lambda: world.feeds.hits("/b.xml") >= 1 and world.feeds.hits("/a.xml") >= 1, "first polls")
    await world.daemon._poll_now(world.daemon.app.config.feed("a"))
    said = [r.getMessage() for r in caplog.records if "WebSub is off" in r.getMessage()]
    assert len(said) == 1 and "[http] public_url is not set" in said[0]
    assert world.hub.requests == [] and world.interval("a") == 10.0


async def test_a_feed_with_websub_false_is_never_subscribed(world: World) -> None:
    world.serve("a", [1])
    await world.start(world.write_config(["a"], extra="websub = false"))
    await until(lambda: world.feeds.hits("/a.xml") >= 1, "first poll")
    await asyncio.sleep(0.3)
    assert world.hub.requests == [] and world.state("a") == "none"


async def test_a_hub_the_address_guard_refuses_is_never_contacted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # The feed (on loopback, so its own host is allowed) names a link-local hub: a cloud
    # metadata address. The guard refuses it before any connection is made.
    world.feeds.routes["/a.xml"] = Route(body=feed_xml([1], "http://169.254.169.254/hub", world.topic("a")))
    world.ids["a"] = [1]
    await world.start(world.write_config(["a"]))
    await until(lambda: world.state("a") == "failed", "the subscription refused")
    error = world.websub.subs["a"].last_error
    assert "169.254.169.254" in error and "link-local" in error
    assert world.interval("a") == 10.0


async def test_a_hub_that_refuses_the_request_is_retried_later_and_polling_stays_normal(world: World) -> None:
    world.hub.refuse = 503
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await until(lambda: world.state("a") == "failed", "refused")
    assert "HTTP 503" in world.websub.subs["a"].last_error
    assert world.interval("a") == 10.0
    world.hub.refuse = None
    world.websub.retry_at.clear()  # the back-off (a minute at first) has passed
    await world.subscribed("a")
    assert world.interval("a") == 900.0


def test_the_config_keys_and_their_limits(make_config: Callable[[str], Config]) -> None:
    config = make_config('[[feeds]]\nname = "a"\nurl = "https://x.example/rss"\n')
    assert config.feeds[0].websub is True and config.feeds[0].websub_poll_interval == 900.0
    with pytest.raises(Exception, match="websub_poll_interval"):
        make_config('[[feeds]]\nname = "a"\nurl = "https://x.example/rss"\nwebsub_poll_interval = "2s"\n')


async def test_daemons_sharing_the_store_share_one_subscription(world: World) -> None:
    """On PostgreSQL several daemons share the store behind one public_url: a callback may
    reach a daemon that did not subscribe, and a second daemon must not subscribe again."""
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    assert world.daemon is not None
    app = world.daemon.app
    polled: list[str] = []

    async def poll(feed: Any) -> None:
        polled.append(feed.name)

    other = WebSub(app.config, app.store.db, app.clock, poll, lambda feed: None)
    feed = app.config.feed("a")
    requests = len(world.hub.requests)
    await other._subscribe(feed, Discovery((world.hub.url,), world.topic("a")), world.topic("a"))
    assert len(world.hub.requests) == requests  # adopted the stored subscription
    assert other.subs["a"].callback_id == world.websub.subs["a"].callback_id
    fresh = WebSub(app.config, app.store.db, app.clock, poll, lambda feed: None)  # knows nothing yet
    server = HttpServer(HttpConfig(listen="127.0.0.1:0"))
    server.add_routes(fresh.routes(), prefix="/websub")
    await server.start()
    try:
        path = "websub/" + world.websub.subs["a"].callback_id
        body = world.serve("a", [1, 2])
        assert await post(server.url + path, body, {"X-Hub-Signature": sign("wrong", body)}) == 202
        await asyncio.sleep(0.1)
        assert polled == []  # the forged one polled nothing
        signed = {"X-Hub-Signature": sign(other.subs["a"].secret, body)}
        assert await post(server.url + path, body, signed) == 202
        await until(lambda: polled == ["a"], "the other daemon polled a")
    finally:
        await server.stop()


async def test_when_the_callback_address_is_taken_websub_is_off_and_polling_goes_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.serve("a", [1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", world.port))
        taken.listen()
        await world.start(world.write_config(["a"]))
        await until(lambda: world.feeds.hits("/a.xml") >= 1, "first poll")
        await asyncio.sleep(0.2)
    assert any("WebSub is off: cannot listen" in r.getMessage() for r in caplog.records)
    assert world.hub.requests == [] and world.interval("a") == 10.0


async def test_a_link_header_alone_is_enough_and_a_feed_that_drops_its_hub_is_unsubscribed(
    world: World,
) -> None:
    topic = world.feeds.url("/canonical/a.xml")  # rel=self differs from the URL polled
    plain = feed_xml([1], "", "").replace(
        b'<atom:link rel="hub" href=""/><atom:link rel="self" href=""/>', b""
    )
    link = f'<{world.hub.url}>; rel="hub", <{topic}>; rel="self"'
    world.feeds.routes["/a.xml"] = Route(body=plain, headers={"Link": link})
    world.ids["a"] = [1]
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    assert world.hub.requests[0]["hub.topic"] == topic and world.websub.subs["a"].topic == topic
    body = plain.replace(b"<item>", b"<item><title>Story 2</title><guid>g2</guid></item><item>", 1)
    world.feeds.routes["/a.xml"] = Route(body=body, headers={"Link": link})
    assert await world.hub.publish(topic, body) == [202]
    await until(lambda: world.sent_titles() == ["Story 2"], "story 2 posted")
    # The publisher stops advertising the hub: siar leaves it and polls as usual.
    world.feeds.routes["/a.xml"] = Route(body=body.replace(b"<title>T</title>", b"<title>T2</title>"))
    assert world.daemon is not None
    await world.daemon._poll_now(world.daemon.app.config.feed("a"))
    await until(lambda: "a" not in world.websub.subs, "unsubscribed")
    assert world.hub.requests[-1]["hub.mode"] == "unsubscribe" and world.interval("a") == 10.0


async def test_a_burst_of_notifications_polls_at_most_twice_and_loses_nothing(world: World) -> None:
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    hits = world.feeds.hits("/a.xml")
    body = world.serve("a", [1, 2])
    secret = world.websub.subs["a"].secret
    statuses = await asyncio.gather(
        *(post(world.callback("a"), body, {"X-Hub-Signature": sign(secret, body)}) for _ in range(20))
    )
    assert statuses == [202] * 20
    await until(lambda: world.sent_titles() == ["Story 2"], "story 2 posted once")
    await until(lambda: "a" not in world.websub._polling, "polls ended")
    assert 1 <= world.feeds.hits("/a.xml") - hits <= 2  # one poll, and one more if some came during it


async def test_a_notification_polls_a_feed_even_while_its_failures_back_off(world: World) -> None:
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    assert world.daemon is not None
    app = world.daemon.app
    world.feeds.routes["/a.xml"] = Route(status=500, body=b"down")
    assert (await app.poller.poll(app.config.feed("a"))).failed  # a scheduled poll: backs off now
    assert world.interval("a") == 10.0  # a failing feed is polled at its own rate (and back-off)
    assert (await app.poller.poll(app.config.feed("a"))).outcome == "backoff"
    await world.add_story("a", 2)  # the site is back and pings its hub
    await until(lambda: world.sent_titles() == ["Story 2"], "posted despite the back-off")
    await until(lambda: world.interval("a") == 900.0, "the safety-net rate once a poll succeeded")


async def test_subscriptions_are_stored_on_sqlite(tmp_path: Path) -> None:
    await stored_round_trip(f"sqlite:///{tmp_path / 'siar.db'}", tmp_path)


async def test_subscriptions_are_stored_on_postgresql(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    await stored_round_trip(pg_url, tmp_path)


async def stored_round_trip(url: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    store = Store(url, tmp_path)
    try:
        await store.migrate([])
        subs = Subscriptions(store.db)
        at = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
        sub = Subscription(
            "f",
            "https://e.example/rss",
            "https://hub.example/",
            "https://e.example/rss",
            "c" * 32,
            "s" * 43,
            "pending",
            requested_at=at,
        )
        await subs.save(sub)
        await subs.save(replace(sub, state="subscribed", lease_seconds=864000, expires_at=at, notified_at=at))
        stored = await subs.get(callback_id="c" * 32)
        assert stored == replace(sub, state="subscribed", lease_seconds=864000, expires_at=at, notified_at=at)
        assert await subs.get(feed="f") == stored and await subs.all() == [stored]
        await subs.delete("f", "other")  # another subscription's id deletes nothing
        assert await subs.all() == [stored]
        await subs.delete("f", "c" * 32)
        assert await subs.all() == []
    finally:
        await store.close()


async def test_the_challenge_is_echoed_with_a_safe_media_type_and_nosniff(world: World) -> None:
    """§8.2: the intent verification response must not be a reflected-XSS vector."""
    world.serve("a", [1])
    await world.start(world.write_config(["a"]))
    await world.subscribed("a")
    query = {
        "hub.mode": "subscribe",
        "hub.topic": world.topic("a"),
        "hub.challenge": "abc-123_X=",
        "hub.lease_seconds": "600",
    }
    async with aiohttp.ClientSession() as session, session.get(world.callback("a"), params=query) as r:
        assert r.status == 200 and await r.text() == "abc-123_X="
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert world.websub.subs["a"].lease_seconds == 600  # a hub's re-verification renews the lease
    too_long = {**query, "hub.challenge": "a" * 201}
    assert (await get(world.callback("a"), too_long))[0] == 400


async def test_status_shows_each_feeds_subscription_and_never_its_secret(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.serve("a", [1])
    world.serve("b", [1])
    world.write_config(["a", "b"])
    text = (world.tmp_path / "config.toml").read_text()
    (world.tmp_path / "config.toml").write_text(text.replace('name = "b"', 'name = "b"\nwebsub = false'))
    config = load_config(world.tmp_path / "config.toml")
    await world.start(config)
    await world.subscribed("a")
    assert world.daemon is not None
    report = await world.daemon.app.store.reports.status(config)
    feeds = {f["name"]: f for f in report["feeds"]}
    websub = feeds["a"]["websub"]
    assert websub["state"] == "subscribed" and websub["hub"] == world.hub.url
    assert websub["expires"] and websub["last_error"] is None
    assert feeds["b"]["websub"] is None
    assert world.websub.subs["a"].secret not in json.dumps(report)
    from bot.cli import status

    monkeypatch.setenv("COLUMNS", "250")  # a table narrower than its cells wraps them
    capsys.readouterr()
    assert await status(config, world.daemon.app.store, False) == 0
    table = capsys.readouterr().out
    assert "websub" in table and "subscribed until" in table
