"""`syncd run`: the long-running daemon and its lifecycle.

Startup: serve the HTTP endpoint (so /healthz answers at once), connect the asyncpg pool
(waiting out an unreachable database with back-off), refuse to start when migrations are
pending (MigrationError naming `syncd migrate`), open the aiohttp session (`app.open_deps`),
open the control connection (leader lock + LISTEN), start the scheduler, tell systemd READY=1.

Jobs (`syncd.scheduler`): pull every `pull_interval` s and reconciliation (leader only), push
every `push_interval` s and at once on NOTIFY (every replica; outbox claims are exclusive;
deadline `push_deadline`), run-history pruning daily (leader only).

Shutdown: the first SIGTERM/SIGINT sets `deps.stopping` (jobs stop taking new work between pages
and batches), pauses the scheduler, waits up to `shutdown_grace` s for runs in progress, cancels
what is left, releases this process's outbox leases, closes the control connection (releasing
the leader lock), the session, the pool and the HTTP server, and returns 0. A second signal exits
at once with 128 + signal number.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import structlog

from syncd import __version__, early_signals, logs, migrate, outbox, pull, store
from syncd.app import open_deps, open_pool
from syncd.control import ControlConnection
from syncd.errors import FatalError, dsn_passwords
from syncd.http import OpsState, start_http
from syncd.metrics import Metrics
from syncd.runs import Deps, job_run
from syncd.scheduler import DB_UNAVAILABLE, JobScheduler, JobSpec, deadline_for
from syncd.sdnotify import Notifier, ProgressWatchdog
from syncd.settings import Settings

__all__ = ["Daemon", "entry_point", "process_owner", "prune_history", "push_deadline"]

log = structlog.get_logger(__name__)

LEADER_RETRY = 2.0  # seconds between leader-lock attempts of a standby replica
MIN_PUSH_REWAKE = 0.5  # seconds: the soonest a push re-runs for rows it left due
RECONCILE_CHECK_MAX = 300.0  # seconds: reconcile_due decides which windows are due
PRUNE_INTERVAL = 86400.0
PRUNE_DEADLINE = 600.0
DB_RETRY_MAX = 30.0  # seconds: cap of the startup back-off while the database is down
CANCEL_WAIT = 5.0  # seconds cancelled runs get to unwind after the grace period
LEASE_RELEASE_TIMEOUT = 5.0
POOL_CLOSE_TIMEOUT = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)
LEASE_FRACTION = 0.9  # a push run ends (and gives its rows back) before its leases expire


class _PoolReconnectLine(logging.Filter):
    """asyncpg logs a full traceback every time it fails to re-open a pooled connection during
    an outage (each second at first); keep one stable line without it. The pool's maintenance
    task inherited the context of the job run that noticed the outage, so drop that job's
    run_id/job from it: the line is about the pool, not that run."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "pool connection floor" in str(record.msg):
            record.msg, record.args, record.exc_info = "database_pool_reconnect_failed", (), None
            structlog.contextvars.unbind_contextvars("run_id", "job")
        return True


def install_log_filters() -> None:
    """Quieten third-party lines the daemon reports better itself (idempotent)."""
    pool_logger = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolReconnectLine) for f in pool_logger.filters):
        pool_logger.addFilter(_PoolReconnectLine())


def process_owner() -> str:
    """This process's identity in outbox leases and pg_stat_activity: host:pid:random."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def entry_point(module: str, name: str) -> Callable[..., Any] | None:
    """`module.name` if that module exists and defines it, else None (a job whose code has
    not shipped yet is left out instead of failing every run)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
    return getattr(mod, name, None)  # type: ignore[no-any-return]


#: Seconds a pull run may take at least: with the 60 s default interval, 90 % of it would cut a
#: first backfill every 54 s (each cut re-reads the pages in flight and side-loads again); a
#: pull is one request once the backfill is done, and the timer runs it overlaps are skipped.
PULL_MIN_DEADLINE = 600.0


