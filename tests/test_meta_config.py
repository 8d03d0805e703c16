"""The Meta channels as config.toml ships them (commented out): uncommented, they load, `check`
passes, `preview --json` shows the card's public URL and writes the cards, and the seed story
goes through every new channel to the strict fake."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app import channel_context, make_channels
from bot.config import Config, load_config
from bot.preview import check
from tests.fake_graph import PAGE_TOKEN, THREADS_TOKEN, USER_TOKEN
from tests.meta_world import free_port, jpeg, seed_story, world

ROOT = Path(__file__).parent.parent
META_BLOCK = "# Facebook Page, Instagram and Threads (Meta's Graph APIs)"
ENV = {"FB_PAGE_TOKEN": PAGE_TOKEN, "IG_ACCESS_TOKEN": USER_TOKEN, "THREADS_ACCESS_TOKEN": THREADS_TOKEN}
FEED = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>t</title><link>https://www.medcom.id</link>
<item><title>Pemerintah Resmikan Jalur Kereta Cepat Baru untuk Mengurangi Kemacetan di Jabodetabek</title>
<link>https://www.medcom.id/nasional/a/kereta-cepat</link><guid>kereta-1</guid>
<description>Jalur baru ini diharapkan memangkas waktu tempuh.</description>
<category>Nasional</category><pubDate>Sun, 29 Nov 2026 08:00:00 +0700</pubDate></item>
</channel></rss>"""


def uncommented(port: int, base: dict[str, str] | None = None) -> str:
    """config.toml with its [cards] and Meta examples switched on, [http] on `port` of
    127.0.0.1, and the API bases from `base`."""
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    head, found, block = text.partition(META_BLOCK)
    assert found, "config.toml lost its Meta examples"
    block = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", block)
    cards = re.search(r"(?m)^# \[cards\]\n(?:# [a-z_]+ = .*\n)+", head)
    assert cards, "config.toml lost its [cards] example"
    head = head.replace(cards.group(0), re.sub(r"(?m)^# ", "", cards.group(0)))
    text = head + found + block
    text = text.replace('logo = "logo-white.png"', 'logo = ""')
    text = re.sub(r'(?m)^listen = "127\.0\.0\.1:8080"', f'listen = "127.0.0.1:{port}"', text)
    text = re.sub(
        r'(?m)^public_url = "https://www\.medcom\.id/"', f'public_url = "http://127.0.0.1:{port}/"', text
    )
    for kind, url in (base or {}).items():
        text = text.replace(f'type = "{kind}"\n', f'type = "{kind}"\napi_base_url = "{url}"\n')
    return text


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_shipped_config_keeps_the_examples_commented_and_checks(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    config = load_config(tmp_path / "config.toml")
    assert not {"facebook", "instagram", "threads"} & {c.type for c in config.channels.values()}
    assert check(config) == 0


def test_uncommented_examples_load_and_check(tmp_path: Path, env: None) -> None:
    config = load(tmp_path, uncommented(free_port()))
    assert {n: c.type for n, c in config.channels.items() if n in ("facebook", "instagram", "threads")} == {
        "facebook": "facebook",
        "instagram": "instagram",
        "threads": "threads",
    }
    assert config.channels["instagram"].account_id == "17841405822304914"  # type: ignore[attr-defined]
    channels, unavailable = make_channels(config)
    assert not {"facebook", "instagram", "threads"} & set(unavailable)
    assert {"facebook", "instagram", "threads"} <= set(channels)
    assert check(config) == 0


def test_missing_tokens_disable_only_those_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    config = load(tmp_path, uncommented(free_port()))
    assert {"facebook", "instagram", "threads"} <= set(config.disabled)
    assert check(config) == 0


@pytest.mark.e2e  # a siar subprocess
def test_preview_json_shows_the_card_url_and_writes_the_cards(tmp_path: Path, env: None) -> None:
    port = free_port()
    (tmp_path / "config.toml").write_text(uncommented(port), encoding="utf-8")
    (tmp_path / "feed.xml").write_text(FEED, encoding="utf-8")
    command = [sys.executable, str(ROOT / "main.py"), "preview", "--config", str(tmp_path / "config.toml")]
    result = subprocess.run(
        [*command, "--file", str(tmp_path / "feed.xml"), "--json", "--limit", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    posts = {p["channel"]: p for p in json.loads(result.stdout)}
    card = posts["instagram"]["media"][0]
    assert card.startswith(f"http://127.0.0.1:{port}/cards/") and card.endswith("-1080x1350.jpg")
    written = tmp_path / "cards" / card.rsplit("/", 1)[1]
    assert written.is_file() and written.read_bytes()[:3] == b"\xff\xd8\xff"
    assert str(written) in result.stderr
    assert posts["threads"]["media"] == [] and posts["threads"]["extra"]["topic_tag"] == "Nasional"
    assert posts["facebook"]["extra"]["link"] == "https://www.medcom.id/nasional/a/kereta-cepat"


async def test_seed_story_through_every_new_channel(tmp_path: Path, env: None) -> None:
    async with world(tmp_path) as w:
        port = int(w.http.listen.rsplit(":", 1)[1])
        base = {"facebook": w.meta.graph_url, "instagram": w.meta.graph_url, "threads": w.meta.threads_url}
        config = load(tmp_path, uncommented(port, base))
        context = channel_context(config, clock=w.now)
        channels, _ = make_channels(config, context)
        story = dataclasses.replace(seed_story(), image=w.meta.serve_image("seed.jpg", jpeg(1280, 720)))
        receipts = {}
        for name in ("facebook", "instagram", "threads"):
            channel = channels[name]
            w.channels.append(channel)
            await channel.start()
            post = channel.render(story)
            assert post.length.used <= post.length.limit
            receipts[name] = await channel.send(post, idempotency_key=name)
        assert receipts["facebook"].remote_id == w.meta.page.posts[0].id
        assert receipts["instagram"].remote_id == w.meta.instagram.published[0].id
        assert receipts["threads"].remote_id == w.meta.threads.published[0].id
        caption = w.meta.instagram.published[0].text
        assert caption.startswith(story.title) and caption.endswith("link di bio")
        assert "#VladimirPutin" in w.meta.page.posts[0].message


def test_a_changed_cards_section_recreates_the_channels_on_reload(tmp_path: Path, env: None) -> None:
    from bot.reload import plan

    text = uncommented(free_port())
    old = load(tmp_path, text)
    new = load(tmp_path, text.replace('background = "#0d2140"', 'background = "#202020"'))
    assert old.sections["cards"] != new.sections["cards"]
    assert {"facebook", "instagram", "threads"} <= set(plan(old, new).channels_changed)
    assert plan(old, load(tmp_path, text)).channels_changed == []
