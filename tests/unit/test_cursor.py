"""The incremental paging plan, with plain data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from syncd import cursor
from syncd.cursor import PullRequest

PDT = timezone(timedelta(hours=-7))
T0 = datetime(2026, 7, 1, 12, 0, 0, tzinfo=PDT)
S = timedelta(seconds=1)


def ts(*offsets: int) -> list[datetime]:
    return [T0 + timedelta(seconds=o) for o in offsets]


def test_first_request_subtracts_overlap_at_second_precision() -> None:
    req = cursor.first_request(T0 + timedelta(microseconds=900_000), timedelta(seconds=120))
    assert req == PullRequest(updated_after=T0 - timedelta(seconds=120))


OVERLAP = timedelta(seconds=120)


def test_first_request_starts_after_the_settled_point_when_it_is_later() -> None:
    assert cursor.first_request(T0, OVERLAP, settled=T0 - 300 * S) == PullRequest(
        updated_after=T0 - 120 * S)  # settled long ago: the overlap decides
    assert cursor.first_request(T0, OVERLAP, settled=T0 - 30 * S) == PullRequest(
        updated_after=T0 - 30 * S)
    assert cursor.first_request(T0, OVERLAP, settled=T0) == PullRequest(updated_after=T0)


def test_a_pass_settles_what_it_saw_at_least_overlap_after_it_changed() -> None:
    # the newest change is 10 minutes old when the pass starts: everything up to it is settled
    assert cursor.settled_through(T0, T0 + 600 * S, OVERLAP) == T0
    # a change 30 s before the pass may still have company committing late: settle up to
    # `overlap` before the pass only
    assert cursor.settled_through(T0, T0 + 30 * S, OVERLAP) == T0 - 90 * S
    # second precision, and never backwards
    assert cursor.settled_through(T0, T0 + timedelta(seconds=150, microseconds=5), OVERLAP,
                                  settled=T0 - 90 * S) == T0 + 0 * S
    assert cursor.settled_through(T0, T0 + 600 * S, OVERLAP, settled=T0) is None
    assert cursor.settled_through(T0, T0 + 60 * S, OVERLAP, settled=T0 - 30 * S) is None


def test_idle_cycles_after_settling_ask_only_for_what_is_new() -> None:
    """The daemon's steady state: the newest change is old, so after one pass the next one
    starts at the watermark itself and an empty page ends it (no re-read, no write)."""
    settled = None
    for minute in range(1, 5):
        req = cursor.first_request(T0, OVERLAP, settled)
        step = cursor.next_step(req, [] if settled else ts(-100, -5, 0), 200, 0 if settled else 3)
        assert step.next is None
        point = cursor.settled_through(T0, T0 + minute * 300 * S, OVERLAP, settled)
        settled = point or settled
        assert settled == T0
    assert cursor.first_request(T0, OVERLAP, settled) == PullRequest(updated_after=T0)


def test_short_page_ends_and_completes_through_newest() -> None:
    step = cursor.next_step(PullRequest(T0), ts(1, 2, 5), page_size=200, count=3)
    assert step.next is None
    assert step.complete_through == T0 + 5 * S


def test_empty_page_ends_without_moving_watermark() -> None:
    step = cursor.next_step(PullRequest(T0), [], page_size=200, count=0)
    assert step == cursor.Step(None, None)


def test_full_page_continues_from_one_second_before_newest() -> None:
    step = cursor.next_step(PullRequest(T0), ts(1, 1, 2, 3), page_size=4, count=10)
    assert step.next == PullRequest(updated_after=T0 + 2 * S)
    # entries at the newest second may be cut off by the page end: not complete yet
    assert step.complete_through == T0 + 2 * S


def test_full_page_in_one_second_pages_by_number_inside_that_second() -> None:
    step = cursor.next_step(PullRequest(T0), ts(7, 7, 7), page_size=3, count=50)
    # the keyset page is the second's page 1 if the second turns out to hold all 50
    assert step.next == PullRequest(updated_after=T0 + 6 * S, updated_before=T0 + 8 * S,
                                    page=2, stand_in_count=50)
    inside = step.next
    assert inside is not None
    # it holds 5: entries follow the second (or left it), so its page 1 is read after all
    s2 = cursor.next_step(inside, ts(7, 7, 7), page_size=3, count=5)
    assert s2.next == PullRequest(T0 + 6 * S, T0 + 8 * S, page=1)
    assert s2.complete_through is None
    s3 = cursor.next_step(s2.next, ts(7, 7, 7), page_size=3, count=5)  # type: ignore[arg-type]
    assert s3.next == PullRequest(T0 + 6 * S, T0 + 8 * S, page=2, second_count=5)
    s4 = cursor.next_step(s3.next, ts(7, 7), page_size=3, count=5)  # type: ignore[arg-type]
    assert s4.next == PullRequest(updated_after=T0 + 7 * S)
    assert s4.complete_through == T0 + 7 * S


def test_a_crowded_second_that_is_all_there_is_costs_ceil_n_over_page_size() -> None:
    """Issue #12: 360 entries written in one second, re-read by the next pass: 2 requests."""
    req = PullRequest(T0)
    step = cursor.next_step(req, ts(*[7] * 200), page_size=200, count=360)
    assert step.next == PullRequest(T0 + 6 * S, T0 + 8 * S, page=2, stand_in_count=360)
    last = cursor.next_step(step.next, ts(*[7] * 160), page_size=200, count=360)
    assert last == cursor.Step(None, T0 + 7 * S)
    # 400 in one second: page 2 is full, and the count says it is the last one
    step = cursor.next_step(req, ts(*[7] * 200), page_size=200, count=400)
    assert cursor.next_step(step.next, ts(*[7] * 200), page_size=200,  # type: ignore[arg-type]
                            count=400) == cursor.Step(None, T0 + 7 * S)
    # 500: page 3 follows, and after it nothing more is asked for
    s2 = cursor.next_step(PullRequest(T0), ts(*[7] * 200), page_size=200, count=500)
    s3 = cursor.next_step(s2.next, ts(*[7] * 200), page_size=200,  # type: ignore[arg-type]
                          count=500)
    assert s3.next == PullRequest(T0 + 6 * S, T0 + 8 * S, page=3, second_count=500,
                                  last_second=True)
    assert cursor.next_step(s3.next, ts(*[7] * 100), page_size=200,  # type: ignore[arg-type]
                            count=500) == cursor.Step(None, T0 + 7 * S)


