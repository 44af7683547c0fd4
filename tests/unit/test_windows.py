"""Backfill window planning."""

from __future__ import annotations

from datetime import date

import pytest

from syncd.windows import Window, month_windows, parse_window


def test_month_windows_cut_to_range_and_cover_every_day() -> None:
    ws = month_windows(date(2025, 1, 15), date(2025, 4, 3))
    assert ws == [Window(date(2025, 1, 15), date(2025, 1, 31)),
                  Window(date(2025, 2, 1), date(2025, 2, 28)),
                  Window(date(2025, 3, 1), date(2025, 3, 31)),
                  Window(date(2025, 4, 1), date(2025, 4, 3))]


def test_multi_month_windows_and_year_wrap() -> None:
    ws = month_windows(date(2024, 11, 1), date(2025, 4, 30), months=3)
    assert [w.param for w in ws] == ["2024-11-01:2025-01-31", "2025-02-01:2025-04-30"]


def test_leap_day_and_single_day() -> None:
    assert month_windows(date(2024, 2, 29), date(2024, 2, 29)) == [
        Window(date(2024, 2, 29), date(2024, 2, 29))]


def test_bad_ranges() -> None:
    with pytest.raises(ValueError):
        month_windows(date(2025, 2, 1), date(2025, 1, 1))
    with pytest.raises(ValueError):
        month_windows(date(2025, 1, 1), date(2025, 2, 1), months=0)


def test_param_round_trip() -> None:
    w = Window(date(2025, 1, 1), date(2025, 1, 31))
    assert parse_window(w.param) == w
