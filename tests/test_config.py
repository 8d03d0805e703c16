from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bot.config import Config, ConfigError, load_config
from bot.durations import parse_duration, parse_rate

ROOT = Path(__file__).parent.parent


def test_shipped_config_is_valid_and_describes_the_first_user() -> None:
    config = load_config(ROOT / "config.toml")
    feed = config.feeds[0]
    assert "medcom.id" in feed.url
    assert [c.lower() for c in feed.include_categories] == ["internasional"]
    assert feed.include_url is not None and feed.include_url.source == "/internasional/"
    assert "Ikuti media sosial medcom.id" in config.cta.follow_text
    assert "aktifkan notifikasi" in config.cta.notify_text
    assert "console" in config.active_channels()


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "examples" / "config.toml")
    assert config.feeds[0].first_run == "all"


def test_typo_is_an_error_with_key_path_and_line(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("""
            [[feeds]]
            name = "a"
            url = "https://example.com/feed"
            intervall = "5m"
        """)
    (problem,) = err.value.problems
    assert "config.toml:5:" in problem
    assert "feeds[0].intervall" in problem
    assert "unknown key" in problem


def test_bad_duration_names_key(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("""
            [[feeds]]
            name = "a"
            url = "https://example.com/feed"

            [[feeds]]
            name = "b"
            url = "https://example.com/feed2"
            interval = "5 minutes please"
        """)
    (problem,) = err.value.problems
    assert ":9:" in problem and "feeds[1].interval" in problem and "duration" in problem


def test_typo_in_channel_names_channel_key(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("""
            [channels.console]
            type = "console"
            widht = 80
        """)
    assert "channels.console.widht" in str(err.value)
    assert ":4:" in str(err.value)


def test_unknown_channel_type_lists_known_ones(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError, match=r"channels\.x\.type: unknown channel type 'twiter'.*console"):
        make_config("""
            [channels.x]
            type = "twiter"
        """)


def test_missing_secret_disables_only_that_channel(
    make_config: Callable[[str], Config], fake_type: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIAR_TEST_TOKEN", raising=False)
    config = make_config("""
        [channels.social]
        type = "fake"
        token = "${SIAR_TEST_TOKEN}"

        [channels.console]
        type = "console"
    """)
    assert "SIAR_TEST_TOKEN" in config.disabled["social"]
    assert list(config.active_channels()) == ["console"]


def test_empty_secret_also_disables(make_config: Callable[[str], Config], fake_type: None) -> None:
    config = make_config("""
        [channels.social]
        type = "fake"
    """)
    assert "channels.social.token" in config.disabled["social"]


def test_env_and_file_expansion(
    make_config: Callable[[str], Config], fake_type: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "token.txt"
    secret.write_text("s3cr3t-from-file\n")
    monkeypatch.setenv("SIAR_FEED_HOST", "news.example.org")
    config = make_config(f"""
        [[feeds]]
        name = "a"
        url = "https://${{SIAR_FEED_HOST}}/rss"
        interval = "${{SIAR_UNSET_INTERVAL:-90s}}"

        [channels.social]
        type = "fake"
        token = "${{file:{secret}}}"
    """)
    assert config.feeds[0].url == "https://news.example.org/rss"
    assert config.feeds[0].interval == 90
    assert config.active_channels()["social"].token == "s3cr3t-from-file"  # type: ignore[attr-defined]
    assert "s3cr3t-from-file" in config.secrets


def test_unset_env_outside_channels_is_an_error(
    make_config: Callable[[str], Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIAR_NOPE", raising=False)
    with pytest.raises(ConfigError, match=r"store\.url: environment variable SIAR_NOPE is not set"):
        make_config("""
            [store]
            url = "${SIAR_NOPE}"
        """)


def test_cross_checks(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("""
            [[feeds]]
            name = "a"
            url = "https://example.com/1"
            first_run = "newest"
            include_url = "(unclosed"

            [[feeds]]
            name = "a"
            url = "ftp://example.com/2"

            [channels.console]
            type = "console"
            feeds = ["b"]
        """)
    text = str(err.value)
    assert "feeds[0].first_run" in text
    assert "feeds[0].include_url" in text and "regular expression" in text
    assert "feeds[1].url" in text
    assert "used twice" in text
    assert "channels.console.feeds[0]: no feed is named 'b'" in text


def test_invalid_toml_is_reported_with_position(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        make_config("""
            [store
        """)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("250ms", 0.25),
        (15, 15),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5 minutes", "-5s", "5x", True, "5s garbage"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "rate"), [("30/s", (30, 1)), ("20/min", (20, 60)), ("1/5s", (1, 5))])
def test_rates(text: str, rate: tuple[int, float]) -> None:
    assert parse_rate(text) == rate


def test_rates_and_odd_durations_are_checked(make_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("""
            [[feeds]]
            name = "a"
            url = "https://e.example/rss"
            interval = nan

            [channels.console]
            type = "console"
            rate_limit = "lots"
        """)
    text = str(err.value)
    assert "feeds[0].interval" in text and "channels.console.rate_limit" in text


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[site]\nname = "Berita Ñ"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)