def test_a_full_page_whose_count_says_it_is_all_ends_the_pass() -> None:
    assert cursor.next_step(PullRequest(T0), ts(1, 2, 3), page_size=3, count=3) == cursor.Step(
        None, T0 + 3 * S)
    inside = PullRequest(T0, T0 + 2 * S, page=2, second_count=6)
    assert cursor.next_step(inside, ts(1, 1, 1), page_size=3, count=6) == cursor.Step(
        PullRequest(updated_after=T0 + S), T0 + S)


def test_rows_leaving_a_crowded_second_restart_it() -> None:
    req = PullRequest(T0 + 6 * S, T0 + 8 * S, page=2, second_count=5)
    step = cursor.next_step(req, ts(7, 7), page_size=3, count=4)
    assert step.next == PullRequest(T0 + 6 * S, T0 + 8 * S, page=1, second_count=4, restarts=1)
    assert step.complete_through is None


def test_restarts_are_bounded() -> None:
    req = PullRequest(T0, T0 + 2 * S, page=2, second_count=5, restarts=3)
    with pytest.raises(ValueError, match="keep moving"):
        cursor.next_step(req, ts(1), page_size=3, count=4)


def test_unordered_page_is_refused() -> None:
    with pytest.raises(ValueError, match="not ordered"):
        cursor.next_step(PullRequest(T0), ts(3, 1), page_size=2, count=2)


def test_offsets_compare_as_instants() -> None:
    utc = datetime(2026, 7, 1, 19, 0, 1, tzinfo=timezone.utc)  # == T0 + 1s
    step = cursor.next_step(PullRequest(T0 - 5 * S), [T0, utc], page_size=2, count=9)
    assert step.next is not None
    assert step.next.updated_after == T0  # newest (19:00:01Z) minus one second


def test_server_ignoring_updated_after_is_refused() -> None:
    with pytest.raises(ValueError, match="did not advance"):
        cursor.next_step(PullRequest(T0 + 5 * S), ts(1, 2), page_size=2, count=9)


def test_an_inclusive_updated_after_still_advances() -> None:
    """Issue #23.3: a server whose updated_after includes the boundary second lists the one
    change at S-1 again with 200 at S; the crowded second S is paged by number, no stall."""
    req = PullRequest(T0 + 6 * S)  # asks for "after 6", gets 6 too
    step = cursor.next_step(req, ts(6, 7, 7, 7), page_size=4, count=300)
    assert step.next == PullRequest(updated_after=T0 + 6 * S, updated_before=T0 + 8 * S,
                                    page=2, stand_in_count=300)
    # and a short page of echoes only ends the pass where it was
    end = cursor.next_step(req, ts(6), page_size=4, count=1)
    assert end.next is None
    with pytest.raises(ValueError, match="boundary second"):
        cursor.next_step(req, ts(6, 6, 6, 6), page_size=4, count=9)


def test_a_crowded_second_with_changes_after_it_is_confirmed_by_page_1_alone() -> None:
    """Issue #23.15: the keyset page (3 at second 7, count 50) stands in for the second's
    page 1; page 2 says the second holds 5 (entries follow it), so page 1 is read once more:
    the same ids mean page 2 holds and the pass goes on after the second; other ids mean
    something moved, and page 2 is read again."""
    keyset = cursor.next_step(PullRequest(T0), ts(7, 7, 7), page_size=3, count=50,
                              ids=["1", "2", "3"])
    page2 = cursor.next_step(keyset.next, ts(7, 7), page_size=3, count=5,  # type: ignore[arg-type]
                             ids=["4", "5"])
    assert page2.next is not None and page2.next.page == 1 and page2.complete_through is None
    same = cursor.next_step(page2.next, ts(7, 7, 7), page_size=3, count=5, ids=["1", "2", "3"])
    assert same.next == PullRequest(updated_after=T0 + 7 * S)
    assert same.complete_through == T0 + 7 * S
    moved = cursor.next_step(page2.next, ts(7, 7, 7), page_size=3, count=5, ids=["1", "2", "4"])
    assert moved.next is not None and moved.next.page == 2 and moved.complete_through is None


def test_initial_watermark() -> None:
    wm = cursor.initial_watermark(T0 + timedelta(microseconds=5), timedelta(seconds=60))
    assert wm == T0 - 60 * S


def test_a_full_page_with_a_rejected_row_is_still_full() -> None:
    # 4 rows listed, one of them rejected: 3 timestamps, but more pages may follow
    step = cursor.next_step(PullRequest(T0), ts(1, 2, 3), page_size=4, count=10, listed=4)
    assert step.next == PullRequest(updated_after=T0 + 2 * S)
    inside = PullRequest(T0, updated_before=T0 + 2 * S, page=1, second_count=9)
    step = cursor.next_step(inside, ts(1, 1, 1), page_size=4, count=9, listed=4)
    assert step.next is not None and step.next.page == 2
