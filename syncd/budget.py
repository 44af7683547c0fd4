"""One request budget per Kantata token, shared by every job of the process.

Kantata publishes no limit, no window and no rate headers, only "retry after a small delay" on
429 (api-notes §10). So the budget learns the limit from what Kantata admits (issue #24):

- **Unknown** (the default at the first start of an installation): requests start as fast as
  `SYNCD_MAX_CONNECTIONS` lets them.
- **Probing**, from the first 429: every request start is held back except one probe at a
  time. The probes ask, for each candidate window c in `CANDIDATE_WINDOWS` (1 s, 2 s, 5 s, …,
  1 h), "is this a limit of L_c requests per c seconds?", where L_c is the number of requests
  Kantata admitted in the c seconds before the refusal: the probe starts when the oldest of
  them has left a sliding window of c seconds (`reopens_at`). The first probe admitted names
  the window; a refused one moves on to the next candidate. Against a burst of 60 that filled
  a 60-per-minute limit: probes at 1, 2, 5, 10 and 30 s are refused, the one at 60 s is
  admitted, then the budget paces at 60 per minute.
- **Learned** `Learned(limit, window)`: a client-side sliding log. A request may start when
  fewer than `limit` of the starts Kantata did not refuse lie in the last `window` seconds
  (plus `margin`, for latency jitter). A sliding log is the strictest common limiter: a client
  that keeps to one also keeps to a token bucket or a fixed window of the same numbers. A later
  429 sets the limit to what Kantata admitted in the window before it (other clients of the
  account share the limit); after `PROBE_AFTER_WINDOWS` windows at the limit without a 429 the
  limit is raised by 5 % (at least one request), and again after each window that the raise
  survives, so a raised limit is found.

A learned limit is forgotten after `forget_after` seconds (`SYNCD_RATE_LIMIT_FORGET_AFTER`, a
day by default) without a 429: a throttle Kantata applied for a while (an incident, another
client's burst) must not cap syncd for ever, and an idle daemon (one pull request a minute) is
never held back by the limit, so the raises above never happen for it. After that syncd starts
unpaced again and learns anew at the next 429, for a few refused requests and a window of
waiting.

The learned limit is kept in PostgreSQL by the caller (`on_change`, `on_forget`, `restore`;
see `syncd.budget_store`), so a restart starts at the learned rate instead of paying for the
lesson again. `SYNCD_RATE_LIMIT_PER_MINUTE` presets an operator ceiling that only binds: request
starts are spaced by the generic cell rate algorithm (`Gcra`) at that rate (a 0.25 s
tolerance makes up for an event loop that wakes late). Waiters are served by priority
(write-back before reconciliation before pull), then in arrival order.

`Gcra`, `Learned`, `reopens_at` are pure arithmetic; `RequestBudget` is the asyncio driver.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from syncd.models import Priority

__all__ = ["CANDIDATE_WINDOWS", "PRIORITY_ORDER", "Gcra", "Learned", "RequestBudget",
           "reopens_at"]

PRIORITY_ORDER: dict[Priority, int] = {"push": 0, "reconcile": 1, "pull": 2}
#: seconds a request may start ahead of its slot to make up for a late wake-up (`Gcra`)
TOLERANCE = 0.25
#: the windows (seconds) the probes after the first 429 try, shortest first: the lengths API
#: rate limiters commonly count in. A window between two of them is learned as the longer one
#: (a slower pace, raised later by the upward probes).
CANDIDATE_WINDOWS: tuple[float, ...] = (1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600)
#: starts remembered while no limit is known (bounded memory at any rate)
MAX_LOG = 20_000
#: windows at the learned limit without a 429 before the limit is raised to look for more
PROBE_AFTER_WINDOWS = 10
#: the raise: this fraction of the limit, at least one request
RAISE = 0.05
#: trial starts narrow the learned window until Kantata's lies within this fraction of it
#: (each refused trial is a 429: against a 60 s window two trials, 11 % of the rate at most)
REFINED = 0.125
#: ... and never below this many seconds
MIN_GAP = 0.5
#: the most a 429 lowers a learned limit by (a fraction; once per window)
MAX_CUT = 0.1
#: seconds a probe may go unanswered (no status: timeout, reset) before another is sent
PROBE_TIMEOUT = 30.0


def margin(window: float) -> float:
    """Seconds added to a learned `window` before a start leaves it: Kantata counts arrivals,
    syncd counts its own start times, and the two differ by the network's jitter."""
    return 0.05 + 0.005 * window


