"""RSS of `siar run` over 1,000 poll rounds of 200 feeds: flat, and under 150 MB?

A local server (another process) serves N generated feeds of 50 items. A round is N polls of
a daemon (every feed once); at the start of each round 10 % of the feeds (a different tenth
each round) get a new version in which 10 % of their items are new, the others answer 304 to
the conditional GET. New stories go to a console channel whose output is discarded; metrics
are served as by default. The daemon is `siar run` as the command line runs it (config file,
logging, `run_daemon(build(config))`) except that the feeds' interval is set below the 10 s
the configuration allows (`--interval`, default 2 s), so 1,000 rounds take half an hour rather
than three hours; a daemon that cannot keep up skips polls (counted) and its rounds just take
longer. The store starts empty (the first start migrates it).

Sampled every 2 s: VmRSS, CPU time and the rounds served. Reported per daemon: RSS every 10 %
of the rounds, at the end of the warm-up (5 % of the rounds), at half and at the end (each
the mean of the samples within ±1 % of the rounds), the growth over the last half, the peak
(VmHWM: also between samples), CPU per round and polls skipped (`siar_poll_skipped_total`).

Side by side in the same run (each daemon its own store and namespace on the one server):
`--baseline ROOT` runs the checkout at ROOT (e.g. /work/main) as well, for `--baseline-rounds`
rounds; `--variant LABEL:KEY=VALUE[,KEY=VALUE]` runs this checkout again with environment
variables set (e.g. `--variant arena2:MALLOC_ARENA_MAX=2`).

    .venv/bin/python benchmarks/memory.py [--feeds 200] [--rounds 1000] [--interval 2]
        [--baseline /work/main [--baseline-rounds 200]] [--variant LABEL:K=V ...] [--csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ITEMS = 50
CHANGING = 0.10  # share of the feeds that change each round
SAMPLE_EVERY = 2.0


def feed_body(feed: int, count: int, version: int) -> bytes:
    """Feed `feed` at `version`: each version adds the newest tenth of items, drops the oldest."""
    step = max(1, count // 10)
    newest = count - 1 + version * step
    items = [
        f"<item><title>Berita {feed}-{i}: Putin dan PBB membahas perdamaian di Moskow</title>"
        f"<link>https://news.example/internasional/{feed}/{i}?utm_source=rss</link>"
        f'<guid isPermaLink="false">{feed}-{i}</guid>'
        f"<pubDate>Fri, 09 Oct 2020 13:{i % 60:02d}:00 +0700</pubDate>"
        "<category>Internasional</category><category>vladimir putin</category>"
        "<description><![CDATA[<p><strong>Moskow:</strong> Presiden Rusia mengundang dua menteri. "
        "Keduanya diundang untuk dialog damai.</p><p>Baca: lain</p><p>(FJR)</p>]]></description>"
        "</item>"
        for i in range(newest, newest - count, -1)
    ]
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Feed '
        f"{feed}</title><link>https://news.example/</link><language>id</language>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


class Feeds:
    """One daemon's feeds on the server: versions, and the polls served so far."""

    def __init__(self, feeds: int) -> None:
        self.feeds = feeds
        self.changing = max(1, round(feeds * CHANGING))
        self.polls = 0
        self.versions = [0] * feeds
        self.bodies: dict[int, bytes] = {}

    def answer(self, feed: int, etag: str | None) -> tuple[int, bytes, str]:
        """(status, body, ETag) of one poll; a new round changes the next tenth of the feeds."""
        if self.polls % self.feeds == 0 and self.polls:  # round r = polls // feeds begins
            first = (self.polls // self.feeds) * self.changing
            for f in range(first, first + self.changing):
                self.versions[f % self.feeds] += 1
                self.bodies.pop(f % self.feeds, None)
        self.polls += 1
        version = self.versions[feed]
        tag = f'"{version}"'
        if etag == tag:
            return 304, b"", tag
        if feed not in self.bodies:
            self.bodies[feed] = feed_body(feed, ITEMS, version)
        return 200, self.bodies[feed], tag


def serve(feeds: int, ready: Any) -> None:
    """Serve /<namespace>/f/<i> and /stats/<namespace> (polls served, JSON)."""
    spaces: dict[str, Feeds] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            with lock:
                if parts[0] == "stats":
                    space = spaces.get(parts[1])
                    body = json.dumps({"polls": space.polls if space else 0}).encode()
                    status, tag = 200, ""
                else:
                    space = spaces.setdefault(parts[0], Feeds(feeds))
                    status, body, tag = space.answer(int(parts[2]), self.headers.get("If-None-Match"))
            self.send_response(status)
            if tag:
                self.send_header("ETag", tag)
                self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    ready.put(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.serve_forever()


def run_as_daemon(config_path: str, interval: float) -> int:
    """`siar run --config PATH` as bot.cli runs it, with every feed's interval set to `interval`."""
    import asyncio

    from bot.app import build
    from bot.config import load_config
    from bot.daemon import run_daemon
    from bot.logs import setup_logging

    config = load_config(config_path)
    config.feeds = [feed.model_copy(update={"interval": interval}) for feed in config.feeds]
    setup_logging(config.daemon.log_level, config.daemon.log_format, config.secrets)
    import bot

    print(f"memory.py: siar from {Path(bot.__file__).parent.parent}", file=sys.stderr, flush=True)
    return asyncio.run(run_daemon(build(config)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB, CPU seconds (user + system) of process `pid`."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def skipped_polls(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("siar_poll_skipped_total{")
    )


@dataclass
class Run:
    label: str
    root: Path
    env: dict[str, str]
    rounds: int
    samples: list[tuple[float, float, float, float]] = field(default_factory=list)  # t, rounds, rss, cpu
    peak: float = 0.0
    skipped: float = float("nan")
    wall: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self, base: str, feeds: int, interval: float, tmp: Path) -> None:
        self.port = free_port()
        text = (
            f'[store]\nurl = "sqlite:///{tmp}/{self.label}.db"\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.port}"\n'
            '[fetch]\njitter = "0s"\n[channels.out]\ntype = "console"\n'
        )
        for f in range(feeds):
            text += f'[[feeds]]\nname = "f{f}"\nurl = "{base}/{self.label}/f/{f}"\ninterval = "10s"\n'
        config = tmp / f"{self.label}.toml"
        config.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(self.root), **self.env}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--as-daemon", str(config), "--interval", str(interval)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / f"{self.label}.log", "w"),
        )

    def sample(self, at: float, base: str, feeds: int) -> None:
        assert self.process is not None
        stats = json.loads(urllib.request.urlopen(f"{base}/stats/{self.label}", timeout=10).read())
        now = proc_status(self.process.pid)
        self.samples.append((at, stats["polls"] / feeds, now["VmRSS"], now["cpu"]))
        self.peak = now["VmHWM"]

    @property
    def done(self) -> bool:
        return bool(self.samples) and self.samples[-1][1] >= self.rounds

    def stop(self, at: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.skipped = skipped_polls(self.port)
        except OSError:
            pass
        self.wall = at
        self.process.terminate()
        self.process.wait(120)

    def rss_at(self, rounds: float, window: float) -> float:
        """Mean RSS of the samples within `window` rounds of `rounds` (the nearest if none)."""
        near = [rss for _, r, rss, _ in self.samples if abs(r - rounds) <= window]
        if not near:
            near = [min(self.samples, key=lambda s: abs(s[1] - rounds))[2]]
        return sum(near) / len(near)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, settings = text.partition(":")
    env = dict(pair.split("=", 1) for pair in settings.split(",") if pair)
    return label, env


def report(runs: list[Run], args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(
        f"siar run: {args.feeds} feeds of {ITEMS} items polled every {args.interval:g} s; each round "
        f"{CHANGING:.0%} of the feeds have {CHANGING:.0%} new items, the others answer 304"
    )
    for run in runs:
        if not run.samples:
            continue
        done = run.samples[-1][1]
        window = max(1.0, done / 100)
        warm, half = run.rss_at(done * 0.05, window), run.rss_at(done / 2, window)
        end = run.rss_at(done, window)
        cpu = run.samples[-1][3] / done if done else float("nan")
        marks = [done * k / 10 for k in range(1, 11)]
        print(
            f"  {run.label}: {done:.0f} rounds in {run.wall / 60:.1f} min, {cpu:.2f} s CPU per round, "
            f"polls skipped {run.skipped:.0f} of {done * args.feeds:.0f}"
        )
        print("    RSS (MiB) at rounds " + ", ".join(f"{m:.0f}: {run.rss_at(m, window):.1f}" for m in marks))
        print(
            f"    RSS at warm-up end {warm:.1f} MiB, at half {half:.1f}, at the end {end:.1f} "
            f"(last half {100 * (end - half) / half:+.1f} %), peak (VmHWM) {run.peak:.1f} MiB "
            f"= {run.peak * 1.048576:.1f} MB"
        )
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")


def watch(runs: list[Run], base: str, feeds: int, tmp: Path) -> None:
    """Sample every daemon until each has served its rounds; stop each when it has."""
    began = time.monotonic()
    next_print = 0.0
    try:
        while not all(run.done for run in runs):
            now = time.monotonic() - began
            for run in runs:
                if run.done:
                    run.stop(now)
                    continue
                assert run.process is not None
                if run.process.poll() is not None:
                    log = (tmp / f"{run.label}.log").read_text()[-3000:]
                    raise SystemExit(f"{run.label}: siar exited: {log}")
                run.sample(now, base, feeds)
            if now >= next_print:
                next_print = now + 60
                progress = [
                    f"{r.label} round {r.samples[-1][1]:.0f} RSS {r.samples[-1][2]:.1f}" for r in runs
                ]
                print(f"  [{now / 60:5.1f} min] " + "; ".join(progress), flush=True)
            time.sleep(SAMPLE_EVERY)
    finally:
        for run in runs:
            run.stop(time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--baseline", type=Path, help="another checkout to run beside this one")
    parser.add_argument("--baseline-rounds", type=int)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...")
    parser.add_argument("--csv", type=Path, help="write every sample here")
    parser.add_argument("--as-daemon", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_daemon:
        raise SystemExit(run_as_daemon(args.as_daemon, args.interval))
    runs = [Run("branch", ROOT, {}, args.rounds)]
    for text in args.variant:
        label, env = parse_variant(text)
        runs.append(Run(label, ROOT, env, args.rounds))
    if args.baseline:
        runs.append(Run("baseline", args.baseline.resolve(), {}, args.baseline_rounds or args.rounds))
    ready: multiprocessing.Queue[str] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.feeds, ready), daemon=True)
    server.start()
    base = ready.get(timeout=60)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for run in runs:
            run.start(base, args.feeds, args.interval, tmp)
        try:
            watch(runs, base, args.feeds, tmp)
        finally:
            server.terminate()
        if args.csv:
            with args.csv.open("w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["daemon", "seconds", "rounds", "rss_mib", "cpu_s"])
                for run in runs:
                    out.writerows([run.label, *sample] for sample in run.samples)
    report(runs, args)


if __name__ == "__main__":
    main()
