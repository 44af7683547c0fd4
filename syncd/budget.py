"""One request budget per Kantata token, shared by every job of the process.

Kantata publishes no limits and no rate headers, only "retry after a small delay" on 429
(api-notes §10), so the budget is adaptive (AIMD). By default no ceiling is preset: requests
start as fast as `SYNCD_MAX_CONNECTIONS` lets them until Kantata first answers 429; that answer
sets the ceiling to the rate syncd was actually starting requests at (the rate Kantata refused)
and the rate to half of it. From then on, and from the start when `SYNCD_RATE_LIMIT_PER_MINUTE`
sets a ceiling, the rate halves on every 429 and climbs back by 5 % of the ceiling per 20
successes. A preset ceiling can only bind: a first backfill against a fast server was capped at
150 requests/s by the former 9,000/minute default (issue #16). Request starts are spaced by the
generic cell rate algorithm (`Gcra`), which makes up for an event loop that wakes late instead of
losing that time. Waiters are served by priority (write-back before reconciliation before pull),
then in arrival order.

`Aimd` and `Gcra` are the pure arithmetic; `RequestBudget` is the small asyncio driver around them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from syncd.models import Priority

__all__ = ["PRIORITY_ORDER", "Aimd", "Gcra", "RequestBudget"]

PRIORITY_ORDER: dict[Priority, int] = {"push": 0, "reconcile": 1, "pull": 2}
#: seconds a request may start ahead of its slot to make up for a late wake-up (`Gcra`)
TOLERANCE = 0.25
#: seconds of request starts over which the refused rate is measured at the first 429
OBSERVE_SECONDS = 10.0


@dataclass
class Aimd:
    """Additive-increase / multiplicative-decrease rate in requests per minute.

    `ceiling` None means none is known yet: `rate` is infinite (no pacing) until the first
    `on_throttle(observed)`, which sets the ceiling to `observed` (requests per minute actually
    started when Kantata refused one; at least `floor`) and halves from there. With a ceiling,
    `rate` stays within [`floor`, `ceiling`]: `on_throttle()` halves it; `on_success()` adds
    `step` (5 % of the ceiling) every `every` successes.
    """

    ceiling: float | None
    floor: float
    rate: float = 0.0
    every: int = 20
    _successes: int = 0

    def __post_init__(self) -> None:
        if self.ceiling is not None:
            self.floor = min(self.floor, self.ceiling)
        self.rate = self.rate or (self.ceiling or math.inf)

    def on_throttle(self, observed: float | None = None) -> float:
        """A 429: halve the rate; the first one without a ceiling learns it from `observed`
        (requests/minute; the floor when unknown)."""
        if self.ceiling is None:
            self.ceiling = max(self.floor, observed or self.floor)
            self.rate = self.ceiling
        self.rate = max(self.floor, self.rate / 2)
        self._successes = 0
        return self.rate

    def on_success(self) -> float:
        if self.ceiling is None:
            return self.rate
        self._successes += 1
        if self._successes >= self.every:
            self._successes = 0
            self.rate = min(self.ceiling, self.rate + self.ceiling * 0.05)
        return self.rate

    @property
    def interval(self) -> float:
        """Seconds between two request starts at the current rate (0.0: no pacing)."""
        return 60.0 / self.rate


@dataclass
class Gcra:
    """Generic cell rate algorithm (the virtual-scheduling form): starts are spaced `interval`
    seconds apart on average, and a start may come up to `tolerance` seconds before its slot.

    `tat` is the theoretical time (loop seconds) of the next slot. Strict spacing measured from
    each actual start (`tolerance = 0`) loses every late wake-up of a busy event loop: at 150
    requests/s a 2 ms delay per start costs a quarter of the rate. Here a start that comes late
    leaves the next slot where it was, so the long-run rate is the configured one; idle time is
    never banked beyond `tolerance`, so a burst is at most `1 + tolerance / interval` starts.
    """

    tolerance: float = TOLERANCE
    tat: float = float("-inf")

    def delay(self, now: float) -> float:
        """Seconds until a start is allowed at `now` (0.0 when it is allowed now)."""
        return max(0.0, self.tat - self.tolerance - now)

    def grant(self, now: float, interval: float) -> None:
        """Record a start at `now`; the next slot is `interval` seconds after this one's."""
        self.tat = max(self.tat, now) + interval


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    future: asyncio.Future[float] = field(compare=False)


class RequestBudget:
    """Paces request starts at the adaptive rate, serving higher priorities first.

    `await budget.acquire("push")` returns (the loop time of the start, seconds) when this
    caller may start one request. Cancellation while waiting is safe. `throttled(started)` and
    `succeeded(started)` feed the AIMD rate. Like TCP's one reduction per congestion event, a
    run of refusals lowers the rate once: a 429 halves it again only when a request started
    after the last decrease has succeeded since. Requests in flight together are refused
    together, and a server counting requests over a window refuses for a while after the burst
    that filled it, whatever the new pace; halving on each of those refusals would take the rate
    to the floor for one event.
    """

    def __init__(self, ceiling_per_minute: float | None = None,
                 floor_per_minute: float = 6.0) -> None:
        self.aimd = Aimd(ceiling=ceiling_per_minute, floor=floor_per_minute)
        self._starts: deque[float] = deque()  # loop times of the last OBSERVE_SECONDS' starts
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self.pacer = Gcra()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.throttles = 0
        self._decreased_at = float("-inf")
        self._success_since_decrease = True

    async def acquire(self, priority: Priority = "pull") -> float:
        """Wait for this caller's turn; returns the loop time of the start (seconds)."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Waiter(PRIORITY_ORDER[priority], next(self._seq), fut))
        self._ensure_dispatcher()
        self._wake.set()
        return await fut

    def throttled(self, started: float | None = None) -> None:
        """Kantata answered 429 to a request started at loop time `started` (None: unknown).
        Halves the rate unless this refusal belongs to the run the last decrease answered; the
        first decrease without a ceiling learns it."""
        self.throttles += 1
        if not self._success_since_decrease or (
                started is not None and started < self._decreased_at):
            return  # the same congestion event as the last decrease
        self.aimd.on_throttle(self.observed_per_minute())
        self._decreased_at = asyncio.get_running_loop().time()
        self._success_since_decrease = False

    def observed_per_minute(self) -> float | None:
        """Requests per minute started over the last `OBSERVE_SECONDS` (over the time since the
        first start when shorter, at least one second); None before any start."""
        if not self._starts:
            return None
        now = asyncio.get_running_loop().time()
        span = min(OBSERVE_SECONDS, max(1.0, now - self._starts[0]))
        return len(self._starts) * 60.0 / span

    def succeeded(self, started: float | None = None) -> None:
        """A request started at loop time `started` was answered without 429."""
        if started is None or started >= self._decreased_at:
            self._success_since_decrease = True
        self.aimd.on_success()

    @property
    def rate_per_minute(self) -> float:
        return self.aimd.rate

    def _ensure_dispatcher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._heap:
            waiter = self._heap[0]
            if waiter.future.done():  # cancelled while waiting
                heapq.heappop(self._heap)
                continue
            delay = self.pacer.delay(loop.time())
            if delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            now = loop.time()
            waiter.future.set_result(now)
            self.pacer.grant(now, self.aimd.interval)
            starts = self._starts
            starts.append(now)
            while starts[0] < now - OBSERVE_SECONDS:
                starts.popleft()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
