"""Nothing lost, nothing applied twice: lost answers, a crash between sending and committing,
and two syncd processes draining one outbox, checked item by item against the simulator."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from syncd import outbox, push
from syncd.app import open_deps
from syncd.errors import MalformedResponseError
from syncd.kantata import ApiResponse
from syncd.pgserver import free_port
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings
from tests.integration.outbox_helpers import (
    drain, editable_ids, enqueue_many, entries_with_note, mirror_from_sim, new_entry,
    requests_of, rows, syncd_refs,
)

pytestmark = pytest.mark.integration


async def assert_one_entry_per_create(sim: Simulator, sim_url: str, conn: asyncpg.Connection,
                                      ids: list[int]) -> None:
    sim.clear_faults()
    state = await rows(conn)
    refs = await syncd_refs(sim_url)
    notes = entries_with_note(sim)
    for i, rid in enumerate(ids):
        row = state[rid]
        assert row["status"] == "done", dict(row)
        assert refs[str(row["correlation_key"])] == [row["entry_id"]], i
        assert notes[f"outbox create {i}"] == [row["entry_id"]], i
    assert len(refs) == len(ids)


async def test_lost_answers_still_give_exactly_one_entry_per_create(
        deps: Deps, sim: Simulator, sim_url: str, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    ids = await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(250)])
    upd = editable_ids(sim)[:40]
    dele = editable_ids(sim)[40:80]
    more = await enqueue_many(conn, [("update", e, {"notes": f"lossy {e}"}) for e in upd]
                              + [("delete", e, None) for e in dele])
    sim.set_faults({"lost_response_rate": 0.3, "seed": 1})
    reports = await drain(deps, conn, rounds=30)
    lost = [r for r in sim.requests if r["fault"] == "lost_response"]
    assert len(lost) >= 5  # the faults really happened, POSTs included
    assert any(r["method"] == "POST" for r in lost)
    await assert_one_entry_per_create(sim, sim_url, conn, ids)
    state = await rows(conn)
    assert {state[i]["status"] for i in more} == {"done"}
    assert all(sim.get_entry(e)["notes"] == f"lossy {e}" for e in upd)  # type: ignore[index]
    assert all(sim.get_entry(e) is None for e in dele)
    results = Counter(state[i]["result"] for i in ids)
    assert results["found_existing"] >= 1 and results["created"] >= 1
    print(f"MEASURE lost_response 0.3: {len(reports)} drains, {len(sim.requests)} requests, "
          f"{len(lost)} lost answers, results {dict(results)}")


async def test_killed_between_send_and_commit_then_restarted(
        deps: Deps, sim: Simulator, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(150)])
    real = deps.client.create_entries
    sent = asyncio.Event()

    async def post_then_hang(items: Any) -> ApiResponse:
        resp = await real(items)      # Kantata created the entries ...
        sent.set()
        await asyncio.sleep(3600)     # ... and syncd dies before committing the answer
        return resp

    async def killed(*_: Any, **__: Any) -> None:  # SIGKILL: none of its code runs any more
        return None

    monkeypatch.setattr(deps.client, "create_entries", post_then_hang)
    monkeypatch.setattr(push, "_release_claimed", killed)
    t0 = datetime.now(UTC)
    task = asyncio.create_task(push.push_once(deps, owner="dying", now=t0))
    await asyncio.wait_for(sent.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.undo()
    state = await rows(conn)
    first = [state[i] for i in ids[:100]]
    assert {(r["status"], r["lease_owner"]) for r in first} == {("in_flight", "dying")}
    assert all(r["sent_at"] is not None for r in first)
    # A new process: nothing happens before the lease expires ...
    sim.clear_requests()
    report = await push.push_once(deps, owner="restarted", now=t0 + timedelta(seconds=60))
    assert report.reclaimed == 0
    # ... then the rows are reclaimed, looked up, and only the missing ones sent
    later = t0 + timedelta(seconds=deps.settings.outbox_lease + 1)
    report = await push.push_once(deps, owner="restarted", now=later)
    assert report.reclaimed == 100
    await assert_one_entry_per_create(sim, sim_url, conn, ids)
    state = await rows(conn)
    assert Counter(state[i]["result"] for i in ids) == {"found_existing": 100, "created": 50}
    posts = requests_of(sim, "POST")
    # the first batch was never re-posted: the 50 rows of the second batch went out (once),
    # plus the lookup for the first batch
    assert [len(p["body"]["time_entries"]) for p in posts] == [50]
    lookups = [r for r in sim.requests if "external_reference_service_model_refs" in r["query"]]
    assert len(lookups) == 1
    run = await conn.fetchrow("SELECT status FROM syncd.sync_runs WHERE job = 'push' "
                              "ORDER BY started_at LIMIT 1")
    assert run["status"] == "interrupted"


async def test_database_failure_after_sending_then_rerun(
        deps: Deps, sim: Simulator, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(30)])
    real_finish = outbox.finish_rows

    async def broken(*a: Any, **kw: Any) -> set[int]:
        raise asyncpg.exceptions.AdminShutdownError("terminating connection")

    monkeypatch.setattr(outbox, "finish_rows", broken)
    t0 = datetime.now(UTC)
    with pytest.raises(asyncpg.exceptions.AdminShutdownError):
        await push.push_once(deps, owner="a", now=t0)
    monkeypatch.setattr(outbox, "finish_rows", real_finish)
    state = await rows(conn)
    # leases given back at once; the rows are looked up seconds later (they landed: done)
    assert {state[i]["status"] for i in ids} == {"pending"}
    assert {state[i]["next_attempt_at"] for i in ids} == {
        t0 + timedelta(seconds=push.LOOKUP_SECONDS)}
    assert (await push.push_once(deps, owner="a", now=t0 + timedelta(seconds=1))).claimed == 0
    sim.clear_requests()
    await push.push_once(deps, owner="a", now=t0 + timedelta(seconds=push.LOOKUP_SECONDS))
    await assert_one_entry_per_create(sim, sim_url, conn, ids)
    assert requests_of(sim, "POST") == []
    assert {(await rows(conn))[i]["result"] for i in ids} == {"found_existing"}


async def test_unreadable_answer_to_a_create_is_looked_up_not_resent(
        deps: Deps, sim: Simulator, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(3)])
    real = deps.client.create_entries

    async def garbled(items: Any) -> ApiResponse:
        await real(items)
        raise MalformedResponseError("response body is HTML (200 bytes, starts '<html>')")

    monkeypatch.setattr(deps.client, "create_entries", garbled)
    t0 = datetime.now(UTC)
    report = await push.push_once(deps, now=t0)
    assert report.retry == 3
    state = await rows(conn)
    assert {state[i]["next_attempt_at"] for i in ids} == {
        t0 + timedelta(seconds=push.LOOKUP_SECONDS)}
    monkeypatch.undo()
    sim.clear_requests()
    await push.push_once(deps, now=t0 + timedelta(seconds=push.LOOKUP_SECONDS))
    await assert_one_entry_per_create(sim, sim_url, conn, ids)
    assert requests_of(sim, "POST") == []


async def test_two_processes_push_each_row_exactly_once(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    creates = [("create", None, new_entry(sim, i)) for i in range(300)]
    targets = editable_ids(sim)
    updates = [("update", e, {"notes": f"twice? {e}"}) for e in targets[:60]]
    deletes = [("delete", e, None) for e in targets[60:120]]
    ids = await enqueue_many(conn, creates + updates + deletes)  # type: ignore[arg-type]
    sim.set_faults({"latency_ms": 3})
    settings = make_settings(db_dsn, sim_url, push_batch_size=20)
    async with open_deps(settings) as a, open_deps(settings) as b:
        ra, rb = await asyncio.gather(push.push_once(a, owner="one"),
                                      push.push_once(b, owner="two"))
    assert ra.claimed > 0 and rb.claimed > 0, (ra.claimed, rb.claimed)
    assert ra.claimed + rb.claimed == len(ids)
    keys = Counter(item["external_reference"]["service_model_ref"]
                   for p in requests_of(sim, "POST") for item in p["body"]["time_entries"])
    assert len(keys) == 300 and set(keys.values()) == {1}
    puts = Counter(r["path"] for r in requests_of(sim, "PUT"))
    assert len(puts) == 60 and set(puts.values()) == {1}
    deleted = Counter(i for r in requests_of(sim, "DELETE") for i in r["query"]["ids"].split(","))
    assert len(deleted) == 60 and set(deleted.values()) == {1}
    await assert_one_entry_per_create(sim, sim_url, conn, ids[:300])
    state = await rows(conn)
    assert {state[i]["status"] for i in ids} == {"done"}


async def test_a_create_refused_at_connect_is_sent_again_without_settle_or_lookup(
        deps: Deps, db_dsn: str, sim: Simulator, sim_url: str,
        conn: asyncpg.Connection) -> None:
    ids = await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(3)])
    nobody = f"http://127.0.0.1:{free_port()}/api/v1"  # connection refused: nothing was sent
    t0 = datetime.now(UTC)
    async with open_deps(make_settings(db_dsn, nobody)) as down:
        report = await push.push_once(down, now=t0)
    assert report.retry == 3
    state = await rows(conn)
    for i in ids:
        assert state[i]["status"] == "pending" and state[i]["sent_at"] is None
        assert "could not connect" in state[i]["last_error"]
        # the normal back-off (0.01 s here), not the 3-minute wait for an unknown outcome
        assert state[i]["next_attempt_at"] < t0 + timedelta(seconds=1)
    sim.clear_requests()
    await push.push_once(deps, now=t0 + timedelta(seconds=1))
    assert [r for r in sim.requests if "external_reference_service_model_refs" in r["query"]] \
        == []  # no lookup either
    assert [len(p["body"]["time_entries"]) for p in requests_of(sim, "POST")] == [3]
    await assert_one_entry_per_create(sim, sim_url, conn, ids)


async def test_a_push_run_cut_by_its_deadline_gives_its_rows_back_at_once(
        deps: Deps, sim: Simulator, sim_url: str, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    ids = await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(3)])
    eid = editable_ids(sim)[0]
    upd = await enqueue_many(conn, [("update", eid, {"notes": "after the deadline"})])
    sim.set_faults({"timeout_rate": 1.0})  # Kantata hangs on every request
    t0 = datetime.now(UTC)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):  # what the scheduler does at the run's deadline
            await push.push_once(deps, owner="alive", now=t0)
    state = await rows(conn)
    # the owner is alive and gave its rows back: nothing waits for SYNCD_OUTBOX_LEASE
    assert {(state[i]["status"], state[i]["lease_owner"]) for i in ids + upd} == {
        ("pending", None)}
    # the POST may have reached Kantata: kept as sent, looked up first (no blind re-POST);
    # the update never went out, so its attempt is given back and it is due now
    for i in ids:
        assert state[i]["sent_at"] is not None and state[i]["attempts"] == 1
        assert state[i]["next_attempt_at"] == t0 + timedelta(seconds=push.LOOKUP_SECONDS)
        assert "stopped while a request for this row was in flight" in state[i]["last_error"]
    u = state[upd[0]]
    assert (u["attempts"], u["sent_at"], u["next_attempt_at"]) == (0, None, t0)
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs WHERE job = 'push'") \
        == "interrupted"
    sim.clear_faults()
    sim.clear_requests()
    # looked up seconds later: the hung POSTs never landed, and they may still be running at
    # Kantata, so nothing is sent before 3 minutes after the send
    await push.push_once(deps, now=t0 + timedelta(seconds=push.LOOKUP_SECONDS))
    assert requests_of(sim, "POST") == []
    state = await rows(conn)
    for i in ids:
        assert (state[i]["status"], state[i]["attempts"]) == ("pending", 1)
        assert state[i]["next_attempt_at"] == t0 + timedelta(seconds=push.SETTLE_SECONDS)
        assert "does not list it yet" in state[i]["last_error"]
    await push.push_once(deps, now=t0 + timedelta(seconds=push.SETTLE_SECONDS))
    lookups = [r for r in sim.requests if "external_reference_service_model_refs" in r["query"]]
    assert len(lookups) == 2
    assert [len(p["body"]["time_entries"]) for p in requests_of(sim, "POST")] == [3]
    await assert_one_entry_per_create(sim, sim_url, conn, ids)
    assert sim.get_entry(eid)["notes"] == "after the deadline"  # type: ignore[index]


async def test_rows_left_in_flight_by_a_failed_release_are_pushed_by_the_next_drain(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """The database went away as a drain of the daemon ended, so its release failed and its
    claimed rows stayed in_flight under its owner (a new user's trial: they waited out the
    300 s lease although nothing had been sent). The next drain of the same owner gives them
    back first and pushes them; a claim of another owner is left to its lease."""
    await mirror_from_sim(conn, sim)
    eids = editable_ids(sim)[:3]
    ids = await enqueue_many(conn, [("update", e, {"notes": f"left {i}"})
                                    for i, e in enumerate(eids)])
    mine = await outbox.claim_batch(conn, owner="daemon-a", limit=2, lease_seconds=300)
    other = await outbox.claim_batch(conn, owner="daemon-b", limit=1, lease_seconds=300)
    assert [r.id for r in mine.rows] == ids[:2] and [r.id for r in other.rows] == ids[2:]
    report = await push.push_once(deps, owner="daemon-a")
    state = await rows(conn)
    assert [state[i]["status"] for i in ids] == ["done", "done", "in_flight"]
    assert [state[i]["attempts"] for i in ids[:2]] == [1, 1]  # the unsent claim gave its back
    assert report.done == 2
    assert sim.get_entry(eids[0])["notes"] == "left 0"  # type: ignore[index]


@pytest.mark.parametrize("op", ["create", "update", "delete"])
async def test_a_refused_token_sends_nothing_again_and_holds_nothing_back(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection, op: str) -> None:
    """A trial: a create pushed with a wrong token. Kantata answered 401, so nothing was
    applied; yet the row was treated as an answer lost (an attempt spent, 'stopped while a
    request … was in flight', held ~3 minutes for a lookup). Each row is now pending again at
    once, no attempt spent, no `sent_at`; a refused send says so with the setting to check;
    and the right token pushes it on the next run without a lookup."""
    from syncd.errors import AuthError

    await mirror_from_sim(conn, sim)
    eid = editable_ids(sim)[0]
    [rid] = await enqueue_many(conn, [{"create": ("create", None, new_entry(sim, 0)),
                                       "update": ("update", eid, {"notes": "after the 401"}),
                                       "delete": ("delete", eid, None)}[op]])
    async with open_deps(make_settings(db_dsn, sim_url, kantata_token="wrong-token")) as d:
        with pytest.raises(AuthError, match="refused the token; check SYNCD_KANTATA_TOKEN"):
            await push.push_once(d)
    row = (await rows(conn))[rid]
    assert (row["status"], row["attempts"], row["sent_at"]) == ("pending", 0, None), dict(row)
    assert row["next_attempt_at"] <= datetime.now(UTC)
    sent = [r["method"] for r in sim.requests if r["status"] == 401]
    # refused when sent, or (an update) at the read before it: the row says so either way
    # (the second trial: an update's row showed no error at all)
    assert row["last_error"].startswith("not sent: HTTP 401: " if sent[-1] == "GET" else
                                        "not applied: HTTP 401: "), row["last_error"]
    assert "check SYNCD_KANTATA_TOKEN" in row["last_error"]
    sim.clear_requests()
    async with open_deps(make_settings(db_dsn, sim_url)) as d:
        report = await push.push_once(d)
    assert report.done == 1, report
    if op == "create":
        assert [r["method"] for r in sim.requests] == ["POST"]  # no lookup first
        assert entries_with_note(sim).get("outbox create 0") is not None
    elif op == "delete":
        assert sim.get_entry(eid) is None
