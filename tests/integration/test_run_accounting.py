"""Run history counts each job's own work (issue #23): the jobs share one Kantata client, so a
push that sent nothing was charged the requests of a pull running beside it, and `syncd push
--json` reported `mirror_rows` that did not match what the push wrote."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from syncd import pull, push
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.outbox_helpers import enqueue_many, mirror_from_sim, new_entry

pytestmark = pytest.mark.integration


async def _run_row(conn: asyncpg.Connection, run_id: object) -> asyncpg.Record:
    return await conn.fetchrow("SELECT job, status, requests, rows_upserted FROM syncd.sync_runs "
                               "WHERE run_id = $1", run_id)


async def test_a_push_that_sent_nothing_records_no_request_while_a_pull_runs(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    sim.clear_requests()
    pulling = asyncio.create_task(pull.sync_once(deps))
    while not sim.requests:  # the pull is sending
        await asyncio.sleep(0.001)
    pushes = []
    while not pulling.done():  # empty drains, each while the pull's requests go out
        pushes.append(await push.push_once(deps, owner="idle"))
    stats = await pulling
    assert len(pushes) >= 3
    for report in pushes:
        assert report.requests == 0
        assert (await _run_row(conn, report.run_id))["requests"] == 0
    pull_row = await _run_row(conn, stats.run_id)
    assert pull_row["requests"] == len(sim.requests) > 10  # every request was the pull's


async def test_two_concurrent_pushers_report_what_each_wrote_and_sent(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    doomed = [e["id"] for e in sorted(sim.list_entries(), key=lambda e: int(e["id"]))
              if not e.get("is_invoiced")][:10]
    await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(100)]
                       + [("delete", int(i), None) for i in doomed])
    sim.clear_requests()
    small = dataclasses.replace(deps, settings=deps.settings.model_copy(
        update={"push_batch_size": 10}))
    a, b = await asyncio.gather(push.push_once(small, owner="a"),
                                push.push_once(small, owner="b"))
    assert a.claimed and b.claimed and a.claimed + b.claimed == 110
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox WHERE status = 'done'") == 110
    written = await conn.fetchval(
        "SELECT count(*) FROM kantata.time_entries WHERE learned_via = 'push'")
    assert written == 110  # 100 created, 10 marked deleted
    assert a.mirror_rows + b.mirror_rows == written
    for report in (a, b):
        row = await _run_row(conn, report.run_id)
        assert (row["requests"], row["rows_upserted"]) == (report.requests, report.mirror_rows)
    assert a.requests + b.requests == len(sim.requests)


async def test_a_running_backfill_shows_its_figures_so_far(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A trial's user killed a backfill at 7,797 rows and `syncd status` showed its run with
    0 pages, 0 requests and 0 rows: the figures are written as each window ends."""
    sim.set_faults({"latency_ms": 30})  # windows end one after another while we look
    pulling = asyncio.create_task(pull.sync_once(deps))
    try:
        row = None
        for _ in range(500):
            await asyncio.sleep(0.02)
            row = await conn.fetchrow(
                "SELECT status, pages, requests, rows_upserted FROM syncd.sync_runs "
                "WHERE job = 'pull' AND rows_upserted > 0")
            if row is not None:
                break
        assert row is not None and row["status"] == "running", row
        assert row["pages"] > 0 and row["requests"] > 0
        done = await conn.fetchval("SELECT coalesce(sum(rows_seen), 0) FROM syncd.windows "
                                   "WHERE purpose = 'backfill' AND status = 'done'")
        assert 0 < row["rows_upserted"] <= await conn.fetchval(
            "SELECT count(*) FROM kantata.time_entries") and done > 0
    finally:
        stats = await pulling
    final = await _run_row(conn, stats.run_id)
    assert final["status"] == "ok" and final["rows_upserted"] == stats.rows_upserted == 600


