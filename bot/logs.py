"""Logging set-up: readable lines by default, JSON lines for machines, secrets always masked."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime


class RedactSecrets(logging.Filter):
    """Replaces every configured secret value in a record's message with '***'."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            message = message.replace(secret, "***")
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, "***")
        record.msg, record.args = message, None
        return True


@dataclass(slots=True)
class _Run:
    """One line's count in its current window."""

    start: float
    example: logging.LogRecord
    seen: int = 1
    held: int = 0


class RepeatLimiter(logging.Filter):
    """Lets the same line (logger, level and message template) through at most `limit` times per
    `window` seconds; the rest are counted and reported by one "repeated K times" line.

    The key is the unformatted template, so a flood of "closed a connection from %s" with a new
    address each time is one key. The summary goes to `sink` (the handler's `handle`) as soon
    as any record arrives after the window, so a flood that stops is still reported.
    """

    SUMMARY = "siar_repeat_summary"

    def __init__(
        self,
        sink: Callable[[logging.LogRecord], object],
        limit: int = 20,
        window: float = 60.0,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.sink, self.limit, self.window, self.max_keys = sink, limit, window, max_keys
        self.clock = clock
        self._runs: dict[tuple[str, int, str], _Run] = {}
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, self.SUMMARY, False):
            return True
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (record.name, record.levelno, str(record.msg))
        run = self._runs.get(key)
        if run is None or now - run.start >= self.window:
            if run is not None:
                self._report(key, run)
            if run is None and len(self._runs) >= self.max_keys:  # oldest first: dicts keep order
                old = next(iter(self._runs))
                self._report(old, self._runs.pop(old))
            self._runs[key] = _Run(now, record)
            return True
        run.seen += 1
        if run.seen <= self.limit:
            return True
        run.held += 1
        return False

    def _sweep(self, now: float) -> None:
        """Report and forget every line whose window is over (at most once a second)."""
        self._next_sweep = now + 1.0
        for key, run in list(self._runs.items()):
            if now - run.start >= self.window:
                del self._runs[key]
                self._report(key, run)

    def _report(self, key: tuple[str, int, str], run: _Run) -> None:
        if not run.held:
            return
        summary = logging.makeLogRecord(
            {
                "name": key[0],
                "levelno": key[1],
                "levelname": logging.getLevelName(key[1]),
                "msg": "… %r repeated %d more times in %.0f s (not shown)",
                "args": (key[2], run.held, self.window),
                self.SUMMARY: True,
                "pathname": run.example.pathname,
                "lineno": run.example.lineno,
                "module": run.example.module,
                "funcName": run.example.funcName,
            }
        )
        self.sink(summary)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            data["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Route all logging to stderr in the chosen format, masking `secrets`."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    # First: it keys on the unformatted template, which RedactSecrets replaces by the text.
    handler.addFilter(RepeatLimiter(handler.handle))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "apscheduler", "alembic", "aiosqlite", "telegram"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
