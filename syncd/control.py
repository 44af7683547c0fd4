"""The daemon's control connection: one dedicated PostgreSQL session per process (outside the
pool) that holds the leader lock and LISTENs for outbox changes.

Leader election: a session-level advisory lock (`pg_try_advisory_lock(settings.leader_lock_key)`).
The server releases it the moment the session ends, so when the leader process dies or loses its
connection, a survivor's next attempt (every `retry_interval` seconds) takes over. Server-side
TCP keepalives (set per session below) bound how long a half-open connection of a vanished
leader can keep the lock (about 25 s). While it believes it is the leader, the process checks
its session every `retry_interval` seconds and steps down at the first failure; a brief overlap
of two pulls is harmless (the upsert keeps the newer row, the watermark only moves forward).

Outbox wake-ups: between checks the loop waits on `outbox.wait_for_notify` (LISTEN
syncd_outbox; the trigger in migrations/0002_outbox.sql notifies at commit); every notification
and every (re)connect calls `on_wake()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import structlog

from syncd import outbox
from syncd.metrics import Metrics
from syncd.scheduler import DB_UNAVAILABLE

__all__ = ["ControlConnection"]

log = structlog.get_logger(__name__)

TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
PING = "SELECT 1"
# Per-session server settings: detect a dead client within ~25 s (idle 10 s + 3 probes x 5 s)
# so the lock of a vanished leader is released even without a clean TCP close.
SERVER_SETTINGS = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                   "tcp_keepalives_count": "3"}


class ControlConnection:
    """Leader lock and LISTEN on one dedicated session (see the module docstring).

    `dsn`: libpq URL or None (PG* variables). `lock_key`: advisory lock id (bigint).
    `application_name` is shown in pg_stat_activity (and on /status for the leader).
    Callbacks run in the event loop: `on_leader(bool)` on every change, `on_wake()` on NOTIFY
    and after each (re)connect (notifications may have been missed while disconnected).
    """

    def __init__(self, dsn: str | None, lock_key: int, *, metrics: Metrics,
                 application_name: str, on_leader: Callable[[bool], None] = lambda _: None,
                 on_wake: Callable[[], None] = lambda: None, retry_interval: float = 2.0,
                 query_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._key = lock_key
        self._metrics = metrics
        self._app_name = application_name[:63]
        self._on_leader = on_leader
        self._on_wake = on_wake
        self.retry_interval = retry_interval
        self._timeout = query_timeout
        self._conn: asyncpg.Connection | None = None
        self._leader = False
        self._task: asyncio.Task[None] | None = None
        self._down_since_logged = False

    @property
    def is_leader(self) -> bool:
        """True while this process holds the leader lock (as far as it last checked)."""
        return self._leader

    async def start(self) -> None:
        """Make one attempt now (so leadership is known before jobs start), then keep trying
        in the background."""
        await self._step()
        self._task = asyncio.create_task(self._loop(), name="syncd-control")

    async def close(self) -> None:
        """Stop, and end the session (which releases the leader lock)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop(reason="shutdown")

    # ------------------------------------------------------------------ internals
    async def _loop(self) -> None:
        while True:
            conn = self._conn
            if conn is None or conn.is_closed():
                await asyncio.sleep(self.retry_interval)
            else:
                try:
                    if await outbox.wait_for_notify(conn, self.retry_interval):
                        self._on_wake()
                except (*DB_UNAVAILABLE, TimeoutError):
                    pass  # the check below notices and reconnects
            try:
                await self._step()
            except Exception:  # noqa: BLE001 - a bug here must not end leader election
                log.exception("control_loop_error")
                await self._drop(reason="control_loop_error")

    async def _step(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                await self._drop(reason="connection_lost")
                await self._connect()
            assert self._conn is not None
            if self._leader:
                await self._conn.fetchval(PING, timeout=self._timeout)
            elif await self._conn.fetchval(TRY_LOCK, self._key, timeout=self._timeout):
                self._set_leader(True)
        except (*DB_UNAVAILABLE, TimeoutError) as exc:
            if not self._down_since_logged:
                log.warning("control_connection_failed", error=f"{type(exc).__name__}: {exc}",
                            retry_in=self.retry_interval)
                self._down_since_logged = True
            await self._drop(reason="connection_error")
        except asyncpg.PostgresError as exc:  # e.g. permissions: not an outage, still retried
            log.error("control_connection_error", error=f"{type(exc).__name__}: {exc}",
                      retry_in=self.retry_interval)
            await self._drop(reason="connection_error")

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, timeout=self._timeout,
            server_settings={"application_name": self._app_name, **SERVER_SETTINGS})
        try:
            await outbox.wait_for_notify(conn, 0)  # the first call LISTENs
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        if self._down_since_logged:
            log.info("control_connection_restored")
            self._down_since_logged = False
        self._on_wake()

    def _set_leader(self, leader: bool, reason: str = "lock_acquired") -> None:
        if leader == self._leader:
            return
        self._leader = leader
        self._metrics.is_leader.set(1 if leader else 0)
        log.info("leader_acquired" if leader else "leader_released", lock_key=self._key,
                 reason=reason)
        self._on_leader(leader)

    async def _drop(self, *, reason: str) -> None:
        conn, self._conn = self._conn, None
        if self._leader:
            self._set_leader(False, reason)
        if conn is None:
            return
        if conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=2.0)
        except (*DB_UNAVAILABLE, TimeoutError):
            conn.terminate()
        log.debug("control_connection_closed", reason=reason)
