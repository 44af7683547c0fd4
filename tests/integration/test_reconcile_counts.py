"""Reconciliation by counting first (issue #24), against the simulator and PostgreSQL, counting
the requests the simulator saw: a settled mirror costs one count request per window plus the
incremental pass; deletions are found by narrowing a window down to the days whose counts
differ; and each thing that can fool a count is caught now or at the next check."""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from syncd import pull, reconcile_job, store
from syncd.app import open_deps
from syncd.reconcile_job import WindowReport
from syncd.runs import Deps
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator
from syncd.windows import month_windows
from tests.chaos.fakes import DROP, Tamper, serve_tampered
from tests.integration.conftest import TOKEN
from tests.integration.outbox_helpers import mirror_from_sim
from tests.integration.test_reconcile import settings
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration


def _gets(sim: Simulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["method"] == "GET"]


async def _deleted_ids(conn: asyncpg.Connection) -> set[int]:
    return {r["id"] for r in await conn.fetch(
        "SELECT id FROM kantata.time_entries WHERE deleted_at IS NOT NULL")}


def _first_month(entries: list[dict[str, Any]]) -> date:
    first = min(date.fromisoformat(e["date_performed"]) for e in entries)
    return first.replace(day=1)


async def _settle(deps: Deps, conn: asyncpg.Connection, sim: Simulator) -> list[Any]:
    """A settled mirror without the backfill's requests: every simulator entry stored, the
    backfill windows done, the watermark at now. Returns the windows of the backfill range."""
    await mirror_from_sim(conn, sim)
    windows = reconcile_job.default_windows(deps, datetime.now(UTC).date())
    async with conn.transaction():
        for w in windows:
            await store.start_window(conn, "backfill", w, restart=True)
            await store.finish_window(conn, "backfill", w, status="done", remote_count=None)
        await store.set_watermark(conn, datetime.now(UTC))
    return windows


def _range(deps: Deps) -> tuple[date, date]:
    """The backfill range (the windows `syncd reconcile` checks by default)."""
    return deps.settings.backfill_range(datetime.now(UTC).date())


def _month_of(w: Any) -> str:
    return w.start.isoformat()[:7]


def _day_pages(entries: list[dict[str, Any]], months: set[str], per_page: int) -> int:
    """Pages of the busiest day of those months: what reading one day costs at most."""
    per_day = Counter(e["date_performed"] for e in entries if e["date_performed"][:7] in months)
    return max(math.ceil(n / per_page) for n in per_day.values())


def _summary(reports: list[WindowReport]) -> Counter[str]:
    return Counter(r.mode for r in reports)


# ----------------------------------------------------------------- the request formulas
@pytest.mark.parametrize(("entries", "per_page"), [
    pytest.param(20_000, 50, id="20k-pages-of-50"),
    pytest.param(100_000, 200, id="100k", marks=pytest.mark.slow),
])
async def test_settled_mirror_and_three_deletions_cost_what_the_formulas_say(
        entries: int, per_page: int, db_dsn: str, conn: asyncpg.Connection) -> None:
    """Issue #24, done when: a settled mirror in ≤ windows + 2 requests; 3 deletions (one of
    them in a window where an entry was also created) all marked, no live entry marked, in
    ≤ windows + 3 × (8 + the pages of a month's days). 20,000 entries in pages of 50 make
    months of ~15 pages, as 100,000 in pages of 200 do (~19): the same formulas."""
    sim = Simulator(SimConfig(token=TOKEN, entries=entries, seed=3, lock_date=None))
    before = sim.list_entries()
    async with running_simulator(sim) as url:
        async with open_deps(settings(db_dsn, url, per_page=per_page,
                                      backfill_start=_first_month(before))) as deps:
            t0 = time.perf_counter()
            windows = await _settle(deps, conn, sim)
            seeded = time.perf_counter() - t0
            sim.clear_requests()
            settled = await reconcile_job.reconcile_range(
                deps, windows[0].start, windows[-1].end)
            settled_gets = len(_gets(sim))
            assert [r.error for r in settled if r.error] == []
            assert _summary(settled) == {"count": len(windows)}
            assert settled_gets <= len(windows) + 2
            assert settled_gets == sum(r.requests for r in settled) + 1  # + the pass

            # three deletions in three busy months; in one of them an entry is also created
            by_month = Counter(e["date_performed"][:7] for e in before)
            busy = [m for m, _ in by_month.most_common(3)]
            gone = [int(next(e for e in before if e["date_performed"][:7] == m
                             and e["date_performed"][8:] >= "10")["id"]) for m in busy]
            for i in gone:
                sim.delete_entry(i)
            made = sim.create_entry({"date_performed": f"{busy[0]}-20",
                                     "time_in_minutes": 30, "notes": "created"})
            sim.clear_requests()
            after = await reconcile_job.reconcile_range(deps, windows[0].start, windows[-1].end)
            after_gets = len(_gets(sim))
    pages = _day_pages(before, set(busy), per_page)
    assert [r.error for r in after if r.error] == []
    assert await _deleted_ids(conn) == set(gone)
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries WHERE id = $1 "
                               "AND deleted_at IS NULL", int(made["id"])) == 1
    if entries <= 20_000:  # column by column (seconds at 100k; the counts say the rest)
        assert await mirror_diff(conn, sim.list_entries()) == []
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries "
                               "WHERE deleted_at IS NULL") == entries - 3 + 1
    assert _summary(after) == {"count": len(windows) - 3, "days": 3}
    assert after_gets <= len(windows) + 3 * (8 + pages)
    print(f"\n{entries:,} entries, pages of {per_page}, {len(windows)} windows "
          f"(mirror seeded in {seeded:.1f} s): settled {settled_gets} GETs "
          f"(≤ {len(windows) + 2}); 3 deletions {after_gets} GETs "
          f"(≤ {len(windows) + 3 * (8 + pages)}; a day is ≤ {pages} page(s))")


