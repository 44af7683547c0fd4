"""Reconciliation and verification use cases: check `date_performed_between` windows against
Kantata, carry out the pure plan of `syncd.reconcile` (upsert missing or older rows, mark
vanished ones deleted), and compare the mirror with Kantata without writing anything (`verify`).

Counting first (issue #24): a reconciliation run starts with an incremental pass, then asks
Kantata's `count` of each window (one request, `per_page=1`). A window whose count is what the
mirror expects (`reconcile.window_check`) is done; one that differs is narrowed by halving its
date range with more count requests (`reconcile.count_step`) and only the day ranges that differ
are read. A window is read in full when its full read is due (`SYNCD_RECONCILE_FULL_INTERVAL`),
when Kantata's count cannot vouch for it, or when narrowing cannot place the difference.

A window is read completely into memory first (same parameters as the pull: archived and
other-account projects included, `order=date_performed:asc`), re-read while Kantata's count
shows it changed mid-scan, and only then applied in one transaction together with its
checkpoint in `syncd.windows` (purpose 'reconcile'). Deletion candidates are confirmed by an
`only=` probe before anything is marked deleted. Reads use the "reconcile" priority of the one
request budget shared with pull and push; windows run `window_concurrency` at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import structlog

from syncd import pagination, pull, reconcile, store
from syncd.errors import (STOPS_THE_RUN, FatalError, PageIgnoredError, PagingError,
                          RetriableAPIError, RetriableError, StoppedWaiting)
from syncd.models import Altered, Page, Rejected, SideObject, TimeEntry
from syncd.reconcile import CountState, RowVersion, Summary, WindowDiff
from syncd.runs import Deps, RunStats, interruption, job_run
from syncd.settings import Settings
from syncd.windows import Narrowing, Window, describe_too_big, month_windows

__all__ = [
    "VerifyResult", "WindowRead", "WindowReport", "overdue_now", "read_window", "reconcile_due",
    "reconcile_range", "verify_range",
]

log = structlog.get_logger(__name__)

PURPOSE = "reconcile"
MAX_READS = 3  # reads of one window before giving up on it for this run
MAX_PAGES = 100_000  # loop guard: a window can never legitimately need more
PROBE_SIZE = 200  # ids per `only=` probe (api-notes §14 Q18)
T = TypeVar("T")


class Stopped(Exception):
    """Shutdown was requested while a window was being read; the window is left for later."""


class _Held(Exception):
    """Another live run is reconciling the window now (`store.start_window`): left to it."""


@dataclass
class WindowRead:
    """One complete read of a window: decoded entries (newest per id), every listed id
    (including records that could not be decoded), side-loads, and Kantata's `count` on the
    first and the final page."""

    window: Window
    entries: dict[int, TimeEntry] = field(default_factory=dict)
    listed: set[int] = field(default_factory=set)
    side: dict[tuple[str, int], SideObject] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    altered: dict[int, Altered] = field(default_factory=dict)  # entries, by id
    first_count: int | None = None
    last_count: int | None = None
    pages: int = 0
    reads: int = 0
    #: listed `results` ids that are not an integer id (their records cannot be compared)
    unreadable_ids: int = 0
    #: this read listed the same ids under the same counts as the read before it
    stable: bool = False
    #: why the read is incomplete whatever the counts say (a day one page cannot hold while
    #: Kantata ignores `page`, issue #27); None: it is not
    incomplete: str | None = None

    @property
    def trusted(self) -> bool:
        """Complete by Kantata's count, or (a count that is off or says nothing) by listing
        exactly what the read before it listed: nothing changed and nothing was skipped."""
        if self.incomplete is not None:
            return False
        return self.stable or reconcile.read_trusted(self.first_count, self.last_count,
                                                     len(self.listed))

    def untrusted_reason(self, *, stable: bool = False) -> str:
        """Why Kantata's count cannot vouch for this read, naming the real cause; `stable`:
        the read listed what the read before it listed."""
        if self.incomplete is not None:
            return f"{self.incomplete}; nothing marked deleted"
        listed = f"{len(self.listed)} distinct ids listed"
        if self.unreadable_ids:
            listed += f" and {self.unreadable_ids} unreadable id(s)"
        if self.first_count is not None and self.first_count < 0:
            return (f"Kantata's count is {self.first_count}, not a number of entries ({listed})"
                    + ("; two reads listed the same, taken as the window's content" if stable
                       else "; the read cannot be checked, nothing marked deleted"))
        if stable:
            return (f"Kantata's count ({self.first_count}) disagrees with the {listed}, the "
                    f"same in {self.reads} reads: the data did not change, the count is off; "
                    "the listing is taken as the window's content")
        if self.unreadable_ids and self.first_count == self.last_count:
            return (f"Kantata's count ({self.first_count}) cannot be checked against the "
                    f"{listed}; nothing marked deleted")
        return (f"kept changing while read ({self.reads} reads; {listed}, count "
                f"{self.first_count} then {self.last_count}); nothing marked deleted")


@dataclass
class WindowReport:
    """Figures of one reconciled window. `checked`: distinct ids compared; `upserted`: rows
    written; `revived`: rows marked deleted that Kantata lists again; `marked_deleted`: rows
    newly marked deleted; `kept`: deletion candidates a by-id probe found (moved to another date
    or skipped by paging); `requests`: GETs spent (pages of every read plus probes)."""

    window: Window
    checked: int = 0
    upserted: int = 0
    revived: int = 0
    marked_deleted: int = 0
    kept: int = 0
    requests: int = 0
    reads: int = 0
    remote_count: int | None = None
    trusted: bool = False
    error: str | None = None
    #: how the window was checked: "count" (Kantata's count matched: one request), "days"
    #: (narrowed by counts, `ranges_read` date ranges read), "full" (every page read)
    mode: str = ""
    ranges_read: int = 0


async def _all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `coros` concurrently; on the first failure cancel the rest and raise that error
    itself (not an ExceptionGroup), so no window keeps writing after its run has ended."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


def _page_entries(deps: Deps) -> int:
    """Entries one page of a read holds, for the cost of reading a range: the size Kantata
    served this process (it clamps `per_page`), else the smaller of SYNCD_PER_PAGE and the
    documented maximum (a new user's trial: with SYNCD_PER_PAGE=5000 against a server
    serving 200, one deletion in a 2,112-entry month was read as 13 pages instead of being
    narrowed to its day, 7 requests)."""
    served = deps.page_size.known_served
    if served:
        return min(served, deps.settings.per_page)
    return min(deps.settings.per_page, pagination.DOCUMENTED_MAX_PER_PAGE)


def _params(deps: Deps, w: Window, page: int, size: int | None = None) -> dict[str, str]:
    """A reconcile read's list parameters; `size`: its `per_page` (default: the process's
    page size now, `Deps.page_size`, which a timeout or 5xx halves for every job)."""
    params = {"per_page": str(deps.page_size.current if size is None else size),
              "date_performed_between": w.param, "order": "date_performed:asc",
              "page": str(page)}
    if deps.settings.sideload:
        params["include"] = pull.INCLUDE
    return params


def _ids(raw: Sequence[str]) -> set[int]:
    return {int(i) for i in raw if i.isdigit()}


def _merge(read: WindowRead, page: Page) -> None:
    """Add one page's entries (newest per id), listed ids, side-loads and rejects to `read`."""
    ids = _ids(page.result_ids)
    read.listed |= ids
    read.unreadable_ids += len(page.result_ids) - len(ids)
    for e in store.newest_per_id(page.entries):
        cur = read.entries.get(e.id)
        if cur is None or e.updated_at > cur.updated_at:
            read.entries[e.id] = e
    read.side.update({(o.kind, o.id): o for o in page.side})
    read.rejected.extend(page.rejected)
    read.altered.update({a.id: a for a in page.altered if a.kind == "time_entries"})


