"""From a feed on a local server to outbox rows and deliveries: first runs, dedup, backoff."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bot.app import App, build
from bot.config import Config
from bot.daemon import prepare
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss

CONFIG = """
    [store]
    url = "sqlite:///siar.db"

    [[feeds]]
    name = "intl"
    url = "{url}"
    first_run = "{first_run}"
    include_categories = ["Internasional"]
    include_url = "/internasional/"

    [[feeds]]
    name = "broken"
    url = "{broken}"
    first_run = "{first_run}"
"""


def app_for(config: Config, channel: FakeChannel, clock: Clock) -> App:
    return build(config, channels={"fake": channel}, clock=clock)


async def poll_and_deliver(app: App) -> list[str]:
    for feed in app.config.feeds:
        await app.poller.poll(feed, force=True)
    await app.dispatcher.drain()
    return [p.story.title for p in app.channels["fake"].sent]  # type: ignore[attr-defined]


async def test_sample_once_then_nothing_across_restart(
    feed_server: FeedServer, sample_bytes: bytes, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/intl"] = Route(body=sample_bytes, etag=False)
    config = make_config(
        CONFIG.format(url=feed_server.url("/intl"), first_run="all", broken=feed_server.url("/missing"))
    )
    clock = Clock()
    first = FakeChannel()
    app = app_for(config, first, clock)
    await prepare(app)
    titles = await poll_and_deliver(app)
    await app.close()
    # oldest first, so the channel's timeline ends with the newest story
    assert titles == [
        'Uji "Escape" Tebal & Tautan — Demo #1 @semua',
        "Sidang Umum PBB Bahas Krisis Pangan Global",
        "Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian",
    ]
    # A restart: a new process with a new store object on the same file, feed body changed a bit
    feed_server.routes["/intl"] = Route(body=sample_bytes + b"\n", etag=False)
    clock.advance(600)
    second = FakeChannel()
    app = app_for(config, second, clock)
    await prepare(app)
    assert await poll_and_deliver(app) == []
    counts = await app.store.reports.counts()
    await app.close()
    assert counts["fake"]["sent"] == 3


async def test_first_run_skip_records_without_posting_then_posts_new(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    item = {
        "title": "Old",
        "link": "https://m.example/internasional/1",
        "guid": "1",
        "category": "Internasional",
    }
    feed_server.routes["/intl"] = Route(body=rss([item]))
    config = make_config(
        CONFIG.format(url=feed_server.url("/intl"), first_run="skip", broken=feed_server.url("/missing"))
    )
    channel = FakeChannel()
    app = app_for(config, channel, Clock())
    await prepare(app)
    assert await poll_and_deliver(app) == []
    new = {
        "title": "New",
        "link": "https://m.example/internasional/2",
        "guid": "2",
        "category": "Internasional",
    }
    feed_server.routes["/intl"] = Route(body=rss([new, item]))
    assert await poll_and_deliver(app) == ["New"]
    found = await app.store.stories.find("https://m.example/internasional/1")
    decisions = await app.store.stories.decisions_of(found[0]["id"])
    await app.close()
    assert [d["decision"] for d in decisions] == ["first_run_skip"]


async def test_latest_n_posts_the_newest(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    items = [
        {
            "title": f"S{i}",
            "link": f"https://m.example/internasional/{i}",
            "guid": str(i),
            "category": "Internasional",
            "pubDate": f"Fri, 09 Oct 2020 {10 + i}:00:00 +0700",
        }
        for i in range(5)
    ]
    feed_server.routes["/intl"] = Route(body=rss(items))
    config = make_config(
        CONFIG.format(url=feed_server.url("/intl"), first_run="latest:2", broken=feed_server.url("/missing"))
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    titles = await poll_and_deliver(app)
    await app.close()
    assert titles == ["S3", "S4"]  # the newest two, posted in publication order


async def test_unchanged_feed_costs_no_parse_and_uses_conditional_get(
    feed_server: FeedServer, sample_bytes: bytes, make_config: Callable[[str], Config], monkeypatch
) -> None:
    import bot.normalize
    import bot.pipeline

    parses = []
    real = bot.normalize.identify

    def counting(*args, **kwargs):
        parses.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bot.pipeline, "identify", counting)
    feed_server.routes["/intl"] = Route(body=sample_bytes)  # with ETag: 304 on the second poll
    feed_server.routes["/noetag"] = Route(body=sample_bytes, etag=False)  # same body, no validators
    config = make_config(
        CONFIG.format(url=feed_server.url("/intl"), first_run="all", broken=feed_server.url("/noetag"))
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    first = [await app.poller.poll(f, force=True) for f in config.feeds]
    second = [await app.poller.poll(f, force=True) for f in config.feeds]
    await app.close()
    assert [r.outcome for r in first] == ["new", "new"]
    assert [r.outcome for r in second] == ["not_modified", "unchanged"]
    assert len(parses) == 2


async def test_failing_feed_backs_off_and_does_not_stop_others(
    feed_server: FeedServer, sample_bytes: bytes, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/intl"] = Route(body=sample_bytes)
    feed_server.routes["/broken"] = Route(status=500)
    config = make_config(
        CONFIG.format(url=feed_server.url("/intl"), first_run="all", broken=feed_server.url("/broken"))
    )
    clock = Clock()
    app = app_for(config, FakeChannel(), clock)
    await prepare(app)
    results = [await app.poller.poll(f) for f in config.feeds]
    assert [r.outcome for r in results] == ["new", "error"]
    assert "HTTP 500" in results[1].error
    hits = feed_server.hits("/broken")
    # While backing off (interval 300s, doubled after the first failure) the feed is not fetched
    clock.advance(400)
    assert (await app.poller.poll(config.feeds[1])).outcome == "backoff"
    assert feed_server.hits("/broken") == hits
    clock.advance(300)
    assert (await app.poller.poll(config.feeds[1])).outcome == "error"
    state = await app.store.feeds.get("broken", "")
    assert state.failures == 2
    assert state.next_poll_at is not None
    assert (state.next_poll_at - clock.now).total_seconds() == 1200
    feed_server.routes["/broken"] = Route(body=sample_bytes)
    clock.advance(1200)
    assert (await app.poller.poll(config.feeds[1])).outcome == "new"
    state = await app.store.feeds.get("broken", "")
    await app.close()
    assert state.failures == 0 and state.last_error is None


async def test_same_link_in_two_feeds_is_sent_once(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    item = {
        "title": "Shared",
        "link": "https://m.example/internasional/9?utm_source=a",
        "guid": "a-9",
        "category": "Internasional",
    }
    feed_server.routes["/intl"] = Route(body=rss([item]))
    feed_server.routes["/other"] = Route(
        body=rss([{**item, "guid": "b-9", "link": "https://m.example/internasional/9"}])
    )
    config = make_config(
        CONFIG.format(url=feed_server.url("/intl"), first_run="all", broken=feed_server.url("/other"))
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    titles = await poll_and_deliver(app)
    stories = await app.store.stories.find("https://m.example/internasional/9")
    decisions = [d["decision"] for s in stories for d in await app.store.stories.decisions_of(s["id"])]
    await app.close()
    assert titles == ["Shared"]
    assert "duplicate" in decisions


async def test_a_failing_feed_alerts_once_per_streak(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/broken"] = Route(status=502)
    config = make_config(
        CONFIG.format(url=feed_server.url("/broken"), first_run="all", broken=feed_server.url("/broken"))
    )
    app = app_for(config, FakeChannel(), Clock())
    alerts: list[str] = []

    async def sink(source: str, message: str) -> None:
        alerts.append(f"{source}: {message}")

    app.context.alerts.add_sink(sink)
    await prepare(app)
    for _ in range(8):
        await app.poller.poll(config.feeds[0], force=True)
    await app.close()
    assert len(alerts) == 1
    assert alerts[0].startswith("feed intl: failed 5 times in a row: HTTP 502")


async def test_enrich_fills_image_and_tags_from_the_article_page(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    link = feed_server.url("/internasional/artikel-1")
    feed_server.routes["/internasional/artikel-1"] = Route(
        content_type="text/html",
        body=(
            b'<html><head><meta property="og:image" content="/img/a.jpg">'
            b'<meta property="article:tag" content="Vladimir Putin">'
            b'<meta name="keywords" content="rusia, Vladimir Putin"></head><body>x</body></html>'
        ),
    )
    feed_server.routes["/intl"] = Route(
        body=rss(
            [{"title": "A", "link": link, "guid": "1", "category": "Internasional", "description": "Lead."}]
        )
    )
    config = make_config(
        CONFIG.format(
            url=feed_server.url("/intl"), first_run="all", broken=feed_server.url("/missing")
        ).replace('include_url = "/internasional/"', 'include_url = "/internasional/"\nenrich = true')
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    await app.poller.poll(config.feeds[0], force=True)
    (story,) = await app.store.stories.latest(feeds=["intl"])
    await app.close()
    assert story.image == feed_server.url("/img/a.jpg")
    assert story.tags == ("Vladimir Putin", "rusia")
    assert story.lead == "Lead."


async def test_an_empty_first_poll_does_not_end_the_first_run(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/intl"] = Route(body=rss([]))
    config = make_config(
        CONFIG.format(url=feed_server.url("/intl"), first_run="skip", broken=feed_server.url("/missing"))
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    assert await poll_and_deliver(app) == []
    items = [
        {
            "title": f"S{i}",
            "link": f"https://m.example/internasional/{i}",
            "guid": str(i),
            "category": "Internasional",
        }
        for i in range(5)
    ]
    feed_server.routes["/intl"] = Route(body=rss(items))
    assert await poll_and_deliver(app) == []  # still the first run: recorded, not posted
    await app.close()


async def test_an_unreadable_article_page_costs_only_its_enrichment(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    feed_server.routes["/intl"] = Route(
        body=rss(
            [
                {
                    "title": "Bad link",
                    "link": "https://xn--/internasional/a",
                    "guid": "1",
                    "category": "Internasional",
                },
                {
                    "title": "Good",
                    "link": feed_server.url("/internasional/b"),
                    "guid": "2",
                    "category": "Internasional",
                },
            ]
        )
    )
    config = make_config(
        CONFIG.format(
            url=feed_server.url("/intl"), first_run="all", broken=feed_server.url("/missing")
        ).replace('include_url = "/internasional/"', 'include_url = "/internasional/"\nenrich = true')
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    titles = await poll_and_deliver(app)
    await app.close()
    assert sorted(titles) == ["Bad link", "Good"]


async def test_the_shipped_config_posts_the_three_newest_international_stories(
    feed_server: FeedServer, sample_bytes: bytes, make_config: Callable[[str], Config]
) -> None:
    # config.toml as shipped (first_run = "latest:3"), offline: the sample feed from a local
    # server and no article pages fetched. The sample's second-newest story is not international.
    shipped = (Path(__file__).parent.parent / "config.toml").read_text()
    assert 'first_run = "latest:3"' in shipped and "enrich = true" in shipped
    feed_server.routes["/intl"] = Route(body=sample_bytes)
    config = make_config(
        shipped.replace(
            'url = "https://www.medcom.id/rss/internasional"', f'url = "{feed_server.url("/intl")}"'
        ).replace("enrich = true", "enrich = false")
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    titles = await poll_and_deliver(app)
    await app.close()
    assert titles == [
        'Uji "Escape" Tebal & Tautan — Demo #1 @semua',
        "Sidang Umum PBB Bahas Krisis Pangan Global",
        "Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian",
    ]


SITE = (
    """
    [site]
    url = "https://www.medcom.id"
