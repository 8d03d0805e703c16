"""Operating a running daemon from outside, as an ops team does: /metrics, /healthz and /readyz
over HTTP, SIGHUP and `siar reload` changing feeds and channels while it runs (nothing lost or
repeated), an invalid new config refused, `siar pause` / `siar resume` across restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.config import load_config
from bot.feedstate import FeedState
from bot.health import HealthEndpoints, Heartbeat
from bot.metrics import Metrics
from bot.ops import DaemonHealth
from bot.store import Store
from tests.fakes import Clock
from tests.feedserver import rss

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def items(prefix: str, n: int) -> list[dict[str, str]]:
    return [
        {"title": f"{prefix} story {i}", "link": f"https://e.example/{prefix}/{i}", "guid": f"{prefix}{i}"}
        for i in range(n)
    ]


def config_text(port: int, feeds: list[str], channels: dict[str, list[str]], extra: str = "") -> str:
    text = f'[metrics]\nlisten = "127.0.0.1:{port}"\n[daemon]\nshutdown_grace = "2s"\n{extra}\n'
    for name in feeds:
        text += f'[[feeds]]\nname = "{name}"\nurl = "{name}.xml"\ninterval = "10s"\nfirst_run = "all"\n'
    for name, listens in channels.items():
        text += f'[channels.{name}]\ntype = "console"\nfeeds = {json.dumps(listens)}\nrate_limit = "100/s"\n'
    return text


class Daemon:
    """`python main.py run` in a folder of its own, its output in files."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.out = (folder / "out.txt").open("w")
        self.err = (folder / "err.txt").open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "run", "--config", str(folder / "config.toml")],
            cwd=folder,
            stdout=self.out,
            stderr=self.err,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_for(self, check, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the daemon died: {self.log()[-2000:]}"
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return (self.folder / "err.txt").read_text()

    def output(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return (self.folder / "out.txt").read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.out.close()
            self.err.close()


def reload_command(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "reload", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_metrics_health_and_reload_on_a_running_daemon(daemon_dir: Path) -> None:
    port = free_port()
    (daemon_dir / "a.xml").write_bytes(rss(items("a", 3)))
    (daemon_dir / "b.xml").write_bytes(rss(items("b", 2)))
    config = daemon_dir / "config.toml"
    config.write_text(config_text(port, ["a"], {"c1": ["a"]}))
    daemon = Daemon(daemon_dir, port)
    try:
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, "/healthz")
        daemon.wait_for(lambda: daemon.output().count("a story") >= 3, "the first posts")
        _, body = daemon.get("/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }
        assert samples[("siar_polls_total", (("feed", "a"), ("result", "new")))] >= 1
        assert samples[("siar_sends_total", (("channel", "c1"), ("result", "sent")))] == 3
        assert samples[("siar_story_to_post_seconds_count", (("channel", "c1"),))] == 3
        assert samples[("siar_channel_up", (("channel", "c1"),))] == 1
        assert not [key for key in samples if any("https://" in v for _, v in key[1])]  # no URLs
        ready = json.loads(daemon.get("/readyz")[1])
        assert ready == {"ok": True, "checks": {"store": "ok", "feeds": "ok"}}

        # SIGHUP: feed b and channel c2 are added, c1 now also takes b; nothing is repeated
        config.write_text(config_text(port, ["a", "b"], {"c1": ["a", "b"], "c2": ["b"]}))
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda: "reload: applied" in daemon.log(), "the reload")
        daemon.wait_for(lambda: daemon.output().count("b story") >= 4, "feed b on c1 and c2")
        assert "channels added: c2" in daemon.log() and "feeds added: b" in daemon.log()

        # an invalid file: `siar reload` says why and leaves the daemon alone; a SIGHUP is refused
        # by the daemon with the same errors, and it keeps running on the old configuration
        good = config.read_text()
        config.write_text(good + '\n[[feeds]]\nname = "x"\nintervall = "5m"\nurl = "x.xml"\n')
        run = reload_command(config)
        assert run.returncode == 2 and "intervall: unknown key" in run.stderr and "not reloaded" in run.stderr
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda: "the new configuration is refused" in daemon.log(), "the refusal")
        assert "config.toml:" in daemon.log() and "intervall: unknown key" in daemon.log()
        assert daemon.get("/healthz")[0] == 200

        # a removed channel stops taking posts; the others carry on (`siar reload` finds the pid)
        config.write_text(config_text(port, ["a", "b"], {"c1": ["a", "b"]}))
        run = reload_command(config)
        assert run.returncode == 0 and "asked the daemon" in run.stdout
        daemon.wait_for(lambda: "channels removed: c2" in daemon.log(), "the removal")
        (daemon_dir / "b.xml").write_bytes(rss(items("b", 3)))
        daemon.wait_for(lambda: daemon.output().count("b story 2") >= 1, "the new story on c1", 40)
        _, body = daemon.get("/metrics")
        reloads = {
            tuple(s.labels.items()): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
            if s.name == "siar_reloads_total"
        }
        assert reloads[(("result", "applied"),)] == 2 and reloads[(("result", "rejected"),)] == 1
    finally:
        code = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.log()
    output = daemon.output()
    # every story once per channel that wanted it: a 3, b 2 (+1 later) on c1, b 2 on c2
    assert output.count("a story 0") == 1 and output.count("b story 0") == 2
    assert output.count("b story 2") == 1  # only c1 (c2 was removed before it appeared)


def test_pause_and_resume_from_the_cli_survive_a_restart(daemon_dir: Path) -> None:
    (daemon_dir / "a.xml").write_bytes(rss(items("a", 2)))
    config = daemon_dir / "config.toml"
    config.write_text(
        config_text(free_port(), ["a"], {"c1": ["a"]}).replace(
            "[metrics]\nlisten", '[metrics]\nlisten = ""\n#'
        )
    )

    def siar(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "main.py"), *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=daemon_dir,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        )

    paused = siar("pause", "c1")
    assert paused.returncode == 0 and "paused" in paused.stdout
    assert siar("pause", "c1").returncode == 1  # already
    assert "no channel is named 'x'" in siar("pause", "x").stderr
    held = siar("once")
    assert "a story" not in held.stdout
    status = json.loads(siar("status", "--json").stdout)
    assert status["channels"]["c1"]["pending"] == 2
    assert siar("once").stdout.count("a story") == 0  # still paused after a "restart"
    assert siar("resume", "c1").returncode == 0
    assert siar("once").stdout.count("a story") == 2


