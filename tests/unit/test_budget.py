"""The request budget's pure arithmetic (AIMD rate, GCRA spacing) with plain numbers, and the
asyncio driver's priority order."""

from __future__ import annotations

import asyncio
import math

import pytest

from syncd.budget import Aimd, Gcra, RequestBudget


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


def test_aimd_halves_on_throttle_and_climbs_back_by_five_percent() -> None:
    aimd = Aimd(ceiling=6000, floor=6)
    assert aimd.rate == 6000
    assert aimd.on_throttle() == 3000
    for _ in range(19):
        aimd.on_success()
    assert aimd.rate == 3000
    assert aimd.on_success() == 3300
    for _ in range(20 * 20):
        aimd.on_success()
    assert aimd.rate == 6000  # never above the ceiling
    for _ in range(30):
        aimd.on_throttle()
    assert aimd.rate == 6  # never below the floor


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


def test_no_preset_ceiling_learns_it_from_the_rate_kantata_refused() -> None:
    """The default (issue #16): no pacing until the first 429, which sets the ceiling to the rate
    that was refused and halves from there; AIMD as with a preset ceiling afterwards."""
    aimd = Aimd(ceiling=None, floor=6)
    assert aimd.rate == math.inf and aimd.interval == 0.0
    for _ in range(100):
        assert aimd.on_success() == math.inf  # successes alone never invent a ceiling
    assert aimd.on_throttle(observed=12_000) == 6000 and aimd.ceiling == 12_000
    for _ in range(20):
        aimd.on_success()
    assert aimd.rate == 6600  # + 5 % of the learned ceiling
    assert aimd.on_throttle(observed=1) == 3300  # later 429s halve; the ceiling stays
    assert aimd.ceiling == 12_000
    assert Aimd(ceiling=None, floor=6).on_throttle(observed=None) == 6  # nothing observed


async def test_first_429_halves_the_rate_requests_were_started_at() -> None:
    budget = RequestBudget(None)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(300):  # unpaced: 300 starts as fast as the loop goes
        await budget.acquire("pull")
    assert loop.time() - t0 < 1.0
    budget.throttled()
    # 300 starts within the 1-second minimum span: 18,000/minute refused -> 9,000
    assert budget.aimd.ceiling == pytest.approx(18_000)
    assert budget.rate_per_minute == pytest.approx(9_000)
    await budget.close()


async def test_a_run_of_refusals_halves_the_rate_once() -> None:
    """Four requests in flight when Kantata starts refusing come back 429 together, and a
    retry sent before any success is refused by the same full window: one decrease, not five
    (rate / 2, not / 32). After a success, the next 429 is a new event and halves again."""
    budget = RequestBudget(6000)
    together = [await budget.acquire("pull") for _ in range(4)]
    for started in together:
        budget.throttled(started)
    assert budget.throttles == 4 and budget.rate_per_minute == 3000
    await asyncio.sleep(0.001)
    retry = await budget.acquire("pull")
    budget.throttled(retry)  # started after the decrease, but nothing has succeeded since
    assert budget.rate_per_minute == 3000
    budget.succeeded(together[0])  # a success from before the decrease tells nothing new
    budget.throttled(await budget.acquire("pull"))
    assert budget.rate_per_minute == 3000
    budget.succeeded(await budget.acquire("pull"))
    budget.throttled(await budget.acquire("pull"))
    assert budget.rate_per_minute == 1500
    await budget.close()