async def read_window(deps: Deps, w: Window,
                      trust: pagination.PagingTrust | None = None) -> WindowRead:
    """Read every page of `w` once, storing nothing. Raises RetriableError / FatalError when a
    page cannot be read (after the client's own retries), Stopped on shutdown. When Kantata
    does not honour `page` (found now, or earlier by the run: `trust`), `w` is read through
    page 1 only by date ranges that fit one page (`_read_narrowed`). A page that times out or
    fails with a 5xx halves the process's page size (`pagination.PageSize`, as the pull's
    reads do) and the read starts again at page 1 at the new size, down to Kantata's
    documented 200: a reconciliation asked 5,000 a page however often that failed."""
    trust = trust if trust is not None else pagination.PagingTrust()
    sizer = deps.page_size
    read = WindowRead(w, reads=1)
    page_no, size = 1, sizer.current
    first: tuple[int, int, int] | None = None
    guard = pagination.PageGuard(f"window {w.param}", max_pages=MAX_PAGES)
    while page_no <= MAX_PAGES:
        if page_no > 1 and trust.ignored:
            return await _read_narrowed(deps, read, first)
        try:
            page = await deps.client.list_page(_params(deps, w, page_no, size),
                                               priority="reconcile",
                                               shrinkable=size > sizer.floor)
        except RetriableAPIError as exc:
            read.pages += 1
            new = pull.smaller_page(sizer, size, exc, query=f"reconcile window {w.param}")
            if new is None:
                raise
            read = WindowRead(w, reads=read.reads, pages=read.pages)  # again, from page 1
            page_no, size, first = 1, new, None
            guard = pagination.PageGuard(f"window {w.param}", max_pages=MAX_PAGES)
            continue
        read.pages += 1
        pull.count_answered(sizer)
        try:
            guard.check(page_no, page)
        except PageIgnoredError as exc:  # past page 1 only
            pull.note_page_ignored(None, str(exc), trust)
            continue  # not merged; the top of the loop narrows
        if page_no == 1:
            first = (len(page.result_ids), page.count, page.page_size)
        read.first_count = page.count if read.first_count is None else read.first_count
        read.last_count = page.count
        deps.made_progress()
        if not page.result_ids:
            break
        _merge(read, page)
        if (page_no >= page.page_count and pagination.count_usable(page.count)) \
                or len(page.result_ids) < page.page_size \
                or (pagination.count_usable(page.count)
                    and page_no * page.page_size >= page.count):
            break
        if deps.should_stop():
            raise Stopped(f"stopped before window {w.param} was read completely")
        page_no += 1
    return read


