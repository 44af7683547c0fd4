"""Daemon jobs end to end: run-history pruning, and a NOTIFY from an outbox insert pushing at
once instead of at the next poll."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import asyncpg
import pytest

from syncd.simulator import Simulator
from tests.ops.conftest import DaemonProc, assert_clean_output, daemon_env

pytestmark = pytest.mark.integration


async def test_run_history_older_than_run_history_days_is_pruned(
        db_dsn: str, sim_url: str, conn: asyncpg.Connection, port: int, daemons: Any) -> None:
    await conn.execute("""
        INSERT INTO syncd.sync_runs (run_id, job, started_at, finished_at, status)
        SELECT gen_random_uuid(), 'pull', now() - make_interval(days => d),
               now() - make_interval(days => d), 'ok'
        FROM unnest(ARRAY[400, 31, 29, 1]) AS d""")
    # outbox history: done rows 40 and 10 days old, a failed one 40 days old (kept: it waits
    # for a person), and a pending one
    async with conn.transaction():
        ids = [await conn.fetchval(
            "INSERT INTO syncd.outbox (op, entry_id) VALUES ('delete', $1) RETURNING id", i)
            for i in (8000001, 8000002, 8000003, 8000004)]
        await conn.execute(
            """UPDATE syncd.outbox o SET status = v.status, done_at = now() - v.age
               FROM (VALUES ($1::bigint, 'done', interval '40 days'),
                            ($2::bigint, 'done', interval '10 days'),
                            ($3::bigint, 'failed', interval '40 days')) AS v(id, status, age)
               WHERE o.id = v.id""", *ids[:3])
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port,
                                             SYNCD_RUN_HISTORY_DAYS="30",
                                             SYNCD_OUTBOX_DONE_RETENTION_DAYS="30",
                                             SYNCD_PUSH_INTERVAL="3600"))
    pruned = await d.wait_event("run_history_pruned")
    assert pruned["rows"] == 2 and pruned["job"] == "prune" and pruned["run_id"]
    assert pruned["outbox_done_deleted"] == 1
    left = await conn.fetch("SELECT id FROM syncd.outbox ORDER BY id")
    assert [r["id"] for r in left] == ids[1:]  # the 40-day-old done row only
    ages = await conn.fetch("""SELECT extract(day FROM now() - started_at)::int AS days
                               FROM syncd.sync_runs WHERE started_at < now() - interval '1 hour'
                               ORDER BY 1""")
    assert [r["days"] for r in ages] == [1, 29]
    details = await conn.fetchval("SELECT details->>'runs_deleted' FROM syncd.sync_runs "
                                  "WHERE run_id = $1::uuid", pruned["run_id"])
    assert details == "2"
    d.send(signal.SIGTERM)
    assert await d.wait_exit() == 0
    assert_clean_output(d)


async def test_outbox_notify_pushes_at_once(db_dsn: str, sim_url: str, sim: Simulator,
                                            conn: asyncpg.Connection, port: int,
                                            daemons: Any) -> None:
    # Polling every 60 s: only the NOTIFY can explain a push within a second or two.
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port, SYNCD_PUSH_INTERVAL="60",
                                             SYNCD_PULL_INTERVAL="60"))
    await d.wait_http("/readyz", 200)
    await d.wait_event("job_finished", job="push")  # the start-up run
    entry = next(e for e in sim.list_entries() if not e.get("is_invoiced"))
    latencies = []
    for i in range(3):
        queued = time.monotonic()
        row = await conn.fetchval(
            """INSERT INTO syncd.outbox (op, entry_id, payload)
               VALUES ('update', $1, jsonb_build_object('notes', $2::text)) RETURNING id""",
            int(entry["id"]), f"notified {i}")
        while await conn.fetchval("SELECT status FROM syncd.outbox WHERE id = $1", row) != "done":
            assert time.monotonic() - queued < 5, d.output[-3000:]
            await asyncio.sleep(0.02)
        latencies.append(time.monotonic() - queued)
    assert sim.get_entry(int(entry["id"]))["notes"] == "notified 2"
    print("NOTIFY to done: " + ", ".join(f"{x * 1000:.0f} ms" for x in latencies))
    d.send(signal.SIGTERM)
    assert await d.wait_exit() == 0
    assert_clean_output(d)


async def test_one_slow_kantata_request_does_not_strand_outbox_rows(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection, port: int,
        daemons: Any) -> None:
    """The new-user trial: with every Kantata request hanging, the push run was cut at 90 % of
    the push interval while its request was still waiting, and the row stayed in_flight for
    the whole lease. The run now waits for the request's own timeout (2 s here, above the
    1 s interval), and the row is pending at once with the reason."""
    d: DaemonProc = await daemons(daemon_env(
        db_dsn, sim_url, port, SYNCD_PUSH_INTERVAL="1", SYNCD_REQUEST_TIMEOUT="2",
        SYNCD_CONNECT_TIMEOUT="1", SYNCD_PULL_INTERVAL="60"))
    await d.wait_event("daemon_ready")
    sim.set_faults({"timeout_rate": 1.0})
    row = await conn.fetchval(
        """INSERT INTO syncd.outbox (op, payload) VALUES ('create', jsonb_build_object(
               'workspace_id', $1::bigint, 'date_performed', '2026-03-02',
               'time_in_minutes', 30)) RETURNING id""",
        int(sim.list_entries()[0]["workspace_id"]))
    queued = time.monotonic()
    while True:
        r = await conn.fetchrow("SELECT * FROM syncd.outbox WHERE id = $1", row)
        if r["status"] == "pending" and r["attempts"] == 1:
            break
        assert time.monotonic() - queued < 10, (dict(r), d.output[-3000:])
        await asyncio.sleep(0.05)
    assert r["lease_owner"] is None and r["sent_at"] is not None
    assert "POST /time_entries timed out" in r["last_error"]
    # looked up (not re-sent) seconds later: the daemon wakes the push when the row is due
    assert (r["next_attempt_at"] - r["sent_at"]).total_seconds() < 10
    assert not d.find("job_deadline_exceeded", job="push")
    posts = len([q for q in sim.requests if q["method"] == "POST"])
    sim.clear_faults()
    while "does not list it yet" not in (r["last_error"] or ""):
        assert time.monotonic() - queued < 20, (dict(r), d.output[-3000:])
        await asyncio.sleep(0.1)
        r = await conn.fetchrow("SELECT * FROM syncd.outbox WHERE id = $1", row)
    # not found (the hung POST did nothing): it is sent again only once Kantata cannot still
    # be working on the first one, 3 minutes after it, and the wait costs no attempt
    assert (r["status"], r["attempts"]) == ("pending", 1)
    assert (r["next_attempt_at"] - r["sent_at"]).total_seconds() >= 179
    assert len([q for q in sim.requests if q["method"] == "POST"]) == posts
    d.send(signal.SIGTERM)
    assert await d.wait_exit() == 0
    assert_clean_output(d)
