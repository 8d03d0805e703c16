"""Signals to a real `siar run` process (issue 8.6): a SIGTERM while polls are in flight stops it
cleanly — exit 0, the cancelled polls summed up in one info line, no traceback, nothing at
warning level — and SIGHUP reloads the configuration without stopping the daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.feedserver import FeedServer, Route, rss

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
ROOT = Path(__file__).parent.parent
SLOW_FEEDS = 16
CONFIG = """
[metrics]
listen = ""

[daemon]
shutdown_grace = "1s"
log_format = "json"

[fetch]
jitter = "0s"
timeout = "60s"

[[feeds]]
name = "fast"
url = "{base}/fast"
interval = "10s"
first_run = "all"

[channels.console]
type = "console"
rate_limit = "100/s"
"""
SLOW = """
[[feeds]]
name = "slow{i}"
url = "{base}/slow{i}"
interval = "10s"
"""


def items(prefix: str, n: int) -> list[dict[str, str]]:
    return [
        {"title": f"{prefix} story {i}", "link": f"https://e.example/{prefix}/{i}", "guid": f"{prefix}{i}"}
        for i in range(n)
    ]


class Daemon:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out = (folder / "out.txt").open("w")
        self.err = (folder / "err.txt").open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "run", "--config", str(folder / "config.toml")],
            cwd=folder,
            stdout=self.out,
            stderr=self.err,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def log(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return (self.folder / "err.txt").read_text()

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else on stderr, like a bare traceback, fails the test)."""
        lines = [line for line in self.log().splitlines() if line.strip()]
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"a line that is not a log record on stderr: {line!r}") from None
        return records

    def output(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return (self.folder / "out.txt").read_text()

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the daemon died: {self.log()[-2000:]}"
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log()[-3000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.out.close()
        self.err.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[FeedServer, Path]]:
    with FeedServer() as feeds:
        feeds.routes["/fast"] = Route(body=rss(items("fast", 2)))
        for i in range(SLOW_FEEDS):  # answers after 30 s: still in flight at the SIGTERM
            feeds.routes[f"/slow{i}"] = Route(body=rss(items(f"slow{i}", 1)), delay=30)
        config = CONFIG.format(base=feeds.base) + "".join(
            SLOW.format(i=i, base=feeds.base) for i in range(SLOW_FEEDS)
        )
        (tmp_path / "config.toml").write_text(config)
        yield feeds, tmp_path


def test_sigterm_with_polls_in_flight_is_one_info_line_and_no_traceback(
    world: tuple[FeedServer, Path],
) -> None:
    feeds, folder = world
    daemon = Daemon(folder)
    try:
        daemon.wait_for(lambda: daemon.output().count("fast story") == 2, "the fast feed's posts")
        daemon.wait_for(
            lambda: all(feeds.hits(f"/slow{i}") for i in range(SLOW_FEEDS)), "every slow poll in flight"
        )
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        code = daemon.process.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        daemon.close()
    records = daemon.records()
    print(f"\nSIGTERM with {SLOW_FEEDS} polls in flight: exit {code} after {took:.1f} s")
    assert code == 0, daemon.log()[-3000:]
    assert took < 15, f"stopping took {took:.1f} s with shutdown_grace = 1s"
    assert not [r for r in records if "exception" in r], [r for r in records if "exception" in r][:2]
    assert "Traceback" not in daemon.log() and "CancelledError" not in daemon.log()
    stop_at = next(i for i, r in enumerate(records) if r["message"].startswith("stopping: no new polls"))
    during_stop = records[stop_at:]
    loud = [r for r in during_stop if r["level"] not in ("info", "debug")]
    assert not loud, loud
    cancelled = [r for r in during_stop if "cancelled" in r["message"]]
    assert [r["message"] for r in cancelled] == [
        f"stopping: {SLOW_FEEDS} polls did not finish in time and were cancelled"
    ]
    assert records[-1]["message"] == "siar stopped"


def test_sighup_reloads_and_never_stops_the_daemon(world: tuple[FeedServer, Path]) -> None:
    feeds, folder = world
    config = folder / "config.toml"
    daemon = Daemon(folder)
    try:
        daemon.wait_for(lambda: daemon.output().count("fast story") == 2, "the fast feed's posts")
        # an unchanged file, several SIGHUPs in a row, polls in flight: still running
        for _ in range(3):
            daemon.process.send_signal(signal.SIGHUP)
            time.sleep(0.2)
        daemon.wait_for(lambda: "reload: " in daemon.log(), "the reload")
        time.sleep(1)
        assert daemon.process.poll() is None, daemon.log()[-2000:]
        # a changed file: a new feed is polled and posted, nothing repeated
        feeds.routes["/late"] = Route(body=rss(items("late", 1)))
        config.write_text(
            config.read_text()
            + f'\n[[feeds]]\nname = "late"\nurl = "{feeds.base}/late"\ninterval = "10s"\nfirst_run = "all"\n'
        )
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda: "late story 0" in daemon.output(), "the added feed's story")
        assert daemon.process.poll() is None
        daemon.process.send_signal(signal.SIGTERM)
        code = daemon.process.wait(timeout=30)
    finally:
        daemon.close()
    assert code == 0, daemon.log()[-3000:]
    assert daemon.output().count("fast story 0") == 1 and daemon.output().count("late story 0") == 1
    assert "Traceback" not in daemon.log()
