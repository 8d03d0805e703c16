"""The `[[feeds]]` tables of config.toml as written: read them without expanding `${…}`, add new
ones without changing any other byte of the file, and replace the file atomically.

The new tables go right after the last `[[feeds]]` table's last key (before the comments that
introduce the next section), else at the end of the file. tomlkit writes each value (so quoting
and escapes are TOML's); the splice is textual because tomlkit would attach the next section's
leading comments to the feeds array and move them. Every edit is verified: the new document
must parse to the old data plus exactly the new tables, and must load as a configuration.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import tomllib
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import tomlkit

from bot.config import ConfigError, parse_config
from bot.feed_import import ImportOptions, NewFeed

_FEEDS_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*feeds[ \t]*\]\][ \t]*(#.*)?$")
_ANY_HEADER = re.compile(r"^[ \t]*\[\[?[ \t]*[A-Za-z0-9_.\"' -]+\]\]?[ \t]*(#.*)?$")
_COMMENT_CHARS = 110


class ImportConflict(Exception):
    """The tables cannot be added: `problems` says why, one line each (nothing was written)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def configured_feeds(text: str) -> list[dict[str, Any]]:
    """The `[[feeds]]` tables of a config file's text, values as written (`${…}` unexpanded)."""
    feeds = tomllib.loads(text).get("feeds", [])
    return [f for f in feeds if isinstance(f, dict)] if isinstance(feeds, list) else []


def render_tables(
    feeds: Sequence[NewFeed], options: ImportOptions, source: str, today: date, newline: str = "\n"
) -> str:
    """The TOML text of `feeds` as `[[feeds]]` tables, each after a comment naming its origin."""
    lines = [_comment(f"Added by `siar feeds import {source}` on {today.isoformat()}.")]
    for feed in feeds:
        origin = f'"{feed.title}"' if feed.title else f"line {feed.line}"
        lines += ["", _comment(f"OPML: {origin}" + (f" ({feed.category})" if feed.category else ""))]
        lines.append("[[feeds]]")
        for key, value in table_values(feed, options).items():
            lines.append(f"{key} = {tomlkit.item(value).as_string()}")
    return newline.join(lines) + newline


def table_values(feed: NewFeed, options: ImportOptions) -> dict[str, str]:
    """The keys and values of `feed`'s table, in the order they are written."""
    values = {"name": feed.name, "url": feed.url, "first_run": options.first_run}
    if options.interval is not None:
        values["interval"] = options.interval
    if feed.section is not None:
        values["section"] = feed.section
    return values


def _comment(text: str) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return "# " + (text if len(text) <= _COMMENT_CHARS else text[: _COMMENT_CHARS - 1] + "…")


def add_tables(text: str, block: str, expected: list[dict[str, Any]], path: Path) -> str:
    """`text` with `block` (rendered tables parsing to `expected`) added; ImportConflict if that
    would change anything else or the result would not load as a configuration."""
    try:
        old = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImportConflict([f"{path}: not valid TOML: {exc}"]) from None
    if "feeds" in old and _last_feeds_header(text) is None:
        raise ImportConflict(
            [f"{path}: `feeds` is not written as [[feeds]] tables; write it so to import into it"]
        )
    offsets = [_after_last_feed(text), len(text)]
    for offset in dict.fromkeys(offsets):
        new = splice(text, offset, block)
        if _same_but_feeds(old, new, expected):
            _check_loads(new, path)
            return new
    raise ImportConflict(
        [f"{path}: could not place the new [[feeds]] tables without changing other settings"]
    )


def splice(text: str, offset: int, block: str) -> str:
    """`text` with `block` inserted at `offset` (a line start, or the end), set off by blank lines."""
    newline = "\r\n" if "\r\n" in text else "\n"
    before, after = text[:offset], text[offset:]
    if before and not before.endswith("\n"):
        before += newline
    lead = newline if before.strip() and not before.endswith(("\n\n", "\r\n\r\n")) else ""
    tail = newline if after and not after.startswith(("\n", "\r\n")) else ""
    return before + lead + block + tail + after


def _last_feeds_header(lines: str | list[str]) -> int | None:
    rows = lines.splitlines(keepends=True) if isinstance(lines, str) else lines
    found = [i for i, row in enumerate(rows) if _FEEDS_HEADER.match(row.rstrip("\r\n"))]
    return found[-1] if found else None


def _after_last_feed(text: str) -> int:
    """The offset just after the last key line of the last `[[feeds]]` table, or the end."""
    rows = text.splitlines(keepends=True)
    last = _last_feeds_header(rows)
    if last is None:
        return len(text)
    end = next(
        (i for i in range(last + 1, len(rows)) if _ANY_HEADER.match(rows[i].rstrip("\r\n"))), len(rows)
    )
    while end > last + 1 and (not rows[end - 1].strip() or rows[end - 1].lstrip().startswith("#")):
        end -= 1  # blank lines and comments before the next header belong to that header
    return sum(len(row) for row in rows[:end])


def _same_but_feeds(old: dict[str, Any], new_text: str, expected: list[dict[str, Any]]) -> bool:
    try:
        new = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        return False
    old_rest = {k: v for k, v in old.items() if k != "feeds"}
    new_rest = {k: v for k, v in new.items() if k != "feeds"}
    return old_rest == new_rest and new.get("feeds") == [*old.get("feeds", []), *expected]


def _check_loads(text: str, path: Path) -> None:
    try:
        parse_config(tomllib.loads(text), text, path)
    except ConfigError as exc:
        note = "(line numbers are those of the file as it would be after the import)"
        raise ImportConflict([*exc.problems, note]) from None


def replace_file(path: Path, data: bytes, before: bytes | None) -> None:
    """Write `data` to `path` through a temporary file and a rename, keeping its mode (and owner
    when allowed). `before` is what the file held when read: if it changed since, nothing is
    written (ImportConflict). None: the file may not exist yet."""
    try:
        info: os.stat_result | None = path.stat()
    except FileNotFoundError:
        info = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if info is not None:
            os.chmod(tmp, stat.S_IMODE(info.st_mode))
            _keep_owner(tmp, info)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        if before is not None and path.read_bytes() != before:
            raise ImportConflict([f"{path}: changed while importing; nothing written, run it again"])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keep_owner(tmp: str, info: os.stat_result) -> None:
    if (info.st_uid, info.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.chown(tmp, info.st_uid, info.st_gid)
        except PermissionError:
            pass  # only root may give a file away; the new file is then the operator's own
