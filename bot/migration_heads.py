"""Is the store already at the newest migration? Answered without importing Alembic.

Alembic (with Mako and Pygments) is ~10 MiB of a daemon's memory that would stay loaded for
its whole life only to learn, on almost every start, that there is nothing to do. The heads
are read from the revision files the way Alembic reads them (`revision` and `down_revision`
at module level; a head is a revision no other one revises) and compared with the store's
`alembic_version` rows. Anything unusual (a file without literal ids, a missing table) answers
"unknown", and the caller runs Alembic as before: a wrong "up to date" is the one answer this
module must never give.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from pathlib import Path


class UnknownHeads(ValueError):
    """The revision files could not be read without Alembic."""


def _literal_ids(value: object) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return set(value)
    raise UnknownHeads(f"not a revision id: {value!r}")


def _assignments(path: Path) -> dict[str, object]:
    """The module-level `name = literal` (or `name: T = literal`) assignments of `path`."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise UnknownHeads(f"{path}: {exc}") from exc
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError as exc:
                raise UnknownHeads(f"{path}: {target.id} is not a literal") from exc
    return found


def revision_files(locations: Iterable[Path]) -> list[Path]:
    """The files Alembic reads as revisions: `*.py` except `__init__.py` and editor locks."""
    files: list[Path] = []
    for folder in locations:
        if not folder.is_dir():
            raise UnknownHeads(f"no such folder: {folder}")
        files += [
            p
            for p in sorted(folder.iterdir())
            if p.suffix == ".py" and p.name != "__init__.py" and not p.name.startswith(".#")
        ]
    return files


def heads(locations: Sequence[Path]) -> set[str]:
    """The newest revision of every branch under `locations`; UnknownHeads when unsure."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in revision_files(locations):
        found = _assignments(path)
        revision = found.get("revision")
        if not isinstance(revision, str) or "down_revision" not in found or revision in revisions:
            raise UnknownHeads(f"{path}: no single literal revision and down_revision")
        revisions.add(revision)
        revised |= _literal_ids(found["down_revision"])
    if not revisions or not revised <= revisions:
        raise UnknownHeads("the revisions do not form a complete history")
    return revisions - revised
