"""`syncd demo`: the main job end to end on an embedded default.

Starts a throwaway PostgreSQL from the local server binaries (or uses the empty database given
with --database-url), starts the simulator with seeded, real-shaped data on a loopback port,
migrates, backfills, shows a few incremental cycles with remote edits, checks the mirror against
the simulator and prints how to connect with psql. `syncd demo --stop` stops the demo's
PostgreSQL and removes it, with every database in it (also any you created there).

While a `syncd demo --keep` serves from the same --dir, another `syncd demo` refuses to start
(it would restart that demo's PostgreSQL and drop its database): stop it first.

The demo writes simulated entries, so it never takes SYNCD_DATABASE_URL from the environment
(the variable that names a real mirror), and it refuses a database that already holds mirrored
entries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from syncd import logs, migrate, pull, reconcile_job
from syncd.app import open_deps
from syncd.commands._util import at_least
from syncd.errors import dsn_passwords, mask_dsn, redact, register_secret
from syncd.pgserver import PgServerError, TempPostgres, find_bin_dir
from syncd.settings import Settings

DEMO_DB = "syncd_demo"


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _default_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"syncd-demo-{os.getuid()}"


async def _fresh_database(server_dsn: str) -> str:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DEMO_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DEMO_DB}")
    finally:
        await admin.close()
    return server_dsn.rsplit("/", 1)[0] + f"/{DEMO_DB}"


def _start_postgres(directory: Path) -> TempPostgres:
    port_file = directory / "pg" / "port"
    port = int(port_file.read_text()) if port_file.exists() else 0
    pg = TempPostgres(directory / "pg", port=port)
    if (pg.data_dir / "postmaster.pid").exists():
        pg.stop()  # a previous demo left it running: restart cleanly on the same port
    return pg.start(durable=True)


async def _remote_activity(sim: Any, cycle: int) -> tuple[str, list[str]]:
    """Edits, creates and (from cycle 2) one approved and one invoiced entry changed, one entry
    deleted, as Kantata users would; returns the summary and the dates to reconcile."""
    entries = sim.list_entries()
    open_entries = [e for e in entries if not e["approved"] and not e["is_invoiced"]]
    edited = open_entries[cycle * 7: cycle * 7 + 5]
    for e in edited:
        sim.edit_entry(int(e["id"]), {"notes": f"edited in demo cycle {cycle} ✓",
                                      "time_in_minutes": int(e["time_in_minutes"]) + 15})
    ws = next(e["workspace_id"] for e in entries)
    today = datetime.now(UTC).date()
    for n in range(2):
        sim.create_entry({"workspace_id": ws, "date_performed": today.isoformat(),
                          "time_in_minutes": 30 + n, "notes": f"new in cycle {cycle}"})
    what = f"{len(edited)} entries edited, 2 created remotely"
    if cycle != 2:
        return what, []
    # for the history queries (migrations/README.md, history mode): time changed after approval and after
    # invoicing, and a deletion
    approved = next((e for e in entries if e["approved"] and not e["is_invoiced"]), None)
    if approved is not None:
        sim.edit_entry(int(approved["id"]), {
            "time_in_minutes": int(approved["time_in_minutes"]) + 60,
            "notes": "corrected after approval"})
    invoiced = next((e for e in entries if e["is_invoiced"]), None)
    if invoiced is not None:
        sim.edit_entry(int(invoiced["id"]), {"billable": not invoiced["billable"]})
    what += "; an approved and an invoiced entry changed"
    if not open_entries:  # a tiny --entries: nothing open to delete
        return what, []
    gone = open_entries[len(open_entries) // 2]
    sim.delete_entry(int(gone["id"]))
    return what + ", one entry deleted", [gone["date_performed"]]


def _without_password(dsn: str) -> str:
    """`dsn` with its passwords (`user:pass@`, `?password=`) left out, for printing."""
    return mask_dsn(dsn, None)


async def _holds_entries(dsn: str) -> bool:
    """Whether the database at `dsn` already has rows in kantata.time_entries."""
    conn = await asyncpg.connect(dsn)
    try:
        # two statements: PostgreSQL resolves a table name before it evaluates anything, so
        # one query naming kantata.time_entries fails on a database that has no such table
        if await conn.fetchval("SELECT to_regclass('kantata.time_entries')") is None:
            return False
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM kantata.time_entries)"))
    finally:
        await conn.close()


async def _demo(args: argparse.Namespace) -> int:
    from syncd.simulator import SimConfig, Simulator
    from syncd.simulator.testing import running_simulator

    started = time.monotonic()
    logs.configure("WARNING", "auto")  # the demo prints its own summary lines
    url = args.database_url
    pg: TempPostgres | None = None
    if os.environ.get("SYNCD_DATABASE_URL") and not url:
        _say("    (SYNCD_DATABASE_URL is ignored: the demo writes simulated entries; give it an "
             "empty database with --database-url to use your own server)")
    if url:
        for password in dsn_passwords(url):  # user:pass@ and ?password=
            register_secret(password)
        try:
            holds = await _holds_entries(url)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            # asyncpg's own words name the cause (refused, no such database, bad URL); never
            # the URL's password (redact: asyncpg may quote the DSN)
            _say(f"syncd demo: cannot use --database-url {_without_password(url)}: "
                 f"{redact(f'{type(exc).__name__}: {exc}')}")
            return 2
        if holds:
            _say("syncd demo: the database given with --database-url already holds mirrored "
                 "time entries; the demo writes simulated ones and would mix them in. Give it "
                 "an empty database (CREATE DATABASE syncd_demo).")
            return 2
        _say("1/5 using the empty database given with --database-url")
        db_dsn = url
    else:
        if find_bin_dir() is None:
            _say("syncd demo needs PostgreSQL. Either install the server binaries "
                 "(Debian/Ubuntu: sudo apt-get install postgresql) and run `syncd demo` again, "
                 "or give it an empty database you own: syncd demo --database-url "
                 "postgresql://user:password@host:5432/syncd_demo")
            return 2
        _say(f"1/5 starting a throwaway PostgreSQL in {args.dir} ...")
        pg = _start_postgres(args.dir)
        db_dsn = await _fresh_database(pg.dsn)
        _say(f"    PostgreSQL listening on 127.0.0.1:{pg.port}, database {DEMO_DB} (a previous "
             "demo's database there is replaced)")

    token = "demo-" + secrets.token_hex(8)
    _say(f"2/5 seeding the Kantata simulator with {args.entries} time entries ...")
    # The same lock date as `syncd simulator` and a real account (migrations/README.md,
    # Examples): entries dated on or before it refuse writes, so outbox rows for them fail.
    sim = Simulator(SimConfig(token=token, entries=args.entries, seed=args.seed,
                              lock_date="auto"))
    async with running_simulator(sim) as sim_url:
        _say(f"    simulator serving {sim_url} (lock date {sim.lock_date}: Kantata refuses "
             "writes to entries dated on or before it)")
        settings = Settings(database_url=db_dsn, kantata_base_url=sim_url, kantata_token=token,
                            kantata_allow_insecure_loopback=True, overlap=5,
                            log_level="WARNING", backfill_start=None)
        conn = await asyncpg.connect(db_dsn)
        try:
            applied = await migrate.apply(conn)
        finally:
            await conn.close()
        _say(f"3/5 migrated the database ({len(applied)} migration(s) applied)")
        async with open_deps(settings) as deps:
            t0 = time.monotonic()
            stats = await pull.sync_once(deps)
            secs = time.monotonic() - t0
            _say(f"4/5 backfill: {stats.rows_upserted} entries in {stats.pages} pages, "
                 f"{deps.client.requests_sent} requests, {secs:.1f} s "
                 f"({stats.rows_upserted / max(secs, 1e-9):,.0f} rows/s)")
            for cycle in range(1, args.cycles + 1):
                what, deleted_on = await _remote_activity(sim, cycle)
                before = deps.client.requests_sent
                now = datetime.now(UTC) + timedelta(seconds=1)
                s = await pull.sync_once(deps, now=now)
                pulled = deps.client.requests_sent - before
                gone = 0
                for day in map(date.fromisoformat, deleted_on):
                    reports = await reconcile_job.reconcile_range(deps, day, day)
                    gone += sum(r.marked_deleted for r in reports)
                _say(f"    cycle {cycle}: {what}; incremental pull wrote {s.rows_upserted} rows "
                     f"with {pulled} request(s)"
                     + (f", reconciliation marked {gone} deleted" if deleted_on else ""))
            check = await _check(deps, sim)
        _say(f"5/5 check: {check}")
        if args.keep:
            _say()
            _say("The mirror is in PostgreSQL; try:")
            _try_queries(db_dsn)
            _keep_serving_help(db_dsn, sim_url, token, args.dir)
            pid_file = args.dir / "keep.pid"
            args.dir.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(str(os.getpid()))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()  # Ctrl-C, SIGTERM, or `syncd demo --stop`
            finally:
                pid_file.unlink(missing_ok=True)
            _say("demo simulator stopped" + (
                f"; its PostgreSQL in {args.dir} keeps running with the mirror (`syncd demo "
                f"--stop{_dir_option(args.dir)}` stops and removes it)"
                if pg is not None and (args.dir / "pg").exists() else ""))
            return 0 if check.startswith("exact mirror") else 1
    elapsed = time.monotonic() - started
    _say()
    _say(f"Done in {elapsed:.1f} s. The mirror is in PostgreSQL; try:")
    _try_queries(db_dsn)
    if pg is not None:
        _say(f"Stop the demo database with: syncd demo --stop{_dir_option(args.dir)}   "
             f"(removes the throwaway server in {args.dir} and every database in it)")
    return 0 if check.startswith("exact mirror") else 1


def _try_queries(db_dsn: str) -> None:
    """The `psql` command (password left out) and three queries to try on the mirror, one of
    them on the history (README, "What the demo shows")."""
    _say(f"  psql '{_without_password(db_dsn)}'")
    _say("  SELECT w.title, sum(t.time_in_minutes) / 60.0 AS hours")
    _say("    FROM kantata.time_entries t JOIN kantata.workspaces w ON w.id = t.workspace_id")
    _say("    WHERE t.deleted_at IS NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 5;")
    _say("  SELECT job, status, pages, requests, rows_upserted FROM syncd.sync_runs;")
    _say("  SELECT entry_id, changed_at, change, diff FROM kantata.time_entry_changes")
    _say("    WHERE change <> 'first_seen' ORDER BY changed_at DESC LIMIT 10;")


def _dir_option(directory: Path) -> str:
    """` --dir DIR` when `directory` is not the default, for a command line to copy."""
    return "" if directory == _default_dir() else f" --dir {directory}"


def _syncd_command() -> str:
    """How to call syncd from another shell: `syncd` when it is on PATH, else its full path
    (the README installs into .venv/bin, which is not on PATH unless activated)."""
    found = shutil.which("syncd")
    beside = Path(sys.executable).parent / "syncd"
    if found and Path(found).resolve() == beside.resolve():
        return "syncd"
    return str(beside) if beside.exists() else "syncd"


def _keep_serving_help(db_dsn: str, sim_url: str, token: str, directory: Path) -> None:
    """What `--keep` prints: the exports that point syncd at the demo, and a recipe;
    `directory` is the demo's `--dir` (named in the stop command when not the default)."""
    syncd = _syncd_command()
    _say()
    _say("The demo's simulator keeps running (Ctrl-C or `syncd demo "
         f"--stop{_dir_option(directory)}` stops it).")
    _say("In another shell, point syncd at the demo and try the outbox:")
    _say(f"  export SYNCD_DATABASE_URL='{db_dsn}' SYNCD_KANTATA_BASE_URL='{sim_url}'")
    _say(f"  export SYNCD_KANTATA_TOKEN='{token}' SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK=true")
    _say("  psql \"$SYNCD_DATABASE_URL\" -c \"INSERT INTO syncd.outbox (op, entry_id, payload) "
         "SELECT 'update', id, jsonb_build_object('time_in_minutes', time_in_minutes + 15) "
         "FROM kantata.time_entries WHERE deleted_at IS NULL AND NOT is_invoiced AND "
         "date_performed > current_date - 30 ORDER BY id LIMIT 1\"")
    # `;`, not `&&`: push exits 1 when a row ended failed or conflict, which is exactly when
    # the list is wanted (issue #23)
    _say(f"  {syncd} push; {syncd} outbox list --status all")
    _say(f"  {syncd} run    # or the daemon: pull, push and reconcile on schedule, /status on "
         ":9187")


