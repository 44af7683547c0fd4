"""Database outages are waited out: a daemon started before PostgreSQL waits for it, and a
PostgreSQL restart under a running daemon is recovered without operator action (own throwaway
cluster, so the shared server is untouched)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from syncd import migrate
from syncd.pgserver import PgServerError, TempPostgres
from tests.ops.conftest import DaemonProc, assert_clean_output, daemon_env

pytestmark = pytest.mark.integration


@pytest.fixture
def own_postgres() -> Iterator[TempPostgres]:
    directory = Path(tempfile.mkdtemp(prefix="syncd-ops-pg-"))
    directory.chmod(0o755)  # the server may run as the postgres user
    pg = TempPostgres(directory / "pg")
    try:
        pg.start()
    except PgServerError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(str(exc))
    try:
        yield pg
    finally:
        pg.stop(remove=True)
        shutil.rmtree(directory, ignore_errors=True)


async def test_database_outages_are_waited_out_at_startup_and_while_running(
        own_postgres: TempPostgres, sim_url: str, port: int, daemons: Any) -> None:
    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    await asyncio.to_thread(own_postgres.stop)
    # Started while PostgreSQL is down: alive, not ready, retrying with back-off.
    d: DaemonProc = await daemons(daemon_env(own_postgres.dsn, sim_url, port,
                                             SYNCD_PULL_INTERVAL="1", SYNCD_PUSH_INTERVAL="1"))
    await d.wait_event("database_unavailable")
    assert await d.get("/healthz") == (200, "ok\n")
    status, body = await d.get("/readyz")
    assert status == 503 and orjson.loads(body)["reason"] == "starting"
    await asyncio.to_thread(own_postgres.start)
    await d.wait_event("daemon_ready", timeout=10)
    await d.wait_http("/readyz", 200)

    before = datetime.now(UTC).isoformat()
    stopped = time.monotonic()
    # stop + start rather than TempPostgres.restart(): its `pg_ctl restart` gives the new
    # server our stdout pipe, so it never returns under capture_output.
    await asyncio.to_thread(own_postgres.stop)
    status, body = await d.get("/readyz")
    assert status == 503 and orjson.loads(body)["reason"] == "database_unavailable"
    assert await d.get("/healthz") == (200, "ok\n")
    await asyncio.sleep(1)
    await asyncio.to_thread(own_postgres.start)
    restarted = time.monotonic()
    down_for = restarted - stopped

    def after(e: dict[str, Any]) -> bool:
        return str(e["timestamp"]) > before

    # The leader lock went with the old session and comes back; pulls succeed again.
    await d.wait_event("job_failed_retriable", error_class="DatabaseUnavailable", where=after)
    await d.wait_event("leader_released", where=after, timeout=10)
    await d.wait_event("leader_acquired", where=after, timeout=10)
    await d.wait_event("job_finished", job="pull", status="ok", where=after, timeout=15)
    await d.wait_event("job_finished", job="push", status="ok", where=after, timeout=15)
    await d.wait_http("/readyz", 200)
    assert d.proc is not None and d.proc.returncode is None  # never exited
    recovered = time.monotonic() - restarted
    print(f"postgres down {down_for:.1f} s, daemon recovered {recovered:.1f} s after restart")
    d.send(signal.SIGTERM)
    assert await d.wait_exit(timeout=12) == 0
    assert_clean_output(d)
