"""RSS of `siar run` over many poll rounds: flat, and under 150 MB?

`siar run` polls N generated feeds (50 items) every 10 s from a local server in another
process; every `--change-every` seconds 10 % of each feed's items are new (posted to a console
channel whose output is discarded); in between the feeds answer 304. The daemon's RSS (VmRSS)
is sampled every 5 s. Reported: RSS after the warm-up, at half time and at the end, the growth
over the last half, the maximum, and the polls skipped by the scheduler
(`siar_poll_skipped_total`). With `--compare-trim` a second daemon runs at the same time with
SIAR_MALLOC_TRIM=0, to see what trimming the heap does.

    .venv/bin/python benchmarks/memory.py [--feeds 200] [--minutes 10] [--compare-trim]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from poll_compare import change, serve  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def skipped(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("siar_poll_skipped_total{")
    )


class Run:
    def __init__(self, label: str, base: str, feeds: int, tmp: Path, trim: bool) -> None:
        self.label, self.samples = label, []
        self.port = free_port()
        namespace = f"mem{label}"
        self.namespace = namespace
        text = f'[store]\nurl = "sqlite:///{tmp}/{label}.db"\n[metrics]\nlisten = "127.0.0.1:{self.port}"\n'
        text += '[fetch]\njitter = "1s"\n[channels.out]\ntype = "console"\n'
        for f in range(feeds):
            text += f'[[feeds]]\nname = "f{f}"\nurl = "{base}/{namespace}/f/{f}"\ninterval = "10s"\n'
        config = tmp / f"{label}.toml"
        config.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SIAR_MALLOC_TRIM": "1" if trim else "0"}
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "run", "--config", str(config)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / f"{label}.log", "w"),
        )

    def sample(self, at: float) -> None:
        self.samples.append((at, rss_mib(self.process.pid)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--compare-trim", action="store_true")
    parser.add_argument("--change-every", type=float, default=60)
    args = parser.parse_args()
    ready: multiprocessing.Queue[str] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.feeds, 50, ready), daemon=True)
    server.start()
    base = ready.get(timeout=60)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        runs = [Run("trim", base, args.feeds, tmp, trim=True)]
        if args.compare_trim:
            runs.append(Run("notrim", base, args.feeds, tmp, trim=False))
        stop = threading.Event()

        def changer() -> None:  # a new version of every feed now and then
            while not stop.wait(args.change_every):
                for run in runs:
                    change(base, run.namespace)

        threading.Thread(target=changer, daemon=True).start()
        began = time.monotonic()
        try:
            while (now := time.monotonic() - began) < args.minutes * 60:
                for run in runs:
                    if run.process.poll() is not None:
                        raise SystemExit(
                            f"{run.label}: siar exited: {(tmp / f'{run.label}.log').read_text()[-2000:]}"
                        )
                    run.sample(now)
                time.sleep(5)
            totals = {run.label: skipped(run.port) for run in runs}
        finally:
            stop.set()
            for run in runs:
                run.process.terminate()
                run.process.wait(60)
            server.terminate()
        print(
            f"siar run: {args.feeds} feeds every 10 s, 10 % of items new every {args.change_every:g} s, "
            f"{args.minutes:g} minutes"
        )
        for run in runs:
            samples = [(t, r) for t, r in run.samples if t >= 60]  # after a minute of warm-up
            half = samples[len(samples) // 2][1]
            tail = [r for _, r in samples[-6:]]
            end = sum(tail) / len(tail)
            polls = run.samples[-1][0] / 10 * args.feeds
            print(
                f"  {run.label:<7} RSS at 1 min {samples[0][1]:6.1f} MiB, at half {half:6.1f}, at the end "
                f"{end:6.1f} (last half {100 * (end - half) / half:+5.1f} %), max "
                f"{max(r for _, r in run.samples):6.1f} MiB; polls skipped {totals[run.label]:.0f} "
                f"of ~{polls:.0f}"
            )
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
