"""Pure planning of `date_performed_between` windows for backfill and reconciliation.

Windows are inclusive on both ends (api-notes §14 Q2) and aligned to calendar months so that a
window keeps its identity (and its checkpoint) from one run to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

__all__ = ["Window", "month_windows", "parse_window"]


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
