"""The asyncpg boundary for `syncd.outbox` (migrations/0002_outbox.sql): claims with leases,
sent markers, outcomes, operator actions, status figures and the NOTIFY channel.

Time: every function takes `now` (an aware instant) for tests; None means the database clock
(`now()`), which is also what writers' `created_at`/`next_attempt_at` defaults use, so a clock
difference between hosts never delays a row. Every write after the claim is fenced by the
claim's `batch_id` and `status = 'in_flight'`: a process whose lease was taken over (it stalled
past `lease_expires_at`) cannot overwrite the new owner's work.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from syncd.batching import Decision, OutboxRow
from syncd import store
from syncd.pagination import make_storable

__all__ = [
    "CHANNEL", "Claim", "claim_batch", "db_now", "discard_rows", "finish_rows", "list_rows",
    "mark_sent", "prune_done", "rebase_pending", "reclaim_expired", "release_leases",
    "retry_rows",
    "status_counts", "stop_listening", "wait_for_notify",
]

#: The channel the `outbox_notify` trigger signals after every insert (0002_outbox.sql).
CHANNEL = "syncd_outbox"
STATUSES = ("pending", "in_flight", "done", "failed", "conflict")

# Expired leases (their owner crashed or stalled) go back to pending; sent_at stays, so the
# next claim looks the outcome up before re-sending, and not before `settle` seconds after the
# send (a request may still be running at Kantata). last_error says why the row waits. A row
# that has used up its attempts this way is dead-lettered instead, so a row that crashes syncd
# cannot loop forever.
RECLAIM = """
UPDATE syncd.outbox SET
    status = CASE WHEN attempts >= $2 THEN 'failed' ELSE 'pending' END,
    last_error = CASE WHEN attempts >= $2 THEN
        format('dead letter: the lease of %s expired on attempt %s (process crashed or stalled)%s',
               lease_owner, attempts,
               CASE WHEN sent_at IS NOT NULL
                    THEN '; a request was sent, so Kantata may have applied it: '
                         'syncd outbox retry looks it up before sending again'
                    ELSE '' END)
        ELSE format('the lease of %s expired while in flight (process crashed or stalled); %s',
                    lease_owner,
                    CASE WHEN sent_at IS NOT NULL
                         THEN 'a request was sent, so Kantata is checked for it before it is '
                              'sent again'
                         ELSE 'nothing was sent' END) END,
    done_at = CASE WHEN attempts >= $2 THEN coalesce($1, now()) END,
    next_attempt_at = greatest(coalesce($1, now()), sent_at + make_interval(secs => $3)),
    lease_owner = NULL, lease_expires_at = NULL
WHERE status = 'in_flight' AND lease_expires_at <= coalesce($1, now())
RETURNING id, status
"""

# The claim. SKIP LOCKED lets concurrent claimers take disjoint rows. An update or delete waits
# while an earlier row of the same entry is still open, so one entry's changes reach Kantata in
# the order they were queued (and at most one row per entry is in any batch).
CLAIM = """
WITH picked AS (
    SELECT o.id FROM syncd.outbox o
    WHERE o.status = 'pending' AND o.next_attempt_at <= coalesce($6, $1, now())
      AND (o.entry_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM syncd.outbox p
            WHERE p.entry_id = o.entry_id AND p.id < o.id
              AND p.status IN ('pending', 'in_flight')))
    ORDER BY o.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE syncd.outbox t SET
    status = 'in_flight', lease_owner = $3, batch_id = $4,
    lease_expires_at = coalesce($1, now()) + make_interval(secs => $5),
    claimed_at = coalesce($1, now()), attempts = t.attempts + 1
FROM picked WHERE t.id = picked.id
RETURNING t.id, t.op, t.entry_id, t.payload, t.correlation_key::text AS correlation_key,
          t.base_updated_at, t.attempts, t.sent_at, t.last_error,
          CASE WHEN NOT isfinite(t.base_updated_at) THEN t.base_updated_at::text END
              AS base_not_an_instant,
          NOT syncd.jsonb_numbers_fit_a_double(t.payload) AS payload_out_of_range
"""

# Claimed rows syncd cannot send as they are (`unsendable`) are dead-lettered in the claim's
# transaction, with the reason, so they never hold up the rows behind them.
REFUSE = """
UPDATE syncd.outbox t SET status = 'failed', last_error = u.reason, result = NULL,
    done_at = coalesce($2, now()), lease_owner = NULL, lease_expires_at = NULL
