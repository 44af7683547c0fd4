"""The benchmark: syncd's backfill against the plain-listing reference client (issue #16),
the reference clients between them (one difference each), and dlt, plus syncd's memory,
idle-cycle, push and reconciliation costs, all in one run on one machine.

    .venv/bin/python -m tests.benchmarks.run [--entries 200000] [--full] [--repeat 3]
                                             [--smoke] [--no-dlt] [--out results.json]

One throwaway PostgreSQL (fsync off, `pg_stat_statements` preloaded) and one simulator process
seeded with `--entries` entries serve every measured run; each run gets a fresh migrated
database. Contenders run as child processes, so their CPU seconds (`os.wait4`) and peak RSS
(VmHWM from /proc, polled) are their own; the simulator's and PostgreSQL's CPU seconds over
the same interval are read from /proc. Repetitions are interleaved (plain, …, syncd, dlt,
plain, …) after unmeasured warm-up passes that render every entry in the simulator. The median
of each figure is reported with min and max, then syncd's difference from the reference is
accounted for item by item (`accounting`). Prints markdown tables and writes the figures as
JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from syncd import migrate
from syncd.pgserver import TempPostgres
from tests.benchmarks.procs import ChildResult, SimProcess, postgres_cpu_seconds, run_child

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "benchmarks" / "results"
PY = sys.executable
SEED = 1
LOOKAHEAD_DAYS = 31  # syncd's default `lookahead_days`: the backfill reads up to today + 31
PUSH_CREATES, PUSH_UPDATES, PUSH_DELETES = 10_000, 2_000, 2_000
SMOKE_PUSH = (100, 20, 20)
#: What asyncpg's pool sends in one round trip when a connection is released
#: (`Connection.reset()`); pg_stat_statements counts it as four statements.
POOL_RESET = {"SELECT pg_advisory_unlock_all()", "CLOSE ALL", "UNLISTEN *", "RESET ALL"}


# ------------------------------------------------------------------ machine and databases
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release()}


class Databases:
    """Fresh databases on the one throwaway server."""

    def __init__(self, pg: TempPostgres) -> None:
        self.pg = pg
        self.server_dsn = pg.dsn

    def dsn(self, name: str) -> str:
        return self.server_dsn.rsplit("/", 1)[0] + "/" + name

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self, name: str) -> str:
        """CREATE DATABASE `name` and apply every migration; return its DSN."""
        async def go() -> None:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await self._admin(f'CREATE DATABASE "{name}"')
            conn = await asyncpg.connect(self.dsn(name))
            try:
                await migrate.apply(conn)
            finally:
                await conn.close()
        asyncio.run(go())
        return self.dsn(name)

    def drop(self, name: str) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def count(self, name: str, table: str) -> int:
        async def go() -> int:
            conn = await asyncpg.connect(self.dsn(name))
            try:
                return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            except asyncpg.UndefinedTableError:
                return 0
            finally:
                await conn.close()
        return asyncio.run(go())

    def postmaster_pid(self) -> int:
        return int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])


# ------------------------------------------------------------------ contenders
def syncd_env(dsn: str, sim: SimProcess, since: date | None = None,
              **extra: str) -> dict[str, str]:
    """syncd's environment: defaults except where to connect (and the backfill start if
    given; unset, it is syncd's default, 10 years back)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update({"SYNCD_DATABASE_URL": dsn, "SYNCD_KANTATA_BASE_URL": sim.base_url,
                "SYNCD_KANTATA_TOKEN": sim.token, "SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK": "true",
                **extra})
    if since is not None:
        env["SYNCD_BACKFILL_START"] = since.isoformat()
    return env


class Contender:
    """One backfill contender: how to run it and where its rows land."""

    def __init__(self, name: str, label: str, table: str,
                 argv: Callable[[str, Path], tuple[list[str], dict[str, str] | None]]) -> None:
        self.name, self.label, self.table, self.argv = name, label, table, argv


#: The reference clients, from the plain listing (the reference of issue #16) to the client that
#: asks exactly what syncd asks; each row adds one difference (tests/benchmarks/bare.py).
REFERENCES = (
    ("pg", "plain listing, PostgreSQL parses each page → own table (**reference**)",
     ("--parse", "pg"), "bench_plain.time_entries"),
    # the same client into the mirror's own table (its BI indexes and triggers, kept while it
    # loads): what the reference costs with the schema syncd writes (issue #26's decision)
    ("pg_mirror", "plain listing, PostgreSQL parses each page → kantata.time_entries",
     ("--parse", "pg", "--table", "mirror"), "kantata.time_entries"),
    ("plain", "plain listing, Python decodes (orjson, text arrays) → own table", (),
     "bench_plain.time_entries"),
    ("plain_mirror", "plain listing → kantata.time_entries", ("--table", "mirror"),
     "kantata.time_entries"),
    ("plain_include", "… + side-loads on every page", ("--table", "mirror", "--include"),
     "kantata.time_entries"),
    ("bare", "… + monthly windows (syncd's requests, bare client)",
     ("--table", "mirror", "--include", "--listing", "windows"), "kantata.time_entries"),
)


def contenders(sim: SimProcess, since: date, until: date, *, dlt: bool,
               former_ceiling: bool, history_off: bool = False,
               indexes_kept: bool = False) -> list[Contender]:
    """Every backfill contender in the order they run in each repetition: the reference
    clients, syncd with its defaults (the backfill start too: 10 years back), then the
    labelled non-default syncd rows and dlt."""
    def ref(args: tuple[str, ...]) -> Callable[[str, Path], tuple[list[str], None]]:
        return lambda dsn, work: ([PY, "-m", "tests.benchmarks.bare", "--base-url",
                                   sim.base_url, "--token", sim.token, "--dsn", dsn,
                                   "--since", since.isoformat(), "--until", until.isoformat(),
                                   *args], None)

    def syncd_row(name: str, label: str, **env: str) -> Contender:
        """`syncd sync` into the mirror with its defaults but `env`."""
        return Contender(name, label, "kantata.time_entries",
                         lambda dsn, work: ([PY, "-m", "syncd", "sync"],
                                            syncd_env(dsn, sim, **env)))

    out = [Contender(name, label, table, ref(args)) for name, label, args, table in REFERENCES]
    if former_ceiling:
        out.append(syncd_row(
            "syncd_ceiling_9000",
            "syncd sync, the former default ceiling (SYNCD_RATE_LIMIT_PER_MINUTE=9000)",
            SYNCD_RATE_LIMIT_PER_MINUTE="9000"))
    out.append(syncd_row("syncd", "syncd sync (default settings)"))
    if indexes_kept:
        out.append(syncd_row(
            "syncd_indexes_kept",
            "syncd sync, indexes kept while loading (SYNCD_DEFER_INDEXES=off)",
            SYNCD_DEFER_INDEXES="off"))
    if history_off:
        out.append(syncd_row("syncd_history_off",
                             "syncd sync, history mode off (SYNCD_HISTORY=off)",
                             SYNCD_HISTORY="off"))
    if dlt:
        def dlt_argv(dsn: str, work: Path) -> tuple[list[str], dict[str, str] | None]:
            env = {**os.environ, "RUNTIME__DLTHUB_TELEMETRY": "false"}
            # dlt's postgres credentials insist on a password; trust auth ignores it
            return ([PY, "-m", "tests.benchmarks.dlt_run", "--base-url", sim.base_url,
                     "--token", sim.token, "--dsn", dsn.replace("postgres@", "postgres:x@"),
                     "--work", str(work)], env)
        out.append(Contender("dlt", "dlt rest_api → postgres (merge on id)",
                             "dlt_kantata.time_entries", dlt_argv))
    return out


