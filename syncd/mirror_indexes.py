"""The asyncpg boundary for deferring the mirror's secondary indexes during the first backfill.

Loading an empty `kantata.time_entries` with its secondary indexes in place inserts every row
into each btree in random order while the table grows; building each index once after the
load (a sorted CREATE INDEX) is cheaper — the bulk-load technique of pg_restore and pgloader
(PostgreSQL manual, "Populating a Database", 14.4.3 "Remove Indexes"). Measured (issue #26):
1,000,000 entries cost PostgreSQL +7.9 CPU-seconds with the four BI indexes of migration 0001
and the partial index of 0008, over a table with only its primary key.

`defer_mirror_indexes` drops every non-unique, non-constraint, non-partial index of the table
(RECORD says why each kind is left alone) while it has
no row at all, after recording each (name, `pg_get_indexdef`) in `syncd.deferred_indexes`
(migration 0016) in the same transaction; `build_deferred_indexes` builds them again, each in
a transaction of its own that also deletes its row, so a crash at any point loses no index:
a row stays until its index exists again. The primary key (which `ON CONFLICT (id)` needs)
and unique indexes are never touched. A row names the run that dropped it (`run_id`): while
that run is live (`syncd.run_is_live`, migration 0014) only it builds the index, when its
backfill ends; once it is gone (killed), any job start and `syncd migrate` build it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

__all__ = ["Deferred", "build_deferred_indexes", "defer_mirror_indexes", "deferred_indexes",
           "rebuild_statement"]

log = structlog.get_logger(__name__)

#: The table whose indexes are deferred (only the entries are numerous enough to matter).
TABLE = "kantata.time_entries"

#: Deferring waits at most 5 s for the table's lock (a reader of the empty table): past it
#: the backfill runs with its indexes in place, as before.
LOCK = """SET LOCAL lock_timeout = '5s';
LOCK TABLE kantata.time_entries IN ACCESS EXCLUSIVE MODE"""

#: Names in the definitions are schema-qualified by pg_get_indexdef under this search_path,
#: and resolved under the same one when the index is built (as pg_dump does).
SEARCH_PATH = "SET LOCAL search_path = pg_catalog, pg_temp"

#: Records the indexes deferred (`$1`: the run that builds them): not unique (the primary key
#: serves `ON CONFLICT`), not behind a constraint (exclusion), valid and ready (not a failed
#: CONCURRENTLY build), not the table's CLUSTER or replica-identity index (a property DROP
#: would lose), and not partial: a partial index holds the rows its WHERE admits, which for
#: syncd's own (0008: entries with altered text) is normally none, so keeping it costs the
#: load nothing measurable while building it costs a scan of the whole table (1,000,000
#: entries: +0.0 s ± 0.5 s of inserts with it, 0.36 s to build it).
RECORD = """
INSERT INTO syncd.deferred_indexes (index_name, definition, run_id)
SELECT c.relname, pg_get_indexdef(x.indexrelid), $1::uuid
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
WHERE x.indrelid = 'kantata.time_entries'::regclass
  AND NOT x.indisunique AND NOT x.indisprimary AND NOT x.indisexclusion
  AND x.indisvalid AND x.indisready AND x.indislive
  AND NOT x.indisclustered AND NOT x.indisreplident AND x.indpred IS NULL
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = x.indexrelid)
ON CONFLICT (index_name) DO UPDATE
SET definition = excluded.definition, run_id = excluded.run_id, deferred_at = now()
RETURNING index_name
"""

#: Drops every recorded index that exists (those just recorded): a row means "this index does
#: not exist now". Names are quoted by PostgreSQL (`%I`).
DROP_RECORDED = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT index_name FROM syncd.deferred_indexes
             WHERE to_regclass(format('kantata.%I', index_name)) IS NOT NULL LOOP
        EXECUTE format('DROP INDEX kantata.%I', r.index_name);
    END LOOP;
END $$
"""

#: The rows to build: `$1` every row (`syncd migrate`), or those of run `$2` (the caller's own
#: backfill) and those whose run is not live (runs.RunOwner's lock, `syncd.run_is_live`).
TO_BUILD = """
SELECT index_name FROM syncd.deferred_indexes d
WHERE $1 OR d.run_id = $2 OR d.run_id IS NULL
   OR NOT EXISTS (SELECT 1 FROM syncd.sync_runs r
                  WHERE r.run_id = d.run_id AND r.status = 'running'
                    AND syncd.run_is_live(r.id))
ORDER BY index_name
"""

