"""The tables the code uses are the tables the migrations create (core and every channel
package), on SQLite and PostgreSQL; and the core names no platform."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from bot.registry import REGISTRY
from bot.schema import metadata as core_tables
from bot.store import Store

ROOT = Path(__file__).parent.parent
PG = os.environ.get("SIAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def every_table() -> MetaData:
    combined = MetaData()
    for tables in [core_tables, *(p.metadata for p in REGISTRY.plugins() if p.metadata is not None)]:
        for table in tables.tables.values():
            table.to_metadata(combined)
    return combined


def differences(conn: object) -> list[object]:
    context = MigrationContext.configure(conn)  # type: ignore[arg-type]
    found = compare_metadata(context, every_table())
    # SQLite reports no server defaults and types loosely; only missing/extra tables, columns
    # and indexes, and nullability, are differences here.
    keep = (
        "add_table",
        "remove_table",
        "add_column",
        "remove_column",
        "add_index",
        "remove_index",
        "modify_nullable",
    )
    flat: list[object] = []
    for diff in found:
        for item in diff if isinstance(diff, list) else [diff]:
            if isinstance(item, tuple) and item and item[0] in keep:
                flat.append(item[:3] if item[0] != "modify_nullable" else item[:4])
    return [d for d in flat if "alembic_version" not in str(d)]


def test_the_channel_packages_bring_their_tables() -> None:
    names = set(every_table().tables)
    assert {"outbox", "stories", "decisions", "feed_state", "fanout"} <= names
    assert {"tg_subscribers", "tg_chat_moves", "webpush_subscriptions", "webpush_clicks"} <= names
    assert not {"tg_deliveries", "webpush_deliveries"} & names  # moved into the one ledger


async def test_migrations_create_exactly_the_tables_on_sqlite(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    try:
        await store.migrate()
        async with store.db.engine.connect() as conn:
            assert await conn.run_sync(differences) == []
    finally:
        await store.close()


async def test_migrations_create_exactly_the_tables_on_postgresql(tmp_path: Path) -> None:
    name = f"siar_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(PG)
    except OSError as exc:  # not a skip: CI starts PostgreSQL (.ci/run); say how to fix it
        pytest.fail(f"PostgreSQL is not reachable at {PG} ({exc}); start it or set SIAR_TEST_PG")
    await admin.execute(f'CREATE DATABASE "{name}"')
    store = Store(PG.rsplit("/", 1)[0] + "/" + name, tmp_path)
    try:
        await store.migrate()
        await store.migrate()  # idempotent
        async with store.db.engine.connect() as conn:
            assert await conn.run_sync(differences) == []
    finally:
        await store.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def core_files() -> Iterator[Path]:
    yield from sorted((ROOT / "bot").rglob("*.py"))


def test_the_core_never_imports_a_channel() -> None:
    offenders = [
        str(f.relative_to(ROOT))
        for f in core_files()
        if re.search(r"^\s*(from|import)\s+channels\b", f.read_text(), flags=re.M)
    ]
    assert offenders == []


def test_the_core_names_no_platform_module() -> None:
    """The registry finds channel packages by scanning `channels/`; no core file lists them."""
    platforms = {p.name for p in REGISTRY.plugins()} - {"console"}
    named: dict[str, list[str]] = {}
    for f in core_files():
        text = f.read_text()
        for platform in platforms:
            if re.search(rf"[\"']channels\.{platform}\b", text):
                named.setdefault(str(f.relative_to(ROOT)), []).append(platform)
    assert named == {}


def test_sibling_channels_do_not_import_each_other() -> None:
    packages = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "channels").iterdir()
        if p.name != "__init__.py" and not p.name.startswith("__")
    }
    offenders = []
    for path in (ROOT / "channels").rglob("*.py"):
        own = path.relative_to(ROOT / "channels").parts[0].removesuffix(".py")
        for match in re.finditer(r"^\s*(?:from|import)\s+channels\.(\w+)", path.read_text(), flags=re.M):
            if match.group(1) != own and match.group(1) in packages:
                offenders.append(f"{path.relative_to(ROOT)} imports channels.{match.group(1)}")
    assert offenders == []