async def _read_narrowed(deps: Deps, read: WindowRead,
                         first: tuple[int, int, int] | None) -> WindowRead:
    """Complete `read` of `read.window` through page 1 only (issue #27, as
    `pull.read_narrowed`): `windows.Narrowing` halves the range until each range's page 1
    holds all of it. `first`: (rows, count, page size) of the window's page 1 when `read`
    holds it. The read is trusted as a page-by-page read is: Kantata's count of the window
    equals the distinct ids listed; a day one page cannot hold makes it `incomplete`."""
    w = read.window
    plan = Narrowing(w, _page_entries(deps))
    if first is not None:
        plan.answer(w, listed=first[0], count=first[1], page_size=first[2])
    while (r := plan.next()) is not None:
        if deps.should_stop():
            raise Stopped(f"stopped before window {w.param} was read completely")
        page = await deps.client.list_page(_params(deps, r, 1), priority="reconcile")
        read.pages += 1
        if page.result_ids and page.page_number not in (None, 1):
            raise PagingError(f"window {w.param}, range {r.param}, page 1: Kantata answered "
                              f"page {page.page_number} instead; read stopped")
        if r == w:
            read.first_count = page.count
        plan.answer(r, listed=len(page.result_ids), count=page.count,
                    page_size=page.page_size)
        deps.made_progress()
        _merge(read, page)
    read.last_count = read.first_count
    if plan.too_big:
        read.incomplete = describe_too_big(plan.too_big)
    log.info("window_narrowed", window=w.param, requests=plan.requests,
             ranges=plan.complete_ranges, days_too_big=len(plan.too_big), purpose=PURPOSE)
    return read


async def _read_until_trusted(deps: Deps, w: Window,
                              trust: pagination.PagingTrust | None = None) -> WindowRead:
    pages = 0
    last: tuple[frozenset[int], int | None, int | None] | None = None
    trust = trust if trust is not None else pagination.PagingTrust()
    for attempt in range(1, MAX_READS + 1):
        read = await read_window(deps, w, trust)
        pages += read.pages
        read.pages, read.reads = pages, attempt
        if read.trusted or read.incomplete is not None:  # reading again cannot help a day
            return read
        shape = (frozenset(read.listed), read.first_count, read.last_count)
        if shape == last and not read.unreadable_ids:
            # a third read would list the same again: the count, not the data, is off
            log.warning("window_count_disagrees", window=w.param,
                        reason=read.untrusted_reason(stable=True))
            read.stable = True
            return read
        last = shape
        log.warning("window_changed_while_reading", window=w.param, attempt=attempt,
                    first_count=read.first_count, last_count=read.last_count,
                    listed=len(read.listed))
    return read


