"""Threads' length: one per user-perceived character, an emoji counted as its UTF-8 bytes."""

from __future__ import annotations

import pytest

from bot.counting import count_threads
from tests.fake_graph_rules import threads_length


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a" * 500, 500),
        ("Halo dunia", 10),
        ("日本語", 3),  # CJK: one each (only emoji count bytes)
        ("e\u0301", 1),  # e + combining accent: one grapheme
        ("😀", 4),
        ("❤️", 6),  # U+2764 U+FE0F
        ("👍🏽", 8),  # with a skin-tone modifier
        ("🇮🇩", 8),  # a flag: two regional indicators
        ("1️⃣", 7),  # keycap: 1 + FE0F + 20E3
        ("👨‍👩‍👧‍👦", 25),  # ZWJ family
        ("Gempa 😀 hari ini", 19),
        ("©", 2),  # Extended_Pictographic: counted as an emoji (the conservative reading)
    ],
)
def test_count_threads(text: str, expected: int) -> None:
    assert count_threads(text) == expected


def test_the_fake_counts_the_same_way() -> None:
    for text in ("a" * 499 + "😀", "🇮🇩 Indonesia", "e\u0301" * 10, "👨‍👩‍👧‍👦" * 20):
        assert threads_length(text) == count_threads(text)


def test_five_hundred_is_reachable_with_emoji() -> None:
    assert count_threads("😀" * 125) == 500
    assert count_threads("😀" * 125 + "a") == 501
