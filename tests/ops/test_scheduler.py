"""JobScheduler on a real AsyncIOScheduler in the test's event loop: job defaults, per-run
deadlines, logging by error class without stopping, back-off, leader gating, debounced wakes."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from syncd.errors import AuthError, DatabaseUnavailable, RetriableAPIError
from syncd.scheduler import JobScheduler, JobSpec, misfire_grace_for, runs_to_skip


def spec(name: str, func: Callable[[], Awaitable[object]], interval: float = 0.3,
         deadline: float = 0.2, **kw: object) -> JobSpec:
    return JobSpec(name=name, func=func, interval=interval, deadline=deadline, **kw)  # type: ignore[arg-type]


async def run_until(sched: JobScheduler, done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the scheduler until `done()` (polled; generous timeout for a loaded CI machine)."""
    sched.start()
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done() and loop.time() < end:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # let the run's own bookkeeping (logs, callbacks) finish
    finally:
        await sched.shutdown()


async def run_for(sched: JobScheduler, seconds: float) -> None:
    sched.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await sched.shutdown()


@pytest.mark.parametrize(("failures", "interval", "skip"), [
    (0, 30, 0), (1, 30, 0), (2, 30, 1), (3, 30, 3), (4, 30, 7), (5, 30, 9), (50, 30, 9),
    (3, 300, 0),  # already at the 5-minute cap: every run tries
    (4, 1, 7), (9, 1, 9),  # short intervals: at most 10 intervals apart
])
def test_runs_to_skip_doubles_up_to_the_cap(failures: int, interval: float, skip: int) -> None:
    assert runs_to_skip(failures, interval) == skip


def test_deadline_must_be_shorter_than_the_interval() -> None:
    async def f() -> None: ...
    with pytest.raises(ValueError, match="shorter than the interval"):
        spec("x", f, interval=1, deadline=1)
    assert misfire_grace_for(0.3) == 1 and misfire_grace_for(300) == 150


async def test_job_defaults_are_explicit() -> None:
    async def f() -> None: ...
    sched = JobScheduler([spec("a", f, interval=10, deadline=9)], is_leader=lambda: True,
                         stopping=asyncio.Event())
    sched.start()
    try:
        job = sched._aps.get_job("a")
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, None)
    finally:
        await sched.shutdown()


async def test_a_hung_run_is_cancelled_at_its_deadline_and_the_next_run_works() -> None:
    calls: list[str] = []
    alive: list[int] = []

    async def job() -> None:
        calls.append("start")
        if len(calls) == 1:
            await asyncio.sleep(3600)  # one hung request
        calls.append("done")

    sched = JobScheduler([spec("hung", job)], is_leader=lambda: True, stopping=asyncio.Event(),
                         on_alive=lambda: alive.append(1))
    with capture_logs() as logs:
        await run_until(sched, lambda: any(e["event"] == "job_recovered" for e in logs))
    assert calls[:3] == ["start", "start", "done"]
    assert [e["event"] for e in logs if e["log_level"] == "warning"][0] == "job_deadline_exceeded"
    assert any(e["event"] == "job_recovered" for e in logs)
    assert alive  # the successful run fed the watchdog; the hung one did not


async def test_errors_are_logged_by_class_and_the_scheduler_keeps_going() -> None:
    seen: dict[str, int] = {}

    def failing(name: str, exc: BaseException) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            seen[name] = seen.get(name, 0) + 1
            raise exc
        return job

    sched = JobScheduler([
        spec("kantata", failing("kantata", RetriableAPIError(503, "unavailable"))),
        spec("database", failing("database", ConnectionRefusedError(errno.ECONNREFUSED, "no"))),
        spec("auth", failing("auth", AuthError(401, "bad token"))),
        spec("bug", failing("bug", KeyError("oops"))),
    ], is_leader=lambda: True, stopping=asyncio.Event())
    with capture_logs() as logs:
        await run_for(sched, 0.7)
    by_job = {e["job"]: e for e in logs if e.get("job") and e["event"].startswith("job_")
              and e["event"] != "job_backing_off"}
    assert (by_job["kantata"]["event"], by_job["kantata"]["log_level"]) == (
        "job_failed_retriable", "warning")
    assert by_job["database"]["error_class"] == DatabaseUnavailable.__name__
    assert by_job["database"]["log_level"] == "warning"
    assert (by_job["auth"]["event"], by_job["auth"]["log_level"]) == ("job_failed_fatal", "error")
    assert (by_job["bug"]["event"], by_job["bug"]["log_level"]) == ("job_crashed", "error")
    assert "KeyError" in by_job["bug"]["traceback"] or "oops" in by_job["bug"]["error"]
    assert all(n >= 2 for n in seen.values()), seen  # every job ran again after failing