async def _probe(deps: Deps, ids: Sequence[int]) -> tuple[set[int], list[TimeEntry], int]:
    """By-id lookup of deletion candidates: (ids Kantata still has, their entries, GETs)."""
    found: set[int] = set()
    entries: list[TimeEntry] = []
    requests = 0
    for i in range(0, len(ids), PROBE_SIZE):
        page = await deps.client.get_by_ids(ids[i:i + PROBE_SIZE], priority="reconcile")
        requests += 1
        found |= _ids(page.result_ids)
        entries.extend(page.entries)
    return found, entries, requests


async def _apply(deps: Deps, stats: RunStats, read: WindowRead, rep: WindowReport, *,
                 full: bool) -> None:
    """Write what the complete read `read` of `read.window` (a window, or a range of its days
    while narrowing) means for the mirror, in one transaction; `rep`'s figures are added to.
    With `full`, the same transaction closes the window's checkpoint (done, or failed when the
    read is not trusted) and notes the full read (`store.record_full_read`)."""
    async with deps.pool.acquire() as conn:
        local = await store.window_rows(conn, read.window)
    remote = {i: e.updated_at for i, e in read.entries.items()}
    plan = reconcile.plan_window(remote, read.listed, local, trusted=read.trusted)
    upserts = [read.entries[i] for i in plan.upsert]
    gone: tuple[int, ...] = ()
    if plan.delete_candidates:
        found, moved, probes = await _probe(deps, plan.delete_candidates)
        rep.requests += probes
        gone = reconcile.confirm_deletions(plan.delete_candidates, found)
        rep.kept += len(plan.delete_candidates) - len(gone)
        upserts.extend(moved)
    status = "done" if read.trusted else "failed"
    if not read.trusted:
        rep.error = f"window {read.window.param}: {read.untrusted_reason()}; will retry"
    async with deps.pool.acquire() as conn, conn.transaction():
        if upserts or gone:
            await store.set_write_context(conn, "reconcile", history=deps.settings.history,
                                          listed_since=stats.listed_since)
        rep.upserted += await store.upsert_entries(conn, upserts)
        if read.side:
            await store.upsert_side(conn, list(read.side.values()))
        if read.rejected:
            await store.record_rejects(conn, read.rejected, stats.run_id)
        rep.marked_deleted += await store.mark_deleted(conn, gone)
        if full:
            await store.finish_window(conn, PURPOSE, read.window, status=status,
                                      remote_count=read.last_count, error=rep.error)
            if read.trusted:
                await _note_full_read(conn, read)
    rep.checked += plan.checked
    rep.revived += len(plan.revive)
    pull.note_altered(deps, stats, [read.altered[e.id] for e in upserts if e.id in read.altered])
    if gone:
        log.info("entries_marked_deleted", window=read.window.param, ids=list(gone)[:50],
                 count=rep.marked_deleted)


async def _note_full_read(conn: Any, read: WindowRead) -> None:
    """Record the full read of `read.window` (trusted) and its count offset: Kantata's count
    minus what the mirror explains right after the read's writes. A read Kantata's count did
    not vouch for (`stable`: the count is off) leaves the window to full reads."""
    w = read.window
    if read.stable or read.last_count is None or not pagination.count_usable(read.last_count):
        await store.record_full_read(conn, w, count_offset=0, count_trusted=False)
        return
    expected = reconcile.day_count(
        w, await store.live_counts_by_day(conn, w.start, w.end),
        reconcile.rejects_by_day(await store.unmirrored_rejects(conn)))
    undecoded = len(read.listed - read.entries.keys()) + read.unreadable_ids
    await store.record_full_read(conn, w, count_offset=reconcile.count_offset(
        read.last_count, expected, undecoded), count_trusted=True)


