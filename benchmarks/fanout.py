"""Broadcast one story to N subscribers through python-telegram-bot against the local fake Bot API.

    .venv/bin/python -m benchmarks.fanout                      # 10,000 readers, both runs (~6.5 min)
    .venv/bin/python -m benchmarks.fanout --limited 1000       # shorter paced run

Run 1, limits off (fake accepts everything, siar's pacer off): messages/s siar can push (target
>= 300/s, so siar is never the bottleneck). Run 2, default limits (fake enforces Telegram's 30/s,
siar paces at its default 29/s): sustained messages/s (target >= 28/s), the most messages the
fake saw in any 1 s window (must be <= 30) and the 429 answers (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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

from bot.channel import ChannelContext
from bot.config import load_config
from bot.store import Store
from bot.telegram_store import subscribers
from bot.types import Story
from channels.telegram_subscribers import Settings as ReaderSettings
from channels.telegram_subscribers import SubscriberChannel
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
STORY = Story(uid="1", feed="bench", url="https://www.medcom.id/internasional/1-putin",
              title="Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian",
              lead="Presiden Rusia Vladimir Putin mengundang menteri luar negeri kedua negara ke Moskow.",
              tags=("rusia", "armenia"), section="Internasional")


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
        path.write_text(CONFIG.format(token=TOKEN, api=api, rate=29 if limits else 0,
                                      concurrency=concurrency), encoding="utf-8")
        config = load_config(path)
        config.store.url = f"sqlite:///{folder / f'bench-{int(limits)}.db'}"
        store = Store(config.store.url, folder)
        await store.migrate()
        now = datetime.now(UTC)
        async with store.engine.begin() as conn:
            await conn.execute(insert(subscribers), [
                {"bot": "readers", "chat_id": 100_000 + c, "kind": "private", "name": "", "language": "id",
                 "topics": None, "active": True, "subscribed_at": now, "updated_at": now}
                for c in range(1, n + 1)])
        context = ChannelContext(site=config.site, cta=config.cta, store=store, config=config)
        settings = config.channels["readers"]
        assert isinstance(settings, ReaderSettings)
        channel = SubscriberChannel("readers", settings, context)
        await channel.start()
        post = channel.render(STORY)
        started = time.monotonic()
        receipt = await channel.send(post, idempotency_key="siar-1")
        elapsed = time.monotonic() - started
        await channel.close()
        await store.close()
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"{api}/fake/stats")).json()
        return {"readers": n, "delivered": stats["sent"], "seconds": elapsed,
                "per_second": stats["sent"] / elapsed, "max_in_1s": stats["max_in_1s"],
                "429": stats["rejected_429"], "note": receipt.note}


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unlimited", type=int, default=10_000, help="readers in the limits-off run")
    parser.add_argument("--limited", type=int, default=10_000, help="readers in the default-limits run")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if args.unlimited:
            fig = await run(args.unlimited, limits=False, concurrency=args.concurrency, folder=Path(tmp))
            good = fig["delivered"] == args.unlimited and fig["per_second"] >= 300
            ok &= good
            print(f"limits off:     {fig['delivered']:.0f}/{fig['readers']:.0f} delivered in "
                  f"{fig['seconds']:.1f}s = {fig['per_second']:.0f} msg/s (target >= 300) "
                  f"{'OK' if good else 'FAIL'}")
        if args.limited:
            fig = await run(args.limited, limits=True, concurrency=args.concurrency, folder=Path(tmp))
            good = (fig["delivered"] == args.limited and fig["per_second"] >= 28 and fig["max_in_1s"] <= 30
                    and fig["429"] == 0)
            ok &= good
            print(f"default limits: {fig['delivered']:.0f}/{fig['readers']:.0f} delivered in "
                  f"{fig['seconds']:.1f}s = {fig['per_second']:.1f} msg/s (target >= 28), "
                  f"max {fig['max_in_1s']:.0f} in any 1s (<= 30), {fig['429']:.0f} x 429 (0) "
                  f"{'OK' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