@dataclass(frozen=True, slots=True)
class Learned:
    """A learned sliding limit: at most `limit` requests (≥ 1) started in any `window` seconds
    (> 0); Kantata's window is known to be longer than `longer_than` seconds."""

    limit: int
    window: float
    #: Kantata refused a start that this window would have allowed: its window is longer
    #: (0.0: no such refusal seen). Between the two, trial starts halve the gap (`RequestBudget`).
    longer_than: float = 0.0

    @property
    def per_minute(self) -> float:
        return self.limit * 60.0 / self.window


def reopens_at(starts: Sequence[float], refused_at: float, window: float) -> tuple[int, float]:
    """For a refusal at `refused_at` read as "a limit of L per sliding `window` seconds":
    (L, the time the window next has room) where L is the number of `starts` (sorted, the
    admitted or still unanswered requests) in (`refused_at` − `window`, `refused_at`] and the
    room comes when the oldest of them leaves the window. (0, `refused_at`) when no start lies
    in the window (a window this short cannot explain the refusal)."""
    inside = [s for s in starts if refused_at - window < s <= refused_at]
    if not inside:
        return 0, refused_at
    return len(inside), inside[0] + window


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


@dataclass
class _Probe:
    """The probing state after a 429 with no limit known: `refused_at` (loop s) and the index
    of the candidate window being asked; `started` the loop time of the probe in flight."""

    refused_at: float
    index: int = 0
    started: float | None = None
    not_before: float = float("-inf")