async def _full_window(deps: Deps, stats: RunStats, w: Window, rep: WindowReport) -> None:
    """Read every page of `w` (until trusted) and apply it, closing the window's checkpoint."""
    rep.mode = "full"
    read = await _read_until_trusted(deps, w, stats.paging)
    rep.requests += read.pages
    rep.reads += read.reads
    rep.remote_count, rep.trusted = read.last_count, read.trusted
    await _apply(deps, stats, read, rep, full=True)


async def _remote_count(deps: Deps, r: Window, rep: WindowReport) -> int:
    """Kantata's `count` of the entries performed in `r`: one list request with `per_page=1`
    and the pull's visibility overrides (the client adds `from_archived_workspaces=true`,
    `on_my_account=false`, api-notes §4), so it counts what a full read lists."""
    if deps.should_stop():
        raise Stopped(f"stopped before window {rep.window.param} was checked")
    page = await deps.client.list_page(
        {"per_page": "1", "page": "1", "date_performed_between": r.param},
        priority="reconcile")
    rep.requests += 1
    deps.made_progress()
    return page.count


async def _expectation(deps: Deps, w: Window) -> tuple[dict[date, int], dict[date, int]]:
    """Live mirror rows and unmirrored rejects of `w`, per day (`reconcile.day_count`)."""
    async with deps.pool.acquire() as conn:
        live = await store.live_counts_by_day(conn, w.start, w.end)
        rejects = reconcile.rejects_by_day(await store.unmirrored_rejects(conn))
    return live, rejects


async def _count_window(deps: Deps, stats: RunStats, w: Window, state: CountState,
                        rep: WindowReport) -> bool:
    """Check `w` by counting (module docstring); True when that settled it ("count" or
    "days", checkpoint not yet closed), False when it must be read in full. Ranges read while
    narrowing are applied as they are read."""
    live, rejects = await _expectation(deps, w)
    count = await _remote_count(deps, w, rep)
    rep.remote_count = count
    check = reconcile.window_check(count, reconcile.day_count(w, live, rejects), state)
    if check == "match":
        rep.mode, rep.trusted = "count", True
        return True
    if check == "full":
        return False
    stack = [(w, count)]
    while stack:
        r, n = stack.pop()
        step = reconcile.count_step(r, n, reconcile.day_count(r, live, rejects),
                                    per_page=_page_entries(deps))
        if step == "match":
            continue
        if step == "nonsense" or (step == "read" and r == w):
            return False
        if step == "read":
            read = await _read_until_trusted(deps, r, stats.paging)
            rep.requests += read.pages
            rep.reads += read.reads
            rep.ranges_read += 1
            await _apply(deps, stats, read, rep, full=False)
            if not read.trusted:
                return True  # the window fails with the read's reason (rep.error)
            continue
        left, right = reconcile.halves(r)
        n_left = await _remote_count(deps, left, rep)
        if n_left < 0 or n_left > n:  # counts that do not add up: read the window instead
            log.warning("window_counts_disagree", window=w.param, range=r.param, count=n,
                        left=left.param, left_count=n_left)
            return False
        stack += [(right, n - n_left), (left, n_left)]
    # what the reads did not explain (undatable records, a change while counting) is
    # settled by a full read, which also learns the window's offset
    live, rejects = await _expectation(deps, w)
    if count - reconcile.day_count(w, live, rejects) != state.offset:
        log.info("window_count_unexplained", window=w.param, remote_count=count,
                 expected=reconcile.day_count(w, live, rejects), offset=state.offset)
        return False
    rep.mode, rep.trusted = "days", True
    return True


