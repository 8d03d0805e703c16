"""Polling throughput: N generated feeds served from a local server, polled by siar's pipeline.

Prints feeds/s and CPU seconds per feed (this process only; the server runs in another
process) for four cases: first poll (every item new), changed (one new item per feed),
unchanged with validators (304 Not Modified) and unchanged without validators (same body hash).

    .venv/bin/python benchmarks/poll.py [--feeds 200] [--items 50]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import build
from bot.config import load_config
from bot.daemon import prepare
from tests.fakes import Clock, FakeChannel
from tests.feedserver import FeedServer, Route, rss


def items(feed: int, count: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {
            "title": f"Berita {feed}-{i}: Putin dan PBB membahas perdamaian di Moskow",
            "link": f"https://news.example/internasional/{feed}/{i}?utm_source=rss",
            "guid": f"{feed}-{i}",
            "category": "Internasional|vladimir putin|rusia",
            "description": "<p><strong>Moskow:</strong> Presiden Rusia mengundang dua menteri. "
            "Keduanya diundang untuk dialog damai.</p><p>Baca: lain</p><p>(FJR)</p>",
        }
        for i in range(start + count - 1, start - 1, -1)
    ]


def serve(feeds: int, count: int, port_queue: multiprocessing.Queue, commands: multiprocessing.Queue) -> None:
    with FeedServer() as server:
        for f in range(feeds):
            server.routes[f"/etag/{f}"] = Route(body=rss(items(f, count)))
            server.routes[f"/plain/{f}"] = Route(body=rss(items(f, count)), etag=False)
        port_queue.put(server.base)
        while (command := commands.get()) != "stop":
            if command == "change":
                for f in range(feeds):
                    body = rss(items(f, count, start=1))
                    server.routes[f"/etag/{f}"] = Route(body=body)
                    server.routes[f"/plain/{f}"] = Route(body=body, etag=False)
            port_queue.put("ok")


async def run(
    feeds: int, count: int, base: str, commands: multiprocessing.Queue, answers: multiprocessing.Queue
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.toml"
        text = "[fetch]\njitter = 0\n"
        for kind in ("etag", "plain"):
            for f in range(feeds):
                text += (
                    f'[[feeds]]\nname = "{kind}-{f}"\nurl = "{base}/{kind}/{f}"\n'
                    'first_run = "all"\ninclude_categories = ["Internasional"]\n'
                )
        config_path.write_text(text)
        config = load_config(config_path)
        app = build(config, channels={"c": FakeChannel("c")}, clock=Clock())
        await prepare(app)

        async def poll_all(kind: str) -> tuple[float, float, list[str]]:
            targets = [f for f in config.feeds if f.name.startswith(kind)]
            sem = asyncio.Semaphore(20)

            async def one(feed):  # type: ignore[no-untyped-def]
                async with sem:
                    return await app.poller.poll(feed, force=True)

            wall, cpu = time.perf_counter(), time.process_time()
            results = await asyncio.gather(*(one(f) for f in targets))
            return time.perf_counter() - wall, time.process_time() - cpu, [r.outcome for r in results]

        def report(label: str, wall: float, cpu: float, outcomes: list[str]) -> None:
            kinds = {o: outcomes.count(o) for o in set(outcomes)}
            print(f"{label:<38} {feeds / wall:8.1f} feeds/s  {cpu / feeds * 1000:7.2f} ms CPU/feed  {kinds}")

        print(f"{feeds} feeds x {count} items, 20 concurrent polls, SQLite store")
        report("first poll (all items new)", *await poll_all("etag"))
        await poll_all("plain")
        report("unchanged, ETag -> 304", *await poll_all("etag"))
        report("unchanged, no validators (same hash)", *await poll_all("plain"))
        commands.put("change")
        answers.get()
        report("changed (1 new item per feed)", *await poll_all("etag"))
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--items", type=int, default=50)
    args = parser.parse_args()
    answers: multiprocessing.Queue = multiprocessing.Queue()
    commands: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.feeds, args.items, answers, commands))
    server.start()
    try:
        base = answers.get(timeout=30)
        asyncio.run(run(args.feeds, args.items, base, commands, answers))
    finally:
        commands.put("stop")
        server.join(10)


if __name__ == "__main__":
    main()
