"""The push use case: drain `syncd.outbox` to Kantata once, reconciling every row.

One drain claims batches (≤ `push_batch_size` rows, leased) until nothing is claimable or the
process is stopping. Per batch: creates go out as bulk POSTs of ≤ 100 items, each stamped with
an external reference (its correlation key); rows whose earlier send had an unknown outcome are
looked up first and only the missing ones are sent again. Updates are checked against
Kantata's current version (one `only=` read per ≤ 200 ids) and PUT one by one with bounded
concurrency. Deletes go out as bulk DELETEs of ≤ 100 ids; an already-absent target is done.
Bulk refusals are mapped to items (or bisected) by `batching.Bisection`. Every success updates
the mirror at once from Kantata's answer. Decisions live in `batching`; this module only
carries them out (Kantata: `kantata.py`; database: `outbox.py`, `store.py`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import orjson
import structlog

from syncd import batching, outbox, pagination, runs, store
from syncd.batching import MAX_BULK, MAX_IDS_PER_READ, Bisection, Outcome, OutboxRow, Tally
from syncd.errors import (STOPS_THE_RUN, FatalAPIError, InvalidRecord, RetriableError,
                          SyncdError, redact)
from syncd.kantata import ApiResponse, classify, error_messages, setting_hint
from syncd.models import TimeEntry
from syncd.runs import Deps

__all__ = ["LOOKUP_SECONDS", "SETTLE_SECONDS", "PushReport", "default_owner", "push_once"]

log = structlog.get_logger(__name__)

#: Kantata ends every request after 3 minutes (api-notes §10). A create sent without a clear
#: answer (no answer, or a 5xx that a gateway may have produced while Kantata kept working) is
#: re-sent no sooner than this after its send, so a request still running there cannot be
#: missed by the lookup and duplicated by the re-send.
SETTLE_SECONDS = 180.0
#: ...but it is looked up (by its external reference) this soon: a create that landed, the
#: usual case of a lost answer, is done within seconds. Not found yet, the row waits until
#: SETTLE_SECONDS after its send for the final lookup and the re-send (`_lookup_sent`).
LOOKUP_SECONDS = 2.0
#: Seconds a failed or cancelled run may spend giving its leases back; after that they expire
#: on their own (SYNCD_OUTBOX_LEASE).
RELEASE_TIMEOUT = 5.0
#: Statuses that mean the request or configuration is wrong for every row, not one item, by
#: method: the token (401), the method (405), and for the bulk create the URL (404; a PUT's
#: or a delete's 404 is about its entries).
_WHOLE_REFUSALS = {"POST": (401, 404, 405), "PUT": (401, 405), "DELETE": (401, 405)}


def default_owner() -> str:
    """A lease owner name unique to this process: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class PushReport:
    """Figures of one drain: batches and rows claimed, outcomes by (op, outcome) where outcome
    is done | failed | conflict | retry, Kantata requests this drain sent, mirror rows it
    changed in committed transactions (upserted or marked deleted), and the outbox counts by
    status after the drain."""

    owner: str
    run_id: uuid.UUID | None = None
    batches: int = 0
    claimed: int = 0
    reclaimed: int = 0
    requests: int = 0
    mirror_rows: int = 0
    tally: Tally = field(default_factory=Tally)
    counts_after: dict[str, int] = field(default_factory=dict)
    #: seconds until the earliest pending row is due (None: nothing pending); the daemon wakes
    #: the push then instead of at its next poll, so a lost answer is looked up in seconds
    next_due_seconds: float | None = None
    #: when (aware) the earliest pending row is next tried (None: nothing pending)
    next_due_at: datetime | None = None

    @property
    def done(self) -> int:
        return self.tally.total("done")

    @property
    def failed(self) -> int:
        return self.tally.total("failed")

    @property
    def conflict(self) -> int:
        return self.tally.total("conflict")

    @property
    def retry(self) -> int:
        return self.tally.total("retry")

    def as_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "batches": self.batches, "claimed": self.claimed,
                "reclaimed": self.reclaimed, "requests": self.requests,
                "mirror_rows": self.mirror_rows,
                "outcomes": {f"{op}:{o}": n for (op, o), n in sorted(self.tally.counts.items())},
                "outbox_after": self.counts_after,
                "next_attempt_at": self.next_due_at.isoformat() if self.next_due_at else None}

    def summary(self) -> str:
        """One line: the drain's figures, the outbox after it and, when rows wait for a
        retry, when the earliest is next tried (UTC, and in how many seconds)."""
        after = ", ".join(f"{k}={v}" for k, v in self.counts_after.items() if v) or "empty"
        waiting = ""
        if self.next_due_at is not None and self.counts_after.get("pending"):
            when = self.next_due_at.astimezone(UTC).isoformat(timespec="seconds")
            waiting = (f"; next attempt of a waiting row at {when} (in "
                       f"{self.next_due_seconds:.0f} s: the daemon tries it then, or run "
                       "`syncd push` again after it)" if self.next_due_seconds else
                       "; a pending row is due now" + (
                           " (held back by an earlier open row of its entry, or claimed by "
                           "another process)" if self.counts_after.get("in_flight") else ""))
        return (f"push {self.run_id}: {self.batches} batches, {self.claimed} rows: "
                f"{self.done} done, {self.failed} failed, {self.conflict} conflict, "
                f"{self.retry} to retry later; {self.requests} Kantata requests; "
                f"outbox now: {after}{waiting}")


