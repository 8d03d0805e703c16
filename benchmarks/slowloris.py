"""The slowloris probe that took the daemon down, against bot/web.HttpServer with its defaults.

The server runs in this process under systemd's default limit of 1,024 file descriptors, with
siar's logging set-up writing to a file; an attacker process opens `--attackers` connections
that each send half a request and then hold them (reconnecting at once when closed), all from
127.0.0.1. Every second the server samples its open fds, RSS and connections and makes an
outbound socket (what a feed poll needs), and a reader at 127.0.0.2 makes a normal request.
`--behind-proxy` makes 127.0.0.1 a trusted proxy (exempt from the per-address cap), as when
everything arrives through a local reverse proxy.

    .venv/bin/python benchmarks/slowloris.py --attackers 1100 --seconds 25 [--behind-proxy]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from bot.config import HttpConfig
from bot.logs import setup_logging
from bot.web import HttpServer


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def attacker(port: int, count: int, seconds: float) -> None:
    """Hold `count` half-sent requests open (reopening closed ones); a normal GET every second."""
    half = b"GET /probe/ok HTTP/1.1\r\nHost: x\r\nX-Slow: "

    async def hold() -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(half)
                await reader.read()  # until the server closes it
                writer.close()
            except OSError:
                await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(hold()) for _ in range(count)]
    deadline = time.monotonic() + seconds
    outcomes: dict[str, int] = {}
    waits: list[float] = []
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        started = time.monotonic()
        stage = "connect"
        try:
            # A reader at another address (all of 127/8 is loopback on Linux).
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)), 5
            )
            stage = "answer"
            writer.write(b"GET /probe/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            outcome = answer[:12].decode() or "closed without an answer"
            waits.append(time.monotonic() - started)
        except (OSError, TimeoutError) as exc:
            outcome = f"{stage}: {type(exc).__name__}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    for task in tasks:
        task.cancel()
    print(
        f"attacker: normal requests during the attack: {outcomes}; answered in "
        f"{min(waits, default=0):.2f}–{max(waits, default=0):.2f} s",
        flush=True,
    )


async def serve(args: argparse.Namespace) -> str:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    # Directly exposed: nobody is a trusted proxy, so the per-address cap applies to the attacker.
    trusted = ["127.0.0.1", "::1"] if args.behind_proxy else []
    server = HttpServer(HttpConfig(listen="127.0.0.1:0", trusted_proxies=trusted))
    server.add_routes([web.get("/probe/ok", ok)], prefix="/probe")
    await server.start()
    base_fds, base_rss = fds(), rss_mib()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--attack",
        str(server.port),
        "--attackers",
        str(args.attackers),
        "--seconds",
        str(args.seconds),
    )
    peak_fds, peak_rss, emfile = 0, 0.0, 0
    for second in range(int(args.seconds) + 12):
        await asyncio.sleep(1)
        try:  # what a feed poll needs: one more socket
            socket.socket().close()
        except OSError:
            emfile += 1
        peak_fds, peak_rss = max(peak_fds, fds()), max(peak_rss, rss_mib())
        print(
            f"t={second + 1:3d}s fds={fds():4d} rss={rss_mib():6.1f} MiB "
            f"connections={server.open_connections:3d} {server.stats}",
            flush=True,
        )
    await child.wait()
    await server.stop()
    return (
        f"server: fds {base_fds} before, peak {peak_fds} (limit 1024); RSS {base_rss:.1f} MiB "
        f"before, peak {peak_rss:.1f} MiB; sockets refused for lack of fds: {emfile}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attackers", type=int, default=1100)
    parser.add_argument("--seconds", type=float, default=25)
    parser.add_argument(
        "--behind-proxy",
        action="store_true",
        help="everyone arrives from a trusted proxy address (no per-address cap)",
    )
    parser.add_argument("--attack", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.attack:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker is not limited
        asyncio.run(attacker(args.attack, args.attackers, args.seconds))
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # systemd's default soft limit
    log_file = Path(tempfile.mkdtemp()) / "siar.log"
    stderr = os.dup(2)
    with open(log_file, "w") as log:
        os.dup2(log.fileno(), 2)
        setup_logging("INFO")
        sys.stdout = os.fdopen(os.dup(1), "w")
        try:
            summary = asyncio.run(serve(args))
        finally:
            os.dup2(stderr, 2)
            logging.shutdown()
    lines = log_file.read_text().splitlines()
    print(f"{summary}; log {log_file.stat().st_size} bytes, {len(lines)} lines")


if __name__ == "__main__":
    main()