async def _reconcile_window(deps: Deps, stats: RunStats, w: Window,
                            state: CountState | None, now: datetime) -> WindowReport | None:
    """Reconcile one window: counting first when `state` (its `CountState`) says its full
    read is not due, in full when it is or `state` is None (`--full`). None when a shutdown
    stopped it (`Stopped`, or `StoppedWaiting` from a request's wait): the window is given
    back (`pending`, as a stopped backfill window is), not failed, and the next
    reconciliation checks it."""
    rep = WindowReport(w)
    try:
        async with deps.pool.acquire() as conn:
            if await store.start_window(conn, PURPOSE, w, restart=True,
                                        run_id=stats.run_id) is None:
                raise _Held(w.param)
        settled = False
        if state is not None and not reconcile.full_read_due(
                state, now=now, interval=deps.settings.reconcile_full_interval):
            settled = await _count_window(deps, stats, w, state, rep)
        if settled:
            status = "failed" if rep.error else "done"
            async with deps.pool.acquire() as conn:
                await store.finish_window(conn, PURPOSE, w, status=status,
                                          remote_count=rep.remote_count, error=rep.error)
        else:
            await _full_window(deps, stats, w, rep)
    except STOPS_THE_RUN as exc:  # the whole run stops; the window says why
        async with deps.pool.acquire() as conn:
            await store.finish_window(conn, PURPOSE, w, status="failed", remote_count=None,
                                      error=f"{type(exc).__name__}: {exc}")
        raise
    except _Held:
        raise
    except (Stopped, StoppedWaiting):
        await pull.give_back(deps, PURPOSE, w, "interrupted: stopped by shutdown")
        stats.pages += rep.requests
        return None
    except (RetriableError, FatalError) as exc:
        rep.error = f"{type(exc).__name__}: {exc}"
        async with deps.pool.acquire() as conn:
            await store.finish_window(conn, PURPOSE, w, status="failed",
                                      remote_count=None, error=rep.error)
    except BaseException as exc:  # cancelled (SIGTERM of a one-shot command, a deadline)
        await pull.give_back(deps, PURPOSE, w, f"interrupted: {interruption(exc)}")
        raise
    stats.pages += rep.requests
    stats.rows_upserted += rep.upserted
    deps.metrics.rows_upserted.labels("reconcile").inc(rep.upserted)
    deps.metrics.rows_marked_deleted.inc(rep.marked_deleted)
    if rep.error:
        stats.errors.append(f"{w.param}: {rep.error}")
        log.warning("window_failed", window=w.param, error=rep.error)
    log.info("window_reconciled", window=w.param, mode=rep.mode, checked=rep.checked,
             upserted=rep.upserted, revived=rep.revived, marked_deleted=rep.marked_deleted,
             kept=rep.kept, requests=rep.requests, reads=rep.reads,
             ranges_read=rep.ranges_read)
    return rep


async def _catch_up(deps: Deps, stats: RunStats) -> None:
    """The incremental pass counting relies on: afterwards every create and move Kantata made
    before it is in the mirror, so a count that is short means a deletion. No pass before
    the first backfill (no watermark: every window then differs and is read). A failed pass
    is reported and counting goes on: a stale mirror only makes counts differ (more reads),
    or hides a deletion behind a create not yet pulled until the next check."""
    async with deps.pool.acquire() as conn:
        wm, settled = await store.get_cursor(conn)
    if wm is None:
        return
    try:
        stats.details["incremental_pages"] = await pull.incremental(
            deps, datetime.now(UTC), stats, wm, settled)
    except (RetriableError, FatalError) as exc:
        if isinstance(exc, STOPS_THE_RUN):
            raise
        stats.errors.append(f"incremental pass before counting: {type(exc).__name__}: {exc}")
        log.warning("reconcile_catch_up_failed", error=f"{type(exc).__name__}: {exc}")


async def _count_states(deps: Deps, windows: Sequence[Window]) -> dict[Window, CountState]:
    """Each window's `CountState` from its reconcile checkpoint; a window never read in full by
    reconciliation counts its backfill's completion as its last full read."""
    async with deps.pool.acquire() as conn:
        rec = await store.window_states(conn, PURPOSE)
        back = await store.window_states(conn, "backfill")
    out = {}
    for w in windows:
        r, b = rec.get(w), back.get(w)
        last = r["last_full_read_at"] if r is not None else None
        if last is None and b is not None and b["last_done_at"] is not None:
            last = reconcile.backfill_as_full_read(  # spread: not every window at once
                b["last_done_at"], w, deps.settings.reconcile_full_interval)
        out[w] = CountState(last_full_read=last,
                            offset=r["count_offset"] if r is not None else 0,
                            count_trusted=r["count_trusted"] if r is not None else True)
    return out