@dataclass
class _Batch:
    """One claimed batch being pushed: where to write and what to count."""

    deps: Deps
    batch_id: uuid.UUID
    now: datetime | None
    report: PushReport

    @property
    def service(self) -> str:
        return self.deps.settings.external_reference_service_name

    async def mark_sent(self, rows: Sequence[OutboxRow]) -> bool:
        """Commit sent_at for `rows`; False when this claim no longer holds all of them."""
        async with self.deps.pool.acquire() as conn:
            held = await outbox.mark_sent(conn, [r.id for r in rows], self.batch_id,
                                          lease_seconds=self.deps.settings.outbox_lease,
                                          now=self.now)
        if len(held) < len(rows):
            log.warning("outbox_lease_lost", batch=str(self.batch_id),
                        rows=sorted({r.id for r in rows} - held))
            return False
        return True

    async def finish(self, pairs: Sequence[tuple[OutboxRow, Outcome]], *,
                     entries: Sequence[TimeEntry] = (), deleted: Sequence[int] = (),
                     rebase: Sequence[tuple[int, int, datetime | None, datetime]] = ()) -> None:
        """Apply the outcomes and the mirror changes in one transaction."""
        if not pairs:
            return
        s = self.deps.settings
        decisions = [batching.decide(r, o, max_attempts=s.outbox_max_attempts,
                                     backoff_base=s.backoff_base, backoff_cap=s.backoff_cap)
                     for r, o in pairs]
        written = 0  # mirror rows this transaction changes: counted once it commits
        async with self.deps.pool.acquire() as conn, conn.transaction():
            held = await outbox.finish_rows(conn, self.batch_id, decisions, now=self.now)
            if entries or deleted:
                await store.set_write_context(conn, "push", history=s.history)
            if entries:
                written += await store.upsert_entries(conn, entries)
            if deleted:
                written += await store.mark_deleted(conn, deleted, self.now)
            await outbox.rebase_pending(conn, [m for m in rebase if m[0] in held])
        self.report.mirror_rows += written
        for (row, _), d in zip(pairs, decisions, strict=True):
            if d.row_id not in held:
                continue
            self.report.tally.add(row.op, d.status)
            outcome = "retry" if d.status == "pending" else d.status
            self.deps.metrics.outbox_pushed.labels(row.op, outcome).inc()
            if d.status in ("failed", "conflict"):
                log.warning("outbox_row_" + d.status, row=row.id, op=row.op,
                            entry_id=d.entry_id or row.entry_id, error=d.last_error)
        self.deps.made_progress()


