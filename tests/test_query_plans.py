"""Every query a poll, a delivery and the outbox gauges run, EXPLAINed on SQLite and on
PostgreSQL: none may scan the whole outbox or stories table (their cost would grow with the
store: a changed poll cost 2.35x at 1M outbox rows before the duplicate check had an index)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bot.app import App, build
from bot.config import Config
from bot.daemon import prepare
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss
from tests.test_poll_perf import items
from tests.test_postgres import pg_url  # noqa: F401 - the fixture

CONFIG = """
    [store]
    url = "{store}"

    [[feeds]]
    name = "a"
    url = "{a}"
    first_run = "all"
"""
# Whole-table reads that are not per poll or per post, and why they may stay.
ALLOWED = {
    # the outbox gauges: rows per channel and state, every 15 s off the event loop
    "SELECT outbox.channel, outbox.status, count(*) AS count_1 FROM outbox "
    "GROUP BY outbox.channel, outbox.status",
}
HOT_TABLES = ("outbox", "stories")


async def hot_queries(app: App, feed_server: FeedServer) -> list[tuple[str, Any]]:
    """(statement, parameters) of everything a first poll, a changed poll, an unchanged poll,
    the deliveries and a gauge snapshot run against the store."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if not many and statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
            seen.append((statement, parameters))

    engine = app.store.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        feed = app.config.feeds[0]
        await app.poller.poll(feed, force=True)
        feed_server.routes["/a"] = Route(body=rss(items(1, 20)))
        await app.poller.poll(feed, force=True)
        await app.poller.poll(feed, force=True)
        await app.poller.flush()
        await app.dispatcher.drain()
        await app.store.reports.counts()
        for channel in app.channels:
            await app.store.outbox.next_due(channel)
        await app.store.stories.latest_posted("fake")
        await app.store.stories.latest(5)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    unique: dict[str, Any] = {}
    for statement, parameters in seen:
        unique.setdefault(statement, parameters)
    return list(unique.items())


async def full_scans(app: App, queries: list[tuple[str, Any]]) -> list[str]:
    found = []
    async with app.store.db.engine.connect() as conn:
        if not app.store.is_sqlite:
            # the planner seq-scans tiny tables whatever the indexes; forbidding it shows
            # whether an index could serve the query at all
            await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in queries:
            prefix = "EXPLAIN QUERY PLAN " if app.store.is_sqlite else "EXPLAIN "
            rows = (await conn.exec_driver_sql(prefix + statement, parameters)).all()
            plan = "\n".join(str(r[-1]) for r in rows)
            flat = " ".join(statement.split())
            if flat in ALLOWED:
                continue
            # An index walked in order under a LIMIT stops early (SQLite still calls it SCAN).
            ordered_walk = " LIMIT " in flat and "TEMP B-TREE" not in plan
            for table in HOT_TABLES:
                scan = re.search(rf"^SCAN {table}\b", plan, re.M) and not ordered_walk
                if scan or re.search(rf"Seq Scan on {table}\b", plan):
                    found.append(f"{flat}\n    {plan}")
    return found


async def app_on(store_url: str, feed_server: FeedServer, make_config: Callable[[str], Config]) -> App:
    feed_server.routes["/a"] = Route(body=rss(items(0, 20)))
    config = make_config(CONFIG.format(store=store_url, a=feed_server.url("/a")))
    app = build(config, channels={"fake": FakeChannel("fake")}, clock=Clock())
    await prepare(app)
    return app


async def test_no_hot_query_scans_a_big_table_on_sqlite(
    feed_server: FeedServer, make_config: Callable[[str], Config]
) -> None:
    app = await app_on("sqlite:///siar.db", feed_server, make_config)
    try:
        queries = await hot_queries(app, feed_server)
        assert len(queries) >= 8  # the scenario ran its queries
        assert await full_scans(app, queries) == []
    finally:
        await app.close()


async def test_no_hot_query_scans_a_big_table_on_postgres(
    pg_url: str,  # noqa: F811
    feed_server: FeedServer,
    make_config: Callable[[str], Config],
) -> None:
    app = await app_on(pg_url, feed_server, make_config)
    try:
        queries = await hot_queries(app, feed_server)
        assert len(queries) >= 8
        assert await full_scans(app, queries) == []
    finally:
        await app.close()


def test_the_scan_check_can_fail(tmp_path: Path) -> None:
    """A query without a fitting index is reported (the check is not vacuous)."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, channel TEXT, dedup_key TEXT)")
    db.execute("CREATE INDEX ix ON outbox (channel, dedup_key)")
    plan = " ".join(
        r[-1] for r in db.execute("EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE dedup_key = 'k'")
    )
    assert re.search(r"^SCAN outbox\b", plan)
