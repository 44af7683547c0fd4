"""Issue #24: big pages where Kantata allows them, paged by what Kantata says
(`meta.page_size`, `meta.page_count`), halved after a page times out or fails, and the same
requests as before against a server that clamps to its documented 200."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from syncd import pull
from syncd.app import open_deps
from syncd.errors import RetriableAPIError
from syncd.pagination import PageSize
from syncd.settings import Settings
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator
from tests.integration.conftest import TOKEN, make_settings

#: Windows read at once by default (each may have one request in flight at a size that fails).
WINDOW_CONCURRENCY = Settings.model_fields["window_concurrency"].default
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration


def _lists(sim: Simulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["method"] == "GET"
            and r["path"].endswith("/time_entries") and "only" not in r["query"]]


@pytest.fixture
def big() -> Simulator:
    return Simulator(SimConfig(token=TOKEN, entries=12_000, seed=5, lock_date=None,
                               max_per_page=5000))


@pytest.fixture
async def big_url(big: Simulator) -> AsyncIterator[str]:
    async with running_simulator(big) as url:
        yield url


def _fail_pages_over(sim: Simulator, size: int) -> None:
    """Make `sim` fail (500, as a gateway that gave up) every list page over `size` entries."""
    served = sim.api_list

    def api_list(query: Mapping[str, str]) -> bytes:
        if int(query.get("per_page", "20")) > size:
            raise RuntimeError("gateway gave up on a slow page")  # the simulator answers 500
        return served(query)

    sim.api_list = api_list  # type: ignore[method-assign]


async def _backfill(db_dsn: str, url: str, **over: object) -> None:
    async with open_deps(make_settings(db_dsn, url, **over)) as deps:
        stats = await pull.sync_once(deps)
    assert not stats.errors, stats.errors


async def test_pages_of_5000_where_kantata_allows_them(
        db_dsn: str, big_url: str, big: Simulator, conn: asyncpg.Connection) -> None:
    await _backfill(db_dsn, big_url)
    lists = _lists(big)
    assert {r["query"]["per_page"] for r in lists if r["query"].get("per_page") != "1"} \
        == {"5000"}
    # 12,000 entries over the months they span: every window fits one page of 5,000
    windows = {r["query"].get("date_performed_between") for r in lists} - {None}
    window_pages = [r for r in lists if "date_performed_between" in r["query"]
                    and r["query"]["per_page"] != "1"]
    assert len(window_pages) <= len(windows) + 1
    assert await mirror_diff(conn, big.list_entries()) == []


async def test_a_server_that_clamps_to_200_costs_what_asking_200_costs(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection,
        pg_server_dsn: str) -> None:
    """The default simulator serves at most 200 (Kantata's documented maximum): asking 5,000
    pages by its meta.page_size, and sends exactly the list requests a client asking 200
    sends. (The side-load requests, `only=`, depend on which of the concurrent windows meets a
    new object first: their number may differ by one or two between runs.)"""
    def paging(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in requests if "only" not in r["query"]]

    await _backfill(db_dsn, sim_url)  # default SYNCD_PER_PAGE: 5,000
    asked_big = list(sim.requests)
    assert await mirror_diff(conn, sim.list_entries()) == []
    sim.clear_requests()
    await conn.execute("TRUNCATE syncd.windows, syncd.watermarks, kantata.time_entries CASCADE")
    await _backfill(db_dsn, sim_url, per_page=200)
    assert len(paging(sim.requests)) == len(paging(asked_big))
    side_big, side_200 = (len(r) - len(paging(r)) for r in (asked_big, sim.requests))
    assert side_big > 0 and abs(side_200 - side_big) <= 2, (side_big, side_200)


async def test_a_server_that_clamps_to_200_still_gets_pages_in_parallel(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """Entries in flight are reserved by the size Kantata serves, not the 5,000 asked: before,
    every request against a server clamping to 200 reserved all 5,000 slots, so one request
    travelled at a time (a 200k backfill took 14 s where the reference takes 4)."""
    clamping = Simulator(SimConfig(token=TOKEN, entries=3000, seed=5, lock_date=None))
    clamping.set_faults({"latency_ms": 20})  # requests overlap only if they are sent together
    async with running_simulator(clamping) as url:
        await _backfill(db_dsn, url)
    assert {r["query"]["per_page"] for r in _lists(clamping)} >= {"5000"}
    assert clamping.peak_in_flight >= 4  # window_concurrency 4, each with a page ahead
    assert await mirror_diff(conn, clamping.list_entries()) == []


async def test_a_page_too_big_to_answer_is_asked_again_by_halves(
        db_dsn: str, big_url: str, big: Simulator, conn: asyncpg.Connection) -> None:
    """A server that fails (5xx) any page over 1,250 entries: 5,000 -> 2,500 -> 1,250, each
    halving after a failure, then the backfill goes on at 1,250 to an exact mirror. A window
    that asked 2,500 while another's 2,500 was failing fails once too, without halving again
    (never twice for one size): at most one such request per window read at once."""
    _fail_pages_over(big, 1250)
    await _backfill(db_dsn, big_url, max_retries=2)
    sizes = [r["query"]["per_page"] for r in _lists(big) if r["query"].get("per_page") != "1"]
    ints = [int(n) for n in sizes]
    assert ints[:2] == [5000, 2500] and ints.count(5000) == 1, sizes[:6]
    assert sorted(set(ints), reverse=True) == [5000, 2500, 1250], sizes[:6]
    assert 1 <= ints.count(2500) <= WINDOW_CONCURRENCY, sizes[:6]
    assert all(n == 1250 for n in ints[1 + ints.count(2500) + WINDOW_CONCURRENCY:]), sizes
    assert await mirror_diff(conn, big.list_entries()) == []


async def test_after_a_burst_of_5xx_the_page_size_comes_back(
        db_dsn: str, big_url: str, big: Simulator) -> None:
    """The new-user trial: 6 s of 502s halved the page size to 200 in a few milliseconds and a
    long-running daemon kept asking 200 a page until restarted. Now the size is raised again
    after PageSize.GROW_AFTER answered pages: here, cycles of the incremental pull."""
    async with open_deps(make_settings(db_dsn, big_url, max_retries=0)) as deps:
        await pull.sync_once(deps)  # backfilled at 5,000 a page
        big.set_faults({"error_rate": 1.0, "statuses": [502]})
        for _ in range(6):
            with pytest.raises(RetriableAPIError):
                await pull.sync_once(deps)
            if deps.page_size.current == 200:
                break
        assert deps.page_size.current == 200
        big.set_faults({})
        big.clear_requests()
        for _ in range(PageSize.GROW_AFTER):
            await pull.sync_once(deps)  # an idle cycle: one list page answered
    sizes = [int(r["query"]["per_page"]) for r in _lists(big)]
    assert sizes[:PageSize.GROW_AFTER] == [200] * PageSize.GROW_AFTER
    assert deps.page_size.current == 400


async def test_a_reconciliation_halves_a_page_too_big_to_answer(
        db_dsn: str, big_url: str, big: Simulator, conn: asyncpg.Connection) -> None:
    """Noticed in a trial's review: a reconciliation asked SYNCD_PER_PAGE (5,000) on every
    read however often it failed, so a Kantata that cannot answer pages that big failed every
    window's read, each after its retries. Its reads now halve the process's page size as
    the pull's do and read the window again from page 1: 5,000 -> 2,500 -> 1,250, every
    window reconciled."""
    from syncd import reconcile_job

    await _backfill(db_dsn, big_url)
    _fail_pages_over(big, 1250)
    big.clear_requests()
    async with open_deps(make_settings(db_dsn, big_url, max_retries=2)) as deps:
        windows = reconcile_job.default_windows(deps, datetime.now(UTC).date())
        reports = await reconcile_job.reconcile_range(deps, windows[0].start, windows[-1].end,
                                                      full=True)
        assert deps.page_size.current == 1250
    assert [r.error for r in reports if r.error] == []
    sizes = [int(r["query"]["per_page"]) for r in _lists(big)
             if r["query"].get("per_page") not in (None, "1")]
    assert sorted(set(sizes), reverse=True) == [5000, 2500, 1250], sizes[:8]
    assert sizes.count(5000) <= WINDOW_CONCURRENCY, sizes[:8]
    assert await mirror_diff(conn, big.list_entries()) == []
