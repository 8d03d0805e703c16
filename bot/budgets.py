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

`turn` is the chained reservation for a message to one chat: the chat's buckets, then the bot's
only if the chat's slot is now. A bot slot chained behind a chat slot later than the bot's next
free one would move the bot's `tat` past all the free slots in between: every daemon's messages
would wait through that hole. A chat that is not ready is waited for first, and the bot's slot
reserved after. Its slots come back on this process's monotonic clock (`DatabaseClock`).

On SQLite (one daemon) nobody shares: the in-process pacers are the whole budget.

Daily quotas (`DailyQuotas`, a channel's daily cap) are counted, not paced: one row of
`daily_quotas` per (key, local day) whose `used` a reservation raises by one in one atomic upsert
that refuses to pass the cap (`... ON CONFLICT DO UPDATE SET used = used + 1 WHERE used < cap
RETURNING used`): daemons racing for the last slot get it once between them. A reservation whose
send certainly did not happen is given back; one whose outcome is unknown keeps its slot. The
same statement serves SQLite (the process's write lock serialises it), so one daemon and several
behave alike.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import Float, TextClause, bindparam, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bot.db import Database
from bot.schema import daily_quotas, rate_budgets

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


@functools.cache
def _turn_sql(chat_side: int, bump: int) -> TextClause:
    """Reserve `chat_side` chained buckets (:k0/:g0 …), then the last one (:kb/:gb) only when
    their slot is not later than now, and no earlier than :lead seconds from now; then move
    `bump` buckets (:u0/:h0 …) to no earlier than a gap after the last one's slot. Returns the
    chat-side slot, the last one's and the database's time, in epoch seconds (the last slot
    NULL when it was not reserved)."""
    parts = ["n AS (SELECT extract(epoch FROM clock_timestamp()) AS t)"]
    source, ready = "SELECT :kb, n.t + :lead + :gb FROM n", "NULL::float8"
    for i in range(chat_side):
        first = "n.t" if i == 0 else f"b{i - 1}.slot"
        parts.append(
            f"b{i} AS (INSERT INTO rate_budgets (key, tat) SELECT :k{i}, {first} + :g{i} "
            f"FROM {'n' if i == 0 else f'b{i - 1}'} ON CONFLICT (key) DO UPDATE "
            f"SET tat = greatest(rate_budgets.tat, EXCLUDED.tat - :g{i}) + :g{i} "
            f"RETURNING tat - :g{i} AS slot)"
        )
        source = f"SELECT :kb, n.t + :lead + :gb FROM b{i}, n WHERE b{i}.slot <= n.t"
        ready = f"(SELECT slot FROM b{i})"
    parts.append(
        f"bb AS (INSERT INTO rate_budgets (key, tat) {source} ON CONFLICT (key) DO UPDATE "
        "SET tat = greatest(rate_budgets.tat, EXCLUDED.tat - :gb) + :gb RETURNING tat - :gb AS slot)"
    )
    for i in range(bump):
        parts.append(
            f"u{i} AS (INSERT INTO rate_budgets (key, tat) SELECT :u{i}, bb.slot + :h{i} FROM bb "
            "ON CONFLICT (key) DO UPDATE SET tat = greatest(rate_budgets.tat, EXCLUDED.tat) RETURNING 1)"
        )
    return text(
        f"WITH {', '.join(parts)} SELECT {ready} AS ready, (SELECT slot FROM bb) AS slot, "
        "extract(epoch FROM clock_timestamp()) AS now"
    ).bindparams(
        bindparam("gb", type_=Float()),
        bindparam("lead", type_=Float()),
        *(bindparam(f"g{i}", type_=Float()) for i in range(chat_side)),
        *(bindparam(f"h{i}", type_=Float()) for i in range(bump)),
    )


class DatabaseClock:
    """The database's clock on this process's monotonic one. The offset comes from the recent
    reservation with the shortest round trip: an answer read late (a busy event loop) would
    otherwise put that slot late by the delay, and the next one, read on time, right behind it."""

    KEEP = 32  # reservations remembered
    FRESH = 30.0  # seconds a measurement is trusted (the database's wall clock may be stepped)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=self.KEEP)

    def observe(self, sent: float, answered: float, db_now: float) -> None:
        """A statement sent at `sent` and answered at `answered` (local) read `db_now`."""
        self._samples.append((answered - sent, db_now - (sent + answered) / 2, answered))

    def local(self, db_time: float) -> float:
        """`db_time` (epoch seconds on the database) on the local monotonic clock."""
        now = self.clock()
        fresh = [s for s in self._samples if now - s[2] <= self.FRESH] or list(self._samples)[-1:]
        return db_time - min(fresh)[1]


@dataclass(frozen=True)
class Turn:
    """A chained reservation, on the local monotonic clock: `ready` is when the chat-side
    buckets allow the message (None when there were none), `slot` the bot's slot (None: not
    reserved, because the chat is not ready before `ready`)."""

    ready: float | None
    slot: float | None


class RateBudgets:
    """Reservations in the shared buckets of one PostgreSQL database."""

    def __init__(self, db: Database) -> None:
        if db.is_sqlite:
            raise ValueError("shared rate budgets need PostgreSQL (on SQLite one daemon paces itself)")
        self.db = db
        self._auto = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.clock = DatabaseClock()

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

    async def turn(
        self, chat_side: Sequence[Bucket], last: Bucket, lead: float = 0.0, bump: Sequence[Bucket] = ()
    ) -> Turn:
        """Reserve the next slot in each of `chat_side` (chained), then in `last` (the bot's)
        if the chat-side slot is now, at least `lead` seconds ahead (time for the caller's work
        before its request). `bump` buckets (a late message's chat, whose slot passed unused)
        come free no earlier than their gap after the new slot. One statement, its own
        transaction."""
        values: dict[str, object] = {"kb": last[0], "gb": float(last[1]), "lead": float(lead)}
        for i, (key, gap) in enumerate(chat_side):
            values[f"k{i}"], values[f"g{i}"] = key, float(gap)
        for i, (key, gap) in enumerate(bump):
            values[f"u{i}"], values[f"h{i}"] = key, float(gap)
        sent = self.clock.clock()
        async with self._auto.connect() as conn:
            row = (await conn.execute(_turn_sql(len(chat_side), len(bump)), values)).one()
        self.clock.observe(sent, self.clock.clock(), float(row.now))
        return Turn(
            None if row.ready is None else self.clock.local(float(row.ready)),
            None if row.slot is None else self.clock.local(float(row.slot)),
        )

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


# --- daily quotas ------------------------------------------------------------------------------

# One reservation: the larger of the row's count and `floor` (uses the caller knows of, e.g. the
# posts its outbox says were sent today) goes up by one unless it has reached the cap. A refused
# reservation changes nothing and returns no row. Portable SQL: PostgreSQL and SQLite (>= 3.35)
# alike; INSERT … SELECT needs its WHERE clause on SQLite for the upsert to parse.
_TAKE = text(
    """
    INSERT INTO daily_quotas (key, day, used)
    SELECT :key, :day, CAST(:floor AS INTEGER) + 1 WHERE CAST(:floor AS INTEGER) < CAST(:cap AS INTEGER)
    ON CONFLICT (key, day) DO UPDATE
    SET used = CASE WHEN daily_quotas.used > CAST(:floor AS INTEGER)
                    THEN daily_quotas.used ELSE CAST(:floor AS INTEGER) END + 1
    WHERE CASE WHEN daily_quotas.used > CAST(:floor AS INTEGER)
               THEN daily_quotas.used ELSE CAST(:floor AS INTEGER) END < CAST(:cap AS INTEGER)
    RETURNING used
    """
)


@dataclass(frozen=True)
class Reservation:
    """The answer to `DailyQuotas.take`: whether a slot was granted, and the day's uses (with
    it when granted; when refused, the count that refused it)."""

    granted: bool
    used: int


class DailyQuotas:
    """Counted daily allowances (`cap` uses of `key` per day), shared by every daemon of one
    database; without a database (previews, tests without a store) counted in this process.

    The caller names the day (a local date: its own midnight decides), so the quota follows
    whatever calendar the caller keeps."""

    def __init__(self, db: Database | None) -> None:
        self.db = db
        self._memory: dict[tuple[str, str], int] = {}
        self._pruned: dict[str, str] = {}  # key -> the day older rows were last pruned for

    async def take(self, key: str, day: date, cap: int, *, floor: int = 0) -> Reservation:
        """Reserve one of the `cap` uses of `key` on `day`. `floor`: uses known from elsewhere
        (a lower bound of the day's count: it never lowers it). Atomic across daemons."""
        when = day.isoformat()
        if self._pruned.get(key) != when:
            await self.prune(key, day)
        if self.db is None:
            used = max(self._memory.get((key, when), 0), floor)
            if used >= cap:
                return Reservation(False, used)
            self._memory[(key, when)] = used + 1
            return Reservation(True, used + 1)
        values = {"key": key, "day": when, "floor": int(floor), "cap": int(cap)}
        async with self.db.write() as conn:
            row = (await conn.execute(_TAKE, values)).first()
            if row is not None:
                return Reservation(True, int(row[0]))
            query = select(daily_quotas.c.used).where(daily_quotas.c.key == key, daily_quotas.c.day == when)
            stored = (await conn.execute(query)).scalar_one_or_none()
        return Reservation(False, max(int(stored or 0), floor))

    async def give_back(self, key: str, day: date) -> None:
        """Return a reservation of `day` whose use certainly did not happen."""
        when = day.isoformat()
        if self.db is None:
            if self._memory.get((key, when), 0) > 0:
                self._memory[(key, when)] -= 1
            return
        async with self.db.write() as conn:
            await conn.execute(
                update(daily_quotas)
                .where(daily_quotas.c.key == key, daily_quotas.c.day == when, daily_quotas.c.used > 0)
                .values(used=daily_quotas.c.used - 1)
            )

    async def used(self, key: str, day: date) -> int:
        """The reservations held on `day` (given-back ones not counted)."""
        when = day.isoformat()
        if self.db is None:
            return self._memory.get((key, when), 0)
        query = select(daily_quotas.c.used).where(daily_quotas.c.key == key, daily_quotas.c.day == when)
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one_or_none() or 0)

    async def prune(self, key: str, day: date) -> int:
        """Forget `key`'s days before the day before `day` (`take` does it once a day per
        process). Yesterday stays: a daemon whose clock is a little behind may still count in
        it, and a slot taken before midnight may be given back after."""
        when, oldest = day.isoformat(), (day - timedelta(days=1)).isoformat()
        if self.db is None:
            for old in [k for k in self._memory if k[0] == key and k[1] < oldest]:
                del self._memory[old]
            done = 0
        else:
            async with self.db.write() as conn:
                result = await conn.execute(
                    delete(daily_quotas).where(daily_quotas.c.key == key, daily_quotas.c.day < oldest)
                )
            done = int(result.rowcount or 0)
        self._pruned[key] = when
        return done
