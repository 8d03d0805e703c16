"""The repeated-line limiter of bot/logs.py: a flood of one line becomes a few lines and a count."""

from __future__ import annotations

import io
import logging

import pytest

from bot.logs import RepeatLimiter, setup_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def handler_with_limiter(clock: Clock, limit: int = 3) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatLimiter(handler.handle, limit=limit, window=60.0, clock=clock))
    return handler, out


def record(name: str, msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_flood_of_one_template_is_limited_then_counted() -> None:
    clock = Clock()
    handler, out = handler_with_limiter(clock)
    for i in range(10):  # a new address each time: still the same line
        handler.handle(record("siar.http", "closed a connection from %s", f"10.0.0.{i}"))
    handler.handle(record("siar.feed", "feed %s failed", "a"))  # another line: its own budget
    clock.now += 61
    handler.handle(record("siar.feed", "feed %s failed", "b"))
    assert out.getvalue().splitlines() == [
        "WARNING siar.http: closed a connection from 10.0.0.0",
        "WARNING siar.http: closed a connection from 10.0.0.1",
        "WARNING siar.http: closed a connection from 10.0.0.2",
        "WARNING siar.feed: feed a failed",
        "WARNING siar.http: … 'closed a connection from %s' repeated 7 more times in 60 s (not shown)",
        "WARNING siar.feed: feed b failed",
    ]
    handler.handle(record("siar.http", "closed a connection from %s", "10.0.0.99"))
    assert out.getvalue().splitlines()[-1] == "WARNING siar.http: closed a connection from 10.0.0.99"


def test_levels_and_loggers_are_separate_lines_and_quiet_lines_are_not_summarized() -> None:
    clock = Clock()
    handler, out = handler_with_limiter(clock, limit=2)
    for _ in range(3):
        handler.handle(record("a", "same"))
        handler.handle(record("b", "same"))
        handler.handle(record("a", "same", level=logging.ERROR))
    clock.now += 61
    handler.handle(record("c", "after"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 * 3 + 3 + 1  # two of each, a summary of each, the last line
    assert sum("repeated 1 more times" in line for line in lines) == 3


def test_setup_logging_installs_it(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("INFO", "text", secrets=["s3cret-value"])
        log = logging.getLogger("siar.test")
        for i in range(100):
            log.warning("refused a request from %s with s3cret-value", f"10.0.0.{i}")
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 20
        assert "s3cret-value" not in "".join(lines) and "***" in lines[0]  # still redacted
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
