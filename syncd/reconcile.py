"""Pure decisions of reconciliation and verification (no IO): what a window's complete read
means for the mirror, when a read may be trusted, which windows are due, and how a window of the
mirror differs from Kantata.

Kantata has no tombstones (api-notes §12): an entry deleted remotely simply stops being listed.
Reconciliation re-reads `date_performed_between` windows and compares ids and `updated_at` with
the mirror rows of the same dates. Listing is plain LIMIT/OFFSET over a live query (api-notes
§3), so a row deleted or moved mid-scan shifts later pages and another row is skipped; a read is
therefore trusted only when Kantata's `count` did not change between the first and the last page
and exactly that many distinct ids were listed. Even a trusted read only yields deletion
*candidates*: the job confirms them with an `only=` probe (one GET per 200 candidates) before
marking anything deleted, because a delete plus an insert between two pages keeps the count
unchanged while still skipping a row.

**Counting first** (issue #24). Right after an incremental pass the mirror holds every create
and move Kantata made, so a window that lost no entry has as many live mirror rows (plus the
records syncd rejected, which Kantata counts and the mirror cannot hold) as Kantata's `count`
for the same filters. One request with `per_page=1` answers that count. Only a window whose
count differs is read, and first narrowed down by halving its date range (one count request per
step; the other half's count is the parent's minus this one's) to the day ranges that differ.
`count_step` decides each step. A full read of every window on a long cycle
(`full_read_due`) is the safety net for what counts cannot see (a deletion and a create not yet
pulled in the same window, caught by the next check in any case).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from syncd.windows import Window, halves  # halves: re-exported (narrowing by counts)

__all__ = [
    "CountState", "RowVersion", "Summary", "StaleRow", "WindowDiff", "WindowPlan",
    "backfill_as_full_read", "bucket_summaries", "confirm_deletions", "count_offset",
    "count_step", "day_count", "diff_window", "due_windows", "full_read_due", "halves",
    "is_recent", "overdue_seconds", "plan_window", "read_trusted", "rejects_by_day",
    "summarize", "window_check",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RowVersion:
    """What reconciliation compares of one entry: `updated_at` (aware instant), duration in
    minutes, and `deleted_at` (mirror rows only; None = live)."""

    updated_at: datetime
    time_in_minutes: int = 0
    deleted_at: datetime | None = None
    #: verify only: every typed column in `TimeEntry` order, `raw` left out (the mirror's
    #: row, or Kantata's entry); () when not compared
    columns: tuple[Any, ...] = ()


# ---------------------------------------------------------------- one window's plan
@dataclass(frozen=True, slots=True, kw_only=True)
class WindowPlan:
    """What to do with one window. Ids are sorted and pairwise disjoint.

    `missing`: listed remotely, no mirror row in the window. `stale`: the mirror row is older.
    `revive`: the mirror row is marked deleted but Kantata lists it. These three are upserted
    from the read. `delete_candidates`: live in the mirror, not listed remotely (empty unless the
    read was trusted); confirm with `confirm_deletions` before marking them deleted.
    `checked`: distinct ids compared (remote ∪ mirror).
    """

    missing: tuple[int, ...] = ()
    stale: tuple[int, ...] = ()
    revive: tuple[int, ...] = ()
    delete_candidates: tuple[int, ...] = ()
    checked: int = 0

    @property
    def upsert(self) -> tuple[int, ...]:
        """Every id whose entry from the read must be written."""
        return tuple(sorted((*self.missing, *self.stale, *self.revive)))


def plan_window(remote: Mapping[int, datetime], listed: Set[int],
                local: Mapping[int, RowVersion], *, trusted: bool) -> WindowPlan:
    """Plan one window from a read of Kantata and the mirror rows of the same dates.

    `remote`: id → `updated_at` of every entry decoded from the read; `listed`: every id in the
    pages' `results` (a superset of `remote`: rejected records are listed but not decoded, and
    they are not deleted); `local`: mirror rows whose `date_performed` is in the window, live or
    marked deleted. Deletion candidates come only from a `trusted` read.
    """
    missing, stale, revive = [], [], []
    for eid, updated in remote.items():
        row = local.get(eid)
        if row is None:
            missing.append(eid)
        elif row.deleted_at is not None:
            revive.append(eid)
        elif row.updated_at < updated:
            stale.append(eid)
    gone: list[int] = []
    if trusted:
        gone = [eid for eid, row in local.items() if row.deleted_at is None and eid not in listed]
    return WindowPlan(missing=tuple(sorted(missing)), stale=tuple(sorted(stale)),
                      revive=tuple(sorted(revive)), delete_candidates=tuple(sorted(gone)),
                      checked=len(set(listed) | set(local)))


def confirm_deletions(candidates: Sequence[int], found: Set[int]) -> tuple[int, ...]:
    """The candidates a by-id probe (`only=`, archived and other-account included) did not find:
    those are gone from Kantata. Found ones moved to other dates or were skipped by paging."""
    return tuple(sorted(i for i in candidates if i not in found))


def read_trusted(first_count: int | None, last_count: int | None, distinct_ids: int) -> bool:
    """A window read may be used to delete only if Kantata's `count` on the first page equals
    the count on the final page and the read listed exactly that many distinct ids."""
    return first_count is not None and first_count == last_count == distinct_ids


# ---------------------------------------------------------------- schedule by age
def is_recent(w: Window, today: date, recent_days: int) -> bool:
    """A window is recent when it ends within the last `recent_days` days (or in the future)."""
    return w.end >= today - timedelta(days=recent_days)


def overdue_seconds(windows: Sequence[Window], last_done: Mapping[Window, datetime | None], *,
                    now: datetime, today: date, recent_days: int, recent_interval: float,
                    old_interval: float,
                    first_read: Mapping[Window, datetime | None] | None = None) -> float:
    """Seconds the most overdue window is past its due time, 0.0 when none is.

    A reconciled window is due at its last success (`last_done`) plus its interval, as in
    `due_windows`. A window never reconciled is due at once (`due_windows` puts it first), so
    it is overdue since it was first read completely: `first_read` (its backfill's end).
    Windows known from neither (a backfill still running) are left out: nothing in the mirror
    to check yet. Issue #23: the gauge read 0 while 122 windows had never been reconciled."""
    worst = 0.0
    for w in windows:
        last = last_done.get(w)
        if last is None:
            since = (first_read or {}).get(w)
            if since is not None:
                worst = max(worst, (now - since).total_seconds())
            continue
        interval = recent_interval if is_recent(w, today, recent_days) else old_interval
        worst = max(worst, (now - last).total_seconds() - interval)
    return worst


def due_windows(windows: Sequence[Window], last_done: Mapping[Window, datetime | None], *,
                now: datetime, today: date, recent_days: int, recent_interval: float,
                old_interval: float) -> list[Window]:
    """The windows to reconcile at `now`, in the order to do them.

    A window is due when it was never reconciled successfully (absent or None in `last_done`)
    or its last success is at least `recent_interval` seconds old (recent windows, see
    `is_recent`) or `old_interval` seconds old (older windows). Order: recent windows newest
    first, then older windows least recently reconciled first.
    """
    recent: list[Window] = []
    old: list[tuple[datetime, Window]] = []
    for w in windows:
        fresh = is_recent(w, today, recent_days)
        interval = timedelta(seconds=recent_interval if fresh else old_interval)
        last = last_done.get(w)
        if last is not None and now - last < interval:
            continue
        if fresh:
            recent.append(w)
        else:
            old.append((last or datetime.min.replace(tzinfo=now.tzinfo), w))
    recent.sort(reverse=True)
    old.sort()
    return recent + [w for _, w in old]


# ---------------------------------------------------------------- counting first (issue #24)
@dataclass(frozen=True, slots=True, kw_only=True)
class CountState:
    """What syncd remembers of a window's last complete read (syncd.windows, migration 0012).

    `last_full_read`: when it was last read in full (aware; a backfill counts; None: never).
    `offset`: Kantata's `count` minus the mirror's expectation (`day_count`) right after that
    read, normally 0; not 0 when Kantata lists records syncd can neither store nor date (an
    undecodable id or date). `count_trusted`: Kantata's count agreed with what that read listed;
    False when it did not (a negative count, or one off the listing), and then every check of
    the window is a full read."""

    last_full_read: datetime | None = None
    offset: int = 0
    count_trusted: bool = True


def full_read_due(state: CountState, *, now: datetime, interval: float) -> bool:
    """The window must be read in full at `now`: never read in full, last read in full at least
    `interval` seconds ago (SYNCD_RECONCILE_FULL_INTERVAL), or Kantata's count could not vouch
    for it at that read."""
    last = state.last_full_read
    return (last is None or not state.count_trusted
            or (now - last).total_seconds() >= interval)


#: The golden ratio's fractional part: k·φ mod 1 for consecutive k spreads evenly over [0, 1).
_PHI = 0.6180339887498949


def backfill_as_full_read(done_at: datetime, w: Window, interval: float) -> datetime:
    """When the backfill of window `w`, finished at `done_at` (aware), counts as its last full
    read: up to half of `interval` (SYNCD_RECONCILE_FULL_INTERVAL, seconds) earlier, by a
    phase of the window's own (its first month's index times φ, mod 1). The windows of one
    backfill then come due for their first full read spread over the second half of the
    interval (30 days: days 15 to 30), then every `interval` after that, instead of all in
    one check (~122 windows of the default range, each read in full: a burst of requests
    against the customer's shared Kantata budget). Pure."""
    phase = ((w.start.year * 12 + w.start.month) * _PHI) % 1.0
    return done_at - timedelta(seconds=interval * 0.5 * phase)


def rejects_by_day(rows: Iterable[tuple[str | None, str]]) -> dict[date, int]:
    """Entry records syncd rejected, per `date_performed`, from `(entry_id, raw)` pairs of
    syncd.rejected_records whose entry has no live mirror row. Kantata counts them, the mirror
    cannot hold them. A record counts once per id, and only when its raw text is a JSON object
    with a valid `date_performed` (YYYY-MM-DD): an undatable one is left to `CountState.offset`.
    Side-object rejects (no entry id) are left out."""
    seen: set[str] = set()
    out: dict[date, int] = {}
    for entry_id, raw in rows:
        if not entry_id or entry_id in seen:
            continue
        d = _reject_date(raw)
        if d is None:
            continue
        seen.add(entry_id)
        out[d] = out.get(d, 0) + 1
    return out


def _reject_date(raw: str) -> date | None:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    value = doc.get("date_performed") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def day_count(r: Window, live: Mapping[date, int], rejects: Mapping[date, int]) -> int:
    """What Kantata's `count` for the dates of `r` should be if nothing was deleted: live mirror
    rows per day (`live`) plus known rejects per day (`rejects`), summed over `r`."""
    return sum(n for d, n in live.items() if r.start <= d <= r.end) \
        + sum(n for d, n in rejects.items() if r.start <= d <= r.end)


def count_offset(remote_count: int, expected: int, undecoded: int) -> int:
    """`CountState.offset` after a complete, count-trusted read: Kantata's count minus what the
    mirror then explains (`day_count`), as far as the read itself explains it: at most the
    `undecoded` records it listed (ids it could not decode or store), never below 0. A mirror
    row the read did not list (a row skipped while Kantata's data moved under the paging) is
    never absorbed: its window keeps differing until a read lists the truth."""
    return max(0, min(remote_count - expected, undecoded))


Check = Literal["match", "narrow", "full"]


def window_check(remote_count: int, expected: int, state: CountState) -> Check:
    """The outcome of a window's count request. `remote_count`: Kantata's `count` for the
    window; `expected`: `day_count` of the window.

    'match': Kantata's count minus the expectation is the window's known offset: no entry was
    lost (or a deletion and a create not yet pulled cancel out; the next check, after the
    create is pulled, differs). 'full': the count is negative (says nothing; contract TE
    `count` is an integer, not said to be non-negative), or the window has an offset (its
    unexplained records cannot be placed on a day, so halving cannot find the difference).
    'narrow': halve the range down to the days that differ (`count_step`)."""
    if remote_count < 0:
        return "full"
    if remote_count - expected == state.offset:
        return "match"
    return "full" if state.offset else "narrow"


Step = Literal["match", "read", "split", "nonsense"]


def count_step(r: Window, remote_count: int, expected: int, *, per_page: int) -> Step:
    """What to do with the date range `r` while narrowing: Kantata counts `remote_count`
    entries in it, the mirror expects `expected`.

    'match': equal. 'nonsense': a negative count (the caller reads the whole window).
    'read': read `r` in full, because it is one day, or reading it costs at most two pages, or
    the difference is so large that halving would cost as much as the read (|difference| ×
    (⌈log2 days⌉ + 1) ≥ pages: each differing entry costs about one count per halving and a
    page). 'split': halve it (`halves`), one count request for the left half."""
    if remote_count < 0:
        return "nonsense"
    if remote_count == expected:
        return "match"
    days = (r.end - r.start).days + 1
    pages = max(1, math.ceil(remote_count / per_page))
    diff = abs(remote_count - expected)
    if days == 1 or pages <= 2 or diff * (math.ceil(math.log2(days)) + 1) >= pages:
        return "read"
    return "split"


# ---------------------------------------------------------------- verify
@dataclass(frozen=True, slots=True)
class Summary:
    """Aggregate of one window's live entries: count, sum of `time_in_minutes`, max
    `updated_at` (None when empty)."""

    count: int = 0
    minutes: int = 0
    max_updated_at: datetime | None = None
    #: entries listed whose record could not be decoded: counted, their minutes unknown
    unreadable: int = 0


def summarize(rows: Iterable[RowVersion], count: int | None = None) -> Summary:
    """Summary of `rows`; `count` overrides the row count (Kantata's listed ids may include
    records that could not be decoded: those are `unreadable`, their minutes not summed)."""
    n, minutes, newest = 0, 0, None
    for r in rows:
        n += 1
        minutes += r.time_in_minutes
        newest = r.updated_at if newest is None or r.updated_at > newest else newest
    total = n if count is None else count
    return Summary(total, minutes, newest, unreadable=max(0, total - n))


def bucket_summaries(windows: Sequence[Window],
                     per_date: Iterable[tuple[date, int, int, datetime | None]]
                     ) -> dict[Window, Summary]:
    """Fold per-date aggregates `(date_performed, count, minutes, max_updated_at)` into
    per-window summaries. Dates outside every window are ignored; windows may not overlap."""
    out = {w: Summary() for w in windows}
    ordered = sorted(windows)
    for d, n, minutes, newest in per_date:
        w = next((w for w in ordered if w.start <= d <= w.end), None)
        if w is None:
            continue
        s = out[w]
        top = s.max_updated_at
        if newest is not None and (top is None or newest > top):
            top = newest
        out[w] = Summary(s.count + n, s.minutes + minutes, top)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleRow:
    """An entry present on both sides whose version or duration differs."""

    id: int
    mirror_updated_at: datetime
    kantata_updated_at: datetime
    mirror_minutes: int
    kantata_minutes: int
    #: the columns whose values differ (verify compares every typed column)
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowDiff:
    """How one window of the mirror differs from Kantata. Id tuples are sorted."""

    window: Window
    mirror: Summary
    kantata: Summary
    missing_locally: tuple[int, ...] = ()
    extra_locally: tuple[int, ...] = ()
    stale: tuple[StaleRow, ...] = ()


#: The typed columns `RowVersion.columns` holds, in order (TimeEntry's fields but `raw`).
COMPARED_COLUMNS = ("id", "workspace_id", "user_id", "story_id", "role_id", "date_performed",
                    "time_in_minutes", "billable", "notes", "rate_in_cents", "cost_rate_in_cents",
                    "currency", "currency_symbol", "currency_base_unit", "approved",
                    "is_invoiced", "taxable", "location", "created_at", "updated_at")


def _differing(a: RowVersion, b: RowVersion) -> tuple[str, ...]:
    if not a.columns or not b.columns:
        return ()
    return tuple(c for c, x, y in zip(COMPARED_COLUMNS, a.columns, b.columns, strict=True)
                 if x != y)


def diff_window(w: Window, local: Mapping[int, RowVersion], remote: Mapping[int, RowVersion],
                listed: Set[int] | None = None) -> WindowDiff | None:
    """Compare the live mirror rows of `w` with a complete read of Kantata; None when equal.

    `local`: live mirror rows (rows marked deleted must be left out); `remote`: decoded entries;
    `listed`: every id Kantata listed (default: `remote`'s keys). The summaries are compared
    first; ids only when they differ.
    """
    listed = set(remote) if listed is None else set(listed)
    mine = summarize(local.values())
    theirs = summarize(remote.values(), count=len(listed))
    stale = tuple(
        StaleRow(id=i, mirror_updated_at=local[i].updated_at,
                 kantata_updated_at=remote[i].updated_at,
                 mirror_minutes=local[i].time_in_minutes,
                 kantata_minutes=remote[i].time_in_minutes,
                 fields=_differing(local[i], remote[i]))
        for i in sorted(set(local) & set(remote))
        if (local[i].updated_at, local[i].time_in_minutes, local[i].columns)
        != (remote[i].updated_at, remote[i].time_in_minutes, remote[i].columns))
    if mine == theirs and not stale:
        return None
    return WindowDiff(window=w, mirror=mine, kantata=theirs,
                      missing_locally=tuple(sorted(listed - set(local))),
                      extra_locally=tuple(sorted(set(local) - listed)), stale=stale)
