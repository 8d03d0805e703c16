"""Does a poll cost more as the store grows? A changed round before and after 1M rows.

For SQLite and for PostgreSQL (the machine's server, `SIAR_TEST_PG`): F feeds of 50 items are
polled (first poll), then a changed round (5 new items per feed) is measured; the store is then
pre-filled with 1,000,000 stories and 1,000,000 outbox rows (random de-duplication keys, as
many distinct links), and another changed round is measured. Polls run one at a time, so wall
time per feed includes the database server's work (PostgreSQL runs in its own process).

    .venv/bin/python benchmarks/store_growth.py [--feeds 100] [--rows 1000000] [--engines sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from poll_compare import change, cpu, serve  # noqa: E402

PG = os.environ.get("SIAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
STAMP = datetime(2020, 1, 1, tzinfo=UTC)


def story_rows(rows: int) -> Any:
    for i in range(rows):
        yield (f"prefill{i % 1000}", f"p{i}", f"https://old.example/{i}", secrets.token_hex(32), "t", "{}")


def prefill_sqlite(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    stamp = "2020-01-01 00:00:00.000000"
    start = db.execute("SELECT coalesce(max(id), 0) FROM stories").fetchone()[0]
    db.executemany(
        "INSERT INTO stories (feed, uid, url, url_key, title, first_seen_at, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        ((f, u, url, key, t, stamp, d) for f, u, url, key, t, d in story_rows(rows)),
    )
    db.executemany(
        "INSERT INTO outbox (story_id, channel, dedup_key, status, attempts, next_attempt_at, created_at,"
        " updated_at) VALUES (?, 'c', ?, 'sent', 1, ?, ?, ?)",
        ((start + i + 1, secrets.token_hex(32), stamp, stamp, stamp) for i in range(rows)),
    )
    db.commit()
    db.close()


async def prefill_postgres(url: str, rows: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    start = await conn.fetchval("SELECT coalesce(max(id), 0) FROM stories")
    await conn.copy_records_to_table(
        "stories",
        records=((f, u, url_, key, t, STAMP, d) for f, u, url_, key, t, d in story_rows(rows)),
        columns=["feed", "uid", "url", "url_key", "title", "first_seen_at", "data"],
    )
    await conn.copy_records_to_table(
        "outbox",
        records=(
            (start + i + 1, "c", secrets.token_hex(32), "sent", 1, STAMP, STAMP, STAMP) for i in range(rows)
        ),
        columns=[
            "story_id",
            "channel",
            "dedup_key",
            "status",
            "attempts",
            "next_attempt_at",
            "created_at",
            "updated_at",
        ],
    )
    await conn.execute("ANALYZE")
    await conn.close()


async def measure(engine: str, base: str, feeds: int, rows: int) -> list[tuple[str, float, float]]:
    from bot.app import build
    from bot.config import load_config
    from bot.daemon import prepare
    from tests.fakes import Clock, FakeChannel

    namespace = f"{engine}{uuid.uuid4().hex[:6]}"
    out: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pg_db = f"siar_growth_{uuid.uuid4().hex[:8]}"
        if engine == "sqlite":
            store_url = f"sqlite:///{tmp}/siar.db"
        else:
            import asyncpg

            admin = await asyncpg.connect(PG)
            await admin.execute(f'CREATE DATABASE "{pg_db}"')
            store_url = PG.rsplit("/", 1)[0] + "/" + pg_db
        try:
            path = Path(tmp) / "config.toml"
            text = f'[store]\nurl = "{store_url}"\n[fetch]\njitter = 0\n[metrics]\nlisten = ""\n'
            for f in range(feeds):
                text += f'[[feeds]]\nname = "f{f}"\nurl = "{base}/{namespace}/f/{f}"\nfirst_run = "all"\n'
            path.write_text(text)
            config = load_config(path)
            app = build(config, channels={"c": FakeChannel("c")}, clock=Clock())
            await prepare(app)

            async def changed_round(label: str) -> None:
                change(base, namespace)
                wall, used = time.perf_counter(), cpu()
                for feed in config.feeds:
                    await app.poller.poll(feed, force=True)
                wall, used = time.perf_counter() - wall, cpu() - used
                out.append((label, wall / feeds * 1000, used / feeds * 1000))
                print(
                    f"  {engine:<9} {label:<34} {wall / feeds * 1000:7.2f} ms wall  "
                    f"{used / feeds * 1000:7.2f} ms CPU per feed",
                    flush=True,
                )

            for feed in config.feeds:
                await app.poller.poll(feed, force=True)
            await changed_round("changed round, empty store")
            began = time.perf_counter()
            if engine == "sqlite":
                await app.close()
                prefill_sqlite(Path(tmp) / "siar.db", rows)
                app = build(config, channels={"c": FakeChannel("c")}, clock=Clock())
                await prepare(app)
            else:
                await prefill_postgres(store_url, rows)
            print(
                f"  {engine:<9} pre-filled {rows:,} stories and {rows:,} outbox rows in "
                f"{time.perf_counter() - began:.0f} s",
                flush=True,
            )
            await changed_round(f"changed round, +{rows:,} rows")
            await changed_round(f"changed round, +{rows:,} rows (again)")
            await app.close()
        finally:
            if engine != "sqlite":
                await admin.execute(f'DROP DATABASE "{pg_db}" WITH (FORCE)')
                await admin.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args()
    ready: multiprocessing.Queue[str] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.feeds, 50, ready), daemon=True)
    server.start()
    base = ready.get(timeout=60)
    try:
        print(f"{args.feeds} feeds x 50 items; a changed round brings 5 new items per feed")
        for engine in args.engines.split(","):
            results = asyncio.run(measure(engine, base, args.feeds, args.rows))
            empty, full = results[0], results[1:]
            ratio_wall = min(r[1] for r in full) / empty[1]
            ratio_cpu = min(r[2] for r in full) / empty[2]
            print(f"  {engine:<9} grown / empty: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU per feed\n")
    finally:
        server.terminate()
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