async def _check(deps: Any, sim: Any) -> str:
    remote = {int(e["id"]): e for e in sim.list_entries()}
    async with deps.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, updated_at, time_in_minutes, notes "
                                "FROM kantata.time_entries WHERE deleted_at IS NULL")
    local = {r["id"]: r for r in rows}
    missing = set(remote) - set(local)
    extra = set(local) - set(remote)
    stale = [i for i in set(remote) & set(local)
             if datetime.fromisoformat(remote[i]["updated_at"]) != local[i]["updated_at"]
             or remote[i]["time_in_minutes"] != local[i]["time_in_minutes"]
             or remote[i]["notes"] != local[i]["notes"]]
    if not (missing or extra or stale):
        return (f"exact mirror: {len(local)} live entries in PostgreSQL equal the "
                f"{len(remote)} in Kantata (updated_at, minutes, notes compared)")
    return (f"DIFFERENCES: {len(missing)} missing, {len(extra)} extra, {len(stale)} stale "
            f"(e.g. {sorted(missing | extra | set(stale))[:5]})")


def _stop_kept_demo(directory: Path) -> None:
    """End a `syncd demo --keep` still serving from `directory` (its pid file)."""
    pid_file = directory / "keep.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    _say(f"stopped the demo's simulator (pid {pid})")


