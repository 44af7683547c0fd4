"""Fixtures for the daemon tests: `syncd run` as a real subprocess (JSON logs captured), a
simulator served in-process on loopback, and helpers to probe the HTTP endpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from syncd.pgserver import free_port
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator

ROOT = Path(__file__).resolve().parents[2]
# Recognisable, so a scan of logs and pages for it means something.
TOKEN = "ops-TOKEN-d41d8cd98f00b204e980"
FORBIDDEN_OUTPUT = ("Unclosed", "unclosed", "Task was destroyed", "Traceback",
                    "coroutine was never awaited")


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimConfig(token=TOKEN, entries=300, seed=11, lock_date=None))


@pytest.fixture
async def sim_url(sim: Simulator) -> AsyncIterator[str]:
    async with running_simulator(sim) as url:
        yield url


def daemon_env(db_dsn: str, sim_url: str, port: int, **over: str) -> dict[str, str]:
    """Environment for `syncd run` against `db_dsn` and the simulator: short intervals, quick
    retries, JSON logs; `over` adds or replaces SYNCD_* variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SYNCD_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    backfill = (datetime.now(UTC).date() - timedelta(days=740)).isoformat()
    env.update(
        SYNCD_DATABASE_URL=db_dsn, SYNCD_KANTATA_BASE_URL=sim_url, SYNCD_KANTATA_TOKEN=TOKEN,
        SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK="true", SYNCD_HTTP_PORT=str(port),
        SYNCD_PULL_INTERVAL="2", SYNCD_PUSH_INTERVAL="5", SYNCD_BACKFILL_START=backfill,
        SYNCD_BACKFILL_WINDOW_MONTHS="12", SYNCD_SHUTDOWN_GRACE="10", SYNCD_MAX_RETRIES="1",
        SYNCD_BACKOFF_BASE="0.05", SYNCD_BACKOFF_CAP="0.2", SYNCD_REQUEST_TIMEOUT="20",
        SYNCD_OVERLAP="5", SYNCD_LOG_FORMAT="json", SYNCD_LOG_LEVEL="INFO")
    env.update(over)
    return env


class DaemonProc:
    """One `python -m syncd run` process; stdout and stderr are captured line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = int(env["SYNCD_HTTP_PORT"])
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> DaemonProc:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "syncd", "run", env=self.env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if line.startswith("{"):
                try:
                    self.events.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    pass

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event
                and all(e.get(k) == v for k, v in match.items())]

    async def wait_event(self, event: str, timeout: float = 15, *,
                         where: Callable[[dict[str, Any]], bool] = lambda _: True,
                         **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [e for e in self.find(event, **match) if where(e)]
            if hits:
                return hits[-1]
            if self.proc is not None and self.proc.returncode is not None:
                await asyncio.sleep(0.1)  # let the reader catch up
                hits = [e for e in self.find(event, **match) if where(e)]
                if hits:
                    return hits[-1]
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {event}:"
                                     f"\n{self.output[-3000:]}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event} {match} within {timeout} s:\n{self.output[-3000:]}")

    async def get(self, path: str) -> tuple[int, str]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with self._http.get(f"http://127.0.0.1:{self.port}{path}") as resp:
            return resp.status, await resp.text()

    async def wait_http(self, path: str, status: int, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        last: tuple[int, str] | None = None
        while time.monotonic() < deadline:
            try:
                last = await self.get(path)
                if last[0] == status:
                    return last[1]
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"{path} never answered {status} (last {last}):\n"
                             f"{self.output[-3000:]}")

    async def metric(self, name: str) -> float | None:
        """The value of one sample line (`name` includes labels) from /metrics."""
        _, text = await self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def send(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)


@pytest.fixture
async def daemons() -> AsyncIterator[Callable[..., Any]]:
    """`await daemons(env)` starts a daemon; all are killed (if still running) afterwards."""
    started: list[DaemonProc] = []

    async def start(env: dict[str, str]) -> DaemonProc:
        d = await DaemonProc(env).start()
        started.append(d)
        return d

    yield start
    for d in started:
        await d.close()


@pytest.fixture
def port() -> int:
    return free_port()


def assert_clean_output(d: DaemonProc) -> None:
    """No warnings about unclosed resources, no tracebacks, and never the token."""
    for bad in FORBIDDEN_OUTPUT:
        hits = [line[:1500] for line in d.lines if bad in line]
        assert not hits, f"{bad!r} in daemon output:\n" + "\n".join(hits[:3])
    assert TOKEN not in d.output
