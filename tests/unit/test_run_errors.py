"""The run's error line says each error once (issue #27: one message repeated per window)."""

from __future__ import annotations

from datetime import date, timedelta

from syncd.runs import error_line
from syncd.windows import TooBig, describe_too_big

MSG = ("PagingError: window {w}, page 2 (request 2 of this read): lists the same 10 ids as "
       "page 1; the server is not paging (is `page` ignored?); read stopped")
WINDOWS = [f"2025-{m:02d}-01:2025-{m:02d}-28" for m in range(1, 12)]


def test_the_same_message_of_many_windows_is_said_once_with_their_number() -> None:
    errors = [f"{w}: {MSG.format(w=w)}" for w in WINDOWS]
    line = error_line(errors)
    assert line == ("11 windows (2025-01-01:2025-01-28 .. 2025-11-01:2025-11-28): "
                    + MSG.format(w="<window>"))
    assert line.count("is `page` ignored?") == 1


def test_messages_alike_but_for_numbers_and_dates_fold_and_others_stay_apart() -> None:
    errors = ["2025-01-01:2025-01-31: day 2025-01-07 has 450 entries",
              "incremental pass: HTTP 500",
              "2025-02-01:2025-02-28: day 2025-02-03 has 300 entries",
              "incremental pass: HTTP 500",
              "2025-03-01:2025-03-31: KantataUnreachable: no answer"]
    assert error_line(errors) == (
        "2 windows (2025-01-01:2025-01-31 .. 2025-02-01:2025-02-28), e.g. "
        "2025-01-01:2025-01-31: day 2025-01-07 has 450 entries; incremental pass: HTTP 500; "
        "2025-03-01:2025-03-31: KantataUnreachable: no answer")
    one = f"{WINDOWS[0]}: {MSG.format(w=WINDOWS[0])}"
    assert error_line([one]) == one  # a single window keeps its own text
    assert error_line([]) == ""


def test_a_line_grows_with_the_kinds_of_error_not_with_the_days_or_windows() -> None:
    """A new user's trial: 681 days too big for a page in 24 windows made an 88 KB line."""
    days = [TooBig(date(2025, 1, 1) + timedelta(days=i), 27 + i % 5, 20, 20) for i in range(681)]
    by_window: dict[str, list[TooBig]] = {}
    for d in days:
        by_window.setdefault(f"{d.day:%Y-%m}-01:{d.day:%Y-%m}-28", []).append(d)
    errors = [f"{w}: {describe_too_big(ds)}; window {w} not complete, its other days are stored"
              for w, ds in by_window.items()]
    line = error_line(errors)
    assert len(by_window) == 23 and line.startswith("23 windows (2025-01-01:2025-01-28 .. ")
    assert len(line) < 400, line
    assert "31 days (2025-01-01 .. 2025-01-31) have more entries than one page of 20 holds; " \
        "the fullest, 2025-01-05, has 31" in line


def test_one_day_too_big_is_described_as_before() -> None:
    d = TooBig(date(2025, 6, 10), 83, 50, 50)
    assert describe_too_big([d]) == d.describe()
    assert "day 2025-06-10 has 83 entries, more than one page of 50 holds" in d.describe()
