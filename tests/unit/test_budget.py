"""The request budget: its pure arithmetic (GCRA spacing, where a sliding window reopens) with
plain numbers, the asyncio driver's priority order, and how it learns a limit from a fake
sliding-log limiter (the simulator's kind, `syncd/simulator/faults.py`) on scaled-down windows:
the backfill-shaped load finishes near the best schedule the limiter allows, with few 429s, and
a restarted budget starts at the learned rate."""

from __future__ import annotations

import asyncio

import pytest

from collections import deque

from syncd import budget as budget_module
from syncd.budget import Gcra, Learned, RequestBudget, reopens_at


def starts(pacer: Gcra, n: int, interval: float, wake_late: float) -> list[float]:
    """Simulate a dispatcher that sleeps until each start is allowed and wakes `wake_late`
    seconds after that (a busy event loop). Returns the start times."""
    now, out = 0.0, []
    for _ in range(n):
        wait = pacer.delay(now)
        if wait > 0:
            now += wait + wake_late
        out.append(now)
        pacer.grant(now, interval)
    return out


def test_late_wake_ups_do_not_lower_the_long_run_rate() -> None:
    interval = 1 / 150  # 9,000 requests/minute
    times = starts(Gcra(tolerance=0.25), 3000, interval, wake_late=0.002)
    steady = times[100:]  # after the opening burst of 1 + 0.25 s / interval starts
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 149.5 <= rate <= 150.5
    # never ahead of the configured rate by more than the tolerance
    assert all(t >= i * interval - 0.25 for i, t in enumerate(times))


def test_strict_spacing_loses_the_late_time() -> None:
    """The behaviour Gcra replaces: with no tolerance every late wake-up is lost."""
    interval = 1 / 150
    times = starts(Gcra(tolerance=0.0), 3000, interval, wake_late=0.002)
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate < 120


def test_burst_is_bounded_by_the_tolerance() -> None:
    interval, tolerance = 0.1, 0.25
    pacer = Gcra(tolerance=tolerance)
    times = starts(pacer, 40, interval, wake_late=0.0)
    burst = sum(1 for t in times if t == 0.0)
    assert burst == 1 + int(tolerance / interval)  # 3 at once, then one per 0.1 s
    # in any window of w seconds at most 1 + (w + tolerance) / interval starts
    for i, t in enumerate(times):
        within = [u for u in times[i:] if u < t + 1.0]
        assert len(within) <= 1 + (1.0 + tolerance) / interval + 1e-9


def test_idle_time_is_not_banked_beyond_the_tolerance() -> None:
    pacer = Gcra(tolerance=0.25)
    pacer.grant(0.0, 0.1)
    assert pacer.delay(100.0) == 0.0  # long idle
    for _ in range(4):
        pacer.grant(100.0, 0.1)
    assert pacer.delay(100.0) == pytest.approx(0.15)  # 4 back-to-back, the 5th waits


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    budget = RequestBudget(60.0)  # one start per second after the first burst
    await budget.acquire("pull")  # the burst allowance: this one and none after it
    order: list[str] = []

    async def take(name: str, priority: str) -> None:
        await budget.acquire(priority)  # type: ignore[arg-type]
        order.append(name)

    budget.pacer.tat += 10.0  # hold the dispatcher while every waiter queues
    tasks = [asyncio.create_task(take(n, p)) for n, p in
             [("pull-1", "pull"), ("reconcile", "reconcile"), ("push", "push"),
              ("pull-2", "pull")]]
    await asyncio.sleep(0.01)
    budget.pacer.tat = float("-inf")
    budget.pacer.tolerance = 1e9  # release them all at once, in the dispatcher's order
    budget._wake.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
    await budget.close()
    assert order == ["push", "reconcile", "pull-1", "pull-2"]


async def test_after_a_shutdown_nobody_waits_for_a_turn() -> None:
    """The daemon's SIGTERM (`give_up_waiting_when`): requests waiting under the rate limit,
    and later ones that would wait, fail at once with the given error; a start allowed at
    once is still granted."""
    budget = RequestBudget(1.0)  # one start a minute after the first
    stopping = asyncio.Event()
    budget.give_up_waiting_when(stopping, lambda: RuntimeError("shutting down"))
    await budget.acquire("pull")
    waiting = asyncio.ensure_future(budget.acquire("pull"))  # its turn is ~60 s away
    await asyncio.sleep(0.05)
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping.set()
    with pytest.raises(RuntimeError, match="shutting down"):
        await asyncio.wait_for(waiting, 2.0)
    with pytest.raises(RuntimeError, match="shutting down"):
        await asyncio.wait_for(budget.acquire("push"), 2.0)  # would wait: not queued
    assert loop.time() - started < 1.0
    budget.pacer.tat = float("-inf")  # room again: a start allowed at once goes on
    assert await asyncio.wait_for(budget.acquire("pull"), 2.0) > started
    await budget.close()