def _kept_demo_pid(directory: Path) -> int | None:
    """The pid of a `syncd demo --keep` still serving from `directory`, or None: no pid file,
    an unreadable one, or a stale one whose process is gone (or is no longer syncd: a reused
    pid, where /proc tells)."""
    try:
        pid = int((directory / "keep.pid").read_text())
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: alive is all we know
    # empty for a process between fork and exec, or a zombie: count it as alive
    return None if cmdline and b"syncd" not in cmdline else pid


def _stop(directory: Path) -> int:
    """`syncd demo --stop`: end a kept demo serving from `directory` and remove what the demo
    made there, its throwaway PostgreSQL (`pg/`, every database in it) and `keep.pid`, and
    `directory` itself only when that leaves it empty: a `--dir` holding anything else (a
    user's own folder) keeps it. A folder without them is left untouched."""
    server, pid_file = directory / "pg", directory / "keep.pid"
    if not server.exists() and not pid_file.exists():
        _say(f"no demo PostgreSQL in {directory}; nothing to stop")
        return 0
    _stop_kept_demo(directory)
    TempPostgres(server).stop(remove=True)
    pid_file.unlink(missing_ok=True)
    try:
        directory.rmdir()  # only if empty
        where = f"removed {directory}"
    except OSError:
        where = f"removed {server}; {directory} keeps the files the demo did not make"
    _say(f"stopped the demo PostgreSQL and {where}: the whole throwaway server with every "
         "database in it (the demo's and any you created there)")
    return 0


