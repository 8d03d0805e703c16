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
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

from bot.budgets import RateBudgets
from channels.telegram.errors import ptb_retry_after

# Methods that put a message in a chat: Telegram's flood limits count these.
# The daemons' shared slots are spaced this much wider than `per_second` asks: a daemon that
# wakes a few ms late for its slot must not make a 31st message in Telegram's one-second window.
SHARED_MARGIN = 1.03
SHARED_CHAT_MARGIN = 0.25  # seconds added to a chat's gap: two daemons' messages to one reader
SHARED_LATE = 0.02  # seconds late for a shared slot before it is given up for a new one
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

    def configure(self, per_second: float, min_spacing: float = 0.5) -> None:
        """Change the overall rate (the reader channel sets its broadcast rate on start)."""
        self.gap = 1.0 / per_second if per_second > 0 else 0.0
        self.min_spacing = min_spacing
        self.per_second = max(1, int(per_second))

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

    async def wait(self, chat: int, group: bool | None = None) -> None:
        """Return when a message to `chat` may go; it is counted as sent from then on."""
        group = is_group(chat) if group is None else group
        while True:
            now = self.clock()
            ready = max(self.chat_ready_at(chat, group), self._paused_until)
            if ready <= now:
                break
            await asyncio.sleep(ready - now)
        if self.shared is not None:
            await self._shared_slot(chat, group)
        elif self.gap:
            # One waiter at a time, spaced from the previous actual release: a stalled event loop
            # then delays messages instead of releasing several waiters in a burst. At most
            # `per_second` releases in any sliding second, never two closer than `min_spacing` gaps.
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
        self.record(chat, group)

    async def _shared_slot(self, chat: int, group: bool) -> None:
        """Wait for a slot reserved in the shared buckets. A daemon that wakes too late for its
        slot (a busy event loop) would crowd the next daemon's message into the same window:
        it gives the slot up and takes a new one instead."""
        assert self.shared is not None
        while True:
            # One reservation at a time per daemon (the bot's bucket is one row: a queue of
            # waiting transactions would only make everyone late for their slots); the waits
            # for the slots overlap.
            async with self._lock if self.gap else contextlib.nullcontext():
                delay = await self.shared.reserve(self.buckets(chat, group))
            slot = self.clock() + delay
            if delay > 0:
                await asyncio.sleep(delay)
            if self.clock() - slot <= SHARED_LATE:  # a slot that passed while queued is late too
                return

    def buckets(self, chat: int, group: bool) -> list[tuple[str, float]]:
        """The shared buckets a message to `chat` takes a slot in: its chat's first, the bot's
        last (so a wait for the chat never crowds the bot's overall budget)."""
        found = [(f"{self.key}:chat:{chat}", self.chat_gap + SHARED_CHAT_MARGIN)]
        if group:
            found.append((f"{self.key}:group:{chat}", 60.0 / self.group_per_minute))
        if self.gap:
            found.append((self.key, self.gap * SHARED_MARGIN))
        return found

    def record(self, chat: int, group: bool = False) -> None:
        now = self.clock()
        self._last[chat] = now
        if group:
            window = self._groups[chat]
            window.append(now)
            while window and now - window[0] > 61:
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