def push_deadline(s: Settings) -> float:
    """Seconds one push run may take: 90 % of `push_interval` capped at 90 % of
    `outbox_lease` (a run ends before its leases could expire), but never less than one full
    Kantata request (`request_timeout` + `connect_timeout`: a slow answer is waited for
    instead of the run being cut while its request is in flight). Settings guarantees
    `outbox_lease` > `request_timeout` + `connect_timeout`, hence always
    request_timeout + connect_timeout <= deadline < outbox_lease. It may exceed
    `push_interval`: that interval is only the fallback poll (NOTIFY wakes the push)."""
    one_request = s.request_timeout + s.connect_timeout
    return max(one_request, min(deadline_for(s.push_interval), LEASE_FRACTION * s.outbox_lease))


async def prune_history(deps: Deps) -> int:
    """Delete `syncd.sync_runs` rows older than `run_history_days`, `done` outbox rows older
    than `outbox_done_retention_days` and entry versions replaced more than
    `history_retention_days` ago (0: kept), and close runs left `running` by a killed process;
    return how many run rows were deleted."""
    s = deps.settings
    async with job_run(deps, "prune") as stats:
        async with deps.pool.acquire() as conn:
            n = await store.prune_runs(conn, s.run_history_days)
            closed = (await store.close_dead_runs(conn)).runs
            done = await outbox.prune_done(conn, s.outbox_done_retention_days)
            versions = await store.prune_versions(conn, s.history_retention_days)
        stats.details["runs_deleted"] = n
        stats.details["versions_deleted"] = versions
        stats.details["abandoned_runs_closed"] = closed
        stats.details["outbox_done_deleted"] = done
        log.info("run_history_pruned", rows=n, older_than_days=s.run_history_days,
                 outbox_done_deleted=done, outbox_older_than_days=s.outbox_done_retention_days,
                 versions_deleted=versions)
    return n


