"""An up-to-date store is recognised without Alembic; anything else still goes through it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from bot.db import MIGRATIONS
from bot.migration_heads import UnknownHeads, heads
from bot.registry import REGISTRY
from bot.schema_upgrade import MigrationFailed
from bot.store import Store

ROOT = Path(__file__).parent.parent


def every_location() -> list[Path]:
    return [MIGRATIONS / "versions", *REGISTRY.migrations()]


def alembic_heads(locations: list[Path]) -> set[str]:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    return set(ScriptDirectory.from_config(cfg).get_heads())


def revision_file(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")


def probe_revision(folder: Path, revision: str = '"0099_probe"') -> None:
    """A new revision after one of the core's newest, creating the table `probe`."""
    core_head = sorted(heads([MIGRATIONS / "versions"]))[-1]
    revision_file(
        folder,
        "0099_probe",
        f"""
        import sqlalchemy as sa
        from alembic import op

        revision = {revision}
        down_revision = "{core_head}"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            op.create_table("probe", sa.Column("id", sa.Integer, primary_key=True))
        """,
    )


async def tables(store: Store) -> set[str]:
    async with store.db.read() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


def test_the_heads_are_alembics() -> None:
    assert heads(every_location()) == alembic_heads(every_location())
    assert len(heads(every_location())) >= 1 + len(REGISTRY.migrations())  # a branch per package


def test_a_merge_revision_ends_both_branches(tmp_path: Path) -> None:
    for name, down in (("a", None), ("b", "a"), ("c", "a"), ("d", ("b", "c"))):
        revision_file(tmp_path, name, f"revision = {name!r}\ndown_revision = {down!r}\n")
    assert heads([tmp_path]) == {"d"} == alembic_heads([tmp_path])


@pytest.mark.parametrize(
    "body",
    [
        'revision = "x" + "y"\ndown_revision = None\n',  # computed: Alembic runs the file, we cannot
        "down_revision = None\n",  # no revision
        'revision = "x"\n',  # no down_revision
        'revision = "x"\ndown_revision = "nowhere"\n',  # revises what is not there
        "revision = (\n",  # not Python
    ],
)
def test_what_cannot_be_read_is_unknown(tmp_path: Path, body: str) -> None:
    (tmp_path / "rev.py").write_text(body, encoding="utf-8")
    with pytest.raises(UnknownHeads):
        heads([tmp_path])


def test_init_files_and_editor_locks_are_not_revisions(tmp_path: Path) -> None:
    revision_file(tmp_path, "a", 'revision = "a"\ndown_revision = None\n')
    (tmp_path / "__init__.py").write_text("x = 1\n")
    (tmp_path / ".#a.py").write_text("not python (\n")
    (tmp_path / "notes.txt").write_text("revision = 'b'\n")
    assert heads([tmp_path]) == {"a"}


async def test_a_new_revision_is_applied_and_then_recognised(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    try:
        assert not await store.db.at_heads(every_location())  # a new store: no version table
        await store.migrate()
        assert await store.db.at_heads(every_location())
        extra = tmp_path / "extra"
        probe_revision(extra)
        locations = [*REGISTRY.migrations(), extra]
        assert not await store.db.at_heads([MIGRATIONS / "versions", *locations])
        await store.migrate(locations)
        assert "probe" in await tables(store)
        assert await store.db.at_heads([MIGRATIONS / "versions", *locations])
    finally:
        await store.close()


async def test_a_revision_it_cannot_read_still_goes_through_alembic(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    try:
        await store.migrate()
        extra = tmp_path / "extra"
        probe_revision(extra, revision='"0099_" + "probe"')  # Alembic reads it, heads() cannot
        await store.migrate([*REGISTRY.migrations(), extra])
        assert "probe" in await tables(store)
    finally:
        await store.close()


def test_starting_on_an_up_to_date_store_does_not_import_alembic(tmp_path: Path) -> None:
    async def migrated() -> None:
        store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
        await store.migrate()
        await store.close()

    asyncio.run(migrated())
    script = f"""
        import asyncio, sys
        from bot.store import Store
        async def main():
            store = Store({"sqlite:///" + str(tmp_path / "siar.db")!r})
            await store.migrate()
            await store.close()
        asyncio.run(main())
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"alembic", "mako"}}))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_the_daemon_migrates_a_new_store_in_a_child_and_keeps_no_alembic(tmp_path: Path) -> None:
    script = f"""
        import asyncio, sys
        from sqlalchemy import inspect
        from bot.store import Store
        async def main():
            store = Store({"sqlite:///" + str(tmp_path / "siar.db")!r})
            await store.migrate(in_child=True)
            async with store.db.read() as conn:
                names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            await store.close()
            return names
        names = asyncio.run(main())
        print("outbox" in names, "tg_subscribers" in names)
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"alembic", "mako"}}))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split("\n")[:2] == ["True True", "[]"]


async def test_a_failed_migration_in_the_child_is_raised_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = tmp_path / "extra"
    probe_revision(extra)
    text = (extra / "0099_probe.py").read_text().replace('op.create_table("probe"', 'op.drop_table("no_such"')
    (extra / "0099_probe.py").write_text(text)
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    try:
        with pytest.raises(MigrationFailed):
            await store.migrate([*REGISTRY.migrations(), extra], in_child=True)
        assert "no_such" in caplog.text  # the child's error, relayed
        assert await store.db.at_heads(every_location()) is False  # 0099 is rolled back with the rest
    finally:
        await store.close()
