"""Broadcast one story to N subscribers (the telegram-subscribers channel) against the fake Bot API.

    .venv/bin/python -m benchmarks.fanout                            # both modes (~50 s)
    .venv/bin/python -m benchmarks.fanout --mode off --subscribers 10000
    .venv/bin/python -m benchmarks.fanout --mode default --subscribers 10000   # ~6 min

Mode `off` (the fake accepts everything, siar's pacer is off): messages/s siar can push (target
>= 300/s, so siar is never the bottleneck). Mode `default` (the fake enforces Telegram's 30/s
overall and 1/s per chat, siar paces at its default 29/s): sustained messages/s (target >= 28/s),
the most messages the fake accepted in any 1 s window (must be <= 30) and its 429 answers (must
be 0). Default subscribers: 10,000 for `off`, 1,000 for `default` (35 s at 29/s).

The fake runs in its own process, so it does not share siar's CPU core; the machine's load
average is printed with each run because the figures depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fake_telegram

from bot.telegram_store import subscribers
from channels.telegram_subscribers import Settings as ReaderSettings
from channels.telegram_subscribers import SubscriberChannel

from bot.channel import ChannelContext
from bot.config import load_config
from bot.store import Store
from bot.types import Story
from tests.fake_telegram import TOKEN, serve

CONFIG = """
[telegram]
token = "{token}"
api_base_url = "{api}"

[channels.readers]
type = "telegram-subscribers"
messages_per_second = {rate}
concurrency = {concurrency}
"""
STORY = Story(
    uid="1",
    feed="bench",
    url="https://www.medcom.id/internasional/1-putin",
    title="Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian",
    lead="Presiden Rusia Vladimir Putin mengundang menteri luar negeri kedua negara ke Moskow.",
    tags=("rusia", "armenia"),
    section="Internasional",
)


@asynccontextmanager
async def fake_server(limits: bool, folder: Path) -> AsyncIterator[str]:
    """The fake Bot API in its own process (so it does not share siar's CPU core); yields its URL."""
    port_file = folder / f"port-{int(limits)}"
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(str(port_file), limits))
    process.start()
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        process.terminate()
        process.join()


async def run(n: int, *, limits: bool, concurrency: int, folder: Path) -> dict[str, Any]:
    """One broadcast to `n` readers; returns the figures."""
    async with fake_server(limits, folder) as api:
        path = folder / f"config-{int(limits)}.toml"
        path.write_text(
            CONFIG.format(token=TOKEN, api=api, rate=29 if limits else 0, concurrency=concurrency),
            encoding="utf-8",
        )
        config = load_config(path)
        config.store.url = f"sqlite:///{folder / f'bench-{int(limits)}.db'}"
        store = Store(config.store.url, folder)
        await store.migrate()
        now = datetime.now(UTC)
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(subscribers),
                [
                    {
                        "bot": "readers",
                        "chat_id": 100_000 + c,
                        "kind": "private",
                        "name": "",
                        "language": "id",
                        "topics": None,
                        "active": True,
                        "subscribed_at": now,
                        "updated_at": now,
                    }
                    for c in range(1, n + 1)
                ],
            )
        context = ChannelContext(site=config.site, cta=config.cta, store=store, config=config)
        settings = config.channels["readers"]
        assert isinstance(settings, ReaderSettings)
        channel = SubscriberChannel("readers", settings, context)
        await channel.start()
        post = channel.render(STORY)
        load = os.getloadavg()[0]
        started, cpu = time.monotonic(), time.process_time()
        receipt = await channel.send(post, idempotency_key="siar-1")
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        await channel.close()
        await store.close()
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"{api}/fake/stats")).json()
        return {
            "readers": n,
            "delivered": stats["sent"],
            "seconds": elapsed,
            "cpu": cpu,
            "per_second": stats["sent"] / elapsed,
            "max_in_1s": stats["max_in_1s"],
            "429": stats["rejected_429"],
            "note": receipt.note,
            "load": load,
        }


def report(mode: str, fig: dict[str, Any], concurrency: int) -> bool:
    """Print one run's figures; True if it meets the issue's targets."""
    delivered, readers = fig["delivered"], fig["readers"]
    if mode == "off":
        checks = {"all delivered": delivered == readers, "msg/s >= 300": fig["per_second"] >= 300}
    else:
        checks = {
            "all delivered": delivered == readers,
            "msg/s >= 28": fig["per_second"] >= 28,
            "max in 1 s <= 30": fig["max_in_1s"] <= 30,
            "no 429": fig["429"] == 0,
        }
    good = all(checks.values())
    title = "limits off" if mode == "off" else "default limits (29/s paced, fake enforces 30/s)"
    print(f"{title}: {'OK' if good else 'FAIL ' + ', '.join(k for k, v in checks.items() if not v)}")
    print(f"  subscribers        {readers:,} (concurrency {concurrency}, load average {fig['load']:.2f})")
    print(f"  delivered          {delivered:,} in {fig['seconds']:.1f} s ({fig['note']})")
    print(
        f"  msg/s              {fig['per_second']:.1f}"
        + ("  (target >= 300)" if mode == "off" else "  (target >= 28)")
    )
    print(f"  max in any 1 s     {fig['max_in_1s']}" + ("" if mode == "off" else "  (must be <= 30)"))
    print(f"  429 answers        {fig['429']}" + ("" if mode == "off" else "  (must be 0)"))
    print(f"  siar CPU           {fig['cpu']:.1f} s ({1000 * fig['cpu'] / max(1, delivered):.2f} ms/message)")
    return good


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        choices=("off", "default", "both"),
        default="both",
        help="limits off, default limits, or both (default)",
    )
    parser.add_argument(
        "--subscribers",
        type=int,
        default=0,
        help="subscribers per run (default: 10,000 limits off, 1,000 default limits)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="the channel's `concurrency`")
    args = parser.parse_args(argv)
    ok = True
    modes = ("off", "default") if args.mode == "both" else (args.mode,)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            n = args.subscribers or (10_000 if mode == "off" else 1_000)
            fig = await run(n, limits=mode == "default", concurrency=args.concurrency, folder=Path(tmp))
            ok &= report(mode, fig, args.concurrency)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
