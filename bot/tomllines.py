"""Find the line of a key path in TOML text, so that config errors can say where to look.

tomllib keeps no positions, so this follows table headers and `key =` lines. It understands the
shapes config.toml uses (tables, arrays of tables, plain keys); for anything fancier it answers
with the nearest enclosing header, or None.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")


def _split(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)]


def locate(text: str, key: tuple[str | int, ...]) -> int | None:
    """1-based line of `key` (e.g. ("feeds", 0, "interval")) in `text`, or None if not found."""
    table: list[str | int] = []
    counts: dict[tuple[str, ...], int] = {}
    best: int | None = None
    best_len = -1
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = _split(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(tuple(names), -1) + 1
                counts[tuple(names)] = index
                table = [*names, index]
            else:
                table = list(names)
            candidate: list[str | int] = table
        else:
            m = _KEY.match(line)
            if not m:
                continue
            candidate = [*table, m.group(1).strip("\"'")]
        n = len(candidate)
        if tuple(candidate) == tuple(key[:n]) and n > best_len:
            best, best_len = number, n
    return best