def _cmd(args: argparse.Namespace, settings: Settings | None) -> int:
    if args.stop:
        return _stop(args.dir)
    kept = _kept_demo_pid(args.dir)
    if kept is not None:
        # a second demo would restart the kept demo's PostgreSQL, drop its database and cut
        # its sessions (found by a new-user trial): refuse before touching anything
        print(f"syncd demo: a kept demo (pid {kept}) is still running from {args.dir}; "
              f"`syncd demo --stop{_dir_option(args.dir)}` ends it", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_demo(args))
    except PgServerError as exc:
        print(f"syncd demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # say what is left behind, as a finished demo does
        if (args.dir / "pg").exists():
            print(f"syncd demo: interrupted; its PostgreSQL in {args.dir} may still be running "
                  f"(`syncd demo --stop{_dir_option(args.dir)}` stops and removes it)",
                  file=sys.stderr)
        return 130


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the whole mirror on a throwaway PostgreSQL and the "
                                    "simulator, then show how to query it",
                       description=__doc__)
    p.add_argument("--entries", type=at_least(1), default=20_000,
                   help="time entries to seed in the simulator")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated data")
    p.add_argument("--cycles", type=at_least(0), default=3, help="incremental cycles to show")
    p.add_argument("--dir", type=Path, default=_default_dir(),
                   help="where the throwaway PostgreSQL lives")
    # one or the other: `--stop --keep` was accepted and did only the stop
    either = p.add_mutually_exclusive_group()
    either.add_argument("--stop", action="store_true",
                        help="stop a kept demo and remove the throwaway PostgreSQL in --dir "
                             "with every database in it (also any you created there), then "
                             "exit")
    either.add_argument("--keep", action="store_true",
                        help="keep the simulator running after the demo and print the "
                             "SYNCD_* exports and a recipe to try the outbox against it "
                             "(Ctrl-C stops)")
    p.add_argument("--database-url", default=None, metavar="URL",
                   help="use this empty database instead of a throwaway server (it must hold "
                        "no mirrored entries; SYNCD_DATABASE_URL is never used by the demo)")
    p.set_defaults(func=_cmd, needs_settings=False)
