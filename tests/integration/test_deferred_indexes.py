"""The first backfill into an empty mirror defers the secondary indexes of kantata.time_entries
(issue #26, migration 0016): dropped while it loads, built once when it ends, never lost."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from syncd import migrate, mirror_indexes, pull, runs
from syncd.app import open_deps
from syncd.commands.status import render_text
from syncd.runs import Deps, RunOwner
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator
from tests.integration.conftest import TOKEN, make_settings
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration

#: The deferrable indexes a fresh migration gives kantata.time_entries (0001; the partial
#: index of 0008 is kept: it is normally empty, so it costs the load nothing).
MIGRATED = ["time_entries_date_performed_idx", "time_entries_updated_at_idx",
            "time_entries_user_idx", "time_entries_workspace_idx"]
KEPT = ["time_entries_altered_idx", "time_entries_pkey"]


async def indexes(conn: asyncpg.Connection) -> dict[str, tuple[str, int]]:
    """Every index of kantata.time_entries: name -> (definition, oid); the oid changes when an
    index is dropped and built again."""
    return {r["indexname"]: (r["indexdef"], r["oid"]) for r in await conn.fetch(
        """SELECT i.indexname, i.indexdef, c.oid::int AS oid FROM pg_indexes i
           JOIN pg_class c ON c.relname = i.indexname
           JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = i.schemaname
           WHERE i.schemaname = 'kantata' AND i.tablename = 'time_entries'""")}


def definitions(ix: dict[str, tuple[str, int]]) -> dict[str, str]:
    return {k: v[0] for k, v in ix.items()}


async def recorded(conn: asyncpg.Connection) -> list[str]:
    return [r["index_name"] for r in await conn.fetch(
        "SELECT index_name FROM syncd.deferred_indexes ORDER BY 1")]


async def test_a_backfill_into_an_empty_mirror_builds_the_indexes_it_dropped(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    fresh = await indexes(conn)
    assert sorted(fresh) == sorted([*MIGRATED, *KEPT])
    stats = await pull.sync_once(deps)
    assert stats.errors == []
    assert stats.details["indexes_deferred"] == MIGRATED  # they were dropped while it loaded
    after = await indexes(conn)
    assert definitions(after) == definitions(fresh)
    assert all(after[n] == fresh[n] for n in KEPT)  # never touched
    assert all(after[n][1] != fresh[n][1] for n in MIGRATED)  # built again
    assert await recorded(conn) == []
    assert await mirror_diff(conn, sim.list_entries()) == []
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 600


async def test_a_backfill_into_a_mirror_with_rows_drops_nothing(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    one = sim.list_entries()[0]
    await conn.execute(
        "INSERT INTO kantata.time_entries (id, date_performed, time_in_minutes, updated_at, "
        "created_at, raw) VALUES ($1, $2::text::date, 1, 'epoch', 'epoch', '{}')",
        int(one["id"]), one["date_performed"])
    before = await indexes(conn)
    stats = await pull.sync_once(deps)
    assert stats.errors == []
    assert "indexes_deferred" not in stats.details
    assert await indexes(conn) == before  # same oids: nothing dropped and built again
    assert await recorded(conn) == []
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_indexes_of_a_killed_run_are_built_by_the_next_job_start(
        db_dsn: str, sim_url: str, conn: asyncpg.Connection, sim: Simulator) -> None:
    fresh = await indexes(conn)
    # a run that deferred them, wrote a few rows and was killed: its row says running, its
    # advisory lock went with its session
    dead = uuid.uuid4()
    await conn.execute("INSERT INTO syncd.sync_runs (run_id, job) VALUES ($1, 'pull')", dead)
    assert await mirror_indexes.defer_mirror_indexes(conn, dead) == MIGRATED
    assert sorted(await indexes(conn)) == KEPT
    some = sim.list_entries()[:3]
    for e in some:
        await conn.execute(
            "INSERT INTO kantata.time_entries (id, date_performed, time_in_minutes, updated_at, "
            "created_at, raw) VALUES ($1, $2::text::date, 1, 'epoch', 'epoch', '{}')",
            int(e["id"]), e["date_performed"])
    assert await mirror_indexes.defer_mirror_indexes(conn) == []  # rows: never again
    # `syncd status` tells an operator what is missing and who builds it
    text = render_text({"windows": {}, "deferred_indexes": [
        {"index_name": d.index_name, "deferred_at": d.deferred_at, "owner_live": d.owner_live}
        for d in await mirror_indexes.deferred_indexes(conn)]})
    assert "deferred index:   time_entries_user_idx" in text
    assert "its run is gone: the next syncd job start builds it" in text
    async with open_deps(make_settings(db_dsn, sim_url)) as d:
        stats = await pull.sync_once(d)
    assert stats.errors == []
    assert "indexes_deferred" not in stats.details  # the mirror had rows
    assert definitions(await indexes(conn)) == definitions(fresh)
    assert await recorded(conn) == []
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_a_live_run_keeps_its_deferred_indexes_until_its_session_ends(
        deps: Deps, db_dsn: str, conn: asyncpg.Connection) -> None:
    owner = RunOwner(db_dsn)
    run_id = uuid.uuid4()
    await owner.open_run(run_id, "pull")
    try:
        assert await mirror_indexes.defer_mirror_indexes(conn, run_id) == MIGRATED
        assert await runs.build_orphaned_indexes(deps) == []  # another job's start
        assert [d.owner_live for d in await mirror_indexes.deferred_indexes(conn)] == \
            [True] * len(MIGRATED)
    finally:
        await owner.close()  # the process is gone: PostgreSQL released its lock
    assert await runs.build_orphaned_indexes(deps) == MIGRATED
    assert await recorded(conn) == []


async def test_a_backfill_builds_the_indexes_of_a_run_killed_while_it_read(
        db_dsn: str, sim_url: str, conn: asyncpg.Connection, sim: Simulator) -> None:
    """Two backfills at once into an empty mirror: the one that deferred the indexes was
    killed while the other read; the survivor ended with the mirror left without them until
    the next job start (a new user's trial). It builds them when its backfill ends."""
    fresh = await indexes(conn)
    owner = RunOwner(db_dsn)
    run_id = uuid.uuid4()
    await owner.open_run(run_id, "pull")  # live when the survivor starts
    assert await mirror_indexes.defer_mirror_indexes(conn, run_id) == MIGRATED
    async with open_deps(make_settings(db_dsn, sim_url, per_page=50)) as d:
        original = d.client.list_page
        killed = False

        async def list_page(*args: object, **kwargs: object) -> object:
            nonlocal killed
            if not killed:
                killed = True
                await owner.close()  # kill -9: PostgreSQL releases the session's lock
            return await original(*args, **kwargs)  # type: ignore[arg-type]

        d.client.list_page = list_page  # type: ignore[method-assign]
        stats = await pull.sync_once(d)
    assert killed and stats.errors == []
    assert "indexes_deferred" not in stats.details  # the survivor deferred nothing itself
    assert definitions(await indexes(conn)) == definitions(fresh)
    assert await recorded(conn) == []
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_migrate_builds_recorded_indexes_first(conn: asyncpg.Connection,
                                                      db_dsn: str) -> None:
    fresh = await indexes(conn)
    owner = RunOwner(db_dsn)
    run_id = uuid.uuid4()
    await owner.open_run(run_id, "pull")
    try:  # even those of a live backfill: a migration may alter any index
        assert await mirror_indexes.defer_mirror_indexes(conn, run_id) == MIGRATED
        assert await migrate.apply(conn) == []
        assert definitions(await indexes(conn)) == definitions(fresh)
        assert await recorded(conn) == []
    finally:
        await owner.close()


async def test_user_indexes_are_rebuilt_and_unique_and_partial_ones_never_dropped(
        conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE INDEX bi_notes_idx ON kantata.time_entries "
                       "(lower(notes) text_pattern_ops, date_performed DESC)")
    await conn.execute("CREATE INDEX bi_live_idx ON kantata.time_entries (user_id) "
                       "WHERE deleted_at IS NULL")
    await conn.execute('CREATE INDEX "BI Minutes" ON kantata.time_entries '
                       "USING hash (time_in_minutes)")
    await conn.execute("CREATE UNIQUE INDEX bi_unique_idx ON kantata.time_entries (id, user_id)")
    before = await indexes(conn)
    names = await mirror_indexes.defer_mirror_indexes(conn)
    assert names == sorted([*MIGRATED, "bi_notes_idx", "BI Minutes"])
    kept = sorted([*KEPT, "bi_unique_idx", "bi_live_idx"])
    assert sorted(await indexes(conn)) == kept
    assert await mirror_indexes.build_deferred_indexes(conn) == names
    after = await indexes(conn)
    assert definitions(after) == definitions(before)
    assert all(after[n] == before[n] for n in kept)  # same oids: never dropped
    # built again from a row that survived a build already done: a no-op, not an error
    await conn.execute("INSERT INTO syncd.deferred_indexes (index_name, definition) "
                       "VALUES ('bi_notes_idx', $1)", before["bi_notes_idx"][0])
    assert await mirror_indexes.build_deferred_indexes(conn) == ["bi_notes_idx"]
    assert await indexes(conn) == after


async def test_a_cancelled_backfill_builds_its_indexes_before_it_ends(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """A deadline cancels the run midway: the indexes are built before the cancellation
    ends it, and the run records it as interrupted."""
    fresh = await indexes(conn)
    sim = Simulator(SimConfig(token=TOKEN, entries=600, seed=7, lock_date=None))
    sim.set_faults({"latency_ms": 20})
    async with running_simulator(sim) as url, \
            open_deps(make_settings(db_dsn, url, per_page=20)) as d:
        task = asyncio.create_task(pull.sync_once(d))
        for _ in range(500):  # until the backfill has dropped them and stored some rows
            await asyncio.sleep(0.01)
            if await recorded(conn) and await conn.fetchval(
                    "SELECT count(*) FROM kantata.time_entries") > 40:
                break
        else:
            pytest.fail("the backfill never deferred the indexes")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert 40 < await conn.fetchval("SELECT count(*) FROM kantata.time_entries") < 600
    assert definitions(await indexes(conn)) == definitions(fresh)
    assert await recorded(conn) == []
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs") == "interrupted"


@pytest.mark.parametrize("definition", [
    "CREATE UNIQUE INDEX x ON kantata.time_entries USING btree (id)",
    "CREATE INDEX x ON kantata.workspaces USING btree (id)",
    "CREATE INDEX x ON kantata.time_entries USING btree (id); DROP TABLE kantata.time_entries",
    "DROP TABLE kantata.time_entries",
])
async def test_a_row_that_is_not_a_mirror_index_is_never_run(
        conn: asyncpg.Connection, definition: str) -> None:
    assert await mirror_indexes.defer_mirror_indexes(conn) == MIGRATED
    await conn.execute("INSERT INTO syncd.deferred_indexes (index_name, definition) "
                       "VALUES ('x', $1)", definition)
    with pytest.raises((ValueError, asyncpg.PostgresSyntaxError)):
        await mirror_indexes.build_deferred_indexes(conn)
    assert await recorded(conn) == ["x"]  # kept for an operator to look at; the others built
    assert sorted(await indexes(conn)) == sorted([*MIGRATED, *KEPT])
    assert await conn.fetchval("SELECT to_regclass('kantata.x')") is None
    assert await conn.fetchval("SELECT to_regclass('kantata.time_entries')") is not None


async def test_the_migrate_command_says_which_indexes_it_builds(
        conn: asyncpg.Connection, db_dsn: str, sim_url: str) -> None:
    """`syncd migrate --dry-run` lists the deferred indexes it would build first, and
    `syncd migrate` names those it built (it said only "database is up to date": trial)."""
    from tests.integration.test_cli_sync import env_for, syncd
    assert await mirror_indexes.defer_mirror_indexes(conn, None) == MIGRATED
    env = env_for(db_dsn, sim_url)
    code, out, _ = await syncd(env, "migrate", "--dry-run")
    assert code == 0 and f"{len(MIGRATED)} index(es) of kantata.time_entries deferred" in out
    assert await recorded(conn) != []  # a dry run builds nothing
    code, out, _ = await syncd(env, "migrate")
    assert code == 0 and f"built {len(MIGRATED)} index(es)" in out and MIGRATED[0] in out
    assert "database is up to date" in out and await recorded(conn) == []


async def test_with_a_pool_two_indexes_are_built_at_a_time_and_a_bad_row_stops_none(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """Each build scans the whole table: given a pool, BUILDS_AT_ONCE run at once, each on a
    connection of its own. A reader holding the table shows them waiting side by side."""
    assert mirror_indexes.BUILDS_AT_ONCE == 2
    assert await mirror_indexes.defer_mirror_indexes(conn) == MIGRATED
    await conn.execute("INSERT INTO syncd.deferred_indexes (index_name, definition) "
                       "VALUES ('x', 'DROP TABLE kantata.time_entries')")
    blocker = await asyncpg.connect(db_dsn)
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE kantata.time_entries IN ROW EXCLUSIVE MODE")
        task = asyncio.create_task(mirror_indexes.build_deferred_indexes(pool))
        waiting = 0
        for _ in range(500):
            await asyncio.sleep(0.01)
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'CREATE INDEX IF NOT EXISTS%'")
            if waiting >= 2:
                break
        await asyncio.sleep(0.2)  # a third build would have started by now
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'CREATE INDEX IF NOT EXISTS%'") == waiting == 2
        await tx.rollback()
        with pytest.raises(ValueError):
            await task
    finally:
        await blocker.close()
        await pool.close()
    assert await recorded(conn) == ["x"]  # the bad row stays; every index was built
    assert sorted(await indexes(conn)) == sorted([*MIGRATED, *KEPT])
