"""Every documented outcome of an outbox row, against the simulator: conflicts (park and
local wins), our own lost answer, lock-date and invoiced refusals, unknown ids, targets already
gone, back-off, dead letters, and bisection when Kantata's errors name no item."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from syncd import push
from syncd.app import open_deps
from syncd.errors import RetriableAPIError
from syncd.kantata import ApiResponse
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings
from tests.integration.outbox_helpers import (
    drain, editable_ids, enqueue, enqueue_many, entries_with_note, invoiced_ids, mirror_from_sim,
    new_entry, requests_of, rows,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def mirrored(deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> Deps:
    await mirror_from_sim(conn, sim)
    return deps


async def test_remote_change_parks_the_update_as_conflict_with_both_versions(
        mirrored: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    eid = editable_ids(sim)[0]
    base = await conn.fetchval("SELECT updated_at FROM kantata.time_entries WHERE id = $1", eid)
    rid = await enqueue(conn, "update", eid, {"notes": "local", "time_in_minutes": 44})
    remote = sim.edit_entry(eid, {"notes": "remote edit"})
    sim.clear_requests()
    await push.push_once(mirrored)
    row = (await rows(conn))[rid]
    assert row["status"] == "conflict"
    assert row["base_updated_at"] == base
    assert row["remote_updated_at"] == datetime.fromisoformat(remote["updated_at"])
    assert orjson.loads(row["remote_entry"])["notes"] == "remote edit"
    assert "this edit and Kantata's current entry differ in: notes, time_in_minutes" in row["last_error"]
    assert requests_of(sim, "PUT") == []
    assert sim.get_entry(eid)["notes"] == "remote edit"  # type: ignore[index]


async def test_local_wins_policy_pushes_over_the_remote_change(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    async with open_deps(make_settings(db_dsn, sim_url, conflict_policy="local_wins")) as deps:
        await mirror_from_sim(conn, sim)
        eid = editable_ids(sim)[0]
        rid = await enqueue(conn, "update", eid, {"notes": "local"})
        sim.edit_entry(eid, {"notes": "remote edit"})
        await push.push_once(deps)
    row = (await rows(conn))[rid]
    assert (row["status"], row["result"]) == ("done", "local_wins")
    assert sim.get_entry(eid)["notes"] == "local"  # type: ignore[index]
    mirror = await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1", eid)
    assert mirror == "local"


async def test_update_whose_answer_was_lost_is_not_a_conflict_with_itself(
        mirrored: Deps, sim: Simulator, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    eid = editable_ids(sim)[1]
    rid = await enqueue(conn, "update", eid, {"notes": "applied, answer lost"})
    real = mirrored.client.update_entry

    async def lose_answer(entry_id: int, fields: Any) -> ApiResponse:
        await real(entry_id, fields)          # Kantata applies it ...
        raise RetriableAPIError(0, "PUT /time_entries/{id} failed: ServerDisconnectedError")

    monkeypatch.setattr(mirrored.client, "update_entry", lose_answer)
    report = await push.push_once(mirrored)
    assert report.retry == 1
    row = (await rows(conn))[rid]
    assert row["status"] == "pending" and row["sent_at"] is not None
    assert "ServerDisconnectedError" in row["last_error"]
    # Kantata's updated_at moved away from the base (our own write), yet no conflict:
    monkeypatch.undo()
    sim.clear_requests()
    await drain(mirrored, conn)
    row = (await rows(conn))[rid]
    assert (row["status"], row["result"], row["last_error"]) == ("done", "already_applied", None)
    assert requests_of(sim, "PUT") == []


async def test_consecutive_local_edits_of_one_entry_do_not_conflict_with_each_other(
        mirrored: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    eid = editable_ids(sim)[2]
    a = await enqueue(conn, "update", eid, {"notes": "first"})
    b = await enqueue(conn, "update", eid, {"time_in_minutes": 77})
    c = await enqueue(conn, "update", eid, {"notes": "third"})
    sim._clock = lambda: datetime.now(UTC) + timedelta(seconds=5)  # each PUT moves updated_at
    await drain(mirrored, conn)
    state = await rows(conn)
    assert [state[i]["status"] for i in (a, b, c)] == ["done"] * 3
    e = sim.get_entry(eid)
    assert e is not None and (e["notes"], e["time_in_minutes"]) == ("third", 77)
    # order kept: one row of the entry per batch
    puts = requests_of(sim, "PUT")
    assert [p["body"]["time_entry"] for p in puts] == [
        {"notes": "first"}, {"time_in_minutes": 77}, {"notes": "third"}]


async def test_lock_date_and_invoiced_refusals_fail_with_kantatas_reason(
        mirrored: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    lock = date(2025, 6, 28)
    sim.set_lock_date(lock)
    entries = [e for e in sim.list_entries() if not e["is_invoiced"]]
    locked = [int(e["id"]) for e in entries if date.fromisoformat(e["date_performed"]) <= lock]
    free = [int(e["id"]) for e in entries if date.fromisoformat(e["date_performed"]) > lock]
    by_id = {int(e["id"]): e for e in sim.list_entries()}
    invoiced = [i for i in invoiced_ids(sim)
                if date.fromisoformat(by_id[i]["date_performed"]) > lock]
    ops: list[tuple[str, int | None, dict[str, Any] | None]] = [
        ("update", locked[0], {"notes": "x"}),
        ("update", invoiced[0], {"notes": "x"}),
        ("delete", locked[1], None),
        ("delete", invoiced[1], None),
        ("delete", free[0], None),
        ("create", None, new_entry(sim, 1, date_performed="2025-06-01")),
        ("update", free[1], {"date_performed": "2025-06-02"}),   # moving into locked time
    ]
    ids = await enqueue_many(conn, ops)
    await drain(mirrored, conn)
    state = [(await rows(conn))[i] for i in ids]
    assert [r["status"] for r in state] == ["failed", "failed", "failed", "failed", "done",
                                            "failed", "failed"]
    assert "lock date 2025-06-28" in state[0]["last_error"]
    assert "has been invoiced" in state[1]["last_error"]
    assert f"Time entry {locked[1]} could not be deleted" in state[2]["last_error"]
    assert "lock date" in state[2]["last_error"]
    assert "has been invoiced" in state[3]["last_error"]
    assert "on or before the lock date" in state[5]["last_error"]
    assert "on or before the lock date" in state[6]["last_error"]
    assert sim.get_entry(locked[1]) is not None and sim.get_entry(invoiced[1]) is not None
    assert sim.get_entry(free[0]) is None


async def test_unknown_ids_and_targets_already_gone(
        mirrored: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    gone_del, gone_upd, ok = editable_ids(sim)[:3]
    ids = await enqueue_many(conn, [
        ("update", 987654321, {"notes": "x"}),       # never existed
        ("delete", 987654322, None),                  # never existed
        ("delete", gone_del, None),                   # deleted in Kantata meanwhile
        ("update", gone_upd, {"notes": "x"}),         # deleted in Kantata meanwhile
        ("delete", ok, None),
    ])
    sim.delete_entry(gone_del)
    sim.delete_entry(gone_upd)
    sim.clear_requests()
    await drain(mirrored, conn)
    state = [(await rows(conn))[i] for i in ids]
    assert [(r["status"], r["result"]) for r in state] == [
        ("failed", None), ("done", "already_absent"), ("done", "already_absent"),
        ("failed", None), ("done", "deleted")]
    assert "987654321 not found in Kantata" in state[0]["last_error"]
    assert f"{gone_upd} not found in Kantata" in state[3]["last_error"]
    assert sim.get_entry(ok) is None
    # the mirror learns about the deletions at once
    gone = await conn.fetch("SELECT id FROM kantata.time_entries WHERE deleted_at IS NOT NULL")
    assert {r["id"] for r in gone} == {gone_del, ok}
    # one bulk DELETE refused (unknown ids), one read to see which are gone, one resend
    assert len(requests_of(sim, "DELETE")) == 2


async def test_invalid_deletes_cost_at_most_seven_extra_requests_each(
        mirrored: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    free = editable_ids(sim)[:247]
    bad = invoiced_ids(sim)[:3]
    targets = free[:60] + [bad[0]] + free[60:150] + [bad[1], bad[2]] + free[150:]
    ids = await enqueue_many(conn, [("delete", t, None) for t in targets])
    sim.clear_requests()
    await drain(mirrored, conn)
    n, k = len(targets), len(bad)
    total = len(sim.requests)
    assert total - math.ceil(n / 100) <= 7 * k
    print(f"MEASURE deletes n={n} k={k}: {total} requests")
    state = await rows(conn)
    for rid, t in zip(ids, targets, strict=True):
        if t in bad:
            assert state[rid]["status"] == "failed" and "invoiced" in state[rid]["last_error"]
            assert sim.get_entry(t) is not None
        else:
            assert (state[rid]["status"], state[rid]["result"]) == ("done", "deleted")
            assert sim.get_entry(t) is None


async def test_unmappable_refusals_are_bisected_to_exact_verdicts(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kantata's create errors carry `index`; should an answer lack it, bisection still finds
    each invalid item, at about log2(100) extra requests per item."""
    real = deps.client.create_entries

    async def without_index(items: Any) -> ApiResponse:
        resp = await real(items)
        if resp.status == 422:
            for e in resp.body["errors"]:
                e.pop("index", None)
        return resp

    monkeypatch.setattr(deps.client, "create_entries", without_index)
    bad = {3: {"time_in_minutes": 0}, 58: {"time_in_minutes": 2000}, 131: {"notes": 5}}
    payloads = [new_entry(sim, i, **bad.get(i, {})) for i in range(200)]
    ids = await enqueue_many(conn, [("create", None, p) for p in payloads])
    sim.clear_requests()
    await drain(deps, conn)
    posts = len(requests_of(sim, "POST"))
    assert posts - 2 <= 7 * len(bad) + 1, posts
    print(f"MEASURE unmapped creates n=200 k={len(bad)}: {posts} POSTs")
    state = await rows(conn)
    notes = entries_with_note(sim)
    for i, rid in enumerate(ids):
        if i in bad:
            assert state[rid]["status"] == "failed", i
            assert f"outbox create {i}" not in notes
        else:
            assert state[rid]["status"] == "done"
            assert notes[f"outbox create {i}"] == [state[rid]["entry_id"]]
    assert "Time in minutes must be between 1 and 1440" in state[ids[3]]["last_error"]
    assert "Notes must be a string" in state[ids[131]]["last_error"]