async def test_consecutive_failures_back_off() -> None:
    calls = 0

    async def job() -> None:
        nonlocal calls
        calls += 1
        raise RetriableAPIError(503, "down")

    sched = JobScheduler([spec("flaky", job, interval=0.1, deadline=0.09)],
                         is_leader=lambda: True, stopping=asyncio.Event())
    with capture_logs():
        await run_for(sched, 1.25)  # ~12 ticks: run, run, skip 1, run, skip 3, run, skip 7...
    assert 3 <= calls <= 5, calls


async def test_leader_only_jobs_wait_for_leadership() -> None:
    ran: list[str] = []
    leader = False

    async def pull() -> None:
        ran.append("pull")

    async def push() -> None:
        ran.append("push")

    sched = JobScheduler([spec("pull", pull, leader_only=True), spec("push", push)],
                         is_leader=lambda: leader, stopping=asyncio.Event())
    sched.start()
    try:
        await asyncio.sleep(0.4)
        assert "push" in ran and "pull" not in ran
        leader = True
        sched.wake("pull")
        await asyncio.sleep(0.15)
        assert "pull" in ran
    finally:
        await sched.shutdown()


async def test_wakes_are_debounced_and_never_lost() -> None:
    runs = 0
    gate = asyncio.Event()

    async def push() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            await gate.wait()

    sched = JobScheduler([spec("push", push, interval=60, deadline=5, first_delay=60)],
                         is_leader=lambda: True, stopping=asyncio.Event())
    sched.start()
    try:
        for _ in range(50):  # a burst of NOTIFYs
            sched.wake("push")
        await asyncio.sleep(0.3)
        assert runs == 1
        sched.wake("push")  # second run blocks on the gate
        await asyncio.sleep(0.2)
        assert runs == 2 and sched.running_jobs() == ["push"]
        sched.wake("push")  # arrives while running: one more run afterwards
        sched.wake("push")
        await asyncio.sleep(0.2)
        gate.set()
        await asyncio.sleep(0.1)
        assert runs == 3
    finally:
        await sched.shutdown()


async def test_a_timed_wake_runs_the_job_then_and_the_sooner_wake_wins() -> None:
    """The push is woken when its earliest pending row falls due (a lost answer is looked up
    seconds later, not at the next 60 s poll); a later wake never postpones a sooner one."""
    at: list[float] = []
    loop = asyncio.get_running_loop()

    async def push() -> None:
        at.append(loop.time())

    sched = JobScheduler([spec("push", push, interval=60, deadline=5, first_delay=60)],
                         is_leader=lambda: True, stopping=asyncio.Event())
    sched.start()
    try:
        t0 = loop.time()
        sched.wake("push", delay=0.6)
        sched.wake("push", delay=5.0)  # later: ignored
        sched.wake("push", delay=0.4)  # sooner: replaces the 0.6 s wake
        await asyncio.sleep(0.3)
        assert at == []
        await asyncio.sleep(0.6)
        assert len(at) == 1 and 0.35 <= at[0] - t0 < 0.6
    finally:
        await sched.shutdown()

async def test_drain_waits_for_runs_in_progress_then_reports_leftovers() -> None:
    stopping = asyncio.Event()
    finished: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.3)
        finished.append("slow")

    async def stuck() -> None:
        await asyncio.sleep(3600)

    sched = JobScheduler([spec("slow", slow, interval=10, deadline=5),
                          spec("stuck", stuck, interval=10, deadline=5)],
                         is_leader=lambda: True, stopping=stopping)
    sched.start()
    await asyncio.sleep(0.05)
    stopping.set()
    left = await sched.drain(1.0)
    assert finished == ["slow"] and left == ["stuck"]
    with capture_logs():
        await sched.cancel_running(1.0)
    assert sched.running_jobs() == []
    await sched.shutdown()


