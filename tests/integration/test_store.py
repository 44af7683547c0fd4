"""The mirror's upsert against real PostgreSQL: newer wins, duplicates in a batch, dates and
instants under any session time zone, revival of rows marked deleted."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from syncd import store
from syncd.pagination import parse_time_entry
from syncd.models import TimeEntry

pytestmark = pytest.mark.integration

PST = timezone(timedelta(hours=-8))


def te(i: int, updated: str, **over: Any) -> TimeEntry:
    raw = {"id": str(i), "updated_at": updated, "created_at": "2026-01-01T00:00:00-08:00",
           "date_performed": "2026-01-01", "time_in_minutes": 30, "notes": f"v{updated}",
           "workspace_id": "1", "user_id": "2", "story_id": None, "role_id": None, **over}
    return parse_time_entry(raw)


async def test_upsert_inserts_then_only_newer_versions_win(conn: asyncpg.Connection) -> None:
    assert await store.upsert_entries(conn, [te(1, "2026-01-02T10:00:00-08:00")]) == 1
    # an older version re-sent later never overwrites the newer one
    newer = te(1, "2026-01-02T10:00:05-08:00", time_in_minutes=45)
    assert await store.upsert_entries(conn, [newer]) == 1
    older = te(1, "2026-01-02T10:00:01-08:00", time_in_minutes=99)
    assert await store.upsert_entries(conn, [older]) == 0
    row = await conn.fetchrow("SELECT time_in_minutes, updated_at FROM kantata.time_entries")
    assert row["time_in_minutes"] == 45
    assert row["updated_at"] == datetime(2026, 1, 2, 18, 0, 5, tzinfo=timezone.utc)


async def test_same_id_twice_in_one_batch_keeps_newest(conn: asyncpg.Connection) -> None:
    batch = [te(5, "2026-01-02T10:00:09-08:00", time_in_minutes=9),
             te(5, "2026-01-02T10:00:01-08:00", time_in_minutes=1)]
    assert await store.upsert_entries(conn, batch) == 1
    assert await conn.fetchval("SELECT time_in_minutes FROM kantata.time_entries") == 9


@pytest.mark.parametrize("session_tz", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles",
                                        "Pacific/Pago_Pago"])
async def test_dates_never_shift_under_any_session_time_zone(conn: asyncpg.Connection,
                                                             session_tz: str) -> None:
    await conn.execute(f"SET TimeZone = '{session_tz}'")
    await store.upsert_entries(conn, [te(3, "2026-03-08T01:59:59-08:00",
                                         date_performed="2026-03-08")])
    row = await conn.fetchrow("SELECT date_performed, updated_at, "
                              "date_performed::text AS d FROM kantata.time_entries")
    assert row["date_performed"] == date(2026, 3, 8)
    assert row["d"] == "2026-03-08"
    assert row["updated_at"] == datetime(2026, 3, 8, 9, 59, 59, tzinfo=timezone.utc)


async def test_row_marked_deleted_is_revived_when_seen_again(conn: asyncpg.Connection) -> None:
    await store.upsert_entries(conn, [te(8, "2026-01-02T10:00:00-08:00")])
    await conn.execute("UPDATE kantata.time_entries SET deleted_at = now()")
    assert await store.upsert_entries(conn, [te(8, "2026-01-02T10:00:00-08:00")]) == 1
    assert await conn.fetchval("SELECT deleted_at FROM kantata.time_entries") is None


async def test_raw_keeps_the_entry_as_received(conn: asyncpg.Connection) -> None:
    await store.upsert_entries(conn, [te(9, "2026-01-02T10:00:00-08:00",
                                         notes="multi\nline ✓", custom={"a": [1, 2]})])
    raw = await conn.fetchval("SELECT raw->'custom' FROM kantata.time_entries")
    assert raw == '{"a": [1, 2]}'


async def test_watermark_only_moves_forward(conn: asyncpg.Connection) -> None:
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert (await store.get_cursor(conn))[0] is None
    await store.set_watermark(conn, t)
    await store.set_watermark(conn, t - timedelta(hours=1))
    assert (await store.get_cursor(conn))[0] == t
    await store.set_watermark(conn, t + timedelta(seconds=1))
    assert (await store.get_cursor(conn))[0] == t + timedelta(seconds=1)


async def test_a_rejected_record_is_resolved_when_a_valid_version_is_stored(
        conn: asyncpg.Connection) -> None:
    from syncd.models import Rejected

    await store.record_rejects(conn, [Rejected(entry_id="11", reason="notes: NUL", raw="{}"),
                                      Rejected(entry_id="12", reason="bad", raw="{}")], None)
    await store.upsert_entries(conn, [te(11, "2026-01-02T10:00:00-08:00")])
    left = [r["entry_id"] for r in await conn.fetch("SELECT entry_id FROM syncd.rejected_records")]
    assert left == ["12"]


async def test_runs_of_a_process_that_is_gone_are_closed_and_their_windows_given_back(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    """A kill -9 left its run `running` in `syncd status` for 6 hours and its windows for
    ever: a run is live exactly while its process's session holds the run's lock."""
    import uuid

    from syncd.runs import RunOwner
    from syncd.windows import Window

    owner = RunOwner(db_dsn)
    killed, alive, old = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await owner.open_run(killed, "pull")
    await store.start_run(conn, old, "pull")  # a row of a process without a lock (pre-0014)
    w1, w2 = Window(date(2025, 1, 1), date(2025, 1, 31)), Window(date(2025, 2, 1),
                                                                  date(2025, 2, 28))
    await store.start_window(conn, "backfill", w1, restart=True, run_id=killed)
    await store.checkpoint_window(conn, "backfill", w1, 3, 600, 200)
    other = RunOwner(db_dsn)
    try:
        await other.open_run(alive, "reconcile")
        await store.start_window(conn, "backfill", w2, restart=True, run_id=alive)
        snap = await store.status_snapshot(conn)
        shown = {r["run_id"]: r["status"] for r in snap["runs"]}
        assert shown == {str(killed): "running", str(alive): "running",
                         str(old): "interrupted"}
        assert owner._conn is not None
        owner._conn.terminate()  # the process dies: PostgreSQL ends its session
        for _ in range(100):  # the server notices the closed socket at once
            if (await store.status_snapshot(conn))["runs"][-1]["status"] == "interrupted":
                break
            await asyncio.sleep(0.02)
        snap = await store.status_snapshot(conn)
        shown = {r["run_id"]: r["status"] for r in snap["runs"]}
        assert shown == {str(killed): "interrupted", str(alive): "running",
                         str(old): "interrupted"}
        assert snap["windows"] == {"backfill:pending": 1, "backfill:running": 1}
        assert await conn.fetchval("SELECT count(*) FROM syncd.sync_runs "
                                   "WHERE status = 'running'") == 3  # status writes nothing

        assert await store.close_dead_runs(conn) == store.Closed(runs=2, windows=1)
        rows = {r["run_id"]: r for r in await conn.fetch("SELECT * FROM syncd.sync_runs")}
        assert rows[killed]["status"] == "interrupted" and "abandoned" in rows[killed]["error"]
        assert rows[alive]["status"] == "running"
        win = {r["window_start"]: r for r in await conn.fetch("SELECT * FROM syncd.windows")}
        assert win[w1.start]["status"] == "pending" and win[w1.start]["pages_done"] == 3
        assert win[w2.start]["status"] == "running"
        assert await store.close_dead_runs(conn) == store.Closed(runs=0, windows=0)
    finally:
        await other.close()
        await owner.close()


@pytest.mark.parametrize("datestyle", ["ISO, MDY", "SQL, DMY", "German", "Postgres, YMD"])
async def test_every_column_round_trips_exactly(conn: asyncpg.Connection,
                                                datestyle: str) -> None:
    """The page travels as JSON text and PostgreSQL types it: whatever the session's DateStyle,
    every value read back equals the parsed entry's, text with quotes, backslashes, escapes,
    control characters and astral-plane characters included."""
    await conn.execute(f"SET DateStyle = '{datestyle}'")
    notes = 'a "quoted" \\ back\\slash, \\u0000 as text, \x01\x1f tab\t, é, 漢字, 🚀\n end'
    entry = te(2**63 - 1, "2026-12-31T23:59:59+14:00", date_performed="2026-02-03",
               notes=notes, rate_in_cents=-2**63 + 1, cost_rate_in_cents=0,
               currency="EUR", currency_symbol="€", currency_base_unit=100, billable=None,
               approved=True, is_invoiced=False, taxable=None, location="Zürich",
               story_id="123456789012345678", role_id="7",
               created_at="1900-01-01T00:00:00-07:53")
    plain = te(12, "2026-06-01T12:00:00.250000+05:45", created_at=None, notes=None,
               workspace_id=None, user_id=None)
    assert await store.upsert_entries(conn, [entry, plain]) == 2
    for want in (entry, plain):
        row = await conn.fetchrow(
            f"SELECT {', '.join(store.ENTRY_COLUMNS)} FROM kantata.time_entries WHERE id = $1",
            want.id)
        got = dict(row)
        assert json.loads(got.pop("raw")) == json.loads(want.raw)  # jsonb: the same document
        expected = {c: getattr(want, c) for c in store.ENTRY_COLUMNS if c != "raw"}
        assert got == expected


async def test_the_upsert_record_type_matches_the_mirror_table(conn: asyncpg.Connection) -> None:
    """`syncd.time_entry_in` (migration 0005) repeats the entry columns of
    `kantata.time_entries`: same names, same order as `TimeEntry`, same types. A column added to
    one and not the other fails here, not in production."""
    def shape(rows: list[asyncpg.Record]) -> list[tuple[str, str]]:
        return [(r["attname"], r["t"]) for r in rows]
    record = shape(await conn.fetch(
        """SELECT attname, format_type(atttypid, atttypmod) AS t FROM pg_attribute
           WHERE attrelid = 'syncd.time_entry_in'::regclass AND attnum > 0
             AND NOT attisdropped ORDER BY attnum"""))
    table = dict(shape(await conn.fetch(
        """SELECT attname, format_type(atttypid, atttypmod) AS t FROM pg_attribute
           WHERE attrelid = 'kantata.time_entries'::regclass AND attnum > 0
             AND NOT attisdropped""")))
    assert [name for name, _ in record] == list(store.ENTRY_COLUMNS)
    assert record == [(name, table[name]) for name, _ in record]


async def test_pooled_connections_keep_their_session_and_lose_open_transactions(
        db_dsn: str) -> None:
    """The pool's release costs no reset round trip (issue #26) yet a released connection
    still comes back clean: `_init_connection`'s UTC stays (asyncpg's default RESET ALL undid
    it after the first release), and a transaction left open is rolled back."""
    from syncd.app import open_pool
    from tests.integration.conftest import make_settings

    pool = await open_pool(make_settings(db_dsn, "http://127.0.0.1:9/api/v1"), max_size=1)
    try:
        for _ in range(2):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW TimeZone") == "UTC"
                await conn.execute("CREATE TEMP TABLE IF NOT EXISTS left_open (x int)")
        conn = await pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO left_open VALUES (1)")
        await pool.release(conn)
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM left_open") == 0
    finally:
        await pool.close()


def page_body(*entries: dict[str, Any]) -> bytes:
    """A list page's body with `entries` (raw time entries, each with an `id`)."""
    return json.dumps({"count": len(entries), "meta": {"count": len(entries), "page_count": 1,
                                                       "page_number": 1},
                       "results": [{"key": "time_entries", "id": e["id"]} for e in entries],
                       "time_entries": {e["id"]: e for e in entries}}).encode()


