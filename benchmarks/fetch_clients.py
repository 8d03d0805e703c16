"""CPU per feed request of siar's two HTTP paths, side by side, against a local server.

A feed's own URL goes through aiohttp, a URL a feed controls (an article page, an image)
through httpx with the address guard (bot/fetch.py). Both fetch the same 50-item feed from a
keep-alive HTTP/1.1 server in another process, sequentially: answered 304 (a conditional GET
of an unchanged feed, the commonest poll) and answered 200 with the body. Alternated rounds;
median CPU ms per request of this process (the server excluded).

    .venv/bin/python benchmarks/fetch_clients.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import poll_compare  # noqa: E402  (the same feed server)

from bot.addresses import AddressGuard  # noqa: E402
from bot.fetch import Fetcher  # noqa: E402


async def measure(base: str, requests: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    url = f"{base}/ns/f/1"
    fast, plain = Fetcher("siar-bench"), Fetcher("siar-bench")
    plain.fast = False
    guard = AddressGuard(allow_private=True)  # the guarded httpx path (URLs a feed controls)
    contenders = {
        "aiohttp (feed URLs)": lambda etag: fast.fetch(url, etag),
        "httpx (no guard)": lambda etag: plain.fetch(url, etag),
        "httpx + address guard": lambda etag: plain.fetch(url, etag, guard=guard),
    }
    etag = (await fast.fetch(url)).etag
    out: dict[str, dict[str, list[float]]] = {name: {"304": [], "200": []} for name in contenders}
    for _ in range(rounds):
        for name, fetch in contenders.items():
            for kind, tag in (("304", etag), ("200", None)):
                await fetch(tag)  # warm: its connection is open
                began = time.process_time()
                for _ in range(requests):
                    result = await fetch(tag)
                out[name][kind].append((time.process_time() - began) / requests * 1000)
                assert result.not_modified if kind == "304" else result.body, (name, kind, result.error)
    await fast.close()
    await plain.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ready: multiprocessing.Queue[str] = multiprocessing.Queue()
    server = multiprocessing.Process(target=poll_compare.serve, args=(3, 50, ready), daemon=True)
    server.start()
    out = asyncio.run(measure(ready.get(), args.requests, args.rounds))
    server.terminate()
    print(f"{args.requests} requests x {args.rounds} rounds, median CPU ms per request")
    print(f"{'client':26} {'304':>8} {'200 (50 items)':>15}")
    for name, kinds in out.items():
        print(f"{name:26} {statistics.median(kinds['304']):8.3f} {statistics.median(kinds['200']):15.3f}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
