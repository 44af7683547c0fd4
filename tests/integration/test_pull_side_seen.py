"""A backfill writes each side-loaded workspace/user/story/role once per run (benchmark issue
#7): pages repeat them, and re-upserting identical rows cost a statement per kind per page."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from syncd import pagination, pull, store
from syncd.app import open_deps
from syncd.models import SideObject
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration


async def test_side_objects_are_written_once_per_run(db_dsn: str, sim_url: str, sim: Simulator,
                                                     conn: asyncpg.Connection,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # one window at a time: concurrent windows may both write an object before either commits
    written: list[SideObject] = []
    real = store.upsert_side

    async def spy(c: asyncpg.Connection, objs: list[SideObject]) -> None:
        written.extend(objs)
        await real(c, objs)

    monkeypatch.setattr(store, "upsert_side", spy)
    settings = make_settings(db_dsn, sim_url, window_concurrency=1)
    async with open_deps(settings) as deps:
        await run_twice(deps, sim, conn, written)


async def run_twice(deps: Any, sim: Simulator, conn: asyncpg.Connection,
                    written: list[SideObject]) -> None:
    stats = await pull.sync_once(deps)
    assert stats.errors == [] and stats.pages > 3
    keys = [(o.kind, o.id) for o in written]
    assert len(keys) == len(set(keys))  # none written twice
    stored = await conn.fetchval(
        """SELECT (SELECT count(*) FROM kantata.workspaces) + (SELECT count(*) FROM kantata.users)
                + (SELECT count(*) FROM kantata.stories) + (SELECT count(*) FROM kantata.roles)""")
    assert stored == len(keys) > 0
    assert await mirror_diff(conn, sim.list_entries()) == []

    # a later run has its own memory: a renamed workspace is written again
    ws = next(iter(sim.workspaces.values()))
    ws.title = "Renamed in Kantata"
    sim._ref_cache.clear()
    written.clear()
    await pull.sync_once(deps, since=deps.settings.backfill_start)
    assert await conn.fetchval("SELECT title FROM kantata.workspaces WHERE id = $1",
                               ws.id) == "Renamed in Kantata"


def _sim_refs(sim: Simulator) -> set[tuple[str, int]]:
    """Every object the simulator's live entries reference and the simulator has (what a
    side-load on every page would have stored)."""
    tables = {"workspaces": sim.workspaces, "users": sim.users, "stories": sim.stories,
              "roles": sim.roles}
    out = set()
    for e in sim.list_entries():
        for kind, field in (("workspaces", "workspace_id"), ("users", "user_id"),
                            ("stories", "story_id"), ("roles", "role_id")):
            ref = e.get(field)
            if ref is not None and int(ref) in tables[kind]:
                out.add((kind, int(ref)))
    return out


async def _stored_refs(conn: asyncpg.Connection) -> set[tuple[str, int]]:
    rows = await conn.fetch(
        """SELECT 'workspaces' AS k, id FROM kantata.workspaces UNION ALL
           SELECT 'users', id FROM kantata.users UNION ALL
           SELECT 'stories', id FROM kantata.stories UNION ALL
           SELECT 'roles', id FROM kantata.roles""")
    return {(r["k"], r["id"]) for r in rows}


async def test_backfill_side_loads_each_object_once_and_each_page_carries_its_own(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #16: backfill pages come without `include=`; the objects a page references that
    the run has not loaded are asked for once, by entry id (`only=`), and stored in that page's
    transaction, so no committed entry ever points at an object that is not stored yet."""
    committed: set[tuple[str, int]] = set()
    uncovered: list[tuple[str, int]] = []
    real = pull.store_landed  # what read_window stores each page with

    async def spy(deps: Any, page: Any, stats: Any, **kw: Any) -> tuple[int, Any]:
        have = committed | {(o.kind, o.id) for o in page.side}
        uncovered.extend(r for r in pagination.side_refs(page.listed()) if r not in have
                         and r in refs)
        n, landed = await real(deps, page, stats, **kw)
        committed.update((o.kind, o.id) for o in landed.side)
        return n, landed

    refs = _sim_refs(sim)
    monkeypatch.setattr(pull, "store_landed", spy)
    async with open_deps(make_settings(db_dsn, sim_url, per_page=20)) as deps:
        stats = await pull.sync_once(deps)
    assert stats.errors == []
    backfill = [r for r in sim.requests if "date_performed_between" in r["query"]
                and r["query"].get("per_page") == "20"]
    side_loads = [r for r in sim.requests if "only" in r["query"]]
    assert len(backfill) >= 30 and not any("include" in r["query"] for r in backfill)
    assert all(r["query"]["include"] == pull.INCLUDE for r in side_loads)
    assert stats.details["side_load_requests"] == len(side_loads) < len(backfill) / 2
    asked = [i for r in side_loads for i in r["query"]["only"].split(",")]
    assert len(asked) == len(set(asked)) <= len(refs)  # no entry asked for twice
    assert uncovered == [] and committed == refs  # the spy saw every page
    assert await _stored_refs(conn) == refs
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_side_loads_survive_failed_requests(db_dsn: str, sim_url: str, sim: Simulator,
                                                  conn: asyncpg.Connection) -> None:
    """A side-load request that fails is retried like any read, and when a window gives up its
    objects are asked for by the next page that needs them: every object is stored."""
    refs = _sim_refs(sim)
    sim.set_faults({"error_rate": 0.25, "statuses": [500, 502, 503], "seed": 11})
    async with open_deps(make_settings(db_dsn, sim_url, per_page=20, max_retries=2)) as deps:
        for _ in range(6):  # windows that gave up are read again by the next run
            stats = await pull.sync_once(deps)
            if not stats.errors:
                break
    assert stats.errors == []
    assert [r for r in sim.requests if "only" in r["query"] and r["status"] >= 500]
    sim.clear_faults()
    assert await _stored_refs(conn) == refs
    assert await mirror_diff(conn, sim.list_entries()) == []
