"""The real daemon talks sd_notify to a fake NOTIFY_SOCKET: READY=1 once started, WATCHDOG=1
while jobs progress, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops.conftest import DaemonProc, assert_clean_output, daemon_env

pytestmark = pytest.mark.integration


@pytest.fixture
async def fake_systemd() -> AsyncIterator[tuple[str, list[str]]]:
    """A bound datagram socket (path, messages received so far)."""
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")  # sun_path is short
    path = str(Path(directory) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    received: list[str] = []

    async def recv() -> None:
        loop = asyncio.get_running_loop()
        while True:
            received.append((await loop.sock_recv(sock, 4096)).decode())

    task = asyncio.create_task(recv())
    try:
        yield path, received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


async def test_ready_watchdog_and_stopping_reach_the_notify_socket(
        db_dsn: str, sim_url: str, port: int, daemons: Any,
        fake_systemd: tuple[str, list[str]]) -> None:
    path, got = fake_systemd
    env = daemon_env(db_dsn, sim_url, port, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    d: DaemonProc = await daemons(env)
    await d.wait_event("daemon_ready")
    for _ in range(60):
        if got.count("WATCHDOG=1") >= 3:
            break
        await asyncio.sleep(0.1)
    assert got.count("WATCHDOG=1") >= 3, got  # ~one per half interval while jobs progress
    assert d.find("watchdog_enabled", interval=1.0)
    d.send(signal.SIGTERM)
    assert await d.wait_exit(timeout=12) == 0
    assert got[0] == "STATUS=starting"
    assert got.index("READY=1") < got.index("WATCHDOG=1") < got.index("STOPPING=1")
    assert "STATUS=leader; running pull, push, reconcile, prune" in got
    assert_clean_output(d)