def _entry(raw: dict[str, Any] | None, entry_id: int | None = None) -> TimeEntry | None:
    """`raw` typed for the mirror; `entry_id` is its key in the answer (the id when the
    object has no `id` field). None, logged, when it cannot be a mirror row."""
    if raw is None:
        return None
    try:
        return pagination.parse_time_entry(raw, key=None if entry_id is None else str(entry_id))
    except InvalidRecord as exc:
        log.warning("push_answer_entry_invalid", entry_id=exc.entry_id, reason=exc.reason)
        return None


def _transient(exc: RetriableError, *, sent: bool) -> Outcome:
    """A temporary failure; `sent`: a create went out and its outcome is unknown, so the
    retry looks it up first, LOOKUP_SECONDS later (and re-sends only once Kantata cannot
    still be working on it, `_lookup_sent`).
    A request the client knows never left (`exc.sent` False: the connection was refused) or
    that Kantata refused unprocessed (429) has no unknown outcome: the row is retried after
    its back-off, without a lookup."""
    # a 429 is Kantata's rate limiter refusing the request ("simply retry your request",
    # api-notes §10): as certain as a refused connection that nothing of it was applied
    reached = getattr(exc, "sent", True) and getattr(exc, "status", None) != 429
    settle = LOOKUP_SECONDS if sent and reached else 0.0
    return Outcome(kind="transient", message=str(exc),
                   retry_after=getattr(exc, "retry_after", None), min_delay=settle,
                   sent=reached, throttled=getattr(exc, "status", None) == 429)


async def _refused(b: _Batch, resp: ApiResponse, rows: Sequence[OutboxRow], method: str,
                   path: str) -> NoReturn:
    """Kantata refused the request `method path` as a whole (401 for the token, 405, or, for
    the bulk create, a 404: the URL; `_WHOLE_REFUSALS`), so nothing of it was applied
    (api-notes §9): `rows` (every row the request or its bisection still held) go back to
    pending with the reason and the setting to check, their attempt and `sent_at` given back
    (no lookup, no settle wait: a trial saw a create held 3 minutes after a 401), and the
    error is raised (AuthError or FatalAPIError), which stops the push."""
    try:
        classify(resp.status, resp.body, request_id=resp.request_id,
                 hint=setting_hint(resp.status, method, b.deps.client.where(path)))
    except SyncdError as exc:
        await b.finish([(r, Outcome(kind="not_sent", message=(
            f"not applied: {exc}; sent again when the push runs again"))) for r in rows])
        raise
    raise AssertionError(f"HTTP {resp.status} is not a refusal")  # pragma: no cover


