"""History mode (issue #13): kantata.time_entry_versions, time_entries_as_of and
time_entry_changes, against the simulator and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from syncd import pull, reconcile_job, store
from syncd.app import open_deps
from syncd.runs import Deps
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator
from tests.integration.conftest import TOKEN, make_settings
from tests.integration.outbox_helpers import drain, editable_ids, enqueue, new_entry, rows

pytestmark = pytest.mark.integration

COLUMNS = ("id, workspace_id, user_id, story_id, role_id, date_performed, time_in_minutes, "
           "billable, notes, rate_in_cents, cost_rate_in_cents, currency, currency_symbol, "
           "currency_base_unit, approved, is_invoiced, taxable, location, created_at, updated_at")


async def versions(conn: asyncpg.Connection, eid: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM kantata.time_entry_versions WHERE id = $1 "
        "ORDER BY version_id NULLS LAST", eid)


async def count_versions(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM kantata.time_entry_versions")


async def assert_history_agrees(conn: asyncpg.Connection) -> None:
    """Every mirror row has exactly one current version, and each entry's versions form one
    chain: every replaced version ends where the next one starts."""
    assert await conn.fetchval("""
        SELECT count(*) FROM kantata.time_entries t
        WHERE (SELECT count(*) FROM kantata.time_entry_versions v
               WHERE v.id = t.id AND v.valid_to IS NULL) <> 1""") == 0
    breaks = await conn.fetch("""
        SELECT id, valid_to, next_from FROM (
            SELECT id, valid_to, lead(valid_from) OVER (PARTITION BY id
                                                        ORDER BY version_id NULLS LAST)
                   AS next_from
            FROM kantata.time_entry_versions) x
        WHERE valid_to IS DISTINCT FROM next_from""")
    assert [dict(r) for r in breaks] == []


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0).isoformat()


async def test_three_edits_and_a_delete_are_four_versions_and_a_deletion(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    eid = next(i for i in editable_ids(sim) if not sim.get_entry(i)["approved"])  # type: ignore[index]
    e = sim.get_entry(eid)
    assert e is not None
    minutes = [e["time_in_minutes"]]
    stamps = [datetime.fromisoformat(e["updated_at"])]
    for k in (1, 2, 3):
        minutes.append(minutes[-1] + 30)
        stamps.append(datetime.fromisoformat(at(k)))
        sim.edit_entry(eid, {"time_in_minutes": minutes[-1],
                             "updated_at": stamps[-1].isoformat()} | (
                                 {"approved": True} if k == 2 else {}))
        await pull.sync_once(deps)
    sim.delete_entry(eid)
    day = date.fromisoformat(e["date_performed"])
    await reconcile_job.reconcile_range(deps, day, day)
    deleted_at = await conn.fetchval("SELECT deleted_at FROM kantata.time_entries WHERE id = $1",
                                     eid)
    assert deleted_at is not None

    vs = await versions(conn, eid)
    assert [(v["time_in_minutes"], v["deleted"], v["first_seen"], v["learned_via"]) for v in vs] == [
        (minutes[0], False, True, "backfill"), (minutes[1], False, False, "pull"),
        (minutes[2], False, False, "pull"), (minutes[3], False, False, "pull"),
        (minutes[3], True, False, "reconcile")]
    # the edits are stamped up to 3 s ahead of the clock; a deletion never starts before the
    # version it ends
    gone = max(deleted_at, stamps[3])
    assert [(v["valid_from"], v["valid_to"]) for v in vs] == [
        (stamps[0], stamps[1]), (stamps[1], stamps[2]), (stamps[2], stamps[3]),
        (stamps[3], gone), (gone, None)]
    changes = await conn.fetch(
        "SELECT change, fields, diff, learned_via FROM kantata.time_entry_changes "
        "WHERE entry_id = $1 ORDER BY version_id", eid)
    assert [tuple(c) for c in changes] == [
        ("first_seen", None, None, "backfill"),
        ("edited", ["time_in_minutes"], f"time_in_minutes {minutes[0]} → {minutes[1]}", "pull"),
        ("edited", ["time_in_minutes", "approved"],
         f"time_in_minutes {minutes[1]} → {minutes[2]}; approved false → true", "pull"),
        ("edited", ["time_in_minutes"], f"time_in_minutes {minutes[2]} → {minutes[3]}", "pull"),
        ("deleted", None, None, "reconcile")]
    await assert_history_agrees(conn)


async def test_rereading_the_overlap_and_reconciling_twice_add_no_version(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    first = await count_versions(conn)
    assert first == len(sim.list_entries())  # one first-seen version per entry
    ids = editable_ids(sim)[:5]
    for i in ids:
        sim.edit_entry(i, {"notes": f"edited {i}"})
    await pull.sync_once(deps)
    assert await count_versions(conn) == first + 5
    await pull.sync_once(deps)  # the overlap re-reads the five edits
    days = sorted(date.fromisoformat(e["date_performed"]) for e in sim.list_entries())
    for _ in range(2):
        await reconcile_job.reconcile_range(deps, days[0], days[-1])
    assert await count_versions(conn) == first + 5
    await assert_history_agrees(conn)


async def test_as_of_equals_the_mirror_as_it_was_at_five_moments(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A scripted history: after each step the mirror is snapshot at t; afterwards,
    time_entries_as_of(t) must give exactly that snapshot, for each of the five moments."""
    snapshots: list[tuple[datetime, set[tuple[Any, ...]]]] = []
    ids = editable_ids(sim)
    days = sorted(date.fromisoformat(e["date_performed"]) for e in sim.list_entries())
    ws = int(sim.list_entries()[0]["workspace_id"])

    async def snapshot() -> None:
        t = await conn.fetchval("SELECT now()")
        rows_ = await conn.fetch(
            f"SELECT {COLUMNS} FROM kantata.time_entries WHERE deleted_at IS NULL")
        snapshots.append((t, {tuple(r) for r in rows_}))
        # the next step's changes must carry a later updated_at (Kantata: whole seconds)
        await asyncio.sleep(1.05 - (time.time() % 1))

    steps = [
        lambda: None,  # the backfill
        lambda: [sim.edit_entry(i, {"time_in_minutes": 11 + n}) for n, i in enumerate(ids[:3])],
        lambda: (sim.delete_entry(ids[3]), sim.create_entry(
            {"workspace_id": ws, "date_performed": days[-1].isoformat(),
             "time_in_minutes": 42})),
        lambda: [sim.edit_entry(i, {"approved": True, "notes": "approved"}) for i in ids[:2]],
        lambda: (sim.edit_entry(ids[0], {"time_in_minutes": 99}), sim.delete_entry(ids[1])),
    ]
    for step in steps:
        step()
        await pull.sync_once(deps)
        await reconcile_job.reconcile_range(deps, days[0], days[-1])
        await snapshot()
    for t, snap in snapshots:
        as_of = await conn.fetch(f"SELECT {COLUMNS} FROM kantata.time_entries_as_of($1)", t)
        assert {tuple(r) for r in as_of} == snap, t
    assert len({frozenset(s) for _, s in snapshots}) == 5  # every step changed something
    await assert_history_agrees(conn)


