"""The pull use cases: backfill by `date_performed_between` windows, then incremental pulls by
`updated_after`, each page stored in one transaction together with its checkpoint.

Backfill windows are fetched concurrently (bounded by `window_concurrency`) and resume from
their last stored page after a restart. A window whose pages returned fewer distinct entries than
Kantata's final `count` (rows moved while we paged) is read again. The incremental pull follows
`syncd.cursor`; its watermark moves in the same transaction as the rows it covers, only forward,
and never past the run's start.
"""

from __future__ import annotations

import asyncio
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from itertools import compress
from operator import attrgetter, ne

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from syncd import cursor, mirror_indexes, pagination, store
from syncd.errors import (
    STOPS_THE_RUN,
    FatalError,
    MalformedResponseError,
    PageIgnoredError,
    PagingError,
    RetriableAPIError,
    RetriableError,
)
from syncd.kantata import too_slow
from syncd.models import Altered, EntryRefs, Page, Rejected, SideObject, TimeEntry
from syncd.runs import Deps, RunStats, interruption, job_run
from syncd.windows import Narrowing, Window, describe_too_big, month_windows

__all__ = ["WindowResult", "backfill", "incremental", "sync_once"]

log = structlog.get_logger(__name__)

INCLUDE = "workspace,user,story,role"
TRANSIENT_DB_ERRORS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
MAX_WINDOW_READS = 3
#: reads of a window started again because the page size changed under it (halved after a
#: timeout, or Kantata serving another size): bounded by the halvings, this guards the rest
MAX_SIZE_RESTARTS = 6
#: ids held in one set at a time when a window's distinct ids are counted (~0.8 MB)
DISTINCT_CHUNK = 8192


def smaller_page(sizer: pagination.PageSize, size: int, exc: BaseException,
                 **where: object) -> int | None:
    """The size to ask a list page again at after it failed at `size` with `exc`, when that
    can help (a timeout or 5xx, `too_slow`, and a size that can come down:
    `PageSize.after_failure`), logged once per halving (`page_size_halved`, or
    `page_asked_again_smaller` when another read halved it meanwhile); None: raise `exc`.
    `where` names the read in the log."""
    if not (isinstance(exc, RetriableAPIError) and too_slow(exc)):
        return None
    after = sizer.after_failure(size)
    if after is None:
        return None
    new, halved = after
    if halved:
        log.warning("page_size_halved", size=size, new_size=new, error=str(exc), **where)
    else:
        log.info("page_asked_again_smaller", size=size, new_size=new, error=str(exc),
                 detail="another read halved the page size meanwhile", **where)
    return new


def count_answered(sizer: pagination.PageSize) -> None:
    """Count a list page answered (`PageSize.answered`); log when that raises a halved page
    size again."""
    size = sizer.current
    raised = sizer.answered()
    if raised is not None:
        log.info("page_size_raised", size=size, new_size=raised,
                 after_answers=sizer.grow_after,
                 detail="answered pages in a row since it was halved")


