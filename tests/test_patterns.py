"""Operator regexes run in linear time (RE2); what RE2 cannot run is a config error naming the key."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from bot.cleaning import BUILTIN_DROP_PARAGRAPHS, BUILTIN_STRIP, CleaningRules, clean_lead
from bot.config import Config, ConfigError
from bot.filters import Filters, rejection
from bot.patterns import SUBJECT_MAX, IgnoreCasePattern, Pattern, PatternError, compile_re2
from bot.types import Story

NOW = datetime(2020, 10, 9, 7, 0, tzinfo=UTC)
EVIL = "(a+)+$"  # exponential for a backtracking engine on "aaaa…!"


def cpu_seconds(call: Callable[[], object]) -> float:
    started = time.process_time()
    call()
    return time.process_time() - started


def test_a_catastrophic_include_url_costs_microseconds_not_seconds() -> None:
    story = Story(uid="1", feed="f", url="https://e.example/" + "a" * 25 + "!", title="t")
    filters = Filters(include_url=EVIL)  # type: ignore[arg-type]
    assert cpu_seconds(lambda: rejection(story, filters, NOW)) < 0.1  # Python's re: about 1.6 s
    assert rejection(story, filters, NOW) == ("include_url", f"link does not match {EVIL!r}")


def test_a_catastrophic_cleaning_rule_costs_microseconds_not_seconds() -> None:
    rules = CleaningRules(drop_paragraphs=[EVIL], strip_patterns=[EVIL])  # type: ignore[list-item]
    paragraphs = ["a" * 25 + "!"] * 20
    assert cpu_seconds(lambda: clean_lead(paragraphs, rules)) < 0.1
    assert clean_lead(paragraphs, rules).startswith("a" * 25 + "!")


def test_the_built_in_cleaning_rules_compile_under_re2() -> None:
    for rule in BUILTIN_DROP_PARAGRAPHS:
        compile_re2(rule, ignore_case=True)
    for rule in BUILTIN_STRIP:
        compile_re2(rule)


@pytest.mark.parametrize(
    ("source", "feature"),
    [
        (r"(?<=/)internasional", "a look-behind"),
        (r"(?<!m\.)medcom", "a negative look-behind"),
        (r"berita(?= )", "a look-ahead"),
        (r"^(?!iklan)", "a negative look-ahead"),
        (r"(\w)\1", "a backreference"),
        (r"(?P<x>a)(?P=x)", "a named backreference"),
        (r"a*+b", "a possessive quantifier"),
        (r"(?>ab|a)c", "an atomic group"),
        (r"(a)?(?(1)b|c)", "a conditional group"),
        (r"juga\Z", r"\Z (write \z"),
        (r"x{1001}", "a repetition count above 1000"),
    ],
)
def test_what_re2_lacks_is_named(source: str, feature: str) -> None:
    with pytest.raises(PatternError) as err:
        Pattern(source)
    assert str(err.value).startswith(f"uses {feature}")
    assert "the linear-time engine (RE2) does not support" in str(err.value)
    assert repr(source) in str(err.value)


def test_an_invalid_pattern_is_called_invalid() -> None:
    with pytest.raises(PatternError, match=r"'\(unclosed' is not a valid regular expression"):
        Pattern("(unclosed")


def test_case_option_and_the_subject_cap() -> None:
    assert Pattern("/Internasional/").search("https://e.example/Internasional/1")
    assert not Pattern("/internasional/").search("https://e.example/Internasional/1")
    assert IgnoreCasePattern("^baca juga").search("BACA JUGA: x")
    assert not Pattern("needle").search("a" * SUBJECT_MAX + "needle")  # only the head is searched
    long_text = "(FJR) " + "x" * SUBJECT_MAX + " (FJR)"
    assert Pattern(r"\(FJR\)").sub("", long_text) == " " + "x" * SUBJECT_MAX + " (FJR)"


def test_patterns_load_from_and_dump_to_strings() -> None:
    rules = CleaningRules.model_validate({"drop_paragraphs": ["^simak"], "strip_patterns": [r"\s*\(\w+\)$"]})
    assert rules.drop_paragraphs == [IgnoreCasePattern("^simak")]
    assert rules.model_dump()["drop_paragraphs"] == ["^simak"]
    assert Filters.model_validate({"include_url": "/x/"}).model_dump()["include_url"] == "/x/"


def test_unsupported_cleaning_rule_is_a_config_error_with_line_and_key(
    make_config: Callable[[str], Config],
) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("""
            [site]
            name = "x"

            [cleaning]
            lead_max_chars = 500
            drop_paragraphs = ["(?<=Baca) juga", "^fine$"]
            strip_patterns = ["ok", "(a)\\\\1"]
        """)
    assert len(err.value.problems) == 2
    drop, strip = err.value.problems
    assert drop.endswith(
        "config.toml:7: cleaning.drop_paragraphs[0]: uses a look-behind, which the "
        "linear-time engine (RE2) does not support: '(?<=Baca) juga' "
        "(invalid perl operator: (?<=)"
    )
    assert "config.toml:8: cleaning.strip_patterns[1]: uses a backreference" in strip


def test_unsupported_filter_patterns_are_config_errors_naming_feed_and_channel(
    make_config: Callable[[str], Config],
) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("""
            [[feeds]]
            name = "a"
            url = "https://example.com/feed"
            include_url = "/(?!ekonomi)"

            [channels.console]
            type = "console"
            include_url = "a++"
        """)
    text = str(err.value)
    assert len(err.value.problems) == 2
    assert "config.toml:5: feeds[0].include_url: uses a negative look-ahead" in text
    assert "config.toml:9: channels.console.include_url: uses a possessive quantifier" in text
