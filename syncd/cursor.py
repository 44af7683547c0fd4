"""Pure planning of the incremental pull: which page to ask for next, and how far the watermark
may move once a page is stored.

Kantata pages are LIMIT/OFFSET over a live query (api-notes §3): an entry edited while we page
moves to the end of an `updated_at:asc` listing and shifts every later row one place earlier, so
page-number paging can skip rows. We therefore page by key: each request is page 1 of
`updated_after = T` where T is one second before the newest `updated_at` of the previous page.
Within one response the order is consistent, so every entry older than that page's newest second
has been seen. When a whole page shares one second (more than `per_page` entries were written in
the same second, api-notes §11) we page by number inside that single second
(`updated_after = M-1s`, `updated_before = M+1s`) and restart that second if its `count` changes.

`updated_after`/`updated_before` are strict and second-precise (api-notes §14 Q1).

Request count (issue #12). A page is the last one when it lists fewer than `per_page` rows or
as many as its `count` says match. When a crowded second starts a keyset page, that page stands
in for the second's page 1 as long as the second's `count` equals the keyset page's `count`
(nothing after the second, and nothing left it since), and the request after the second is
made only when the keyset page's `count` said more entries follow it; an entry written later is
read by the next pass (the watermark never passes the second). A repeat pass over N entries
therefore costs max(1, ceil((N + S) / per_page)) requests, where S is the number of entries
read twice: those of the second a full page ends in, re-read at the start of the next page (0
when a page ends at a second's end or inside a crowded second). A crowded second that later
entries follow (its count differs from the keyset page's) costs one request more: its page 1 is
read again to confirm the keyset page stood in for it; page 2, read already, is not read again.
See migrations/README.md, "Cost in Kantata requests".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

__all__ = ["PullRequest", "Step", "first_request", "initial_watermark", "next_step",
           "settled_through"]

SECOND = timedelta(seconds=1)
MAX_SECOND_RESTARTS = 3


def floor_second(dt: datetime) -> datetime:
    """`dt` without its fraction of a second (Kantata's precision)."""
    return dt.replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class PullRequest:
    """One incremental request: `updated_after` (exclusive), optional `updated_before`
    (exclusive; set only while paging inside one crowded second), `page` (1-based), the
    `count` that second had when we started it (to detect rows moving out mid-scan), and
    `stand_in_count` (see the field)."""

    updated_after: datetime
    updated_before: datetime | None = None
    page: int = 1
    second_count: int | None = None
    restarts: int = 0
    #: set on page 2 of a crowded second whose page 1 is the keyset page before it: that
    #: page's `count` (entries after its `updated_after`), which the second's count must equal
    stand_in_count: int | None = None
    #: the second is known to be the last one with entries (its count equalled the keyset
    #: page's): no request after it
    last_second: bool = False
    #: on page 2 with `stand_in_count`: the keyset page's ids (a digest); on the page 1 read
    #: to confirm the stand-in: the digest that page must list for page 2 (read already) to hold
    stand_in_ids: int | None = None
    #: on that confirming page 1: whether page 2, already read and stored, was full
    confirmed_full: bool | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after a page: the next request (None = done) and the new `complete_through`
    (every entry with `updated_at` <= it is stored once this page commits), or None if the page
    does not move it."""

    next: PullRequest | None
    complete_through: datetime | None


def initial_watermark(run_started: datetime, overlap: timedelta) -> datetime:
    """Watermark to record when a first backfill starts: anything changed from here on is picked
    up by the incremental pull even if the backfill had already passed its window."""
    return floor_second(run_started) - overlap


def first_request(watermark: datetime, overlap: timedelta,
                  settled: datetime | None = None) -> PullRequest:
    """The first incremental request: `updated_after = watermark - overlap` (second precision),
    or `settled` when that is later (nothing at or before it can still appear, see
    `settled_through`)."""
    start = floor_second(watermark - overlap)
    if settled is not None and floor_second(settled) > start:
        start = floor_second(settled)
    return PullRequest(updated_after=start)


def settled_through(watermark: datetime, pass_started: datetime, overlap: timedelta,
                    settled: datetime | None = None) -> datetime | None:
    """The new `settled` point after a complete pass that started at `pass_started` (syncd's
    clock, aware) and left the watermark at `watermark`; None when it does not move.

    The overlap exists because an entry can become visible some time after its `updated_at`
    (a late commit, clocks apart). A pass that read everything after its first `updated_after`
    at `pass_started` saw every entry whose `updated_at` is at least `overlap` before that
    moment, so every entry up to `min(watermark, pass_started - overlap)` is stored and no
    later pass can find one there. Assumes Kantata's visibility delay plus the clock difference
    stays under `overlap` (the same assumption the overlap itself makes); reconciliation
    repairs anything that breaks it."""
    point = floor_second(min(watermark, pass_started - overlap))
    if settled is not None and point <= settled:
        return None
    return point


def next_step(req: PullRequest, updated_ats: Sequence[datetime], page_size: int,
              count: int, *, listed: int | None = None,
              ids: Sequence[str] | None = None) -> Step:
    """Decide the request after `req` returned entries with `updated_ats` (in `results` order,
    ascending) out of `count` matching. `page_size` is the effective size (`meta.page_size`);
    `listed` is how many rows the page listed, rejected ones included (default: as many as
    `updated_ats`): only a page listing fewer than `page_size` rows is the last one. `ids` are
    the page's `results` ids: with them a crowded second followed by later entries is confirmed
    by re-reading only its page 1, not pages 1 and 2.

    The contract does not say whether `updated_after` includes its own second (api-notes §14
    Q1); both readings are handled: entries at the boundary second, which only an inclusive
    server lists, are echoes of what was already read and never count as progress
    (a crowded second right after the boundary is then paged by number like any other).

    Raises ValueError if the page is not in ascending `updated_at` order (the loop guard: a
    server ignoring `order` would otherwise page forever), or if a full page holds nothing
    but the boundary second.
    """
    seconds = [floor_second(t) for t in updated_ats]
    if any(b < a for a, b in zip(seconds, seconds[1:], strict=False)):
        raise ValueError("page is not ordered by updated_at ascending; refusing to page")
    n_listed = len(seconds) if listed is None else listed
    full = n_listed >= page_size
    digest = hash(tuple(ids)) if ids is not None else None
    if req.updated_before is not None:
        return _next_in_second(req, seconds, full, count, page_size, digest)
    boundary = floor_second(req.updated_after)
    if seconds and seconds[0] == boundary:  # an inclusive `updated_after` lists its second
        seconds = [s for s in seconds if s > boundary]
        if not seconds and full:
            raise ValueError(
                f"a full page of entries at the boundary second {boundary.isoformat()} of an "
                "updated_after that includes its own second; cannot page past it")
    if not seconds:
        return Step(None, None)
    newest, oldest = seconds[-1], seconds[0]
    if not full or count <= n_listed:  # the count says nothing else matched
        return Step(None, newest)
    if oldest < newest:
        nxt = PullRequest(updated_after=newest - SECOND)
        if nxt.updated_after <= req.updated_after:  # cannot happen with ascending pages
            raise ValueError("incremental cursor did not advance")
        return Step(nxt, newest - SECOND)
    # A full page inside one second: page by number within that second. This page stands in
    # for the second's page 1 if the second's count, learnt on page 2, equals this page's.
    return Step(PullRequest(updated_after=newest - SECOND, updated_before=newest + SECOND,
                            page=2, stand_in_count=count, stand_in_ids=digest), newest - SECOND)


def _next_in_second(req: PullRequest, seconds: Sequence[datetime], full: bool,
                    count: int, page_size: int, digest: int | None = None) -> Step:
    second = req.updated_after + SECOND
    if req.confirmed_full is not None:  # page 1, read to confirm the keyset page stood in
        if count == req.second_count and digest is not None and digest == req.stand_in_ids:
            # nothing moved inside the second: page 2, read before this, holds; go on after it
            if not req.confirmed_full or 2 * page_size >= count:
                return Step(PullRequest(updated_after=second), second)
            return Step(PullRequest(req.updated_after, req.updated_before, page=3,
                                    second_count=count), None)
        # something moved: read on from this page 1 as any restarted second
        req = replace(req, stand_in_ids=None, confirmed_full=None)
    if req.stand_in_count is not None:
        if count != req.stand_in_count:  # entries follow the second, or some left it: the
            # keyset page stands in for page 1 only if page 1 still lists the same ids
            if digest is not None and req.stand_in_ids is not None:
                return Step(PullRequest(req.updated_after, req.updated_before, page=1,
                                        second_count=count, stand_in_ids=req.stand_in_ids,
                                        confirmed_full=full), None)
            return Step(PullRequest(req.updated_after, req.updated_before, page=1), None)
        req = replace(req, stand_in_count=None, second_count=count, last_second=True)
        if not full or req.page * page_size >= count:
            return Step(None, second)  # the second was all there was: nothing follows it
        return Step(replace(req, page=req.page + 1), None)
    if req.second_count is not None and count != req.second_count:
        if req.restarts >= MAX_SECOND_RESTARTS:
            raise ValueError(f"entries keep moving inside {second.isoformat()}; giving up")
        return Step(replace(req, page=1, second_count=count, restarts=req.restarts + 1,
                            last_second=False), None)
    if not full or req.page * page_size >= count:
        return Step(None if req.last_second else PullRequest(updated_after=second), second)
    return Step(replace(req, page=req.page + 1, second_count=count), None)
