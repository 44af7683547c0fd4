"""APScheduler wiring of the daemon's periodic jobs (the only module that imports APScheduler).

Each `JobSpec` becomes an interval job on one `AsyncIOScheduler` with `max_instances=1`,
`coalesce=True` and `misfire_grace_time=None`. In APScheduler 3 a run time later than its
`misfire_grace_time` is dropped (EVENT_JOB_MISSED, "Run time of job ... was missed by"), and
`coalesce` only merges the due run times into their latest one; with no grace time the merged
run starts at once however late it is (issue #23: after a suspend the pull waited a whole
interval). A run that starts more than `misfire_grace_for(interval)` late is logged as
`job_run_late` with its scheduled time, lateness and how many runs it merged. Every run is
wrapped by `JobScheduler`:

- its own deadline (`asyncio.timeout`, shorter than the interval, except for a job whose
  interval is only a polling fallback), so one hung request is cancelled and the next run
  starts fresh;
- leader-only jobs return at once on a replica that is not the leader;
- after consecutive failures, scheduled runs are skipped with exponential back-off
  (`runs_to_skip`), so an outage is waited out instead of hammered;
- PostgreSQL connection errors become `DatabaseUnavailable` (a RetriableError);
- `wake(name)` asks for an immediate run (debounced ~100 ms); a wake that arrives while the
  job runs makes it run once more when it finishes, so no wake-up is lost.

Failures are re-raised to APScheduler, whose error listener logs them by error class
(RetriableError -> warning, FatalError -> error, anything else -> error with traceback); the
daemon never crashes because of a job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from syncd.errors import DatabaseUnavailable, FatalError, RetriableError, StoppedWaiting

__all__ = [
    "DB_UNAVAILABLE", "JobScheduler", "JobSpec", "RunDeadlineExceeded", "deadline_for",
    "misfire_grace_for", "runs_to_skip", "to_syncd_error",
]

log = structlog.get_logger(__name__)

DEADLINE_FRACTION = 0.9  # a run may use 90 % of its interval
BACKOFF_CAP = 300.0  # seconds: the longest pause between attempts during an outage
WAKE_DEBOUNCE = 0.1  # seconds: NOTIFY bursts (one per committed statement) become one run
MAX_WAKE_ROUNDS = 20  # re-runs in a row caused by wakes during a run, then back to the timer

# Errors that mean "PostgreSQL is not reachable right now" (refused, reset, restarting, too many
# connections, connection closed under us); they are waited out, never fatal.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
    # a pooled connection left mid-operation by a cancelled statement (asyncpg#784): the pool
    # drops it; the next run gets a healthy one
    asyncpg.InternalClientError,
)


class RunDeadlineExceeded(RetriableError):
    """A run exceeded its deadline and was cancelled; the next run starts fresh."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """One periodic job. `interval`, `deadline` and `first_delay` are seconds;
    `deadline` must be shorter than `interval` (ValueError otherwise), unless
    `may_outlast_interval`: for a job whose interval is only a polling fallback (push, which
    NOTIFY wakes), a run may take longer than the interval; the timer runs it overlaps are
    skipped (max_instances=1), so a long run only delays the next poll."""

    name: str
    func: Callable[[], Awaitable[object]]
    interval: float
    deadline: float
    leader_only: bool = False
    first_delay: float = 0.0
    may_outlast_interval: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.deadline or (self.deadline >= self.interval
                                     and not self.may_outlast_interval):
            raise ValueError(f"job {self.name}: deadline {self.deadline:g} s must be > 0 and "
                             f"shorter than the interval {self.interval:g} s")


def deadline_for(interval: float) -> float:
    """The deadline of one run of a job scheduled every `interval` seconds."""
    return interval * DEADLINE_FRACTION


def misfire_grace_for(interval: float) -> int:
    """Seconds a run may start late before it is logged as `job_run_late` (half the interval,
    at least 1); it runs anyway, once for all the run times it missed (e.g. while the host
    was suspended)."""
    return max(1, int(interval / 2))


def runs_to_skip(failures: int, interval: float, cap: float = BACKOFF_CAP) -> int:
    """How many scheduled runs to skip after `failures` consecutive failures: 0, 1, 3, 7, ...
    so the pause doubles, up to `cap` seconds (but at most 10 intervals, at least one)."""
    if failures <= 1:
        return 0
    longest = max(interval, min(cap, 10 * interval))
    max_skip = max(0, int(longest / interval) - 1)
    return min(2 ** min(failures - 1, 30) - 1, max_skip)


def to_syncd_error(exc: BaseException) -> BaseException:
    """Translate a database connection failure into DatabaseUnavailable; others unchanged."""
    if isinstance(exc, DB_UNAVAILABLE) and not isinstance(exc, RetriableError | FatalError):
        err = DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err
    return exc


@dataclass
class _JobState:
    failures: int = 0
    skip: int = 0
    running: bool = False
    wake_requested: bool = False
    force_next: bool = False
    wake_handle: asyncio.TimerHandle | None = None
    scheduled: datetime | None = None  # run time of the latest run submitted


class _HandledByListener(logging.Filter):
    """Drop APScheduler's own lines about errors, misfires and overlaps: the listener logs
    them with stable event names and without a traceback for expected errors."""

    PHRASES = ("raised an exception", "was missed by", "maximum number of running instances")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not any(p in msg for p in self.PHRASES)


def _install_log_filter() -> None:
    for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HandledByListener) for f in logger.filters):
            logger.addFilter(_HandledByListener())


class JobScheduler:
    """Runs `specs` on an AsyncIOScheduler (see the module docstring).

    `is_leader()` gates leader-only jobs; `stopping` (asyncio.Event) stops new runs;
    `on_alive()` is called when a run ends in time, successfully or with a retriable error
    (an outage being waited out), or when a run is skipped for back-off: the systemd watchdog
    is fed from it. A run cut by its deadline or ending in a FatalError does not call it.
    """

    def __init__(self, specs: list[JobSpec], *, is_leader: Callable[[], bool],
                 stopping: asyncio.Event, on_alive: Callable[[], None] = lambda: None) -> None:
        self.specs = {s.name: s for s in specs}
        self._state = {s.name: _JobState() for s in specs}
        self._is_leader = is_leader
        self._stopping = stopping
        self._on_alive = on_alive
        self._inflight: dict[asyncio.Task[Any], str] = {}
        self._aps = AsyncIOScheduler(timezone=UTC, job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": None})

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Add every job and start the scheduler (inside the running event loop)."""
        _install_log_filter()
        now = datetime.now(UTC)
        for s in self.specs.values():
            self._aps.add_job(
                self._run, IntervalTrigger(seconds=s.interval, timezone=UTC), args=[s.name],
                id=s.name, name=s.name, next_run_time=now + timedelta(seconds=s.first_delay),
                max_instances=1, coalesce=True, misfire_grace_time=None, replace_existing=True)
        self._aps.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED
                               | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_SUBMITTED)
        self._aps.start()
        log.info("scheduler_started", jobs={s.name: s.interval for s in self.specs.values()})

    def pause(self) -> None:
        """Start no new runs (runs in progress go on)."""
        for st in self._state.values():
            if st.wake_handle is not None:
                st.wake_handle.cancel()
                st.wake_handle = None
        if self._aps.running:
            self._aps.pause()

    def running_jobs(self) -> list[str]:
        """Names of the jobs running right now."""
        return sorted(set(self._inflight.values()))

    async def drain(self, timeout: float) -> list[str]:
        """Pause, then wait up to `timeout` seconds for runs in progress; return the names of
        those still running."""
        self.pause()
        tasks = set(self._inflight)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return self.running_jobs()

    async def cancel_running(self, timeout: float = 5.0, reason: str | None = None) -> None:
        """Cancel runs in progress and wait up to `timeout` s for them to unwind; `reason`
        is the cancellation's message (a run's `sync_runs.error` says it)."""
        tasks = set(self._inflight)
        for t in tasks:
            t.cancel(reason)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def shutdown(self) -> None:
        """Stop the scheduler (APScheduler applies it on the next loop iteration)."""
        if self._aps.running:
            self._aps.shutdown(wait=False)
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ wake-ups
    def wake(self, name: str, *, delay: float = 0.0) -> None:
        """Run job `name` now, or in `delay` seconds (debounced; bypasses back-off; no-op
        before `start()` and when stopping). A wake already planned sooner wins; a later one
        is replaced by this one."""
        st = self._state.get(name)
        if st is None or self._stopping.is_set() or not self._aps.running:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, WAKE_DEBOUNCE)
        if st.wake_handle is not None:
            if st.wake_handle.when() <= when:
                return
            st.wake_handle.cancel()
        st.wake_handle = loop.call_at(when, self._fire, name)

    def _fire(self, name: str) -> None:
        st = self._state[name]
        st.wake_handle = None
        if self._stopping.is_set() or not self._aps.running:
            return
        if st.running:
            st.wake_requested = True
            return
        st.force_next = True
        self._aps.modify_job(name, next_run_time=datetime.now(UTC))

    # ------------------------------------------------------------------ one run
    async def _run(self, name: str) -> str:
        spec, st = self.specs[name], self._state[name]
        forced, st.force_next = st.force_next, False
        if self._stopping.is_set():
            return "stopping"
        if spec.leader_only and not self._is_leader():
            return "not_leader"
        if st.skip > 0 and not forced:
            st.skip -= 1
            log.debug("job_backing_off", job=name, failures=st.failures, runs_to_skip=st.skip)
            self._on_alive()
            return "backing_off"
        task = asyncio.current_task()
        assert task is not None
        self._inflight[task] = name
        st.running = True
        try:
            for _ in range(MAX_WAKE_ROUNDS):
                st.wake_requested = False
                await self._once(spec, st)
                if not st.wake_requested or self._stopping.is_set():
                    break
            return "ran"
        finally:
            st.running = False
            self._inflight.pop(task, None)

    async def _once(self, spec: JobSpec, st: _JobState) -> None:
        deadline = asyncio.timeout(spec.deadline)
        try:
            async with deadline:
                await spec.func()
        except (asyncio.CancelledError, StoppedWaiting):
            raise  # shutdown: nothing to account
        except BaseException as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                err: BaseException = RunDeadlineExceeded(
                    f"{spec.name} run exceeded its {spec.deadline:g} s deadline and was "
                    "cancelled")
            else:
                err = to_syncd_error(exc)
            st.failures += 1
            st.skip = runs_to_skip(st.failures, spec.interval)
            if isinstance(err, RetriableError) and not isinstance(err, RunDeadlineExceeded):
                self._on_alive()
            if err is exc:
                raise
            raise err from exc
        if st.failures:
            log.info("job_recovered", job=spec.name, after_failures=st.failures)
        st.failures, st.skip = 0, 0
        self._on_alive()

    # ------------------------------------------------------------------ listener
    def _on_submitted(self, name: str, run_times: list[datetime]) -> None:
        """A run was handed to the executor for `run_times` (coalesced: the latest due one).
        Log it when it starts more than the grace late, with the first run time it stands
        for and how many timer runs it merged (counted from the previous run's time)."""
        st, spec = self._state.get(name), self.specs.get(name)
        if st is None or spec is None or not run_times:
            return
        latest, previous = run_times[-1], st.scheduled
        st.scheduled = latest
        first, merged = latest, 1
        if previous is not None and latest - previous > timedelta(seconds=spec.interval * 1.5):
            merged = int((latest - previous).total_seconds() / spec.interval + 0.5)
            first = previous + timedelta(seconds=spec.interval)
        late = (datetime.now(UTC) - first).total_seconds()
        if late > misfire_grace_for(spec.interval):
            log.warning("job_run_late", job=name, scheduled_at=first.isoformat(),
                        late_seconds=round(late, 3), runs_merged=merged,
                        note="missed run times are merged into this one run")

    def _on_event(self, event: JobEvent) -> None:
        job = event.job_id
        if event.code == EVENT_JOB_SUBMITTED:
            assert isinstance(event, JobSubmissionEvent)
            self._on_submitted(job, event.scheduled_run_times)
            return
        if event.code == EVENT_JOB_MISSED:  # not with misfire_grace_time=None; kept for safety
            at = getattr(event, "scheduled_run_time", None)
            log.warning("job_run_missed", job=job, scheduled_at=at and at.isoformat(),
                        late_seconds=at and round((datetime.now(UTC) - at).total_seconds(), 3))
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            st = self._state.get(job)
            times = getattr(event, "scheduled_run_times", None)
            if st is not None and times:
                st.scheduled = times[-1]  # skipped on purpose, not missed
            log.info("job_run_skipped_still_running", job=job)
            return
        assert isinstance(event, JobExecutionEvent)
        log_job_error(job, event.exception, event.traceback, self._state.get(job))