class Daemon:
    """One `syncd run` process (see the module docstring). `run()` returns the exit code;
    raises MigrationError when migrations are pending, ValueError when no token is set,
    FatalError when the HTTP port cannot be bound."""

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None,
                 owner: str | None = None, leader_retry: float = LEADER_RETRY) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier.from_env()
        self.owner = owner or process_owner()
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.leader_retry = leader_retry
        self.control: ControlConnection | None = None
        self.scheduler: JobScheduler | None = None
        self._signals = 0
        self._watchdog: ProgressWatchdog | None = None

    # ------------------------------------------------------------------ entry
    async def run(self) -> int:
        """Run until a signal (or `stopping.set()`); return 0 after a clean shutdown."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        early = early_signals.pending()  # caught before the loop existed (`syncd run`)
        if early is not None:
            self._on_signal(early)
        try:
            return await self._run()
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
            self.notifier.close()

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        self._signals += 1
        if self._signals == 1:
            log.info("shutdown_requested", signal=name, grace=self.settings.shutdown_grace)
            self.notifier.stopping()
            self.stopping.set()
            return
        log.warning("shutdown_forced", signal=name, exit_code=128 + sig)
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(128 + sig)

    async def _run(self) -> int:
        s = self.settings
        install_log_filters()
        secrets = self._register_secrets()
        migrations = migrate.discover()
        state = OpsState(settings=s, metrics=self.metrics, owner=self.owner,
                         stopping=self.stopping, migrations=migrations, secrets=secrets)
        log.info("daemon_starting", version=__version__, owner=self.owner,
                 pull_interval=s.pull_interval, push_interval=s.push_interval,
                 shutdown_grace=s.shutdown_grace)
        if self.stopping.is_set():  # SIGTERM while starting: nothing was opened yet
            log.info("daemon_stopped", during="startup")
            return 0
        self.notifier.status("starting")
        async with AsyncExitStack() as stack:
            await self._serve_http(stack, state)
            pool = await self._wait_for_database(migrations)
            if pool is None:
                log.info("daemon_stopped", during="startup")
                return 0
            stack.push_async_callback(self._close_pool, pool)
            state.pool = pool
            deps = await stack.enter_async_context(
                open_deps(s, metrics=self.metrics, pool=pool))
            deps.progress = self._progress
            deps.stopping = self.stopping
            deps.client.stop_waiting_when(self.stopping)
            control = self.control = ControlConnection(
                s.dsn(), s.leader_lock_key, metrics=self.metrics,
                application_name=f"syncd {self.owner}", on_leader=self._on_leader,
                on_wake=self._wake_push, retry_interval=self.leader_retry)
            stack.push_async_callback(control.close)
            sched = self.scheduler = JobScheduler(
                self._job_specs(deps), is_leader=lambda: control.is_leader,
                stopping=self.stopping, on_alive=self._progress)
            stack.push_async_callback(sched.shutdown)
            for spec in sched.specs.values():
                self.metrics.job_interval.labels(spec.name).set(spec.interval)
            state.is_leader = lambda: control.is_leader
            state.running_jobs = sched.running_jobs
            await control.start()
            sched.start()
            self._start_watchdog(stack)
            self.notifier.ready()
            self._notify_status()
            log.info("daemon_ready", leader=control.is_leader)
            await self.stopping.wait()
            await self._drain(deps)
        log.info("daemon_stopped")
        return 0

    # ------------------------------------------------------------------ startup steps
    def _register_secrets(self) -> tuple[str, ...]:
        token = self.settings.token().get_secret_value()  # ValueError when missing
        passwords = dsn_passwords(self.settings.dsn())  # user:pass@ and ?password=
        secrets = tuple(x for x in (token, *passwords) if x)
        for x in secrets:
            logs.register_secret(x)
        return secrets

    async def _serve_http(self, stack: AsyncExitStack, state: OpsState) -> None:
        s = self.settings
        try:
            runner, port = await start_http(state, s.http_host, s.http_port)
        except OSError as exc:
            raise FatalError(f"cannot serve HTTP on {s.http_host}:{s.http_port}: "
                             f"{exc.strerror or exc} (SYNCD_HTTP_HOST/SYNCD_HTTP_PORT)") from None
        stack.push_async_callback(runner.cleanup)
        log.info("http_listening", host=s.http_host, port=port)

    async def _wait_for_database(self, migrations: list[migrate.Migration]) -> Any:
        """Open the pool and check migrations, retrying while the database is unreachable;
        None when a stop was requested meanwhile (even in the middle of a slow connect).
        MigrationError propagates."""
        delay = 1.0
        while not self.stopping.is_set():
            attempt = asyncio.create_task(self._open_checked_pool())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError, *DB_UNAVAILABLE, TimeoutError):
                    await attempt
                return None
            try:
                return attempt.result()
            except (*DB_UNAVAILABLE, TimeoutError) as exc:
                log.warning("database_unavailable", error=f"{type(exc).__name__}: {exc}",
                            retry_in=delay)
                self.notifier.status("waiting for PostgreSQL")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
            delay = min(delay * 2, DB_RETRY_MAX)
        return None

    async def _open_checked_pool(self) -> Any:
        pool = await open_pool(self.settings)
        try:
            async with pool.acquire() as conn:
                await migrate.check_current(conn)  # MigrationError names `syncd migrate`
        except BaseException:
            pool.terminate()
            raise
        return pool

    def _job_specs(self, deps: Deps) -> list[JobSpec]:
        s = self.settings
        pull_deadline = max(deadline_for(s.pull_interval), PULL_MIN_DEADLINE)
        specs = [JobSpec(name="pull", func=lambda: pull.sync_once(deps),
                         interval=s.pull_interval, deadline=pull_deadline, leader_only=True,
                         may_outlast_interval=pull_deadline >= s.pull_interval)]
        push_once = entry_point("syncd.push", "push_once")
        if push_once is not None:
            async def push_and_plan() -> None:
                report = await push_once(deps, owner=self.owner)
                self._plan_push(report, s.push_interval)

            specs.append(JobSpec(name="push", func=push_and_plan,
                                 interval=s.push_interval, deadline=push_deadline(s),
                                 may_outlast_interval=True))
        reconcile_due = entry_point("syncd.reconcile_job", "reconcile_due")
        if reconcile_due is not None:
            every = min(RECONCILE_CHECK_MAX, s.reconcile_recent_interval)
            specs.append(JobSpec(name="reconcile",
                                 func=lambda: reconcile_due(deps, now=datetime.now(UTC)),
                                 interval=every, deadline=deadline_for(every),
                                 leader_only=True, first_delay=every))
        specs.append(JobSpec(name="prune", func=lambda: prune_history(deps),
                             interval=PRUNE_INTERVAL, deadline=PRUNE_DEADLINE,
                             leader_only=True))
        missing = [n for n, f in (("push", push_once), ("reconcile", reconcile_due)) if f is None]
        if missing:
            log.warning("jobs_unavailable", jobs=missing)
        return specs

    def _start_watchdog(self, stack: AsyncExitStack) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        s = self.settings
        stall_after = 2 * max(s.pull_interval, s.push_interval) + 60
        wd = self._watchdog = ProgressWatchdog(interval, stall_after, now=time.monotonic())

        async def feed() -> None:
            while True:
                wd.pump(self.notifier, time.monotonic())
                await asyncio.sleep(min(interval / 4, 5.0))

        task = asyncio.create_task(feed(), name="syncd-watchdog")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop)
        log.info("watchdog_enabled", interval=interval, stall_after=stall_after)

    # ------------------------------------------------------------------ callbacks
    def _progress(self) -> None:
        if self._watchdog is not None:
            self._watchdog.progress(time.monotonic())

    def _on_leader(self, leader: bool) -> None:
        if leader and self.scheduler is not None:
            self.scheduler.wake("pull")
        self._notify_status()

    def _plan_push(self, report: Any, interval: float) -> None:
        """Wake the push when its earliest pending row falls due, if that is before the next
        poll: a create whose answer was lost is looked up LOOKUP_SECONDS later, not at the
        next poll. Rows due now that this drain could not claim (an earlier row of the same
        entry is in flight elsewhere) wait for the poll, so this never spins."""
        due = getattr(report, "next_due_seconds", None)
        if self.scheduler is None or due is None or due >= interval:
            return
        if due <= 0 and not getattr(report, "claimed", 0):
            return
        self.scheduler.wake("push", delay=max(due, MIN_PUSH_REWAKE))

    def _wake_push(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake("push")

    def _notify_status(self) -> None:
        if self.control is None or self.scheduler is None:
            return
        role = "leader" if self.control.is_leader else "standby"
        jobs = [n for n, sp in self.scheduler.specs.items()
                if self.control.is_leader or not sp.leader_only]
        self.notifier.status(f"{role}; running {', '.join(jobs)}")

    # ------------------------------------------------------------------ shutdown
    async def _drain(self, deps: Deps) -> None:
        assert self.scheduler is not None
        grace = self.settings.shutdown_grace
        log.info("shutdown_draining", running=self.scheduler.running_jobs(), grace=grace)
        left = await self.scheduler.drain(grace)
        if left:
            log.warning("shutdown_grace_exceeded", cancelled=left, grace=grace)
            await self.scheduler.cancel_running(
                CANCEL_WAIT, f"cut off at the end of the shutdown grace ({grace:g} s, "
                             "SYNCD_SHUTDOWN_GRACE); the next run resumes")
        await self._release_leases(deps)

    async def _release_leases(self, deps: Deps) -> None:
        release = entry_point("syncd.outbox", "release_leases")
        if release is None:
            return
        # Rows whose request may have reached Kantata are looked up as soon as push itself
        # looks up a lost answer (the lookup, not this delay, holds back any re-send).
        settle = getattr(sys.modules.get("syncd.push"), "LOOKUP_SECONDS", 0.0)
        try:
            async with asyncio.timeout(LEASE_RELEASE_TIMEOUT), deps.pool.acquire() as conn:
                rows = await release(conn, self.owner, settle_seconds=settle)
            log.info("outbox_leases_released", rows=rows, owner=self.owner)
        except (*DB_UNAVAILABLE, TimeoutError) as exc:
            log.warning("outbox_lease_release_failed", error=f"{type(exc).__name__}: {exc}",
                        note="the leases expire after SYNCD_OUTBOX_LEASE seconds")

    async def _close_pool(self, pool: Any) -> None:
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("pool_close_timeout", seconds=POOL_CLOSE_TIMEOUT)
            pool.terminate()
