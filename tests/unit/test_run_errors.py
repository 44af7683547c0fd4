"""The run's error line says each error once (issue #27: one message repeated per window)."""

from __future__ import annotations

from syncd.runs import error_line

MSG = ("PagingError: window {w}, page 2 (request 2 of this read): lists the same 10 ids as "
       "page 1; the server is not paging (is `page` ignored?); read stopped")
WINDOWS = [f"2025-{m:02d}-01:2025-{m:02d}-28" for m in range(1, 12)]


def test_the_same_message_of_many_windows_is_said_once_with_their_number() -> None:
    errors = [f"{w}: {MSG.format(w=w)}" for w in WINDOWS]
    line = error_line(errors)
    assert line == ("11 windows (2025-01-01:2025-01-28 .. 2025-11-01:2025-11-28): "
                    + MSG.format(w="<window>"))
    assert line.count("is `page` ignored?") == 1


def test_different_messages_and_other_errors_stay_apart_in_order() -> None:
    errors = ["2025-01-01:2025-01-31: day 2025-01-07 has 450 entries",
              "incremental pass: HTTP 500",
              "2025-02-01:2025-02-28: day 2025-02-03 has 300 entries",
              "incremental pass: HTTP 500"]
    assert error_line(errors) == (
        "2025-01-01:2025-01-31: day 2025-01-07 has 450 entries; incremental pass: HTTP 500; "
        "2025-02-01:2025-02-28: day 2025-02-03 has 300 entries")
    one = f"{WINDOWS[0]}: {MSG.format(w=WINDOWS[0])}"
    assert error_line([one]) == one  # a single window keeps its own text
    assert error_line([]) == ""
