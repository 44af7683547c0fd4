"""Shared plumbing of every job run: dependencies, run history rows, log context, metrics.

`Deps` is passed explicitly to every job (no globals). `job_run` opens a `syncd.sync_runs` row,
binds `run_id` and `job` to every log line of the run, counts the Kantata requests sent for the
run (`kantata.RUN_REQUESTS`, a context variable: jobs share one client), and closes the row with
the run's figures and error, whatever happens.

A process that is killed cannot close its rows: `RunOwner` holds an advisory lock per open run
on a session of the process's own (migration 0014), which PostgreSQL releases when the process
dies. `syncd status` shows a `running` row without its lock as `interrupted`, and every run
start closes such rows and gives their windows back (`store.close_dead_runs`).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from syncd import mirror_indexes, store
from syncd.errors import StoppedWaiting, redact
from syncd.kantata import RUN_REQUESTS, KantataClient, RequestTally
from syncd.metrics import Metrics
from syncd.pagination import PageSize, PagingTrust
from syncd.settings import Settings

__all__ = ["RUN_LOCK_CLASS", "Deps", "RunOwner", "RunStats", "build_orphaned_indexes",
           "error_line", "interruption", "job_run"]

log = structlog.get_logger(__name__)


#: The first key of the runs' advisory locks ('SYNR'; the second is the row id mod 2^31), as in
#: `syncd.run_is_live` (migration 0014). The two-integer form never meets the one-bigint keys
#: of the leader lock and the migration lock.
RUN_LOCK_CLASS = 0x53594E52


class RunOwner:
    """The process's hold on the runs it opened: one PostgreSQL session of its own (outside
    the pool, opened on first use with `dsn`) that inserts each run row and, in the same
    transaction, takes the session-level advisory lock (RUN_LOCK_CLASS, id mod 2^31); the
    lock is released when the row is closed, or by PostgreSQL when the session ends (the
    process died). A lost session is opened again at the next run and takes the locks of the
    runs still open. Calls are serialised (one session). Raises what asyncpg raises when the
    database cannot be reached."""

    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._held: dict[uuid.UUID, int] = {}  # open runs: run_id -> row id

    async def _session(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = await asyncpg.connect(self.dsn)
        for rid in self._held.values():  # the old session's locks went with it
            await self._conn.execute("SELECT pg_advisory_lock($1, ($2 % 2147483648)::int)",
                                     RUN_LOCK_CLASS, rid)
        return self._conn

    async def open_run(self, run_id: uuid.UUID, job: str) -> datetime:
        """Insert the `syncd.sync_runs` row of `run_id` (status running) and hold its lock;
        returns its `started_at` (aware, the database clock)."""
        async with self._lock:
            for attempt in (1, 2):  # a session dropped since the last run: open a new one
                conn = await self._session()
                try:
                    async with conn.transaction():
                        rid, started = await conn.fetchrow(
                            "INSERT INTO syncd.sync_runs (run_id, job) VALUES ($1, $2) "
                            "RETURNING id, started_at", run_id, job)
                        await conn.execute(
                            "SELECT pg_advisory_lock($1, ($2 % 2147483648)::int)",
                            RUN_LOCK_CLASS, rid)
                except (OSError, asyncpg.InterfaceError,
                        asyncpg.PostgresConnectionError) as exc:
                    await self._drop()
                    if attempt == 2:
                        raise
                    log.info("run_owner_session_reopened", error=f"{type(exc).__name__}: {exc}")
                    continue
                self._held[run_id] = rid
                return started
        raise AssertionError("unreachable")  # pragma: no cover

    async def close_run(self, run_id: uuid.UUID) -> None:
        """Release the lock of `run_id` (after its row was closed); never raises."""
        async with self._lock:
            rid = self._held.pop(run_id, None)
            if rid is None or self._conn is None or self._conn.is_closed():
                return
            try:
                await self._conn.execute(
                    "SELECT pg_advisory_unlock($1, ($2 % 2147483648)::int)", RUN_LOCK_CLASS, rid)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("run_lock_not_released", error=f"{type(exc).__name__}: {exc}")
                await self._drop()  # the session's locks go with it

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """End the session (releasing every lock it holds)."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except (OSError, TimeoutError, asyncpg.InterfaceError):
                    conn.terminate()


