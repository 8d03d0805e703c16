"""What operating siar costs: CPU per poll and per send with metrics on and off (side by side,
interleaved), and how long a reload takes with 200 feeds.

    .venv/bin/python benchmarks/operations.py [--feeds 200] [--rounds 5]

Polls read local files (no network noise); sends go to a channel that does nothing, so what is
measured is siar's own work around them: fetch bookkeeping, parse, routing, the store, the
dispatcher and the metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from bot.app import build
from bot.config import load_config
from bot.daemon import Daemon, prepare
from tests.fakes import FakeChannel
from tests.feedserver import rss


def write_feeds(folder: Path, feeds: int, items: int, round_: int) -> None:
    for f in range(feeds):
        entries = [
            {
                "title": f"Feed {f} story {round_}-{i}",
                "link": f"https://e.example/{f}/{round_}/{i}",
                "guid": f"{f}-{round_}-{i}",
                "description": "<p>" + "Kalimat berita. " * 30 + "</p>",
            }
            for i in range(items)
        ]
        (folder / f"f{f}.xml").write_bytes(rss(entries))


def config_text(feeds: int, metrics: bool, channels: int = 1) -> str:
    text = f'[metrics]\nlisten = "{"127.0.0.1:0" if metrics else ""}"\n'
    text += "".join(f'[[feeds]]\nname = "f{f}"\nurl = "f{f}.xml"\nfirst_run = "all"\n' for f in range(feeds))
    for c in range(channels):
        text += f'[channels.c{c}]\ntype = "console"\nrate_limit = "100000/s"\n'
    return text


async def one_round(folder: Path, metrics: bool, feeds: int, round_: int) -> tuple[float, float, int, int]:
    """CPU seconds for polling every feed once, and for delivering what it queued."""
    (folder / "config.toml").write_text(config_text(feeds, metrics))
    config = load_config(folder / "config.toml")
    channel = FakeChannel("c0", config.channels["c0"])
    app = build(config, channels={"c0": channel})
    await prepare(app)
    write_feeds(folder, feeds, 10, round_)
    began = time.process_time()
    for feed in config.feeds:
        await app.poller.poll(feed, force=True)
    polled = time.process_time()
    await app.dispatcher.drain()
    sent = time.process_time()
    await app.close()
    return polled - began, sent - polled, len(config.feeds), len(channel.sent)


async def reload_time(folder: Path, feeds: int) -> tuple[float, float]:
    """Seconds of one reload that changes nothing, and of one that adds and removes a tenth of
    the feeds and one channel, with `feeds` feeds."""
    (folder / "config.toml").write_text(config_text(feeds, True, channels=3))
    write_feeds(folder, feeds, 2, 0)
    app = build(load_config(folder / "config.toml"))
    daemon = Daemon(app)
    await prepare(app)
    daemon.scheduler.start(paused=True)
    for feed in app.config.feeds:
        daemon.schedule(feed, now=False)
    began = time.perf_counter()
    assert await daemon.reloader.reload()
    same = time.perf_counter() - began
    text = config_text(feeds, True, channels=2).replace('name = "f0"', 'name = "g0"')
    tenth = max(1, feeds // 10)
    for f in range(1, tenth):
        text = text.replace(f'name = "f{f}"\n', f'name = "g{f}"\n')
    (folder / "config.toml").write_text(text)
    began = time.perf_counter()
    assert await daemon.reloader.reload()
    changed = time.perf_counter() - began
    daemon.scheduler.shutdown(wait=False)
    await app.dispatcher.stop(1)
    await app.close()
    return same, changed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float, int, int]]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for metrics in (round_ % 2 == 0, round_ % 2 == 1):  # interleaved, alternating who goes first
            with tempfile.TemporaryDirectory() as folder:
                results[metrics].append(await one_round(Path(folder), metrics, args.feeds, round_))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.feeds} feeds x 10 new items, {args.rounds} rounds")
    print(f"{'':12} {'CPU ms/poll':>12} {'CPU ms/send':>12}")
    for metrics in (False, True):
        polls = [p / n * 1000 for p, _, n, _ in results[metrics]]
        sends = [s / max(1, k) * 1000 for _, s, _, k in results[metrics]]
        print(
            f"{'metrics on' if metrics else 'metrics off':12} {statistics.median(polls):12.2f} "
            f"{statistics.median(sends):12.3f}"
        )
    with tempfile.TemporaryDirectory() as folder:
        same, changed = await reload_time(Path(folder), args.feeds)
    print(
        f"reload with {args.feeds} feeds: {same * 1000:.0f} ms unchanged, "
        f"{changed * 1000:.0f} ms with a tenth of the feeds and one channel changed"
    )


if __name__ == "__main__":
    asyncio.run(main())