class RequestBudget:
    """Paces request starts under what Kantata admits, serving higher priorities first.

    `await budget.acquire("push")` returns (the loop time of the start, seconds) when this
    caller may start one request. Cancellation while waiting is safe. The caller reports each
    request's outcome by its start time: `throttled(started)` for a 429, `succeeded(started)`
    for any other answer, `unanswered(started)` when none came. `ceiling_per_minute` is the
    operator's ceiling (None: none), `floor_per_minute` the lowest rate a learned limit is
    lowered to. `learned` is the current `Learned` limit (None: none known); `on_change` is
    called with it (synchronously, from the event loop) whenever it changes. `probe_cap`
    (seconds, `SYNCD_BACKOFF_CAP`) bounds the wait between probes while Kantata refuses before
    admitting any request of syncd's (the window is then full of other clients' requests and
    tells nothing), and after every candidate window was refused. `forget_after` (seconds,
    None: never) drops a learned limit when that long has passed since Kantata's last 429
    (`throttled_at`, wall-clock seconds since the epoch; None: no 429 seen or restored);
    `on_forget` is called then.
    """

    def __init__(self, ceiling_per_minute: float | None = None,
                 floor_per_minute: float = 6.0, *,
                 on_change: Callable[[Learned], None] | None = None,
                 probe_cap: float = 60.0, forget_after: float | None = None,
                 on_forget: Callable[[], None] | None = None) -> None:
        self.forget_after = forget_after
        self.on_forget = on_forget
        #: wall-clock time (time.time()) of Kantata's last 429 (None: none seen or restored)
        self.throttled_at: float | None = None
        self.ceiling = ceiling_per_minute
        self.floor = (floor_per_minute if ceiling_per_minute is None
                      else min(floor_per_minute, ceiling_per_minute))
        self.learned: Learned | None = None
        self.on_change = on_change
        self.probe_cap = probe_cap
        self._probe: _Probe | None = None
        #: loop times of the starts Kantata has not refused, oldest first
        self._starts: deque[float] = deque()
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self.pacer = Gcra()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.throttles = 0
        self.probes = 0
        self._bound_windows = 0  # windows in which the learned limit held a start back
        self._bound_counted = float("-inf")
        self._probe_after = PROBE_AFTER_WINDOWS
        self._lowered_at = float("-inf")
        #: (start, window) of the trial start in flight: started as if Kantata's window were
        #: `window`; its answer says whether it is (start NaN: chosen, not yet handed out)
        self._trial: tuple[float, float] | None = None
        self._restored_at = float("-inf")  # starts before it are assumed, not seen
        #: set by `give_up_waiting_when`'s event: makes the error of a start that would wait
        self._abandon: Callable[[], BaseException] | None = None
        self._watcher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state from outside
    def give_up_waiting_when(self, event: asyncio.Event,
                             error: Callable[[], BaseException]) -> None:
        """Once `event` is set (the daemon's shutdown), no caller waits for its turn any
        more: those waiting, and later ones whose start would wait, get `error()` raised
        from `acquire`; a start allowed at once is still granted (work in progress ends)."""
        async def watch() -> None:
            await event.wait()
            self._abandon = error
            self._wake.set()
            self._ensure_dispatcher()

        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(watch())

    def restore(self, learned: Learned, quiet_seconds: float | None,
                recent: Sequence[float] | None = None,
                throttled_at: float | None = None) -> None:
        """Start from a `learned` limit kept by an earlier process, whose last request started
        `quiet_seconds` ago (None: unknown) and whose last starts were `recent` (seconds ago
        each; None: unknown). Those still inside the window count as this process's own; when
        they are unknown and the last request may still be inside Kantata's window, the window
        is assumed full and requests start one every window/limit, at the learned rate,
        instead of a burst Kantata would refuse. `throttled_at`: the wall-clock time of the
        last 429 the limit was learned or confirmed by (None: unknown, taken as now), from which
        `forget_after` counts."""
        self.learned = learned
        self.throttled_at = time.time() if throttled_at is None else throttled_at
        self._probe = None
        self._starts.clear()
        now = asyncio.get_running_loop().time()
        self._restored_at = now
        span = learned.window + margin(learned.window)
        if recent is not None:
            self._starts.extend(sorted(now - age for age in recent if 0 <= age < span))
        elif quiet_seconds is None or quiet_seconds < span:
            step = learned.window / learned.limit
            self._starts.extend(now - learned.window + step * (i + 1)
                                for i in range(learned.limit))

    @property
    def rate_per_minute(self) -> float:
        """The rate syncd keeps to now (requests per minute): the operator ceiling or the
        learned limit, whichever is lower; infinite while neither is known. While probing, the
        rate of the candidate being asked."""
        rate = self.ceiling or math.inf
        if self.learned is not None:
            rate = min(rate, self.learned.per_minute)
        elif self._probe is not None:
            window = CANDIDATE_WINDOWS[min(self._probe.index, len(CANDIDATE_WINDOWS) - 1)]
            limit, _ = reopens_at(self._starts, self._probe.refused_at, window)
            rate = min(rate, max(limit, 1) * 60.0 / window)
        return rate

    def recent_start_ages(self) -> list[float]:
        """Seconds ago of the starts still inside the learned window (at most `limit` of
        them, oldest first; empty without a limit): what a restart needs to go on exactly."""
        learned = self.learned
        if learned is None:
            return []
        now = asyncio.get_running_loop().time()
        span = learned.window + margin(learned.window)
        return [now - s for s in list(self._starts)[-learned.limit:] if now - s < span]

    def last_start_age(self) -> float | None:
        """Seconds since the newest start Kantata did not refuse (None: none)."""
        if not self._starts:
            return None
        return asyncio.get_running_loop().time() - self._starts[-1]

    # ------------------------------------------------------------------ outcomes
    async def acquire(self, priority: Priority = "pull") -> float:
        """Wait for this caller's turn; returns the loop time of the start (seconds)."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Waiter(PRIORITY_ORDER[priority], next(self._seq), fut))
        self._ensure_dispatcher()
        self._wake.set()
        return await fut

    def throttled(self, started: float | None = None) -> None:
        """Kantata answered 429 to a request started at loop time `started` (None: unknown,
        taken as now). The first one starts the probes; with a limit learned, the limit
        becomes what Kantata admitted in the window before the refused start."""
        self.throttles += 1
        self.throttled_at = time.time()
        loop_now = asyncio.get_running_loop().time()
        at = loop_now if started is None else started
        trial = self._trial
        if self.learned is None or (trial is not None and started == trial[0]):
            # probing reads the admitted starts; a refused trial was beyond the limit anyway.
            # With a limit known, a refused start keeps its place in the log for a window:
            # forgetting it would free a slot at once and the next start would be refused too
            # while Kantata's window is full of requests syncd does not know about
            self._forget(started)
        if trial is not None and started == trial[0]:
            self._trial = None
            if self.learned is not None:  # Kantata's window is longer than the trial's
                self._set(Learned(self.learned.limit, self.learned.window, trial[1]))
            self._wake.set()
            return
        probe = self._probe
        if probe is not None:
            if started is not None and started == probe.started:  # this window is too short
                probe.index += 1
                probe.started = None
                probe.not_before = loop_now
            self._wake.set()
            return
        learned = self.learned
        if learned is None:
            self._probe = _Probe(refused_at=at)
            self._wake.set()
            return
        self._bound_windows, self._probe_after = 0, PROBE_AFTER_WINDOWS
        self._bound_counted = loop_now
        if loop_now - self._lowered_at < learned.window:
            return  # one decrease per window: refusals of starts in flight are the same event
        admitted = sum(1 for s in self._starts if at - learned.window - margin(
            learned.window) < s <= at)
        lowest = max(1, math.ceil(self.floor * learned.window / 60.0))
        limit = max(lowest, min(learned.limit - 1,
                                max(admitted, math.floor(learned.limit * (1 - MAX_CUT)))))
        if limit < learned.limit:
            # the window is taken as settled: a trial start reads "admitted early" as "the
            # window is shorter", which only holds while the limit is right
            self._lowered_at = loop_now
            self._set(Learned(limit, learned.window, learned.window))

    def succeeded(self, started: float | None = None) -> None:
        """A request started at loop time `started` was answered without 429 (counted by
        Kantata's limit). An admitted probe names the window."""
        trial = self._trial
        if trial is not None and started == trial[0]:
            self._trial = None
            learned = self.learned  # Kantata's window is no longer than the trial's
            if learned is not None and learned.longer_than < trial[1] < learned.window:
                self._set(Learned(learned.limit, trial[1], learned.longer_than))
            return
        probe = self._probe
        if probe is None or started is None or started != probe.started:
            return
        index = min(probe.index, len(CANDIDATE_WINDOWS) - 1)
        window = CANDIDATE_WINDOWS[index]
        limit, _ = reopens_at(self._starts, probe.refused_at, window)
        self._probe = None
        self._wake.set()
        if not limit:  # refused before syncd sent any: nothing learned, nothing held back
            return
        lowest = max(1, math.ceil(self.floor * window / 60.0))
        self._bound_windows, self._probe_after = 0, PROBE_AFTER_WINDOWS
        self._bound_counted = asyncio.get_running_loop().time()
        self._set(Learned(max(lowest, limit), window,
                          CANDIDATE_WINDOWS[index - 1] if index else 0.0))
        self._wake.set()

    def unanswered(self, started: float | None = None) -> None:
        """No answer came to a request started at `started` (timeout, reset): a probe is sent
        again."""
        probe = self._probe
        if probe is not None and started is not None and started == probe.started:
            probe.started = None
            self._wake.set()

    def _forget(self, started: float | None) -> None:
        if started is None:
            return
        starts = self._starts
        for i in range(len(starts) - 1, -1, -1):  # a refused start is recent: search from the end
            if starts[i] == started:
                del starts[i]
                return
            if starts[i] < started:
                return

    def _set(self, learned: Learned) -> None:
        self.learned = learned
        if self.on_change is not None:
            self.on_change(learned)

    def forget_at(self) -> float | None:
        """Wall-clock time (seconds since the epoch) at which the learned limit is forgotten
        if Kantata answers no 429 before; None when nothing is learned or it never is."""
        if self.learned is None or self.forget_after is None or self.throttled_at is None:
            return None
        return self.throttled_at + self.forget_after

    def _forget_if_due(self) -> None:
        """Drop the learned limit once `forget_after` has passed without a 429 (module
        docstring): syncd starts unpaced and learns again at the next 429."""
        due = self.forget_at()
        if due is None or time.time() < due or self._trial is not None:
            return
        self.learned = None
        self._bound_windows, self._probe_after = 0, PROBE_AFTER_WINDOWS
        if self.on_forget is not None:
            self.on_forget()

    # ------------------------------------------------------------------ dispatching
    def _delay(self, now: float) -> float:
        """Seconds until the next start is allowed at loop time `now` (or until the learned
        limit is forgotten, when that comes first: the dispatcher looks again then)."""
        self._forget_if_due()
        delay = self._paced_delay(now)
        due = self.forget_at()
        return delay if due is None else min(delay, max(0.0, due - time.time()))

    def _paced_delay(self, now: float) -> float:
        delay = self.pacer.delay(now) if self.ceiling else 0.0
        probe = self._probe
        if probe is not None:
            if probe.started is not None:  # one probe at a time
                return max(delay, probe.started + PROBE_TIMEOUT - now)
            while probe.index < len(CANDIDATE_WINDOWS):
                window = CANDIDATE_WINDOWS[probe.index]
                limit, room = reopens_at(self._starts, probe.refused_at, window)
                if not limit:  # refused before syncd sent any: others filled the window;
                    # ask again after the window, but never wait longer than `probe_cap`
                    window = min(window, self.probe_cap)
                    room = max(probe.refused_at, probe.not_before) + window
                room += margin(window)
                if room > probe.not_before:
                    return max(delay, room - now)
                probe.index += 1  # already refused
            return max(delay, probe.not_before + min(CANDIDATE_WINDOWS[-1], self.probe_cap)
                       - now)
        learned = self.learned
        if learned is not None and len(self._starts) >= learned.limit:
            oldest = self._starts[-learned.limit]
            room = oldest + learned.window + margin(learned.window)
            if room > now:
                self._held_back(now, learned)
                trial = self._trial_window(learned)
                if trial is not None and oldest > self._restored_at:
                    trial_room = oldest + trial + margin(trial)
                    elapsed = now - oldest
                    if trial_room <= now and delay <= 0 and elapsed < learned.window:
                        # the next start is the trial: admitted, Kantata's window is at most
                        # `elapsed`; refused, it is longer
                        self._trial = (float("nan"), elapsed)
                        return 0.0
                    if trial_room > now:
                        room = min(room, trial_room)
                return max(delay, room - now)
        return delay

    def _trial_window(self, learned: Learned) -> float | None:
        """The window a trial start asks about (halfway between what Kantata refused and what
        it admitted), None when they are close enough or a trial is in flight."""
        if self._trial is not None:
            return None
        gap = learned.window - learned.longer_than
        if gap <= max(MIN_GAP, REFINED * learned.window):
            return None
        return learned.longer_than + gap / 2

    def _held_back(self, now: float, learned: Learned) -> None:
        """The learned limit holds a start back: count the window; after enough of them
        without a 429, raise the limit by `RAISE`."""
        span = learned.window + margin(learned.window)
        if now < self._bound_counted + span:
            return
        self._bound_counted = now
        self._bound_windows += 1
        if self._bound_windows >= self._probe_after:
            self._bound_windows, self._probe_after = 0, 1
            self._set(Learned(learned.limit + max(1, round(learned.limit * RAISE)),
                              learned.window, learned.window))  # trials need the true limit

    def _record(self, now: float) -> None:
        starts = self._starts
        starts.append(now)
        keep = MAX_LOG if self.learned is None else 2 * self.learned.limit + 64
        while len(starts) > keep or starts[0] < now - CANDIDATE_WINDOWS[-1]:
            starts.popleft()

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
            delay = self._delay(loop.time())
            if delay > 0 and self._abandon is not None:  # shutting down: nobody waits
                while self._heap:
                    fut = heapq.heappop(self._heap).future
                    if not fut.done():
                        fut.set_exception(self._abandon())
                return
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
            if self.ceiling:
                self.pacer.grant(now, 60.0 / self.ceiling)
            if self._probe is not None:
                self._probe.started = now
                self.probes += 1
            if self._trial is not None and self._trial[0] != self._trial[0]:  # NaN: unsent
                self._trial = (now, self._trial[1])
                self.probes += 1
            self._record(now)

    async def close(self) -> None:
        """Stop the dispatcher and the shutdown watcher (`give_up_waiting_when`)."""
        for task in (self._watcher, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
