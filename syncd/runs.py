"""Shared plumbing of every job run: dependencies, run history rows, log context, metrics.

`Deps` is passed explicitly to every job (no globals). `job_run` opens a `syncd.sync_runs` row,
binds `run_id` and `job` to every log line of the run, counts the Kantata requests sent for the
run (`kantata.RUN_REQUESTS`, a context variable: jobs share one client), and closes the row with
the run's figures and error, whatever happens.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from syncd import store
from syncd.errors import redact
from syncd.kantata import RUN_REQUESTS, KantataClient, RequestTally
from syncd.metrics import Metrics
from syncd.pagination import PageSize, PagingTrust
from syncd.settings import Settings

__all__ = ["Deps", "RunStats", "error_line", "job_run"]

log = structlog.get_logger(__name__)


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

    @property
    def requests(self) -> int:
        """Kantata requests this run has sent so far (its own, whatever runs alongside)."""
        return self.tally.n


_WINDOW = re.compile(r"\d{4}-\d{2}-\d{2}:\d{4}-\d{2}-\d{2}")


def error_line(errors: list[str]) -> str:
    """The run's error line from its errors (`RunStats.errors`), each said once: errors of
    windows (`"<window>: <message>"`, the window as `Window.param`) whose message is the same
    once the window is taken out of it are folded into one item, `"22 windows (first ..
    last): <message>"` with the window in the message written `<window>`. Other errors are
    kept as they are; items in the order they first occur, joined by "; "."""
    groups: dict[str, list[str]] = {}
    for e in errors:
        head, sep, rest = e.partition(": ")
        if sep and _WINDOW.fullmatch(head):
            key = rest.replace(head, "<window>")
            groups.setdefault(key, []).append(head)
        else:
            groups.setdefault(e, [])
    out = []
    for msg, windows in groups.items():
        if len(windows) > 1:
            out.append(f"{len(windows)} windows ({min(windows)} .. {max(windows)}): {msg}")
        elif windows:
            out.append(f"{windows[0]}: {msg.replace('<window>', windows[0])}")
        else:
            out.append(msg)
    return "; ".join(out)


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
                await store.start_run(conn, stats.run_id, job)
            log.info("job_started")
            try:
                yield stats
                if stats.errors:
                    status, error = "partial", redact(error_line(stats.errors))[:4000]
            except Exception as exc:  # also a bug's exception: recorded with its message
                status, error = "failed", redact(f"{type(exc).__name__}: {exc}")[:4000]
                raise
            except BaseException as exc:  # cancellation, deadline, shutdown
                status, error = "interrupted", type(exc).__name__
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
                log.info("job_finished", status=status, seconds=round(elapsed, 3),
                         pages=stats.pages, requests=requests, rows_upserted=stats.rows_upserted,
                         rows_rejected=stats.rows_rejected, rows_altered=stats.rows_altered,
                         error=error)
    finally:
        RUN_REQUESTS.reset(counting)
