"""`syncd sync`, `syncd status` and `syncd migrate` as a user runs them: real processes against
the simulator and PostgreSQL, including a kill mid-backfill and foreign time zones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

from syncd.simulator import Simulator
from tests.integration.conftest import TOKEN
from tests.oracle import mirror_diff
from tests.silent_kantata import QUICK_GIVE_UP, gave_up_line, silent_kantata

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def env_for(db_dsn: str, sim_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update({"SYNCD_DATABASE_URL": db_dsn, "SYNCD_KANTATA_BASE_URL": sim_url,
                "SYNCD_KANTATA_TOKEN": TOKEN, "SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK": "true",
                "SYNCD_BACKFILL_START": "2020-01-01", "SYNCD_LOG_FORMAT": "json", **extra})
    return env


async def syncd(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_sync_then_status(db_dsn: str, sim_url: str, sim: Simulator,
                                conn: asyncpg.Connection) -> None:
    env = env_for(db_dsn, sim_url)
    code, out, err = await syncd(env, "sync")
    assert code == 0, err[-2000:]
    assert "600 rows upserted" in out
    assert TOKEN not in out + err
    assert await mirror_diff(conn, sim.list_entries()) == []
    code, out, _ = await syncd(env, "status")
    assert code == 0
    assert "600 live" in out and "pull" in out
    code, out, _ = await syncd(env, "status", "--json")
    assert '"live": 600' in out


async def test_dates_are_exact_under_foreign_time_zones(db_dsn: str, sim_url: str,
                                                        sim: Simulator,
                                                        conn: asyncpg.Connection) -> None:
    dbname = db_dsn.rsplit("/", 1)[1]
    await conn.execute(f"ALTER DATABASE \"{dbname}\" SET timezone TO 'Pacific/Kiritimati'")
    env = env_for(db_dsn, sim_url, TZ="Pacific/Pago_Pago", PGTZ="Asia/Kathmandu")
    code, _, err = await syncd(env, "sync")
    assert code == 0, err[-2000:]
    fresh = await asyncpg.connect(db_dsn)  # a session in the database's default zone (+14)
    try:
        assert await fresh.fetchval("SHOW timezone") == "Pacific/Kiritimati"
        assert await mirror_diff(fresh, sim.list_entries()) == []
        rows = await fresh.fetch("SELECT id, date_performed::text AS d FROM kantata.time_entries")
        remote = {int(e["id"]): e["date_performed"] for e in sim.list_entries()}
        assert {r["id"]: r["d"] for r in rows} == remote
    finally:
        await fresh.close()


async def test_kill_mid_backfill_resumes_where_it_stopped(db_dsn: str, sim_url: str,
                                                         sim: Simulator,
                                                         conn: asyncpg.Connection) -> None:
    sim.set_faults({"latency_ms": 40})
    env = env_for(db_dsn, sim_url, SYNCD_PER_PAGE="20", SYNCD_WINDOW_CONCURRENCY="2")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", "sync", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    # windows READ to their end (those the first probe knows empty are done before any read)
    read = "SELECT count(*) FROM syncd.windows WHERE status = 'done' AND remote_count > 0"
    for _ in range(200):  # wait until some windows are read, then kill -9
        await asyncio.sleep(0.05)
        if await conn.fetchval(read) >= 3:
            break
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    done_before = {(r["window_start"], r["window_end"]) for r in await conn.fetch(
        "SELECT window_start, window_end FROM syncd.windows WHERE status = 'done'")}
    read_before = await conn.fetchval(read)
    assert read_before >= 3
    # the killed run and the windows it was reading are not shown `running` (they were for
    # 6 hours and for ever)
    code, out, _ = await syncd(env, "status", "--json")
    snap = json.loads(out)
    assert [r["status"] for r in snap["runs"]] == ["interrupted"]
    assert "abandoned" in snap["runs"][0]["error"]
    assert not [k for k in snap["windows"] if k.endswith(":running")], snap["windows"]
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'running'")
    sim.clear_faults()
    sim.clear_requests()
    code, _, err = await syncd(env, "sync")
    assert code == 0, err[-2000:]
    asked = {r["query"].get("date_performed_between") for r in sim.requests}
    redone = {f"{a}:{b}" for a, b in done_before} & asked
    assert redone == set(), f"finished windows were fetched again: {sorted(redone)[:5]}"
    assert read_before < await conn.fetchval(read)  # killed with windows still to read
    assert await mirror_diff(conn, sim.list_entries()) == []
    runs = await conn.fetch("SELECT status, error FROM syncd.sync_runs ORDER BY id")
    assert [r["status"] for r in runs] == ["interrupted", "ok"]  # closed by the next start
    assert "abandoned" in runs[0]["error"]


async def test_sync_against_an_unreachable_kantata_stops_at_the_first_windows(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """The first backfill against a closed port tried every window in turn (15 minutes at
    the default back-off): the first request that cannot connect through its retries ends
    the run, with one line and exit code 1."""
    env = env_for(db_dsn, "http://127.0.0.1:9/api/v1", SYNCD_MAX_RETRIES="2",
                  SYNCD_BACKOFF_BASE="0.01", SYNCD_BACKOFF_CAP="0.02")
    code, out, err = await syncd(env, "sync")
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.startswith("syncd:")] == [
        "syncd: KantataUnreachable: Kantata cannot be reached at http://127.0.0.1:9/api/v1: "
        "GET /time_entries could not connect: ClientConnectorError on all 3 attempts of a "
        "request; check SYNCD_KANTATA_BASE_URL and the network"]
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'failed'") == 0
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'done'") == 0
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs") == "failed"


async def test_sync_against_a_kantata_that_never_answers_stops_after_three_silences(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """A new user's sync against a Kantata that accepted connections and answered nothing ran
    for 13+ minutes (every request of every window waited SYNCD_REQUEST_TIMEOUT through all
    its retries). The third unanswered request in a row ends the run with one line."""
    async with silent_kantata() as sk:
        code, out, err = await syncd(env_for(db_dsn, sk.url, **QUICK_GIVE_UP), "sync",
                                     timeout=120)
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.startswith("syncd:")] == [gave_up_line(sk.url)]
    # the backfill's count probe (per_page=1, not shrinkable) asked 3 times: not 7 attempts
    # of every window
    assert sk.requests == 3 and all("per_page=1&" in q for q in sk.lines), sk.lines
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'failed'") == 0
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs") == "failed"


async def test_migrate_cli_is_idempotent_and_run_refuses_pending(empty_db_dsn: str) -> None:
    env = env_for(empty_db_dsn, "http://127.0.0.1:9/api/v1")
    code, out, err = await syncd(env, "sync")
    assert code == 1 and "run `syncd migrate`" in err
    code, out, _ = await syncd(env, "migrate", "--dry-run")
    assert code == 0 and "CREATE TABLE kantata.time_entries" in out
    code, out, _ = await syncd(env, "migrate")
    assert code == 0 and "applied" in out and "0001_mirror.sql" in out
    code, out, _ = await syncd(env, "migrate")
    assert code == 0 and "up to date" in out


async def test_invalid_configuration_is_one_clear_line(db_dsn: str) -> None:
    env = env_for(db_dsn, "http://127.0.0.1:9/api/v1", SYNCD_PULL_INTERVAL="soon")
    code, out, err = await syncd(env, "sync")
    assert code == 2
    assert err.strip().splitlines() == [
        "syncd: invalid setting SYNCD_PULL_INTERVAL (from the environment): Input should be a "
        "valid number, "
        "unable to parse string as a number"]


async def test_plain_http_to_a_remote_host_is_refused(db_dsn: str) -> None:
    # never contacted: the configuration is refused before any connection
    env = env_for(db_dsn, "http://kantata.example.com/api/v1")
    code, out, err = await syncd(env, "sync")
    assert code == 2
    assert "plain http is only allowed for a simulator on a loopback address" in err
    assert "host 'kantata.example.com' is not one" in err  # what to change (a trial)
    assert TOKEN not in err


async def test_sigterm_on_a_one_shot_sync_records_an_interrupted_run(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    sim.set_faults({"latency_ms": 50})
    # 5 pages a window: the signal lands while windows are half read (at 20 a page a window
    # was 2 pages, both asked at once, and a fast client finished every window it had begun)
    env = env_for(db_dsn, sim_url, SYNCD_PER_PAGE="5")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", "sync", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    for _ in range(200):
        await asyncio.sleep(0.05)
        # a window READ to its end (the windows known empty from the first probe are done
        # before any is read: a signal then finds none half read)
        if await conn.fetchval("SELECT count(*) FROM syncd.windows "
                               "WHERE status = 'done' AND remote_count > 0"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert "stopped by SIGTERM" in err.decode()
    run = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs")
    # the run says who stopped it (a trial: it said only CancelledError)
    assert tuple(run) == ("interrupted", "stopped by SIGTERM; the next run resumes")
    # the windows it was reading are pending again with their pages, never left `running`
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'running'") \
        == 0
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'pending' "
                               "AND last_error LIKE 'interrupted%'") >= 1


async def test_cli_input_mistakes_are_named(db_dsn: str, empty_db_dsn: str, sim_url: str) -> None:
    env = env_for(db_dsn, sim_url, SYNCD_PULL_INTERVALL="5")
    code, out, err = await syncd(env, "sync", "--since", "2026-13-01")
    assert code == 2 and "'2026-13-01' is not a date; use YYYY-MM-DD" in err
    code, out, err = await syncd(env, "sync", "--since", "2026-03-01", "--until", "2026-02-01")
    assert code == 2 and "nothing to backfill: 2026-03-01 is after 2026-02-01 (check --since " \
        "2026-03-01 and --until 2026-02-01)" in err
    assert "SYNCD_PULL_INTERVALL is not a setting (did you mean SYNCD_PULL_INTERVAL?)" in err
    # no flag given: the setting that made the range empty is named, not flags (a trial)
    code, out, err = await syncd(env_for(db_dsn, sim_url, SYNCD_BACKFILL_START="2999-01-01"),
                                 "sync")
    assert code == 2 and "(check SYNCD_BACKFILL_START, 2999-01-01)" in err, err
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM syncd.sync_runs") == 0
    finally:
        await conn.close()
    code, out, err = await syncd(env_for(empty_db_dsn, sim_url), "status")
    assert code == 1 and "run `syncd migrate` first" in err


async def test_a_database_that_is_down_is_one_line_pointing_at_its_setting() -> None:
    """A trial's user saw a bare ConnectionRefusedError and could not tell which connection
    failed: the line names SYNCD_DATABASE_URL (never the password)."""
    env = env_for("postgresql://syncd:s3cret-pw@127.0.0.1:9/nowhere",
                  "http://127.0.0.1:9/api/v1")
    code, _, err = await syncd(env, "sync")
    assert code == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("syncd: database or network error: ") and \
        "check SYNCD_DATABASE_URL" in line and "s3cret-pw" not in line, line


async def test_verify_and_a_missing_database_name_the_setting_too() -> None:
    """The re-check found verify without the hint, and a database that does not exist named no
    setting in any command."""
    env = env_for("postgresql://syncd:s3cret-pw@127.0.0.1:9/nowhere",
                  "http://127.0.0.1:9/api/v1")
    code, _, err = await syncd(env, "verify")
    assert code == 2 and "check SYNCD_DATABASE_URL" in err and "s3cret-pw" not in err, err


@pytest.mark.parametrize("argv", [["sync", "--since", "2020-01-01"], ["verify"]],
                         ids=["sync_range", "verify"])
async def test_sigterm_says_what_is_left_of_a_re_read_and_of_a_verify(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection,
        argv: list[str]) -> None:
    """The second trial: a stopped `sync --since/--until` said "the next run resumes where
    this one stopped", but a plain next sync resumed only the windows it was reading (the
    rest of the range is re-read only by the same command); a stopped `verify` exited 143
    saying nothing."""
    env = env_for(db_dsn, sim_url, SYNCD_PER_PAGE="5")
    if argv[0] == "verify":
        code, _, err = await syncd(env, "sync")
        assert code == 0, err
    sim.clear_requests()
    sim.set_faults({"latency_ms": 200})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", *argv, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    for _ in range(100):  # until it is reading windows
        await asyncio.sleep(0.05)
        if any("date_performed_between" in r["query"] for r in sim.requests[-3:]):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = [x for x in err.decode().splitlines() if x.startswith("syncd:")]
    assert proc.returncode == 143 and lines, err.decode()[-2000:]
    assert lines[-1] == {
        "sync": "syncd: stopped by SIGTERM; the windows of --since/--until it had not re-read "
                "are re-read only by running the same command again (a plain `syncd sync` "
                "finishes only the ones it was reading)",
        "verify": "syncd: stopped by SIGTERM before verify finished; nothing was compared to "
                  "the end (verify writes nothing)"}[argv[0]]