def measure(c: Contender, dbs: Databases, sim: SimProcess, work: Path, tag: str,
            *, keep: bool = False) -> dict[str, Any]:
    """Run contender `c` once into a fresh database; return its figures."""
    db = f"bench_{c.name}_{tag}"
    dsn = dbs.create(db)
    run_dir = work / f"{c.name}_{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    argv, env = c.argv(dsn, run_dir)
    sim.control("DELETE", "/requests")
    pm = dbs.postmaster_pid()
    sim_cpu0, pg_cpu0 = sim.cpu(), postgres_cpu_seconds(pm)
    res: ChildResult = run_child(argv, env=env, cwd=REPO, log_dir=run_dir, name=c.name)
    sim_cpu, pg_cpu = sim.cpu() - sim_cpu0, postgres_cpu_seconds(pm) - pg_cpu0
    requests = len(orjson.loads(sim.control("GET", "/requests"))["requests"])
    rows = dbs.count(db, c.table)
    out = {"wall_s": res.wall, "client_cpu_s": res.cpu, "client_user_s": res.user,
           "client_system_s": res.system, "server_cpu_s": sim_cpu,
           "postgres_cpu_s": pg_cpu, "peak_rss_mb": res.peak_rss_mb, "requests": requests,
           "rows": rows, "rows_per_s": rows / res.wall if res.wall else 0.0,
           "exit_code": res.code, "db": db}
    if res.code != 0:
        out["error"] = (res.stderr.strip() or res.stdout.strip())[-2000:]
    elif res.stdout.startswith("{"):  # a reference client's figures: pages, bytes
        report = orjson.loads(res.stdout.splitlines()[0])
        out.update({"pages": report["pages"], "bytes": report["bytes"]})
    if not keep:
        dbs.drop(db)
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every numeric figure over `runs`."""
    out: dict[str, Any] = {}
    for key in ("wall_s", "rows_per_s", "client_cpu_s", "server_cpu_s", "postgres_cpu_s",
                "peak_rss_mb", "requests", "rows"):
        vals = [r[key] for r in runs if key in r]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


# ------------------------------------------------------------------ in-process syncd jobs
def _settings(dsn: str, sim: SimProcess, since: date) -> Any:
    from syncd.settings import Settings

    return Settings(database_url=dsn, kantata_base_url=sim.base_url, kantata_token=sim.token,
                    kantata_allow_insecure_loopback=True, backfill_start=since,
                    log_level="WARNING")


async def _statements(dbs: Databases, db: str, reset: bool) -> list[dict[str, Any]]:
    """pg_stat_statements rows of database `db` (and reset the counters when asked)."""
    conn = await asyncpg.connect(dbs.server_dsn)
    try:
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return []
        rows = await conn.fetch(
            """SELECT s.calls, s.query FROM pg_stat_statements s
               JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1
               ORDER BY s.calls DESC, s.query""", db)
        return [{"calls": r["calls"], "query": " ".join(r["query"].split())[:160],
                 "pool_reset": " ".join(r["query"].split()) in POOL_RESET} for r in rows]
    finally:
        await conn.close()


def idle_cycle(dbs: Databases, db: str, sim: SimProcess, since: date, work: Path
               ) -> dict[str, Any]:
    """Requests and SQL statements of one incremental cycle with nothing new: in process (the
    daemon's steady state: pool open, second cycle) and as a whole `syncd sync` process. Each
    cycle re-reads `overlap` seconds (default 120) behind the watermark: rows changed in that
    span come back (and are compared, not rewritten), which adds the upsert statements."""
    from syncd import logs, pull
    from syncd.app import open_deps

    logs.configure("WARNING", "json")
    settings = _settings(dbs.dsn(db), sim, since)

    async def in_process() -> dict[str, Any]:
        async with open_deps(settings) as deps:
            # the daemon's steady state: a first cycle fills asyncpg's type cache and prepared
            # statements; the second one is measured
            await pull.sync_once(deps)
            sim.control("DELETE", "/requests")
            await _statements(dbs, db, reset=True)
            t0 = time.perf_counter()
            stats = await pull.sync_once(deps)
            secs = time.perf_counter() - t0
            await asyncio.sleep(0.2)  # let pg_stat_statements see the last statement end
        reqs = orjson.loads(sim.control("GET", "/requests"))["requests"]
        stmts = await _statements(dbs, db, reset=False)
        app = [s for s in stmts if not s["pool_reset"]]
        resets = max((s["calls"] for s in stmts if s["pool_reset"]), default=0)
        return {"requests": len(reqs),
                "request_lines": [f"{r['method']} {r['path']} {r['status']}" for r in reqs],
                "sql_statements": sum(s["calls"] for s in app), "pool_releases": resets,
                "statements": stmts,
                "rows_upserted": stats.rows_upserted, "seconds": secs}

    inproc = asyncio.run(in_process())
    sim.control("DELETE", "/requests")
    asyncio.run(_statements(dbs, db, reset=True))
    res = run_child([PY, "-m", "syncd", "sync"], env=syncd_env(dbs.dsn(db), sim, since),
                    cwd=REPO, log_dir=work, name="idle_sync")
    reqs = orjson.loads(sim.control("GET", "/requests"))["requests"]
    stmts = asyncio.run(_statements(dbs, db, reset=False))
    inproc["process"] = {"requests": len(reqs),
                         "sql_statements": sum(s["calls"] for s in stmts if not s["pool_reset"]),
                         "wall_s": res.wall, "exit_code": res.code, "peak_rss_mb": res.peak_rss_mb}
    return inproc


RECONCILE_DELETIONS = 3  # remote deletions before the second count-first reconciliation


def reconcile_full(dbs: Databases, db: str, sim: SimProcess, since: date, until: date
                   ) -> dict[str, Any]:
    """Reconciliation costs (issue #24), GETs the simulator saw: a full reconciliation
    (`--full`) of the backfilled range, against ceil(n/200); then, counting first, the same
    settled mirror (≤ windows + 2) and the mirror after `RECONCILE_DELETIONS` remote deletions
    in three busy months, one of which also got a new entry (≤ windows + k × (8 + pages of a
    day)). Keys of the full one stay at the top level (`gets`, `windows`, ...)."""
    try:
        from syncd.reconcile_job import reconcile_range
    except ImportError as exc:
        return {"status": "pending", "reason": f"syncd.reconcile_job not available: {exc}"}
    from syncd.app import open_deps

    settings = _settings(dbs.dsn(db), sim, since)

    def gets() -> int:
        reqs = orjson.loads(sim.control("GET", "/requests"))["requests"]
        return sum(1 for r in reqs if r["method"] == "GET")

    async def one(deps: Any, full: bool) -> dict[str, Any]:
        sim.control("DELETE", "/requests")
        t0 = time.perf_counter()
        reports = await reconcile_range(deps, since, until, full=full)
        secs = time.perf_counter() - t0
        modes: dict[str, int] = {}
        for r in reports:
            modes[r.mode] = modes.get(r.mode, 0) + 1
        return {"gets": gets(), "windows": len(reports), "seconds": secs, "modes": modes,
                "errors": [r.error for r in reports if r.error][:5],
                "marked_deleted": sum(r.marked_deleted for r in reports),
                "upserted": sum(r.upserted for r in reports)}

    def delete_some() -> dict[str, Any]:
        """Delete one entry in each of the busiest months (from the 10th on) and create one
        entry in the first of them; the busiest day's pages of those months."""
        entries = orjson.loads(sim.control("GET", "/entries"))["time_entries"]
        months: dict[str, int] = {}
        days: dict[str, int] = {}
        for e in entries:
            months[e["date_performed"][:7]] = months.get(e["date_performed"][:7], 0) + 1
            days[e["date_performed"]] = days.get(e["date_performed"], 0) + 1
        busy = sorted(months, key=lambda m: -months[m])[:RECONCILE_DELETIONS]
        gone = [next(e["id"] for e in entries if e["date_performed"][:7] == m
                     and e["date_performed"][8:] >= "10") for m in busy]
        for i in gone:
            sim.control("DELETE", f"/entries/{i}")
        sim.control("POST", "/entries", orjson.dumps(
            {"date_performed": f"{busy[0]}-20", "time_in_minutes": 30, "notes": "bench"}))
        per_page = int(settings.per_page)
        day_pages = max(math.ceil(n / per_page) for d, n in days.items() if d[:7] in busy)
        return {"deleted": len(gone), "months": busy, "day_pages": day_pages}

    async def go() -> dict[str, Any]:
        async with open_deps(settings) as deps:
            full = await one(deps, True)
            settled = await one(deps, False)
            change = delete_some()
            after = await one(deps, False)
        live = int(orjson.loads(sim.control("GET", "/state"))["entries"])
        return {"status": "ok", **full, "live_entries": live + change["deleted"] - 1,
                "settled": settled, "after_deletions": {**after, **change}}
    return asyncio.run(go())


def steady_hourly(n: int, today: date, span_days: int = 736) -> dict[str, Any]:
    """Requests an hour of a steady `syncd run` with default settings for an account of `n`
    entries performed over the last `span_days` days (736: two years, as the simulator seeds
    them), nothing deleted: a model of the schedule, each term one job's cost as the tests and
    this benchmark measure it.

    - pull: one request per idle cycle, every `SYNCD_PULL_INTERVAL`;
    - reconciliation, counting first: every `SYNCD_RECONCILE_RECENT_INTERVAL` one incremental
      pass and one count request per recent window (ending within
      `SYNCD_RECONCILE_RECENT_DAYS`); every `SYNCD_RECONCILE_OLD_INTERVAL` a pass and one count
      per older window (the default range is 10 years: empty windows are counted too);
    - the safety net: every `SYNCD_RECONCILE_FULL_INTERVAL`, every window read in full:
      ⌈n / per_page⌉ pages plus at most one partial page per window.

    Pages hold what Kantata documents it serves (200 entries, api-notes §3), whatever
    SYNCD_PER_PAGE asks: where Kantata serves more, full reads cost fewer requests.

    `before`: the same schedule with every check a full read (issue #24's starting point)."""
    from syncd.pagination import DOCUMENTED_MAX_PER_PAGE
    from syncd.reconcile import is_recent
    from syncd.settings import Settings
    from syncd.windows import month_windows

    d = {k: f.default for k, f in Settings.model_fields.items()}
    windows = month_windows(date(today.year - 10, today.month, 1),
                            today + timedelta(days=d["lookahead_days"]))
    recent = [w for w in windows if is_recent(w, today, d["reconcile_recent_days"])]
    first = today - timedelta(days=span_days)
    spanned = [w for w in windows if w.end >= first and w.start <= today]  # holding entries
    per_window = n / len(spanned)
    hour = 3600.0
    pull = hour / d["pull_interval"]
    recent_runs = hour / d["reconcile_recent_interval"]
    old_runs = hour / d["reconcile_old_interval"]
    counts = recent_runs * (1 + len(recent)) + old_runs * (1 + len(windows) - len(recent))
    served = min(d["per_page"], DOCUMENTED_MAX_PER_PAGE)
    full_pages = math.ceil(n / served) + len(windows)
    full = full_pages * hour / d["reconcile_full_interval"]

    def pages(ws: list[Any]) -> float:
        return sum(max(1, math.ceil(per_window / served)) if w in spanned else 1
                   for w in ws)

    old = [w for w in windows if w not in recent]
    before = pull + recent_runs * pages(recent) + old_runs * pages(old)
    return {"entries": n, "span_days": span_days, "windows": len(windows), "recent_windows": len(recent),
            "per_page": served, "pull_interval": d["pull_interval"],
            "pull": pull, "counts": counts, "full_reads": full,
            "total": pull + counts + full, "before": before}


def push_outbox(dbs: Databases, db: str, sim: SimProcess, since: date,
                sizes: tuple[int, int, int]) -> dict[str, Any]:
    """Queue creates, updates and deletes in the outbox and drain it with `push_once`: requests
    by method and wall time."""
    try:
        from syncd.push import push_once
    except ImportError as exc:
        return {"status": "pending", "reason": f"syncd.push not available: {exc}"}
    from syncd.app import open_deps

    n_create, n_update, n_delete = sizes
    settings = _settings(dbs.dsn(db), sim, since)

    async def go() -> dict[str, Any]:
        async with open_deps(settings) as deps:
            async with deps.pool.acquire() as conn:
                await conn.execute("DELETE FROM syncd.outbox")
                editable = await conn.fetch(
                    """SELECT id, workspace_id FROM kantata.time_entries
                       WHERE deleted_at IS NULL AND NOT coalesce(is_invoiced, false)
                       ORDER BY id LIMIT $1""", n_update + n_delete)
                if len(editable) < n_update + n_delete:
                    raise RuntimeError("not enough editable entries to push updates/deletes")
                ws = editable[0]["workspace_id"]
                day = datetime.now(UTC).date().isoformat()
                await conn.executemany(
                    "INSERT INTO syncd.outbox (op, payload) VALUES ('create', $1::jsonb)",
                    [(orjson.dumps({"workspace_id": str(ws), "date_performed": day,
                                    "time_in_minutes": 15 + i % 300,
                                    "notes": f"bench create {i}"}).decode(),)
                     for i in range(n_create)])
                await conn.executemany(
                    """INSERT INTO syncd.outbox (op, entry_id, payload)
                       VALUES ('update', $1, $2::jsonb)""",
                    [(r["id"], orjson.dumps({"notes": f"bench update {r['id']}"}).decode())
                     for r in editable[:n_update]])
                await conn.executemany(
                    "INSERT INTO syncd.outbox (op, entry_id) VALUES ('delete', $1)",
                    [(r["id"],) for r in editable[n_update:]])
            sim.control("DELETE", "/requests")
            t0 = time.perf_counter()
            report = await push_once(deps)
            secs = time.perf_counter() - t0
        reqs = orjson.loads(sim.control("GET", "/requests"))["requests"]
        by: dict[str, int] = {}
        for r in reqs:
            key = f"{r['method']} {'/time_entries/{id}' if r['path'].count('/') > 3 else r['path'].rsplit('/', 1)[-1]}"
            by[key] = by.get(key, 0) + 1
        return {"status": "ok", "creates": n_create, "updates": n_update, "deletes": n_delete,
                "requests": len(reqs), "by_request": dict(sorted(by.items())),
                "post": sum(1 for r in reqs if r["method"] == "POST"),
                "put": sum(1 for r in reqs if r["method"] == "PUT"),
                "delete": sum(1 for r in reqs if r["method"] == "DELETE"),
                "get": sum(1 for r in reqs if r["method"] == "GET"),
                "seconds": secs, "outcomes": report.as_dict()["outcomes"],
                "outbox_after": report.counts_after}
    return asyncio.run(go())


def rss_point(n: int, dbs: Databases, work: Path, since: date, until: date,
              repeat: int, shape: int | None = None) -> dict[str, Any]:
    """Peak RSS of `syncd sync` backfilling `n` entries from its own simulator; with `shape`,
    the simulator's workspaces, users and stories are those of a `shape`-entry account, so a
    page carries the same side-loads whatever `n` is (the control for "flat in N")."""
    sim = SimProcess(entries=n, seed=SEED, token="bench-" + secrets.token_hex(6), log_dir=work,
                     reference_entries=shape)
    try:
        sim.wait_ready()
        c = next(c for c in contenders(sim, since, until, dlt=False, former_ceiling=False)
                 if c.name == "syncd")
        runs = [measure(c, dbs, sim, work, f"rss{n}_{i}") for i in range(repeat)]
    finally:
        sim.stop()
    s = summarize(runs)
    return {"entries": n, "peak_rss_mb": s["peak_rss_mb"], "wall_s": s["wall_s"],
            "rows": s["rows"]["median"], "runs": runs, "shape": shape or n}


def extras(res: dict[str, Any], dbs: Databases, db: str, sim: SimProcess, since: date,
           until: date, work: Path, *, smoke: bool, say: Callable[[str], None]) -> None:
    """The idle cycle, a full reconciliation and a push, in that order (the push changes the
    data), on the database of the last syncd backfill."""
    say("idle incremental cycle")
    res["idle_cycle"] = idle_cycle(dbs, db, sim, since, work)
    say("reconciliation: full, counting first, after deletions")
    res["reconcile"] = reconcile_full(dbs, db, sim, since, until)
    today = datetime.now(UTC).date()
    res["steady_hourly"] = [steady_hourly(n, today) for n in (100_000, 1_000_000)] + [
        steady_hourly(100_000, today, span_days=60)]  # issue #24's example account
    say("push through the outbox")
    sizes = SMOKE_PUSH if smoke else (PUSH_CREATES, PUSH_UPDATES, PUSH_DELETES)
    res["push"] = push_outbox(dbs, db, sim, since, sizes)


# ------------------------------------------------------------------ accounting (issue #16)
def _walls(argv: list[str], work: Path, name: str, n: int = 3,
           env: dict[str, str] | None = None) -> float:
    """Median wall seconds of `n` runs of `argv`."""
    out = []
    for i in range(n):
        r = run_child(argv, env=env, cwd=REPO, log_dir=work, name=f"{name}{i}")
        if r.code != 0:
            raise RuntimeError(f"{name} failed: {r.stderr[-500:]}")
        out.append(r.wall)
    return statistics.median(out)


def _sample_pages(sim: SimProcess, since: date, until: date, n: int = 40) -> list[bytes]:
    """Page bodies as syncd's backfill receives them (first pages of its monthly windows,
    without side-loads: syncd asks for those once per run)."""
    import urllib.parse
    import urllib.request

    from tests.benchmarks.bare import PLAIN, month_windows

    out = []
    for w in month_windows(since, until):
        for page in (1, 2):
            q = urllib.parse.urlencode({**PLAIN, "page": page,
                                        "order": "date_performed:asc",
                                        "date_performed_between": w})
            req = urllib.request.Request(f"{sim.base_url}/time_entries?{q}",
                                         headers={"Authorization": f"Bearer {sim.token}"})
            with urllib.request.urlopen(req) as resp:
                body = resp.read()
            if b'"results":[]' not in body:
                out.append(body)
            if len(out) >= n:
                return out
    return out


def _cpu_ms_per_page(fn: Callable[[bytes], object], pages: list[bytes], reps: int = 5) -> float:
    """Median CPU milliseconds of `fn(page)` over the sample."""
    per = []
    for _ in range(reps):
        t0 = time.process_time()
        for b in pages:
            fn(b)
        per.append((time.process_time() - t0) * 1000 / len(pages))
    return statistics.median(per)


def validation_cost(sim: SimProcess, since: date, until: date) -> dict[str, float]:
    """Client CPU per page: what the bare client does with a page (orjson, columns as text)
    against syncd's decode and validation (`pagination.decode_page`: types, ranges, dates,
    text PostgreSQL cannot hold, side-loaded objects) and the per-entry upsert arguments."""
    from syncd import pagination
    from tests.benchmarks.bare import page_columns

    pages = _sample_pages(sim, since, until)

    def bare(b: bytes) -> object:
        return page_columns(orjson.loads(b))

    from syncd import pull

    def syncd_decode(b: bytes) -> object:
        # what syncd's backfill does with a page: with PostgreSQL typing pages (issue #26, on
        # by default) the typed lane (msgspec), else decode it once, check each entry's
        # shape, keep ids, foreign keys and the envelope (`KantataClient.send`, `_decoded`)
        if pull.PAGES_TYPED_BY_POSTGRES:
            page = pagination.decode_page_typed(b)
            if page is not None:
                return page
        doc, storable = pagination.decode_json_storable(b)
        if pull.PAGES_TYPED_BY_POSTGRES:
            return pagination.decode_page_fast(doc, b, storable=storable)
        return pagination.decode_page(doc, storable=storable)

    return {"pages_sampled": len(pages),
            "bytes_per_page": statistics.mean(len(b) for b in pages),
            "bare_ms": _cpu_ms_per_page(bare, pages),
            "syncd_decode_ms": _cpu_ms_per_page(syncd_decode, pages)}


async def _statement_costs(dbs: Databases, db: str) -> list[dict[str, Any]]:
    """pg_stat_statements of database `db`: calls and total execution ms per statement."""
    conn = await asyncpg.connect(dbs.server_dsn)
    try:
        rows = await conn.fetch(
            """SELECT s.calls, s.total_exec_time AS ms, s.query FROM pg_stat_statements s
               JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1
               ORDER BY s.total_exec_time DESC""", db)
    finally:
        await conn.close()
    return [{"calls": r["calls"], "ms": float(r["ms"]), "query": " ".join(r["query"].split())}
            for r in rows]


def statement_groups(stmts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Statements of a syncd run grouped by what they do: calls and server ms per group."""
    groups: dict[str, dict[str, float]] = {}
    for st in stmts:
        q = st["query"].lower()
        if "kantata.time_entries" in q and ("insert" in q or "update" in q):
            # a backfill page's statement carries its window checkpoint and write context
            # (`store.store_page_body`): counted here, with the rows it writes
            g = "entry upserts"
        elif any(f"kantata.{t}" in q for t in ("workspaces", "users", "stories", "roles")):
            g = "side-loaded objects"
        elif "syncd.windows" in q:
            g = "window checkpoints"
        elif "sync_runs" in q or "syncd.cursor" in q or "watermark" in q:
            g = "run history and watermark"
        elif "set_config" in q:
            g = "write context (history mode)"
        elif st["query"] in POOL_RESET or q.startswith(("begin", "commit")):
            g = "transactions and pool resets"
        else:
            g = "other"
        acc = groups.setdefault(g, {"calls": 0, "ms": 0.0})
        acc["calls"] += st["calls"]
        acc["ms"] += st["ms"]
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms"]))


def accounting(res: dict[str, Any], dbs: Databases, sim: SimProcess, work: Path,
               since: date, until: date, keep_db: str) -> dict[str, Any]:
    """Issue #16: where syncd's backfill time goes compared with the plain-listing reference,
    one measured figure per item. Uses the backfill rows already measured (medians of their
    per-repetition differences) and measures the rest here: process start, `syncd migrate`, a
    syncd process with nothing to do, the validation CPU per page, and the SQL of one syncd
    backfill (pg_stat_statements)."""
    bf = res["backfill"]

    def diffs(a: str, b: str, key: str = "wall_s") -> list[float]:
        """The per-repetition differences a − b of `key` (same repetition, minutes apart)."""
        ra, rb = bf.get(a, {}).get("runs", []), bf.get(b, {}).get("runs", [])
        return [x[key] - y[key] for x, y in zip(ra, rb, strict=False)
                if x["exit_code"] == 0 and y["exit_code"] == 0]

    def diff(a: str, b: str, key: str = "wall_s") -> float | None:
        """Median of `diffs`; None when a row did not run."""
        ds = diffs(a, b, key)
        return statistics.median(ds) if ds else None

    def med(a: str, key: str) -> float | None:
        s = bf.get(a, {}).get("summary", {})
        return s[key]["median"] if key in s else None

    out: dict[str, Any] = {}
    # first, before anything else touches the kept database: the backfill's own statements
    out["statements"] = statement_groups(asyncio.run(_statement_costs(dbs, keep_db)))
    out["python_start_s"] = _walls([PY, "-c", "pass"], work, "py_start")
    out["syncd_imports_s"] = _walls(
        [PY, "-c", "import syncd.cli, syncd.commands.sync, syncd.app, syncd.pull"],
        work, "imports") - out["python_start_s"]
    dbs.drop("bench_acct_migrate")
    asyncio.run(dbs._admin('CREATE DATABASE "bench_acct_migrate"'))
    out["migrate_s"] = _walls([PY, "-m", "syncd", "migrate"], work, "migrate", n=1,
                              env=syncd_env(dbs.dsn("bench_acct_migrate"), sim))
    dbs.drop("bench_acct_migrate")
    out["idle_process_s"] = _walls([PY, "-m", "syncd", "sync"], work, "idle", n=3,
                                   env=syncd_env(dbs.dsn(keep_db), sim))
    out["validation"] = validation_cost(sim, since, until)

    async def run_details() -> dict[str, Any]:
        conn = await asyncpg.connect(dbs.dsn(keep_db))
        try:
            row = await conn.fetchrow(
                """SELECT details, requests, pages FROM syncd.sync_runs
                   WHERE job IN ('pull', 'backfill') ORDER BY started_at LIMIT 1""")
            windows = await conn.fetchval(
                "SELECT count(*) FROM syncd.windows WHERE purpose = 'backfill'")
        finally:
            await conn.close()
        d = orjson.loads(row["details"]) if isinstance(row["details"], str) else row["details"]
        return {"details": d, "requests": row["requests"], "pages": row["pages"],
                "windows_total": windows}
    out["syncd_run"] = asyncio.run(run_details())

    items: list[dict[str, Any]] = []

    def item(name: str, figure: str, cost: float | None | tuple[str, str], how: str) -> None:
        """One row; `cost` as (row a, row b) is the wall-time difference a − b, reported as its
        median with min and max (on a shared machine one difference can be as large as the
        item itself)."""
        lo = hi = None
        if isinstance(cost, tuple):
            ds = diffs(*cost)
            cost = statistics.median(ds) if ds else None
            lo, hi = (min(ds), max(ds)) if ds else (None, None)
        items.append({"item": name, "figure": figure, "cost_s": cost, "how": how,
                      "cost_min_s": lo, "cost_max_s": hi})

    ref_pages = med("plain", "requests") or 1
    item("Python decoding every entry (orjson, 21 text arrays) instead of PostgreSQL parsing "
         "the body", f"client CPU {diff('plain', 'pg', 'client_cpu_s') or 0:+.1f} s, Postgres "
         f"CPU {diff('plain', 'pg', 'postgres_cpu_s') or 0:+.1f} s",
         ("plain", "pg"), "plain listing, Python decodes − the PostgreSQL-parsing reference "
         "(not part of syncd's difference: syncd lets PostgreSQL parse too)")
    item("process start and imports",
         f"interpreter {out['python_start_s']:.2f} s + syncd's imports "
         f"{out['syncd_imports_s']:.2f} s; a whole `syncd sync` with nothing to do "
         f"{out['idle_process_s']:.2f} s", out["idle_process_s"],
         "median of 3 runs each; the reference client pays its own interpreter start too")
    item("`syncd migrate` (once per database; not in the backfill rows)",
         f"{out['migrate_s']:.2f} s", None, "one run into an empty database")
    item("the mirror table (indexes for BI, jsonb `raw`, history trigger) instead of a "
         "table with only a primary key", f"Postgres CPU "
         f"{diff('plain_mirror', 'plain', 'postgres_cpu_s') or 0:+.1f} s",
         ("plain_mirror", "plain"), "plain listing → kantata.time_entries − → own table "
         "(both Python-decoding)")
    side_bytes = None
    rb_inc, rb_plain = bf.get("plain_include", {}).get("runs", []), bf.get(
        "plain_mirror", {}).get("runs", [])
    if rb_inc and rb_plain and "bytes" in rb_inc[0] and "bytes" in rb_plain[0]:
        side_bytes = (rb_inc[0]["bytes"] / rb_inc[0]["requests"],
                      rb_plain[0]["bytes"] / rb_plain[0]["requests"])
    item("side-loads on every page (`include=workspace,user,story,role`)",
         (f"{side_bytes[0] / 1024:.0f} KiB a page instead of {side_bytes[1] / 1024:.0f} KiB; "
          if side_bytes else "")
         + f"client CPU {diff('plain_include', 'plain_mirror', 'client_cpu_s') or 0:+.1f} s, "
           f"simulator CPU {diff('plain_include', 'plain_mirror', 'server_cpu_s') or 0:+.1f} s",
         ("plain_include", "plain_mirror"), "… + side-loads − plain listing → mirror")
    item("monthly `date_performed_between` windows (checkpoints per window, a bounded request "
         "per page)", f"{(med('bare', 'requests') or 0) - (med('plain_include', 'requests') or 0):+.0f}"
         f" requests (each window ends with a partial page)",
         ("bare", "plain_include"), "… + monthly windows − … + side-loads")
    run = out["syncd_run"]
    item("syncd side-loads each object once per run instead (`only=…&include=…`)",
         f"{run['details'].get('side_load_requests', 0)} requests for the whole backfill", None,
         "syncd's run record; their cost is inside the syncd row")
    empty = run["details"].get("windows_known_empty", 0)
    item("the windows before the first entry (`SYNCD_BACKFILL_START` = 10 years back)",
         f"{run['windows_total']} windows, {empty} known empty from 1 probe request "
         f"(without the probe: {empty} requests)", None,
         "syncd's run record; its cost is inside the syncd row")
    former = diff("syncd_ceiling_9000", "syncd")
    item("the request ceiling", "none by default until Kantata's first 429 (the simulator "
         "sends none here); the former default 9,000/minute: "
         + ("not measured (--no-former-ceiling)" if former is None else f"{former:+.1f} s")
         + ", its floor "
         f"{(med('syncd', 'requests') or 0) / 150:.1f} s for "
         f"{med('syncd', 'requests') or 0:.0f} requests at 150/s",
         ("syncd_ceiling_9000", "syncd"), "syncd at 9,000/minute − syncd default")
    kept = diff("syncd", "syncd_indexes_kept")
    if kept is not None:
        item("the mirror's secondary indexes dropped while the empty mirror loads, built once "
             "at the end (`SYNCD_DEFER_INDEXES`)",
             f"Postgres CPU {diff('syncd', 'syncd_indexes_kept', 'postgres_cpu_s') or 0:+.1f} s, "
             f"wall {kept:+.1f} s",
             ("syncd", "syncd_indexes_kept"), "syncd default − syncd with SYNCD_DEFER_INDEXES=off")
    v = out["validation"]
    pages = med("bare", "requests") or ref_pages
    item("validation and decoding",
         f"{v['syncd_decode_ms']:.2f} ms a page against {v['bare_ms']:.2f} ms for the bare "
         f"client's orjson and columns ({v['pages_sampled']} pages of "
         f"{v['bytes_per_page'] / 1024:.0f} KiB)",
         (v["syncd_decode_ms"] - v["bare_ms"]) * pages / 1000,
         "CPU per page × pages (client CPU, not wall: the client runs beside PostgreSQL and "
         "the simulator on the same cores)")
    st = out["statements"]
    for g in ("window checkpoints", "run history and watermark", "side-loaded objects",
              "write context (history mode)"):
        if g in st:
            item(f"SQL: {g}", f"{st[g]['calls']:.0f} statements, {st[g]['ms'] / 1000:.2f} s "
                 "of PostgreSQL execution", st[g]["ms"] / 1000,
                 "pg_stat_statements of the last syncd backfill")
    item("everything syncd does beyond the bare client asking its requests",
         f"client CPU {diff('syncd', 'bare', 'client_cpu_s') or 0:+.1f} s, Postgres CPU "
         f"{diff('syncd', 'bare', 'postgres_cpu_s') or 0:+.1f} s, simulator CPU "
         f"{diff('syncd', 'bare', 'server_cpu_s') or 0:+.1f} s",
         ("syncd", "bare"), "syncd default − … + monthly windows (the rows above, "
         "measured in the same repetitions)")
    item("total: syncd default − the Python-decoding plain listing", "", ("syncd", "plain"),
         "the same repetitions")
    item("total: syncd default − the PostgreSQL-parsing reference", "", ("syncd", "pg"),
         "the same repetitions")
    out["items"] = items
    return out


# ------------------------------------------------------------------ report
def _mm(s: dict[str, Any], key: str, fmt: str = "{:.1f}") -> str:
    v = s.get(key)
    if not v:
        return "–"
    if v["min"] == v["max"]:
        return fmt.format(v["median"])
    return f"{fmt.format(v['median'])} ({fmt.format(v['min'])}–{fmt.format(v['max'])})"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue #7 with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    bf = res["backfill"]

    def med(name: str, key: str = "rows_per_s") -> float | None:
        s = bf.get(name, {}).get("summary")
        return s[key]["median"] if s and key in s else None

    def ratio(a: str, b: str) -> tuple[float, str] | None:
        """Median over repetitions of a/b throughput, each pair from the same repetition (a
        noisy neighbour slows both), with min–max."""
        ra, rb = bf.get(a, {}).get("runs", []), bf.get(b, {}).get("runs", [])
        rs = [x["rows_per_s"] / y["rows_per_s"] for x, y in zip(ra, rb, strict=False)
              if x["exit_code"] == 0 and y["exit_code"] == 0 and y["rows_per_s"]]
        if not rs or "summary" not in bf.get(a, {}) or "summary" not in bf.get(b, {}):
            return None
        med_ = statistics.median(rs)
        return med_, f"{med_:.2f} × ({min(rs):.2f}–{max(rs):.2f} per repetition)"

    syncd_ = med("syncd")
    for a, b, want, what in (("syncd", "pg", 0.75,
                              "≥ 0.75 × the PostgreSQL-parsing reference (default settings, "
                              "issue #26)"),
                             ("syncd", "pg_mirror", None,
                              "against the same reference writing into kantata.time_entries "
                              "(reported)"),
                             ("syncd", "plain", None,
                              "against the Python-decoding plain listing (reported)"),
                             ("syncd", "bare", None,
                              "against a bare client asking syncd's requests (reported)"),
                             ("syncd", "dlt", 6.0, "≥ 6 × dlt (default settings)")):
        r = ratio(a, b)
        if r is not None:
            out.append({"target": f"backfill {what}", "measured": r[1],
                        "met": None if want is None else r[0] >= want})
    if syncd_ and "summary" not in bf.get("dlt", {}):
        out.append({"target": "backfill ≥ 6 × dlt", "measured": "dlt did not run: "
                    + str(bf.get("dlt", {}).get("reason", "skipped")), "met": None})
    hist = ratio("syncd", "syncd_history_off")
    if hist is not None:
        on = bf["syncd"]["runs"]
        off = bf["syncd_history_off"]["runs"]
        rss = statistics.median(x["peak_rss_mb"] - y["peak_rss_mb"]
                                for x, y in zip(on, off, strict=False))
        out.append({"target": "history mode on: ≤ 15 % slower backfill than off",
                    "measured": hist[1] + " of the throughput with history off",
                    "met": hist[0] >= 0.85})
        out.append({"target": "history mode on: ≤ 5 MB more peak RSS than off",
                    "measured": f"{rss:+.1f} MB (median of per-repetition differences)",
                    "met": rss <= 5})
        out.append({"target": "history table size per 1M versions (reported)",
                    "measured": "python -m tests.benchmarks.history", "met": None})
    for key, what in (("rss_ladder", "peak RSS ≤ 80 MB, flat across sizes"),
                      ("rss_ladder_same_shape", "peak RSS flat across sizes, same page shape")):
        ladder = res.get(key, [])
        if not ladder or (key == "rss_ladder_same_shape" and len(ladder) < 2):
            continue
        peaks = [p["peak_rss_mb"]["max"] for p in ladder]
        flat = max(peaks) - min(peaks)
        measured = ", ".join(f"{p['entries']:,}: {p['peak_rss_mb']['max']:.0f} MB"
                             for p in ladder)
        if len(ladder) < 2:  # one size says nothing about flatness
            out.append({"target": "peak RSS ≤ 80 MB (flatness needs two sizes)",
                        "measured": measured, "met": max(peaks) <= 80})
            continue
        out.append({"target": what, "measured": measured + f" (spread {flat:.0f} MB)",
                    "met": max(peaks) <= 80 and flat <= 10})
    idle = res.get("idle_cycle")
    if idle:
        out.append({"target": "idle incremental cycle: 1 request, a handful of SQL statements",
                    "measured": f"{idle['requests']} request(s), {idle['sql_statements']} SQL "
                                f"statements + {idle['pool_releases']} pool-release resets "
                                f"(whole `syncd sync` process: "
                                f"{idle['process']['requests']} / "
                                f"{idle['process']['sql_statements']})",
                    "met": idle["requests"] == 1 and idle["sql_statements"] <= 12})
    push = res.get("push", {"status": "not run"})
    if push.get("status") == "ok":
        want_post = math.ceil(push["creates"] / 100)
        want_del = math.ceil(push["deletes"] / 100)
        out.append({"target": f"push: {want_post} POSTs for {push['creates']:,} creates, "
                              f"{push['updates']:,} PUTs, {want_del} DELETEs",
                    "measured": f"{push['post']} POST, {push['put']} PUT, {push['delete']} "
                                f"DELETE, {push['get']} GET in {push['seconds']:.1f} s",
                    "met": push["post"] == want_post and push["put"] == push["updates"]
                    and push["delete"] == want_del})
    else:
        out.append({"target": "push requests", "measured": push.get("status", "pending"),
                    "met": None})
    rec = res.get("reconcile", {"status": "not run"})
    if rec.get("status") == "ok":
        # each window ends with one partial (or empty) page: at most ceil(n/200) + windows
        want = math.ceil(rec["live_entries"] / 200)
        out.append({"target": f"full reconciliation ≈ ceil(n/200) GETs: {want} + at most one "
                              f"partial page per window ({rec['windows']})",
                    "measured": f"{rec['gets']} GETs ({rec['windows']} windows) in "
                                f"{rec['seconds']:.1f} s",
                    "met": rec["gets"] <= want + rec["windows"]})
        st, af = rec["settled"], rec["after_deletions"]
        out.append({"target": f"reconciliation of a settled mirror ≤ windows + 2 GETs "
                              f"({st['windows'] + 2})",
                    "measured": f"{st['gets']} GETs in {st['seconds']:.1f} s ({st['modes']})",
                    "met": st["gets"] <= st["windows"] + 2 and not st["errors"]})
        k, limit = af["deleted"], af["windows"] + af["deleted"] * (8 + af["day_pages"])
        out.append({"target": f"reconciliation after {k} deletions ≤ windows + {k} × (8 + "
                              f"{af['day_pages']} page(s) a day) GETs ({limit}), all marked",
                    "measured": f"{af['gets']} GETs, {af['marked_deleted']} marked deleted, "
                                f"in {af['seconds']:.1f} s ({af['modes']})",
                    "met": af["gets"] <= limit and af["marked_deleted"] == k
                    and not af["errors"]})
    else:
        out.append({"target": "reconciliation requests", "measured": rec.get("status",
                                                                              "pending"),
                    "met": None})
    return out


def markdown(res: dict[str, Any]) -> str:
    """The results as markdown tables."""
    m, cfg = res["machine"], res["config"]
    lines = [f"Machine: {m['nproc']} × {m['cpu_model']}, {m['memory_gib']} GiB RAM, Python "
             f"{m['python']}, PostgreSQL {res.get('postgres_version', '?')} (fsync off). "
             f"{cfg['entries']:,} entries, {cfg['repeat']} repetition(s), median (min–max).",
             "",
             "| backfill | wall s | entries/s | client CPU s | simulator CPU s | Postgres CPU s "
             "| peak RSS MB | requests |",
             "|---|---|---|---|---|---|---|---|"]
    for name, b in res["backfill"].items():
        if "summary" not in b:
            lines.append(f"| {b['label']} | did not run: {b.get('reason', '?')} |||||||")
            continue
        s = b["summary"]
        lines.append(f"| {b['label']} | {_mm(s, 'wall_s')} | {_mm(s, 'rows_per_s', '{:,.0f}')} "
                     f"| {_mm(s, 'client_cpu_s')} | {_mm(s, 'server_cpu_s')} "
                     f"| {_mm(s, 'postgres_cpu_s')} | {_mm(s, 'peak_rss_mb', '{:.0f}')} "
                     f"| {_mm(s, 'requests', '{:.0f}')} |")
    if res.get("rss_ladder"):
        lines += ["", "| syncd backfill of | side-loads as for | peak RSS MB | wall s |",
                  "|---|---|---|---|"]
        same = [p for p in res.get("rss_ladder_same_shape", []) if p["entries"] != p["shape"]]
        for p in res["rss_ladder"] + same:
            lines.append(f"| {p['entries']:,} entries | {p.get('shape', p['entries']):,} "
                         f"| {_mm(p, 'peak_rss_mb', '{:.0f}')} "
                         f"| {_mm(p, 'wall_s')} |")
    acct = res.get("accounting")
    if acct:
        lines += ["", "Where the time goes: syncd (default settings) against the plain-listing "
                  "reference, item by item (seconds of backfill wall time: medians of the "
                  "per-repetition differences, their range in brackets):", "",
                  "| item | measured | wall s | how |", "|---|---|---|---|"]
        for it in acct["items"]:
            cost = "–" if it["cost_s"] is None else f"{it['cost_s']:+.2f}"
            if it.get("cost_min_s") is not None and it["cost_min_s"] != it["cost_max_s"]:
                cost += f" ({it['cost_min_s']:+.1f}…{it['cost_max_s']:+.1f})"
            lines.append(f"| {it['item']} | {it['figure']} | {cost} | {it['how']} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in res["targets"]:
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    steady = res.get("steady_hourly")
    if steady:
        lines += ["", "Requests an hour of a steady `syncd run` (default settings: pages of "
                      f"{steady[0]['per_page']}, a pull every {steady[0]['pull_interval']:g} s; "
                      "a model of the schedule from the measured costs, `steady_hourly`):", "",
                  "| entries | performed over | windows (recent) | pulls | count checks "
                  "| full reads (monthly) | total | every check a full read |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {h['entries']:,} | {h['span_days']} days | {h['windows']} "
                  f"({h['recent_windows']}) | "
                  f"{h['pull']:.1f} | {h['counts']:.1f} | {h['full_reads']:.1f} | "
                  f"{h['total']:.1f} | {h['before']:.1f} |" for h in steady]
    idle = res.get("idle_cycle")
    if idle:
        lines += ["", f"Idle incremental cycle (in process): {', '.join(idle['request_lines'])}; "
                      "SQL statements (pg_stat_statements):"]
        lines += [f"- {s['calls']} × `{s['query']}`" + (" (asyncpg pool release)"
                                                       if s["pool_reset"] else "")
                  for s in idle["statements"]]
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def backfill_range(today: date) -> tuple[date, date]:
    """The seeded entries were created over the last 730 days and performed up to 6 days before
    creation: start on the first of the month 740 days back; end at syncd's default lookahead."""
    since = (today - timedelta(days=740)).replace(day=1)
    return since, today + timedelta(days=LOOKAHEAD_DAYS)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the markdown table; write the JSON."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=None,
                   help="entries seeded in the simulator (default 200000; 1000000 with --full)")
    p.add_argument("--full", action="store_true",
                   help="1,000,000 entries, and 1M in the peak-RSS ladder")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 3)")
    p.add_argument("--smoke", action="store_true",
                   help="CI size: 2,000 entries, 1 repetition, no dlt, small push")
    p.add_argument("--no-dlt", action="store_true", help="skip dlt")
    p.add_argument("--history-off", action="store_true",
                   help="add a syncd row with SYNCD_HISTORY=off (history mode's cost)")
    p.add_argument("--indexes-kept", action="store_true",
                   help="add a syncd row with SYNCD_DEFER_INDEXES=off (what deferring the "
                        "mirror's indexes saves)")
    p.add_argument("--no-former-ceiling", action="store_true",
                   help="skip the syncd row with the former default ceiling (9,000/minute)")
    p.add_argument("--rss-sizes", default=None,
                   help="comma-separated sizes for the peak-RSS ladder (default 10000,200000 "
                        "and 1000000 with --full)")
    p.add_argument("--backfill-only", action="store_true",
                   help="only the backfill runs: no idle cycle, reconciliation, push or RSS "
                        "ladder (quick iterations while optimising)")
    p.add_argument("--out", type=Path, default=RESULTS / "benchmark-results.json",
                   help="where the JSON goes (default: %(default)s, ignored by git)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    args = p.parse_args(argv)

    entries = args.entries or (2_000 if args.smoke else 1_000_000 if args.full else 200_000)
    repeat = args.repeat or (1 if args.smoke else 3)
    use_dlt = not (args.no_dlt or args.smoke)
    if args.rss_sizes:
        ladder_sizes = [int(x) for x in args.rss_sizes.split(",")]
    elif args.smoke:
        ladder_sizes = [500, entries]
    else:
        ladder_sizes = [10_000, 200_000] + ([1_000_000] if args.full else [])
    work = args.work or Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    today = datetime.now(UTC).date()
    since, until = backfill_range(today)
    res: dict[str, Any] = {
        "machine": machine(), "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"entries": entries, "repeat": repeat, "seed": SEED, "smoke": args.smoke,
                   "backfill_start": since.isoformat(), "until": until.isoformat(),
                   "dlt": use_dlt},
        "backfill": {}}

    def say(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    pg = TempPostgres(work / "pg", extra_options=(
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"))
    pg.start()
    dbs = Databases(pg)
    sim: SimProcess | None = None
    try:
        async def _prep() -> str:
            conn = await asyncpg.connect(dbs.server_dsn)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                return str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()
        res["postgres_version"] = asyncio.run(_prep())
        say(f"seeding the simulator with {entries:,} entries; work dir {work}")
        t0 = time.perf_counter()
        sim = SimProcess(entries=entries, seed=SEED, token="bench-" + secrets.token_hex(8),
                         log_dir=work)
        sim.wait_ready()
        res["simulator"] = {"ready_s": time.perf_counter() - t0}
        dlt_reason = None
        if use_dlt and importlib.util.find_spec("dlt") is None:
            dlt_reason = "dlt is not installed (pip install -e '.[bench]')"
        cs = contenders(sim, since, until, dlt=use_dlt and dlt_reason is None,
                        former_ceiling=not args.no_former_ceiling,
                        history_off=args.history_off, indexes_kept=args.indexes_kept)
        say("warm-up: unmeasured plain and windowed passes render every entry and page "
            "in the simulator")
        warm = [measure(c, dbs, sim, work, "warmup") for c in cs
                if c.name in ("pg", "plain", "bare")]
        res["simulator"]["warmup_wall_s"] = sum(w["wall_s"] for w in warm)
        res["simulator"]["rss_mb_after_warmup"] = sim.rss_mb()
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cs}
        for i in range(repeat):
            for c in cs:
                keep = c.name == "syncd" and i == repeat - 1
                if keep:  # its SQL is accounted for statement by statement
                    asyncio.run(_statements(dbs, "", reset=True))
                say(f"run {i + 1}/{repeat}: {c.label}")
                r = measure(c, dbs, sim, work, str(i), keep=keep)
                say(f"  {r['rows']:,} rows in {r['wall_s']:.2f} s "
                    f"({r['rows_per_s']:,.0f}/s), client CPU {r['client_cpu_s']:.1f} s, "
                    f"simulator CPU {r['server_cpu_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB"
                    + (f", exit {r['exit_code']}: {r.get('error', '')[-300:]}"
                       if r["exit_code"] else ""))
                runs[c.name].append(r)
        for c in cs:
            ok = [r for r in runs[c.name] if r["exit_code"] == 0 and r["rows"] == entries]
            entry: dict[str, Any] = {"label": c.label, "runs": runs[c.name]}
            if ok:
                entry["summary"] = summarize(ok)
            else:
                errs = [r.get("error") or f"{r['rows']} of {entries} rows" for r in runs[c.name]]
                entry["reason"] = (errs[-1] or "failed")[-600:]
            res["backfill"][c.name] = entry
        if use_dlt and dlt_reason:
            res["backfill"]["dlt"] = {"label": "dlt rest_api → postgres", "reason": dlt_reason}

        syncd_db = runs["syncd"][-1]["db"]
        say("accounting: process start, migrate, validation, SQL by kind")
        res["accounting"] = accounting(res, dbs, sim, work, since, until, syncd_db)
        if args.backfill_only:
            ladder_sizes = [entries]
        else:
            extras(res, dbs, syncd_db, sim, since, until, work, smoke=args.smoke, say=say)
        dbs.drop(syncd_db)
        sim.stop()
        sim = None

        ladder = []

        for n in ladder_sizes:
            if n == entries:
                s = res["backfill"]["syncd"].get("summary", {})
                ladder.append({"entries": n, "peak_rss_mb": s.get("peak_rss_mb"),
                               "wall_s": s.get("wall_s"), "from": "backfill runs above"})
            else:
                say(f"peak RSS at {n:,} entries")
                ladder.append(rss_point(n, dbs, work, since, until,
                                        repeat=1 if n >= 1_000_000 else min(repeat, 2)))
        res["rss_ladder"] = [p for p in ladder if p["peak_rss_mb"]]
        # The side-loads of a page grow with the account (more workspaces, users and stories),
        # so the natural ladder mixes N with page size; this one holds the page shape at the
        # largest size's and varies N only.
        shape = max(ladder_sizes)
        controlled = []
        for n in ladder_sizes:
            if n == shape:
                controlled.append({**ladder[ladder_sizes.index(n)], "shape": shape})
            elif not args.backfill_only:
                say(f"peak RSS at {n:,} entries with the side-loads of {shape:,}")
                controlled.append(rss_point(n, dbs, work, since, until, shape=shape,
                                            repeat=min(repeat, 2)))
        res["rss_ladder_same_shape"] = [p for p in controlled if p["peak_rss_mb"]]
    finally:
        if sim is not None:
            sim.stop()
        pg.stop(remove=args.work is None)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res["targets"] = targets(res)
    res["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    table = markdown(res)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2, default=str))
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