FROM unnest($3::bigint[], $4::text[]) AS u(id, reason)
WHERE t.id = u.id AND t.batch_id = $1 AND t.status = 'in_flight'
"""

# Committed before the request goes out: a set sent_at is what tells a later claim that the
# outcome is unknown. The lease is renewed at the same time.
MARK_SENT = """
UPDATE syncd.outbox SET sent_at = coalesce($3, now()),
    lease_expires_at = coalesce($3, now()) + make_interval(secs => $4)
WHERE id = ANY($1::bigint[]) AND batch_id = $2 AND status = 'in_flight'
RETURNING id
"""

FINISH = """
UPDATE syncd.outbox t SET
    status = u.status,
    result = u.result,
    last_error = CASE WHEN u.keep_error THEN t.last_error ELSE u.last_error END,
    entry_id = coalesce(u.entry_id, t.entry_id),
    remote_updated_at = CASE WHEN u.keep_error THEN t.remote_updated_at
                             ELSE u.remote_updated_at END,
    remote_entry = CASE WHEN u.keep_error THEN t.remote_entry ELSE u.remote_entry END,
    attempts = CASE WHEN u.refund THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
    next_attempt_at = CASE WHEN u.status = 'pending'
        THEN coalesce($2, now()) + make_interval(secs => u.retry_in) ELSE t.next_attempt_at END,
    done_at = CASE WHEN u.status IN ('done', 'failed', 'conflict') THEN coalesce($2, now()) END,
    sent_at = CASE WHEN u.unsent THEN u.sent_at ELSE t.sent_at END,
    lease_owner = NULL, lease_expires_at = NULL
FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::boolean[], $8::float8[],
            $9::boolean[], $10::bigint[], $11::timestamptz[], $12::jsonb[], $13::boolean[],
            $14::timestamptz[])
     AS u(id, status, result, last_error, keep_error, retry_in, refund, entry_id,
          remote_updated_at, remote_entry, unsent, sent_at)
WHERE t.id = u.id AND t.batch_id = $1 AND t.status = 'in_flight'
RETURNING t.id
"""

# After syncd itself moved an entry to a new version, later queued edits of that entry that
# were based on the same version are based on ours: they must not conflict with our own write.
REBASE = """
UPDATE syncd.outbox p SET base_updated_at = u.new_base
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::timestamptz[])
     AS u(row_id, entry_id, old_base, new_base)
WHERE p.entry_id = u.entry_id AND p.id > u.row_id AND p.status = 'pending'
  AND p.op IN ('update', 'delete') AND p.base_updated_at IS NOT DISTINCT FROM u.old_base
"""

# Shutdown, or a push run cancelled (deadline) or failed: the owner's claimed rows (or those
# of the given claims) go back to pending. An attempt that sent nothing during this lease is
# given back; a row that was sent keeps sent_at and waits `settle` seconds, so a request
# Kantata may still be working on can land before the outcome is looked up (last_error says
# so).
RELEASE = """
UPDATE syncd.outbox SET
    status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    last_error = CASE WHEN sent_at >= claimed_at
        THEN format('%s stopped while a request for this row was in flight (run deadline, '
                    'shutdown or error); Kantata is checked for it before it is sent again',
                    lease_owner)
        ELSE coalesce($5, last_error) END,
    attempts = CASE WHEN sent_at IS NULL OR sent_at < claimed_at
                    THEN greatest(attempts - 1, 0) ELSE attempts END,
    next_attempt_at = CASE WHEN sent_at >= claimed_at
                           THEN coalesce($2, now()) + make_interval(secs => $3)
                           ELSE coalesce($2, now()) END
WHERE status = 'in_flight' AND lease_owner = $1
  AND ($4::uuid[] IS NULL OR batch_id = ANY($4::uuid[]))
"""

STATUS_COUNTS = """
SELECT status, count(*) AS n,
       extract(epoch FROM coalesce($1, now()) - min(created_at)) AS oldest,
       extract(epoch FROM min(next_attempt_at) - coalesce($1, now())) AS next_due
FROM syncd.outbox GROUP BY status
"""

LIST_COLUMNS = """id, op, entry_id, status, attempts, last_error, result, payload,
    correlation_key::text AS correlation_key, base_updated_at, remote_updated_at, remote_entry,
    lease_owner, lease_expires_at, next_attempt_at, sent_at, done_at, created_at, updated_at"""

# Operator retry: failed and conflict rows start again with fresh attempts. A conflict is
# retried on top of the remote version it was parked with (the operator has looked: the local
# change wins over that version; a newer remote change conflicts again). sent_at is kept, so a
# create whose outcome is unknown is looked up before it is sent.
RETRY = """
UPDATE syncd.outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
    base_updated_at = CASE WHEN status = 'conflict'
                           THEN coalesce(remote_updated_at, base_updated_at)
                           ELSE base_updated_at END,
    last_error = NULL, done_at = NULL, result = NULL
