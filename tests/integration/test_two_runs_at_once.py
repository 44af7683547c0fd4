"""Two runs at once never read a window twice (`store.START_WINDOW`): a `syncd sync` started
beside another one (or beside the daemon's backfill) read every window again, each read
spending the customer's shared Kantata budget. A window another live run is reading, or has
finished since this run listed its work, is left to it; both runs end, and the mirror is
complete."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import pytest

from syncd import pull, reconcile_job
from syncd.app import open_deps
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration


def _window_pages(sim: Simulator) -> Counter[tuple[str, str, str]]:
    """(window, page, per_page) of every list request that reads a window's pages (not the
    one-entry probe of the whole range, not counts)."""
    return Counter((r["query"]["date_performed_between"], r["query"].get("page", "1"),
                    r["query"].get("per_page", ""))
                   for r in sim.requests if r["method"] == "GET"
                   and r["path"].endswith("/time_entries")
                   and "date_performed_between" in r["query"]
                   and r["query"].get("per_page") != "1")


async def test_two_backfills_at_once_read_each_window_once(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    sim.set_faults({"latency_ms": 20})
    settings = make_settings(db_dsn, sim_url, per_page=10, window_concurrency=2)
    async with open_deps(settings) as a, open_deps(settings) as b:
        sa, sb = await asyncio.gather(pull.sync_once(a), pull.sync_once(b))
    sim.clear_faults()
    assert sa.errors == [] and sb.errors == []
    twice = {k: n for k, n in _window_pages(sim).items() if n > 1}
    assert twice == {}, twice  # before: every window's every page, twice
    left = (sa.details.get("windows_read_by_another_run", 0),
            sb.details.get("windows_read_by_another_run", 0))
    assert sum(left) > 0, left  # each run left the other's windows to it
    assert await mirror_diff(conn, sim.list_entries()) == []
    statuses = dict(await conn.fetch("SELECT status, count(*) FROM syncd.windows "
                                     "WHERE purpose = 'backfill' GROUP BY 1"))
    assert set(statuses) == {"done"}, statuses
    runs = [r["status"] for r in await conn.fetch("SELECT status FROM syncd.sync_runs")]
    assert runs == ["ok", "ok"], runs


async def test_two_reconciliations_at_once_check_each_window_once(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    settings = make_settings(db_dsn, sim_url, per_page=10, window_concurrency=2)
    async with open_deps(settings) as d:
        await pull.sync_once(d)
    sim.set_faults({"latency_ms": 20})
    sim.clear_requests()
    async with open_deps(settings) as a, open_deps(settings) as b:
        windows = reconcile_job.default_windows(a, datetime.now(UTC).date())
        start, end = windows[0].start, windows[-1].end
        ra, rb = await asyncio.gather(reconcile_job.reconcile_range(a, start, end, full=True),
                                      reconcile_job.reconcile_range(b, start, end, full=True))
    sim.clear_faults()
    assert {r.window for r in ra}.isdisjoint({r.window for r in rb})
    assert len(ra) + len(rb) == len(windows)
    twice = {k: n for k, n in _window_pages(sim).items() if n > 1}
    assert twice == {}, twice
    runs = [r["status"] for r in await conn.fetch(
        "SELECT status FROM syncd.sync_runs WHERE job = 'reconcile'")]
    assert runs == ["ok", "ok"], runs
