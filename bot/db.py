"""The database under every store: the engine, write transactions, migrations, file modes.

SQLite (one file, WAL, one daemon) or PostgreSQL (several daemons). SQLite allows one writer at
a time, so every write in the process goes through `Database.write()`, which holds a process
lock around the transaction: "database is locked" never reaches the caller. Channel packages
with tables of their own write through it as well.

The SQLite files hold readers' chat ids and push keys: they are created 0600, and existing ones
that others can read are reported once at start.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam, event, func, insert, select, text
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.migration_heads import UnknownHeads, heads
from bot.paths import resolve_path

log = logging.getLogger("siar.store")
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x5149_4152  # "SIAR": the PostgreSQL advisory lock held while migrating
SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def database_url(url: str, base_dir: Path) -> tuple[str, Path | None]:
    """(async SQLAlchemy URL, SQLite file or None): relative SQLite paths are under `base_dir`."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if not db or db == ":memory:":
            raise ValueError("store.url: an in-memory SQLite store would lose every post; name a file")
        path = resolve_path(db, base_dir)
        return _text(parsed.set(drivername="sqlite+aiosqlite", database=str(path))), path
    if backend in ("postgresql", "postgres"):
        return _text(parsed.set(drivername="postgresql+asyncpg")), None
    raise ValueError(f"store.url: unsupported database {backend!r}; use sqlite:/// or postgresql://")


def _text(url: URL) -> str:
    # Not str(url): SQLAlchemy 2 masks the password there ("***"), and the engine got that.
    return url.render_as_string(hide_password=False)


class Database:
    """One engine per process; `write()` for transactions, `read()` for queries."""

    def __init__(self, url: str, base_dir: Path = Path(".")) -> None:
        self.url, self.sqlite_path = database_url(url, base_dir)
        self.engine: AsyncEngine = create_async_engine(self.url, pool_pre_ping=self.sqlite_path is None)
        self._write_lock = asyncio.Lock() if self.sqlite_path else None
        if self.sqlite_path is not None:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(self.sqlite_path)
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect(self.sqlite_path))

    @property
    def is_sqlite(self) -> bool:
        return self.sqlite_path is not None

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql" (for `listed` and `insert_ignore`)."""
        return "sqlite" if self.sqlite_path is not None else "postgresql"

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction; on SQLite also the process's single-writer lock."""
        return self._write()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for queries (no transaction is committed)."""
        return self.engine.connect()

    async def migrate(self, version_locations: Sequence[Path] = (), *, in_child: bool = False) -> None:
        """Bring the schema to the newest revision of the core and of `version_locations`
        (the channel packages' own migrations); idempotent. Alembic is imported only when
        the store is not at those revisions already (bot/migration_heads.py), and with
        `in_child` not even then: a child process migrates (bot/schema_upgrade.py)."""
        locations = [MIGRATIONS / "versions", *version_locations]
        if await self.at_heads(locations):
            self.warn_if_readable()
            return
        if in_child:
            from bot.schema_upgrade import upgrade_apart

            await upgrade_apart(self.url, version_locations)
            self.warn_if_readable()
            return
        async with self.engine.begin() as conn:
            if not self.is_sqlite:  # daemons starting together: one migrates, the others wait
                await conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            await conn.run_sync(_upgrade, locations)
        self.warn_if_readable()

    async def at_heads(self, locations: Sequence[Path]) -> bool:
        """Whether the store's revisions are exactly the newest ones under `locations`
        (False when that cannot be known without Alembic)."""
        try:
            wanted = heads(locations)
        except UnknownHeads as exc:
            log.debug("migrations: heads unknown without Alembic (%s)", exc)
            return False
        try:
            async with self.read() as conn:
                rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
                stored = {str(row[0]) for row in rows}
        except Exception:  # no version table yet (a new store), or no store at all: Alembic says
            return False
        return stored == wanted

    def warn_if_readable(self) -> None:
        """Log once for each store file that users other than its owner may read."""
        if self.sqlite_path is None:
            return
        for suffix in SQLITE_SIDE_FILES:
            path = self.sqlite_path.with_name(self.sqlite_path.name + suffix)
            try:
                mode = path.stat().st_mode
            except OSError:
                continue
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning(
                    "store file %s is readable by others (mode %o): it holds readers' chat ids "
                    "and push keys; chmod 600 it",
                    path,
                    mode & 0o777,
                )

    async def close(self) -> None:
        await self.engine.dispose()


def listed(column: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """`column IN (the values of ONE bind parameter `name`)`, for a statement built once.

    A plain `column.in_([...])` renders a parameter per value and is built and compiled again
    for every call (0.6-0.8 ms of CPU for 50 values); this takes the whole list as one value
    (`listed_value`): a JSON array read by `json_each` on SQLite, an array with `= ANY` on
    PostgreSQL. Both use the column's index (tests/test_query_plans.py).
    """
    if dialect == "sqlite":
        values = func.json_each(bindparam(name)).table_valued("value")
        return column.in_(select(values.c.value))
    return column == any_(bindparam(name, type_=postgresql_dialect.ARRAY(column.type)))


def listed_value(values: Sequence[Any], dialect: str) -> Any:
    """The parameter value `listed` expects for `values`."""
    return json.dumps(list(values)) if dialect == "sqlite" else list(values)


@functools.cache
def insert_ignore(table: Any, dialect: str) -> Any:
    """An INSERT into `table` that skips rows whose unique key is taken (another daemon's, or
    an earlier poll's), for `dialect` ("sqlite" or "postgresql"), built once.

    SQLite: `INSERT OR IGNORE`, which SQLAlchemy compiles once and caches (its `ON CONFLICT DO
    NOTHING` construct is never cached: about 1 ms of compiling per poll and table). It also
    skips rows breaking NOT NULL or CHECK, which siar's own rows never do. PostgreSQL (several
    daemons): `ON CONFLICT DO NOTHING`.
    """
    if dialect == "sqlite":
        return insert(table).prefix_with("OR IGNORE", dialect="sqlite")
    return postgresql_dialect.insert(table).on_conflict_do_nothing()


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite creates it with the process umask."""
    if path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _sqlite_connect(path: Path) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        for suffix in SQLITE_SIDE_FILES[1:]:  # the WAL files SQLite just created with the umask
            side = path.with_name(path.name + suffix)
            try:
                if side.exists() and side.stat().st_mode & 0o077 and side.stat().st_uid == os.getuid():
                    side.chmod(0o600)
            except OSError:
                pass

    return on_connect


def _upgrade(conn: Connection, locations: list[Path]) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "heads")  # channel packages add branches of their own
