"""The seed data depends on the seed and the entry count: the same seed on another day (or at
another time of day) gives the same entries, their dates moved by whole days; with an anchor
day, the very same dates too (a trial user saw other entries the next day)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from syncd.simulator import SimConfig, Simulator

#: every field of an entry that is not a date (nor follows from one)
NOT_DATES = ("id", "workspace_id", "user_id", "story_id", "role_id", "time_in_minutes",
             "notes", "billable", "taxable", "rate_in_cents", "cost_rate_in_cents",
             "currency", "location")
DATES = ("date_performed", "created_at", "updated_at")


def sim_at(when: datetime, **kw: object) -> Simulator:
    return Simulator(SimConfig(entries=3000, seed=11, lock_date=None, clock=lambda: when,
                               timezone="UTC", **kw))  # type: ignore[arg-type]


def fields(sim: Simulator, names: tuple[str, ...]) -> list[tuple[object, ...]]:
    return [tuple(e.get(n) for n in names) for e in sim.list_entries()]


def test_the_same_seed_on_another_day_gives_the_same_entries_moved_by_whole_days() -> None:
    morning = sim_at(datetime(2026, 3, 10, 0, 5, tzinfo=UTC))
    evening = sim_at(datetime(2026, 3, 10, 23, 55, tzinfo=UTC))
    later = sim_at(datetime(2026, 5, 2, 13, 0, tzinfo=UTC))  # 53 days on
    assert fields(morning, NOT_DATES) == fields(later, NOT_DATES)
    assert morning.list_entries() == evening.list_entries()  # the time of day changes nothing
    days = timedelta(days=53)
    for a, b in zip(morning.list_entries(), later.list_entries(), strict=True):
        assert date.fromisoformat(b["date_performed"]) - date.fromisoformat(
            a["date_performed"]) == days
        for k in ("created_at", "updated_at"):
            assert datetime.fromisoformat(b[k]) - datetime.fromisoformat(a[k]) == days
    assert [e["approved"] for e in morning.list_entries()] == \
        [e["approved"] for e in later.list_entries()]
    assert {e["date_performed"] for e in later.list_entries()} <= {
        (date(2026, 5, 2) - timedelta(days=d)).isoformat() for d in range(1, 740)}


def test_an_anchor_gives_the_very_same_data_on_any_day() -> None:
    a = sim_at(datetime(2026, 3, 10, 9, 0, tzinfo=UTC), anchor=date(2026, 1, 31))
    b = sim_at(datetime(2027, 7, 1, 18, 0, tzinfo=UTC), anchor=date(2026, 1, 31))
    assert a.list_entries() == b.list_entries()
    assert max(e["date_performed"] for e in a.list_entries()) <= "2026-01-31"
    with pytest.raises(ValueError, match="after today"):
        sim_at(datetime(2026, 3, 10, tzinfo=UTC), anchor=date(2026, 3, 11))