def test_reopens_at_reads_a_refusal_as_a_limit_per_window() -> None:
    burst = [0.0, 0.1, 0.2, 0.3]  # four admitted, then a refusal at 0.4
    assert reopens_at(burst, 0.4, 1.0) == (4, 1.0)  # 4 per second: room when 0.0 leaves
    assert reopens_at(burst, 0.4, 0.25) == (2, 0.45)  # 2 per 0.25 s: room when 0.2 leaves
    assert reopens_at(burst, 5.0, 1.0) == (0, 5.0)  # nothing of ours inside: no explanation


class SlidingLog:
    """Admits a request when fewer than `limit` were admitted in the last `window` seconds
    (loop time), like the simulator's limiter."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window, self.admitted = limit, window, deque[float]()

    def admit(self, now: float) -> bool:
        while self.admitted and self.admitted[0] <= now - self.window:
            self.admitted.popleft()
        if len(self.admitted) >= self.limit:
            return False
        self.admitted.append(now)
        return True


async def load(budget: RequestBudget, server: SlidingLog, requests: int, *,
               workers: int = 8, latency: float = 0.01) -> tuple[float, int]:
    """`requests` admitted requests by `workers` at once (a backfill's shape), each retried
    after a 429 as the client does; returns (seconds to the last admitted one, 429s)."""
    loop = asyncio.get_running_loop()
    t0, done, refused, last = loop.time(), 0, 0, 0.0

    async def worker() -> None:
        nonlocal done, refused, last
        while done < requests:
            started = await budget.acquire("pull")
            if done >= requests:
                return
            await asyncio.sleep(latency / 2)
            ok = server.admit(loop.time())
            await asyncio.sleep(latency / 2)
            if ok:
                done += 1
                last = loop.time()
                budget.succeeded(started)
            else:
                refused += 1
                budget.throttled(started)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    while done < requests:
        await asyncio.sleep(0.01)
    for task in tasks:  # the rest wait for a start they no longer need
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return last - t0, refused


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> float:
    """Windows scaled down to 0.4 of the real candidates (0.4 s, 0.8 s, 2 s, …) with margins to
    match, so a test of several windows takes seconds; returns the scale."""
    scale = 0.4
    monkeypatch.setattr(budget_module, "CANDIDATE_WINDOWS",
                        tuple(w * scale for w in budget_module.CANDIDATE_WINDOWS))
    monkeypatch.setattr(budget_module, "margin", lambda window: 0.01 + 0.005 * window)
    monkeypatch.setattr(budget_module, "MIN_GAP", 0.05)
    return scale


def feasible(requests: int, limit: int, window: float) -> float:
    """The best a sliding log allows: request i + limit starts a window after request i."""
    return ((requests - 1) // limit) * window


@pytest.mark.parametrize(("limit", "window"), [(10, 0.4), (20, 0.8)])
async def test_learns_the_window_and_limit_from_the_first_429(limit: int, window: float,
                                                              fast: float) -> None:
    budget = RequestBudget(None)
    seconds, refused = await load(budget, SlidingLog(limit, window), 5 * limit)
    await budget.close()
    assert budget.learned is not None
    assert budget.learned.limit == limit and budget.learned.window == pytest.approx(window, 0.1)
    assert seconds <= 1.3 * feasible(5 * limit, limit, window), seconds
    # the burst's refusals in flight (≤ 8 workers), the probes of shorter windows, the trials
    assert refused <= 8 + 1 + 3, refused


async def test_a_window_between_the_candidates_is_narrowed_by_trials(fast: float) -> None:
    """A 0.6 s window is learned as 0.8 s (the next candidate), then trial starts halve the
    gap."""
    budget = RequestBudget(None)
    seconds, refused = await load(budget, SlidingLog(10, 0.6), 80)
    await budget.close()
    assert budget.learned is not None and budget.learned.limit == 10
    assert 0.55 <= budget.learned.window <= 0.7 and budget.learned.longer_than <= 0.6
    assert seconds <= 1.3 * feasible(80, 10, 0.6), seconds
    assert refused <= 14, refused


async def test_a_restarted_budget_starts_at_the_learned_rate(fast: float) -> None:
    """A restart within a window of the last request: the old requests may still fill
    Kantata's window, so the budget starts one every window/limit, with no burst to refuse."""
    server = SlidingLog(10, 0.4)
    first = RequestBudget(None)
    await load(first, server, 30)
    await first.close()
    assert first.learned == Learned(10, 0.4, first.learned.longer_than)
    again = RequestBudget(None)  # what a clean shutdown saved: the window's own starts
    again.restore(first.learned, quiet_seconds=0.0, recent=first.recent_start_ages())
    assert again.rate_per_minute == pytest.approx(1500)
    seconds, refused = await load(again, server, 30)
    await again.close()
    assert refused == 0 and again.probes == 0, (refused, again.probes)
    assert seconds <= 1.3 * 1.2
    crashed = RequestBudget(None)  # only the limit was saved: paced from the start
    crashed.restore(again.learned, quiet_seconds=0.0)
    seconds, refused = await load(crashed, server, 30)
    await crashed.close()
    assert refused <= 10 and crashed.probes == 0, (refused, crashed.probes)
    assert seconds <= 2 * 1.2  # up to a window of refusals before the pace holds
    rested = RequestBudget(None)  # quiet for longer than the window: a burst is fine
    rested.restore(first.learned, quiet_seconds=60.0)
    t0 = asyncio.get_running_loop().time()
    for _ in range(10):
        await rested.acquire("pull")
    assert asyncio.get_running_loop().time() - t0 < 0.1
    await rested.close()


async def test_a_lower_limit_is_followed_and_a_raised_one_found(
        monkeypatch: pytest.MonkeyPatch, fast: float) -> None:
    """Another client takes half the account's limit: the budget comes down to what Kantata
    admits (not to the floor). Later the limit is raised: upward probes find it."""
    monkeypatch.setattr(budget_module, "PROBE_AFTER_WINDOWS", 2)
    budget = RequestBudget(None)
    budget.restore(Learned(20, 0.2, 0.2), quiet_seconds=60.0)
    changes: list[Learned] = []
    budget.on_change = changes.append
    await load(budget, SlidingLog(10, 0.2), 60)
    assert budget.learned is not None and 7 <= budget.learned.limit <= 10, changes
    lowered = budget.learned.limit
    await load(budget, SlidingLog(30, 0.2), 150)
    await budget.close()
    assert budget.learned.limit > lowered + 3, changes
    assert changes and changes[-1] == budget.learned  # every change was reported to be saved


async def test_a_429_with_nothing_admitted_before_teaches_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before syncd's first request was admitted (others filled the window): the
    probe waits for the window, and once admitted nothing is held back."""
    monkeypatch.setattr(budget_module, "CANDIDATE_WINDOWS", (0.2, 0.5, 1.0))
    budget = RequestBudget(None)
    first = await budget.acquire("pull")
    budget.throttled(first)
    probe = await budget.acquire("pull")
    assert probe - first >= 0.2
    budget.succeeded(probe)
    assert budget.learned is None and budget.rate_per_minute == float("inf")
    await budget.close()


async def test_refusals_before_anything_is_admitted_wait_at_most_the_probe_cap() -> None:
    """Kantata refuses everything (others use the whole limit): the probes wait for the
    candidate windows, but never longer than `probe_cap` (SYNCD_BACKOFF_CAP), not an hour."""
    budget = RequestBudget(None, probe_cap=0.1)
    loop = asyncio.get_running_loop()
    started = await budget.acquire("pull")
    t0 = loop.time()
    for _ in range(len(budget_module.CANDIDATE_WINDOWS) + 3):
        budget.throttled(started)
        started = await budget.acquire("pull")
    assert loop.time() - t0 < (len(budget_module.CANDIDATE_WINDOWS) + 3) * 0.25
    assert budget.learned is None and budget.probes == len(budget_module.CANDIDATE_WINDOWS) + 3
    await budget.close()


async def test_a_learned_limit_is_forgotten_after_a_spell_without_429() -> None:
    """A limit learned from a temporary throttle capped syncd for ever (an idle daemon is never
    held back, so it was never raised): `forget_after` seconds after the last 429 it is
    dropped and requests start unpaced; a 429 before that confirms it and restarts the
    clock."""
    forgotten: list[bool] = []
    budget = RequestBudget(None, forget_after=0.3, on_forget=lambda: forgotten.append(True))
    budget.restore(Learned(2, 60.0), quiet_seconds=0.0)  # window full: next start in 30 s
    assert budget.forget_at() == pytest.approx(budget.throttled_at + 0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.sleep(0.2)
    budget.throttled(None)  # Kantata still limits: the clock starts again
    await asyncio.wait_for(budget.acquire("pull"), 5)
    assert 0.45 <= loop.time() - t0 < 2, "held until the limit was forgotten"
    assert budget.learned is None and forgotten == [True]
    assert budget.rate_per_minute == float("inf") and budget.forget_at() is None
    for _ in range(20):  # unpaced now
        await asyncio.wait_for(budget.acquire("pull"), 0.1)
    kept = RequestBudget(None, forget_after=None)  # SYNCD_RATE_LIMIT_FORGET_AFTER=0
    kept.restore(Learned(2, 60.0), quiet_seconds=60.0, throttled_at=0.0)
    assert kept.forget_at() is None
    await budget.close()
    await kept.close()