async def test_readiness_names_the_feed_that_stopped_succeeding(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        textwrap.dedent("""
        [[feeds]]
        name = "quiet"
        url = "a.xml"
        interval = "5m"
    """)
    )
    config = load_config(tmp_path / "config.toml")
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    await store.migrate()
    clock = Clock()
    health = DaemonHealth(lambda: config, store, clock)
    endpoints = HealthEndpoints(Metrics(["quiet"], []), Heartbeat(), health, clock=clock)
    try:
        assert (await endpoints._readiness())["feeds"] == "ok"  # within its first 3 intervals
        clock.advance(16 * 60)
        await store.feeds.save(
            FeedState(
                "quiet", "a.xml", failures=4, last_status=404, last_error="HTTP 404 Not Found from a.xml"
            )
        )
        checks = await endpoints._readiness()
        assert checks["store"] == "ok" and checks["feeds"].startswith("feed quiet: no successful poll")
        assert "HTTP 404" in checks["feeds"]
        await store.feeds.save(
            FeedState(
                "quiet",
                "a.xml",
                failures=1,
                last_status=429,
                next_poll_at=clock.now + timedelta(hours=1),
                last_error="HTTP 429 Too Many Requests",
            )
        )
        assert (await endpoints._readiness())["feeds"] == "ok"  # waiting, as its server asked
    finally:
        await store.close()