async def test_throttling_backs_off_without_counting_as_failure_then_succeeds(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    rid = await enqueue(conn, "create", payload=new_entry(sim, 1))
    sim.set_faults({"error_rate": 1.0, "statuses": [429]})
    t0 = datetime.now(UTC)
    report = await push.push_once(deps, now=t0)
    row = (await rows(conn))[rid]
    # a 429 applied nothing: the attempt is given back (issue #23.2)
    assert report.retry == 1 and row["status"] == "pending" and row["attempts"] == 0
    assert "HTTP 429" in row["last_error"]
    # 429 means Kantata did nothing: a normal back-off, not the settle delay of unknown outcomes
    assert t0 < row["next_attempt_at"] <= t0 + timedelta(seconds=1)
    assert (await push.push_once(deps, now=t0)).claimed == 0   # not before its time
    sim.clear_faults()
    sim.clear_requests()
    await drain(deps, conn)
    row = (await rows(conn))[rid]
    assert (row["status"], row["attempts"], row["last_error"]) == ("done", 1, None)
    # the earlier POST was refused with 429 (nothing done): sent again without a lookup
    assert [r["method"] for r in sim.requests] == ["POST"] and row["sent_at"] is not None


async def test_repeated_server_errors_end_in_the_dead_letter(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    async with open_deps(make_settings(db_dsn, sim_url, outbox_max_attempts=3,
                                       max_retries=0)) as deps:
        await mirror_from_sim(conn, sim)
        rid_c = await enqueue(conn, "create", payload=new_entry(sim, 1))
        rid_d = await enqueue(conn, "delete", editable_ids(sim)[0])
        sim.set_faults({"error_rate": 1.0, "statuses": [503]})
        await drain(deps, conn)
    state = await rows(conn)
    for rid in (rid_c, rid_d):
        row = state[rid]
        assert row["status"] == "failed" and row["attempts"] == 3
        assert row["last_error"].startswith("dead letter: gave up after 3 attempts")
        assert "503" in row["last_error"]
    assert entries_with_note(sim).get("outbox create 1") is None


async def test_a_row_syncd_cannot_send_is_dead_lettered_and_the_rest_are_pushed(
        mirrored: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Rows queued before migration 0017 refused these values at insert (made here by an
    UPDATE, which the insert checks do not see): a payload number beyond a double and a base
    version of -infinity used to stop every push with a message naming no row. Each now ends
    `failed` with its reason at the claim; the valid rows around them are pushed, and the
    operator's list shows them all."""
    eids = editable_ids(sim)[:5]
    ids = [await enqueue(conn, "update", e, {"notes": f"n{i}"}) for i, e in enumerate(eids)]
    rate = sim.get_entry(eids[4])["rate_in_cents"]  # type: ignore[index]
    await conn.execute("UPDATE syncd.outbox SET payload = '{\"time_in_minutes\": 1e400}' "
                       "WHERE id = $1", ids[1])
    await conn.execute("UPDATE syncd.outbox SET base_updated_at = '-infinity' WHERE id = $1",
                       ids[2])
    await conn.execute("UPDATE syncd.outbox SET payload = '{\"rate_in_cents\": 1e-400}' "
                       "WHERE id = $1", ids[4])  # was sent as 0
    negative = await enqueue(conn, "delete", eids[3] + 10**9, None)
    await conn.execute("UPDATE syncd.outbox SET entry_id = -5 WHERE id = $1", negative)
    sim.clear_requests()
    report = await push.push_once(mirrored)
    got = await rows(conn)
    assert [got[i]["status"] for i in ids] == ["done", "failed", "failed", "done", "failed"]
    assert got[negative]["status"] == "failed"  # migration 0018; never sent
    assert "not -5 (outbox_entry_id_is_positive)" in got[negative]["last_error"]
    assert not [r for r in sim.requests if r["method"] == "DELETE"]  # the only delete
    for i in (ids[1], ids[4]):
        assert "(outbox_payload_numbers_fit_a_double)" in got[i]["last_error"]
    assert "base_updated_at is -infinity, not an instant (outbox_base_updated_at_is_an_instant)" \
        in got[ids[2]]["last_error"]
    assert sim.get_entry(eids[0])["notes"] == "n0"  # type: ignore[index]
    assert sim.get_entry(eids[3])["notes"] == "n3"  # type: ignore[index]
    assert sim.get_entry(eids[1])["notes"] != "n1"  # type: ignore[index]
    assert sim.get_entry(eids[4])["rate_in_cents"] == rate  # type: ignore[index]
    assert report.failed == 4 and report.done == 2 and report.claimed == 6
    from syncd import outbox
    listed = {r["id"]: r for r in await outbox.list_rows(conn)}
    assert listed[ids[1]]["payload"].startswith('{"time_in_minutes": 1000')  # jsonb text
    assert listed[ids[0]]["payload"] == {"notes": "n0"}
    assert listed[ids[2]]["base_updated_at"] == "-infinity"  # not 0001-01-01 without a zone
