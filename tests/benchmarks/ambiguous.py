"""Benchmark: how long a create whose answer was lost takes to reach `done` (issue #12).

    .venv/bin/python -m tests.benchmarks.ambiguous [--creates 250] [--lost 0.4] [--repeat 5]
                                                   [--dsn postgresql://...] [--out f.json]

250 outbox creates are pushed to an in-process simulator that applies every request and then
drops the connection without an answer at `--lost` probability (`lost_response_rate`, the
create landed but syncd cannot know). Two policies, same seeds, same settings otherwise:

* before: the first lookup of a lost create waits SETTLE_SECONDS (180 s, Kantata's request
  limit), and the push runs again at its next poll (SYNCD_PUSH_INTERVAL, 30 s);
* after (the code): the lookup follows LOOKUP_SECONDS later, and the daemon wakes the push when
  the earliest pending row falls due; only a create not found yet waits out the 180 s before
  the final lookup and the re-send.

Waiting is simulated by moving the outbox's clock (`push_once(now=...)`) instead of sleeping,
so a 3-minute wait costs no time; real processing time is kept (virtual now = real now + the
waits skipped). Latency = the row's `done_at` minus its enqueue instant. Every run ends with a
duplicate check through the public API (each correlation key on exactly one entry).
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from syncd import migrate, push
from syncd.app import open_deps
from syncd.pgserver import TempPostgres
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator
from tests.integration.conftest import TOKEN, make_settings
from tests.integration.outbox_helpers import new_entry, syncd_refs

POLICIES = ("before", "after")


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


async def one_run(dsn: str, policy: str, creates: int, lost: float, seed: int
                  ) -> dict[str, Any]:
    """Push `creates` creates under `policy` on a fresh schema; latencies in seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS kantata CASCADE; "
                           "DROP SCHEMA IF EXISTS syncd CASCADE")
        await migrate.apply(conn)
    finally:
        await conn.close()
    sim = Simulator(SimConfig(token=TOKEN, entries=50, seed=seed, lock_date=None))
    lookup = push.SETTLE_SECONDS if policy == "before" else push.LOOKUP_SECONDS
    saved = push.LOOKUP_SECONDS
    push.LOOKUP_SECONDS = lookup
    offset = 0.0

    def vnow() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=offset)

    try:
        async with running_simulator(sim) as url:
            # default push settings; the client's own back-off kept short (real sleeps)
            settings = make_settings(dsn, url, backoff_base=1.0, backoff_cap=60.0)
            interval = settings.push_interval
            async with open_deps(settings) as deps:
                async with deps.pool.acquire() as conn:
                    ids = [await conn.fetchval(
                        "INSERT INTO syncd.outbox (op, payload) VALUES ('create', $1::jsonb) "
                        "RETURNING id", orjson.dumps(new_entry(sim, i)).decode())
                        for i in range(creates)]
                enqueued = vnow()
                sim.set_faults({"lost_response_rate": lost, "seed": seed})
                started, drains = time.monotonic(), 0
                while True:
                    report = await push.push_once(deps, owner="bench", now=vnow())
                    drains += 1
                    open_rows = (report.counts_after.get("pending", 0)
                                 + report.counts_after.get("in_flight", 0))
                    if not open_rows or drains > 10_000:
                        break
                    due = report.next_due_seconds or 0.0
                    since = (vnow() - enqueued).total_seconds()
                    next_poll = interval - since % interval  # the fallback poll
                    if policy == "after" and due < interval \
                            and (due > 0 or report.claimed):
                        wait = min(max(due, 0.5), next_poll)  # daemon._plan_push
                    else:
                        wait = next_poll
                        while wait < due:
                            wait += interval
                    offset += wait
                wall = time.monotonic() - started
                sim.clear_faults()
                async with deps.pool.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT id, status, result, done_at, correlation_key::text AS k "
                        "FROM syncd.outbox WHERE id = ANY($1::bigint[])", ids)
        refs_ok = True
        async with running_simulator(sim) as url:
            refs = await syncd_refs(url)
            refs_ok = all(len(refs.get(r["k"], [])) == 1 for r in rows) \
                and sum(len(v) for v in refs.values()) == creates
    finally:
        push.LOOKUP_SECONDS = saved
    lat = [(r["done_at"] - enqueued).total_seconds() for r in rows if r["status"] == "done"]
    lat_lost = [(r["done_at"] - enqueued).total_seconds() for r in rows
                if r["result"] == "found_existing"]
    results: dict[str, int] = {}
    for r in rows:
        results[r["result"] or r["status"]] = results.get(r["result"] or r["status"], 0) + 1
    lost_rows = results.get("found_existing", 0)
    return {"policy": policy, "seed": seed, "latencies": lat, "latencies_lost": lat_lost,
            "done": len(lat),
            "results": results, "lost_answers_resolved": lost_rows,
            "duplicates_free": refs_ok, "drains": drains, "wall_s": round(wall, 2)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in runs for x in r["latencies"]]
    lost = [x for r in runs for x in r["latencies_lost"]] or [0.0]
    return {"rows": len(lat), "median_s": round(statistics.median(lat), 1),
            "p95_s": round(pct(lat, 0.95), 1), "max_s": round(max(lat), 1),
            "lost_median_s": round(statistics.median(lost), 1),
            "lost_p95_s": round(pct(lost, 0.95), 1),
            "found_existing": sum(r["lost_answers_resolved"] for r in runs),
            "duplicates_free": all(r["duplicates_free"] for r in runs),
            "wall_s": round(sum(r["wall_s"] for r in runs), 1)}


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--creates", type=int, default=250, help="outbox creates per run")
    ap.add_argument("--lost", type=float, default=0.4, help="share of answers lost")
    ap.add_argument("--repeat", type=int, default=5, help="runs per policy (seeds 1..N)")
    ap.add_argument("--dsn", help="an existing database (default: a throwaway PostgreSQL)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    pg = None
    dsn = args.dsn
    if dsn is None:
        tmp = Path(tempfile.mkdtemp(prefix="syncd-bench-amb-"))
        tmp.chmod(0o755)  # the server runs as `postgres` when we are root
        pg = TempPostgres(tmp / "pg").start()
        dsn = pg.dsn
    try:
        runs = {p: [await one_run(dsn, p, args.creates, args.lost, seed)
                    for seed in range(1, args.repeat + 1)] for p in POLICIES}
    finally:
        if pg is not None:
            pg.stop(remove=True)
            shutil.rmtree(tmp, ignore_errors=True)  # its parent too, not only tmp/pg
    summary = {p: summarise(r) for p, r in runs.items()}
    print(f"## Lost-answer creates: {args.creates} creates x {args.repeat} runs, "
          f"{args.lost:.0%} of answers lost (enqueue -> done)\n")
    print("| policy | rows done | median s | p95 s | max s | answer lost (found) | "
          "their median s | their p95 s | duplicates |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p, s in summary.items():
        print(f"| {p} | {s['rows']} | {s['median_s']} | {s['p95_s']} | {s['max_s']} | "
              f"{s['found_existing']} | {s['lost_median_s']} | {s['lost_p95_s']} | "
              f"{'none' if s['duplicates_free'] else 'FOUND'} |")
    if args.out:
        args.out.write_bytes(orjson.dumps({"config": vars(args) | {"out": str(args.out)},
                                           "summary": summary, "runs": runs},
                                          default=str, option=orjson.OPT_INDENT_2))
    ok = all(s["duplicates_free"] and s["rows"] == args.creates * args.repeat
             for s in summary.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
