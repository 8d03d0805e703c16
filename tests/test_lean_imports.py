"""What a daemon imports: every channel type is known, but the platform SDKs, Pillow and the
migration tools are loaded only by what uses them (RSS: benchmarks/README.md, memory)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bot import heap

ROOT = Path(__file__).parent.parent
# Imported only where used: X/Mastodon/Bluesky/Threads counting, web push keys and encryption,
# share cards and image shrinking, the Telegram channel, migrations on a store that needs them.
HEAVY = {"twitter_text", "pkg_resources", "cryptography", "PIL", "fontTools", "telegram", "tweepy", "alembic"}


def imported_after(code: str) -> dict[str, Any]:
    script = textwrap.dedent(
        """
        import json, sys
        import bot.cli, bot.app, bot.daemon
        from bot.registry import REGISTRY
        REGISTRY.discover()
        {code}
        print(json.dumps({{
            "heavy": sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r})),
            "types": REGISTRY.known_types(),
            "broken": REGISTRY.broken,
        }}))
        """
    ).format(code=code, heavy=sorted(HEAVY))
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_knowing_every_channel_type_loads_no_platform_library() -> None:
    found = imported_after("")
    assert found["broken"] == {}
    assert {"console", "x", "mastodon", "bluesky", "telegram", "webpush", "instagram", "threads"} <= set(
        found["types"]
    )
    assert found["heavy"] == []


def test_a_lazy_name_loads_its_library_when_used() -> None:
    found = imported_after(
        "from channels.webpush import WebPushChannel, init_command\n"
        "from bot.cards import render_card\n"
        "from bot.counting import count_x\n"
        "assert count_x('a https://example.com/x') == 25"
    )
    assert {"cryptography", "PIL", "fontTools", "twitter_text"} <= set(found["heavy"])


def test_an_unknown_lazy_name_is_an_attribute_error() -> None:
    import bot.cards
    import channels.webpush

    for module in (bot.cards, channels.webpush):
        try:
            module.__getattr__("nothing_here")
        except AttributeError as exc:
            assert "nothing_here" in str(exc)
        else:
            raise AssertionError(f"{module.__name__}.nothing_here did not raise")


def test_the_arena_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIAR_MALLOC_ARENAS", raising=False)
    assert heap.arena_cap() == heap.ARENAS
    for text, cap in (("0", 0), ("4", 4), ("many", heap.ARENAS), ("-1", 0)):
        monkeypatch.setenv("SIAR_MALLOC_ARENAS", text)
        assert heap.arena_cap() == cap
    monkeypatch.setenv("SIAR_MALLOC_ARENAS", "0")
    assert heap.limit_arenas() is False  # 0: glibc's default, nothing set
    monkeypatch.setenv("SIAR_MALLOC_ARENAS", "2")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert heap.limit_arenas() is (platform.libc_ver()[0] == "glibc")  # a no-op elsewhere
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.limit_arenas() is False  # the operator's MALLOC_ARENA_MAX wins
