"""Issue #27: a server that ignores `page` (every page number answers page 1; the contract
declares `page` without promising it is honoured with every filter). The pull notices it once
per run and reads ranges that fit one page: backfill windows by halving `date_performed_between`
down to single days, the incremental pass's crowded seconds by date ranges as well. The mirror
must be exact, the requests bounded, and a day one page cannot hold reported by name while
everything else lands."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from syncd import pull
from syncd.app import open_deps
from syncd.errors import PagingError
from syncd.runs import Deps
from syncd.simulator import SimConfig, Simulator
from tests.integration.conftest import TOKEN, make_settings
from tests.integration.outbox_helpers import live_workspace, requests_of
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration

PER_PAGE = 50


@pytest.fixture
def sim() -> Simulator:
    s = Simulator(SimConfig(token=TOKEN, entries=3000, seed=11, lock_date=None))
    s.set_contract({"ignore_page": True})
    return s


@pytest.fixture
async def deps(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:
    async with open_deps(make_settings(db_dsn, sim_url, per_page=PER_PAGE)) as d:
        yield d


def _list_requests(sim: Simulator) -> list[dict[str, str]]:
    """Queries of the list requests that read entries (not the `only=` side-loads)."""
    return [r["query"] for r in requests_of(sim, "GET")
            if r["path"].endswith("/time_entries") and "only" not in r["query"]]


def _crowd(sim: Simulator, days: dict[date, int], at: datetime) -> list[int]:
    """Create `days[d]` entries performed on each day d, all updated at the second `at`."""
    ws = live_workspace(sim)
    return [int(sim.create_entry({"workspace_id": ws, "date_performed": d.isoformat(),
                                  "notes": f"crowd {d} {i}", "updated_at": at,
                                  "created_at": at})["id"])
            for d, n in days.items() for i in range(n)]


async def test_a_backfill_and_a_crowded_second_land_exactly_through_page_1_only(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    with capture_logs() as logs:
        stats = await pull.sync_once(deps)
    assert not stats.errors, stats.errors
    assert await mirror_diff(conn, sim.list_entries()) == []
    assert await conn.fetchval(
        "SELECT count(*) FROM syncd.windows WHERE purpose = 'backfill' AND status <> 'done'") == 0

    warned = [e for e in logs if e["event"] == "kantata_page_ignored"]
    assert len(warned) == 1 and "`page`" in warned[0]["contract"]
    queries = _list_requests(sim)
    # found out once per run: page 2 is asked for at most by the windows already in flight
    assert sum(1 for q in queries if q.get("page", "1") != "1") <= deps.settings.window_concurrency
    # bounded: per window its page 1, then at most two requests per page its entries fill
    # plus one per halving level (31 days: 5) -- against 1 + pages for a server that pages
    per_window = Counter(q["date_performed_between"][:7] for q in queries
                         if "date_performed_between" in q and q.get("per_page") != "1")
    counts = Counter(e["date_performed"][:7] for e in sim.list_entries())
    for month, n in per_window.items():
        pages = -(-counts[month] // PER_PAGE)
        assert n <= 1 + (1 if pages > 1 else 0) + (2 * pages + 5 if pages > 1 else 0), month
    total = len(queries)
    print(f"list requests: {total} for {len(sim.list_entries())} entries in "
          f"{len(per_window)} windows; narrowed {stats.details.get('windows_narrowed')}")

    # the incremental pass: 4 days × 30 entries changed in one second, more than a page
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    crowd = _crowd(sim, {date(2025, 5, d): 30 for d in (3, 4, 9, 20)}, second)
    sim.clear_requests()
    stats = await pull.sync_once(deps)
    assert not stats.errors, stats.errors
    assert stats.details.get("seconds_narrowed") == 1
    assert await mirror_diff(conn, sim.list_entries()) == []
    assert await conn.fetchval(
        "SELECT count(*) FROM kantata.time_entries WHERE id = ANY($1)", crowd) == len(crowd)
    assert await conn.fetchval("SELECT watermark FROM syncd.watermarks") >= second
    assert len(_list_requests(sim)) <= 40  # ~17 halvings of 1900..2200 to May, then days


async def test_a_day_one_page_cannot_hold_is_named_and_the_rest_lands(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    day = date(2025, 6, 10)
    old = datetime(2025, 6, 11, 8, 0, tzinfo=UTC)
    _crowd(sim, {day: PER_PAGE + 30}, old)
    on_day = sum(1 for e in sim.list_entries() if e["date_performed"] == day.isoformat())
    stats = await pull.sync_once(deps)

    assert len(stats.errors) == 1
    assert f"day {day} has {on_day} entries, more than one page of {PER_PAGE} holds" \
        in stats.errors[0]
    failed = await conn.fetch("SELECT window_start, last_error FROM syncd.windows"
                              " WHERE purpose = 'backfill' AND status <> 'done'")
    assert [r["window_start"] for r in failed] == [date(2025, 6, 1)]
    assert f"day {day}" in failed[0]["last_error"]
    run_error = await conn.fetchval("SELECT error FROM syncd.sync_runs WHERE job = 'pull'")
    assert run_error.count(f"day {day}") == 1
    # everything else landed: what is missing is that day's entries beyond its page 1
    missing = [d for d in await mirror_diff(conn, sim.list_entries())]
    assert all(d.endswith("missing from mirror") for d in missing), missing[:3]
    assert len(missing) == on_day - PER_PAGE
    dates = {e["id"]: e["date_performed"] for e in sim.list_entries()}
    assert {dates[d.split(":")[0]] for d in missing} == {day.isoformat()}

    # the same under the incremental pass: a crowded second whose one day is too big stops
    # the pass with the day named, and the watermark stays before that second
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    _crowd(sim, {date(2025, 7, 1): PER_PAGE + 5, date(2025, 7, 2): 10}, second)
    before = await conn.fetchval("SELECT watermark FROM syncd.watermarks")
    with pytest.raises(PagingError, match=r"day 2025-07-01 has 55 entries.*watermark stays"):
        await pull.sync_once(deps)
    after = await conn.fetchval("SELECT watermark FROM syncd.watermarks")
    assert before <= after < second
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries"
                               " WHERE date_performed = '2025-07-02'") >= 10
