"""Benchmark: what history mode costs in storage and in the incremental pass (issue #13).

    .venv/bin/python -m tests.benchmarks.history [--entries 200000] [--dsn postgresql://...]

Backfills `--entries` simulator entries in process, then edits every one of them in the
simulator (new notes and minutes) and pulls the edits: each edit replaces a version, so the
history then holds one row per entry. Prints the incremental pass's time with history on and
off (same edits, fresh database each) and the size of kantata.time_entry_history (table,
indexes, TOAST) scaled to 1M versions. Backfill throughput and peak RSS with history on and off
are in the main benchmark (`python -m tests.benchmarks.run`, rows `syncd` and
`syncd_history_off`): the backfill writes no history rows (the current version is the mirror
row).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import asyncpg

from syncd import logs, migrate, pull
from syncd.app import open_deps
from syncd.pgserver import TempPostgres
from syncd.settings import Settings
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator

TOKEN = "bench-history-token-0123456789"


async def one(server: str, url: str, sim: Simulator, history: bool, round_: int
              ) -> dict[str, float]:
    admin = await asyncpg.connect(server)
    try:
        await admin.execute("DROP DATABASE IF EXISTS bench_history WITH (FORCE)")
        await admin.execute("CREATE DATABASE bench_history")
    finally:
        await admin.close()
    dsn = server.rsplit("/", 1)[0] + "/bench_history"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.apply(conn)
        settings = Settings(database_url=dsn, kantata_base_url=url, kantata_token=TOKEN,
                            kantata_allow_insecure_loopback=True, backfill_start=date(2015, 1, 1),
                            history=history, log_level="WARNING", overlap=1)
        async with open_deps(settings) as deps:
            t0 = time.perf_counter()
            await pull.sync_once(deps)
            backfill = time.perf_counter() - t0
            for e in sim.list_entries():
                sim.edit_entry(int(e["id"]), {"notes": f"edit {round_} {e['id']}",
                                              "time_in_minutes": round_ + 1})
            t0 = time.perf_counter()
            await pull.sync_once(deps)
            incremental = time.perf_counter() - t0
        rows = await conn.fetchval("SELECT count(*) FROM kantata.time_entry_history")
        size = await conn.fetchval(
            "SELECT pg_total_relation_size('kantata.time_entry_history')")
    finally:
        await conn.close()
    return {"backfill_s": backfill, "incremental_s": incremental, "history_rows": rows,
            "history_bytes": size}


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--entries", type=int, default=200_000, help="simulator entries")
    ap.add_argument("--dsn", help="a PostgreSQL server (default: a throwaway one)")
    args = ap.parse_args(argv)
    logs.configure("WARNING", "json")
    pg = None
    server = args.dsn
    if server is None:
        tmp = Path(tempfile.mkdtemp(prefix="syncd-bench-hist-"))
        tmp.chmod(0o755)
        pg = TempPostgres(tmp / "pg").start()
        server = pg.dsn
    try:
        sim = Simulator(SimConfig(token=TOKEN, entries=args.entries, seed=1, lock_date=None,
                                  rate_limit_per_minute=None))
        results = []
        async with running_simulator(sim) as url:
            for n, history in enumerate((False, True, False, True)):
                results.append((history, await one(server, url, sim, history, n)))
    finally:
        if pg is not None:
            pg.stop(remove=True)
            shutil.rmtree(tmp, ignore_errors=True)  # its parent too, not only tmp/pg
    print(f"## History mode, {args.entries:,} entries, each edited once per run\n")
    print("| history | backfill s | incremental pass over every entry edited, s | "
          "history rows | history MiB | MiB per 1M versions |")
    print("|---|---|---|---|---|---|")
    for history, r in results:
        per_m = r["history_bytes"] / r["history_rows"] * 1e6 / 2**20 if r["history_rows"] else 0
        print(f"| {'on' if history else 'off'} | {r['backfill_s']:.1f} | "
              f"{r['incremental_s']:.1f} | {r['history_rows']:,} | "
              f"{r['history_bytes'] / 2**20:.1f} | {per_m:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
