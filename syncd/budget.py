"""One request budget per Kantata token, shared by every job of the process.

Kantata publishes no limits and no rate headers, only "retry after a small delay" on 429
(api-notes §10), so the budget is adaptive (AIMD): it starts at the configured ceiling, halves on
every 429 and climbs back by 5 % of the ceiling per 20 successes. Request starts are spaced by the
generic cell rate algorithm (`Gcra`), which makes up for an event loop that wakes late instead of
losing that time. Waiters are served by priority (write-back before reconciliation before pull),
then in arrival order.

`Aimd` and `Gcra` are the pure arithmetic; `RequestBudget` is the small asyncio driver around them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from syncd.models import Priority

__all__ = ["PRIORITY_ORDER", "Aimd", "Gcra", "RequestBudget"]

PRIORITY_ORDER: dict[Priority, int] = {"push": 0, "reconcile": 1, "pull": 2}
#: seconds a request may start ahead of its slot to make up for a late wake-up (`Gcra`)
TOLERANCE = 0.25


@dataclass
class Aimd:
    """Additive-increase / multiplicative-decrease rate in requests per minute.

    `rate` stays within [`floor`, `ceiling`]. `on_throttle()` halves it; `on_success()` adds
    `step` (5 % of the ceiling) every `every` successes.
    """

    ceiling: float
    floor: float
    rate: float = 0.0
    every: int = 20
    _successes: int = 0

    def __post_init__(self) -> None:
        self.floor = min(self.floor, self.ceiling)
        self.rate = self.rate or self.ceiling

    def on_throttle(self) -> float:
        self.rate = max(self.floor, self.rate / 2)
        self._successes = 0
        return self.rate

    def on_success(self) -> float:
        self._successes += 1
        if self._successes >= self.every:
            self._successes = 0
            self.rate = min(self.ceiling, self.rate + self.ceiling * 0.05)
        return self.rate

    @property
    def interval(self) -> float:
        """Seconds between two request starts at the current rate."""
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
    future: asyncio.Future[None] = field(compare=False)


class RequestBudget:
    """Paces request starts at the adaptive rate, serving higher priorities first.

    `await budget.acquire("push")` returns when this caller may start one request. Cancellation
    while waiting is safe. `throttled()`/`succeeded()` feed the AIMD rate.
    """

    def __init__(self, ceiling_per_minute: float, floor_per_minute: float = 6.0) -> None:
        self.aimd = Aimd(ceiling=ceiling_per_minute, floor=floor_per_minute)
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self.pacer = Gcra()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.throttles = 0

    async def acquire(self, priority: Priority = "pull") -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Waiter(PRIORITY_ORDER[priority], next(self._seq), fut))
        self._ensure_dispatcher()
        self._wake.set()
        await fut

    def throttled(self) -> None:
        self.throttles += 1
        self.aimd.on_throttle()

    def succeeded(self) -> None:
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
            waiter.future.set_result(None)
            self.pacer.grant(loop.time(), self.aimd.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