def log_job_error(job: str, exc: BaseException | None, tb: str | None,
                  st: _JobState | None = None) -> None:
    """Log a failed run by error class: RetriableError -> warning, FatalError -> error,
    cancellation -> warning, anything else (a bug) -> error with the traceback."""
    extra: dict[str, Any] = {}
    if st is not None:
        extra = {"consecutive_failures": st.failures, "runs_to_skip": st.skip}
    text = f"{type(exc).__name__}: {exc}" if exc is not None else None
    if isinstance(exc, RunDeadlineExceeded):
        log.warning("job_deadline_exceeded", job=job, error=text, **extra)
    elif isinstance(exc, StoppedWaiting):  # the daemon is shutting down: not a failure
        log.info("job_stopped", job=job, error=text)
    elif isinstance(exc, RetriableError):
        log.warning("job_failed_retriable", job=job, error_class=type(exc).__name__,
                    error=text, **extra)
    elif isinstance(exc, FatalError):
        log.error("job_failed_fatal", job=job, error_class=type(exc).__name__, error=text,
                  **extra)
    elif isinstance(exc, asyncio.CancelledError):
        log.warning("job_cancelled", job=job)
    else:
        log.error("job_crashed", job=job, error_class=type(exc).__name__, error=text,
                  traceback=tb, **extra)
