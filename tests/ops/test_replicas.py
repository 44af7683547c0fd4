"""Two replicas on one database: one leader pulls, both push; kill -9 the leader and the other
takes over within seconds."""

from __future__ import annotations

import signal
import time
from typing import Any

import asyncpg
import pytest

from syncd.pgserver import free_port
from tests.ops.conftest import DaemonProc, assert_clean_output, daemon_env

pytestmark = pytest.mark.integration


async def test_leader_failover_after_kill_9(db_dsn: str, sim_url: str, conn: asyncpg.Connection,
                                            daemons: Any) -> None:
    a: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, free_port()))
    await a.wait_event("leader_acquired")
    b: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, free_port()))
    await b.wait_event("daemon_ready", leader=False)
    await b.wait_event("job_finished", job="push")  # every replica pushes
    await a.wait_http("/readyz", 200)
    status, body = await b.get("/readyz")  # the standby is ready too: the leader pulled
    assert status == 200, body
    assert (await a.metric("syncd_leader"), await b.metric("syncd_leader")) == (1.0, 0.0)
    assert not b.find("job_started", job="pull")
    holder = await conn.fetchval(
        """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
           WHERE l.locktype = 'advisory' AND l.objid = $1 AND l.granted
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        0x53594E43)
    assert holder == f"syncd {a.find('daemon_starting')[0]['owner']}"

    a.send(signal.SIGKILL)
    killed = time.monotonic()
    await a.wait_exit(timeout=5)
    await b.wait_event("leader_acquired", timeout=10)
    takeover = time.monotonic() - killed
    assert takeover < 5, takeover
    await b.wait_event("job_finished", job="pull", timeout=10)
    assert await b.metric("syncd_leader") == 1.0
    print(f"leader takeover after kill -9: {takeover:.2f} s")
    b.send(signal.SIGTERM)
    assert await b.wait_exit(timeout=12) == 0
    assert_clean_output(b)
