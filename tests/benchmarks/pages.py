"""Page size (issue #24): a first backfill's Kantata requests and syncd's peak RSS with pages of
5,000 where Kantata serves them, against a server that clamps to its documented 200, and with
SYNCD_PER_PAGE=200, at default settings otherwise.

    .venv/bin/python -m tests.benchmarks.pages [--entries 200000]

One throwaway PostgreSQL and one simulator process per server kind; each run is `syncd sync`
(a backfill plus the incremental pass) in a fresh migrated database, as a
child process measured with `os.wait4` (wall, CPU) and VmHWM (peak RSS). Requests are what the
simulator logged. Prints one markdown row per run.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

import orjson

from syncd.pgserver import TempPostgres
from tests.benchmarks.procs import SimProcess, run_child
from tests.benchmarks.run import Databases, syncd_env

PY = sys.executable


def _requests(sim: SimProcess) -> dict[str, int]:
    log = orjson.loads(sim.control("GET", "/requests"))["requests"]
    lists = [r for r in log if r["method"] == "GET"]
    return {"requests": len(log),
            "list pages": sum(1 for r in lists if "only" not in r["query"]
                              and r["query"].get("per_page") != "1"),
            "side-loads": sum(1 for r in lists if "only" in r["query"])}


def run(entries: int, work: Path) -> list[dict[str, object]]:
    pg = TempPostgres(work / "pg").start()
    dbs = Databases(pg)
    rows: list[dict[str, object]] = []
    try:
        for served, per_page in ((5000, None), (200, None), (200, "200")):
            sim = SimProcess(entries=entries, seed=1, token=secrets.token_hex(8),
                             log_dir=work, max_per_page=served)
            try:
                sim.wait_ready()
                dsn = dbs.create(f"pages_{served}_{per_page or 'dflt'}")  # migrated
                extra = {"SYNCD_PER_PAGE": per_page} if per_page else {}
                env = syncd_env(dsn, sim, **extra)
                sim.control("DELETE", "/requests")
                res = run_child([PY, "-m", "syncd", "sync"], env=env, log_dir=work,
                                name=f"sync-{served}-{per_page}")
                assert res.code == 0, res.stderr[-2000:]
                rows.append({"server serves": served,
                             "SYNCD_PER_PAGE": per_page or "5000 (default)",
                             **_requests(sim), "wall s": round(res.wall, 1),
                             "peak RSS MB": round(res.peak_rss_mb, 1)})
            finally:
                sim.stop()
    finally:
        pg.stop(remove=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=200_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncd-bench-pages-") as d:
        Path(d).chmod(0o755)  # PostgreSQL runs as its own user (syncd.pgserver)
        rows = run(args.entries, Path(d))
    cols = list(rows[0])
    print(f"\n{args.entries:,} entries\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
