"""Regressions for failures the chaos harness found (tests/chaos/run.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from syncd import pull, store
from syncd.app import open_deps
from syncd.errors import DatabaseUnavailable
from syncd.runs import Deps
from syncd.scheduler import to_syncd_error
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings, sim, sim_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

BROKEN = "cannot switch to state 12; another operation (2) is in progress"


@pytest.fixture
async def deps(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:  # noqa: F811
    async with open_deps(make_settings(db_dsn, sim_url)) as d:
        yield d


async def test_run_history_survives_a_connection_broken_by_a_cancelled_statement(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in a 10-minute chaos run: a pull cancelled at its deadline left a pooled connection
    mid-operation; the next run's history write got it, raised InternalClientError out of
    job_run's `finally`, the scheduler logged a crash and the run stayed 'running' forever."""
    real = store.finish_run
    calls = 0

    async def flaky(*args: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.InternalClientError(BROKEN)
        await real(*args, **kw)

    monkeypatch.setattr(store, "finish_run", flaky)
    stats = await pull.sync_once(deps)
    assert calls == 2 and stats.errors == []
    run = await conn.fetchrow("SELECT status, finished_at FROM syncd.sync_runs")
    assert run["status"] == "ok" and run["finished_at"] is not None


def test_a_broken_pooled_connection_is_a_transient_database_error() -> None:
    err = to_syncd_error(asyncpg.InternalClientError(BROKEN))
    assert isinstance(err, DatabaseUnavailable) and BROKEN in str(err)
