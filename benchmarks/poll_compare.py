"""siar against lemon24/reader and a plain feedparser loop, on the same generated feeds.

N generated RSS feeds (M items each) are served by a local HTTP server in another process. Each
contender runs in a fresh process of its own and polls every feed three times: the first poll
(every item new), a changed round (10 % of each feed's items are new: the newest M/10 appear,
the oldest M/10 drop off) and an unchanged round (the server answers 304 to the conditional
GET). Contenders are interleaved (siar, reader, feedparser, then rotated) and repeated; each
figure is feeds/s (wall) and CPU ms per feed (user + system of the contender's process and its
children, the server excluded).

    .venv/bin/python benchmarks/poll_compare.py [--feeds 500] [--items 50] [--repeat 3]

siar: its real pipeline (`FeedPoller.poll`: fetch, parse, normalize, route, store with outbox
rows for one channel, SQLite), 20 polls in flight, the batched feed states flushed inside the
304 round. reader: `make_reader(sqlite)`, `update_feeds(scheduled=False, workers=20)`.
feedparser: `feedparser.parse(url, etag=…)` one feed after another.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROUNDS = ("first", "changed", "not_modified")


def feed_body(feed: int, count: int, version: int) -> bytes:
    step = max(1, count // 10)
    newest = count - 1 + version * step
    items = []
    for i in range(newest, newest - count, -1):
        items.append(
            f"<item><title>Berita {feed}-{i}: Putin dan PBB membahas perdamaian di Moskow</title>"
            f"<link>https://news.example/internasional/{feed}/{i}?utm_source=rss</link>"
            f'<guid isPermaLink="false">{feed}-{i}</guid>'
            f"<pubDate>Fri, 09 Oct 2020 13:{i % 60:02d}:00 +0700</pubDate>"
            "<category>Internasional</category><category>vladimir putin</category>"
            "<description><![CDATA[<p><strong>Moskow:</strong> Presiden Rusia mengundang dua menteri. "
            "Keduanya diundang untuk dialog damai.</p><p>Baca: lain</p><p>(FJR)</p>]]></description>"
            "</item>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Feed '
        f"{feed}</title><link>https://news.example/</link><language>id</language>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def serve(feeds: int, count: int, ready: Any) -> None:
    """Serve /<namespace>/f/<i>; /change/<namespace> moves a namespace to its next version."""
    bodies: dict[tuple[int, int], bytes] = {}
    versions: dict[str, int] = {}

    def body(feed: int, version: int) -> bytes:
        if version > 1:  # benchmarks/memory.py: a new version every round, not kept
            return feed_body(feed, count, version)
        if (feed, version) not in bodies:
            bodies[feed, version] = feed_body(feed, count, version)
        return bodies[feed, version]

    for f in range(feeds):
        body(f, 0)
        body(f, 1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if parts[0] == "change":  # /change/<namespace>
                versions[parts[1]] = versions.get(parts[1], 0) + 1
                self._answer(200, b"ok", {})
                return
            namespace, index = parts[0], int(parts[2])  # /<namespace>/f/<i>
            version = versions.get(namespace, 0)
            etag = f'"{version}-{index}"'
            if self.headers.get("If-None-Match") == etag:
                self._answer(304, b"", {"ETag": etag})
                return
            self._answer(200, body(index, version), {"ETag": etag, "Content-Type": "application/rss+xml"})

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    ready.put(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.serve_forever()


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def change(base: str, namespace: str) -> None:
    import urllib.request

    urllib.request.urlopen(f"{base}/change/{namespace}").read()


# --- contenders (each runs in its own process: `--contender NAME --base URL`) ----------------


def run_siar(base: str, namespace: str, feeds: int) -> dict[str, Any]:
    import asyncio

    from bot.app import build
    from bot.config import load_config
    from bot.daemon import prepare
    from tests.fakes import Clock, FakeChannel

    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.toml"
            text = '[fetch]\njitter = 0\n[metrics]\nlisten = ""\n'
            for f in range(feeds):
                text += f'[[feeds]]\nname = "f{f}"\nurl = "{base}/{namespace}/f/{f}"\nfirst_run = "all"\n'
            path.write_text(text)
            config = load_config(path)
            app = build(config, channels={"c": FakeChannel("c")}, clock=Clock())
            await prepare(app)
            out: dict[str, Any] = {}
            for round_name in ROUNDS:
                if round_name == "changed":
                    change(base, namespace)
                sem = asyncio.Semaphore(20)

                async def one(feed: Any, sem: asyncio.Semaphore = sem) -> str:
                    async with sem:
                        return (await app.poller.poll(feed, force=True)).outcome

                wall, used = time.perf_counter(), cpu()
                outcomes = await asyncio.gather(*(one(f) for f in config.feeds))
                await app.poller.flush()
                out[round_name] = (time.perf_counter() - wall, cpu() - used, sorted(set(outcomes)))
            await app.close()
            return out

    return asyncio.run(main())


def run_reader(base: str, namespace: str, feeds: int) -> dict[str, Any]:
    from reader import make_reader

    with tempfile.TemporaryDirectory() as tmp:
        reader = make_reader(str(Path(tmp) / "reader.sqlite"))
        for f in range(feeds):
            reader.add_feed(f"{base}/{namespace}/f/{f}")
        out: dict[str, Any] = {}
        for round_name in ROUNDS:
            if round_name == "changed":
                change(base, namespace)
            wall, used = time.perf_counter(), cpu()
            reader.update_feeds(scheduled=False, workers=20)
            out[round_name] = (time.perf_counter() - wall, cpu() - used, [])
        counts = reader.get_entry_counts()
        out["entries"] = counts.total
        reader.close()
        return out


def run_feedparser(base: str, namespace: str, feeds: int) -> dict[str, Any]:
    import feedparser

    etags: dict[int, str] = {}
    out: dict[str, Any] = {}
    for round_name in ROUNDS:
        if round_name == "changed":
            change(base, namespace)
        wall, used = time.perf_counter(), cpu()
        statuses = set()
        for f in range(feeds):
            doc = feedparser.parse(f"{base}/{namespace}/f/{f}", etag=etags.get(f))
            etags[f] = doc.get("etag", "")
            statuses.add(doc.get("status"))
        out[round_name] = (time.perf_counter() - wall, cpu() - used, sorted(statuses))
    return out


CONTENDERS = {"siar": run_siar, "reader": run_reader, "feedparser": run_feedparser}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=500)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--contender")
    parser.add_argument("--base")
    parser.add_argument("--namespace")
    args = parser.parse_args()
    if args.contender:  # a child: one contender, three rounds, JSON out
        print(json.dumps(CONTENDERS[args.contender](args.base, args.namespace, args.feeds)))
        return
    ready: multiprocessing.Queue[str] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.feeds, args.items, ready), daemon=True)
    server.start()
    base = ready.get(timeout=60)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    names = list(CONTENDERS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for rep in range(args.repeat):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                command = [sys.executable, __file__, "--contender", name, "--base", base]
                command += ["--namespace", f"{name}{rep}", "--feeds", str(args.feeds)]
                done = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results[name].append(result)
                line = "  ".join(
                    f"{r}: {args.feeds / result[r][0]:6.1f}/s {result[r][1] / args.feeds * 1000:6.2f} ms"
                    for r in ROUNDS
                )
                print(f"rep {rep + 1} {name:<10} {line}", flush=True)
    finally:
        server.terminate()
    print(f"\n{args.feeds} feeds x {args.items} items, {args.repeat} repetitions, medians")
    print(f"{'':<12}" + "".join(f"{r + ' feeds/s':>22}{r + ' CPU ms/feed':>26}" for r in ROUNDS))
    medians: dict[str, dict[str, tuple[float, float]]] = {}
    for name, runs in results.items():
        medians[name] = {
            r: (
                statistics.median(args.feeds / run[r][0] for run in runs),
                statistics.median(run[r][1] / args.feeds * 1000 for run in runs),
            )
            for r in ROUNDS
        }
        print(
            f"{name:<12}"
            + "".join(f"{medians[name][r][0]:>22.1f}{medians[name][r][1]:>26.2f}" for r in ROUNDS)
        )
    print("\nsiar's advantage (reader's CPU per feed / siar's; feedparser's / siar's):")
    for r in ROUNDS:
        siar = medians["siar"][r][1]
        print(
            f"  {r:<14} vs reader {medians['reader'][r][1] / siar:5.2f}x   "
            f"vs feedparser {medians['feedparser'][r][1] / siar:5.2f}x"
        )
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