WHERE status IN ('failed', 'conflict') AND (id = ANY($1::bigint[]) OR ($2 AND status = 'failed'))
RETURNING id
"""

# Never discarded: rows in flight, `done` rows (history), and a pending create whose earlier
# request may have reached Kantata (sent, then backing off: attempts > 0; an operator retry
# resets attempts after a definitive answer): dropping it could leave an entry in Kantata with
# no outbox record. Such a create is settled (found or sent) first.
DISCARD = """
DELETE FROM syncd.outbox
WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'failed', 'conflict')
  AND NOT (op = 'create' AND status = 'pending' AND sent_at IS NOT NULL AND attempts > 0)
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """One claimed batch: the lease token `batch_id`, the rows to push in id order, and the
    rows dead-lettered at the claim (`unsendable`) as (id, op, reason)."""

    batch_id: uuid.UUID
    rows: list[OutboxRow]
    refused: list[tuple[int, str, str]] = field(default_factory=list)


def unsendable(r: Mapping[str, Any]) -> str | None:
    """Why a claimed row (CLAIM's columns) cannot be pushed as it is, or None: a value that the
    checks at insert of migration 0017 refuse, in a row queued before it or changed by an
    UPDATE since (a payload number a double cannot hold: `1e400` no JSON decoder reads,
    `1e-400` is read as 0; a `base_updated_at` of 'infinity' or '-infinity'), or that the
    check of migration 0018 refuses (an `entry_id` below 1: syncd takes only positive ids from
    Kantata, so no entry has it). The reason names the rule, as the insert's error does, and
    what to do."""
    if r["entry_id"] is not None and r["entry_id"] < 1:
        return (f"entry_id must be a Kantata time entry id (a positive integer), not "
                f"{r['entry_id']} (outbox_entry_id_is_positive): discard the row and queue "
                "the change for the entry's id")
    if r["base_not_an_instant"] is not None:
        return (f"base_updated_at is {r['base_not_an_instant']}, not an instant "
                "(outbox_base_updated_at_is_an_instant): set it to the entry version the "
                "change was based on, or NULL, and `syncd outbox retry`; or discard the row")
    if r["payload_out_of_range"]:
        return ("payload holds a number a double cannot hold (beyond about 1.8e308, or nearer "
                "zero than 2.2e-308), which JSON clients read as another number or not at all "
                "(outbox_payload_numbers_fit_a_double): fix it and `syncd outbox retry`, or "
                "discard the row")
    return None


def _row(r: Mapping[str, Any]) -> OutboxRow:
    payload = r["payload"]
    return OutboxRow(id=r["id"], op=r["op"], entry_id=r["entry_id"],
                     payload=orjson.loads(payload) if payload is not None else None,
                     correlation_key=r["correlation_key"], base_updated_at=r["base_updated_at"],
                     attempts=r["attempts"], sent_at=r["sent_at"],
                     last_error=r.get("last_error"))


async def reclaim_expired(conn: asyncpg.Connection, *, max_attempts: int,
                          now: datetime | None = None,
                          settle_seconds: float = 0.0) -> dict[str, int]:
    """Return expired leases to pending (or dead-letter rows at `max_attempts`); a row that
    was sent becomes claimable `settle_seconds` after its send at the earliest. Returns
    {"pending": n, "failed": m}."""
    rows = await conn.fetch(RECLAIM, now, max_attempts, float(settle_seconds))
    out = {"pending": 0, "failed": 0}
    for r in rows:
        out[r["status"]] += 1
    return out


async def db_now(conn: asyncpg.Connection) -> datetime:
    """The database clock (aware, UTC)."""
    return await conn.fetchval("SELECT now()")  # type: ignore[no-any-return]


