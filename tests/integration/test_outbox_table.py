"""The outbox table as a contract (constraints with clear errors, triggers, NOTIFY) and the
`outbox` boundary functions (claims, leases, reclaim, release, operator actions, counts)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from syncd import outbox
from syncd.batching import Decision
from syncd.commands.outbox import render_rows

pytestmark = pytest.mark.integration

CREATE = '{"workspace_id": 1, "date_performed": "2026-03-02", "time_in_minutes": 30}'
# after the database's now(), which the rows' next_attempt_at default uses
T0 = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)


async def insert(conn: asyncpg.Connection, sql_values: str) -> None:
    await conn.execute(f"INSERT INTO syncd.outbox (op, entry_id, payload) VALUES {sql_values}")


@pytest.mark.parametrize(("values", "error"), [
    ("('upsert', 1, '{\"notes\": \"x\"}')", "outbox_op_valid"),
    ("('update', NULL, '{\"notes\": \"x\"}')", "outbox_entry_id_required_for_update_and_delete"),
    ("('delete', NULL, NULL)", "outbox_entry_id_required_for_update_and_delete"),
    ("('create', NULL, NULL)", "outbox_create_payload_is_an_object"),
    ("('create', NULL, '[1, 2]')", "outbox_create_payload_is_an_object"),
    ("('create', NULL, '{\"workspace_id\": 1, \"time_in_minutes\": 30}')",
     "outbox_create_payload_has_required_fields"),
    ("('update', 1, '{}')", "outbox_update_payload_is_a_non_empty_object"),
    ("('update', 1, NULL)", "outbox_update_payload_is_a_non_empty_object"),
    ("('update', 1, '\"notes\"')", "outbox_update_payload_is_a_non_empty_object"),
    ("('delete', 1, '{\"notes\": \"x\"}')", "outbox_delete_has_no_payload"),
    ("('update', 1, '{\"currency\": \"EUR\"}')", "outbox_payload_has_only_writable_fields"),
    ("('update', 1, '{\"external_reference\": {}}')", "outbox_payload_has_only_writable_fields"),
    (f"('create', NULL, '{CREATE[:-1]}, \"id\": 5}}')", "outbox_payload_has_only_writable_fields"),
    ("('update', 1, '{\"time_in_minutes\": 1e400}')", "outbox_payload_numbers_fit_a_double"),
    ("('update', 1, '{\"notes\": \"x\", \"rate_in_cents\": -2e308}')",
     "outbox_payload_numbers_fit_a_double"),
    ("('update', 1, '{\"rate_in_cents\": 1e-400}')",  # a JSON client reads 0
     "outbox_payload_numbers_fit_a_double"),
    ("('update', -5, '{\"notes\": \"x\"}')", "outbox_entry_id_is_positive"),  # a trial
    ("('delete', 0, NULL)", "outbox_entry_id_is_positive"),
])
async def test_malformed_rows_are_refused_at_insert_with_the_constraint_named(
        conn: asyncpg.Connection, values: str, error: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as exc:
        await insert(conn, values)
    assert exc.value.constraint_name == error
    assert error in str(exc.value)
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox") == 0


async def test_a_create_may_not_name_an_entry(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="a create must not set entry_id"):
        await insert(conn, f"('create', 5, '{CREATE}')")


async def test_in_flight_needs_a_lease_and_attempts_cannot_go_negative(
        conn: asyncpg.Connection) -> None:
    await insert(conn, "('delete', 1, NULL)")
    with pytest.raises(asyncpg.CheckViolationError) as exc:
        await conn.execute("UPDATE syncd.outbox SET status = 'in_flight'")
    assert exc.value.constraint_name == "outbox_in_flight_has_a_lease"
    with pytest.raises(asyncpg.CheckViolationError) as exc:
        await conn.execute("UPDATE syncd.outbox SET attempts = -1")
    assert exc.value.constraint_name == "outbox_attempts_non_negative"
    with pytest.raises(asyncpg.CheckViolationError) as exc:
        await conn.execute("UPDATE syncd.outbox SET status = 'sent'")
    assert exc.value.constraint_name == "outbox_status_valid"
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("INSERT INTO syncd.outbox (op, entry_id, correlation_key) "
                           "SELECT 'delete', 2, correlation_key FROM syncd.outbox")


async def test_insert_records_the_base_version_and_resets_syncd_columns(
        conn: asyncpg.Connection) -> None:
    await conn.execute(
        """INSERT INTO kantata.time_entries (id, date_performed, time_in_minutes, updated_at, raw)
           VALUES (7, '2026-03-01', 5, '2026-03-01T10:00:00Z', '{}')""")
    given = datetime(2026, 2, 1, tzinfo=UTC)
    await conn.execute(
        """INSERT INTO syncd.outbox (op, entry_id, payload, status, attempts, sent_at, last_error)
           VALUES ('update', 7, '{"notes": "x"}', 'done', 5, now(), 'x'),
                  ('delete', 8, NULL, 'failed', 1, NULL, NULL)""")
    await conn.execute("INSERT INTO syncd.outbox (op, entry_id, base_updated_at) "
                       "VALUES ('delete', 7, $1)", given)
    r = await conn.fetch("SELECT * FROM syncd.outbox ORDER BY id")
    assert r[0]["base_updated_at"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert r[1]["base_updated_at"] is None           # not mirrored: no base
    assert r[2]["base_updated_at"] == given          # a writer may supply it
    assert {(x["status"], x["attempts"], x["sent_at"], x["last_error"]) for x in r} == {
        ("pending", 0, None, None)}


async def test_a_writer_role_with_the_documented_grants_can_enqueue_and_no_more(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """README, the outbox's writer role: INSERT (and SELECT of the outcome columns) is enough,
    the insert trigger still records the base version from the mirror it cannot read, and an
    INSERT naming its own id is refused."""
    role = f"outbox_writer_{uuid.uuid4().hex[:8]}"
    await conn.execute(
        """INSERT INTO kantata.time_entries (id, date_performed, time_in_minutes, updated_at, raw)
           VALUES (7, '2026-03-01', 5, '2026-03-01T10:00:00Z', '{}')""")
    await conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        await conn.execute(f"""
            GRANT USAGE ON SCHEMA syncd TO {role};
            GRANT INSERT ON syncd.outbox TO {role};
            GRANT SELECT (id, op, entry_id, status, result, last_error, correlation_key)
                ON syncd.outbox TO {role};""")
        host_part = db_dsn.split("@", 1)[1]
        writer = await asyncpg.connect(f"postgresql://{role}@{host_part}")
        try:
            ids = [await writer.fetchval(
                "INSERT INTO syncd.outbox (op, entry_id, payload) VALUES ($1, $2, $3::jsonb) "
                "RETURNING id", op, eid, payload)
                for op, eid, payload in (("update", 7, '{"notes": "x"}'),
                                         ("delete", 7, None), ("create", None, CREATE))]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.fetchval("SELECT count(*) FROM kantata.time_entries")
            with pytest.raises(asyncpg.GeneratedAlwaysError):
                await writer.execute("INSERT INTO syncd.outbox (id, op, entry_id) "
                                     "VALUES (999999, 'delete', 7)")
            # naming an id anyway (OVERRIDING SYSTEM VALUE, COPY) is refused by the trigger,
            # before it could collide with the ids other writers draw
            for taken in (ids[-1] + 1, 10**9, ids[0]):
                with pytest.raises(asyncpg.GeneratedAlwaysError, match="assigned by the database"):
                    await writer.execute(
                        "INSERT INTO syncd.outbox (id, op, entry_id) OVERRIDING SYSTEM VALUE "
                        f"VALUES ({taken}, 'delete', 7)")
            with pytest.raises(asyncpg.UniqueViolationError):  # the id this session just drew
                await writer.execute("INSERT INTO syncd.outbox (id, op, entry_id) OVERRIDING "
                                     f"SYSTEM VALUE VALUES ({ids[-1]}, 'delete', 7)")
            with pytest.raises(asyncpg.GeneratedAlwaysError):
                await conn.copy_records_to_table("outbox", schema_name="syncd",
                                                 columns=["id", "op", "entry_id"],
                                                 records=[(ids[-1] + 2, "delete", 7)])
            # bulk enqueues draw and check one id per row, whatever the plan
            n = await writer.execute(
                "INSERT INTO syncd.outbox (op, entry_id) SELECT 'delete', g "
                "FROM generate_series(100, 140) g ORDER BY g DESC")
            assert n == "INSERT 0 41"
        finally:
            await writer.close()
        rows = await conn.fetch("SELECT id, status, base_updated_at FROM syncd.outbox "
                                "WHERE entry_id = 7 OR op = 'create' ORDER BY id")
        assert [r["id"] for r in rows] == ids and ids == sorted(ids)
        assert [r["base_updated_at"] for r in rows] == [
            datetime(2026, 3, 1, 10, tzinfo=UTC)] * 2 + [None]
        assert {r["status"] for r in rows} == {"pending"}
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_insert_notifies_listeners_at_commit(db_dsn: str, conn: asyncpg.Connection) -> None:
    listener = await asyncpg.connect(db_dsn)
    try:
        assert await outbox.wait_for_notify(listener, 0.05) is False
        async with conn.transaction():
            await insert(conn, "('delete', 1, NULL), ('delete', 2, NULL)")
            await asyncio.sleep(0.05)
            # not before the application's transaction commits
            assert await outbox.wait_for_notify(listener, 0.05) is False
        assert await outbox.wait_for_notify(listener, 2.0) is True
        assert await outbox.wait_for_notify(listener, 0.05) is False  # consumed
        await insert(conn, "('delete', 3, NULL)")  # arrives between waits: not lost
        await asyncio.sleep(0.1)
        assert await outbox.wait_for_notify(listener, 0) is True   # a poll sees it too
        assert await outbox.wait_for_notify(listener, 0) is False
        await outbox.stop_listening(listener)
        await insert(conn, "('delete', 4, NULL)")
        await asyncio.sleep(0.1)
        assert await outbox.wait_for_notify(listener, 0.05) is False  # listens afresh
    finally:
        await listener.close()


async def test_claims_are_disjoint_ordered_and_keep_one_open_row_per_entry(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    await insert(conn, ", ".join([f"('create', NULL, '{CREATE}')"] * 6)
                 + ", ('update', 9, '{\"notes\": \"a\"}'), ('update', 9, '{\"notes\": \"b\"}')"
                 + ", ('delete', 9, NULL)")
    other = await asyncpg.connect(db_dsn)
    try:
        async with conn.transaction():
            a = await outbox.claim_batch(conn, owner="a", limit=4, lease_seconds=60, now=T0)
            b = await outbox.claim_batch(other, owner="b", limit=10, lease_seconds=60, now=T0)
    finally:
        await other.close()
    assert [r.id for r in a.rows] == [1, 2, 3, 4]
    assert [r.id for r in b.rows] == [5, 6, 7]     # rows 8 and 9 wait for row 7 of entry 9
    assert a.rows[0].attempts == 1 and a.rows[0].payload == orjson.loads(CREATE)
    st = {r["id"]: r for r in await conn.fetch("SELECT * FROM syncd.outbox")}
    assert st[1]["lease_owner"] == "a" and st[5]["lease_owner"] == "b"
    assert st[1]["lease_expires_at"] == T0 + timedelta(seconds=60)
    assert st[1]["batch_id"] == a.batch_id and st[1]["claimed_at"] == T0
    assert st[8]["status"] == "pending"
    # once row 7 is settled, row 8 (and only then row 9) can be claimed
    await outbox.finish_rows(conn, b.batch_id, [Decision(row_id=7, status="done")], now=T0)
    c = await outbox.claim_batch(conn, owner="a", limit=10, lease_seconds=60, now=T0)
    assert [r.id for r in c.rows] == [8]


async def test_back_off_lease_renewal_and_reclaim(conn: asyncpg.Connection) -> None:
    await insert(conn, ", ".join([f"('create', NULL, '{CREATE}')"] * 4))
    claim = await outbox.claim_batch(conn, owner="a", limit=4, lease_seconds=60, now=T0)
    held = await outbox.mark_sent(conn, [1, 2], claim.batch_id, lease_seconds=60,
                                  now=T0 + timedelta(seconds=10))
    assert held == {1, 2}
    assert await outbox.mark_sent(conn, [1], uuid.uuid4(), lease_seconds=60) == set()
    await outbox.finish_rows(conn, claim.batch_id, [
        Decision(row_id=1, status="pending", last_error="HTTP 503", retry_in=30)], now=T0)
    r1 = await conn.fetchrow("SELECT * FROM syncd.outbox WHERE id = 1")
    assert (r1["status"], r1["attempts"], r1["lease_owner"]) == ("pending", 1, None)
    assert r1["next_attempt_at"] == T0 + timedelta(seconds=30)
    assert r1["last_error"] == "HTTP 503" and r1["sent_at"] == T0 + timedelta(seconds=10)
    assert (await outbox.claim_batch(conn, owner="b", limit=9, lease_seconds=60,
                                     now=T0 + timedelta(seconds=29))).rows == []
    # rows 3 and 4 expire at T0+60; row 2's lease was renewed when it was sent (T0+70)
    assert await outbox.reclaim_expired(conn, max_attempts=5, now=T0 + timedelta(seconds=60)) \
        == {"pending": 2, "failed": 0}
    st = [r["status"] for r in await conn.fetch("SELECT status FROM syncd.outbox ORDER BY id")]
    assert st == ["pending", "in_flight", "pending", "pending"]
    assert await conn.fetchval("SELECT next_attempt_at FROM syncd.outbox WHERE id = 3") \
        == T0 + timedelta(seconds=60)
    # a finish under a lost lease changes nothing
    assert await outbox.finish_rows(conn, claim.batch_id,
                                    [Decision(row_id=3, status="done")]) == set()
    # the lease of an owner that crashed on its last attempt: dead letter, with a hint
    assert await outbox.reclaim_expired(conn, max_attempts=1, now=T0 + timedelta(seconds=70)) \
        == {"pending": 0, "failed": 1}
    r2 = await conn.fetchrow("SELECT * FROM syncd.outbox WHERE id = 2")
    assert r2["status"] == "failed" and r2["done_at"] == T0 + timedelta(seconds=70)
    assert "lease of a expired on attempt 1" in r2["last_error"]
    assert "Kantata may have applied it" in r2["last_error"]


async def test_a_reclaimed_sent_row_waits_for_its_request_to_settle(
        conn: asyncpg.Connection) -> None:
    await insert(conn, f"('create', NULL, '{CREATE}')")
    claim = await outbox.claim_batch(conn, owner="a", limit=1, lease_seconds=60, now=T0)
    await outbox.mark_sent(conn, [1], claim.batch_id, lease_seconds=60, now=T0)
    assert await outbox.reclaim_expired(conn, max_attempts=5, now=T0 + timedelta(seconds=61),
                                        settle_seconds=180) == {"pending": 1, "failed": 0}
    assert await conn.fetchval("SELECT next_attempt_at FROM syncd.outbox") \
        == T0 + timedelta(seconds=180)


async def test_release_gives_unsent_attempts_back_and_holds_sent_rows(
        conn: asyncpg.Connection) -> None:
    await insert(conn, ", ".join([f"('create', NULL, '{CREATE}')"] * 3))
    claim = await outbox.claim_batch(conn, owner="me", limit=3, lease_seconds=60, now=T0)
    await outbox.mark_sent(conn, [1], claim.batch_id, lease_seconds=60, now=T0)
    assert await outbox.release_leases(conn, "someone else", now=T0) == 0
    assert await outbox.release_leases(conn, "me", now=T0, settle_seconds=180) == 3
    r = await conn.fetch("SELECT * FROM syncd.outbox ORDER BY id")
    assert [(x["status"], x["attempts"], x["lease_owner"]) for x in r] == [
        ("pending", 1, None), ("pending", 0, None), ("pending", 0, None)]
    assert r[0]["next_attempt_at"] == T0 + timedelta(seconds=180)
    assert r[1]["next_attempt_at"] == T0
    # claimed again later: the old sent_at predates the new claim, so it is not "sent now"
    again = await outbox.claim_batch(conn, owner="me", limit=3, lease_seconds=60,
                                     now=T0 + timedelta(seconds=200))
    assert [x.id for x in again.rows] == [1, 2, 3] and again.rows[0].sent_at == T0
    await outbox.release_leases(conn, "me", now=T0 + timedelta(seconds=200))
    assert await conn.fetchval("SELECT attempts FROM syncd.outbox WHERE id = 1") == 1


async def test_operator_list_retry_discard_and_counts(conn: asyncpg.Connection) -> None:
    await insert(conn, f"('create', NULL, '{CREATE}'), ('update', 5, '{{\"notes\": \"x\"}}'),"
                       " ('delete', 6, NULL), ('delete', 7, NULL)")
    claim = await outbox.claim_batch(conn, owner="a", limit=4, lease_seconds=60, now=T0)
    remote_at = T0 + timedelta(minutes=5)
    await outbox.finish_rows(conn, claim.batch_id, [
        Decision(row_id=1, status="failed", last_error="HTTP 422: bad"),
        Decision(row_id=2, status="conflict", last_error="changed",
                 remote_updated_at=remote_at, remote={"id": "5"}),
        Decision(row_id=3, status="done", result="deleted")], now=T0)
    snap = await outbox.status_counts(conn, now=T0 + timedelta(minutes=1))
    assert snap["counts"] == {"pending": 0, "in_flight": 1, "done": 1, "failed": 1,
                              "conflict": 1}
    assert snap["oldest_pending_seconds"] is None
    listed = await outbox.list_rows(conn, statuses=["failed", "conflict"])
    assert [r["id"] for r in listed] == [2, 1]
    assert listed[0]["remote_entry"] == {"id": "5"} and listed[1]["payload"]["workspace_id"] == 1
    # in-flight and done rows are neither retried nor discarded
    assert await outbox.retry_rows(conn, [3, 4]) == []
    assert await outbox.discard_rows(conn, [4]) == []
    assert await outbox.retry_rows(conn, [2]) == [2]
    r2 = await conn.fetchrow("SELECT * FROM syncd.outbox WHERE id = 2")
    assert (r2["status"], r2["attempts"], r2["last_error"]) == ("pending", 0, None)
    assert r2["base_updated_at"] == remote_at   # retried on top of the version it met
    assert await outbox.retry_rows(conn, all_failed=True) == [1]
    assert await outbox.discard_rows(conn, [1, 3]) == [1]  # done rows are history: kept
    assert await conn.fetchval("SELECT status FROM syncd.outbox WHERE id = 3") == "done"
    snap = await outbox.status_counts(conn)
    assert snap["counts"]["pending"] == 1 and snap["oldest_pending_seconds"] >= 0


async def test_updated_at_follows_every_change(conn: asyncpg.Connection) -> None:
    await insert(conn, "('delete', 1, NULL)")
    before = await conn.fetchval("SELECT updated_at FROM syncd.outbox")
    await asyncio.sleep(0.01)
    await conn.execute("UPDATE syncd.outbox SET last_error = 'x'")
    assert await conn.fetchval("SELECT updated_at FROM syncd.outbox") > before


# Every column syncd owns, a value a writer might put in it, and what the row must hold after
# the INSERT (NOW: the inserting transaction's now()). README "The outbox": "anything you put
# in them on INSERT is reset".
NOW = object()
OWNED_COLUMNS = [
    ("status", "'failed'", "pending"),
    ("attempts", "7", 0),
    ("last_error", "'from the writer'", None),
    ("result", "'created'", None),
    ("remote_updated_at", "'2026-01-01T00:00:00Z'", None),
    ("remote_entry", "'{\"id\": \"1\"}'", None),
    ("lease_owner", "'someone'", None),
    ("lease_expires_at", "'2099-01-01T00:00:00Z'", None),
    ("batch_id", "gen_random_uuid()", None),
    ("claimed_at", "'2026-01-01T00:00:00Z'", None),
    ("sent_at", "'2026-01-01T00:00:00Z'", None),
    ("done_at", "'2026-01-01T00:00:00Z'", None),
    ("next_attempt_at", "'2099-01-01T00:00:00Z'", NOW),
    ("created_at", "'2001-01-01T00:00:00Z'", NOW),
    ("updated_at", "'2001-01-01T00:00:00Z'", NOW),
]


@pytest.mark.parametrize(("column", "given", "expected"), OWNED_COLUMNS,
                         ids=[c[0] for c in OWNED_COLUMNS])
async def test_insert_resets_every_column_syncd_owns(
        conn: asyncpg.Connection, column: str, given: str, expected: object) -> None:
    async with conn.transaction():
        await conn.execute(f"INSERT INTO syncd.outbox (op, payload, {column}) "
                           f"VALUES ('create', '{CREATE}', {given})")
        now = await conn.fetchval("SELECT now()")
    value = await conn.fetchval(f"SELECT {column} FROM syncd.outbox")
    assert value == (now if expected is NOW else expected)


async def test_insert_keeps_what_the_writer_owns(conn: asyncpg.Connection) -> None:
    key, base = uuid.uuid4(), datetime(2026, 2, 1, tzinfo=UTC)
    await conn.execute("INSERT INTO syncd.outbox (op, entry_id, payload, base_updated_at, "
                       "correlation_key) VALUES ('update', 7, '{\"notes\": \"x\"}', $1, $2)",
                       base, key)
    r = await conn.fetchrow("SELECT * FROM syncd.outbox")
    assert (r["op"], r["entry_id"], orjson.loads(r["payload"]), r["base_updated_at"],
            r["correlation_key"]) == ("update", 7, {"notes": "x"}, base, key)


async def test_a_row_queued_with_a_far_future_next_attempt_is_pushed_at_once(
        conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO syncd.outbox (op, payload, next_attempt_at) "
                       f"VALUES ('create', '{CREATE}', '2099-01-01')")
    claim = await outbox.claim_batch(conn, owner="a", limit=10, lease_seconds=60)
    assert [r.id for r in claim.rows] == [1]


async def test_an_operator_retry_wakes_syncd_at_commit(db_dsn: str,
                                                       conn: asyncpg.Connection) -> None:
    await insert(conn, f"('create', NULL, '{CREATE}'), ('update', 5, '{{\"notes\": \"x\"}}'),"
                       " ('delete', 6, NULL)")
    claim = await outbox.claim_batch(conn, owner="a", limit=3, lease_seconds=60)
    listener = await asyncpg.connect(db_dsn)
    try:
        assert await outbox.wait_for_notify(listener, 0.05) is False  # now listening
        await outbox.finish_rows(conn, claim.batch_id, [
            Decision(row_id=1, status="failed", last_error="HTTP 422: bad"),
            Decision(row_id=2, status="conflict", last_error="changed"),
            Decision(row_id=3, status="pending", last_error="HTTP 503", retry_in=30)])
        # syncd's own back-off is no news: it will pick the row up when it is due
        assert await outbox.wait_for_notify(listener, 0.2) is False
        async with conn.transaction():
            assert await outbox.retry_rows(conn, [1]) == [1]
            assert await outbox.wait_for_notify(listener, 0.1) is False  # not before commit
        assert await outbox.wait_for_notify(listener, 2.0) is True
        # an operator's own UPDATE back to pending wakes it too
        await conn.execute("UPDATE syncd.outbox SET status = 'pending' WHERE id = 2")
        assert await outbox.wait_for_notify(listener, 2.0) is True
    finally:
        await listener.close()


async def test_rows_back_from_a_lost_or_released_lease_say_why_they_wait(
        conn: asyncpg.Connection) -> None:
    await insert(conn, ", ".join([f"('create', NULL, '{CREATE}')"] * 3))
    claim = await outbox.claim_batch(conn, owner="host:1:aa", limit=2, lease_seconds=60, now=T0)
    await outbox.mark_sent(conn, [1], claim.batch_id, lease_seconds=60, now=T0)
    assert await outbox.reclaim_expired(conn, max_attempts=5, now=T0 + timedelta(seconds=61),
                                        settle_seconds=180) == {"pending": 2, "failed": 0}
    claim = await outbox.claim_batch(conn, owner="host:2:bb", limit=3, lease_seconds=60,
                                     now=T0 + timedelta(seconds=200), due_by=T0)
    assert [r.id for r in claim.rows] == [3]
    await outbox.mark_sent(conn, [3], claim.batch_id, lease_seconds=60,
                           now=T0 + timedelta(seconds=200))
    await outbox.release_leases(conn, "host:2:bb", now=T0 + timedelta(seconds=200),
                                settle_seconds=180)
    why = {r["id"]: r["last_error"] for r in await conn.fetch(
        "SELECT id, last_error FROM syncd.outbox")}
    assert why[1] == ("the lease of host:1:aa expired while in flight (process crashed or "
                      "stalled); a request was sent, so Kantata is checked for it before it is "
                      "sent again")
    assert why[2] == ("the lease of host:1:aa expired while in flight (process crashed or "
                      "stalled); nothing was sent")
    assert why[3] == ("host:2:bb stopped while a request for this row was in flight (run "
                      "deadline, shutdown or error); Kantata is checked for it before it is "
                      "sent again")
    # `syncd outbox list` shows the reason next to the wait
    shown = render_rows(await outbox.list_rows(conn), T0 + timedelta(seconds=100))
    line = next(x for x in shown.splitlines() if x.split()[0] == "1")
    assert "(retry in 80s) the lease of host:1:aa expired" in line


async def test_an_unknown_op_is_named_by_the_op_constraint(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="outbox_op_valid"):
        await conn.execute("""INSERT INTO syncd.outbox (op, payload)
                              VALUES ('upsert', '{"time_in_minutes": 1}')""")


async def test_a_create_whose_request_may_have_reached_kantata_is_not_discarded(
        conn: asyncpg.Connection) -> None:
    await insert(conn, f"('create', NULL, '{CREATE}'), ('create', NULL, '{CREATE}')")
    await conn.execute("UPDATE syncd.outbox SET sent_at = now(), attempts = 1 WHERE id = 1")
    assert await outbox.discard_rows(conn, [1, 2]) == [2]
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox WHERE id = 1") == 1


@pytest.mark.parametrize("base", ["infinity", "-infinity"])
async def test_a_base_version_that_is_not_an_instant_is_refused_at_insert(
        conn: asyncpg.Connection, base: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as exc:
        await conn.execute("INSERT INTO syncd.outbox (op, entry_id, payload, base_updated_at) "
                           "VALUES ('update', 1, '{\"notes\": \"x\"}', $1::text::timestamptz)", base)
    assert exc.value.constraint_name == "outbox_base_updated_at_is_an_instant"
    assert f"base_updated_at must be an instant, not {base} (outbox_base" in str(exc.value)
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox") == 0


async def test_numbers_a_double_holds_are_accepted(conn: asyncpg.Connection) -> None:
    await insert(conn, "('update', 1, '{\"rate_in_cents\": 0, \"time_in_minutes\": 1e308, "
                       "\"notes\": \"1e400\"}'), ('update', 2, '{\"rate_in_cents\": -3e-300}')")
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox") == 2


def test_the_list_shows_entry_id_zero_and_a_dash_only_for_none() -> None:
    """A trial: an old row with entry_id 0 was listed as `-`, like a create without one."""
    base = {"op": "update", "status": "failed", "attempts": 1, "created_at": T0,
            "last_error": "x", "result": None, "next_attempt_at": T0}
    shown = render_rows([{**base, "id": 1, "entry_id": 0},
                         {**base, "id": 2, "entry_id": None, "op": "create"}], T0)
    assert [line.split()[2] for line in shown.splitlines()[1:]] == ["0", "-"]


def test_the_list_says_who_holds_an_in_flight_row_and_until_when() -> None:
    """The second trial: rows left in_flight by a killed process showed an empty reason for
    two minutes; the owner and the lease were only in --json."""
    base = {"op": "update", "status": "in_flight", "attempts": 1, "created_at": T0,
            "last_error": None, "result": None, "next_attempt_at": T0, "entry_id": 5,
            "lease_owner": "host:42:ab"}
    shown = render_rows([{**base, "id": 1, "lease_expires_at": T0 + timedelta(seconds=90)},
                         {**base, "id": 2, "lease_expires_at": T0 - timedelta(seconds=30)}],
                        T0)
    assert "(held by host:42:ab, lease ends in 90s)" in shown.splitlines()[1]
    assert "(lease of host:42:ab ended 30s ago: the next push takes it over)" in \
        shown.splitlines()[2]