async def _run(deps: Deps, windows: Sequence[Window], stats: RunStats, *,
               states: Mapping[Window, CountState] | None, now: datetime
               ) -> list[WindowReport]:
    """Reconcile `windows`; `states` None reads every window in full (`--full`)."""
    sem = asyncio.Semaphore(deps.settings.window_concurrency)
    interval = deps.settings.reconcile_full_interval
    if states is not None and any(not reconcile.full_read_due(states[w], now=now,
                                                              interval=interval)
                                  for w in windows):
        await _catch_up(deps, stats)

    held: list[Window] = []

    async def one(w: Window) -> WindowReport | None:
        async with sem:
            if deps.should_stop():
                return None
            try:
                return await _reconcile_window(deps, stats, w,
                                               None if states is None else states[w], now)
            except _Held:
                held.append(w)
                return None

    done = await _all(one(w) for w in windows)
    reports = sorted((r for r in done if r is not None), key=lambda r: r.window)
    if held:
        stats.details["windows_read_by_another_run"] = len(held)
        log.warning("windows_left_to_another_run", windows=len(held),
                    first=min(held).param, last=max(held).param,
                    detail="another syncd run, still alive, is reconciling them")
    if len(reports) + len(held) < len(windows):  # a shutdown left them without a report
        stats.stopped = (f"stopped before the reconciliation finished: "
                         f"{len(windows) - len(reports) - len(held)} of {len(windows)} "
                         "windows left (checked by the next reconciliation)")
    stats.details.update(
        windows=len(reports), checked=sum(r.checked for r in reports),
        marked_deleted=sum(r.marked_deleted for r in reports),
        revived=sum(r.revived for r in reports), kept=sum(r.kept for r in reports),
        requests=sum(r.requests for r in reports),
        **{f"windows_{m}": sum(1 for r in reports if r.mode == m)
           for m in ("count", "days", "full")})
    return reports


def default_windows(deps: Deps, today: date) -> list[Window]:
    """The backfill range as windows (`settings.backfill_from(today)` .. today +
    `lookahead_days`), the same windows the pull's backfill uses."""
    return list(pull.windows_for(deps, today))


async def reconcile_range(deps: Deps, since: date, until: date, *, full: bool = False,
                          now: datetime | None = None) -> list[WindowReport]:
    """Reconcile every window of `since`..`until` (inclusive) now, whatever their age; one run
    of job 'reconcile'. Counting first (an incremental pass, then one count request per
    window; only windows whose count differs are read, narrowed to the days that differ),
    except windows whose full read is due; `full` reads every window in full (`syncd
    reconcile --full`). Raises ValueError when `until < since`, AuthError when Kantata refuses
    the token, KantataUnreachable when it cannot be reached at all (`errors.STOPS_THE_RUN`);
    other request errors fail only their window (reported, run 'partial').
    Deletions are stamped with the database clock; `now` (aware, default: the clock) decides
    which full reads are due."""
    now = now or datetime.now(UTC)
    windows = month_windows(since, until, deps.settings.backfill_window_months)
    async with job_run(deps, "reconcile") as stats:
        states = None if full else await _count_states(deps, windows)
        return await _run(deps, windows, stats, states=states, now=now)


async def overdue_now(conn: Any, settings: Settings, now: datetime) -> float:
    """`syncd_reconcile_overdue_seconds` at `now` (aware), from the database alone: the
    reconcile checkpoints of the configured windows (their last success, kept through later
    failures) and, for windows never reconciled, the end of their backfill. Read on every
    /metrics scrape (syncd.http) as well as by `reconcile_due`, so the gauge is right from the
    first scrape of any replica, not only after the leader's first reconcile check."""
    windows = month_windows(*settings.backfill_range(now.date()),
                            settings.backfill_window_months)
    rows = await conn.fetch("SELECT purpose, window_start, window_end, last_done_at "
                            "FROM syncd.windows WHERE last_done_at IS NOT NULL")
    done = {(r["purpose"], Window(r["window_start"], r["window_end"])): r["last_done_at"]
            for r in rows}
    return reconcile.overdue_seconds(
        windows, {w: done.get((PURPOSE, w)) for w in windows},
        first_read={w: done.get(("backfill", w)) for w in windows},
        now=now, today=now.date(), recent_days=settings.reconcile_recent_days,
        recent_interval=settings.reconcile_recent_interval,
        old_interval=settings.reconcile_old_interval)


