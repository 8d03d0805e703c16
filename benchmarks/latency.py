"""Story-to-post latency: a feed changes -> the channel's request is sent, polling vs WebSub.

One real daemon (`bot.daemon.Daemon`: scheduler, pipeline, store, dispatcher, HTTP server) runs
two groups of feeds side by side in the same run: `poll-*` feeds polled at the shipped interval
(config.toml's first feed, with its `[fetch] jitter`) and `websub-*` feeds that advertise a hub
(tests/websub_hub.py, written from the W3C Recommendation) at which the daemon subscribes. At
random moments a story is added to a feed; for a WebSub feed the publisher then pings the hub,
which distributes it at once (a real hub adds its own delay). Latency is from the feed's change
to the recording channel's `send` being called (the moment a platform request would leave).

    .venv/bin/python benchmarks/latency.py [--feeds 20] [--changes 2] [--duration 240]

Takes about duration + interval + 30 s. The feed server and the hub run in this process, so
their work is counted in the same loop and GIL as the daemon's (a worst case for WebSub).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import build
from bot.config import load_config
from bot.daemon import Daemon
from bot.durations import parse_duration
from bot.types import Post, Receipt
from tests.fakes import FakeChannel
from tests.feedserver import FeedServer, Route
from tests.websub_hub import Hub

ROOT = Path(__file__).resolve().parent.parent


class Recorder(FakeChannel):
    """A channel that notes when each story's request would leave."""

    def __init__(self) -> None:
        super().__init__("recorder")
        self.sent_at: dict[str, float] = {}
        self.arrived = asyncio.Event()

    async def send(self, post: Post, *, idempotency_key: str) -> Receipt:
        self.sent_at.setdefault(post.story.title, time.monotonic())
        self.arrived.set()
        return await super().send(post, idempotency_key=idempotency_key)

    async def all_posted(self, count: int) -> None:
        while True:
            self.arrived.clear()
            if len(self.sent_at) >= count:
                return
            await self.arrived.wait()


def time_fetches(daemon: Daemon) -> dict[str, list[float]]:
    """Wraps the daemon's fetcher: seconds per fetch, by group."""
    fetches: dict[str, list[float]] = {"poll": [], "websub": []}
    fetch = daemon.app.fetcher.fetch

    async def timed_fetch(url: str, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await fetch(url, *args, **kwargs)
        finally:
            fetches["websub" if "/websub-" in url else "poll"].append(time.perf_counter() - began)

    daemon.app.fetcher.fetch = timed_fetch  # type: ignore[method-assign]
    return fetches


def shipped() -> tuple[float, float]:
    """(interval, jitter) of the shipped config.toml's first feed, in seconds."""
    data = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    interval = parse_duration(data["feeds"][0].get("interval", "5m"))
    jitter = parse_duration(data.get("fetch", {}).get("jitter", "10s"))
    return float(interval), float(jitter)


def feed_xml(name: str, ids: list[int], hub: str, self_url: str) -> bytes:
    items = "".join(
        f"<item><title>{name} story {i}</title><link>https://e.example/{name}/{i}</link>"
        f"<guid>{name}-{i}</guid><pubDate>Fri, 09 Oct 2020 13:53:00 +0700</pubDate>"
        f"<description>Lead of story {i}.</description></item>"
        for i in sorted(ids, reverse=True)[:20]
    )
    links = f'<atom:link rel="hub" href="{hub}"/><atom:link rel="self" href="{self_url}"/>' if hub else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">'
        f"<channel><title>{name}</title><link>https://e.example/</link>{links}<description>d</description>"
        f"{items}</channel></rss>"
    ).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(label: str, values: list[float], missing: int) -> str:
    values = sorted(values)
    if not values:
        return f"{label:<8} no samples"
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return (
        f"{label:<8} n={len(values):<4} p50 {cuts[49]:8.3f} s   p90 {cuts[89]:8.3f} s   "
        f"p99 {cuts[98]:8.3f} s   max {values[-1]:8.3f} s   not posted {missing}"
    )


async def run(feeds: int, changes: int, duration: float, seed: int) -> None:
    interval, jitter = shipped()
    rng = random.Random(seed)
    hub = await Hub().start()
    port = free_port()
    with FeedServer() as server, tempfile.TemporaryDirectory() as tmp:
        ids: dict[str, list[int]] = {}
        names = [f"poll-{i}" for i in range(feeds)] + [f"websub-{i}" for i in range(feeds)]

        def publish_body(name: str) -> bytes:
            topic = server.url(f"/{name}.xml")
            body = feed_xml(name, ids[name], hub.url if name.startswith("websub") else "", topic)
            server.routes[f"/{name}.xml"] = Route(body=body)
            return body

        text = (
            f'[metrics]\nlisten = ""\n[fetch]\njitter = "{jitter}s"\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\npublic_url = "http://127.0.0.1:{port}/"\n'
        )
        for name in names:
            ids[name] = [0]
            publish_body(name)
            url = server.url(f"/{name}.xml")
            text += f'[[feeds]]\nname = "{name}"\nurl = "{url}"\ninterval = "{interval}s"\n'
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        recorder = Recorder()
        daemon = Daemon(build(load_config(path), channels={"recorder": recorder}))
        fetches = time_fetches(daemon)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            began = time.monotonic()
            topics = [server.url(f"/{name}.xml") for name in names if name.startswith("websub")]
            while sum(len(hub.active(topic)) for topic in topics) < feeds:  # the hub's side too
                if time.monotonic() - began > 120:
                    raise SystemExit("the WebSub feeds did not all subscribe within 120 s")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # first polls and catch-up polls done
            print(
                f"{feeds} polled feeds (interval {interval:.0f}s, jitter {jitter:.0f}s) and {feeds} WebSub "
                f"feeds (safety net {daemon.app.config.feeds[-1].websub_poll_interval:.0f}s), "
                f"{changes} changes per feed at random moments over {duration:.0f}s"
            )
            plan = sorted((rng.uniform(0, duration), name) for name in names for _ in range(changes))
            changed_at: dict[str, float] = {}
            start = time.monotonic()
            for at, name in plan:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                story = ids[name][-1] + 1
                ids[name].append(story)
                body = publish_body(name)
                changed_at[f"{name} story {story}"] = time.monotonic()
                if name.startswith("websub") and await hub.publish(server.url(f"/{name}.xml"), body) != [202]:
                    print(f"the hub could not deliver to {name}")
            try:  # the last polled change waits up to one interval (+ jitter)
                await asyncio.wait_for(recorder.all_posted(len(changed_at)), interval + jitter + 30)
            except TimeoutError:
                pass
        finally:
            stop.set()
            await task
            await hub.stop()
        for group in ("poll", "websub"):
            titles = [t for t in changed_at if t.startswith(group)]
            latencies = [recorder.sent_at[t] - changed_at[t] for t in titles if t in recorder.sent_at]
            print(summary(group, latencies, len(titles) - len(latencies)))
        # What a notification's re-fetch of the feed costs (the alternative: parse the hub's body).
        median = statistics.median(fetches["websub"]) * 1000 if fetches["websub"] else 0.0
        print(f"fetch of a WebSub feed (the re-fetch after a notification): median {median:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=20, help="feeds per group")
    parser.add_argument("--changes", type=int, default=2, help="stories added per feed")
    parser.add_argument("--duration", type=float, default=240.0, help="seconds over which they are added")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    asyncio.run(run(args.feeds, args.changes, args.duration, args.seed))


if __name__ == "__main__":
    main()
