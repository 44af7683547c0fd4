"""The mirror end to end: simulator → syncd pull → PostgreSQL, compared field by field."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from syncd import http, pull, store
from syncd.app import open_deps
from syncd.commands.status import render_text
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("typed_by_postgres", [False, True])
async def test_backfill_is_an_exact_mirror(deps: Deps, sim: Simulator, conn: asyncpg.Connection,
                                           monkeypatch: pytest.MonkeyPatch,
                                           typed_by_postgres: bool) -> None:
    monkeypatch.setattr(pull, "PAGES_TYPED_BY_POSTGRES", typed_by_postgres)
    stats = await pull.sync_once(deps)
    assert stats.errors == []
    # issue #26: with PostgreSQL typing pages, none needed the careful path
    assert "pages_stored_carefully" not in stats.details
    remote = sim.list_entries()
    assert len(remote) == 600
    assert await mirror_diff(conn, remote) == []
    # archived and other-account workspaces are part of the mirror
    assert stats.rows_upserted == 600
    runs = await conn.fetch("SELECT job, status, rows_upserted FROM syncd.sync_runs")
    assert [(r["job"], r["status"]) for r in runs] == [("pull", "ok")]
    done = await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status <> 'done'")
    assert done == 0


async def test_incremental_picks_up_edits_creates_and_same_second_updates(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    remote = sim.list_entries()
    now = datetime.now(UTC).replace(microsecond=0)
    # 250 edits in one second: more than a page, so the crowded-second path runs
    same = (now + timedelta(seconds=1)).isoformat()
    for e in remote[:250]:
        sim.edit_entry(int(e["id"]), {"notes": f"edited {e['id']}", "updated_at": same})
    sim.create_entry({"workspace_id": remote[0]["workspace_id"], "date_performed": "2026-01-05",
                      "time_in_minutes": 15, "notes": "brand new"})
    sim.requests.clear() if isinstance(sim.requests, list) else sim.clear_requests()
    stats = await pull.sync_once(deps, now=now + timedelta(seconds=5))
    assert stats.errors == []
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_second_cycle_with_no_changes_costs_one_request(
        deps: Deps, sim: Simulator) -> None:
    await pull.sync_once(deps)
    sim.clear_requests()
    await pull.sync_once(deps)
    lists = [r for r in sim.requests if r["method"] == "GET"]
    assert len(lists) == 1, lists
    assert lists[0]["query"]["order"] == "updated_at:asc"
    assert lists[0]["query"]["from_archived_workspaces"] == "true"
    assert lists[0]["query"]["on_my_account"] == "false"


def _list_requests(sim: Simulator) -> list[dict]:
    return [r for r in sim.requests if r["method"] == "GET"
            and r["path"].endswith("/time_entries")]


@pytest.mark.parametrize(("per_second", "expected"), [
    # 360 changes in one second: max(1, ceil((360 + 0) / 200)) = 2 (it was 4)
    (360, 2),
    # 120 a second for 3 seconds: each full page ends 80 entries into a second, which the next
    # page reads again: S = 160, ceil((360 + 160) / 200) = 3
    (120, 3),
    # 360 seconds with one change each: S = 1 (the last entry of page 1), ceil(361 / 200) = 2
    (1, 2),
])
async def test_a_repeat_cycle_costs_what_the_readme_formula_says(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection, per_second: int,
        expected: int) -> None:
    """README, "Cost": the pass right after one that saw N recent changes re-reads them (they
    are inside the overlap) in max(1, ceil((N + S) / 200)) list requests."""
    await pull.sync_once(deps)
    ids = sorted(int(e["id"]) for e in sim.list_entries())[:360]
    newest = datetime.now(UTC).replace(microsecond=0)
    span = 360 // per_second
    for k, i in enumerate(ids):
        at = newest - timedelta(seconds=span - 1 - k // per_second)
        sim.edit_entry(i, {"notes": f"burst {i}", "updated_at": at.isoformat()})
    # the changes are back-dated over `span` seconds: the watermark goes back before them, and
    # the overlap (5 s in these tests) covers them, as it covers changes of the last seconds
    deps.settings = deps.settings.model_copy(update={"overlap": span + 5})
    await conn.execute("UPDATE syncd.watermarks SET settled = NULL, watermark = $1",
                       newest - timedelta(seconds=span + 1))
    await pull.sync_once(deps)
    assert await mirror_diff(conn, sim.list_entries()) == []
    sim.clear_requests()
    await pull.sync_once(deps)  # the repeat cycle: every change is inside the overlap
    assert len(_list_requests(sim)) == expected, [r["query"] for r in _list_requests(sim)]
    sim.clear_requests()
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_a_crowded_second_followed_by_more_changes_reads_its_page_1_once_more(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Issue #23.15: 300 changes in one second, then 100 one per second. The keyset page stands
    in for the second's page 1; the second's count then differs (changes follow it), so page
    1 is read once more to confirm nothing moved, and page 2 is not read again: ceil(300/200)
    + 1 requests for the second, 1 for the 100 after it = 4 (it was 5)."""
    await pull.sync_once(deps)
    ids = sorted(int(e["id"]) for e in sim.list_entries())[:400]
    newest = datetime.now(UTC).replace(microsecond=0)
    burst = newest - timedelta(seconds=100)
    times = [burst] * 300 + [burst + timedelta(seconds=1 + k) for k in range(100)]
    for i, at in zip(ids, times, strict=True):
        sim.edit_entry(i, {"notes": f"burst {i}", "updated_at": at.isoformat()})
    deps.settings = deps.settings.model_copy(update={"overlap": 110})
    await conn.execute("UPDATE syncd.watermarks SET settled = NULL, watermark = $1",
                       burst - timedelta(seconds=2))
    await pull.sync_once(deps)
    sim.clear_requests()
    await pull.sync_once(deps)  # the repeat cycle
    assert len(_list_requests(sim)) == 4, [r["query"] for r in _list_requests(sim)]
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_faults_are_survived(db_dsn: str, sim_url: str, sim: Simulator,
                                   conn: asyncpg.Connection) -> None:
    from syncd.app import open_deps

    sim.set_faults({"error_rate": 0.15, "reset_rate": 0.05, "statuses": [429, 500, 502, 503],
                    "seed": 3})
    async with open_deps(make_settings(db_dsn, sim_url, max_retries=12)) as deps:
        stats = await pull.sync_once(deps)
    assert stats.errors == []
    sim.clear_faults()
    assert await mirror_diff(conn, sim.list_entries()) == []
    faults = [r for r in sim.requests if r.get("fault")]
    assert faults, "no fault was injected"


