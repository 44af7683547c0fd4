"""TempPostgres.restart(), which the chaos harness uses under load."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

from syncd.pgserver import TempPostgres, find_bin_dir

pytestmark = pytest.mark.integration


@pytest.mark.skipif(find_bin_dir() is None, reason="no PostgreSQL server binaries")
async def test_restart_returns_and_cuts_sessions() -> None:
    d = Path(tempfile.mkdtemp(prefix="syncd-pgrestart-"))  # postgres (the OS user) must reach it
    d.chmod(0o755)
    pg = await asyncio.to_thread(TempPostgres(d / "pg").start)
    try:
        conn = await asyncpg.connect(pg.dsn)
        t0 = time.monotonic()
        # used to hang forever: the new server held the stdout pipe pg_ctl was read through
        await asyncio.wait_for(asyncio.to_thread(pg.restart), 30)
        assert time.monotonic() - t0 < 30
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
                            asyncpg.AdminShutdownError, OSError)):
            await conn.fetchval("SELECT 1")
        conn.terminate()
        conn = await asyncpg.connect(pg.dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        await asyncio.to_thread(pg.stop, remove=True)
        shutil.rmtree(d, ignore_errors=True)