async def claim_batch(conn: asyncpg.Connection, *, owner: str, limit: int,
                      lease_seconds: float, now: datetime | None = None,
                      due_by: datetime | None = None,
                      batch_id: uuid.UUID | None = None) -> Claim:
    """Claim up to `limit` claimable rows for `owner` (FOR UPDATE SKIP LOCKED, in one
    transaction): status in_flight, a lease of `lease_seconds`, the batch id `batch_id`
    (default: a new one; a caller that names it beforehand can release the claim even when
    this call is cancelled after the commit), attempts + 1. Claimable: pending,
    `next_attempt_at` <= `due_by` (default `now`), and no earlier open row of the same entry."""
    batch_id = batch_id or uuid.uuid4()
    refused: list[tuple[int, str, str]] = []
    async with conn.transaction():
        rows = await conn.fetch(CLAIM, now, limit, owner, batch_id, float(lease_seconds),
                                due_by)
        for r in rows:
            reason = unsendable(r)
            if reason is not None:
                refused.append((r["id"], r["op"], reason))
        if refused:
            await conn.execute(REFUSE, batch_id, now, [i for i, _, _ in refused],
                               [reason for _, _, reason in refused])
    bad = {i for i, _, _ in refused}
    return Claim(batch_id, sorted((_row(r) for r in rows if r["id"] not in bad),
                                  key=lambda r: r.id), sorted(refused))


async def mark_sent(conn: asyncpg.Connection, ids: Sequence[int], batch_id: uuid.UUID, *,
                    lease_seconds: float, now: datetime | None = None) -> set[int]:
    """Record (and commit, when called outside a transaction) that a request carrying `ids` is
    about to go out, renewing their lease. Returns the ids still held by this claim: send only
    those."""
    if not ids:
        return set()
    rows = await conn.fetch(MARK_SENT, list(ids), batch_id, now, float(lease_seconds))
    return {r["id"] for r in rows}


def _json(v: Mapping[str, Any] | None) -> str | None:
    """Kantata's answer as jsonb text; text jsonb cannot hold is replaced and recorded."""
    return orjson.dumps(make_storable(v)).decode() if v is not None else None





async def finish_rows(conn: asyncpg.Connection, batch_id: uuid.UUID,
                      decisions: Sequence[Decision], *, now: datetime | None = None) -> set[int]:
    """Apply decisions (done / failed / conflict / pending with back-off) to rows of this
    claim in one statement and end their lease; an `unsent` decision puts `sent_at` back. Returns the ids updated (rows whose lease was
    lost are left alone)."""
    if not decisions:
        return set()
    d = decisions
    rows = await conn.fetch(
        FINISH, batch_id, now, [x.row_id for x in d], [x.status for x in d],
        [x.result for x in d], [store.pg_text(x.last_error) for x in d], [x.keep_error for x in d],
        [float(x.retry_in) for x in d], [x.refund for x in d], [x.entry_id for x in d],
        [x.remote_updated_at for x in d], [_json(x.remote) for x in d],
        [x.unsent for x in d], [x.sent_at for x in d])
    return {r["id"] for r in rows}


async def rebase_pending(conn: asyncpg.Connection,
                         moves: Sequence[tuple[int, int, datetime | None, datetime]]) -> int:
    """For each (row_id, entry_id, old_base, new_base) of an update syncd completed: later
    pending update/delete rows of that entry based on `old_base` are based on `new_base`."""
    if not moves:
        return 0
    status = await conn.execute(REBASE, [m[0] for m in moves], [m[1] for m in moves],
                                [m[2] for m in moves], [m[3] for m in moves])
    return int(status.rsplit(" ", 1)[-1])


async def release_leases(conn: asyncpg.Connection, owner: str, *, now: datetime | None = None,
                         settle_seconds: float = 0.0,
                         batch_ids: Sequence[uuid.UUID] | None = None,
                         unsent_reason: str | None = None) -> int:
    """Give every in_flight row of `owner` back (shutdown), or only those of the claims
    `batch_ids` (one push run). Rows sent under this lease keep sent_at and become claimable
    after `settle_seconds`; the others get their attempt back, and `unsent_reason` as their
    last error when given. Returns the number of rows released."""
    status = await conn.execute(RELEASE, owner, now, float(settle_seconds),
                                list(batch_ids) if batch_ids is not None else None,
                                unsent_reason)
    return int(status.rsplit(" ", 1)[-1])


async def status_counts(conn: asyncpg.Connection, *,
                        now: datetime | None = None) -> dict[str, Any]:
    """{"counts": {status: n for every status}, "oldest_pending_seconds": float | None,
    "next_due_seconds": float | None} (for metrics, `syncd status` and the push's next wake:
    seconds until the earliest pending row may be claimed, 0 when one is due now)."""
    counts = dict.fromkeys(STATUSES, 0)
    oldest: float | None = None
    next_due: float | None = None
    for r in await conn.fetch(STATUS_COUNTS, now):
        counts[r["status"]] = r["n"]
        if r["status"] == "pending":
            oldest = max(float(r["oldest"]), 0.0)
            next_due = max(float(r["next_due"]), 0.0)
    return {"counts": counts, "oldest_pending_seconds": oldest, "next_due_seconds": next_due}