@dataclass
class Deps:
    """What a job needs: the process's single pool and client, settings, metrics, and a
    `progress` callback (fed to the systemd watchdog) called whenever work moves forward."""

    pool: asyncpg.Pool
    client: KantataClient
    settings: Settings
    metrics: Metrics
    progress: Any = None
    stopping: Any = None  # asyncio.Event set on shutdown: stop starting new work
    _page_size: PageSize | None = field(default=None, repr=False)
    #: entries in flight across windows (`pull.EntrySlots`, made on first use)
    entry_slots: Any = field(default=None, repr=False)
    #: the process's hold on its open runs (`RunOwner`, made on first use)
    run_owner: RunOwner | None = field(default=None, repr=False)

    def owner(self) -> RunOwner:
        """The process's `RunOwner` (made on first use; `app.open_deps` closes it)."""
        if self.run_owner is None:
            self.run_owner = RunOwner(self.settings.dsn())
        return self.run_owner

    @property
    def page_size(self) -> PageSize:
        """The process's list page size (`pagination.PageSize`): SYNCD_PER_PAGE until a page
        times out, then halved; a new one when the setting changes."""
        if self._page_size is None or self._page_size.wanted != self.settings.per_page:
            self._page_size = PageSize(self.settings.per_page)
        return self._page_size

    def made_progress(self) -> None:
        if self.progress is not None:
            self.progress()

    def should_stop(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()


@dataclass
class RunStats:
    """Figures of one run, written to `syncd.sync_runs`."""

    run_id: uuid.UUID
    job: str
    pages: int = 0
    rows_upserted: int = 0
    rows_rejected: int = 0
    rows_altered: int = 0  # records stored with text made storable (issue #12)
    errors: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    tally: RequestTally = field(default_factory=RequestTally)
    #: whether Kantata honours `page`, as learnt during this run (issue #27)
    paging: PagingTrust = field(default_factory=PagingTrust)
    #: Why a shutdown stopped the run before its work was done (None: it was not): the run is
    #: then `interrupted`, whatever it stored, so that it never counts as a successful pull
    #: (/readyz, `syncd status`'s last ok pull) while windows are left to read.
    stopped: str | None = None
    #: When the run started, on the database clock (aware; `sync_runs.started_at`): every
    #: request the run sends goes after it, so a deletion recorded since is newer than any
    #: listing the run read (`store.set_write_context`). None outside `job_run`.
    listed_since: datetime | None = None

    @property
    def requests(self) -> int:
        """Kantata requests this run has sent so far (its own, whatever runs alongside)."""
        return self.tally.n


_WINDOW = re.compile(r"\d{4}-\d{2}-\d{2}:\d{4}-\d{2}-\d{2}")


def interruption(exc: BaseException) -> str:
    """A run's recorded error when `exc` (a cancellation, a deadline, Ctrl-C) stopped it: the
    cancellation's message when it has one (SIGTERM of a one-shot command, the end of the
    daemon's shutdown grace), else the exception's name."""
    if isinstance(exc, asyncio.CancelledError) and exc.args and exc.args[0]:
        return redact(str(exc.args[0]))[:4000]
    return type(exc).__name__


def error_line(errors: list[str]) -> str:
    """The run's error line from its errors (`RunStats.errors`), each said once: errors of
    windows (`"<window>: <message>"`, the window as `Window.param`) whose message is the same
    once the window is taken out of it are folded into one item, `"22 windows (first ..
    last): <message>"` with the window in the message written `<window>`; windows whose
    messages differ only in their numbers and dates (a day count, the days named) are folded
    the same way, the first one's message standing for all, `"24 windows (first .. last),
    e.g. <window>: <message>"`. Other errors are kept as they are; items in the order they
    first occur, joined by "; ". Its length follows the kinds of error, not the windows."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for e in errors:
        head, sep, rest = e.partition(": ")
        if sep and _WINDOW.fullmatch(head):
            key = _DIGITS.sub("#", rest.replace(head, "<window>"))
            groups.setdefault(key, []).append((head, rest))
        else:
            groups.setdefault(e, [])
    out = []
    for key, items in groups.items():
        windows = [w for w, _ in items]
        msgs = {m.replace(w, "<window>") for w, m in items}
        if len(items) > 1 and len(msgs) == 1:
            out.append(f"{len(items)} windows ({min(windows)} .. {max(windows)}): {msgs.pop()}")
        elif len(items) > 1:
            first, msg = items[0]
            out.append(f"{len(items)} windows ({min(windows)} .. {max(windows)}), e.g. "
                       f"{first}: {msg}")
        elif items:
            out.append(f"{items[0][0]}: {items[0][1]}")
        else:
            out.append(key)
    return "; ".join(out)


_DIGITS = re.compile(r"\d+")


async def build_orphaned_indexes(deps: Deps) -> list[str]:
    """Build the mirror's indexes that a backfill dropped (`syncd.deferred_indexes`) and
    whose run is gone (killed before its backfill ended and built them); called at every job
    start, after the dead runs are closed. A failed build is logged, not raised: its rows stay
    and the next job start tries again. Returns the names built."""
    try:
        return await mirror_indexes.build_deferred_indexes(
            deps.pool, reason="the run that deferred them is gone")
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("mirror_indexes_not_built", error=f"{type(exc).__name__}: {exc}",
                    detail="syncd.deferred_indexes keeps them: the next job start builds them")
        return []


@asynccontextmanager
async def job_run(deps: Deps, job: str) -> AsyncIterator[RunStats]:
    """Record one run of `job`. The body's exception is recorded and re-raised; errors appended
    to `stats.errors` make the run `partial` (some work failed, the rest was stored)."""
    stats = RunStats(run_id=uuid.uuid4(), job=job)
    started = time.monotonic()
    status, error = "ok", None
    counting = RUN_REQUESTS.set(stats.tally)
    try:
        with structlog.contextvars.bound_contextvars(run_id=str(stats.run_id), job=job):
            async with deps.pool.acquire() as conn:
                closed = await store.close_dead_runs(conn)
            if closed.runs or closed.windows:
                log.warning("dead_runs_closed", runs=closed.runs, windows=closed.windows,
                            detail="runs whose process is gone (killed) closed as "
                                   "interrupted; their windows resume at the next read")
            await build_orphaned_indexes(deps)
            stats.listed_since = await deps.owner().open_run(stats.run_id, job)
            log.info("job_started")
            try:
                yield stats
                if stats.stopped is not None:
                    status, error = "interrupted", redact(
                        error_line([stats.stopped, *stats.errors]))[:4000]
                elif stats.errors:
                    status, error = "partial", redact(error_line(stats.errors))[:4000]
            except StoppedWaiting as exc:  # a shutdown ended a wait: as if cancelled by it
                status, error = "interrupted", f"{type(exc).__name__}: {exc}"
                raise
            except Exception as exc:  # also a bug's exception: recorded with its message
                status, error = "failed", redact(f"{type(exc).__name__}: {exc}")[:4000]
                raise
            except BaseException as exc:  # cancellation, deadline, shutdown
                # a cancellation's message says who stopped the run (SIGTERM, the grace)
                status, error = "interrupted", interruption(exc)
                raise
            finally:
                elapsed = time.monotonic() - started
                deps.metrics.job_duration.labels(job).observe(elapsed)
                if status in ("ok", "partial"):
                    deps.metrics.job_last_success.labels(job).set(time.time())
                else:
                    deps.metrics.job_failures.labels(job).inc()
                requests = stats.requests
                # Two tries: a statement cancelled mid-flight (deadline, shutdown) can leave a
                # pooled connection in a broken protocol state (asyncpg InternalClientError,
                # MagicStack/asyncpg#784); the pool drops it and the second try gets another one.
                for attempt in (1, 2):
                    try:
                        async with deps.pool.acquire() as conn:
                            await store.finish_run(
                                conn, stats.run_id, status=status, pages=stats.pages,
                                requests=requests, rows_upserted=stats.rows_upserted,
                                rows_rejected=stats.rows_rejected, error=error,
                                details=stats.details)
                        break
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                            asyncpg.InternalClientError) as exc:
                        log.warning("run_history_write_failed", attempt=attempt,
                                    error=f"{type(exc).__name__}: {exc}")
                await deps.owner().close_run(stats.run_id)
                log.info("job_finished", status=status, seconds=round(elapsed, 3),
                         pages=stats.pages, requests=requests, rows_upserted=stats.rows_upserted,
                         rows_rejected=stats.rows_rejected, rows_altered=stats.rows_altered,
                         error=error)
    finally:
        RUN_REQUESTS.reset(counting)
