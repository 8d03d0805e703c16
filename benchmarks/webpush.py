"""Web push of one story to N subscriptions, by 1–3 daemon processes sharing one PostgreSQL.

    .venv/bin/python -m benchmarks.webpush --subscriptions 1000000 --daemons 1
    .venv/bin/python -m benchmarks.webpush --subscriptions 100000 --daemons 1 2 3
    .venv/bin/python -m benchmarks.webpush --subscriptions 20000 --client lean aiohttp http2
    .venv/bin/python -m benchmarks.webpush --subscriptions 100000 --kill
    .venv/bin/python -m benchmarks.webpush --subscriptions 100000 --ledgers

The push service (benchmarks/push_service.py: TLS, VAPID checked, the aes128gcm header of every
body checked and one body in `--verify-every` decrypted, each endpoint's deliveries counted)
runs in its own process; so does each daemon: process 1 plans and sends the story
(`WebPushChannel.send`), processes 2 and 3 are daemons of the same configuration whose channel
helps (claims batches). Each run gets a fresh database (`--store`, default
postgresql+asyncpg://postgres@127.0.0.1:5432/, one database per run, dropped afterwards; a
sqlite+aiosqlite:////path URL runs one daemon on a fresh SQLite file beside that path).

Figures: pushes/s over the delivery window, siar CPU ms per push (all daemons; the kernel's
part apart), the push service's CPU, PostgreSQL's CPU (its processes on this machine), ledger
and subscription rows written per push (pg_stat_user_tables) and store growth per story
(pg_total_relation_size). `--client` runs each client (lean, aiohttp, http2 = httpx + h2
against the service's HTTP/2 port) and tables them side by side. `--warm`: subscriptions pushed
to an hour ago (no `last_push_at` writes). `--kill` SIGKILLs the helping daemon mid-broadcast:
duplicates must be 0 and uncertain at most the dead daemon's requests in flight
(`concurrency`). `--ledgers` compares the per-recipient ledger (bot.fanout) with the batched
one (bot.fanout_batches), instant deliveries, no HTTP: the cost of the progress records alone.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import push_service

CONFIG = """
[site]
name = "Bench"

[store]
url = "{store}"

[webpush]
listen = "127.0.0.1:0"
contact = "mailto:redaksi@example.com"
vapid_key_file = "vapid.pem"
push_hosts = ["127.0.0.1"]
ca_file = "{ca}"
max_subscriptions = 10000000

