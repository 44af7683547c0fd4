"""BI-facing freshness views and the read-only `syncd_bi` role (migration 0003)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from syncd import migrate, pull, reconcile_job, store
from syncd.app import open_deps
from syncd.runs import Deps
from syncd.windows import Window
from tests.conftest import _with_db
from tests.integration.test_reconcile import settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def deps(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:
    async with open_deps(settings(db_dsn, sim_url)) as d:
        yield d


async def test_freshness_before_anything_ran(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow("SELECT * FROM syncd.freshness")
    assert row["data_as_of"] is None and row["last_pull_at"] is None
    assert row["outbox_pending"] == 0 and row["outbox_oldest_pending_age"] is None
    assert row["checked_at"] is not None


async def test_freshness_reports_watermark_runs_windows_and_outbox(
        deps: Deps, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    reports = await reconcile_job.reconcile_due(deps)
    await conn.execute(
        """INSERT INTO syncd.outbox (op, payload) VALUES ('create', '{"workspace_id": 1,
           "date_performed": "2025-01-02", "time_in_minutes": 30}'::jsonb)""")
    await conn.execute("INSERT INTO syncd.outbox (op, entry_id) VALUES ('delete', 8000001)")
    await conn.execute("UPDATE syncd.outbox SET created_at = now() - interval '10 minutes' "
                       "WHERE op = 'delete'")
    row = await conn.fetchrow("SELECT * FROM syncd.freshness")
    assert row["data_as_of"] == (await store.get_cursor(conn))[0]
    assert row["last_pull_at"] is not None and row["last_pull_status"] == "ok"
    assert row["last_reconcile_at"] is not None
    assert row["oldest_window_reconciled_at"] is not None
    assert row["windows_not_reconciled"] == 0
    assert row["outbox_pending"] == 2 and row["outbox_needs_attention"] == 0
    assert row["outbox_oldest_pending_age"] >= timedelta(minutes=10)

    windows = await conn.fetch("SELECT * FROM syncd.window_freshness ORDER BY window_start")
    assert len(windows) == len(reports)
    assert all(w["status"] == "done" and w["last_reconciled_at"] is not None for w in windows)
    assert [w["mirror_live_count"] for w in windows] == \
        [w["kantata_count_at_reconcile"] for w in windows]
    assert sum(w["mirror_live_count"] for w in windows) == 600


async def test_a_failed_attempt_keeps_the_time_of_the_last_success(
        conn: asyncpg.Connection) -> None:
    w = Window(date(2025, 1, 1), date(2025, 1, 31))
    await store.ensure_windows(conn, "backfill", [w])
    await store.start_window(conn, "reconcile", w, restart=True)
    await store.finish_window(conn, "reconcile", w, status="done", remote_count=3)
    done_at = await conn.fetchval("SELECT last_done_at FROM syncd.windows "
                                  "WHERE purpose = 'reconcile'")
    assert done_at is not None
    await store.start_window(conn, "reconcile", w, restart=True)
    await store.finish_window(conn, "reconcile", w, status="failed", remote_count=None,
                              error="HTTP 503")
    row = await conn.fetchrow("SELECT * FROM syncd.window_freshness")
    assert row["status"] == "failed" and row["last_error"] == "HTTP 503"
    assert row["last_reconciled_at"] == done_at
    assert row["last_attempt_at"] >= done_at
    fresh = await conn.fetchrow("SELECT * FROM syncd.freshness")
    assert fresh["oldest_window_reconciled_at"] == done_at
    assert fresh["windows_not_reconciled"] == 1