async def test_a_deletion_is_narrowed_to_its_day_by_the_size_kantata_serves(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """A new user's trial: at the default SYNCD_PER_PAGE (5,000) against a Kantata serving
    fewer, a month's read was costed as one page of 5,000, so one deletion read the whole
    month (13 GETs at 200) instead of narrowing to its day (7). The cost of a read follows
    the size Kantata served this process (learned by the reconciliation's own incremental
    pass)."""
    sim = Simulator(SimConfig(token=TOKEN, entries=6_000, seed=3, lock_date=None,
                              max_per_page=20))
    before = sim.list_entries()
    async with running_simulator(sim) as url:
        async with open_deps(settings(db_dsn, url, backfill_start=_first_month(before))) as d:
            windows = await _settle(d, conn, sim)
        busy = Counter(e["date_performed"][:7] for e in before).most_common(1)[0][0]
        gone = int(next(e for e in before if e["date_performed"][:7] == busy)["id"])
        sim.delete_entry(gone)
        sim.clear_requests()
        async with open_deps(settings(db_dsn, url, backfill_start=_first_month(before))) as d:
            assert d.settings.per_page == 5000  # the default, a fresh process
            after = await reconcile_job.reconcile_range(d, windows[0].start, windows[-1].end)
    assert [r.error for r in after if r.error] == []
    assert _summary(after) == {"count": len(windows) - 1, "days": 1}
    assert await _deleted_ids(conn) == {gone}
    month_pages = math.ceil(sum(e["date_performed"][:7] == busy for e in before) / 20)
    assert len(_gets(sim)) < len(windows) + month_pages  # a whole month's read costs more


# ----------------------------------------------------------------- what can fool a count
async def test_a_create_after_the_pass_hides_a_deletion_in_its_window_until_the_next_check(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    month = Counter(e["date_performed"][:7] for e in sim.list_entries()).most_common(1)[0][0]
    victim = int(next(e for e in sim.list_entries() if e["date_performed"][:7] == month)["id"])
    orig = deps.client.list_page
    made: list[int] = []

    async def after_the_pass(params: dict[str, str], **kw: Any) -> Any:
        span = params.get("date_performed_between", "")
        if span.startswith(month) and params.get("per_page") == "1" and not made:
            sim.delete_entry(victim)  # both after the incremental pass, before the count
            made.append(int(sim.create_entry({"date_performed": f"{month}-15",
                                              "time_in_minutes": 5})["id"]))
        return await orig(params, **kw)

    deps.client.list_page = after_the_pass  # type: ignore[method-assign]
    first = await reconcile_job.reconcile_range(deps, *_range(deps))
    assert made and await _deleted_ids(conn) == set()  # the counts are equal: not seen now
    assert _summary(first) == {"count": len(first)}
    second = await reconcile_job.reconcile_range(deps, *_range(deps))
    # the pass brought the create in, so the month's count is one short: caught
    assert await _deleted_ids(conn) == {victim}
    assert sum(r.marked_deleted for r in second) == 1
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_archived_projects_are_counted_like_a_full_read_lists_them(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    ws = Counter(e["workspace_id"] for e in sim.list_entries()).most_common(1)[0][0]
    sim.archive_workspace(int(ws))
    sim.clear_requests()
    reports = await reconcile_job.reconcile_range(deps, *_range(deps))
    assert _summary(reports) == {"count": len(reports)}
    assert len(_gets(sim)) == len(reports) + 1
    assert all(r["query"].get("from_archived_workspaces") == "true"
               and r["query"].get("on_my_account") == "false" for r in _gets(sim))
    assert await _deleted_ids(conn) == set()


async def test_entries_that_become_visible_late_or_go_invisible_are_caught_by_the_count(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A permission granted shows old entries the incremental pass never sees (their
    `updated_at` is long past); a permission withdrawn hides entries as a deletion does. Both
    change a window's count."""
    await pull.sync_once(deps)
    old = "2025-01-10T09:00:00+00:00"
    shown = int(sim.create_entry({"date_performed": "2025-01-09", "time_in_minutes": 45,
                                  "created_at": old, "updated_at": old})["id"])
    hidden = int(next(e for e in sim.list_entries()
                      if e["date_performed"].startswith("2025-05"))["id"])
    sim.delete_entry(hidden)
    reports = await reconcile_job.reconcile_range(deps, *_range(deps))
    assert await conn.fetchval("SELECT learned_via FROM kantata.time_entries "
                               "WHERE id = $1 AND deleted_at IS NULL", shown) == "reconcile"
    assert await _deleted_ids(conn) == {hidden}
    assert sorted(_month_of(r.window) for r in reports if r.mode != "count") == \
        ["2025-01", "2025-05"]
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_a_rejected_record_never_forces_a_read_and_a_deletion_beside_it_is_found(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """Kantata counts a record syncd rejected; the mirror cannot hold it. A dated reject is
    expected on its day; an undatable one (no `date_performed`) costs one full read of its
    window, which learns the offset; after that, counts match again, and a deletion in that
    window is still found (by a full read: the offset cannot be placed on a day)."""
    sim = Simulator(SimConfig(token=TOKEN, entries=600, seed=7, lock_date=None))
    tamper = Tamper()
    entries = sorted(sim.list_entries(), key=lambda e: int(e["id"]))
    dated, undated = entries[100], entries[300]
    tamper.entry(dated["id"], time_in_minutes=-5)
    tamper.entry(undated["id"], date_performed=DROP)
    async with serve_tampered(sim, tamper) as url, \
            open_deps(settings(db_dsn, url)) as deps:
        await pull.sync_once(deps)
        span = _range(deps)
        assert {r["entry_id"] for r in await conn.fetch(
            "SELECT entry_id FROM syncd.rejected_records")} == {dated["id"], undated["id"]}
        first = await reconcile_job.reconcile_range(deps, *span)
        modes = {_month_of(r.window): r.mode for r in first}
        assert modes[undated["date_performed"][:7]] == "full"
        assert Counter(modes.values())["full"] == 1
        second = await reconcile_job.reconcile_range(deps, *span)
        assert _summary(second) == {"count": len(second)}
        month = undated["date_performed"][:7]
        victim = next(e for e in entries if e["date_performed"][:7] == month
                      and e["id"] != undated["id"])
        sim.delete_entry(int(victim["id"]))
        third = await reconcile_job.reconcile_range(deps, *span)
    assert await _deleted_ids(conn) == {int(victim["id"])}
    assert [(_month_of(r.window), r.mode) for r in third if r.mode != "count"] == \
        [(month, "full")]


@pytest.mark.parametrize("mode", ["negative", "inconsistent"])
async def test_a_count_that_says_nothing_falls_back_to_full_reads(
        mode: str, deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    sim.set_contract({"count_mode": mode})
    gone = int(sim.list_entries()[50]["id"])
    sim.delete_entry(gone)
    span = _range(deps)
    first = await reconcile_job.reconcile_range(deps, *span)
    assert [r.error for r in first if r.error] == []
    assert await _deleted_ids(conn) == {gone}
    nonempty = [r for r in first if r.checked]
    assert {r.mode for r in nonempty} == {"full"}
    # the windows learned that the count cannot vouch for them: full reads from now on
    second = await reconcile_job.reconcile_range(deps, *span)
    assert {r.mode for r in second if r.checked} == {"full"}
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE purpose = 'reconcile' "
                               "AND NOT count_trusted") >= len(nonempty)


# ----------------------------------------------------------------- the safety net
async def test_every_window_is_read_in_full_once_its_cycle_is_due(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    now = datetime.now(UTC)
    first = await reconcile_job.reconcile_due(deps, now=now)
    assert first and _summary(first) == {"count": len(first)}
    assert await conn.fetchval("SELECT count(last_full_read_at) FROM syncd.windows "
                               "WHERE purpose = 'reconcile'") == 0
    later = now + timedelta(seconds=deps.settings.reconcile_full_interval + 60)
    due = await reconcile_job.reconcile_due(deps, now=later)
    windows = month_windows(*deps.settings.backfill_range(later.date()),
                            deps.settings.backfill_window_months)
    backfilled = {w for w in windows if w.end <= now.date()}
    assert backfilled <= {r.window for r in due if r.mode == "full"}
    read = await conn.fetchval("SELECT count(last_full_read_at) FROM syncd.windows "
                               "WHERE purpose = 'reconcile'")
    assert read == sum(1 for r in due if r.mode == "full")
    # just read in full (by the database clock): two hours from now, counted again
    again = await reconcile_job.reconcile_due(deps, now=now + timedelta(hours=2))
    assert again and "full" not in _summary(again)


async def test_full_reads_every_window_and_says_so(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    sim.clear_requests()
    reports = await reconcile_job.reconcile_range(deps, *_range(deps), full=True)
    assert _summary(reports) == {"full": len(reports)}
    assert all(r["query"].get("per_page") != "1" for r in _gets(sim))  # no count request
    rows = await conn.fetch("SELECT last_full_read_at, count_offset, count_trusted "
                            "FROM syncd.windows WHERE purpose = 'reconcile'")
    assert len(rows) == len(reports)
    assert all(r["last_full_read_at"] and r["count_offset"] == 0 and r["count_trusted"]
               for r in rows)
