"""A page's write is retried after a deadlock or a serialization failure (concurrent windows
touching the same side-loaded rows), on the one-statement path of a page PostgreSQL types as
on the transaction of the careful path, and stored exactly once."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import asyncpg
import orjson
import pytest

from syncd import pagination, store
from syncd.pull import store_landed
from syncd.runs import Deps, RunStats
from syncd.simulator import Simulator
from syncd.windows import Window

pytestmark = pytest.mark.integration

WINDOW = Window(date(2020, 1, 1), date(2030, 12, 31))


def _body(sim: Simulator) -> bytes:
    body = sim.api_list({"per_page": "200", "order": "date_performed:asc",
                         "from_archived_workspaces": "true", "on_my_account": "false",
                         "date_performed_between": WINDOW.param})
    return body if isinstance(body, bytes) else orjson.dumps(body)


@pytest.mark.parametrize("error", [asyncpg.DeadlockDetectedError,
                                   asyncpg.SerializationError])
async def test_a_typed_page_is_stored_once_after_a_transient_failure(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, error: type[Exception]) -> None:
    page = pagination.decode_page_typed(_body(sim))
    assert page is not None and page.body is not None
    async with deps.pool.acquire() as c:
        await store.start_window(c, "backfill", WINDOW, restart=True)
    real, calls = store.store_page_body, []

    async def flaky(*args: Any, **kw: Any) -> int:
        calls.append(kw.get("checkpoint"))
        if len(calls) == 1:
            raise error("deadlock detected (test)")
        return await real(*args, **kw)

    monkeypatch.setattr(store, "store_page_body", flaky)
    stats = RunStats(run_id=uuid.uuid4(), job="backfill")
    changed, stored = await store_landed(deps, page, stats, purpose="backfill", window=WINDOW,
                                         page_no=1, page_size=200)
    assert len(calls) == 2 and calls[0] == calls[1]  # the same statement, checkpoint and all
    assert changed == len(page.listed()) == stats.rows_upserted and stored is page
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == changed
    assert await conn.fetchval("SELECT pages_done FROM syncd.windows WHERE purpose = "
                               "'backfill' AND window_start = $1", WINDOW.start) == 1


async def test_a_page_failing_every_attempt_raises_and_stores_nothing(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    page = pagination.decode_page_typed(_body(sim))
    assert page is not None
    calls = []

    async def always(*args: Any, **kw: Any) -> int:
        calls.append(1)
        raise asyncpg.DeadlockDetectedError("deadlock detected (test)")

    monkeypatch.setattr(store, "store_page_body", always)
    stats = RunStats(run_id=uuid.uuid4(), job="backfill")
    with pytest.raises(asyncpg.DeadlockDetectedError):
        await store_landed(deps, page, stats, purpose="backfill", window=WINDOW, page_no=1)
    assert len(calls) == 5  # one before the retry loop, then its four attempts
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 0
    assert stats.pages == 0