#: The recorded indexes for `syncd status`, with whether the run that builds them is live.
LIST = """
SELECT index_name, deferred_at,
       EXISTS (SELECT 1 FROM syncd.sync_runs r
               WHERE r.run_id = d.run_id AND r.status = 'running'
                 AND syncd.run_is_live(r.id)) AS owner_live
FROM syncd.deferred_indexes d ORDER BY index_name
"""

#: What pg_get_indexdef writes for a non-unique index of the mirror's entries: its name (bare
#: or quoted), the table, the access method.
_DEFINITION = re.compile(r'CREATE INDEX (?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+") '
                         r'ON kantata\.time_entries USING [a-z0-9_]+ \(.*', re.DOTALL)


def rebuild_statement(definition: str) -> str:
    """The statement that builds a recorded index again, a no-op when it exists:
    `definition` (pg_get_indexdef's `CREATE INDEX name ON kantata.time_entries USING ...`)
    with `IF NOT EXISTS`. Raises ValueError for anything else (a row not written by
    `defer_mirror_indexes`); the caller runs it as one prepared statement, so a definition
    cannot carry a second one."""
    if _DEFINITION.fullmatch(definition) is None:
        raise ValueError(f"not a CREATE INDEX on kantata.time_entries: {definition[:80]!r}")
    return definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)


async def defer_mirror_indexes(conn: asyncpg.Connection, run_id: uuid.UUID | None = None
                               ) -> list[str]:
    """Drop the deferrable indexes of `kantata.time_entries` (RECORD: every non-unique,
    non-constraint, non-partial one, user-added ones too) if, and only if, the table has no
    row at all, recording each with its definition and `run_id` (the run that builds them
    when its backfill ends) in `syncd.deferred_indexes`; one transaction, under an ACCESS
    EXCLUSIVE lock of the table taken before the emptiness check, so no writer can slip a row
    in between. Returns the names dropped, sorted; [] when the table has rows, has no such index,
    or its lock was not granted within LOCK_TIMEOUT (then nothing changed). Raises what
    asyncpg raises for other database errors (nothing changed either)."""
    started = time.monotonic()
    try:
        async with conn.transaction():
            await conn.execute(SEARCH_PATH)
            await conn.execute(LOCK)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM kantata.time_entries)"):
                return []
            names = sorted(r["index_name"] for r in await conn.fetch(RECORD, run_id))
            await conn.execute(DROP_RECORDED)
    except asyncpg.LockNotAvailableError:
        log.warning("mirror_indexes_not_deferred", table=TABLE,
                    reason="the table's lock was not granted within 5 s (a reader?); the "
                           "backfill keeps its indexes")
        return []
    if names:
        log.info("mirror_indexes_deferred", table=TABLE, indexes=names,
                 seconds=round(time.monotonic() - started, 3),
                 detail="the mirror is empty: its secondary indexes are built once the "
                        "backfill ends (syncd.deferred_indexes)")
    return names


#: Deferred indexes built at a time when the caller gives a pool: each build is one scan of
#: the whole table, and two scans at once use a second core. Measured (1,000,000 entries,
#: 2 vCPUs): the four indexes one at a time 2.2-2.4 s (each with the server's parallel
#: maintenance workers), two at a time 1.4-1.7 s, four at a time 1.4-1.9 s.
BUILDS_AT_ONCE = 2


