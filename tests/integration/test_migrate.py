"""Migrations: apply to an empty database, re-run is a no-op, changed files are refused."""

from __future__ import annotations

import re
from dataclasses import replace

import asyncpg
import pytest

from syncd import migrate
from syncd.errors import MigrationError

pytestmark = pytest.mark.integration


def test_files_are_named_and_numbered_contiguously() -> None:
    migs = migrate.discover()
    assert migs, "no migrations found"
    assert [m.version for m in migs] == list(range(1, len(migs) + 1))
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", m.name) for m in migs)


async def test_apply_then_rerun_is_noop(empty_db_dsn: str) -> None:
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        first = await migrate.apply(conn)
        assert [m.version for m in first] == [m.version for m in migrate.discover()]
        assert await migrate.apply(conn) == []
        await migrate.check_current(conn)
        n = await conn.fetchval("SELECT count(*) FROM syncd.schema_migrations")
        assert n == len(first)
    finally:
        await conn.close()


async def test_pending_migrations_block_start_with_the_command_to_run(empty_db_dsn: str) -> None:
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        with pytest.raises(MigrationError, match="run `syncd migrate`"):
            await migrate.check_current(conn)
    finally:
        await conn.close()


async def test_changed_applied_file_is_an_error(empty_db_dsn: str) -> None:
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        migs = migrate.discover()
        await migrate.apply(conn, migs)
        tampered = [replace(migs[0], sql=migs[0].sql + "\n-- edited"), *migs[1:]]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate.apply(conn, tampered)
    finally:
        await conn.close()


async def test_concurrent_migrate_applies_once(empty_db_dsn: str) -> None:
    import asyncio

    conns = [await asyncpg.connect(empty_db_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate.apply(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(migrate.discover())]
    finally:
        for c in conns:
            await c.close()


async def test_upgrading_the_outbox_id_to_an_identity_never_reuses_an_id(
        empty_db_dsn: str) -> None:
    """0007 turns `syncd.outbox.id` into GENERATED ALWAYS AS IDENTITY on a live outbox: the
    next id follows the last one ever handed out, even when that row was deleted."""
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        every = migrate.discover()
        assert every[6].name == "0007_outbox_writer_role.sql"
        await migrate.apply(conn, every[:6])
        for i in range(5):
            await conn.execute("INSERT INTO syncd.outbox (op, entry_id) VALUES ('delete', $1)",
                               100 + i)
        await conn.execute("DELETE FROM syncd.outbox WHERE id = 5")
        await migrate.apply(conn, every)
        assert await conn.fetchval("INSERT INTO syncd.outbox (op, entry_id) "
                                   "VALUES ('delete', 200) RETURNING id") == 6
        with pytest.raises(asyncpg.GeneratedAlwaysError):
            await conn.execute("INSERT INTO syncd.outbox (id, op, entry_id) "
                               "VALUES (7, 'delete', 201)")
    finally:
        await conn.close()
