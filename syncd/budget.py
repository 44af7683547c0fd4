"""One request budget per Kantata token, shared by every job of the process.

Kantata publishes no limits and no rate headers, only "retry after a small delay" on 429
(api-notes §10), so the budget is adaptive (AIMD): it starts at the configured ceiling, halves on
every 429 and climbs back by 5 % of the ceiling per 20 successes. Waiters are served by priority
(write-back before reconciliation before pull), then in arrival order.

`Aimd` is the pure rate arithmetic; `RequestBudget` is the small asyncio driver around it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from syncd.models import Priority

__all__ = ["PRIORITY_ORDER", "Aimd", "RequestBudget"]

PRIORITY_ORDER: dict[Priority, int] = {"push": 0, "reconcile": 1, "pull": 2}


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
        self._next_start = 0.0
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
            delay = self._next_start - loop.time()
            if delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            waiter.future.set_result(None)
            self._next_start = loop.time() + self.aimd.interval

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
