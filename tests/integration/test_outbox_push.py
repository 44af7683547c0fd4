"""The outbox push against the simulator and a real PostgreSQL: creates, updates and deletes,
item by item, with the request counts the issue promises."""

from __future__ import annotations

import math

import asyncpg
import orjson
import pytest

from syncd import push
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.outbox_helpers import (
    drain, editable_ids, enqueue, enqueue_many, entries_with_note, mirror_from_sim,
    new_entry, requests_of, rows, syncd_refs,
)
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration


async def test_250_creates_cost_three_bulk_posts_and_land_once(
        deps: Deps, sim: Simulator, sim_url: str, conn: asyncpg.Connection) -> None:
    ids = await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(250)])
    sim.clear_requests()
    report = await push.push_once(deps, owner="a")
    posts = requests_of(sim, "POST")
    assert len(posts) == math.ceil(250 / 100) == 3
    assert [len(p["body"]["time_entries"]) for p in posts] == [100, 100, 50]
    assert len(sim.requests) == 3  # no lookups: nothing was ambiguous
    assert report.done == 250 and report.failed == report.retry == 0
    state = await rows(conn)
    assert {state[i]["status"] for i in ids} == {"done"}
    assert {state[i]["result"] for i in ids} == {"created"}
    refs = await syncd_refs(sim_url)
    by_note = entries_with_note(sim)
    for i, rid in enumerate(ids):
        row = state[rid]
        assert refs[row["correlation_key"].__str__()] == [row["entry_id"]]
        assert by_note[f"outbox create {i}"] == [row["entry_id"]]
        remote = sim.get_entry(row["entry_id"])
        assert remote is not None and remote["time_in_minutes"] == 15 + i % 90
    # readers see their own writes: the mirror already has every created entry
    mirrored = await conn.fetchval(
        "SELECT count(*) FROM kantata.time_entries WHERE id = ANY($1::bigint[])",
        [state[i]["entry_id"] for i in ids])
    assert mirrored == 250
    # metrics and run history
    sample = deps.metrics.registry.get_sample_value
    assert sample("syncd_outbox_items_total", {"op": "create", "outcome": "done"}) == 250
    assert sample("syncd_outbox_rows", {"status": "done"}) == 250
    assert sample("syncd_outbox_rows", {"status": "pending"}) == 0
    assert sample("syncd_outbox_oldest_pending_seconds") == 0
    run = await conn.fetchrow("SELECT * FROM syncd.sync_runs WHERE job = 'push'")
    assert (run["status"], run["requests"], run["rows_upserted"]) == ("ok", 3, 250)
    assert orjson.loads(run["details"])["outcomes"] == {"create:done": 250}


