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


# ---------------------------------------------------------------- narrowing (issue #27)
from syncd.windows import Narrowing, TooBig, halves, page_fit  # noqa: E402

MARCH = Window(date(2025, 3, 1), date(2025, 3, 31))
DAY = Window(date(2025, 3, 7), date(2025, 3, 7))


def test_halves_cut_a_range_in_two_the_left_longer() -> None:
    assert halves(MARCH) == (Window(date(2025, 3, 1), date(2025, 3, 16)),
                             Window(date(2025, 3, 17), date(2025, 3, 31)))
    assert halves(Window(date(2025, 3, 1), date(2025, 3, 2))) == (
        Window(date(2025, 3, 1), date(2025, 3, 1)), Window(date(2025, 3, 2), date(2025, 3, 2)))
    with pytest.raises(ValueError, match="one day"):
        halves(DAY)


def test_page_fit_complete_only_when_page_1_holds_the_whole_range() -> None:
    assert page_fit(MARCH, listed=150, count=150, page_size=200) == "complete"
    assert page_fit(MARCH, listed=200, count=200, page_size=200) == "complete"  # exactly full
    assert page_fit(MARCH, listed=200, count=201, page_size=200) == "split"
    assert page_fit(DAY, listed=200, count=201, page_size=200) == "too_big"
    # a count that says nothing: only a page that is not full proves the range complete
    assert page_fit(MARCH, listed=199, count=-1, page_size=200) == "complete"
    assert page_fit(MARCH, listed=200, count=-1, page_size=200) == "split"
    # a count too high (inconsistent) never makes a full page look complete
    assert page_fit(MARCH, listed=200, count=207, page_size=200) == "split"
    assert page_fit(MARCH, listed=0, count=0, page_size=200) == "complete"


def _server(per_day: dict[date, int], *, count_bias: int = 0, negative: bool = False):
    """A server that ignores `page`: page 1 of a date range, as (listed, count)."""
    def page1(r: Window, size: int) -> tuple[int, int]:
        n = sum(v for d, v in per_day.items() if r.start <= d <= r.end)
        return min(n, size), (-1 if negative else n + (count_bias if n else 0))
    return page1


def _drive(plan: Narrowing, page1, size: int) -> list[Window]:
    asked = []
    while (r := plan.next()) is not None:
        asked.append(r)
        listed, count = page1(r, size)
        plan.answer(r, listed=listed, count=count, page_size=size)
        assert len(asked) <= 2 * plan.window.days, "narrowing must terminate"
    return asked


def _covered(plan_asked: list[Window], per_day: dict[date, int], size: int) -> int:
    """Entries the complete ranges listed (each range's page 1 holds all of it)."""
    return sum(min(size, sum(v for d, v in per_day.items() if r.start <= d <= r.end))
               for r in plan_asked)


def test_narrowing_reads_every_entry_through_page_1_only() -> None:
    per_day = {date(2025, 3, d): 30 + (d * 7) % 40 for d in range(1, 32)}  # 1,6xx entries
    plan = Narrowing(MARCH, 200)
    asked = _drive(plan, _server(per_day), 200)
    assert plan.complete and not plan.too_big
    leaves = [r for r in asked if _server(per_day)(r, 200)[0] == _server(per_day)(r, 200)[1]]
    # the complete ranges partition March: each day is in exactly one of them
    days = [d for r in leaves for d in per_day if r.start <= d <= r.end]
    assert sorted(days) == sorted(per_day)
    assert sum(per_day[d] for d in days) == sum(per_day.values())
    # every complete range fits one page; ranges are answered oldest first
    assert all(_server(per_day)(r, 200)[1] <= 200 for r in leaves)
    assert leaves == sorted(leaves)
    assert plan.requests == len(asked) <= 2 * -(-sum(per_day.values()) // 200) + 5


def test_narrowing_infers_the_right_half_and_skips_empty_ones() -> None:
    per_day = {date(2025, 3, 2): 150, date(2025, 3, 3): 150}  # 300 in the first days only
    plan = Narrowing(MARCH, 200)
    asked = _drive(plan, _server(per_day), 200)
    assert plan.complete
    # March → 1-16 (300, split by its own answer) → 1-8 (300) → 1-4 (300) → 1-2, 3-4;
    # the empty right halves (17-31, 9-16, 5-8) are never asked for
    assert [r.param for r in asked] == [
        "2025-03-01:2025-03-31", "2025-03-01:2025-03-16", "2025-03-01:2025-03-08",
        "2025-03-01:2025-03-04", "2025-03-01:2025-03-02", "2025-03-03:2025-03-04"]
    assert plan.skipped == 3


def test_a_right_half_known_too_big_is_halved_without_asking() -> None:
    per_day = {date(2025, 3, 1): 10, date(2025, 3, 20): 150, date(2025, 3, 25): 150}
    plan = Narrowing(MARCH, 200)
    asked = _drive(plan, _server(per_day), 200)
    assert plan.complete
    assert Window(date(2025, 3, 17), date(2025, 3, 31)) not in asked  # 310 - 10 = 300 > 200


def test_a_day_one_page_cannot_hold_is_reported_and_the_rest_is_read() -> None:
    per_day = {date(2025, 3, 5): 80, date(2025, 3, 7): 450, date(2025, 3, 30): 90}
    plan = Narrowing(MARCH, 200)
    asked = _drive(plan, _server(per_day), 200)
    assert not plan.complete and plan.done
    assert plan.too_big == [TooBig(date(2025, 3, 7), 450, 200, 200)]
    assert "day 2025-03-07 has 450 entries, more than one page of 200 holds" \
        in plan.too_big[0].describe()
    assert "only 200 of them were read" in plan.too_big[0].describe()
    others = [r for r in asked if not (r.start <= date(2025, 3, 7) <= r.end)]
    assert {d for r in others for d in per_day if r.start <= d <= r.end} == {
        date(2025, 3, 5), date(2025, 3, 30)}


def test_narrowing_without_a_usable_count_relies_on_pages_not_full() -> None:
    per_day = {date(2025, 3, d): 60 for d in range(1, 32)}
    for server in (_server(per_day, negative=True), _server(per_day, count_bias=7)):
        plan = Narrowing(MARCH, 200)
        asked = _drive(plan, server, 200)
        assert plan.complete
        leaves = [r for r in asked if server(r, 200)[0] < 200]
        assert sum(60 * r.days for r in leaves) == 60 * 31  # every entry listed once


def test_a_window_whose_page_1_is_known_is_not_asked_again() -> None:
    per_day = {date(2025, 3, d): 20 for d in range(1, 32)}
    plan = Narrowing(MARCH, 200)
    plan.answer(MARCH, listed=200, count=620, page_size=200)
    asked = _drive(plan, _server(per_day), 200)
    assert MARCH not in asked and plan.complete
    with pytest.raises(ValueError, match="not asked for"):
        Narrowing(MARCH, 200).answer(DAY, listed=1, count=1, page_size=200)


def test_the_served_page_size_sets_what_fits() -> None:
    per_day = {date(2025, 3, d): 40 for d in range(1, 32)}
    plan = Narrowing(MARCH, 5000)  # asked for 5,000, Kantata serves 200
    asked = _drive(plan, _server(per_day), 200)
    assert plan.complete and plan.page_size == 200
    assert all(_server(per_day)(r, 200)[1] <= 200 for r in asked[-3:])