# ------------------------------------------------------------------------ creates
async def _lookup_sent(b: _Batch, rows: list[OutboxRow]) -> list[OutboxRow]:
    """Rows whose earlier send had an unknown outcome: find them in Kantata by correlation key;
    finish the found ones; return the rows that must (still) be sent.

    A row not found yet whose send is less than SETTLE_SECONDS old is not sent: the request may
    still be running at Kantata (api-notes §10, requests end after 3 minutes), so it waits,
    its attempt given back, until SETTLE_SECONDS after the send, when the final lookup decides
    (`batching.settle_wait`). Never a duplicate: a create is re-sent only when a lookup made
    after Kantata must have finished the first request did not find it."""
    unsure = [r for r in rows if r.sent_at is not None]
    if not unsure:
        return rows
    try:
        page, by_ref = await b.deps.client.find_refs(b.service,
                                                     [r.correlation_key for r in unsure])
    except RetriableError as exc:
        await b.finish([(r, _transient(exc, sent=False)) for r in unsure])
        return [r for r in rows if r.sent_at is None]
    if b.now is not None:
        now = b.now
    else:
        async with b.deps.pool.acquire() as conn:
            now = await outbox.db_now(conn)
    live = {e.id: e for e in page.entries}
    found: list[tuple[OutboxRow, Outcome]] = []
    waiting: list[tuple[OutboxRow, Outcome]] = []
    entries: list[TimeEntry] = []
    for r in unsure:
        ids = [i for i in by_ref.get(r.correlation_key, []) if i in live]
        if not ids:
            wait = batching.settle_wait(r.sent_at, now, SETTLE_SECONDS)
            if wait > 0:
                cause = _unknown_cause(r.last_error)
                waiting.append((r, Outcome(kind="unresolved", min_delay=wait, message=(
                    f"outcome of this create unknown ({cause}); Kantata does not list it yet "
                    f"under its external reference; looked up again {wait:.0f} s from now, "
                    "when the request cannot still be running there, and sent again only if "
                    "it is still not found"))))
            continue
        if len(ids) > 1:
            log.error("outbox_duplicate_create", row=r.id, entry_ids=ids)
        raw = batching.strip_include_only(orjson.loads(live[ids[0]].raw))
        entry = _entry(raw, ids[0])
        entries += [entry] if entry else []
        found.append((r, Outcome(kind="ok", result="found_existing", entry_id=ids[0],
                                 remote=raw, remote_updated_at=live[ids[0]].updated_at)))
    await b.finish(found + waiting, entries=entries)
    settled = {r.id for r, _ in found} | {r.id for r, _ in waiting}
    log.info("outbox_outcomes_looked_up", rows=len(unsure), found=len(found),
             waiting=len(waiting))
    return [r for r in rows if r.id not in settled]


#: Prefix of a waiting row's message; its cause is kept across lookups (not re-wrapped).
_UNKNOWN_PREFIX = "outcome of this create unknown ("


def _unknown_cause(last_error: str | None) -> str:
    """Why a sent create's outcome is unknown, from the row's last error, kept as first
    recorded (a later lookup must not turn "the answer did not list it" into "lost")."""
    if not last_error:
        return "its answer was lost"
    if last_error.startswith(_UNKNOWN_PREFIX):
        inner = last_error[len(_UNKNOWN_PREFIX):]
        depth, end = 1, len(inner)
        for i, ch in enumerate(inner):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                end = i
                break
        return inner[:end]
    return last_error


async def _refuse_unmirrorable(b: _Batch, rows: list[OutboxRow]) -> list[OutboxRow]:
    """Fail rows whose result the mirror could never hold (batching.mirror_refusal) without
    sending them; return the others."""
    refused = [(r, Outcome(kind="rejected", message=m)) for r in rows
               if (m := batching.mirror_refusal(r.payload)) is not None]
    if refused:
        await b.finish(refused)
    gone = {r.id for r, _ in refused}
    return [r for r in rows if r.id not in gone]


async def _push_creates(b: _Batch, rows: list[OutboxRow]) -> None:
    if rows:
        rows = await _lookup_sent(b, rows)
        rows = await _refuse_unmirrorable(b, rows)
    by_id = {r.id: r for r in rows}
    bis: Bisection[int] = Bisection(list(by_id), MAX_BULK)
    reported: set[int] = set()
    while (req := bis.next_request()) is not None:
        req_rows = [by_id[i] for i in req]
        if b.deps.should_stop() or not await b.mark_sent(req_rows):
            await b.finish([(by_id[i], Outcome(kind="not_sent")) for i in bis.abandon()])
            return
        try:
            resp = await b.deps.client.create_entries(batching.create_items(req_rows, b.service))
        except RetriableError as exc:  # no answer, 429/5xx, or an unreadable answer
            await b.finish([(by_id[i], _transient(exc, sent=True)) for i in bis.abandon()])
            return
        if 200 <= resp.status < 300:
            bis.accepted()
            await _finish_created(b, req_rows, resp)
            continue
        if resp.status in _WHOLE_REFUSALS["POST"]:
            await _refused(b, resp, [by_id[i] for i in bis.abandon()], "POST", "/time_entries")
        errs = batching.map_create_errors(resp.body, len(req))
        bis.rejected({req[i]: f"HTTP {resp.status}: {m}" for i, m in errs.mapped.items()},
                     _unmapped(resp, errs.unmapped), errors=len(batching.error_list(resp.body)))
        await _finish_rejected(b, bis, by_id, reported)
    await _finish_rejected(b, bis, by_id, reported)


