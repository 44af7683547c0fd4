"""Pure planning of `date_performed_between` windows for backfill and reconciliation.

Windows are inclusive on both ends (api-notes §14 Q2) and aligned to calendar months so that a
window keeps its identity (and its checkpoint) from one run to the next.

`halves` cuts a date range in two (reconciliation narrows a window by counts with it, issue
#24); `Narrowing` plans reading a range through page 1 only, for a server that does not honour
`page` (the contract declares `page` on GET /time_entries but not that it is honoured with every
filter, issue #27).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

__all__ = ["Fit", "Narrowing", "TooBig", "Window", "describe_too_big", "halves",
           "month_windows", "page_fit", "parse_window"]


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """Calendar dates `start`..`end`, both inclusive; `param` is Kantata's filter value."""

    start: date
    end: date

    @property
    def param(self) -> str:
        return f"{self.start.isoformat()}:{self.end.isoformat()}"

    def __str__(self) -> str:
        return self.param

    @property
    def days(self) -> int:
        """Calendar days in the range, both ends counted."""
        return (self.end - self.start).days + 1


def _add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    return date(d.year + y, m + 1, 1)


def month_windows(since: date, until: date, months: int = 1) -> list[Window]:
    """Windows of `months` calendar months covering `since`..`until` (inclusive), oldest first.

    The first and last windows are cut to `since` and `until`. Raises ValueError if
    `until < since` or `months < 1`.
    """
    if until < since:
        raise ValueError(f"until {until} is before since {since}")
    if months < 1:
        raise ValueError("months must be >= 1")
    out: list[Window] = []
    start = since
    while start <= until:
        nxt = _add_months(date(start.year, start.month, 1), months)
        end = min(nxt - timedelta(days=1), until)
        out.append(Window(start, end))
        start = nxt
    return out


def parse_window(param: str) -> Window:
    """Inverse of `Window.param`. Raises ValueError on a malformed value."""
    a, _, b = param.partition(":")
    return Window(date.fromisoformat(a), date.fromisoformat(b))