def raw_entry(i: int, updated: str, **over: Any) -> dict[str, Any]:
    return {"id": str(i), "updated_at": updated, "created_at": "2026-01-01T00:00:00Z",
            "date_performed": "2026-01-01", "time_in_minutes": 30, "notes": "n",
            "workspace_id": "1", "user_id": "2", "story_id": None, "role_id": None, **over}


async def test_a_page_in_one_statement_sets_its_context_and_checkpoint(
        conn: asyncpg.Connection) -> None:
    """`store_page_body`: write context (learned_via, history mode), rows and the window's
    checkpoint in one statement; nothing of it survives a refused value, and the context does
    not outlive the statement."""
    from syncd.windows import Window
    w = Window(date(2026, 1, 1), date(2026, 1, 31))
    await store.start_window(conn, "backfill", w, restart=True)
    body = page_body(raw_entry(1, "2026-01-02T10:00:00Z"), raw_entry(2, "2026-01-02T10:00:00Z"))
    assert await store.store_page_body(conn, body, learned_via="backfill", history=True,
                                       checkpoint=("backfill", w, 1, 2, 200)) == 2
    assert [tuple(r) for r in await conn.fetch(
        "SELECT id, learned_via FROM kantata.time_entries ORDER BY id")] == \
        [(1, "backfill"), (2, "backfill")]
    assert tuple(await conn.fetchrow(
        "SELECT pages_done, rows_seen, page_size FROM syncd.windows")) == (1, 2, 200)
    # the context was the statement's own: a plain write afterwards is `sql`
    assert await conn.fetchval("SELECT syncd.history_source()") == "sql"
    # history off: an update writes no history row; no checkpoint: windows unchanged
    edited = page_body(raw_entry(1, "2026-01-03T10:00:00Z", notes="edited"))
    assert await store.store_page_body(conn, edited, learned_via="pull", history=False) == 1
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entry_history") == 0
    assert await conn.fetchval(
        "SELECT learned_via FROM kantata.time_entries WHERE id = 1") == "pull"
    # history on: the replaced version goes to the history, in the same statement
    again = page_body(raw_entry(1, "2026-01-04T10:00:00Z", notes="again"))
    assert await store.store_page_body(conn, again, learned_via="pull", history=True) == 1
    assert await conn.fetchval("SELECT notes FROM kantata.time_entry_history") == "edited"
    # a value PostgreSQL refuses: DataError, and neither rows nor checkpoint moved
    bad = page_body(raw_entry(3, "2026-01-02T10:00:00Z"),
                    raw_entry(4, "2026-01-02T10:00:00Z", date_performed="2026-02-30"))
    with pytest.raises(asyncpg.DataError):
        await store.store_page_body(conn, bad, learned_via="backfill", history=True,
                                    checkpoint=("backfill", w, 2, 2, 200))
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 2
    assert tuple(await conn.fetchrow(
        "SELECT pages_done, rows_seen FROM syncd.windows")) == (1, 2)
    with pytest.raises(ValueError, match="learned_via"):
        await store.store_page_body(conn, body, learned_via="guess", history=True)
