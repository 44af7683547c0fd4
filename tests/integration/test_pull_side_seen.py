"""A backfill writes each side-loaded workspace/user/story/role once per run (benchmark issue
#7): pages repeat them, and re-upserting identical rows cost a statement per kind per page."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from syncd import pull, store
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