async def _finish_created(b: _Batch, rows: list[OutboxRow], resp: ApiResponse) -> None:
    """Record a bulk create Kantata accepted: each row matched to its own entry
    (`batching.match_created`: by external reference, else by unambiguous content) is done
    with that entry's id; a row that cannot be told from the answer keeps its unknown outcome
    and is looked up by its external reference LOOKUP_SECONDS later (`_lookup_sent`), never
    re-sent blindly and never guessed."""
    match = batching.match_created(resp.body, rows, b.service)
    pairs: list[tuple[OutboxRow, Outcome]] = []
    entries: list[TimeEntry] = []
    for r in rows:
        if r.id not in match.matched:
            log.warning("outbox_create_unmatched", row=r.id, reason=match.unknown[r.id])
            pairs.append((r, Outcome(kind="transient", message=match.unknown[r.id],
                                     min_delay=LOOKUP_SECONDS)))
            continue
        eid, raw = match.matched[r.id]
        entry = _entry(raw, eid)
        entries += [entry] if entry else []
        pairs.append((r, Outcome(kind="ok", result="created", entry_id=eid, remote=raw,
                                 remote_updated_at=entry.updated_at if entry else None)))
    await b.finish(pairs, entries=entries)


def _unmapped(resp: ApiResponse, msgs: Sequence[str]) -> list[str]:
    return [f"HTTP {resp.status}: {m}" for m in (msgs or (error_messages(resp.body),))]


async def _finish_rejected(b: _Batch, bis: Bisection[int], by_key: dict[int, OutboxRow],
                           reported: set[int]) -> None:
    """Finish the items the bisection has rejected since the last call."""
    new = {k: m for k, m in bis.rejected_items.items() if k not in reported}
    reported.update(new)
    await b.finish([(by_key[k], Outcome(kind="rejected", message=m)) for k, m in new.items()])


# ------------------------------------------------------------------------ updates
def _concurrency(deps: Deps) -> int:
    """PUTs in flight: push_concurrency, never more than HTTP connections or pool slots."""
    return max(1, min(deps.settings.push_concurrency, deps.settings.max_connections,
                      deps.pool.get_max_size()))


async def _push_updates(b: _Batch, rows: list[OutboxRow]) -> None:
    rows = await _refuse_unmirrorable(b, rows) if rows else rows
    if not rows:
        return
    remote: dict[int, TimeEntry] = {}
    unreadable: dict[int, str] = {}
    try:
        for part in batching.chunk([r.entry_id or 0 for r in rows], MAX_IDS_PER_READ):
            page = await b.deps.client.get_by_ids(part)
            remote.update({e.id: e for e in page.entries})
            unreadable.update({int(x.entry_id): x.reason for x in page.rejected
                               if x.entry_id and x.entry_id.isdigit()})
    except RetriableError as exc:
        await b.finish([(r, _transient(exc, sent=False)) for r in rows])
        return
    settled: list[tuple[OutboxRow, Outcome]] = []
    entries: list[TimeEntry] = []
    rebase: list[tuple[int, int, datetime | None, datetime]] = []
    to_push: list[tuple[OutboxRow, batching.UpdateCheck]] = []
    policy = b.deps.settings.conflict_policy
    for r in rows:
        eid = r.entry_id or 0
        if eid in unreadable:
            settled.append((r, Outcome(kind="transient", message=(
                f"Kantata's entry {eid} could not be read: {unreadable[eid]}"))))
            continue
        e = remote.get(eid)
        raw = orjson.loads(e.raw) if e else None
        chk = batching.check_update(r, raw, e.updated_at if e else None, policy)
        if chk.action == "push":
            to_push.append((r, chk))
        elif chk.action == "done" and e is not None:
            entries.append(e)
            rebase.append((r.id, eid, r.base_updated_at, e.updated_at))
            settled.append((r, Outcome(kind="ok", result="already_applied", remote=raw,
                                       remote_updated_at=e.updated_at)))
        elif chk.action == "conflict" and e is not None:
            settled.append((r, Outcome(kind="conflict", message=chk.reason, remote=raw,
                                       remote_updated_at=e.updated_at)))
        else:
            settled.append((r, Outcome(kind="rejected", message=chk.reason)))
    await b.finish(settled, entries=entries, rebase=rebase)
    slots = asyncio.Semaphore(_concurrency(b.deps))

    async def one(r: OutboxRow, chk: batching.UpdateCheck) -> None:
        async with slots:
            await _put(b, r, chk)

    results = await asyncio.gather(*(one(r, c) for r, c in to_push), return_exceptions=True)
    for res in results:
        if isinstance(res, BaseException):
            raise res