async def reconcile_due(deps: Deps, *, now: datetime | None = None) -> list[WindowReport]:
    """Reconcile the windows of the backfill range that are due at `now` (aware; default: the
    clock): never reconciled, last reconciled `reconcile_recent_interval` seconds ago for windows
    ending within `reconcile_recent_days`, `reconcile_old_interval` seconds ago for older ones,
    or due for their full read (`reconcile_full_interval`). Counting first, as
    `reconcile_range`. Checkpoints of windows no longer in the range are forgotten. Returns []
    without recording a run when nothing is due. Errors as `reconcile_range`."""
    now = now or datetime.now(UTC)
    s = deps.settings
    windows = default_windows(deps, now.date())
    async with deps.pool.acquire() as conn:
        await store.prune_windows(conn, PURPOSE, windows)
        states = await store.window_states(conn, PURPOSE)
    last_done = {w: r["finished_at"] if r["status"] == "done" else None
                 for w, r in states.items()}
    policy: dict[str, Any] = dict(
        now=now, today=now.date(), recent_days=s.reconcile_recent_days,
        recent_interval=s.reconcile_recent_interval, old_interval=s.reconcile_old_interval)
    due = reconcile.due_windows(windows, last_done, **policy)
    states = await _count_states(deps, windows)
    due += [w for w in windows if w not in set(due) and reconcile.full_read_due(
        states[w], now=now, interval=s.reconcile_full_interval)]
    async with deps.pool.acquire() as conn:
        deps.metrics.reconcile_overdue.set(await overdue_now(conn, s, now))
    if not due:
        return []
    async with job_run(deps, "reconcile") as stats:
        return await _run(deps, due, stats, states=states, now=now)


# ---------------------------------------------------------------- verify (read-only)
@dataclass
class VerifyResult:
    """Outcome of `verify_range`: windows compared, their differences, windows that could not
    be compared (window, error), and GETs spent."""

    windows: list[Window] = field(default_factory=list)
    diffs: list[WindowDiff] = field(default_factory=list)
    errors: list[tuple[Window, str]] = field(default_factory=list)
    requests: int = 0

    @property
    def identical(self) -> bool:
        return not self.diffs and not self.errors


async def _verify_window(deps: Deps, w: Window, mine: Summary, res: VerifyResult,
                         trust: pagination.PagingTrust | None = None) -> None:
    try:
        read = await _read_until_trusted(deps, w, trust)
    except STOPS_THE_RUN:
        raise
    except (RetriableError, FatalError) as exc:
        res.errors.append((w, f"{type(exc).__name__}: {exc}"))
        return
    res.requests += read.pages
    if not read.trusted:
        res.errors.append((w, read.untrusted_reason()))
        return
    # every typed column, foreign keys included, not only the summary: a mirror row whose
    # workspace_id was blanked has the same count, minutes and updated_at
    remote = {i: RowVersion(updated_at=e.updated_at, time_in_minutes=e.time_in_minutes,
                            columns=tuple(e[:-1])) for i, e in read.entries.items()}
    async with deps.pool.acquire() as conn, conn.transaction(readonly=True):
        local = await store.window_columns(conn, w)
    diff = reconcile.diff_window(w, local, remote, read.listed)
    if diff is not None:
        res.diffs.append(diff)


async def verify_range(deps: Deps, since: date, until: date) -> VerifyResult:
    """Compare the live mirror with Kantata window by window over `since`..`until`: count, sum
    of `time_in_minutes` and max `updated_at`, then ids for windows that differ. Writes nothing
    (no run history either; database reads run in read-only transactions). Raises AuthError
    and KantataUnreachable (`errors.STOPS_THE_RUN`);
    other request errors are per window."""
    windows = month_windows(since, until, deps.settings.backfill_window_months)
    async with deps.pool.acquire() as conn, conn.transaction(readonly=True):
        mine = reconcile.bucket_summaries(windows, await store.daily_summary(conn, since, until))
    res = VerifyResult(windows=windows)
    sem = asyncio.Semaphore(deps.settings.window_concurrency)
    trust = pagination.PagingTrust()  # whether Kantata honours `page`, learnt once

    async def one(w: Window) -> None:
        async with sem:
            await _verify_window(deps, w, mine[w], res, trust)

    await _all(one(w) for w in windows)
    res.diffs.sort(key=lambda d: d.window)
    res.errors.sort(key=lambda e: e[0])
    return res