[channels.push]
type = "webpush"
rate_limit = "1000/s"
concurrency = {concurrency}
batch_size = {batch_size}
lease = "{lease}s"
help_interval = "0.2s"
http2 = {http2}
client = "{client}"
send_timeout = "3h"
"""
STORY = dict(
    uid="1",
    feed="bench",
    url="https://www.medcom.id/internasional/1-putin",
    title="Putin Ajak Menlu Azerbaijan dan Armenia Bahas Perdamaian",
    lead="Presiden Rusia Vladimir Putin mengundang menteri luar negeri kedua negara ke Moskow.",
    section="Internasional",
)
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- the daemons (each in its own process) ------------------------------------------------------


async def _daemon(config_path: str, role: str, results: Any, stop: Any) -> None:
    from bot.app import channel_context
    from bot.config import load_config
    from bot.store import Store
    from bot.types import Story
    from channels.webpush import WebPushChannel

    if os.environ.get("SIAR_BENCH_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG, filename=os.environ["SIAR_BENCH_DEBUG"])
    config = load_config(Path(config_path))
    store = Store(config.store.url, Path(config_path).parent)
    context = channel_context(config, store)
    settings = config.channels["push"]
    channel = WebPushChannel("push", settings, context)  # type: ignore[arg-type]
    await channel.start()
    assert channel.batches is not None
    cpu, started, times = time.process_time(), time.monotonic(), os.times()
    note = ""
    if role == "owner":
        post = channel.render(Story(**STORY))  # type: ignore[arg-type]
        profile_to = os.environ.get("SIAR_BENCH_PROFILE")  # a file for the profiler's figures
        if profile_to and os.environ.get("SIAR_BENCH_PROFILER") == "yappi":  # CPU time, per coroutine
            import yappi  # type: ignore[import-not-found, unused-ignore]

            yappi.set_clock_type("cpu")
            yappi.start(builtins=True)
            receipt = await channel.send(post, idempotency_key="siar-1")
            yappi.stop()
            yappi.get_func_stats().save(profile_to, type="pstat")
        elif profile_to:  # cProfile: wall time
            import cProfile

            with cProfile.Profile() as profile:
                receipt = await channel.send(post, idempotency_key="siar-1")
            profile.dump_stats(profile_to)
        else:
            receipt = await channel.send(post, idempotency_key="siar-1")
        note = receipt.note
    else:
        while not stop.is_set():  # noqa: ASYNC110 (a multiprocessing event)
            await asyncio.sleep(0.2)
    cpu, elapsed = time.process_time() - cpu, time.monotonic() - started
    now = os.times()
    kernel = now.system - times.system
    rows = channel.batches.rows_written
    signed = channel.signer.signed if channel.signer else 0
    await channel.close()
    await store.close()
    results.put(
        {
            "role": role,
            "cpu": cpu,
            "kernel": kernel,
            "seconds": elapsed,
            "rows": rows,
            "note": note,
            "signed": signed,
        }
    )


def daemon(config_path: str, role: str, results: Any, stop: Any, loop: str = "asyncio") -> None:
    """A daemon process's entry point (spawn); the standard event loop, like `siar run`, or
    uvloop (`--loop uvloop`, a measurement: siar does not install it)."""
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(_daemon(config_path, role, results, stop))


# --- set-up ---------------------------------------------------------------------------------------


async def fresh_database(store: str, tag: str) -> tuple[str, str | None]:
    """A new empty database for `store` (PostgreSQL) or a new file beside the one `store`
    names (SQLite); (url, database name or file)."""
    if store.startswith("sqlite"):
        path = Path(store.split(":///", 1)[1])
        fresh = path.with_name(f"{path.stem}-{tag}-{os.getpid()}-{time.monotonic_ns()}{path.suffix}")
        return store.split(":///", 1)[0] + ":///" + str(fresh), str(fresh)
    import asyncpg

    name = f"siar_bench_{tag}_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return store.rstrip("/") + "/" + name, name


async def drop_database(name: str | None) -> None:
    if name is None:
        return
    if name.startswith("/"):  # a SQLite file
        for leftover in Path(name).parent.glob(Path(name).name + "*"):
            leftover.unlink()
        return
    import asyncpg

    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def fill(url: str, folder: Path, n: int, origin: str, warm: bool = False) -> None:
    """Migrate the store and add `n` subscriptions to endpoints of `origin`; `warm`: each was
    pushed to an hour ago (the day's later stories), else never (the first story)."""
    from bot.store import Store
    from channels.webpush.store import subscriptions

    store = Store(url, folder)
    await store.migrate()
    now = datetime.now(UTC)
    pushed = now - timedelta(hours=1) if warm else None
    keys = {slot: push_service.subscription_keys(slot) for slot in range(push_service.POOL)}
    if store.db.engine.dialect.name == "postgresql":
        raw = await store.db.engine.raw_connection()
        try:
            conn = raw.driver_connection  # asyncpg: COPY
            records = []
            for i in range(1, n + 1):
                endpoint = f"{origin}/push/{i}"
                p256dh, auth = keys[i % push_service.POOL]
                h = hashlib.sha256(endpoint.encode()).hexdigest()
                records.append((i, h, endpoint, p256dh, auth, "[]", origin, now, now, pushed, 0))
            columns = [c.name for c in subscriptions.columns]
            await conn.copy_records_to_table("webpush_subscriptions", records=records, columns=columns)
            await conn.execute("SELECT setval('webpush_subscriptions_id_seq', $1)", n)
            await conn.execute("ANALYZE")
        finally:
            raw.close()
    else:
        from sqlalchemy import insert

        async with store.db.engine.begin() as conn:
            for start in range(1, n + 1, 10000):
                rows = []
                for i in range(start, min(n, start + 9999) + 1):
                    endpoint = f"{origin}/push/{i}"
                    p256dh, auth = keys[i % push_service.POOL]
                    rows.append(
                        {
                            "id": i,
                            "endpoint_hash": hashlib.sha256(endpoint.encode()).hexdigest(),
                            "endpoint": endpoint,
                            "p256dh": p256dh,
                            "auth": auth,
                            "topics": "[]",
                            "origin": origin,
                            "created_at": now,
                            "updated_at": now,
                            "last_push_at": pushed,
                            "failures": 0,
                        }
                    )
                await conn.execute(insert(subscriptions), rows)
    await store.close()


async def table_figures(url: str) -> dict[str, int]:
    """Rows inserted+updated and bytes (with indexes and TOAST) of the fan-out tables."""
    if "postgresql" not in url:
        return {}
    import asyncpg

    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        out = {}
        for table in ("fanout_batches", "fanout_broadcasts", "fanout", "webpush_subscriptions"):
            row = await conn.fetchrow(
                "SELECT n_tup_ins + n_tup_upd AS writes, pg_total_relation_size(relid) AS bytes "
                "FROM pg_stat_user_tables WHERE relname = $1",
                table,
            )
            out[f"{table}_writes"], out[f"{table}_bytes"] = int(row["writes"]), int(row["bytes"])
        return out
    finally:
        await conn.close()


def postgres_cpu() -> float:
    """CPU seconds used so far by this machine's PostgreSQL processes and the backends they
    reaped (Linux /proc; every database's, so other work on the server counts too), 0 when
    none are visible."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name.startswith("postgres"):
            total += sum(int(f) for f in fields[11:15])  # utime, stime, and those of reaped backends
    return total / tick


async def ledger_counts(url: str, folder: Path) -> dict[str, int]:
    from bot.fanout_batches import BatchLedger
    from bot.store import Store

    store = Store(url, folder)
    try:
        return await BatchLedger(store.db).counts("siar-1")
    finally:
        await store.close()


# --- one run ----------------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, daemons: int, folder: Path, kind: str, *, kill: bool = False
) -> dict[str, Any]:
    import httpx
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    spawn = multiprocessing.get_context("spawn")
    run_folder = Path(tempfile.mkdtemp(dir=folder))
    key = ec.generate_private_key(ec.SECP256R1())
    (run_folder / "vapid.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (run_folder / "vapid.pem").chmod(0o600)
    public = push_service.b64e(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    ca = push_service.write_certificate(run_folder)
    service = spawn.Process(
        target=push_service.main, args=(str(run_folder), args.subscriptions, public, args.verify_every)
    )
    service.start()
    db_name = None
    processes: list[Any] = []
    try:
        for _ in range(400):
            if (run_folder / "ports.json").exists():
                break
            await asyncio.sleep(0.05)
        ports = json.loads((run_folder / "ports.json").read_text())
        origin = f"https://127.0.0.1:{ports['h2' if kind == 'http2' else 'h1']}"
        url, db_name = await fresh_database(args.store, f"{daemons}d")
        t = time.monotonic()
        await fill(url, run_folder, args.subscriptions, origin, args.warm)
        print(f"  ({args.subscriptions:,} subscriptions stored in {time.monotonic() - t:.0f} s)", flush=True)
        config = run_folder / "config.toml"
        config.write_text(
            CONFIG.format(
                store=url,
                ca=ca,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                lease=args.lease,
                http2="true" if kind == "http2" else "false",
                client="aiohttp" if kind == "aiohttp" else "lean",
            ),
            encoding="utf-8",
        )
        before = await table_figures(url)
        pg_cpu = postgres_cpu()
        results, stop = spawn.Queue(), spawn.Event()
        load = os.getloadavg()[0]
        roles = ["owner"] + ["helper"] * (daemons - 1)
        for role in roles:
            processes.append(spawn.Process(target=daemon, args=(str(config), role, results, stop, args.loop)))
        for p in processes:
            p.start()
        killed_at = None
        stats_url = f"https://127.0.0.1:{ports['h1']}/stats"
        async with httpx.AsyncClient(verify=str(ca)) as client:
            if kill:
                while True:  # kill the helper once a third is out
                    await asyncio.sleep(0.2)
                    if (await client.get(stats_url)).json()["delivered"] >= args.subscriptions // 3:
                        assert processes[1].pid is not None
                        os.kill(processes[1].pid, signal.SIGKILL)
                        killed_at = (await client.get(stats_url)).json()["delivered"]
                        break
            figures = [await _result(results, processes)]
            owner = figures[0]
            stop.set()
            for _ in range(daemons - 1 - int(kill)):
                figures.append(await _result(results, processes))
            stats = (await client.get(stats_url)).json()
        pg_cpu = postgres_cpu() - pg_cpu
        after = await table_figures(url)
        counts = await ledger_counts(url, run_folder)
        delivered = stats["delivered"]
        cpu = sum(f["cpu"] for f in figures)
        return {
            "daemons": daemons,
            "client": kind,
            "subscriptions": args.subscriptions,
            "delivered": delivered,
            "distinct": stats["distinct"],
            "duplicates": stats["duplicates"],
            "bad": stats["bad"],
            "window": stats["seconds"],
            "per_second": delivered / max(stats["seconds"], 1e-9),
            "send_seconds": owner["seconds"],
            "cpu_ms": 1000 * cpu / max(1, delivered),
            "cpu_each": [round(1000 * f["cpu"] / max(1, delivered), 3) for f in figures],
            "kernel_ms": 1000 * sum(f["kernel"] for f in figures) / max(1, delivered),
            "service_cpu_ms": 1000 * stats["cpu"] / max(1, stats["requests"]),
            "decrypted": stats["decrypted"],
            "postgres_cpu_ms": 1000 * pg_cpu / max(1, delivered) if "postgresql" in url else None,
            "rows_per_push": (after.get("fanout_batches_writes", 0) - before.get("fanout_batches_writes", 0))
            / max(1, delivered),
            "subscription_writes": (
                after.get("webpush_subscriptions_writes", 0) - before.get("webpush_subscriptions_writes", 0)
            )
            / max(1, delivered),
            "store_bytes": after.get("fanout_batches_bytes", 0)
            + after.get("fanout_broadcasts_bytes", 0)
            - before.get("fanout_batches_bytes", 0)
            - before.get("fanout_broadcasts_bytes", 0),
            "signed": sum(f["signed"] for f in figures),
            "tokens_seen": stats["tokens_verified"],
            "counts": counts,
            "killed_at": killed_at,
            "note": owner["note"],
            "load": load,
        }
    finally:
        for p in processes:
            if p.is_alive():
                p.terminate()
            p.join(5)
        service.terminate()
        service.join(5)
        await drop_database(db_name)


async def _result(results: Any, processes: list[Any]) -> dict[str, Any]:
    """The next daemon's figures; RuntimeError when a daemon died without giving them."""
    import queue

    while True:
        try:
            return dict(await asyncio.to_thread(results.get, True, 1.0))
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0, -signal.SIGKILL)]
            if dead:
                raise RuntimeError(f"a daemon process failed (exit code {dead[0].exitcode})") from None


