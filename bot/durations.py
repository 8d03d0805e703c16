"""Durations and rates as operators write them in config.toml: "90s", "5m", "2h", "1d", "20/min"."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

MAX_SECONDS = 366 * 86400
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds for "90s", "5m", "1h30m", "2d" or a bare number of seconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like "90s", "5m" or "2h"')
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0 or value > MAX_SECONDS:
            raise ValueError(f"{value!r} is not a usable duration (0 to {MAX_SECONDS // 86400} days)")
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration like "90s", "5m" or "2h"')
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos and text[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text) or not _PART.match(text):
        raise ValueError(f'{value!r} is not a duration; write it like "90s", "5m", "2h" or "1d"')
    if total > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than {MAX_SECONDS // 86400} days")
    return total


def parse_rate(value: str) -> tuple[int, float]:
    """(count, period seconds) for "20/min", "30/s", "1/5s"; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\S+)\s*", value)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f'{value!r} is not a rate; write it like "30/s", "20/min" or "1/5s"')
    period = match.group(2)
    seconds = parse_duration(period if period[0].isdigit() else "1" + period)
    if seconds <= 0:
        raise ValueError(f"{value!r}: the period must be longer than zero")
    return int(match.group(1)), seconds


def _validate_rate(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError('expected a rate like "20/min"')
    parse_rate(value)
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Rate = Annotated[str, BeforeValidator(_validate_rate)]