@pytest.mark.parametrize("throttled", [False, True])
async def test_a_shutdown_during_a_wait_ends_the_pull_as_interrupted(
        db_dsn: str, throttled: bool) -> None:
    """The daemon's SIGTERM while an incremental pull waits, in a 30 s back-off after 503s or
    for its turn after a 429 without Retry-After (one request a minute): the pull ends within
    a second, sends nothing more, and its run is `interrupted`, not `failed`."""
    from syncd.app import open_deps
    from syncd.errors import StoppedWaiting
    from syncd.simulator import SimConfig
    from syncd.simulator.testing import running_simulator
    from tests.integration.conftest import TOKEN, make_settings

    sim = Simulator(SimConfig(token=TOKEN, entries=50, seed=5, lock_date=None))
    async with running_simulator(sim) as url:
        settings = make_settings(db_dsn, url, backoff_base=30.0, backoff_cap=30.0,
                                 rate_limit_per_minute=1.0 if throttled else 60_000)
        async with open_deps(settings) as d:
            if throttled:
                d.client.budget.pacer.tolerance = 1e9  # the backfill's requests go at once
            await pull.sync_once(d)  # backfilled: the next cycle is an incremental pull
            if throttled:
                d.client.budget.pacer.tolerance = 0.0
                d.client.budget.pacer.tat = float("inf")  # the next turn is far away
            else:
                sim.set_faults({"error_rate": 1.0, "statuses": [503]})
            stopping = asyncio.Event()
            d.stopping = stopping
            d.client.stop_waiting_when(stopping)
            task = asyncio.create_task(pull.sync_once(d))
            await asyncio.sleep(0.3)  # waiting now: back-off, or for its turn
            assert not task.done()
            loop = asyncio.get_running_loop()
            started, sent = loop.time(), len(sim.requests)
            stopping.set()
            with pytest.raises(StoppedWaiting):
                await asyncio.wait_for(task, 5.0)
            assert loop.time() - started < 1.0
            assert len(sim.requests) == sent
    conn = await asyncpg.connect(db_dsn)
    try:
        run = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs "
                                  "ORDER BY started_at DESC LIMIT 1")
    finally:
        await conn.close()
    assert run["status"] == "interrupted" and "StoppedWaiting" in run["error"], run


async def test_a_push_a_shutdown_stops_is_interrupted_and_its_unsent_rows_wait(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """The second trial: a push cut short by SIGTERM was recorded `ok` and moved `syncd
    status`'s last ok push. Now it is `interrupted`; the batch sent before the stop is done
    and the rows claimed but not sent are pending again, their attempt refunded."""
    await mirror_from_sim(conn, sim)
    await enqueue_many(conn, [("create", None, new_entry(sim, i)) for i in range(30)])
    small = dataclasses.replace(deps, settings=deps.settings.model_copy(
        update={"push_batch_size": 10}), stopping=asyncio.Event())
    sent = small.client.create_entries

    async def create_then_stop(*args: object, **kw: object) -> object:
        try:
            return await sent(*args, **kw)  # type: ignore[arg-type]
        finally:
            small.stopping.set()  # type: ignore[union-attr]  # SIGTERM after the first batch

    small.client.create_entries = create_then_stop  # type: ignore[method-assign]
    try:
        report = await push.push_once(small, owner="stopping")
    finally:
        small.client.create_entries = sent  # type: ignore[method-assign]
    row = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs WHERE run_id = $1",
                              report.run_id)
    assert row["status"] == "interrupted" and "before the outbox was drained" in row["error"]
    counts = dict(await conn.fetch("SELECT status, count(*) FROM syncd.outbox GROUP BY 1"))
    assert counts == {"done": 10, "pending": 20}, counts
    assert await conn.fetchval("SELECT max(attempts) FROM syncd.outbox "
                               "WHERE status = 'pending'") == 0
    drained = await push.push_once(deps, owner="next")  # the next drain finishes the rest
    assert (await _run_row(conn, drained.run_id))["status"] == "ok"
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox WHERE status = 'done'") == 30