async def list_rows(conn: asyncpg.Connection, *, statuses: Sequence[str] | None = None,
                    ids: Sequence[int] | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Rows for operators, newest first: optionally only `statuses` and/or `ids`; jsonb columns
    decoded (a payload no JSON decoder reads stays the text PostgreSQL gives), an instant of
    'infinity' or '-infinity' as that word."""
    rows = await conn.fetch(
        f"""SELECT {LIST_COLUMNS} FROM syncd.outbox
            WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))
              AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
            ORDER BY id DESC LIMIT $3""",
        list(statuses) if statuses else None, list(ids) if ids else None, limit)
    out = []
    for r in rows:
        d = dict(r)
        for k, v in d.items():  # asyncpg reads ±infinity as naive 9999-12-31 / 0001-01-01
            if isinstance(v, datetime) and v.tzinfo is None:
                d[k] = "infinity" if v.year == 9999 else "-infinity"
        for k in ("payload", "remote_entry"):
            if d[k] is not None:
                try:
                    d[k] = orjson.loads(d[k])
                except orjson.JSONDecodeError:  # a number beyond a double: shown as stored
                    pass
        out.append(d)
    return out


async def retry_rows(conn: asyncpg.Connection, ids: Sequence[int] = (), *,
                     all_failed: bool = False) -> list[int]:
    """Put failed/conflict rows (by id, or every failed row) back to pending with fresh
    attempts; a conflict is retried on top of the remote version it was parked with.
    Returns the ids changed (rows in other statuses are left alone). At commit the
    `outbox_notify_retry` trigger wakes the daemons (NOTIFY syncd_outbox)."""
    rows = await conn.fetch(RETRY, list(ids), all_failed)
    return sorted(r["id"] for r in rows)


async def discard_rows(conn: asyncpg.Connection, ids: Sequence[int]) -> list[int]:
    """Delete pending/failed/conflict rows (not `done` history, not a create whose outcome is
    still unknown); returns the ids deleted."""
    rows = await conn.fetch(DISCARD, list(ids))
    return sorted(r["id"] for r in rows)


async def prune_done(conn: asyncpg.Connection, older_than_days: int) -> int:
    """Delete `done` rows whose `done_at` is more than `older_than_days` days ago (history an
    application no longer looks at); `failed` and `conflict` rows wait for a person and are
    kept. Returns rows deleted; `older_than_days` 0 deletes nothing."""
    if older_than_days <= 0:
        return 0
    status = await conn.execute(
        """DELETE FROM syncd.outbox
           WHERE status = 'done' AND done_at < now() - make_interval(days => $1)""",
        older_than_days)
    return int(status.rsplit(" ", 1)[-1])


# ------------------------------------------------------------------------ LISTEN / NOTIFY
@dataclass
class _Listener:
    event: asyncio.Event
    callback: Any = None


_listeners: weakref.WeakKeyDictionary[asyncpg.Connection, _Listener] = \
    weakref.WeakKeyDictionary()


async def wait_for_notify(conn: asyncpg.Connection, timeout: float) -> bool:
    """Wait up to `timeout` seconds for a NOTIFY on `CHANNEL`; True if one arrived (since the
    previous call on this connection, or during the wait), False on timeout.

    The first call LISTENs on `conn`, which must be a dedicated connection (not a pooled one
    that goes back to the pool). Notifications between calls are not lost. Polling stays the
    fallback: a False return just means "check the outbox anyway".
    """
    listener = _listeners.get(conn)
    if listener is None:
        listener = _Listener(asyncio.Event())
        event = listener.event

        def _on_notify(*_: object) -> None:
            event.set()

        listener.callback = _on_notify
        await conn.add_listener(CHANNEL, _on_notify)
        _listeners[conn] = listener
    if not listener.event.is_set():
        try:
            await asyncio.wait_for(listener.event.wait(), timeout)
        except TimeoutError:
            return False
    listener.event.clear()
    return True


async def stop_listening(conn: asyncpg.Connection) -> None:
    """UNLISTEN what `wait_for_notify` set up on `conn` (no-op if nothing)."""
    listener = _listeners.pop(conn, None)
    if listener is not None and not conn.is_closed():
        await conn.remove_listener(CHANNEL, listener.callback)