async def _put(b: _Batch, r: OutboxRow, chk: batching.UpdateCheck) -> None:
    if b.deps.should_stop() or not await b.mark_sent([r]):
        await b.finish([(r, Outcome(kind="not_sent"))])
        return
    eid = r.entry_id or 0
    try:
        resp = await b.deps.client.update_entry(eid, r.payload or {})
    except RetriableError as exc:
        # no settle needed: the next attempt reads the entry and sees whether it was applied
        await b.finish([(r, _transient(exc, sent=False))])
        return
    if 200 <= resp.status < 300:
        raw = batching.entries_by_id(resp.body).get(eid)
        entry = _entry(raw, eid)
        if raw is None or entry is None:
            await b.finish([(r, Outcome(kind="transient", message=(
                "Kantata's answer to the update did not contain the entry")))])
            return
        result = "local_wins" if chk.local_wins else "updated"
        await b.finish([(r, Outcome(kind="ok", result=result, remote=raw,
                                    remote_updated_at=entry.updated_at))],
                       entries=[entry], rebase=[(r.id, eid, r.base_updated_at, entry.updated_at)])
        return
    if resp.status == 404:
        msg = (f"time entry {eid} not found in Kantata (deleted there, or never existed): "
               f"{error_messages(resp.body)}")
    else:
        if resp.status in _WHOLE_REFUSALS["PUT"]:
            await _refused(b, resp, [r], "PUT", f"/time_entries/{eid}")
        msg = error_messages(resp.body)
    if chk.local_wins:
        msg += f" (pushed over a remote change: {chk.reason})"
    await b.finish([(r, Outcome(kind="rejected", message=f"HTTP {resp.status}: {msg}"))])


