"""Benchmark: a backfill under a rate limit against the ideal schedule (issue #24).

    .venv/bin/python -m tests.benchmarks.rate_limit [--entries 20000] [--limit 60:60]
                                                    [--limit 5:1] [--dsn postgresql://...]

For each `--limit L:W` (L requests per sliding W seconds, the simulator's `rate_limit_per_minute`
and `rate_limit_window`, without `Retry-After` as Kantata sends none, api-notes §10) it backfills
`--entries` simulator entries with default settings into a fresh database twice: a first run
(nothing known about the limit) and a second run, as a restarted process of the same
installation would (a fresh mirror, the learned ceiling kept in `syncd.request_budget`), each
after the limiter has forgotten the previous run. Prints per run: wall seconds, the requests
Kantata admitted (R) and refused (429), and the ratio to two ideal schedules:

- *stated* (issue #24): L at once, then one every W/L: (R − L)·W/L seconds. A token bucket of
  L tokens refilled at L/W allows it;
- *feasible*: what a sliding log of L per W allows at best (the simulator's limiter): request
  i + L starts at least W after request i, so R requests take ⌊(R − 1)/L⌋·W seconds. Under a
  sliding log the stated schedule is refused from its (L + 1)-th request on.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from syncd import logs, migrate, pull
from syncd.app import open_deps
from syncd.pgserver import TempPostgres
from syncd.settings import Settings
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator

TOKEN = "bench-rate-limit-token-0123456789"


def ideal_seconds(requests: int, limit: int, window: float) -> tuple[float, float]:
    """(stated, feasible) ideal seconds for `requests` admitted requests under `limit` per
    sliding `window` seconds (see the module docstring)."""
    stated = max(0, requests - limit) * window / limit
    feasible = ((requests - 1) // limit) * window if requests else 0.0
    return stated, feasible


async def _fresh_db(server: str, name: str) -> str:
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = server.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    return dsn


async def _learned(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('syncd.request_budget')") is None:
            return []  # before issue #24 nothing was kept
        return await conn.fetch("SELECT * FROM syncd.request_budget")
    finally:
        await conn.close()


async def _keep(dsn: str, rows: list[asyncpg.Record]) -> None:
    if not rows:
        return
    conn = await asyncpg.connect(dsn)
    try:
        cols = list(rows[0].keys())
        await conn.executemany(
            f"INSERT INTO syncd.request_budget ({', '.join(cols)}) VALUES "
            f"({', '.join(f'${i + 1}' for i in range(len(cols)))})",
            [tuple(r.values()) for r in rows])
    finally:
        await conn.close()


async def one(server: str, url: str, sim: Simulator, limit: int, window: float,
              run: int, keep: list[asyncpg.Record]) -> dict[str, Any]:
    """One backfill into a fresh database seeded with `keep` (the learned rows)."""
    dsn = await _fresh_db(server, f"bench_rate_{run}")
    await _keep(dsn, keep)
    await asyncio.sleep(window)  # the limiter forgets the previous run's requests
    sim.set_faults({"rate_limit_per_minute": limit, "rate_limit_window": window})
    sim.clear_requests()
    settings = Settings(database_url=dsn, kantata_base_url=url, kantata_token=TOKEN,
                        kantata_allow_insecure_loopback=True, log_level="WARNING")
    async with open_deps(settings) as deps:
        t0 = time.perf_counter()
        stats = await pull.sync_once(deps)
        wall = time.perf_counter() - t0
    assert not stats.errors, stats.errors
    statuses = [r["status"] for r in sim.requests]
    admitted = sum(1 for s in statuses if s != 429)
    refused = len(statuses) - admitted
    stated, feasible = ideal_seconds(admitted, limit, window)
    return {"wall": wall, "admitted": admitted, "refused": refused, "stated": stated,
            "feasible": feasible, "learned": await _learned(dsn)}


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--entries", type=int, default=20_000, help="simulator entries")
    ap.add_argument("--limit", action="append", metavar="L:W",
                    help="L requests per sliding W seconds (repeatable; default 60:60 and 5:1)")
    ap.add_argument("--runs", type=int, default=2, help="runs per limit (the 2nd keeps the "
                                                        "learned ceiling)")
    ap.add_argument("--dsn", help="a PostgreSQL server (default: a throwaway one)")
    args = ap.parse_args(argv)
    limits = [(int(a), float(b)) for a, b in
              (s.split(":") for s in (args.limit or ["60:60", "5:1"]))]
    logs.configure("WARNING", "json")
    pg = None
    server = args.dsn
    if server is None:
        tmp = Path(tempfile.mkdtemp(prefix="syncd-bench-rate-"))
        tmp.chmod(0o755)
        pg = TempPostgres(tmp / "pg").start()
        server = pg.dsn
    rows = []
    try:
        sim = Simulator(SimConfig(token=TOKEN, entries=args.entries, seed=1, lock_date=None))
        async with running_simulator(sim) as url:
            n = 0
            for limit, window in limits:
                keep: list[asyncpg.Record] = []
                for run in range(1, args.runs + 1):
                    n += 1
                    r = await one(server, url, sim, limit, window, n, keep)
                    keep = r["learned"]
                    rows.append((limit, window, run, r))
    finally:
        if pg is not None:
            pg.stop(remove=True)
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"## Backfill of {args.entries:,} entries under a sliding rate limit, "
          f"default settings ({datetime.now(UTC).date().isoformat()})\n")
    print("| limit | run | wall s | admitted R | 429s | stated ideal s | ratio | "
          "feasible ideal s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for limit, window, run, r in rows:
        def ratio(ideal: float, wall: float = r["wall"]) -> str:
            return f"{wall / ideal:.2f}" if ideal > 0 else "–"
        print(f"| {limit} per {window:g} s | {run} | {r['wall']:.1f} | {r['admitted']} | "
              f"{r['refused']} | {r['stated']:.1f} | {ratio(r['stated'])} | "
              f"{r['feasible']:.1f} | {ratio(r['feasible'])} |")
    return 0 if all(math.isfinite(r["wall"]) for *_, r in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
