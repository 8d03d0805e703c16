"""Migrating the store in a short-lived child process, so that Alembic's memory leaves with it.

Alembic with Mako and Pygments is ~10 MiB that a daemon would keep for its whole life after
the one start that migrates (a new store, a new version with a new revision). `siar run`
therefore migrates in a child Python process (`python -c` this module's `main`), which gets
the store's URL on stdin (never on its command line: it may hold a password) and exits. The
child's messages (Alembic's warnings, or the traceback of a failed migration) are logged by
the daemon, whose logging masks secrets. Other commands migrate in their own process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("siar.store")
ROOT = Path(__file__).resolve().parent.parent  # where `bot` is imported from


class MigrationFailed(RuntimeError):
    """The child process could not migrate the store; its messages are in the log."""


async def upgrade_apart(url: str, version_locations: Sequence[Path]) -> None:
    """Migrate the store at `url` (core and `version_locations`) in a child process; raises
    MigrationFailed when the child fails."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from bot.schema_upgrade import main; main()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    order = {"url": url, "locations": [str(p) for p in version_locations]}
    _, errors = await child.communicate(json.dumps(order).encode())
    for line in errors.decode(errors="replace").splitlines():
        if line.strip():
            log.warning("migration: %s", line)
    if child.returncode != 0:
        raise MigrationFailed(
            f"migrating the store failed (child process exit {child.returncode}; see above)"
        )


def main() -> None:
    """The child: read the order from stdin, migrate, exit 0 (a traceback and 1 otherwise)."""
    from bot.db import Database

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    order = json.loads(sys.stdin.read())

    async def migrate() -> None:
        db = Database(order["url"])
        try:
            await db.migrate([Path(p) for p in order["locations"]])
        finally:
            await db.close()

    asyncio.run(migrate())
