"""The strict fake Bot API (tests/fake_telegram.py) in a process of its own, for benchmarks and
the several-daemon tests.

Its rate limits are a sliding one-second window: a request counts at the moment the fake reads
it. A fake that shares a busy process (or a starved one on a loaded machine) reads requests
late, then several at once, and counts a burst that never was on the wire: 429s that measure the
machine, not the sender. So it runs apart, and asks for real-time scheduling (SCHED_FIFO, when
the system allows it: root or CAP_SYS_NICE): it stands for Telegram's servers, which do not
share the daemons' CPU. It reads a request within a millisecond of its arrival even at a load
average of 6 on two cores, against 30–230 ms without. It is I/O bound (about 1 ms of CPU per
request) and the kernel keeps 5 % of each core for everyone else (sched_rt_runtime_us).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fake_telegram import FakeTelegram

REALTIME_PRIORITY = 10


def _realtime() -> bool:
    """Ask for SCHED_FIFO for this process; False when the system refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (AttributeError, OSError):
        return False
    return True


def serve(port_file: str, limits: bool, port: int = 0, realtime: bool = True) -> None:
    """Run a fake with auto users in this process until killed; `port` 0 takes a free one. It
    writes "PORT REALTIME" to `port_file` once it listens. With limits, 30 messages/s overall,
    1,000/s for messages sent with allow_paid_broadcast."""
    scheduled = _realtime() if realtime else False

    async def main() -> None:
        async with FakeTelegram(limits=limits, auto_users=True, port=port) as fake:
            # A full collection of this heap took ~90 ms, and the requests that queued meanwhile
            # were then read as one burst: what was loaded so far is frozen, and only the
            # young generations are collected (the fake lives for one test or benchmark).
            gc.freeze()
            gc.set_threshold(700, 10, 10**9)
            text = f"{fake.port} {int(scheduled)}"
            await asyncio.to_thread(Path(port_file).write_text, text)
            await asyncio.Event().wait()

    asyncio.run(main())


def most_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most of `times` (sorted) in any `window` seconds."""
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass
class Seen:
    """What the fake accepted and refused, read at one moment."""

    messages: list[dict[str, Any]]  # {"chat": id, "text": text or caption}, in order
    times: list[float]  # monotonic time each was accepted (this machine's clock)
    flooded: list[tuple[str, int, float]]  # messages answered 429: (limit hit, chat, when)
    rejected_429: int
    conflicts: int  # getUpdates calls made while another one was waiting
    _by_chat: dict[int, list[str]] = field(default_factory=dict, repr=False)

    def texts(self, chat: int) -> list[str]:
        if not self._by_chat:
            for m in self.messages:
                self._by_chat.setdefault(m["chat"], []).append(m["text"])
        return self._by_chat.get(chat, [])

    def max_in_window(self, window: float = 1.0) -> int:
        return most_in_window(self.times, window)


class FakeTelegramProcess:
    """`async with FakeTelegramProcess() as tg:` starts the fake in its own process; `tg.url` is
    what `[telegram] api_base_url` should be."""

    def __init__(self, folder: Path, *, limits: bool = True, port: int = 0, realtime: bool = True) -> None:
        self.folder, self.limits, self.port, self.realtime = folder, limits, port, realtime
        self.scheduled_realtime = False
        self._process: Any = None

    async def __aenter__(self) -> FakeTelegramProcess:
        port_file = self.folder / f"fake-telegram-{os.getpid()}-{time.monotonic_ns()}.port"
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=serve, args=(str(port_file), self.limits, self.port, self.realtime), daemon=True
        )
        self._process.start()
        deadline = time.monotonic() + 60  # a loaded machine may take a while to start a process
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline or not self._process.is_alive():
                await self.__aexit__()
                raise RuntimeError("the fake Telegram process did not start")
            await asyncio.sleep(0.05)
        port, scheduled = port_file.read_text().split()
        self.port, self.scheduled_realtime = int(port), scheduled == "1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 10)
            self._process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _get(self, path: str) -> Any:
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.get(self.url + path)
            response.raise_for_status()
            return response.json()

    async def stats(self) -> dict[str, Any]:
        """Counts: sent, rejected_429, max_in_1s, first and last (monotonic), conflicts."""
        found: dict[str, Any] = await self._get("/fake/stats")
        return found

    async def seen(self) -> Seen:
        data = await self._get("/fake/sent")
        flooded = [(str(limit), int(chat), float(at)) for limit, chat, at in data["flooded"]]
        return Seen(data["messages"], data["times"], flooded, data["rejected_429"], data["conflicts"])

    async def play(self, user: int, text: str = "", name: str = "") -> None:
        """User `user` (a private chat, made if new) writes `text` to the bot."""
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(
                self.url + "/fake/user", json={"user": user, "text": text, "name": name}
            )
            response.raise_for_status()