async def test_mirror_is_exact_after_creates_updates_and_deletes(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    live = editable_ids(sim)
    assert await mirror_diff(conn, sim.list_entries()) == []
    ops: list[tuple[str, int | None, dict[str, object] | None]] = []
    ops += [("create", None, new_entry(sim, i)) for i in range(5)]
    ops += [("update", eid, {"notes": f"edited {eid}", "time_in_minutes": 42})
            for eid in live[:5]]
    ops += [("delete", eid, None) for eid in live[5:10]]
    ids = await enqueue_many(conn, ops)
    sim.clear_requests()
    report = await push.push_once(deps, owner="a")
    assert report.done == 15, report.as_dict()
    state = await rows(conn)
    assert [state[i]["result"] for i in ids] == ["created"] * 5 + ["updated"] * 5 + ["deleted"] * 5
    for eid in live[:5]:
        e = sim.get_entry(eid)
        assert e is not None and e["notes"] == f"edited {eid}" and e["time_in_minutes"] == 42
    assert all(sim.get_entry(eid) is None for eid in live[5:10])
    # one POST, one only= read, 5 PUTs, one DELETE
    assert [(r["method"], r["path"].count("/")) for r in sim.requests].count(("PUT", 4)) == 5
    assert len(requests_of(sim, "POST")) == 1
    assert len(requests_of(sim, "DELETE")) == 1
    assert len(requests_of(sim, "GET")) == 1
    # the mirror matches Kantata exactly, without a pull
    assert await mirror_diff(conn, sim.list_entries()) == []
    deleted = await conn.fetchval(
        "SELECT count(*) FROM kantata.time_entries WHERE id = ANY($1::bigint[]) "
        "AND deleted_at IS NOT NULL", live[5:10])
    assert deleted == 5


async def test_250_deletes_cost_three_bulk_deletes(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    targets = editable_ids(sim)[:250]
    ids = await enqueue_many(conn, [("delete", eid, None) for eid in targets])
    sim.clear_requests()
    report = await push.push_once(deps, owner="a")
    deletes = requests_of(sim, "DELETE")
    assert len(deletes) == 3 and len(sim.requests) == 3
    assert [len(d["query"]["ids"].split(",")) for d in deletes] == [100, 100, 50]
    assert report.done == 250
    state = await rows(conn)
    assert {(state[i]["status"], state[i]["result"]) for i in ids} == {("done", "deleted")}
    assert all(sim.get_entry(eid) is None for eid in targets)
    assert len(sim.list_entries()) == 600 - 250


async def test_invalid_creates_fail_with_kantatas_message_and_never_block_the_rest(
        deps: Deps, sim: Simulator, sim_url: str, conn: asyncpg.Connection) -> None:
    archived = next(w.id for w in sim.workspaces.values() if w.archived)
    bad_at = {7: {"time_in_minutes": 5000}, 64: {"workspace_id": archived},
              130: {"date_performed": "2026-02-30"}, 249: {"time_in_minutes": 0}}
    payloads = [new_entry(sim, i, **bad_at.get(i, {})) for i in range(250)]
    ids = await enqueue_many(conn, [("create", None, p) for p in payloads])
    sim.clear_requests()
    await drain(deps, conn)
    posts = requests_of(sim, "POST")
    k = len(bad_at)
    assert len(posts) <= math.ceil(250 / 100) + 7 * k
    assert len(posts) == 3 + 3  # each batch with a bad item: one refusal, one resend
    state = await rows(conn)
    by_note = entries_with_note(sim)
    for i, rid in enumerate(ids):
        row = state[rid]
        if i in bad_at:
            assert row["status"] == "failed", (i, dict(row))
            assert row["entry_id"] is None
            assert f"outbox create {i}" not in by_note
        else:
            assert row["status"] == "done"
            assert by_note[f"outbox create {i}"] == [row["entry_id"]]
    assert "Time in minutes must be between 1 and 1440" in state[ids[7]]["last_error"]
    assert "archived" in state[ids[64]]["last_error"]
    assert "not a valid YYYY-MM-DD date" in state[ids[130]]["last_error"]
    assert state[ids[7]]["last_error"].startswith("HTTP 422: ")
    refs = await syncd_refs(sim_url)
    assert len(refs) == 250 - k and all(len(v) == 1 for v in refs.values())


async def test_single_enqueue_and_payload_shape(deps: Deps, sim: Simulator,
                                                conn: asyncpg.Connection) -> None:
    rid = await enqueue(conn, "create", payload=new_entry(sim, 1, billable=False))
    sim.clear_requests()
    await push.push_once(deps)
    body = requests_of(sim, "POST")[0]["body"]
    key = await conn.fetchval("SELECT correlation_key::text FROM syncd.outbox WHERE id = $1", rid)
    item = body["time_entries"][0]
    assert item["external_reference"] == {
        "service_name": "syncd", "service_model": "syncd_outbox", "service_model_ref": key,
        "status": "successful"}
    assert item["billable"] is False
    row = (await rows(conn))[rid]
    assert orjson.loads(row["remote_entry"])["id"] == str(row["entry_id"])