def halves(r: Window) -> tuple[Window, Window]:
    """`r` cut in two date ranges, the left one the longer by at most a day. Raises ValueError
    for a one-day range."""
    if r.days < 2:
        raise ValueError(f"{r.param} is one day")
    mid = r.start + timedelta(days=(r.days + 1) // 2 - 1)
    return Window(r.start, mid), Window(mid + timedelta(days=1), r.end)


# ---------------------------------------------------------------- narrowing (issue #27)
Fit = Literal["complete", "split", "too_big"]


def page_fit(r: Window, *, listed: int, count: int, page_size: int) -> Fit:
    """What page 1 of the range `r`, read alone, tells about reading `r` through page 1 only.

    `listed`: rows in the page's `results` (rejected records included); `count`: Kantata's
    `count` for `r` (negative: says nothing, the contract does not say it is non-negative);
    `page_size`: the size Kantata served (`meta.page_size`). 'complete': the page listed all of
    `r`, because it is not full (`listed < page_size`) or it lists as many rows as `count`;
    otherwise 'split' (halve `r`) or, for a single day, 'too_big' (page 1 cannot hold it)."""
    if listed < page_size or 0 <= count <= listed:
        return "complete"
    return "too_big" if r.days == 1 else "split"


@dataclass(frozen=True, slots=True)
class TooBig:
    """A day whose entries one page cannot hold: Kantata's `count` of it (negative: unknown),
    the rows its page 1 listed (and were stored), and the page size served."""

    day: date
    count: int
    listed: int
    page_size: int

    def describe(self) -> str:
        """One line for the run's error and the window's `last_error`."""
        many = f"{self.count} entries" if self.count >= 0 else "more entries than one page"
        return (f"day {self.day.isoformat()} has {many}, more than one page of "
                f"{self.page_size} holds, and Kantata does not honour `page`: only "
                f"{self.listed} of them were read")


def describe_too_big(days: Sequence[TooBig]) -> str:
    """One line for any number of days one page cannot hold (`TooBig`), its length bounded
    whatever their number: a single day as `TooBig.describe`, several as their number, first
    and last day and the fullest one. Raises ValueError for no days."""
    if not days:
        raise ValueError("no days")
    if len(days) == 1:
        return days[0].describe()
    first, last = min(d.day for d in days), max(d.day for d in days)
    fullest = max(days, key=lambda d: d.count)
    most = (f"; the fullest, {fullest.day.isoformat()}, has {fullest.count}"
            if fullest.count >= 0 else "")
    return (f"{len(days)} days ({first.isoformat()} .. {last.isoformat()}) have more entries "
            f"than one page of {days[0].page_size} holds{most}, and Kantata does not honour "
            f"`page`: only the first page of each was read "
            f"({sum(d.listed for d in days)} entries)")


@dataclass
class Narrowing:
    """Plan of reading the range `window` through page 1 only (issue #27): a server that
    ignores `page` answers every page number with page 1, so a range is read completely only
    when its page 1 holds all of it (`page_fit`). Ranges that do not are halved (`halves`)
    down to single days; a day that still does not fit is recorded in `too_big`.

    Use: `r = plan.next()` gives the next range to request (page 1, same filters otherwise;
    None: done), `plan.answer(r, listed=, count=, page_size=)` says what its page 1 held. A
    caller that has page 1 of `window` already answers it before the first `next()`.

    Counts save requests, as in reconciliation's narrowing by counts: once the left half of a
    range has answered, the right half's count is the range's minus the left's; a right half
    that holds nothing is not requested (`skipped`), one that holds more than a page and more
    than a day is halved without being requested. A negative count infers nothing. Ranges
    are answered oldest first, and the answered ranges (complete or too big) partition
    `window`. Requests: at most 2 × days (each range is asked for at most once, and halving
    ends at days); in practice a few per page of entries (a 125-entry month at page size 50:
    5 after its page 1)."""

    window: Window
    page_size: int
    too_big: list[TooBig] = field(default_factory=list)
    requests: int = 0
    skipped: int = 0
    #: ranges answered complete: how many there were
    complete_ranges: int = 0
    _stack: list[tuple[Window, int | None, Window | None]] = field(default_factory=list)
    _counts: dict[Window, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stack.append((self.window, None, None))

    @property
    def done(self) -> bool:
        """Nothing is left to request."""
        return not self._stack

    @property
    def complete(self) -> bool:
        """Done, and every range was read completely (no day too big)."""
        return self.done and not self.too_big

    def next(self) -> Window | None:
        """The next range to request page 1 of, oldest first; None when done."""
        while self._stack:
            r, parent, sibling = self._stack.pop()
            inferred = None
            if parent is not None and sibling is not None and sibling in self._counts:
                inferred = parent - self._counts[sibling]
            if inferred is not None and inferred >= 0:
                self._counts[r] = inferred
                if inferred == 0:
                    self.skipped += 1
                    continue
                if inferred > self.page_size and r.days > 1:
                    self._split(r, inferred)
                    continue
            self._stack.append((r, parent, sibling))
            return r
        return None

    def answer(self, r: Window, *, listed: int, count: int, page_size: int) -> Fit:
        """Record page 1 of `r` (see `page_fit` for the arguments); returns what it meant.
        Raises ValueError when `r` was not the range asked for."""
        if not self._stack or self._stack[-1][0] != r:
            raise ValueError(f"{r.param} was not asked for")
        self._stack.pop()
        self.requests += 1
        if page_size > 0:
            self.page_size = page_size
        fit = page_fit(r, listed=listed, count=count, page_size=self.page_size)
        if count >= 0:
            self._counts[r] = count
        if fit == "complete":
            self.complete_ranges += 1
        elif fit == "too_big":
            self.too_big.append(TooBig(r.start, count, listed, self.page_size))
        else:
            self._split(r, count if count >= 0 else None)
        return fit

    def _split(self, r: Window, count: int | None) -> None:
        left, right = halves(r)
        self._stack.append((right, count, left))
        self._stack.append((left, None, None))