async def test_default_budget_learns_kantatas_limit_at_the_first_429(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Default settings (issue #16): no preset ceiling, so requests are unpaced until Kantata
    refuses one; from the 429 the budget learns the limit Kantata admits (issue #24,
    tests/integration/test_rate_limit.py), and the backfill goes on under the limit (40
    requests a second here) to an exact mirror."""
    async with open_deps(make_settings(db_dsn, sim_url, rate_limit_per_minute=None,
                                       per_page=10)) as deps:
        budget = deps.client.budget
        assert budget.learned is None and budget.rate_per_minute == float("inf")
        sim.set_faults({"rate_limit_per_minute": 40, "rate_limit_window": 1.0})
        stats = await pull.sync_once(deps)
    assert stats.errors == []
    throttled = [r for r in sim.requests if r["status"] == 429]
    assert throttled, "the limit was never reached: the test shows nothing"
    assert budget.throttles == len(throttled)
    assert budget.learned is not None and budget.learned.per_minute > 40 * 60 / 2
    # once learned, the rate stays near the limit: a few refusals, not one per request
    assert len(throttled) < len(sim.requests) / 4, (len(throttled), len(sim.requests))
    sim.clear_faults()
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_edits_during_paging_are_not_lost(db_dsn: str, sim_url: str, sim: Simulator,
                                                conn: asyncpg.Connection) -> None:
    """Entries edited on pages already read move to the end of an updated_at listing; with
    page-number paging the rows behind them would shift and one would be skipped."""
    from syncd.app import open_deps

    async with open_deps(make_settings(db_dsn, sim_url, per_page=50)) as deps:
        await pull.sync_once(deps)
        clock = [datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=60)]
        sim._clock = lambda: clock[0]
        ids = [int(e["id"]) for e in sim.list_entries()]
        for n, i in enumerate(ids[:300]):  # 300 edits over 15 distinct seconds: 6 pages
            sim.edit_entry(i, {"notes": f"v1 {i}",
                               "updated_at": (clock[0] + timedelta(seconds=n // 20)).isoformat()})
        clock[0] += timedelta(seconds=30)
        orig = deps.client.list_page
        calls = 0

        async def editing_list_page(params, **kw):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls in (2, 3, 4):  # an entry of an already-read page moves to the end
                sim.edit_entry(ids[calls], {"notes": f"moved {calls}"})
            return await orig(params, **kw)

        deps.client.list_page = editing_list_page  # type: ignore[method-assign]
        await pull.sync_once(deps, now=clock[0] + timedelta(seconds=5))
        assert calls >= 6
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_same_second_edit_after_read_is_caught_by_the_overlap(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    clock = [datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=60)]
    sim._clock = lambda: clock[0]
    eid = int(sim.list_entries()[0]["id"])
    sim.edit_entry(eid, {"notes": "first"})
    await pull.sync_once(deps, now=clock[0] + timedelta(seconds=1))
    sim.edit_entry(eid, {"notes": "second, same second"})  # updated_at unchanged
    await pull.sync_once(deps, now=clock[0] + timedelta(seconds=2))
    assert await mirror_diff(conn, sim.list_entries()) == []
    assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                               eid) == "second, same second"


async def test_an_idle_cycle_once_settled_rereads_nothing_and_new_changes_still_arrive(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    # ten minutes later (both clocks): the newest change is older than `overlap` (5 s)
    clock = [datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)]
    sim._clock = lambda: clock[0]
    await pull.sync_once(deps, now=clock[0])
    wm, settled = await conn.fetchrow("SELECT watermark, settled FROM syncd.watermarks")
    assert settled == wm  # everything up to the watermark can no longer change behind it
    snap = await store.status_snapshot(conn)
    assert (snap["watermark"], snap["settled"]) == (wm, settled)
    assert f"settled through:  {settled.isoformat()}" in render_text(snap)  # `syncd status`

    clock[0] += timedelta(minutes=1)
    sim.requests.clear()
    stats = await pull.sync_once(deps, now=clock[0])
    [req] = [r for r in sim.requests if r["path"].endswith("/time_entries")]
    assert datetime.fromisoformat(req["query"]["updated_after"]) == wm  # not wm - overlap
    assert (stats.pages, stats.rows_upserted) == (0, 0)  # an empty page: nothing stored
    assert await conn.fetchval("SELECT settled FROM syncd.watermarks") == settled

    eid = int(sim.list_entries()[5]["id"])
    sim.edit_entry(eid, {"notes": "edited after settling"})
    await pull.sync_once(deps, now=clock[0] + timedelta(seconds=1))
    assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                               eid) == "edited after settling"
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_a_late_commit_within_the_overlap_is_caught_before_it_settles(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """An entry that becomes visible after newer ones were read, with an updated_at behind the
    watermark: the next pass still re-reads `overlap` behind it while that span is recent."""
    await pull.sync_once(deps)
    clock = [datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)]
    sim._clock = lambda: clock[0]
    first, second = (int(e["id"]) for e in sim.list_entries()[:2])
    sim.edit_entry(second, {"notes": "newer, seen first"})
    await pull.sync_once(deps, now=clock[0] + timedelta(seconds=1))
    # an edit stamped 3 s earlier that only shows up now (a late commit)
    clock[0] -= timedelta(seconds=3)
    sim.edit_entry(first, {"notes": "older, committed late"})
    clock[0] += timedelta(seconds=3)
    await pull.sync_once(deps, now=clock[0] + timedelta(seconds=2))
    assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                               first) == "older, committed late"
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_timeouts_and_lost_answers_are_survived(db_dsn: str, sim_url: str, sim: Simulator,
                                                      conn: asyncpg.Connection) -> None:
    from syncd.app import open_deps

    sim.config.hang_seconds = 5.0  # longer than the client's request timeout below
    sim.set_faults({"timeout_rate": 0.08, "lost_response_rate": 0.08, "latency_ms": 5,
                    "seed": 11})
    async with open_deps(make_settings(db_dsn, sim_url, request_timeout=0.5,
                                       max_retries=12)) as deps:
        stats = await pull.sync_once(deps)
    sim.clear_faults()
    assert stats.errors == []
    kinds = {r.get("fault") for r in sim.requests}
    assert {"timeout", "lost_response"} <= kinds, kinds
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_stopped_backfill_is_interrupted_and_claims_no_successful_pull(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A shutdown during the first backfill: the run is `interrupted` (it was `partial`, which
    /readyz and `syncd status` count as a successful pull: a second trial's restarted daemon
    said ready over an empty mirror), freshness claims nothing, and /readyz says why."""
    deps.stopping = asyncio.Event()
    orig = deps.client.list_page
    calls = 0

    async def stop_after_ten(params, **kw):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 10:
            deps.stopping.set()  # SIGTERM arrives mid-backfill
        return await orig(params, **kw)

    deps.client.list_page = stop_after_ten  # type: ignore[method-assign]
    stats = await pull.sync_once(deps)
    assert stats.stopped is not None and "stopped before the backfill finished" in stats.stopped
    row = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs")
    assert row["status"] == "interrupted" and "windows left to read" in row["error"]
    fresh = await conn.fetchrow("SELECT data_as_of, backfill_windows_unfinished "
                                "FROM syncd.freshness")
    assert fresh["data_as_of"] is None and fresh["backfill_windows_unfinished"] > 0
    assert await conn.fetchval(http.LAST_PULL) is None  # no successful pull
    why = await conn.fetchval(http.LAST_PULL_ERROR)
    assert why.startswith("interrupted: stopped before the backfill finished"), why
    deps.stopping = None
    deps.client.list_page = orig  # type: ignore[method-assign]
    await pull.sync_once(deps)
    fresh = await conn.fetchrow("SELECT data_as_of, backfill_windows_unfinished "
                                "FROM syncd.freshness")
    assert fresh["data_as_of"] is not None and fresh["backfill_windows_unfinished"] == 0
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_a_refused_token_stops_the_backfill_at_once(db_dsn: str, sim_url: str,
                                                         sim: Simulator) -> None:
    from syncd.app import open_deps
    from syncd.errors import AuthError

    async with open_deps(make_settings(db_dsn, sim_url, kantata_token="wrong-token")) as deps:
        with pytest.raises(AuthError, match="Invalid OAuth 2 Request"):
            await pull.sync_once(deps)
    # one request per concurrently started window at most, not one per window (84)
    assert 1 <= len(sim.requests) <= deps.settings.window_concurrency


async def test_pages_naming_missing_ids_are_asked_again(db_dsn: str, sim_url: str,
                                                        sim: Simulator,
                                                        conn: asyncpg.Connection) -> None:
    from syncd.app import open_deps

    sim.set_faults({"bad_page_rate": 0.3, "bad_page_kinds": ["missing_ids"], "seed": 3})
    async with open_deps(make_settings(db_dsn, sim_url, max_retries=10)) as deps:
        stats = await pull.sync_once(deps)
    sim.clear_faults()
    assert any(r.get("fault") for r in sim.requests)
    assert stats.rows_rejected == 0
    assert await conn.fetchval("SELECT count(*) FROM syncd.rejected_records") == 0
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_an_entry_a_page_keeps_leaving_out_fails_its_window_until_it_comes(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A page that lists an entry without including it, on every retry: the entry is a dead
    letter and its window FAILS (the run is partial), so the next sync reads the window again
    and stores the entry; it was `done` without it, and only a reconciliation brought it back
    (new-user trial of issue #26's session)."""
    from syncd.app import open_deps

    sim.set_faults({"bad_page_rate": 0.2, "bad_page_kinds": ["missing_ids"], "seed": 7})
    async with open_deps(make_settings(db_dsn, sim_url, max_retries=0)) as deps:
        stats = await pull.sync_once(deps)
    assert stats.rows_rejected >= 1 and stats.errors, (stats.rows_rejected, stats.errors)
    assert any("came without its object" in e for e in stats.errors), stats.errors
    failed = await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'failed' "
                                 "AND last_error LIKE '%read again next run%'")
    assert failed >= 1
    assert await conn.fetchval("SELECT count(*) FROM syncd.rejected_records") >= 1
    sim.clear_faults()
    async with open_deps(make_settings(db_dsn, sim_url)) as deps:
        stats = await pull.sync_once(deps)
    assert stats.errors == []
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status <> 'done'") == 0
    assert await conn.fetchval("SELECT count(*) FROM syncd.rejected_records") == 0
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_windows_before_the_first_entry_cost_one_request_and_nothing_is_missed(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Issue #16: the default range starts years before the first entry; one probe tells
    which windows are empty. An entry dated before all others and created afterwards still
    reaches the mirror (the incremental pull reads it, as any change)."""
    first = min(date.fromisoformat(e["date_performed"]) for e in sim.list_entries())
    async with open_deps(make_settings(db_dsn, sim_url, backfill_start=date(2016, 1, 1))) as d:
        stats = await pull.sync_once(d)
        lists = [r for r in sim.requests if r["method"] == "GET"]
        windows = await conn.fetch("SELECT window_start, window_end, status, remote_count "
                                   "FROM syncd.windows WHERE purpose = 'backfill'")
        empty = [w for w in windows if w["window_end"] < first]
        assert len(empty) >= 40 and {(w["status"], w["remote_count"]) for w in empty} == {
            ("done", 0)}
        assert stats.details["windows_known_empty"] == len(empty)
        probes = [r for r in lists if r["query"].get("per_page") == "1"]
        assert len(probes) == 1
        read = {r["query"]["date_performed_between"] for r in lists
                if "date_performed_between" in r["query"] and r["query"].get("per_page") != "1"}
        assert not any(w["window_start"].isoformat() in p for w in empty for p in read)
        assert await mirror_diff(conn, sim.list_entries()) == []
        old = sim.create_entry({"date_performed": "2017-03-01", "time_in_minutes": 33})
        await pull.sync_once(d)
        assert await conn.fetchval("SELECT time_in_minutes FROM kantata.time_entries "
                                   "WHERE id = $1", int(old["id"])) == 33
