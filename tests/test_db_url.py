"""The store's URL reaches the database driver whole."""

from __future__ import annotations

from pathlib import Path

from bot.db import Database, database_url


def test_a_postgresql_password_reaches_the_driver() -> None:
    # str() of an SQLAlchemy 2 URL masks the password as "***": the engine must not get that.
    db = Database("postgresql://siar:s%40cret@db.internal:5432/siar")
    assert db.engine.url.password == "s@cret"
    assert db.engine.url.drivername == "postgresql+asyncpg"


def test_a_relative_sqlite_path_is_under_the_config_folder(tmp_path: Path) -> None:
    url, path = database_url("sqlite:///siar.db", tmp_path)
    assert path == tmp_path / "siar.db"
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'siar.db'}"