async def test_a_push_is_recorded_once_not_again_when_the_pull_sees_it(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    eid = editable_ids(sim)[7]
    upd = await enqueue(conn, "update", eid, {"time_in_minutes": 77})
    new = await enqueue(conn, "create", None, new_entry(sim, 3))
    await drain(deps, conn)
    state = await rows(conn)
    created = state[new]["entry_id"]
    assert state[upd]["status"] == state[new]["status"] == "done"
    before = await count_versions(conn)
    await pull.sync_once(deps)
    await pull.sync_once(deps)
    assert await count_versions(conn) == before
    assert [(v["time_in_minutes"], v["learned_via"]) for v in await versions(conn, eid)][-1] == (
        77, "push")
    assert [(v["first_seen"], v["learned_via"]) for v in await versions(conn, created)] == [
        (True, "push")]
    await assert_history_agrees(conn)


async def test_history_off_records_nothing_and_pruning_keeps_current_versions(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    eid = editable_ids(sim)[0]
    async with open_deps(make_settings(db_dsn, sim_url, history=False)) as off:
        await pull.sync_once(off)
        sim.edit_entry(eid, {"notes": "while history is off"})
        await pull.sync_once(off)
        assert await conn.fetchval("SELECT count(*) FROM kantata.time_entry_history") == 0
    async with open_deps(make_settings(db_dsn, sim_url)) as on:
        sim.edit_entry(eid, {"notes": "history is on now"})
        await pull.sync_once(on)
        sim.edit_entry(eid, {"notes": "and again"})
        await pull.sync_once(on)
    # the version of the off period is the first one history knows
    assert [(v["notes"], v["first_seen"]) for v in await versions(conn, eid)] == [
        ("while history is off", True), ("history is on now", False), ("and again", False)]
    await conn.execute("UPDATE kantata.time_entry_history SET valid_to = now() - interval "
                       "'40 days', valid_from = now() - interval '41 days' WHERE id = $1", eid)
    assert await store.prune_versions(conn, 0) == 0  # 0 keeps everything
    assert await store.prune_versions(conn, 60) == 0
    assert await store.prune_versions(conn, 30) == 2
    assert [v["notes"] for v in await versions(conn, eid)] == ["and again"]


async def test_bi_role_reads_the_history(deps: Deps, sim: Simulator,
                                         conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    if not await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'syncd_bi'"):
        pytest.skip("no syncd_bi role on this server")
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE syncd_bi")
        n = await conn.fetchval("SELECT count(*) FROM kantata.time_entries_as_of(now())")
        assert n == len(sim.list_entries())
        assert await conn.fetchval("SELECT count(*) FROM kantata.time_entry_changes") == n


async def _sync_killed(env: dict[str, str], delays: tuple[float | None, ...]) -> int:
    kills = 0
    for delay in delays:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "syncd", "sync", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if delay is None:
            assert await asyncio.wait_for(proc.wait(), 120) == 0
            continue
        await asyncio.sleep(delay)
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        await proc.wait()
    return kills


async def test_kill_9_never_leaves_mirror_and_history_disagreeing(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """`syncd sync` killed during a backfill and during an incremental pass over 20,000 edits,
    then run to the end: after every kill each entry's mirror row and history agree (an entry
    has the edit in the mirror exactly when its replaced version is in the history)."""
    sim = Simulator(SimConfig(token=TOKEN, entries=30_000, seed=3, lock_date=None))
    async with running_simulator(sim) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        env.update(SYNCD_DATABASE_URL=db_dsn, SYNCD_KANTATA_BASE_URL=url,
                   SYNCD_KANTATA_TOKEN=TOKEN, SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK="true",
                   SYNCD_BACKFILL_START="2020-01-01", SYNCD_RATE_LIMIT_PER_MINUTE="60000",
                   SYNCD_LOG_LEVEL="WARNING")
        kills = await _sync_killed(env, (0.8, 1.4, None))
        await assert_history_agrees(conn)
        assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 30_000
        edited = sorted(int(e["id"]) for e in sim.list_entries())[:20_000]
        for i in edited:
            sim.edit_entry(i, {"notes": "edited before the kill"})
        for delay in (0.7, 1.0, None):
            kills += await _sync_killed(env, (delay,))
            await assert_history_agrees(conn)
            assert await conn.fetchval("""
                SELECT count(*) FROM kantata.time_entries t
                WHERE (t.notes = 'edited before the kill') <> EXISTS (
                    SELECT 1 FROM kantata.time_entry_history h WHERE h.id = t.id)""") == 0
        assert kills >= 2
        assert await conn.fetchval("SELECT count(*) FROM kantata.time_entry_history") == 20_000


async def test_as_of_returns_every_entry_that_existed_saying_which_versions_are_exact(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Issue #23 (migration 0010): an entry created before t but first read after an edit
    (its first known version starts later) was left out of time_entries_as_of(t), so a total
    as of a date was short. Every entry with created_at <= t and no deletion known by t is
    returned; exact_version says whether the row is the version of t."""
    await pull.sync_once(deps)
    remote = {int(e["id"]): e for e in sim.list_entries()}
    created = {i: datetime.fromisoformat(e["created_at"]) for i, e in remote.items()}
    updated = {i: datetime.fromisoformat(e["updated_at"]) for i, e in remote.items()}
    late = sorted(i for i in remote if updated[i] > created[i])  # edited after creation
    assert len(late) >= 10
    t = sorted(created[i] + (updated[i] - created[i]) / 2 for i in late)[len(late) // 2]
    existed = {i for i in remote if created[i] <= t}
    exact = {i for i in existed if updated[i] <= t}
    assert existed - exact  # entries first read after an edit made after t
    # one of them is deleted now (after t): it existed at t, and is gone as of now
    gone = min(existed - exact)
    sim.delete_entry(gone)
    days = sorted(date.fromisoformat(e["date_performed"]) for e in remote.values())
    await reconcile_job.reconcile_range(deps, days[0], days[-1])
    assert await conn.fetchval("SELECT deleted_at IS NOT NULL FROM kantata.time_entries "
                               "WHERE id = $1", gone)

    rows_ = await conn.fetch("SELECT id, exact_version, time_in_minutes, updated_at "
                             "FROM kantata.time_entries_as_of($1)", t)
    assert len(rows_) == len({r["id"] for r in rows_})  # one row per entry
    assert {r["id"] for r in rows_} == existed
    assert {r["id"] for r in rows_ if r["exact_version"]} == exact
    for r in rows_:  # the earliest version known: what Kantata sent when syncd first read it
        assert r["updated_at"] == updated[r["id"]]
        assert r["time_in_minutes"] == remote[r["id"]]["time_in_minutes"]
    # the BI total as of t is complete in entries, and says how many may show later values
    total, unsure = await conn.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE NOT exact_version) "
        "FROM kantata.time_entries_as_of($1)", t)
    assert (total, unsure) == (len(existed), len(existed - exact))
    now_ids = {r["id"] for r in await conn.fetch(
        "SELECT id FROM kantata.time_entries_as_of(now())")}
    assert gone not in now_ids and now_ids == set(remote) - {gone}
    before_all = min(created.values()) - timedelta(seconds=1)
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries_as_of($1)",
                               before_all) == 0
