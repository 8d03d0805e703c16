"""Rate budgets shared by every daemon on one PostgreSQL: a platform's limits are per account
(a bot token, an X app), not per process.

Each bucket is one row of `rate_budgets` holding `tat`, the next free slot in seconds on the
DATABASE's clock (so hosts' clocks never matter): the generic cell rate algorithm. Reserving a
slot is one atomic upsert — `tat = greatest(tat, now) + gap`, returning the slot — and the
caller sleeps until its slot. Buckets reserved together (a chat's and the bot's) are taken in the
order given, each slot no earlier than the previous one's, so a message delayed by its chat
never crowds the bot's overall budget. Slots are never closer than `gap`: at most
`1 + window / gap` sends in any window. A reserved slot that goes unused is simply lost (a
little slower, never faster).

On SQLite (one daemon) nobody shares: the in-process pacers are the whole budget.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import Float, TextClause, bindparam, delete, func, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bot.db import Database
from bot.schema import rate_budgets

Bucket = tuple[str, float]  # (key, gap in seconds between two sends)
SharedPace = Callable[[float], Awaitable[float]]  # gap -> seconds to wait for our slot
_NOW = func.extract("epoch", func.clock_timestamp())


@functools.cache
def _reserve_sql(n: int) -> TextClause:
    """The statement that reserves slots in `n` chained buckets (:k0/:g0 … key and gap): each
    bucket's slot is no earlier than the previous one's; it returns how long to wait."""
    parts = ["n AS (SELECT extract(epoch FROM clock_timestamp()) AS t)"]
    source = "SELECT :k0, n.t + :g0 FROM n"
    for i in range(n):
        parts.append(
            f"b{i} AS (INSERT INTO rate_budgets (key, tat) {source} ON CONFLICT (key) DO UPDATE "
            f"SET tat = greatest(rate_budgets.tat, EXCLUDED.tat - :g{i}) + :g{i} "
            f"RETURNING tat - :g{i} AS slot)"
        )
        source = f"SELECT :k{i + 1}, b{i}.slot + :g{i + 1} FROM b{i}"
    # The wait is measured once the rows were locked (clock_timestamp() in the outer SELECT
    # runs after the upserts): a reservation that queued behind others knows it is late.
    return text(
        f"WITH {', '.join(parts)} SELECT b{n - 1}.slot - extract(epoch FROM clock_timestamp()) FROM b{n - 1}"
    ).bindparams(*(bindparam(f"g{i}", type_=Float()) for i in range(n)))


class RateBudgets:
    """Reservations in the shared buckets of one PostgreSQL database."""

    def __init__(self, db: Database) -> None:
        if db.is_sqlite:
            raise ValueError("shared rate budgets need PostgreSQL (on SQLite one daemon paces itself)")
        self.db = db
        self._auto = db.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def reserve(self, buckets: Sequence[Bucket]) -> float:
        """Reserve the next slot in each of `buckets`, in order; the seconds to wait before the
        send they were reserved for may go (negative: the slot has passed already). One
        statement, its own transaction: a bucket's row is locked only while the server runs it,
        never across a round trip."""
        if not buckets:
            return 0.0
        values: dict[str, object] = {}
        for i, (key, gap) in enumerate(buckets):
            values[f"k{i}"], values[f"g{i}"] = key, float(gap)
        async with self._auto.connect() as conn:
            wait = (await conn.execute(_reserve_sql(len(buckets)), values)).scalar_one()
        return float(wait)

    async def hold(self, key: str, seconds: float) -> None:
        """Nobody sends on `key` for `seconds` (the platform said "retry after")."""
        async with self.db.write() as conn:
            statement = pg_insert(rate_budgets).values(key=key, tat=_NOW + seconds)
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[rate_budgets.c.key],
                    set_={"tat": func.greatest(rate_budgets.c.tat, statement.excluded.tat)},
                )
            )

    async def prune(self, idle: float = 3600.0) -> int:
        """Forget buckets unused for `idle` seconds (one per chat adds up)."""
        async with self.db.write() as conn:
            done = await conn.execute(delete(rate_budgets).where(rate_budgets.c.tat < _NOW - idle))
        return int(done.rowcount or 0)

    def pace(self, key: str, due: Callable[[], Awaitable[bool]] | None = None) -> SharedPace:
        """A shared pace for one bucket: reserves a slot `gap` after the last one (when `due()`
        says there is something to send; otherwise reserves nothing and waits 0)."""

        async def wait(gap: float) -> float:
            if due is not None and not await due():
                return 0.0
            return max(0.0, await self.reserve([(key, gap)]))

        return wait