def distinct_count(ids: array[int]) -> int:
    """How many distinct values `ids` holds, with at most ~DISTINCT_CHUNK of them in a set at
    once: the ids are split by value (id modulo the number of parts) and each part is counted
    in its own set. One set of a whole 1M-entry month window (~40,000 ids, ~4 MB with its int
    objects) times four windows finishing together was the peak RSS growing with N (issue #7)."""
    parts = -(-len(ids) // DISTINCT_CHUNK)
    if parts <= 1:
        return len(set(ids))
    return sum(len({i for i in ids if i % parts == r}) for r in range(parts))


@dataclass
class WindowResult:
    """Outcome of reading one window: ids seen, rows written, Kantata's count, error if any.

    `ids` holds every id read, in order, repeats included, as 8-byte machine integers (a set of
    Python ints costs ~80 bytes per id: 3 MB per busy month window); `distinct` is their count
    without repeats, computed once the window has been read."""

    window: Window
    ids: array[int] = field(default_factory=lambda: array("q"))
    distinct: int = 0
    upserted: int = 0
    rejected: int = 0
    pages: int = 0
    remote_count: int | None = None
    error: str | None = None
    #: the read stopped because Kantata does not honour `page` (`PageIgnoredError`, now or
    #: earlier in the run): read the window by ranges that fit one page (`read_narrowed`)
    narrow: bool = False
    #: what page 1 of this read held: (rows listed, Kantata's count, page size served)
    first: tuple[int, int, int] | None = None
    #: entries a page listed without including them, even after the client's retries
    #: (`pagination.MISSING_FROM_KEYED`): dead letters, and the window is not done
    missing: int = 0

    def count_rejected(self, page: Page) -> None:
        """Count a stored page's dead letters, and among them its listed entries that came
        without their object."""
        if page.rejected:
            self.rejected += len(page.rejected)
            self.missing += sum(r.reason == pagination.MISSING_FROM_KEYED
                                for r in page.rejected)

    def settle(self) -> WindowResult:
        """This result as the window's outcome: a window that lost listed entries to a page
        that did not include them fails (their dead letters stay until a read stores them),
        so the next run reads it again instead of counting it done without them."""
        if self.missing and self.error is None:
            self.error = (f"window {self.window.param}: {self.missing} listed entr"
                          f"{'y' if self.missing == 1 else 'ies'} came without its object "
                          f"({pagination.MISSING_FROM_KEYED}) after every retry; recorded as "
                          "dead letters, the window is read again next run")
        return self


def _base_params(deps: Deps, *, include: bool = True) -> dict[str, str]:
    params = {"per_page": str(deps.page_size.current)}
    if include and deps.settings.sideload:
        params["include"] = INCLUDE
    return params


class SideSeen:
    """What one run has committed of the side-loaded objects (`store_landed` records each
    page's once its transaction commits), so that later pages neither write them again nor
    record a side object's dead letter twice: each object's raw JSON text by (kind, id), the
    same objects' ids by kind as `str(id)` spells them (`committed`), and the raw text of every
    side object it rejected. `SideLoads.for_page` checks a typed page's ~270-440 references
    as the body spells them (`EntryRefs.side_texts`: sets by kind, no int built; as (kind,
    id) pairs that was ~10 % of the client's CPU at 1,000,000 entries, issue #26); a page
    whose spellings are not all there (an odd one such as "007", or an object not yet
    committed) and any other page are checked by (kind, id) in `raw`."""

    def __init__(self) -> None:
        self.raw: dict[pagination.SideRef, str] = {}
        self.committed: dict[str, set[str]] = {kind: set() for kind in pagination.SIDE_KINDS}
        self._rejected: dict[int, str] = {}  # hash of the raw text -> raw text

    def unseen(self, side: Sequence[SideObject]) -> tuple[SideObject, ...]:
        """The objects of `side` not committed by this run with the same raw JSON."""
        # C-level iteration: each object's committed raw text, compared with its own
        # (identical strings compare by identity)
        return tuple(compress(side, map(ne, map(self.raw.get, map(_SIDE_KEY, side)),
                                        map(_SIDE_RAW, side))))

    def has_all(self, entries: Sequence[TimeEntry]) -> bool:
        """Whether this run has committed every side object `entries` reference."""
        if isinstance(entries, EntryRefs) and all(
                spelled <= self.committed[kind] for kind, spelled in entries.side_texts):
            return True
        raw = self.raw
        return all((kind, i) in raw for kind, ids in pagination.side_ids(entries) for i in ids)

    def new_rejects(self, rejected: Sequence[Rejected]) -> tuple[Rejected, ...]:
        """`rejected` without the side objects' dead letters this run has recorded already (a
        side object that cannot be stored comes again with every page that includes it:
        recorded and counted once per run)."""
        return tuple(r for r in rejected
                     if not _side_reject(r) or self._rejected.get(hash(r.raw)) != r.raw)

    def commit(self, side: Sequence[SideObject], rejected: Sequence[Rejected] = ()) -> None:
        """Record `side` and the side objects' dead letters among `rejected` as committed
        (their page's transaction has)."""
        for o in side:
            self.raw[(o.kind, o.id)] = o.raw
            self.committed[o.kind].add(str(o.id))
        self._rejected.update((hash(r.raw), r.raw) for r in rejected if _side_reject(r))


class SideLoads:
    """The side-loaded workspaces, users, stories and roles of one backfill run, each asked of
    Kantata once (issue #16): the backfill's pages come without `include=`, and for the objects
    a page references that this run has not loaded yet, the entries that reference them are
    asked for again by id (`only=`, at most 200 ids, with `include=`; api-notes §2 Includes,
    §12 `only` probes with the visibility overrides). A 200k-entry backfill side-loaded ~270
    objects on each of its 1,000 pages for ~500 distinct ones.

    `for_page(page)` returns `page` with `side` set to every object its entries reference
    (those another window is loading are waited for) that an earlier page of this run has
    not committed (`side_seen`, the run's `SideSeen`, filled by `store_landed`), so each
    page's transaction still holds its entries' objects unless an earlier one committed them,
    as with a side-load on every page; without `side_seen`, every object they reference.
    Objects Kantata does not return (an invisible workspace) are remembered as absent and not
    asked for again this run. Raises what `KantataClient.list_page` raises; a failed
    request's objects are asked for again by the next page that needs them."""

    ATTEMPTS = 3

    def __init__(self, deps: Deps, priority: str = "pull", *,
                 side_seen: SideSeen | None = None) -> None:
        self.deps, self.priority, self.side_seen = deps, priority, side_seen
        self.objects: dict[pagination.SideRef, SideObject] = {}
        self.absent: set[pagination.SideRef] = set()
        self.inflight: dict[pagination.SideRef, asyncio.Future[None]] = {}
        self.requests = 0

    async def _load(self, ids: list[int], covered: set[pagination.SideRef]) -> Page:
        """One `only=` request; returns its side-loaded part. An object is known absent only
        when an entry that references it came back without it: an entry deleted or moved
        since its page was read says nothing, and the next page that needs the object asks
        again."""
        params = {"only": ",".join(map(str, ids)), "include": INCLUDE}  # `only` is unpaged
        self.requests += 1
        full = await self.deps.client.list_page(params, priority=self.priority)  # type: ignore[arg-type]
        got = pagination.side_part(full)
        for o in got.side:
            self.objects[(o.kind, o.id)] = o
        answered = pagination.side_refs(full.entries)
        self.absent.update(ref for ref in covered
                           if ref in answered and ref not in self.objects)
        return got

    async def for_page(self, page: Page) -> Page:
        if not page.listed():
            return page
        if self.side_seen is not None and not page.side and self.side_seen.has_all(
                page.listed()):
            return page  # the common case: every object it references committed this run
        for o in page.side:  # a page asked for with include= (`KantataClient.include_fks`)
            self.objects[(o.kind, o.id)] = o
        needed = pagination.side_refs(page.listed())
        rejected, altered = list(page.rejected), list(page.altered)
        asked: set[pagination.SideRef] = set()  # by this page: not asked again for it
        for _ in range(self.ATTEMPTS):
            # one-argument differences iterate the page's ~270 references, not every object
            # the run knows (`set - dict.keys()` walks the whole dict)
            if not needed.difference(self.objects).difference(self.absent).difference(asked):
                break  # the common case once the run has seen the account's objects
            known = self.objects.keys() | self.absent | self.inflight.keys() | asked
            chunks, covered = pagination.sideload_plan(page.listed(), known)
            asked |= covered
            waits = {self.inflight[r] for r in needed if r in self.inflight}
            if chunks:
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                for ref in covered:
                    self.inflight[ref] = done
                try:
                    for chunk in chunks:
                        got = await self._load(chunk, covered)
                        rejected += got.rejected
                        altered += got.altered
                finally:
                    for ref in covered:
                        self.inflight.pop(ref, None)
                    done.set_result(None)
            if waits:  # else another window's request failed: ask for its objects ourselves
                # asyncio.wait, not gather: cancelling this page must not cancel the futures
                # other windows' requests will resolve
                await asyncio.wait(waits)
        # set and map operations, not a loop: ~270 references a page, on every page, nearly
        # all committed by an earlier page; an object this page brought itself (include=)
        # may be newer than the one committed, so `store_landed` compares its raw text
        if self.side_seen is not None:
            needed = needed.difference(self.side_seen.raw).union(
                needed.intersection((o.kind, o.id) for o in page.side))
        side = tuple(map(self.objects.__getitem__, needed.intersection(self.objects)))
        if not side and not page.side and len(rejected) == len(page.rejected) \
                and len(altered) == len(page.altered):
            return page
        return replace(page, side=side, rejected=tuple(rejected), altered=tuple(altered))


async def store_page(deps: Deps, page: Page, stats: RunStats, *, purpose: str | None = None,
                     window: Window | None = None, page_no: int = 0,
                     watermark: datetime | None = None, side_seen: SideSeen | None = None,
                     page_size: int | None = None) -> int:
    """Write one page in one transaction: entries, side-loads, dead letters, and the checkpoint
    (window page counter or watermark). Returns rows changed. A deadlock or serialization
    failure (concurrent windows touching the same side-loaded rows) retries the transaction.
    With `side_seen` (one per run), side-loaded objects already stored by this run with
    the same raw JSON are not written again (every page repeats most of them). A page whose
    entries PostgreSQL types (`Page.body`) is stored as `store_landed` says."""
    return (await store_landed(deps, page, stats, purpose=purpose, window=window,
                               page_no=page_no, watermark=watermark, side_seen=side_seen,
                               page_size=page_size))[0]


def careful_page(page: Page, *, referenced_side: bool) -> Page:
    """`page` (one with `body`, `pagination.decode_page_fast`) decoded by the careful path,
    for when PostgreSQL's checks refused one of its entries: its entries, their rejects and
    alterations, with the side-loaded objects, side rejects and alterations `page` already had
    (from its own include= and from `SideLoads`). `referenced_side`: `page.side` holds what
    its entries reference (`SideLoads.for_page`), so only what the accepted entries reference
    stays, as if the careful path had asked. Raises MalformedResponseError like
    `decode_page` (not expected: `decode_page_fast` read the same bytes)."""
    assert page.body is not None
    full = pagination.decode_page(page.body)
    side = page.side
    if referenced_side:
        needed = pagination.side_refs(full.entries)
        side = tuple(o for o in side if (o.kind, o.id) in needed)
    return replace(page, body=None, refs=(), entries=full.entries, side=side,
                   rejected=page.rejected + tuple(r for r in full.rejected
                                                  if not _side_reject(r)),
                   altered=page.altered + tuple(a for a in full.altered
                                                if a.kind == "time_entries"))


async def store_landed(deps: Deps, page: Page, stats: RunStats, *,
                       purpose: str | None = None, window: Window | None = None,
                       page_no: int = 0, watermark: datetime | None = None,
                       side_seen: SideSeen | None = None, page_size: int | None = None,
                       referenced_side: bool = False) -> tuple[int, Page]:
    """`store_page`, returning also the page as stored: `page` itself, or for a page with
    `body` whose entries PostgreSQL's checks refused (`store.store_page_body`), the same page
    through the careful path (`careful_page`), written in the same transaction; its entries,
    rejects and alterations are what counts. `referenced_side` as for `careful_page`."""
    side = page.side if side_seen is None else side_seen.unseen(page.side)
    if side_seen is not None and page.rejected:
        page = replace(page, rejected=side_seen.new_rejects(page.rejected))
    if not (page.listed() or side or page.rejected or watermark is not None
            or (purpose is not None and window is not None)):
        deps.made_progress()  # an empty incremental page: nothing to write, no transaction
        return 0, page
    sent = page
    refused = False  # PostgreSQL's cast refused a value of the right shape: careful path
    while True:
        try:
            changed, page, side = await _store_transaction(
                deps, sent, stats, side, purpose=purpose, window=window, page_no=page_no,
                watermark=watermark, side_seen=side_seen, page_size=page_size,
                referenced_side=referenced_side, refused=refused)
            break
        except asyncpg.DataError as exc:
            if sent.body is None or refused:
                raise
            log.info("page_body_refused", purpose=purpose, page=page_no, error=str(exc))
            refused = True
    if page is not sent:
        stats.details["pages_stored_carefully"] = \
            stats.details.get("pages_stored_carefully", 0) + 1
    if side_seen is not None:
        side_seen.commit(side, page.rejected)
    stats.pages += 1
    stats.rows_upserted += changed
    stats.rows_rejected += len(page.rejected)
    deps.metrics.rows_upserted.labels(stats.job).inc(changed)
    deps.metrics.rows_rejected.labels(stats.job).inc(len(page.rejected))
    for r in page.rejected:
        log.warning("record_rejected", entry_id=r.entry_id, reason=r.reason)
    note_altered(deps, stats, page.altered)
    deps.made_progress()
    return changed, page


async def _store_transaction(deps: Deps, sent: Page, stats: RunStats,
                             side: tuple[SideObject, ...], *, purpose: str | None,
                             window: Window | None, page_no: int, watermark: datetime | None,
                             side_seen: SideSeen | None, page_size: int | None,
                             referenced_side: bool, refused: bool
                             ) -> tuple[int, Page, tuple[SideObject, ...]]:
    """The transaction of `store_landed` (retried on deadlocks): (rows changed, the page as
    stored, the side-loaded objects written). `refused`: take the careful path for a page
    with `body` at once. The common page (one statement) is tried once before the retry loop
    and enters it only after a deadlock or serialization failure: tenacity's loop cost ~28 µs
    a page (1,000,000 entries: 5,000 pages)."""
    learned_via = "backfill" if purpose == "backfill" else "pull"
    common = (sent.body is not None and not refused and not side and not sent.rejected
              and watermark is None and bool(sent.listed()))

    async def store_common() -> int:
        # the common page: one statement, one round trip (store.store_page_body)
        assert sent.body is not None
        async with deps.pool.acquire() as conn:
            return await store.store_page_body(
                conn, sent.body, learned_via=learned_via, history=deps.settings.history,
                checkpoint=None if purpose is None or window is None else
                (purpose, window, page_no, len(sent.listed()), page_size),
                listed_since=stats.listed_since)

    if common:
        try:
            return await store_common(), sent, side
        except TRANSIENT_DB_ERRORS as exc:
            log.info("page_store_retried", purpose=purpose, page=page_no,
                     error=f"{type(exc).__name__}: {exc}")
    async for attempt in AsyncRetrying(stop=stop_after_attempt(4), reraise=True,
                                       wait=wait_random(0.01, 0.2),
                                       retry=retry_if_exception_type(TRANSIENT_DB_ERRORS)):
        with attempt:
            if common:
                return await store_common(), sent, side
            async with deps.pool.acquire() as conn, conn.transaction():
                page = sent
                if page.listed():
                    await store.set_write_context(conn, learned_via,
                                                  history=deps.settings.history,
                                                  listed_since=stats.listed_since)
                if page.body is not None and not refused:
                    changed = await store.store_page_body(conn, page.body,
                                                          learned_via=learned_via,
                                                          history=deps.settings.history,
                                                          listed_since=stats.listed_since)
                else:
                    if page.body is not None:  # refused by PostgreSQL's cast: careful path
                        page = careful_page(page, referenced_side=referenced_side)
                        side = page.side if side_seen is None else \
                            side_seen.unseen(page.side)
                        log.info("page_stored_carefully", purpose=purpose,
                                 page=page_no, entries=len(page.entries),
                                 rejected=len(page.rejected))
                    changed = await store.upsert_entries(conn, page.entries)
                if side:
                    await store.upsert_side(conn, side)
                if page.rejected:
                    await store.record_rejects(conn, page.rejected, stats.run_id)
                if purpose is not None and window is not None:
                    await store.checkpoint_window(conn, purpose, window, page_no,
                                                  len(page.listed()), page_size)
                if watermark is not None:
                    await store.set_watermark(conn, watermark)
            return changed, page, side
    raise AssertionError("unreachable")  # pragma: no cover


_SIDE_KEY, _SIDE_RAW = attrgetter("kind", "id"), attrgetter("raw")


def _side_reject(r: Rejected) -> bool:
    """A reject of a side-loaded object (not of an entry): `side_part`'s rule."""
    return r.entry_id is None and r.reason.split(":", 1)[0] in pagination.SIDE_KINDS


def note_altered(deps: Deps, stats: RunStats, altered: Sequence[Altered]) -> None:
    """Count and log records stored with text made storable (after their transaction)."""
    if not altered:
        return
    stats.rows_altered += len(altered)
    stats.details["rows_altered"] = stats.rows_altered
    deps.metrics.rows_altered.labels(stats.job).inc(len(altered))
    for a in altered:
        log.warning("record_altered", kind=a.kind, id=a.id, fields=list(a.fields),
                    reasons=list(a.reasons))


class _Resize(Exception):
    """A list page timed out or failed with a 5xx at a size that can come down
    (`pagination.PageSize`): read on at the new size."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class EntrySlots:
    """Entries in flight (asked for, not yet stored) across the windows of a process, at most
    `capacity`: memory follows entries, not pages (issue #24). A page of n entries holds
    min(n, capacity) slots from before its request until it is stored, so 5,000-entry pages
    travel two at a time while 200-entry pages keep every window busy."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> int:
        """Wait for and take `n` slots (capped at `capacity`); returns what was taken."""
        n = min(n, self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= n)
            self.free -= n
        return n

    async def release(self, n: int) -> None:
        async with self._changed:
            self.free += n
            self._changed.notify_all()


#: Whether the backfill lets PostgreSQL type its pages (issue #26): Python checks each entry's
#: shape (`pagination.decode_page_fast`, ~1.3 ms a page of 200) and PostgreSQL casts and
#: upserts the body in one statement (`store.store_page_body`), instead of Python typing every
#: entry (~2 ms) and asyncpg encoding them as records. Measured at 200,000 entries: client CPU
#: 7.2-8.1 s -> 5.2-5.5 s, PostgreSQL CPU 6.2-6.8 s -> 5.8 s. An earlier version whose
#: statement checked every value and whose Python scanned the body with a regular expression
#: (1.5 ms a page) was slower than the careful path. Both paths store the same
#: (tests/integration/test_dual_path.py).
PAGES_TYPED_BY_POSTGRES = True

#: Entries in flight per process (`EntrySlots`): two pages of 5,000, about 40 MB decoded.
ENTRIES_IN_FLIGHT = 5_000


def entry_slots(deps: Deps) -> EntrySlots:
    """The process's `EntrySlots` (one per Deps, made on first use)."""
    if deps.entry_slots is None:
        deps.entry_slots = EntrySlots(ENTRIES_IN_FLIGHT)
    return deps.entry_slots  # type: ignore[no-any-return]


async def read_window(deps: Deps, w: Window, stats: RunStats, *, purpose: str = "backfill",
                      first_page: int = 1, first_size: int | None = None,
                      priority: str = "pull", side_seen: SideSeen | None = None,
                      side_loads: SideLoads | None = None, fast: bool | None = None
                      ) -> WindowResult:
    """Read every page of `w` (oldest first), storing each; re-read the window when Kantata's
    final count shows entries were skipped. Errors are returned in the result, not raised.
    Page n+1 is requested while page n is stored (at most two requests in flight per window,
    and `entry_slots` entries in flight in all). Pages ask for `deps.page_size` entries
    (halved after a page times out or fails with a 5xx) and are numbered by the size Kantata
    answers with (`meta.page_size`); a resume (`first_page` > 1) asks for `first_size`, the
    size its stored pages were read with. `side_seen` as for `store_page`; with `side_loads`
    the pages are asked for without `include=` and their objects come from it (once per
    run). `fast`: PostgreSQL types and stores each page from its body (issue #26,
    `pagination.decode_page_fast`, `store.store_page_body`), a page its checks refuse taking
    the careful path (`store_landed`); None: `PAGES_TYPED_BY_POSTGRES`."""
    sizer, slots = deps.page_size, entry_slots(deps)
    fast = PAGES_TYPED_BY_POSTGRES if fast is None else fast

    async def get(page_no: int, size: int) -> tuple[Page, int]:
        params = {**_base_params(deps, include=side_loads is None), "per_page": str(size),
                  "date_performed_between": w.param, "order": "date_performed:asc",
                  "page": str(page_no)}
        held = await slots.acquire(min(size, sizer.expected))
        shrinkable = size > sizer.floor
        try:
            page = await deps.client.list_page(  # type: ignore[arg-type]
                params, priority=priority, shrinkable=shrinkable, fast=fast)
            count_answered(sizer)
            page = page if side_loads is None else await side_loads.for_page(page)
        except BaseException as exc:
            await slots.release(held)
            new = smaller_page(sizer, size, exc, window=w.param, page=page_no)
            if new is not None:
                raise _Resize(new) from None
            raise
        return page, held

    def fetch(page_no: int, size: int) -> asyncio.Task[tuple[Page, int]]:
        return asyncio.ensure_future(get(page_no, size))

    res = WindowResult(w)
    previous: tuple[int, int, int] | None = None  # (ids digest, distinct, count) of the last read
    attempt = restarts = 0
    resumed = first_page > 1 and first_size is not None and first_size <= sizer.current
    while attempt < MAX_WINDOW_READS:
        attempt += 1
        res = WindowResult(w)
        page_no = first_page if resumed else 1
        asked = first_size if resumed and first_size else sizer.current
        served = asked  # entries a page holds as Kantata serves them (`meta.page_size`)
        assumed = (page_no - 1) * served  # entries of pages done before a resume
        resumed = restart = False
        guard = pagination.PageGuard(f"window {w.param}")
        ahead: asyncio.Task[tuple[Page, int]] | None = fetch(page_no, asked)
        try:
            while ahead is not None:
                try:
                    page, held = await ahead
                except _Resize as rs:
                    ahead = None
                    nxt = pagination.PageSize.resume_page((page_no - 1) * served, rs.size)
                    if nxt is None:  # the new size does not divide what was read: restart
                        restart = True
                        break
                    page_no, asked, served = nxt, rs.size, rs.size
                    ahead = fetch(page_no, asked)
                    continue
                ahead = None
                try:
                    guard.check(page_no, page)
                    if page.page_size and page.page_size != served:
                        if page_no > 1:  # numbered by another size: this page does not start
                            log.warning(  # where the read stopped; read it again from page 1
                                "page_size_changed", window=w.param, page=page_no,
                                served=page.page_size, numbered_by=served)
                            restart = True
                            break
                        served = page.page_size
                    if page.page_size:
                        sizer.served(page.page_size)
                    if page_no == 1:
                        res.first = (len(page.result_ids), page.count, served)
                    if not page.result_ids:
                        res.remote_count = page.count
                        break
                    full = len(page.result_ids) >= page.page_size
                    # a count that says nothing (negative) leaves paging to full pages alone;
                    # a usable one ends it where it says (a server that ignores `page` sends
                    # a `meta.page_count` of its own, issue #27)
                    more = full and (not pagination.count_usable(page.count)
                                     or (page_no < page.page_count
                                         and page_no * served < page.count))
                    if more and not deps.should_stop() and not stats.paging.ignored:
                        # the next page travels while this one is stored (checkpoints in order)
                        ahead = fetch(page_no + 1, asked)
                    changed, page = await store_landed(
                        deps, page, stats, purpose=purpose, window=w, page_no=page_no,
                        side_seen=side_seen, page_size=served,
                        referenced_side=side_loads is not None)
                    res.upserted += changed
                finally:
                    await slots.release(held)
                res.ids.extend(page.listed_ids())
                res.count_rejected(page)
                res.pages += 1
                res.remote_count = page.count
                # stored: let it go before waiting for the next one, which may wait for
                # entry slots other windows hold (each window keeping its last page alive
                # was 4 pages of 5,000 entries in memory at once)
                del page
                if not more:
                    break
                if stats.paging.ignored:  # learnt by this window or another: no page 2
                    res.narrow = True
                    res.distinct = distinct_count(res.ids)
                    return res
                page_no += 1
                if deps.should_stop():
                    res.error = "stopped before the window finished"
                    res.distinct = distinct_count(res.ids)
                    return res
        except STOPS_THE_RUN:
            raise  # token refused or Kantata unreachable: no other window can succeed either
        except PageIgnoredError as exc:
            note_page_ignored(stats, str(exc))
            res.narrow = True
            res.distinct = distinct_count(res.ids)
            return res
        except (RetriableError, FatalError) as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            res.distinct = distinct_count(res.ids)
            return res
        finally:
            if ahead is not None:  # stopped or failed while a page was on its way: drop it
                ahead.cancel()
                done = (await asyncio.gather(ahead, return_exceptions=True))[0]
                if isinstance(done, tuple):  # it arrived all the same: its slots go back
                    await slots.release(done[1])
        if restart:
            restarts += 1
            if restarts > MAX_SIZE_RESTARTS:
                res.error = (f"window {w.param}: Kantata kept changing the page size it serves "
                             f"({restarts} restarts); will retry next run")
                res.distinct = distinct_count(res.ids)
                return res
            attempt -= 1  # not a re-read for a moved window: the same read at another size
            continue
        res.distinct = distinct_count(res.ids)
        seen = res.distinct + res.rejected + assumed
        usable = res.remote_count is None or pagination.count_usable(res.remote_count)
        if usable and (res.remote_count is None or seen >= res.remote_count):
            return res.settle()
        digest = (hash(res.ids.tobytes()), res.distinct, res.remote_count or 0)
        if digest == previous and assumed == 0:
            # two whole reads listed the same entries in the same order: nothing changed, so
            # Kantata's count, not the data, is off; the listing is what there is
            log.warning("window_count_disagrees", window=w.param, listed=res.distinct,
                        rejected=res.rejected, remote_count=res.remote_count,
                        detail=_count_note(res.remote_count, seen))
            if not usable:
                res.remote_count = None  # never store a count that is not one
            return res.settle()
        previous = digest if assumed == 0 else None
        if usable:
            log.warning("window_moved_while_reading", window=w.param, seen=seen,
                        remote_count=res.remote_count, attempt=attempt)
    res.error = (f"window {w.param} kept changing while read ({res.distinct} of "
                 f"{res.remote_count} entries); will retry next run")
    return res


def note_page_ignored(stats: RunStats | None, reason: str,
                      trust: pagination.PagingTrust | None = None) -> None:
    """Remember for the run that Kantata does not honour `page` (`RunStats.paging`, or `trust`
    for a read outside a run: verify); the first time, say so once as a warning naming the
    contract point and the fallback."""
    trust = trust if trust is not None else stats.paging if stats is not None else None
    if trust is not None and trust.distrust(reason):
        log.warning("kantata_page_ignored", contract=pagination.PAGE_CONTRACT_POINT,
                    evidence=reason,
                    fallback="each read asks page 1 only; a range whose page 1 does not hold "
                             "all of it is read by halving its date_performed range down to "
                             "single days (issue #27)")
        if stats is not None:
            stats.details["page_ignored"] = reason


async def _page_one(deps: Deps, params: dict[str, str], label: str, *, priority: str,
                    side_loads: SideLoads | None) -> Page:
    """Page 1 of one query of a narrowed read, at the process's page size: halved and asked
    again after a timeout or 5xx while it can come down (`pagination.PageSize`); `label`
    names the query in the log. Holds `entry_slots` while it travels. Raises what
    `KantataClient.list_page` raises."""
    sizer, slots = deps.page_size, entry_slots(deps)
    size = sizer.current
    while True:
        held = await slots.acquire(size)
        try:
            page = await deps.client.list_page(  # type: ignore[arg-type]
                {**params, "per_page": str(size), "page": "1"}, priority=priority,
                shrinkable=size > sizer.floor)
            count_answered(sizer)
            if page.result_ids and page.page_number not in (None, 1):
                raise PagingError(f"{label}, page 1: Kantata answered page "
                                  f"{page.page_number} instead; read stopped")
            return page if side_loads is None else await side_loads.for_page(page)
        except RetriableAPIError as exc:
            new = smaller_page(sizer, size, exc, query=label)
            if new is None:
                raise
            size = new
        finally:
            await slots.release(held)


async def read_narrowed(deps: Deps, res: WindowResult, stats: RunStats, *,
                        purpose: str = "backfill", priority: str = "pull",
                        side_seen: SideSeen | None = None,
                        side_loads: SideLoads | None = None) -> WindowResult:
    """Read `res.window` through page 1 only (Kantata does not honour `page`, issue #27):
    `windows.Narrowing` halves its `date_performed_between` range until each range's page 1
    holds all of it, and each such page is stored as it comes (one transaction each). `res`
    is the read that stopped (what it stored stays counted; its page 1, when it read one, is
    not asked again). Returns `res` completed: no error when every range was read
    completely (the window is then done like one read page by page), else an error naming
    each day whose entries one page cannot hold (those days' page 1 is stored all the same)
    or the request that failed. The window's page checkpoint is reset first: a run that stops
    midway reads the window again from its page 1 (stored pages are not lost, only read
    again). Raises what `errors.STOPS_THE_RUN` names (token refused, Kantata unreachable)."""
    w = res.window
    plan = Narrowing(w, deps.page_size.expected)
    res.narrow = False
    if res.first is not None:
        listed, count, size = res.first
        plan.answer(w, listed=listed, count=count, page_size=size)
        res.remote_count = count
    async with deps.pool.acquire() as conn:  # this run holds the window: taken again
        await store.start_window(conn, purpose, w, restart=True, run_id=stats.run_id)
    base = {**_base_params(deps, include=side_loads is None), "order": "date_performed:asc"}
    try:
        while (r := plan.next()) is not None:
            if deps.should_stop():
                res.error = "stopped before the window finished"
                break
            page = await _page_one(deps, {**base, "date_performed_between": r.param},
                                   f"window {w.param}, range {r.param}", priority=priority,
                                   side_loads=side_loads)
            if r == w:
                res.remote_count = page.count
            plan.answer(r, listed=len(page.result_ids), count=page.count,
                        page_size=page.page_size)
            res.upserted += await store_page(deps, page, stats, side_seen=side_seen)
            res.ids.extend([e.id for e in page.entries])
            res.count_rejected(page)
            res.pages += 1
            del page
    except STOPS_THE_RUN:
        raise
    except (RetriableError, FatalError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    res.distinct = distinct_count(res.ids)
    if res.remote_count is not None and not pagination.count_usable(res.remote_count):
        res.remote_count = None  # never store a count that is not one
    stats.details["windows_narrowed"] = stats.details.get("windows_narrowed", 0) + 1
    stats.details["narrowed_requests"] = (stats.details.get("narrowed_requests", 0)
                                          + plan.requests)
    if plan.too_big:  # one warning a window, however many days
        log.warning("window_days_too_big", window=w.param, days=len(plan.too_big),
                    first=plan.too_big[0].day.isoformat(),
                    last=plan.too_big[-1].day.isoformat(),
                    page_size=plan.too_big[0].page_size)
    if plan.too_big and res.error is None:
        res.error = (describe_too_big(plan.too_big)
                     + f"; window {w.param} not complete, its other days are stored")
    log.info("window_narrowed", window=w.param, requests=plan.requests,
             ranges=plan.complete_ranges, skipped_empty=plan.skipped,
             days_too_big=len(plan.too_big), entries=res.distinct, error=res.error)
    return res.settle()


def _count_note(count: int | None, seen: int) -> str:
    """Why a window whose count disagrees is taken as read, for the log."""
    if count is not None and not pagination.count_usable(count):
        return (f"Kantata's count is {count}, not a number of entries; two reads listed the "
                f"same {seen} entries, taken as the window's content")
    return (f"Kantata's count ({count}) disagrees with the {seen} entries it listed, the same "
            "in two reads over unchanged data; the listing is taken as the window's content")


class _Progress:
    """Percentage in the logs; a progress bar on stderr when it is a TTY."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty()

    def step(self, w: Window, rows: int) -> None:
        self.done += 1
        pct = 100.0 * self.done / max(self.total, 1)
        log.info("backfill_progress", window=w.param, rows=rows, windows_done=self.done,
                 windows_total=self.total, percent=round(pct, 1))
        if self.tty:
            bar = "#" * int(pct // 4)
            sys.stderr.write(f"\rbackfill [{bar:<25}] {pct:5.1f}% {self.done}/{self.total}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


async def give_back(deps: Deps, purpose: str, w: Window, reason: str) -> None:
    """`store.give_back_window` for a window whose read stopped, even while the task is
    being cancelled (the write is shielded); a database error is logged, and the next run
    start gives the window back anyway (`store.close_dead_runs`)."""
    async def write() -> None:
        async with deps.pool.acquire() as conn:
            await store.give_back_window(conn, purpose, w, reason)

    try:
        await asyncio.shield(write())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("window_not_given_back", window=w.param, error=f"{type(exc).__name__}: {exc}")


async def _skip_windows_before_first_entry(deps: Deps, todo: list[Window],
                                           stats: RunStats) -> list[Window]:
    """One request (the earliest entry of the whole range, `per_page=1`) tells which windows
    end before any entry: they are recorded `done` with 0 rows instead of costing a request
    each (the default range starts 10 years back). Safe: an entry created later with an old
    date is read by the incremental pull, whose watermark predates this backfill, like any
    other change. Returns the windows still to read; all of them when the probe tells
    nothing (an error, or a first record that could not be decoded)."""
    params = {"per_page": "1", "page": "1", "order": "date_performed:asc",
              "date_performed_between": Window(todo[0].start, todo[-1].end).param}
    try:
        page = await deps.client.list_page(params)
    except STOPS_THE_RUN:
        raise
    except (RetriableError, MalformedResponseError):
        return todo
    if page.rejected:
        return todo
    first = page.entries[0].date_performed if page.entries else None
    if first is None and page.count:
        return todo
    empty = [w for w in todo if first is None or w.end < first]
    if not empty:
        return todo
    async with deps.pool.acquire() as conn, conn.transaction():
        for w in empty:
            if await store.start_window(conn, "backfill", w, restart=True,
                                        run_id=stats.run_id) is not None:
                await store.finish_window(conn, "backfill", w, status="done", remote_count=0)
    stats.details["windows_known_empty"] = len(empty)
    log.info("backfill_windows_known_empty", windows=len(empty),
             first_date_performed=first.isoformat() if first else None)
    return [w for w in todo if w not in set(empty)]


async def _defer_indexes(deps: Deps, stats: RunStats) -> list[str]:
    """Drop the mirror's secondary indexes while this backfill loads an EMPTY mirror
    (`mirror_indexes.defer_mirror_indexes`, SYNCD_DEFER_INDEXES); their build is the
    backfill's last step. Returns the names dropped ([] when the mirror has rows)."""
    if not deps.settings.defer_indexes:
        return []
    async with deps.pool.acquire() as conn:
        names = await mirror_indexes.defer_mirror_indexes(conn, stats.run_id)
    if names:
        stats.details["indexes_deferred"] = names
    return names


async def _build_indexes(deps: Deps, stats: RunStats) -> None:
    """Build the indexes this backfill deferred when it ends, however it ends: done, windows
    failed, an error, a stop, or a cancellation (a deadline: it is delivered before this runs,
    so the build runs to its end unless the run is cancelled again); with them, those of runs
    no longer live (`mirror_indexes.build_deferred_indexes`). A build that fails or is
    cancelled is logged; the rows of `syncd.deferred_indexes` stay, and the next job start
    builds them (`runs.job_run`)."""
    try:
        await mirror_indexes.build_deferred_indexes(deps.pool, mine=stats.run_id,
                                                    reason="backfill ended")
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError,
            asyncio.CancelledError) as exc:
        log.warning("mirror_indexes_not_built", error=f"{type(exc).__name__}: {exc}",
                    detail="syncd.deferred_indexes keeps them: the next job start builds them")
        if isinstance(exc, asyncio.CancelledError):
            raise


async def backfill(deps: Deps, since: date, until: date, *, force: bool = False,
                   stats: RunStats) -> list[WindowResult]:
    """Read all windows between `since` and `until` (inclusive). Windows already `done` are
    skipped unless `force`; a `running` window resumes at its next page. Returns one result
    per window read, its `ids` emptied once counted (memory stays flat)."""
    windows = month_windows(since, until, deps.settings.backfill_window_months)
    async with deps.pool.acquire() as conn:
        states = await store.window_states(conn, "backfill")
        todo = [w for w in windows if force or states.get(w, {}).get("status") != "done"]
        await store.ensure_windows(conn, "backfill", [w for w in todo if w not in states])
    if not force and len(todo) > 1:
        todo = await _skip_windows_before_first_entry(deps, todo, stats)
    progress = _Progress(len(todo))
    sem = asyncio.Semaphore(deps.settings.window_concurrency)
    results: list[WindowResult] = []
    held: list[Window] = []  # being read by another live run: not read twice
    side_seen = SideSeen()
    side_loads = SideLoads(deps, side_seen=side_seen) if deps.settings.sideload else None

    async def one(w: Window) -> None:
        async with sem:
            if deps.should_stop():
                return
            # 'pending' with pages done: given back by a run that stopped (give_back_window)
            resume = not force and states.get(w, {}).get("status") in ("running", "pending")
            try:
                async with deps.pool.acquire() as conn:
                    started = await store.start_window(conn, "backfill", w,
                                                       restart=not resume, run_id=stats.run_id)
                if started is None:
                    held.append(w)
                    return
                pages_done, size = started
                res = await read_window(deps, w, stats, first_page=pages_done + 1,
                                        first_size=size, side_seen=side_seen,
                                        side_loads=side_loads)
                if res.narrow:  # Kantata does not honour `page`: ranges that fit one page
                    res = await read_narrowed(deps, res, stats, side_seen=side_seen,
                                              side_loads=side_loads)
            except BaseException as exc:  # the run stops (STOPS_THE_RUN, SIGTERM, deadline)
                await give_back(deps, "backfill", w, f"interrupted: {interruption(exc)}")
                raise
            if res.error and deps.should_stop():
                # the next run resumes at its next page
                await give_back(deps, "backfill", w, "interrupted: stopped by shutdown")
                return
            status = "failed" if res.error else "done"
            async with deps.pool.acquire() as conn:
                await store.finish_window(conn, "backfill", w, status=status,
                                          remote_count=res.remote_count, error=res.error)
                # the run's figures so far: `syncd status` of a long backfill (or of one
                # killed midway) shows what it did, not zeros until it ends
                await store.note_run_progress(conn, stats.run_id, pages=stats.pages,
                                              requests=stats.requests,
                                              rows_upserted=stats.rows_upserted,
                                              rows_rejected=stats.rows_rejected)
            if res.error:
                stats.errors.append(f"{w.param}: {res.error}")
                log.warning("window_failed", window=w.param, error=res.error)
            progress.step(w, res.distinct)
            res.ids = array("q")  # counted; keeping every window's ids would hold them all
            results.append(res)

    deferred = await _defer_indexes(deps, stats) if todo else []
    try:
        async with asyncio.TaskGroup() as tg:  # STOPS_THE_RUN cancels the other windows
            for w in todo:
                tg.create_task(one(w))
    except BaseExceptionGroup as group:  # report the cause itself, not a group of one
        raise group.exceptions[0] from None
    finally:
        if deferred:  # whatever ended the backfill: never leave the mirror without them
            await _build_indexes(deps, stats)
    if not deferred and todo:
        # another process's backfill deferred them and was killed while this one read: its
        # indexes are built now (its run is not live), not at the next job start (a trial)
        await _build_indexes(deps, stats)
    stats.details["windows"] = len(todo)
    if side_loads is not None:
        stats.details["side_load_requests"] = side_loads.requests
    if held:
        held.sort()
        stats.details["windows_read_by_another_run"] = len(held)
        log.warning("windows_left_to_another_run", windows=len(held),
                    first=held[0].param, last=held[-1].param,
                    detail="another syncd run is reading them, or read them meanwhile: "
                           "not read twice (`syncd status` shows it)")
    unfinished = len(todo) - len(results) - len(held)
    if unfinished and deps.should_stop():
        stats.stopped = (f"stopped before the backfill finished: {unfinished} of "
                         f"{len(todo)} windows left to read (resumed by the next run)")
    return results


#: The dates a crowded second of the incremental pass is narrowed over (issue #27): every date
#: `pagination` accepts (an entry dated outside is rejected in any case).
ALL_DATES = Window(date(pagination.MIN_YEAR, 1, 1), date(pagination.MAX_YEAR, 12, 31))


async def _narrow_second(deps: Deps, req: cursor.PullRequest, stats: RunStats,
                         side_seen: SideSeen) -> tuple[int, bool]:
    """Read the crowded second of `req` (`updated_after`..`updated_before`, more entries than
    one page) through page 1 only, Kantata not honouring `page` (issue #27): the second's
    entries are narrowed by `date_performed_between` (`windows.Narrowing` over `ALL_DATES`)
    until each range's page 1 holds all of it; each page is stored as it comes, without moving
    the watermark. Returns (requests, finished); finished is False when shutdown stopped it.
    Raises PagingError naming each day whose entries changed in that second one page cannot
    hold (the watermark then stays before the second: nothing is skipped, and the next pass
    tries that second again), and what `KantataClient.list_page` raises."""
    assert req.updated_before is not None
    second = req.updated_after + cursor.SECOND
    plan = Narrowing(ALL_DATES, deps.page_size.current)
    base = {**_base_params(deps), "order": "updated_at:asc",
            "updated_after": req.updated_after.isoformat(),
            "updated_before": req.updated_before.isoformat()}
    label = f"incremental pass, entries updated at {second.isoformat()}"
    while (r := plan.next()) is not None:
        if deps.should_stop():
            return plan.requests, False
        page = await _page_one(deps, {**base, "date_performed_between": r.param},
                               f"{label}, dates {r.param}", priority="pull", side_loads=None)
        plan.answer(r, listed=len(page.result_ids), count=page.count,
                    page_size=page.page_size)
        await store_page(deps, page, stats, side_seen=side_seen)
    stats.details["seconds_narrowed"] = stats.details.get("seconds_narrowed", 0) + 1
    log.info("second_narrowed", second=second.isoformat(), requests=plan.requests,
             ranges=plan.complete_ranges, days_too_big=len(plan.too_big))
    if plan.too_big:
        raise PagingError(
            f"{label}: " + describe_too_big(plan.too_big)
            + f"; the watermark stays before {second.isoformat()} (nothing after it is "
            "skipped; the next pass reads that second again)")
    return plan.requests, True


def _query_label(query: tuple[datetime, datetime | None]) -> str:
    return "incremental pass, updated_after " + "..".join(
        t.isoformat() for t in query if t is not None)


async def incremental(deps: Deps, started: datetime, stats: RunStats,
                      watermark: datetime | None = None,
                      settled: datetime | None = None) -> int:
    """One incremental pass from the watermark and its settled point (read from the database
    unless `watermark` is given); returns pages read. `started` is when the pass began
    (aware, syncd's clock). Raises RetriableError / FatalError when a page cannot be read (the
    watermark then stays where it was). A pass that reads to the end moves `settled`
    (`cursor.settled_through`), so the next one skips what cannot change any more."""
    wm = watermark
    if wm is None:
        async with deps.pool.acquire() as conn:
            wm, settled = await store.get_cursor(conn)
    if wm is None:
        raise FatalError("no watermark yet: run a backfill first (syncd sync)")
    overlap = timedelta(seconds=deps.settings.overlap)
    req: cursor.PullRequest | None = cursor.first_request(wm, overlap, settled)
    pages = 0
    side_seen = SideSeen()
    guards: dict[tuple[datetime, datetime | None], pagination.PageGuard] = {}
    while req is not None:
        if req.updated_before is not None and req.page > 1 and stats.paging.ignored:
            # a crowded second past its page 1, and Kantata does not honour `page`
            asked, finished = await _narrow_second(deps, req, stats, side_seen)
            pages += asked
            if not finished:
                return pages
            second = req.updated_after + cursor.SECOND
            mark = min(second, started)
            async with deps.pool.acquire() as conn:
                await store.set_watermark(conn, mark)
            wm = max(wm, mark)
            deps.metrics.watermark_lag.set(max(0.0, (started - mark).total_seconds()))
            req = cursor.PullRequest(updated_after=second)
            continue
        params = {**_base_params(deps), "order": "updated_at:asc", "page": str(req.page),
                  "updated_after": req.updated_after.isoformat()}
        if req.updated_before is not None:
            params["updated_before"] = req.updated_before.isoformat()
        sizer = deps.page_size
        asked = int(params["per_page"])
        try:
            page = await deps.client.list_page(params, shrinkable=asked > sizer.floor)
        except RetriableAPIError as exc:
            if smaller_page(sizer, asked, exc, query="incremental") is None:
                raise
            if req.updated_before is not None:  # numbered inside a second: start it again
                req = cursor.PullRequest(req.updated_after, req.updated_before, page=1)
            continue
        count_answered(sizer)
        if page.page_size and params["per_page"] == str(sizer.current):
            sizer.served(page.page_size)  # what Kantata serves: sizes reconciliation's reads
        pages += 1
        query = (req.updated_after, req.updated_before)
        if query not in guards:
            guards[query] = pagination.PageGuard(_query_label(query))
        try:
            guards[query].check(req.page, page)
        except PageIgnoredError as exc:  # raised past page 1 only: inside a crowded second
            note_page_ignored(stats, str(exc))
            continue  # not stored; the second is read by narrowing (top of the loop)
        # a count that says nothing (negative): a full page means more may follow
        count = page.count if pagination.count_usable(page.count) else sys.maxsize
        try:
            step = cursor.next_step(req, [e.updated_at for e in page.entries],
                                    page.page_size, count, listed=len(page.result_ids),
                                    ids=page.result_ids)
        except ValueError as exc:  # the server broke the paging contract: retry next run
            raise PagingError(f"incremental paging stopped: {exc}") from None
        nxt = step.next
        if nxt is not None and nxt.stand_in_ids is not None and nxt.page == 2:
            # this page stands in for page 1 of its crowded second: a page 2 listing the same
            # ids is a server ignoring `page` (issue #27), not the second's next entries
            second_query = (nxt.updated_after, nxt.updated_before)
            guards.setdefault(second_query, pagination.PageGuard(_query_label(second_query))
                              ).seen(1, page.result_ids)
        mark = min(step.complete_through, started) if step.complete_through else None
        await store_page(deps, page, stats, watermark=mark, side_seen=side_seen)
        if mark is not None:
            wm = max(wm, mark)
            deps.metrics.watermark_lag.set(max(0.0, (started - mark).total_seconds()))
        req = step.next
        if deps.should_stop() and req is not None:
            stats.stopped = "stopped before the incremental pass finished (resumed by the " \
                            "next run)"
            return pages
    point = cursor.settled_through(wm, started, overlap, settled)
    if point is not None:  # read to the end: nothing at or before `point` can still appear
        async with deps.pool.acquire() as conn:
            await store.set_settled(conn, point)
    return pages


async def sync_once(deps: Deps, *, since: date | None = None, until: date | None = None,
                    now: datetime | None = None) -> RunStats:
    """One pull cycle: backfill what is not done (or exactly `since`..`until` when given), then
    an incremental pass. Returns the run's figures; raises on a fatal error."""
    now = now or datetime.now(UTC)
    job = "backfill" if since or until else "pull"
    default_lo, default_hi = deps.settings.backfill_range(now.date())
    lo, hi = since or default_lo, until or default_hi
    if hi < lo:  # refused before anything is recorded
        given = [f"--{name} {day}" for name, day in (("since", since), ("until", until))
                 if day is not None]
        cause = " and ".join(given) or f"SYNCD_BACKFILL_START, {deps.settings.backfill_start}"
        raise ValueError(f"nothing to backfill: {lo} is after {hi} (check {cause})")
    async with job_run(deps, job) as stats:
        async with deps.pool.acquire() as conn:
            wm, settled = await store.get_cursor(conn)
            if wm is None:  # first run: anything changed from now on is caught incrementally
                wm = cursor.initial_watermark(now, timedelta(seconds=deps.settings.overlap))
                await store.set_watermark(conn, wm)
        await backfill(deps, lo, hi, force=since is not None or until is not None, stats=stats)
        if not deps.should_stop():
            # the watermark only moves inside this run's own transactions: no need to re-read
            stats.details["incremental_pages"] = await incremental(deps, now, stats, wm,
                                                                   settled)
        elif stats.stopped is None:
            stats.stopped = "stopped before the incremental pass (resumed by the next run)"
    return stats


def windows_for(deps: Deps, today: date) -> Sequence[Window]:
    """The backfill windows configured for `today`."""
    return month_windows(*deps.settings.backfill_range(today),
                         deps.settings.backfill_window_months)