# ------------------------------------------------------------------------ deletes
async def _push_deletes(b: _Batch, rows: list[OutboxRow]) -> None:
    by_entry = {r.entry_id or 0: r for r in rows}
    bis: Bisection[int] = Bisection(list(by_entry), MAX_BULK)
    reported: set[int] = set()
    while (req := bis.next_request()) is not None:
        req_rows = [by_entry[i] for i in req]
        if b.deps.should_stop() or not await b.mark_sent(req_rows):
            await b.finish([(by_entry[i], Outcome(kind="not_sent")) for i in bis.abandon()])
            return
        try:
            resp = await b.deps.client.delete_entries(req)
        except RetriableError as exc:  # no answer, 429/5xx, or an unreadable answer
            # a delete is safe to repeat: a target already gone ends done
            await b.finish([(by_entry[i], _transient(exc, sent=False)) for i in bis.abandon()])
            return
        if 200 <= resp.status < 300:
            bis.accepted()
            await b.finish([(r, Outcome(kind="ok", result="deleted")) for r in req_rows],
                           deleted=req)
            continue
        if resp.status in _WHOLE_REFUSALS["DELETE"]:
            await _refused(b, resp, [by_entry[i] for i in bis.abandon()], "DELETE",
                           "/time_entries")
        errs = batching.map_delete_errors(resp.body, req)
        try:  # which targets are still there? (Kantata refuses unknown ids as errors too)
            page = await b.deps.client.get_by_ids(req)
        except RetriableError as exc:
            await b.finish([(by_entry[i], _transient(exc, sent=False)) for i in bis.abandon()])
            return
        present = {e.id for e in page.entries} | {
            int(x.entry_id) for x in page.rejected if x.entry_id and x.entry_id.isdigit()}
        absent = [i for i in req if i not in present]
        await b.finish([(by_entry[i], Outcome(kind="ok", result="already_absent"))
                        for i in absent], deleted=absent)
        bis.rejected({i: f"HTTP {resp.status}: {m}" for i, m in errs.mapped.items()
                      if i in present}, _unmapped(resp, errs.unmapped), settled=absent,
                     errors=len(batching.error_list(resp.body)))
        await _finish_rejected(b, bis, by_entry, reported)
    await _finish_rejected(b, bis, by_entry, reported)


# ------------------------------------------------------------------------ the drain
async def _publish_counts(deps: Deps, report: PushReport, now: datetime | None) -> None:
    try:
        async with deps.pool.acquire() as conn:
            snap = await outbox.status_counts(conn, now=now)
    except Exception as exc:  # noqa: BLE001 - metrics must never fail the run
        log.warning("outbox_counts_failed", error=type(exc).__name__)
        return
    report.counts_after = snap["counts"]
    report.next_due_seconds = snap["next_due_seconds"]
    if report.next_due_seconds is not None:
        report.next_due_at = (now or datetime.now(UTC)) + timedelta(
            seconds=report.next_due_seconds)
    for status, n in snap["counts"].items():
        deps.metrics.outbox_rows.labels(status).set(n)
    deps.metrics.outbox_oldest_pending.set(snap["oldest_pending_seconds"] or 0.0)


async def _release_claimed(deps: Deps, owner: str, batches: Sequence[uuid.UUID],
                           now: datetime | None, reason: str | None = None) -> None:
    """Give back at once the rows this run claimed and has not finished (the run failed, or
    was cancelled at its deadline or by a shutdown), instead of leaving them in_flight until
    their lease expires. A row whose request may have reached Kantata keeps sent_at and waits
    LOOKUP_SECONDS, so it is looked up, never re-sent blindly; a row not sent gets `reason`
    as its last error when given (what stopped the push: a refused token). Shielded from a further
    cancellation and bounded by RELEASE_TIMEOUT; after a failure the next drain of the same
    `owner` gives them back (`push_once`), else their lease expires."""
    if not batches:
        return

    async def release() -> int:
        async with deps.pool.acquire() as conn:
            return await outbox.release_leases(conn, owner, now=now,
                                               settle_seconds=LOOKUP_SECONDS, batch_ids=batches,
                                               unsent_reason=reason)

    task = asyncio.ensure_future(asyncio.wait_for(release(), RELEASE_TIMEOUT))
    # cancelled again while waiting: the release goes on alone; its outcome is still consumed
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        n = await asyncio.shield(task)
    except Exception as exc:  # noqa: BLE001 - the run's own error or cancellation matters more
        log.warning("outbox_release_failed", owner=owner, error=f"{type(exc).__name__}: {exc}")
        return
    log.info("outbox_leases_released", owner=owner, rows=n)


