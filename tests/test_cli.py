"""The command line as operators meet it: real processes, the sample feed, a local server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE
from tests.feedserver import FeedServer, Route

ROOT = Path(__file__).parent.parent
INTL_TITLES = [
    "Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian",
    "Sidang Umum PBB Bahas Krisis Pangan Global",
    'Uji "Escape" Tebal & Tautan',
]


def siar(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
    )


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The offline example config, copied with its sample feed into a temporary folder."""
    shutil.copy(ROOT / "examples" / "config.toml", tmp_path / "config.toml")
    shutil.copy(SAMPLE, tmp_path / "medcom-internasional.xml")
    return tmp_path / "config.toml"


def test_once_twice_prints_international_stories_once(example: Path) -> None:
    first = siar("once", "--config", str(example))
    assert first.returncode == 0, first.stderr
    for title in INTL_TITLES:
        assert title in first.stdout
    assert "Harga Cabai" not in first.stdout
    assert "#VladimirPutin #Rusia #KonflikArmeniaAzerbaijan" in first.stdout
    second = siar("once", "--config", str(example))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == ""


def test_config_from_environment_and_main_default(example: Path) -> None:
    result = siar("check", env={"SIAR_CONFIG": str(example)})
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_check_exits_2_with_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[feeds]]\nname = "a"\nurl = "https://e.example/rss"\nfirst_run = "sometimes"\n')
    result = siar("check", "--config", str(bad))
    assert result.returncode == 2
    assert "bad.toml:4: feeds[0].first_run" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = siar("status", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml" in result.stderr


def test_preview_json_shape_and_nothing_stored(example: Path) -> None:
    result = siar("preview", "--config", str(example), "--json", "--limit", "2")
    assert result.returncode == 0, result.stderr
    posts = json.loads(result.stdout)
    assert [p["story"]["title"] for p in posts] == INTL_TITLES[:2]
    post = posts[0]
    assert post["channel"] == "console" and post["type"] == "console"
    assert set(post["story"]) >= {"id", "url", "title", "tags", "published", "image"}
    assert post["story"]["tags"] == ["vladimir putin", "rusia", "konflik armenia-azerbaijan"]
    assert post["story"]["published"] == "2020-10-09T06:53:00+00:00"
    assert post["parse_mode"] is None and post["facets"] == []
    assert {"text": "Baca selengkapnya", "url": post["story"]["url"]} in post["buttons"]
    assert post["media"] == [post["story"]["image"]]
    assert post["length"]["unit"] == "graphemes" and 0 < post["length"]["used"] <= post["length"]["limit"]
    assert not (example.parent / "example.db").exists()


def test_preview_of_a_file_with_feed_filters(example: Path) -> None:
    result = siar(
        "preview",
        "--config",
        str(example),
        "--json",
        "--feed",
        "medcom-internasional",
        "--file",
        str(SAMPLE),
        "--limit",
        "10",
    )
    titles = [p["story"]["title"] for p in json.loads(result.stdout)]
    assert len(titles) == 3 and not any("Cabai" in t for t in titles)
    unfiltered = siar("preview", "--config", str(example), "--json", "--file", str(SAMPLE), "--limit", "10")
    assert len(json.loads(unfiltered.stdout)) == 4


def test_status_and_why(example: Path) -> None:
    siar("once", "--config", str(example))
    status = siar("status", "--config", str(example), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    console = report["channels"]["console"]
    assert {k: console[k] for k in ("pending", "sent", "failed", "uncertain")} == {
        "pending": 0,
        "sent": 3,
        "failed": 0,
        "uncertain": 0,
    }
    (feed,) = report["feeds"]
    assert feed["name"] == "medcom-internasional" and feed["failures"] == 0 and feed["last_success"]
    assert report["recent_failures"] == []

    why = siar(
        "why",
        "--config",
        str(example),
        "--json",
        "https://www.medcom.id/ekonomi/bisnis/Rb7Tq1xZ-harga-cabai-rawit-naik?utm_source=x",
    )
    (story,) = json.loads(why.stdout)
    (decision,) = story["decisions"]
    assert decision["decision"] == "filtered"
    assert decision["rule"] == "feeds.medcom-internasional.include_categories"
    # another form of the same link (m. host, http, trailing slash) names the same story
    other_form = siar(
        "why",
        "--config",
        str(example),
        "--json",
        "http://m.medcom.id/ekonomi/bisnis/Rb7Tq1xZ-harga-cabai-rawit-naik/",
    )
    assert [s["story"]["id"] for s in json.loads(other_form.stdout)] == [story["story"]["id"]]
    readable = siar("why", "--config", str(example), "medcom-4KZ9mA2b")
    assert "queued" in readable.stdout and "sent" in readable.stdout
    assert siar("why", "--config", str(example), "https://nowhere.example/").returncode == 1


def test_once_exits_nonzero_when_a_feed_fails(example: Path) -> None:
    text = example.read_text().replace('url = "medcom-internasional.xml"', 'url = "missing.xml"')
    example.write_text(text)
    result = siar("once", "--config", str(example))
    assert result.returncode == 1
    assert "missing.xml" in result.stderr


def test_json_logs_and_secrets_never_logged(tmp_path: Path, feed_server: FeedServer) -> None:
    secret = "tok-123456789-SECRET"
    feed_server.routes[f"/rss?key={secret}"] = Route(status=500)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[[feeds]]\nname = "a"\nurl = "{feed_server.url("/rss")}?key=${{SIAR_T}}"\n'
        '[channels.console]\ntype = "console"\n'
    )
    result = siar("once", "--config", str(config), "--log-format", "json", env={"SIAR_T": secret})
    assert result.returncode == 1
    assert feed_server.hits(f"/rss?key={secret}") == 1  # the real value was used…
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("HTTP 500" in line["message"] and "key=***" in line["message"] for line in lines)
    assert secret not in result.stderr and secret not in result.stdout  # …and never shown
    status = siar("status", "--config", str(config), "--json", env={"SIAR_T": secret})
    assert status.returncode == 0 and "key=***" in status.stdout
    assert secret not in status.stdout + status.stderr  # not in the stored error nor the URL
    check = siar("check", "--config", str(config), env={"SIAR_T": secret})
    assert secret not in check.stdout + check.stderr


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited early: {path.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}: {path.read_text()}")


def test_daemon_runs_refuses_a_second_and_stops_on_sigterm(example: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "run", "--config", str(example)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            cwd=tmp_path,
        )
        try:
            _wait_for(log_path, "channel console: sent", proc)
            second = siar("run", "--config", str(example), timeout=30)
            assert second.returncode == 3
            assert "another siar daemon" in second.stderr and str(proc.pid) in second.stderr
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log_path.read_text()
    assert "siar stopped" in log_path.read_text()
    assert "Putin Ajak Menlu" in out
    status = json.loads(siar("status", "--config", str(example), "--json").stdout)
    assert status["channels"]["console"]["sent"] == 3


def test_a_broken_template_fails_check_but_not_the_daemon(example: Path) -> None:
    example.write_text(
        example.read_text() + '\n[channels.broken]\ntype = "console"\n'
        'template = """{{ title }}\n{% if %}"""\n'
    )
    result = siar("check", "--config", str(example))
    assert result.returncode == 2
    assert "channel 'broken': template error at line 2" in result.stderr
    once = siar("once", "--config", str(example))
    assert once.returncode == 0, once.stderr
    assert "Putin Ajak Menlu" in once.stdout  # the console channel still posts
    assert "channel broken is disabled" in once.stderr


def test_console_prints_markup_like_categories_as_text(tmp_path: Path) -> None:
    feed = tmp_path / "f.xml"
    feed.write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><item>'
        "<title>[bold]Not bold[/]</title><link>https://e.example/1</link>"
        "<category>[/]</category></item></channel></rss>"
    )
    config = tmp_path / "c.toml"
    config.write_text(
        '[[feeds]]\nname = "a"\nurl = "f.xml"\nfirst_run = "all"\n[channels.console]\ntype = "console"\n'
    )
    result = siar("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "[bold]Not bold[/]" in result.stdout and "console · [/]" in result.stdout


def test_preview_breaking_and_digest(example: Path) -> None:
    text = example.read_text() + '\n[[priority]]\ntitle_pattern = "^Putin"\nlabel = "🔴 TERKINI"\n'
    example.write_text(text)
    plain = json.loads(siar("preview", "--config", str(example), "--json").stdout)
    assert [p["story"]["breaking"] for p in plain] == ["🔴 TERKINI", "", ""]  # only the rule's match
    forced = siar("preview", "--config", str(example), "--json", "--breaking")
    assert forced.returncode == 0, forced.stderr
    assert [p["story"]["breaking"] for p in json.loads(forced.stdout)] == ["🔴 TERKINI"] * 3
    digest = siar("preview", "--config", str(example), "--json", "--digest")
    assert digest.returncode == 0, digest.stderr
    (post,) = json.loads(digest.stdout)  # one roundup per channel
    assert post["channel"] == "console" and post["digest"]["title"] == "Rangkuman berita"
    titles = [s["title"] for s in post["digest"]["stories"]]
    assert len(titles) == 3 and all(t.startswith(e) for t, e in zip(titles, INTL_TITLES, strict=True))
    assert all(title in post["text"] for title in INTL_TITLES)
    readable = siar("preview", "--config", str(example), "--digest")
    assert "digest: Rangkuman berita" in readable.stdout


def test_retract_a_story(example: Path) -> None:
    siar("once", "--config", str(example))
    url = "medcom-4KZ9mA2b"  # the feed's id of the Putin story
    (story,) = json.loads(siar("why", "--config", str(example), "--json", url).stdout)
    result = siar("retract", "--config", str(example), str(story["story"]["id"]), "--reason", "salah")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"retracted: {INTL_TITLES[0]}")
    assert "\n  console: " in result.stdout  # what happened on the channel, deleted or why not
    (after,) = json.loads(siar("why", "--config", str(example), "--json", url).stdout)
    retracted = [d for d in after["decisions"] if d["decision"] == "retracted" and d["channel"] is None]
    assert retracted and "salah" in retracted[0]["detail"]
    # the feed still carries it: never posted again
    again = siar("once", "--config", str(example))
    assert again.returncode == 0, again.stderr
    assert INTL_TITLES[0] not in again.stdout
    missing = siar("retract", "--config", str(example), "https://nowhere.example/x")
    assert missing.returncode == 1 and "no story matches" in missing.stderr
    assert siar("retract", "--config", str(example)).returncode == 2  # usage