"""
    + CONFIG
)


async def test_one_story_under_three_forms_of_its_link_is_posted_once_per_channel(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    path = "/internasional/dunia/Zp3Lk8Wd-sidang-umum"
    story = {"title": "Sidang", "category": "Internasional"}
    feed_server.routes["/intl"] = Route(
        body=rss(
            [
                {**story, "guid": "a-1", "link": f"https://www.medcom.id{path}"},
                {**story, "guid": "a-2", "link": f"http://m.medcom.id{path}/"},
                {**story, "title": "Lain", "guid": "a-3", "link": "https://www.medcom.id/internasional/lain"},
            ]
        )
    )
    feed_server.routes["/mobile"] = Route(
        body=rss(
            [
                {**story, "guid": "m-1", "link": f"https://m.medcom.id{path}/?utm_source=m"},
                # another site's page with the same path is another story
                {**story, "title": "Elsewhere", "guid": "m-2", "link": f"https://other.example{path}"},
            ]
        )
    )
    config = make_config(
        SITE.format(url=feed_server.url("/intl"), first_run="all", broken=feed_server.url("/mobile"))
    )
    channel, other = FakeChannel(), FakeChannel("other")
    app = build(config, channels={"fake": channel, "other": other}, clock=Clock())
    await prepare(app)
    for feed in config.feeds:
        await app.poller.poll(feed, force=True)
    await app.dispatcher.drain()
    counts = await app.store.reports.counts()
    found = await app.store.stories.find(
        f"http://medcom.id{path}", app_key(config, f"http://medcom.id{path}")
    )
    decisions = []
    for row in found:
        decisions += [d["decision"] for d in await app.store.stories.decisions_of(row["id"])]
    await app.close()
    assert sorted(p.story.title for p in channel.sent) == ["Elsewhere", "Lain", "Sidang"]
    assert config.site.hosts == ["www.medcom.id", "m.medcom.id", "medcom.id"]
    assert sorted(p.story.title for p in other.sent) == ["Elsewhere", "Lain", "Sidang"]
    assert counts["fake"]["sent"] == counts["other"]["sent"] == 3
    assert len(found) == 3  # all three forms are found by any one of them
    assert decisions.count("queued") == 2 and decisions.count("duplicate") == 4
    # the link is posted as the feed gave it (canonical), not rewritten to another host
    assert {p.story.url for p in channel.sent if p.story.title == "Sidang"} <= {
        f"https://www.medcom.id{path}",
        f"http://m.medcom.id{path}/",
        f"https://m.medcom.id{path}/",
    }


def app_key(config: Config, url: str) -> str:
    from bot.normalize import link_key

    return link_key(url, config.site.hosts)


async def test_a_half_entry_of_a_truncated_feed_is_explained_not_posted(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    whole = {"title": "Utuh", "link": "https://m.example/internasional/1", "guid": "utuh-1"}
    body = rss([whole, {"title": "Terpotong"}, {"title": "Skrip", "link": "javascript:alert(1)"}])
    feed_server.routes["/truncated"] = Route(body=body)  # the feed without filters
    config = make_config(
        CONFIG.format(url=feed_server.url("/missing"), first_run="all", broken=feed_server.url("/truncated"))
    )
    app = app_for(config, FakeChannel(), Clock())
    await prepare(app)
    titles = await poll_and_deliver(app)
    explained = {}
    for story in await app.store.stories.latest(feeds=["broken"]):
        (row,) = await app.store.stories.find(story.uid)
        decisions = await app.store.stories.decisions_of(row["id"])
        explained[story.title] = [(d["channel"], d["decision"]) for d in decisions]
    await app.close()
    assert titles == ["Utuh"]
    assert explained == {
        "Utuh": [("fake", "queued"), ("fake", "sent")],
        "Terpotong": [("fake", "no_link")],
        "Skrip": [("fake", "no_link")],
    }