async def push_once(deps: Deps, *, owner: str | None = None,
                    now: datetime | None = None) -> PushReport:
    """Drain the outbox once: reclaim expired leases, then claim and push batches until
    nothing is claimable or `deps.should_stop()`. Runs inside `runs.job_run(deps, "push")`.

    `owner` names this process's leases (default `default_owner()`; the daemon passes its own
    and calls `outbox.release_leases(conn, owner)` on shutdown). A given `owner` runs one drain
    at a time: rows still in_flight under it were left by an earlier drain whose release
    failed (the database was down when it ended), and are given back first, as that release
    would have, instead of waiting out their lease (SYNCD_OUTBOX_LEASE). `now` (aware)
    replaces the database clock for claims and back-off (tests). Rows end done / failed /
    conflict, or pending with a back-off (429, 5xx, timeouts). Raises AuthError / FatalAPIError when Kantata
    refuses every request (bad token, wrong base URL) after giving this drain's leases back;
    database errors and cancellation (the daemon's run deadline, shutdown) propagate likewise,
    also after the leases of this drain's unfinished rows were given back.
    """
    own = owner is not None
    owner = owner or default_owner()
    report = PushReport(owner=owner)
    s = deps.settings
    batches: list[uuid.UUID] = []  # this run's claims, named before each claim is made
    async with runs.job_run(deps, "push") as stats:
        report.run_id = stats.run_id
        try:
            async with deps.pool.acquire() as conn:
                if own:
                    left = await outbox.release_leases(conn, owner, now=now,
                                                       settle_seconds=LOOKUP_SECONDS)
                    if left:
                        log.warning("outbox_leases_released", owner=owner, rows=left,
                                    reason="left in flight by an earlier drain of this process")
                rec = await outbox.reclaim_expired(conn, max_attempts=s.outbox_max_attempts,
                                                   now=now, settle_seconds=LOOKUP_SECONDS)
                # a drain pushes what was due when it started: a row backing off now waits for
                # the next drain instead of being retried in a tight loop
                due_by = now or await outbox.db_now(conn)
            report.reclaimed = rec["pending"]
            if rec["pending"] or rec["failed"]:
                log.warning("outbox_leases_reclaimed", **rec)
            drained = False  # nothing claimable was left: the drain did its work
            while not deps.should_stop():
                batches.append(uuid.uuid4())
                async with deps.pool.acquire() as conn:
                    claim = await outbox.claim_batch(conn, owner=owner, limit=s.push_batch_size,
                                                     lease_seconds=s.outbox_lease, now=now,
                                                     due_by=due_by, batch_id=batches[-1])
                report.claimed += len(claim.refused)
                for row_id, op, reason in claim.refused:  # dead-lettered by the claim
                    report.tally.add(op, "failed")
                    log.warning("outbox_row_refused", row=row_id, op=op, reason=reason)
                if not claim.rows:
                    if claim.refused:
                        continue  # the rows behind them are claimed next
                    drained = True
                    break
                report.batches += 1
                report.claimed += len(claim.rows)
                groups = batching.by_op(claim.rows)
                log.info("outbox_batch_claimed", batch=str(claim.batch_id),
                         **{op: len(rs) for op, rs in groups.items()})
                b = _Batch(deps, claim.batch_id, now, report)
                await _push_creates(b, groups["create"])
                await _push_updates(b, groups["update"])
                await _push_deletes(b, groups["delete"])
            if not drained:  # a shutdown stopped it: not a push that did its work
                stats.stopped = ("stopped by shutdown before the outbox was drained (rows "
                                 "claimed and not sent went back to pending)")
        except BaseException as exc:  # an error, or cancelled (deadline, shutdown): rows back
            # now; a refused token or URL says so on the rows it kept from being sent (a trial:
            # an update's read was refused and its row showed no error at all)
            await _release_claimed(deps, owner, batches, now, reason=(
                f"not sent: {redact(str(exc))[:1000]}; sent when the push runs again"
                if isinstance(exc, STOPS_THE_RUN + (FatalAPIError,)) else None))
            raise
        finally:
            report.requests = stats.requests  # this run's own (issue #23)
            stats.rows_upserted = report.mirror_rows
            await _publish_counts(deps, report, now)
            stats.details = report.as_dict()
    return report