async def test_a_polling_fallback_job_may_outlast_its_interval_without_being_cut() -> None:
    """The push interval is only a polling fallback: its deadline leaves room for one full
    Kantata request even when that is longer than the interval (daemon.push_deadline)."""
    calls: list[str] = []

    async def slow() -> None:
        calls.append("start")
        await asyncio.sleep(0.5)  # longer than the 0.2 s interval, within the deadline
        calls.append("done")

    with pytest.raises(ValueError, match="shorter than the interval"):
        spec("push", slow, interval=0.2, deadline=0.8)
    sched = JobScheduler([spec("push", slow, interval=0.2, deadline=0.8,
                               may_outlast_interval=True)],
                         is_leader=lambda: True, stopping=asyncio.Event())
    with capture_logs() as logs:
        await run_until(sched, lambda: calls.count("done") >= 1)
    assert calls[:2] == ["start", "done"]  # never two at once, and not cut off
    assert not [e for e in logs if e["event"] == "job_deadline_exceeded"]
    assert any(e["event"] == "job_run_skipped_still_running" for e in logs)


def test_the_push_deadline_leaves_room_for_one_request_and_ends_before_the_lease() -> None:
    from syncd.daemon import Daemon, push_deadline
    from syncd.settings import Settings

    s = Settings(kantata_token="t")  # push every 30 s, requests up to 90 + 10 s, lease 300 s
    assert push_deadline(s) == 100
    specs = {x.name: x for x in Daemon(s)._job_specs(deps=None)}  # type: ignore[arg-type]
    assert (specs["push"].interval, specs["push"].deadline) == (30, 100)
    # pull: 90 % of its interval, but at least 10 min, so a first backfill is not cut every
    # 54 s at the 60 s default; the timer runs a long pull overlaps are skipped
    assert (specs["pull"].deadline, specs["pull"].may_outlast_interval) == (600, True)
    # a long interval keeps 90 % of it, but the run still ends before its leases expire
    assert push_deadline(Settings(kantata_token="t", push_interval=200)) == 180
    assert push_deadline(Settings(kantata_token="t", push_interval=600)) == 270
    # the lease bound of the settings guarantees one request always fits below the lease
    tight = Settings(kantata_token="t", push_interval=600, outbox_lease=101)
    assert push_deadline(tight) == 100 < tight.outbox_lease


async def test_a_run_missed_by_more_than_the_grace_is_merged_into_one_prompt_run() -> None:
    """Issue #23: APScheduler 3 drops a run time later than misfire_grace_time
    (EVENT_JOB_MISSED); the docs promise missed runs are merged into one. The loop is blocked
    (as by a suspended host) past several run times and the grace (1 s): exactly one run
    follows at once, logged as job_run_late with its scheduled time and lateness."""
    import time
    from datetime import UTC, datetime

    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def f() -> None:
        starts.append(loop.time())

    sched = JobScheduler([spec("p", f, interval=1.0, deadline=0.9)], is_leader=lambda: True,
                         stopping=asyncio.Event())
    with capture_logs() as logs:
        sched.start()
        try:
            while not starts:
                await asyncio.sleep(0.01)
            before = datetime.now(UTC)
            time.sleep(3.6)  # "suspended": run times at +1, +2, +3 s pass unserved
            woke = loop.time()
            while len(starts) < 2 and loop.time() - woke < 5:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the next run is due ~0.4 s after waking: not merged
        finally:
            await sched.shutdown()
    assert len(starts) >= 2 and starts[1] - woke < 0.3  # at once, not a whole interval later
    assert all(b - a > 0.3 for a, b in zip(starts[1:], starts[2:]))  # one run, not three
    late = [e for e in logs if e["event"] == "job_run_late"]
    assert len(late) == 1, logs
    assert late[0]["job"] == "p" and late[0]["runs_merged"] == 3
    scheduled = datetime.fromisoformat(late[0]["scheduled_at"])
    assert 0.5 < (scheduled - before).total_seconds() < 1.5
    assert 2.0 < late[0]["late_seconds"] < 3.5
    assert not [e for e in logs if e["event"] == "job_run_missed"]
