"""A bot's updates behind several daemons: one `getUpdates` reader per token, each update once.

Telegram allows one `getUpdates` consumer per bot token (a second one gets 409 Conflict), so with
several daemons on one PostgreSQL only the holder of the token's advisory lock polls
(`pg_try_advisory_lock`, keyed by a hash of the token, held by a connection of its own). The
others try again every `retry` seconds; when the holder dies its connection closes, PostgreSQL
frees the lock and the next daemon starts reading. The holder checks its connection every
`check` seconds and stops reading when it is gone (another daemon may hold the lock by then).

With a webhook every daemon takes the updates a proxy hands it; `first_sight` keeps an update
that arrives twice (Telegram's retry after a slow answer, to another daemon) from being handled
twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import func, select

from bot.db import Database

log = logging.getLogger("siar.telegram")
Step = Callable[[], Awaitable[None]]


def lock_id(key: str) -> int:
    """The advisory lock's 64-bit key for `key` (a token's hash: the lock never shows it)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class UpdateReader:
    """Runs `start` while this daemon holds the token's lock, `stop` when it loses it."""

    def __init__(
        self, db: Database, key: str, start: Step, stop: Step, *, retry: float = 5.0, check: float = 5.0
    ) -> None:
        self.db, self.key = db, key
        self.start, self.stop = start, stop
        self.retry, self.check = retry, check
        self.reading = False
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"updates:{self.key}")

    async def end(self) -> None:
        """Stop reading (if we were) and give the lock up."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._hold()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store went away: whoever holds the lock now reads
                log.warning("telegram: lost the update reader's lock (%s); trying again", exc)
            await asyncio.sleep(self.retry)

    async def _hold(self) -> None:
        async with self.db.engine.connect() as conn:
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                waited = False
                while not (await conn.execute(select(func.pg_try_advisory_lock(lock_id(self.key))))).scalar():
                    if not waited:
                        log.info("telegram: another daemon reads this bot's updates; standing by")
                        waited = True
                    await asyncio.sleep(self.retry)
                log.info("telegram: this daemon reads the bot's updates")
                await self.start()
                self.reading = True
                try:
                    while True:
                        await asyncio.sleep(self.check)
                        await conn.execute(select(1))  # the lock lives as long as this session
                finally:
                    self.reading = False
                    await asyncio.shield(self.stop())
            finally:
                # Never back to the pool holding the lock: close the session (frees it).
                await conn.invalidate()