@pytest.fixture
async def bi_user(db_dsn: str, conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A LOGIN role that is a member of syncd_bi, connected to the test database."""
    name = f"bi_{uuid.uuid4().hex[:10]}"
    await conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE syncd_bi")
    base, _, rest = db_dsn.partition("://")
    _, _, hostpart = rest.partition("@")
    bi = await asyncpg.connect(f"{base}://{name}@{hostpart}")
    try:
        yield bi
    finally:
        await bi.close()
        await conn.execute(f"DROP ROLE {name}")


async def test_bi_role_reads_the_mirror_and_freshness_and_cannot_write(
        bi_user: asyncpg.Connection, conn: asyncpg.Connection) -> None:
    await conn.execute(
        """INSERT INTO kantata.time_entries (id, date_performed, time_in_minutes, updated_at, raw)
           VALUES (1, '2025-01-01', 60, now(), '{}')""")
    assert await bi_user.fetchval("SELECT count(*) FROM kantata.time_entries") == 1
    for table in ("workspaces", "users", "stories", "roles"):
        await bi_user.fetch(f"SELECT * FROM kantata.{table}")
    assert (await bi_user.fetchrow("SELECT * FROM syncd.freshness")) is not None
    await bi_user.fetch("SELECT * FROM syncd.window_freshness")
    for sql in ("INSERT INTO kantata.time_entries (id, date_performed, time_in_minutes, "
                "updated_at, raw) VALUES (2, '2025-01-01', 1, now(), '{}')",
                "UPDATE kantata.time_entries SET notes = 'x'",
                "DELETE FROM kantata.time_entries",
                "TRUNCATE kantata.time_entries",
                "SELECT * FROM syncd.outbox",
                "SELECT * FROM syncd.sync_runs",
                "INSERT INTO syncd.outbox (op, entry_id) VALUES ('delete', 1)"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await bi_user.execute(sql)
    # tables added to the mirror later are readable too (default privileges)
    await conn.execute("CREATE TABLE kantata.later_table (id int)")
    assert await bi_user.fetchval("SELECT count(*) FROM kantata.later_table") == 0


async def test_migrations_succeed_for_an_owner_without_createrole(
        pg_server_dsn: str) -> None:
    """The role step only needs CREATEROLE when syncd_bi does not exist yet; without it the
    migration still applies (with a NOTICE) instead of failing."""
    suffix = uuid.uuid4().hex[:10]
    owner, db = f"owner_{suffix}", f"syncd_o_{suffix}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN NOCREATEROLE NOSUPERUSER")
        await admin.execute(f'CREATE DATABASE "{db}" OWNER {owner}')
        base, _, rest = _with_db(pg_server_dsn, db).partition("://")
        _, _, hostpart = rest.partition("@")
        c = await asyncpg.connect(f"{base}://{owner}@{hostpart}")
        try:
            await migrate.apply(c)
            await migrate.check_current(c)
            assert await c.fetchval("SELECT count(*) FROM syncd.freshness") == 1
        finally:
            await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.close()


async def test_reconcile_due_retries_a_failed_window_at_the_next_check(
        deps: Deps, conn: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    first = await reconcile_job.reconcile_due(deps, now=now)
    w = first[0].window
    await conn.execute("UPDATE syncd.windows SET status = 'failed' WHERE window_start = $1",
                       w.start)
    again = await reconcile_job.reconcile_due(deps, now=now + timedelta(minutes=1))
    assert [r.window for r in again] == [w]


async def test_windows_never_reconciled_make_freshness_claim_nothing(
        conn: asyncpg.Connection) -> None:
    """A fresh install (or a partial manual reconcile) has not checked deletions everywhere."""
    ws = [Window(date(2025, m, 1), date(2025, m, 28)) for m in (1, 2, 3)]
    await store.ensure_windows(conn, "backfill", ws)
    fresh = await conn.fetchrow("SELECT * FROM syncd.freshness")
    assert fresh["oldest_window_reconciled_at"] is None and fresh["windows_not_reconciled"] == 3
    for w in ws[:2]:
        await store.start_window(conn, "reconcile", w, restart=True)
        await store.finish_window(conn, "reconcile", w, status="done", remote_count=0)
    fresh = await conn.fetchrow("SELECT * FROM syncd.freshness")
    assert fresh["oldest_window_reconciled_at"] is None and fresh["windows_not_reconciled"] == 1
    await store.start_window(conn, "reconcile", ws[2], restart=True)
    await store.finish_window(conn, "reconcile", ws[2], status="done", remote_count=0)
    fresh = await conn.fetchrow("SELECT * FROM syncd.freshness")
    assert fresh["oldest_window_reconciled_at"] is not None
    assert fresh["windows_not_reconciled"] == 0
