"""Pure reconciliation decisions: the window plan, the trust rule, schedule by age, verify diff."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from syncd.reconcile import (
    RowVersion,
    StaleRow,
    Summary,
    bucket_summaries,
    confirm_deletions,
    diff_window,
    due_windows,
    overdue_seconds,
    is_recent,
    plan_window,
    read_trusted,
    summarize,
)
from syncd.windows import Window, month_windows

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PACIFIC = timezone(timedelta(hours=-8))


def v(seconds: int = 0, minutes: int = 60, deleted: bool = False) -> RowVersion:
    return RowVersion(updated_at=T0 + timedelta(seconds=seconds), time_in_minutes=minutes,
                      deleted_at=T0 if deleted else None)


# ---------------------------------------------------------------- plan_window
def test_plan_sorts_every_id_into_exactly_one_bucket() -> None:
    remote = {1: T0, 2: T0 + timedelta(seconds=5), 3: T0, 4: T0}
    local = {2: v(0), 3: v(0), 4: v(0, deleted=True), 5: v(0), 6: v(0, deleted=True)}
    plan = plan_window(remote, {1, 2, 3, 4}, local, trusted=True)
    assert plan.missing == (1,)
    assert plan.stale == (2,)
    assert plan.revive == (4,)
    assert plan.upsert == (1, 2, 4)
    # 5 is live locally and gone remotely; 6 is already marked deleted: nothing to do
    assert plan.delete_candidates == (5,)
    assert plan.checked == 6


def test_newer_local_row_is_not_overwritten_and_equal_versions_are_left_alone() -> None:
    plan = plan_window({1: T0, 2: T0}, {1, 2}, {1: v(10), 2: v(0)}, trusted=True)
    assert plan.upsert == () and plan.delete_candidates == ()


def test_untrusted_read_never_yields_deletions_but_still_upserts() -> None:
    plan = plan_window({1: T0}, {1}, {2: v(0), 3: v(0)}, trusted=False)
    assert plan.delete_candidates == ()
    assert plan.missing == (1,)


def test_listed_but_undecodable_records_are_not_deletion_candidates() -> None:
    plan = plan_window({1: T0}, {1, 2}, {1: v(0), 2: v(0)}, trusted=True)
    assert plan.delete_candidates == ()


def test_offsets_are_compared_as_instants() -> None:
    same_instant = T0.astimezone(PACIFIC)
    plan = plan_window({1: same_instant}, {1}, {1: v(0)}, trusted=True)
    assert plan.upsert == ()


def test_empty_window_on_both_sides() -> None:
    assert plan_window({}, set(), {}, trusted=True).checked == 0


def test_confirm_deletions_keeps_what_the_probe_found() -> None:
    assert confirm_deletions([3, 1, 2], {2}) == (1, 3)
    assert confirm_deletions([], set()) == ()


# ---------------------------------------------------------------- trust rule
@pytest.mark.parametrize(("first", "last", "distinct", "trusted"), [
    (250, 250, 250, True),
    (0, 0, 0, True),           # empty window: one empty page
    (250, 249, 249, False),    # a row deleted mid-scan: a later row was skipped
    (250, 251, 250, False),    # a row inserted mid-scan
    (250, 250, 249, False),    # a row moved and listed twice / skipped
    (None, None, 0, False),    # nothing read
])
def test_read_trusted(first: int | None, last: int | None, distinct: int,
                      trusted: bool) -> None:
    assert read_trusted(first, last, distinct) is trusted


# ---------------------------------------------------------------- schedule by age
WINDOWS = month_windows(date(2025, 1, 1), date(2026, 3, 31))
TODAY = date(2026, 3, 10)  # recent: windows ending on or after 2026-01-09
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def due(last: dict[Window, datetime | None]) -> list[Window]:
    return due_windows(WINDOWS, last, now=NOW, today=TODAY, recent_days=60,
                       recent_interval=3600.0, old_interval=7 * 86400.0)


def test_recent_means_ending_within_recent_days_or_later() -> None:
    assert is_recent(Window(date(2026, 1, 1), date(2026, 1, 31)), TODAY, 60)
    assert is_recent(Window(date(2026, 1, 1), date(2026, 1, 9)), TODAY, 60)
    assert not is_recent(Window(date(2025, 12, 1), date(2025, 12, 31)), TODAY, 60)
    assert is_recent(Window(date(2026, 4, 1), date(2026, 4, 30)), TODAY, 0)


def test_everything_is_due_at_first_and_recent_windows_come_first_newest_first() -> None:
    todo = due({})
    assert len(todo) == len(WINDOWS)
    assert [w.start for w in todo[:3]] == [date(2026, 3, 1), date(2026, 2, 1),
                                           date(2026, 1, 1)]
    assert todo[3].start == date(2025, 1, 1)


def test_recent_windows_are_due_after_the_recent_interval_old_after_the_old_interval() -> None:
    assert due({w: NOW - timedelta(minutes=30) for w in WINDOWS}) == []
    todo = due({w: NOW - timedelta(hours=2) for w in WINDOWS})
    assert [w.start for w in todo] == [date(2026, 3, 1), date(2026, 2, 1), date(2026, 1, 1)]
    assert len(due({w: NOW - timedelta(days=8) for w in WINDOWS})) == len(WINDOWS)


def test_overdue_is_how_far_the_worst_window_is_past_its_due_time() -> None:
    """syncd_reconcile_overdue_seconds, which the SyncdReconciliationOverdue alert reads."""
    def overdue(last: dict[Window, datetime | None],
                first: dict[Window, datetime | None] | None = None) -> float:
        return overdue_seconds(WINDOWS, last, now=NOW, today=TODAY, recent_days=60,
                               recent_interval=3600.0, old_interval=7 * 86400.0,
                               first_read=first)
    assert overdue({}) == 0.0  # nothing read yet (backfill running): nothing to check
    # never reconciled (issue #23): due at once, so overdue since its backfill ended
    backfilled = {w: NOW - timedelta(minutes=90) for w in WINDOWS}
    assert overdue({}, backfilled) == 5400.0
    assert overdue({w: NOW for w in WINDOWS[1:]}, backfilled) == 5400.0
    assert overdue({w: NOW for w in WINDOWS}, backfilled) == 0.0
    assert overdue({w: NOW - timedelta(minutes=30) for w in WINDOWS}) == 0.0
    recent = WINDOWS[-1]
    assert overdue({w: NOW for w in WINDOWS} | {recent: NOW - timedelta(hours=3)}) == 7200.0
    old = WINDOWS[0]
    assert overdue({w: NOW for w in WINDOWS} | {old: NOW - timedelta(days=8)}) == 86400.0


def test_old_windows_least_recently_reconciled_first_and_failed_ones_are_due() -> None:
    old = [w for w in WINDOWS if w.end < date(2026, 1, 9)]
    # the later the window, the longer ago it was reconciled
    last: dict[Window, datetime | None] = {
        w: NOW - timedelta(days=8 + i) for i, w in enumerate(old)}
    last[old[0]] = None  # its last attempt failed: no success recorded
    last.update({w: NOW for w in WINDOWS if w not in old})
    assert due(last) == [old[0], *reversed(old[1:])]


# ---------------------------------------------------------------- verify
W = Window(date(2026, 1, 1), date(2026, 1, 31))


def test_summarize_and_equal_windows_have_no_diff() -> None:
    rows = {1: v(0, 30), 2: v(9, 45)}
    assert summarize(rows.values()) == Summary(2, 75, T0 + timedelta(seconds=9))
    assert summarize([]) == Summary(0, 0, None)
    remote = {i: RowVersion(updated_at=r.updated_at.astimezone(PACIFIC),
                            time_in_minutes=r.time_in_minutes) for i, r in rows.items()}
    assert diff_window(W, rows, remote) is None


def test_diff_names_missing_extra_and_stale_ids() -> None:
    local = {1: v(0, 30), 2: v(0, 45), 3: v(0, 10)}
    remote = {1: v(0, 30), 2: v(5, 50), 4: v(7, 20)}
    d = diff_window(W, local, remote)
    assert d is not None
    assert d.window == W
    assert d.missing_locally == (4,)
    assert d.extra_locally == (3,)
    assert d.stale == (StaleRow(id=2, mirror_updated_at=T0, kantata_updated_at=T0 +
                                timedelta(seconds=5), mirror_minutes=45, kantata_minutes=50),)
    assert d.mirror == Summary(3, 85, T0)
    assert d.kantata == Summary(3, 100, T0 + timedelta(seconds=7))


def test_listed_undecodable_ids_count_and_show_as_missing() -> None:
    d = diff_window(W, {1: v()}, {1: v()}, listed={1, 2})
    assert d is not None and d.missing_locally == (2,) and d.kantata.count == 2


def test_bucket_summaries_folds_days_into_windows() -> None:
    ws = month_windows(date(2026, 1, 1), date(2026, 2, 28))
    t1, t2 = T0, T0 + timedelta(days=1)
    out = bucket_summaries(ws, [(date(2026, 1, 3), 2, 90, t1), (date(2026, 1, 9), 1, 10, t2),
                                (date(2026, 2, 1), 1, 5, t1), (date(2025, 12, 31), 9, 9, t2)])
    assert out[ws[0]] == Summary(3, 100, t2)
    assert out[ws[1]] == Summary(1, 5, t1)


# ---------------------------------------------------------------- counting first (issue #24)
from syncd.reconcile import (  # noqa: E402
    CountState,
    count_offset,
    count_step,
    day_count,
    full_read_due,
    halves,
    rejects_by_day,
    window_check,
)

MARCH = Window(date(2025, 3, 1), date(2025, 3, 31))


def test_a_window_is_read_in_full_when_never_read_when_its_cycle_is_due_or_its_count_lies(
) -> None:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    month = 30 * 86400.0
    assert full_read_due(CountState(), now=now, interval=month)
    assert not full_read_due(CountState(last_full_read=now - timedelta(days=29)),
                             now=now, interval=month)
    assert full_read_due(CountState(last_full_read=now - timedelta(days=30)),
                         now=now, interval=month)
    assert full_read_due(CountState(last_full_read=now, count_trusted=False),
                         now=now, interval=month)


def test_one_backfills_windows_come_due_for_full_reads_spread_not_together() -> None:
    """Noticed in a trial: every window's first full read fell due in the same check, 30 days
    after the backfill (the default range: ~122 windows read in full at once)."""
    from syncd.reconcile import backfill_as_full_read
    from syncd.windows import month_windows

    done = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)
    month = 30 * 86400.0
    windows = month_windows(date(2016, 12, 1), date(2027, 1, 31), 1)
    assert len(windows) == 122
    due = [backfill_as_full_read(done, w, month) + timedelta(seconds=month) for w in windows]
    assert backfill_as_full_read(done, windows[0], month) == \
        backfill_as_full_read(done, windows[0], month)  # the same every time it is asked
    days = [(d - done).total_seconds() / 86400 for d in due]
    assert 15 <= min(days) and max(days) <= 30  # the second half of the interval
    per_day = Counter(int(d) for d in days)
    assert len(per_day) == 15 and max(per_day.values()) <= 11, per_day  # 122/15 = 8.1
    now = done + timedelta(days=22)
    assert 40 <= sum(full_read_due(CountState(last_full_read=d - timedelta(seconds=month)),
                                   now=now, interval=month) for d in due) <= 75


def test_rejects_are_dated_once_per_id_and_undatable_ones_left_out() -> None:
    rows = [("7", '{"id": "7", "date_performed": "2025-03-04", "time_in_minutes": -5}'),
            ("7", '{"id": "7", "date_performed": "2025-03-04", "notes": 42}'),  # 2nd reason
            ("8", '{"date_performed": "2025-03-04"}'),
            ("9", '{"date_performed": "2025-02-30"}'),  # not a date
            ("10", '{"date_performed": "2025-W10-1"}'),  # ISO week, not Kantata's form
            ("11", '{"date_performed": 20250304}'),
            ("12", "not json"), ("13", '"a string"'), (None, '{"date_performed": "2025-03-05"}'),
            ("14", '{"date_performed": "2025-04-01"}')]
    assert rejects_by_day(rows) == {date(2025, 3, 4): 2, date(2025, 4, 1): 1}


def test_the_expected_count_sums_live_rows_and_rejects_of_the_range_only() -> None:
    live = {date(2025, 2, 28): 5, date(2025, 3, 1): 3, date(2025, 3, 31): 4,
            date(2025, 4, 1): 9}
    rejects = {date(2025, 3, 15): 2, date(2025, 4, 2): 1}
    assert day_count(MARCH, live, rejects) == 9
    assert day_count(Window(date(2025, 3, 2), date(2025, 3, 30)), live, rejects) == 2


@pytest.mark.parametrize(("remote", "expected", "state", "out"), [
    (100, 100, CountState(), "match"),
    (99, 100, CountState(), "narrow"),      # one short: a deletion
    (101, 100, CountState(), "narrow"),     # one more: a create not pulled, or a new right
    (101, 100, CountState(offset=1), "match"),  # an undatable record Kantata lists
    (100, 100, CountState(offset=1), "full"),   # it went: the difference cannot be placed
    (-1, 100, CountState(), "full"),        # a count that says nothing
    (0, 0, CountState(), "match"),
])
def test_window_check(remote: int, expected: int, state: CountState, out: str) -> None:
    assert window_check(remote, expected, state) == out


def test_narrowing_reads_small_or_one_day_ranges_and_halves_big_ones() -> None:
    # 20 pages of 200, one entry gone: halving (about 6 counts) beats 20 pages
    assert count_step(MARCH, 3999, 4000, per_page=200) == "split"
    assert count_step(MARCH, 4000, 4000, per_page=200) == "match"
    assert count_step(MARCH, -3, 4000, per_page=200) == "nonsense"
    # two pages: read
    assert count_step(MARCH, 399, 400, per_page=200) == "read"
    # one day: read whatever its size
    day = Window(date(2025, 3, 4), date(2025, 3, 4))
    assert count_step(day, 9999, 10000, per_page=200) == "read"
    # many differences: halving would cost about as much as reading
    assert count_step(MARCH, 3980, 4000, per_page=200) == "read"
    assert count_step(MARCH, 3997, 4000, per_page=200) == "split"


def test_halves_cover_the_range_without_overlap() -> None:
    left, right = halves(MARCH)
    assert (left, right) == (Window(date(2025, 3, 1), date(2025, 3, 16)),
                             Window(date(2025, 3, 17), date(2025, 3, 31)))
    assert halves(Window(date(2025, 3, 1), date(2025, 3, 2))) == (
        Window(date(2025, 3, 1), date(2025, 3, 1)), Window(date(2025, 3, 2), date(2025, 3, 2)))
    with pytest.raises(ValueError):
        halves(Window(date(2025, 3, 1), date(2025, 3, 1)))


def test_the_offset_absorbs_only_what_the_read_could_not_decode() -> None:
    assert count_offset(100, 100, 0) == 0
    assert count_offset(101, 100, 1) == 1       # an undatable reject
    assert count_offset(103, 100, 1) == 1       # more than the read explains: not absorbed
    assert count_offset(99, 100, 0) == 0        # a live row Kantata did not list: never