async def build_deferred_indexes(db: asyncpg.Connection | asyncpg.Pool, *,
                                 mine: uuid.UUID | None = None, every: bool = False,
                                 reason: str = "", at_once: int = BUILDS_AT_ONCE
                                 ) -> list[str]:
    """Build the indexes recorded in `syncd.deferred_indexes` that no live run owns (their
    run is gone, or none was recorded) plus those of run `mine` (the caller's own backfill,
    ending), or all of them with `every` (`syncd migrate`: a migration must find every index
    it may alter, even while a backfill of another process is loading). `db` is a connection
    (one build at a time on it) or a pool (up to `at_once` builds at a time, each on a
    connection of its own: BUILDS_AT_ONCE). Each build is its own transaction: its row is
    locked (a row another process is building is skipped), its `CREATE INDEX IF NOT EXISTS`
    runs (`rebuild_statement`; the server's `maintenance_work_mem` and parallel maintenance
    workers: 1,000,000 entries build in the same time with 64MB and 256MB) and the row is
    deleted, so a crash in the middle loses nothing. Returns the names built, in name order;
    [] at once when the table does not exist (migrations before 0016) or holds nothing to
    build. `reason` goes to the log line. An index whose build fails keeps its row and the
    others are still built; then the first failure (in name order) is raised: ValueError for
    a row that is not a CREATE INDEX on the mirror's entries, or what asyncpg raises (a lost
    connection ends the builds at once)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            todo = await _to_build(conn, mine, every)
    else:
        todo = await _to_build(db, mine, every)
    if not todo:
        return []
    started = time.monotonic()
    outcome: dict[str, bool | Exception] = {}  # name -> built (False: not ours to build)

    async def builder(conn: asyncpg.Connection) -> None:
        while todo:
            name = todo.pop(0)
            outcome[name] = await _build_one(conn, name)

    if isinstance(db, asyncpg.Pool):
        async def pooled() -> None:
            async with db.acquire() as conn:
                await builder(conn)

        builders = [asyncio.ensure_future(pooled())
                    for _ in range(max(1, min(at_once, len(todo))))]
        try:
            await asyncio.gather(*builders)  # the first error (a lost connection) is raised
        finally:  # ... and the other builders stop: a cancelled build keeps its row
            for b in builders:
                b.cancel()
            await asyncio.gather(*builders, return_exceptions=True)
    else:
        await builder(db)
    built = sorted(name for name, done in outcome.items() if done is True)
    if built:
        log.info("mirror_indexes_built", table=TABLE, indexes=built,
                 seconds=round(time.monotonic() - started, 3), reason=reason)
    failed = [outcome[name] for name in sorted(outcome) if isinstance(outcome[name], Exception)]
    if failed:
        raise failed[0]  # type: ignore[misc]
    return built


async def _to_build(conn: asyncpg.Connection, mine: uuid.UUID | None, every: bool
                    ) -> list[str]:
    """The names `build_deferred_indexes` is to build (TO_BUILD), in name order; [] without
    the table (migrations before 0016)."""
    if await conn.fetchval("SELECT to_regclass('syncd.deferred_indexes')") is None:
        return []
    return [r["index_name"] for r in await conn.fetch(TO_BUILD, every, mine)]


async def _build_one(conn: asyncpg.Connection, name: str) -> bool | Exception:
    """Build recorded index `name` on `conn` in one transaction that deletes its row: True
    when built, False when its row is gone or locked (built meanwhile, or being built by
    another process), the exception when its definition or its build failed (logged; the row
    stays). A lost connection raises."""
    try:
        async with conn.transaction():
            await conn.execute(SEARCH_PATH)
            definition = await conn.fetchval(
                "SELECT definition FROM syncd.deferred_indexes WHERE index_name = $1 "
                "FOR UPDATE SKIP LOCKED", name)
            if definition is None:
                return False
            await conn.fetch(rebuild_statement(definition))  # one statement: prepared
            await conn.execute("DELETE FROM syncd.deferred_indexes WHERE index_name = $1",
                               name)
    except (ValueError, asyncpg.PostgresError) as exc:  # this index only
        log.warning("mirror_index_not_built", index=name, error=f"{type(exc).__name__}: {exc}",
                    detail="its row stays in syncd.deferred_indexes")
        return exc
    return True


@dataclass(frozen=True, slots=True)
class Deferred:
    """One index recorded in `syncd.deferred_indexes`: its name, when it was dropped (aware),
    and whether the run that dropped it is still live (it builds it when its backfill ends;
    otherwise the next job start does)."""

    index_name: str
    deferred_at: datetime
    owner_live: bool


async def deferred_indexes(conn: asyncpg.Connection) -> list[Deferred]:
    """The indexes dropped and not built yet, by name, for `syncd status`; [] when the table
    does not exist yet (migrations not applied)."""
    if await conn.fetchval("SELECT to_regclass('syncd.deferred_indexes')") is None:
        return []
    return [Deferred(r["index_name"], r["deferred_at"], r["owner_live"])
            for r in await conn.fetch(LIST)]
