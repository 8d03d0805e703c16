"""One rate limiter per bot token, for every message the bot sends: channel posts, broadcasts,
command replies, menus, admin alerts.

`ChatPacer` keeps Telegram's limits: `per_second` overall (~30/s; up to 1000/s with paid
broadcasts), one message per chat per `chat_gap`, `group_per_minute` per group. `PacedRequests`
plugs it into python-telegram-bot as its `BaseRateLimiter`, so every PTB call that sends to a
chat waits its turn; the broadcast's own aiohttp sends wait on the same pacer. A RetryAfter
from Telegram pauses everything for the time it asks.

With `shared` (several daemons on one PostgreSQL, one bot token) each message also reserves its
slot in the token's buckets in the database (`bot.budgets`): the chat's, the group's and the
bot's, so that the daemons together keep the limits, and a RetryAfter holds them all.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

from bot.budgets import RateBudgets
from channels.telegram.errors import ptb_retry_after

# The daemons' shared slots are spaced this much wider than `per_second` asks: what arrives at
# Telegram is what left, shifted by delays that vary by a few ms (more on a loaded machine). At
# 29/s: 28.4/s, and 31 messages reach one second only if delays squeeze 30 gaps by 55 ms (a
# message up to LATE after its slot uses 10 ms of that).
SHARED_MARGIN = 1.02
# Seconds added to a chat's gap in the shared buckets (two daemons' messages to one reader): a
# message goes at its bot slot, which may come that long after its chat slot (the lead, the
# other daemons' reservations ahead of it, a little lateness).
SHARED_CHAT_MARGIN = 0.5
SHARED_HORIZON = 0.1  # seconds of the bot's future slots one daemon may hold, at least
# A turn handed out early (`wait(lead=...)`) comes `lead` seconds before its moment; the lead a
# broadcast asks for is learnt (`learn`): 1.5 times the 90th percentile of how long its work
# before the request took lately, within these bounds (the upper one well below the chat margin).
MIN_LEAD, MAX_LEAD = 0.1, 0.25
LATE = 0.01  # seconds past its slot a message may still go; later, it takes a new slot
# Methods that put a message in a chat: Telegram's flood limits count these.
PACED_PREFIXES = ("send", "copyMessage", "forwardMessage", "editMessage")


def is_group(chat_id: int) -> bool:
    """Groups, supergroups and channels have negative ids; private chats positive ones."""
    return chat_id < 0


class ChatPacer:
    """Spaces messages: `per_second` overall, one per chat per `chat_gap` s, `group_per_minute`.

    `per_second = 0` switches the global limit off (benchmarks, self-hosted Bot API servers).
    `min_spacing` is the closest two releases may be, as a fraction of the gap: after a stall the
    pacer catches up that much faster than `per_second`. Close to 1 leaves Telegram's 30/s
    window a margin for uneven network delays.

    A message's turn is a moment (`wait` returns it): the request should leave then, not merely
    after it. A broadcast asks for its turn `lead` seconds ahead, marks its reader `sending` in
    the meantime (a database write whose time varies), and calls `go` right before the request:
    the requests leave at the paced moments, not at the moments the writes happened to finish.
    """

    def __init__(
        self,
        per_second: float = 29.0,
        chat_gap: float = 1.05,
        group_per_minute: int = 19,
        clock: Callable[[], float] = time.monotonic,
        min_spacing: float = 0.5,
        shared: RateBudgets | None = None,
        key: str = "telegram",
    ) -> None:
        self.shared, self.key = shared, key  # key: the token's buckets (its hash, not the token)
        self._holds: set[asyncio.Task[None]] = set()
        self.chat_gap = chat_gap
        self.group_per_minute = group_per_minute
        self.clock = clock
        self.configure(per_second, min_spacing)
        self._released: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self._last: dict[int, float] = {}
        self._groups: dict[int, deque[float]] = defaultdict(deque)
        self.retaken = 0  # turns given up because the message was late for them
        # How far ahead a daemon reserves the bot's shared slots (see _shared_turn); at least
        # the lead a broadcast asks for its turns.
        self.horizon = SHARED_HORIZON
        self.lead = 0.1  # what a broadcast asks for (see learn)
        self.max_lead = MAX_LEAD
        self._took: deque[float] = deque(maxlen=64)

    def configure(self, per_second: float, min_spacing: float = 0.5) -> None:
        """Change the overall rate (the reader channel sets its broadcast rate on start)."""
        self.gap = 1.0 / per_second if per_second > 0 else 0.0
        self.min_spacing = min_spacing
        self.per_second = max(1, int(per_second))
        # Shared reservations under way at once: one at Telegram's 30/s (each comes once the
        # previous slot is near); at paid rates a round trip to the database (~10 ms) is longer
        # than the gap, and they overlap.
        self._reserving = asyncio.Semaphore(max(1, min(32, int(per_second / 100))))

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self.clock() + seconds)
        if self.shared is not None:  # the other daemons of this token hold too
            task = asyncio.get_running_loop().create_task(self.shared.hold(self.key, seconds))
            self._holds.add(task)
            task.add_done_callback(self._holds.discard)

    def chat_ready_at(self, chat: int, group: bool) -> float:
        at = self._last.get(chat, -1e9) + self.chat_gap
        window = self._groups.get(chat)
        if group and window and len(window) >= self.group_per_minute:
            at = max(at, window[-self.group_per_minute] + 60.5)
        return at

    def waiting_time(self, chat: int, group: bool | None = None) -> float:
        """Seconds until a message to `chat` could go (0: now)."""
        ready = max(self.chat_ready_at(chat, is_group(chat) if group is None else group), self._paused_until)
        return max(0.0, ready - self.clock())

    async def wait(self, chat: int, group: bool | None = None, *, lead: float = 0.0) -> float:
        """Wait for the turn of a message to `chat`; returns its moment (on `clock`), at most
        `lead` seconds ahead. The message is counted as sent then; with a `lead`, `go` before
        the request."""
        group = is_group(chat) if group is None else group
        while True:
            now = self.clock()
            ready = max(self.chat_ready_at(chat, group), self._paused_until)
            if ready <= now:
                break
            await asyncio.sleep(ready - now)
        if self.shared is not None:
            at = await self._shared_turn(self.chat_buckets(chat, group), lead)
        elif self.gap:
            at = await self._local_turn(lead)
        else:
            at = self.clock()
        self.record(chat, group, at)
        return at

    async def go(self, chat: int, at: float, group: bool | None = None) -> None:
        """Return at moment `at` (a turn from `wait`). A message that would leave more than
        `LATE` after it (the work before it took longer than the lead), or into a pause that
        began since, takes a new turn instead: late, it would crowd the next message's moment
        (and, across daemons, the next message to its chat)."""
        now = self.clock()
        if now < at and self._paused_until <= at:
            await asyncio.sleep(at - now)
            return
        if now - at <= LATE and self._paused_until <= at:
            return
        self.retaken += 1
        group = is_group(chat) if group is None else group
        await self._until(lambda: self._paused_until)
        if self.shared is not None:
            at = await self._shared_turn(self.chat_buckets(chat, group), 0.0, late=True)
        elif self.gap:
            at = await self._local_turn(0.0)
        else:
            return
        self.record(chat, group, at)

    def learn(self, took: float) -> None:
        """A turn handed out early was used `took` seconds later (the caller's work before its
        request): `lead` follows what that work takes lately, so that requests leave on time."""
        self._took.append(took)
        if len(self._took) >= 16:
            recent = sorted(self._took)
            wanted = 1.5 * recent[int(0.9 * len(recent))] + 0.01
            self.lead = min(self.max_lead, max(MIN_LEAD, wanted))

    async def _local_turn(self, lead: float) -> float:
        """One waiter at a time, spaced from the previous release: a stalled event loop then
        delays messages instead of releasing several waiters in a burst. At most `per_second`
        releases in any sliding second, never two closer than `min_spacing` gaps; each one's
        moment is its release plus `lead` (the same spacing, shifted)."""
        async with self._lock:
            while True:
                now = self.clock()
                while self._released and now - self._released[0] >= 1.0:
                    self._released.popleft()
                wait = 0.0
                if len(self._released) >= self.per_second:
                    wait = self._released[0] + 1.0 - now
                if self._released:
                    wait = max(wait, self._released[-1] + self.gap * self.min_spacing - now)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self._released.append(now)
        return now + lead

    async def _shared_turn(
        self, chat_side: list[tuple[str, float]], lead: float, late: bool = False
    ) -> float:
        """A turn reserved in the shared buckets (the chat's in `chat_side`, then the bot's),
        its slot at least `lead` ahead.

        One reservation at a time per daemon (a few at paid rates), the next one only once
        this slot is `horizon` away: each daemon holds no more than `horizon` of the bot's
        future slots, so a chat's slot and the moment its message goes stay close (the chat
        margin covers the difference). A chat another daemon has just messaged is waited for
        outside that queue, and the bot's slot reserved then. A message `late` for its slot
        (it is marked `sending` already) takes the next free one at once, and moves its chat's
        next free slot after it: it goes later than its chat's slot said."""
        assert self.shared is not None
        if not self.gap:  # no overall limit: the chat's own buckets only
            delay = max(0.0, await self.shared.reserve(chat_side)) if chat_side else 0.0
            at = self.clock() + delay
            await asyncio.sleep(max(0.0, delay - lead))
            return at
        bot = (self.key, self.gap * SHARED_MARGIN)
        chat = chat_side
        while True:
            if late:
                turn = await self.shared.turn([], bot, lead, bump=chat)
            else:
                async with self._reserving:
                    turn = await self.shared.turn(chat_side, bot, lead)
                    if turn.slot is not None:
                        await self._sleep_until(turn.slot - max(lead, self.horizon))
            slot = turn.slot
            chat_side = []  # the chat's slot is reserved (and the bot's, when it was ready)
            if slot is None:  # another daemon's message to this chat goes first
                assert turn.ready is not None
                await self._sleep_until(turn.ready)
                continue
            await self._sleep_until(slot - lead)
            if self.clock() - slot <= LATE:
                return slot
            self.retaken += 1  # woken too late (a busy event loop): a new slot
            late = True

    async def _sleep_until(self, moment: float) -> None:
        await self._until(lambda: moment)

    async def _until(self, moment: Callable[[], float]) -> None:
        """Sleep until `moment()` (asked again on waking: a pause may grow meanwhile)."""
        while True:
            now = self.clock()
            if moment() <= now:
                return
            await asyncio.sleep(moment() - now)

    def chat_buckets(self, chat: int, group: bool) -> list[tuple[str, float]]:
        """The shared buckets of a message to `chat` besides the bot's: its chat's (and its
        group's). The bot's bucket is reserved after these, once they are ready."""
        found = [(f"{self.key}:chat:{chat}", self.chat_gap + SHARED_CHAT_MARGIN)]
        if group:
            found.append((f"{self.key}:group:{chat}", 60.0 / self.group_per_minute))
        return found

    def buckets(self, chat: int, group: bool) -> list[tuple[str, float]]:
        """Every shared bucket a message to `chat` takes a slot in: its chat's first, the bot's
        last."""
        found = self.chat_buckets(chat, group)
        if self.gap:
            found.append((self.key, self.gap * SHARED_MARGIN))
        return found

    def record(self, chat: int, group: bool = False, at: float | None = None) -> None:
        """A message to `chat` goes at `at` (now by default)."""
        at = self.clock() if at is None else at
        self._last[chat] = max(self._last.get(chat, at), at)
        if group:
            window = self._groups[chat]
            window.append(at)
            while window and at - window[0] > 61:
                window.popleft()


class PacedRequests(BaseRateLimiter[None]):
    """python-telegram-bot's rate limiter hook, backed by the token's `ChatPacer`."""

    def __init__(self, pacer: ChatPacer) -> None:
        self.pacer = pacer

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        chat = data.get("chat_id")
        if endpoint.startswith(PACED_PREFIXES) and isinstance(chat, int | str):
            try:
                await self.pacer.wait(int(chat))
            except ValueError:  # "@channelname": paced as a group
                await self.pacer.wait(hash(chat) | -(2**62), group=True)
        try:
            return await callback(*args, **kwargs)
        except RetryAfter as exc:
            self.pacer.pause(ptb_retry_after(exc))  # everything waits; the caller decides
            raise