def report(fig: dict[str, Any], concurrency: int) -> bool:
    ok = fig["duplicates"] == 0 and fig["bad"] == 0
    kill = fig["killed_at"] is not None
    uncertain = fig["counts"].get("uncertain", 0)
    if kill:
        ok &= uncertain <= concurrency and fig["distinct"] + uncertain >= fig["subscriptions"]
    else:
        ok &= fig["distinct"] == fig["subscriptions"]
    title = f"{fig['daemons']} daemon(s), client {fig['client']}" + (
        ", helper killed mid-broadcast" if kill else ""
    )
    print(f"{title}: {'OK' if ok else 'FAIL'}")
    print(f"  subscriptions      {fig['subscriptions']:,}   (load average at start {fig['load']:.2f})")
    print(
        f"  delivered          {fig['delivered']:,} to {fig['distinct']:,} endpoints; "
        f"duplicates {fig['duplicates']}"
    )
    print(f"  ledger             {fig['counts']}")
    print(
        f"  pushes/s           {fig['per_second']:,.0f} over {fig['window']:.1f} s "
        f"(send() took {fig['send_seconds']:.1f} s)"
    )
    print(
        f"  siar CPU/push      {fig['cpu_ms']:.3f} ms (per daemon: {fig['cpu_each']}; "
        f"in the kernel: {fig['kernel_ms']:.3f} ms)"
    )
    print(
        f"  service CPU/push   {fig['service_cpu_ms']:.3f} ms "
        f"({fig['decrypted']:,} bodies decrypted, the rest checked for their aes128gcm header)"
    )
    if fig["postgres_cpu_ms"] is not None:
        print(f"  PostgreSQL CPU/push {fig['postgres_cpu_ms']:.3f} ms (all its processes, same machine)")
    print(
        f"  rows written/push  {fig['rows_per_push']:.4f} ledger, "
        f"{fig['subscription_writes']:.4f} subscriptions (last_push_at once a week, failure counts)"
    )
    print(
        f"  store growth       {fig['store_bytes'] / 1e6:.2f} MB "
        f"({fig['store_bytes'] / max(1, fig['subscriptions']):.2f} B/subscription)"
    )
    print(f"  VAPID signatures   {fig['signed']} (distinct tokens the service saw: {fig['tokens_seen']})")
    if kill:
        print(
            f"  killed at          {fig['killed_at']:,} delivered; "
            f"uncertain {uncertain} (<= concurrency {concurrency})"
        )
    print(f"  receipt            {fig['note']}", flush=True)
    return ok


# --- the ledgers alone ------------------------------------------------------------------------


async def compare_ledgers(args: argparse.Namespace, folder: Path) -> None:
    """Per-recipient rows vs batches: the same N instant deliveries, concurrency as configured."""
    from bot.fanout import Broadcaster, RecipientOutcome
    from bot.fanout_batches import BatchWorker
    from bot.store import Store

    n = args.subscriptions
    clock = lambda: datetime.now(UTC)  # noqa: E731
    ids = list(range(1, n + 1))

    async def deliver(r: int) -> RecipientOutcome:
        await asyncio.sleep(0)
        return RecipientOutcome(r, "sent")

    for kind in ("rows", "batches"):
        url, name = await fresh_database(args.store, f"ledger_{kind}")
        store = Store(url, folder)
        await store.migrate()
        before = await table_figures(url)
        cpu, t = time.process_time(), time.monotonic()
        if kind == "rows":
            b = Broadcaster(
                store.fanout, "push", clock, concurrency=args.concurrency, batch_size=args.batch_size
            )

            async def audience() -> list[int]:
                return ids

            result = await b.run("siar-1", audience, deliver)
        else:
            w = BatchWorker(
                __import__("bot.fanout_batches", fromlist=["BatchLedger"]).BatchLedger(store.db),
                "push",
                clock,
                "bench",
                concurrency=args.concurrency,
                batch_size=args.batch_size,
            )

            async def prepare(_: Any) -> Any:
                return deliver

            async def audience() -> list[int]:
                return ids

            result = await w.run("siar-1", audience, b"{}", prepare)
        cpu, elapsed = time.process_time() - cpu, time.monotonic() - t
        after = await table_figures(url)
        table = "fanout" if kind == "rows" else "fanout_batches"
        writes = after[f"{table}_writes"] - before[f"{table}_writes"]
        size = sum(
            after[f"{t}_bytes"] - before[f"{t}_bytes"]
            for t in ("fanout", "fanout_batches", "fanout_broadcasts")
        )
        await store.close()
        await drop_database(name)
        print(
            f"  {kind:8} {n:,} recipients: {result.counts.get('sent', 0):,} sent, {n / elapsed:,.0f}/s, "
            f"{1000 * cpu / n:.3f} ms CPU each, {writes / n:.4f} rows written each "
            f"({writes:,} row writes), store +{size / 1e6:.1f} MB ({size / n:.1f} B each)",
            flush=True,
        )


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="postgresql+asyncpg://postgres@127.0.0.1:5432/")
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--daemons", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--client",
        nargs="+",
        choices=("lean", "aiohttp", "http2"),
        default=["lean"],
        help="the channel's push client (several: side by side); http2 = httpx + h2 against h2",
    )
    parser.add_argument(
        "--warm", action="store_true", help="subscriptions pushed to an hour ago (no last_push_at writes)"
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the daemons' event loop"
    )
    parser.add_argument(
        "--verify-every", type=int, default=50, help="the push service decrypts one body in this many"
    )
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--lease", type=float, default=10.0, help="seconds (the channel's `lease`)")
    parser.add_argument("--kill", action="store_true", help="2 daemons, the helper killed mid-way")
    parser.add_argument("--ledgers", action="store_true", help="compare the progress records only")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if args.ledgers:
            await compare_ledgers(args, Path(tmp))
            return 0
        figures = []
        for daemons in [2] if args.kill else args.daemons:
            for client in args.client:
                fig = await run(args, daemons, Path(tmp), client, kill=args.kill)
                ok &= report(fig, args.concurrency)
                figures.append(fig)
        if len(figures) > 1:
            print("\nside by side:")
            print("  client   daemons  pushes/s  siar CPU ms/push  service CPU ms/push  load")
            for f in figures:
                print(
                    f"  {f['client']:8} {f['daemons']:7}  {f['per_second']:8,.0f}  {f['cpu_ms']:16.3f}"
                    f"  {f['service_cpu_ms']:19.3f}  {f['load']:.2f}"
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
