"""Pure decisions of the outbox push: batches, Kantata bulk bodies, error mapping, bisection,
the conflict check and the per-row outcome table. No IO here (convention 2): `push.py` carries
the decisions out against Kantata (`kantata.py`) and PostgreSQL (`outbox.py`, `store.py`).

Kantata facts used: bulk create and bulk delete take at most 100 items and are all-or-nothing
(api-notes §6, §8, §14 Q5/Q6); create errors carry `index` (the item's position), bulk-delete
errors name the id (`id` field and/or "Time entry <id> ..." in the message); there is no bulk
update (§7); `only=` reads take up to 200 ids (§14 Q18); `external_reference` has
`service_name`, `service_model`, `service_model_ref`, `status` (§5) and can be looked up with
`external_reference_service_name` + `external_reference_service_model_refs` (§4, §14 Q11).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Generic, Literal, TypeVar

from syncd.errors import redact
from syncd.models import OutboxOp, OutboxStatus
from syncd.pagination import MAX_TEXT, MAX_YEAR, MIN_YEAR

__all__ = [
    "MAX_BULK", "MAX_IDS_PER_READ", "SERVICE_MODEL", "WRITABLE_FIELDS", "Bisection", "Decision",
    "ErrorMap", "Outcome", "OutboxRow", "UpdateCheck", "backoff_seconds", "by_op",
    "CreateMatch", "check_update", "chunk", "create_items", "decide",
    "differing_fields", "entries_by_id", "entry_ids_by_ref", "error_list", "match_created",
    "map_create_errors", "map_delete_errors", "mirror_refusal", "payload_applied",
    "strip_include_only",
]

K = TypeVar("K")
T = TypeVar("T")

MAX_BULK = 100
MAX_IDS_PER_READ = 200
SERVICE_MODEL = "syncd_outbox"
#: Fields a client may write on create and update (api-notes §5-§7); the outbox constraint
#: `outbox_payload_has_only_writable_fields` enforces the same list.
WRITABLE_FIELDS = ("workspace_id", "date_performed", "time_in_minutes", "billable",
                   "rate_in_cents", "notes", "role_id", "story_id", "user_id", "location")
#: Keys present in an entry only when an include asked for them (api-notes §14 Q7): dropped
#: before the mirror stores an answer, so it matches what a pull stores.
INCLUDE_ONLY = ("external_reference_ids", "invoice_id", "active_submission_id",
                "recent_submission_id")
_ID_FIELDS = ("workspace_id", "role_id", "story_id", "user_id")
_ENTRY_IN_MESSAGE = re.compile(r"\btime entry (\d+)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    """One claimed `syncd.outbox` row, as the push needs it.

    `payload` is the decoded jsonb (None for deletes); `correlation_key` the uuid as text;
    `attempts` already counts the current claim; `sent_at` set means a request carrying this
    row went out before (its outcome must be looked up before a create is sent again);
    `last_error` is what the row's last attempt recorded (why its outcome is unknown).
    """

    id: int
    op: OutboxOp
    entry_id: int | None
    payload: Mapping[str, Any] | None
    correlation_key: str
    base_updated_at: datetime | None
    attempts: int
    sent_at: datetime | None = None
    last_error: str | None = None


def chunk(items: Sequence[T], size: int = MAX_BULK) -> list[list[T]]:
    """`items` in consecutive lists of at most `size` (order kept). Raises ValueError if
    `size` < 1."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def by_op(rows: Iterable[OutboxRow]) -> dict[OutboxOp, list[OutboxRow]]:
    """Rows grouped by op, each group in id order; every op is a key (maybe empty)."""
    out: dict[OutboxOp, list[OutboxRow]] = {"create": [], "update": [], "delete": []}
    for r in sorted(rows, key=lambda r: r.id):
        out[r.op].append(r)
    return out


# ------------------------------------------------------------------------ request bodies
def create_items(rows: Sequence[OutboxRow], service_name: str) -> list[dict[str, Any]]:
    """The `time_entries` array of a bulk create: each row's payload plus the external
    reference that makes the create findable after an ambiguous outcome."""
    items = []
    for r in rows:
        item = dict(r.payload or {})
        item["external_reference"] = {
            "service_name": service_name, "service_model": SERVICE_MODEL,
            "service_model_ref": r.correlation_key, "status": "successful"}
        items.append(item)
    return items


# ------------------------------------------------------------------------ reading answers
def mirror_refusal(payload: Mapping[str, Any] | None) -> str | None:
    """Why an entry written with `payload` could never be mirrored, or None. Kantata may
    accept values the pull rejects (`syncd.pagination`: `date_performed` in years
    MIN_YEAR..MAX_YEAR, `notes` up to MAX_TEXT characters); such a row fails before it is sent,
    so Kantata never holds an entry the mirror cannot."""
    if not payload:
        return None
    d = payload.get("date_performed")
    if isinstance(d, str):
        try:
            year: int | None = date.fromisoformat(d).year
        except ValueError:
            year = None  # not a date at all: Kantata refuses it with its own message
        if year is not None and not MIN_YEAR <= year <= MAX_YEAR:
            return (f"not sent: date_performed {d} is outside years {MIN_YEAR}..{MAX_YEAR}, "
                    "which the mirror stores")
    notes = payload.get("notes")
    if isinstance(notes, str) and len(notes) > MAX_TEXT:
        return (f"not sent: notes are {len(notes)} characters, over the {MAX_TEXT} the mirror "
                "stores")
    return None


def strip_include_only(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` without include-only keys (so the mirror stores what a pull would store)."""
    return {k: v for k, v in raw.items() if k not in INCLUDE_ONLY}


def entries_by_id(body: Any) -> dict[int, dict[str, Any]]:
    """Raw entries of an envelope (`results` order), keyed by integer id, include-only keys
    stripped. The id is the `results` id, which is the entry's key in `time_entries` (the
    contract declares no `id` property); an entry whose own `id` field disagrees with its key
    is left out. `results` items of another `key` are skipped. Anything that is not an
    envelope yields {}."""
    if not isinstance(body, Mapping):
        return {}
    keyed = body.get("time_entries")
    results = body.get("results")
    if not isinstance(keyed, Mapping) or not isinstance(results, list):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for ref in results:
        if not isinstance(ref, Mapping) or ref.get("key", "time_entries") != "time_entries":
            continue
        rid = str(ref.get("id", "")).strip()
        raw = keyed.get(rid)
        if not (rid.isascii() and rid.isdigit()) or not isinstance(raw, Mapping):
            continue
        own = raw.get("id", rid)
        if str(own).strip() != rid:
            continue
        out[int(rid)] = strip_include_only(raw)
    return out


def entry_ids_by_ref(body: Any, service_name: str) -> dict[str, list[int]]:
    """correlation key → ids (ascending) of the entries carrying an external reference of
    `service_name` with that `service_model_ref`, from the side-loaded `external_references`
    map of a response requested with `include=external_references`."""
    refs = body.get("external_references") if isinstance(body, Mapping) else None
    out: dict[str, list[int]] = {}
    if not isinstance(refs, Mapping):
        return out
    for ref in refs.values():
        if not isinstance(ref, Mapping) or ref.get("service_name") != service_name:
            continue
        key, subject = ref.get("service_model_ref"), str(ref.get("subject_id", ""))
        if isinstance(key, str) and subject.isdigit():
            out.setdefault(key, []).append(int(subject))
    return {k: sorted(set(v)) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class CreateMatch:
    """How a bulk-create answer maps to the rows sent: `matched` outbox row id → (entry id,
    raw entry); `unknown` row id → why its entry could not be told (its outcome must be
    looked up by external reference, never guessed and never blindly re-sent)."""

    matched: dict[int, tuple[int, dict[str, Any]]]
    unknown: dict[int, str]


def _content_match(rows: Sequence[OutboxRow], entries: Mapping[int, Mapping[str, Any]]
                   ) -> dict[int, int]:
    """Row id → entry id where the row's payload matches exactly one entry's content and that
    entry matches no other row's payload (`payload_applied`)."""
    cands = {r.id: [i for i, raw in entries.items() if payload_applied(r.payload or {}, raw)]
             for r in rows}
    takers: dict[int, int] = {}
    for ids in cands.values():
        for i in ids:
            takers[i] = takers.get(i, 0) + 1
    return {rid: ids[0] for rid, ids in cands.items() if len(ids) == 1 and takers[ids[0]] == 1}


def match_created(body: Any, rows: Sequence[OutboxRow], service_name: str) -> CreateMatch:
    """Match the entries of a bulk-create answer to the outbox rows sent (never by position).

    First by external reference (side-loaded `external_references`, api-notes §14 Q11): the
    entry carrying the row's correlation key. Else by content: the one entry of the answer
    whose values equal the row's payload, when no other row's payload matches it too. A row
    matched neither way is `unknown`: the answer did not list its entry, or several rows with
    equal payloads were answered without references. The contract orders `results` by the
    endpoint's default order (`date_performed:desc`, TE:L36-40), not as sent, so position
    tells nothing.
    """
    entries = entries_by_id(body)
    by_ref = entry_ids_by_ref(body, service_name)
    matched: dict[int, tuple[int, dict[str, Any]]] = {}
    for r in rows:
        ids = [i for i in by_ref.get(r.correlation_key, []) if i in entries]
        if ids:
            matched[r.id] = (ids[0], entries[ids[0]])
    taken = {eid for eid, _ in matched.values()}
    rest = [r for r in rows if r.id not in matched]
    free = {i: raw for i, raw in entries.items() if i not in taken}
    for rid, eid in _content_match(rest, free).items():
        matched[rid] = (eid, free[eid])
    unknown: dict[int, str] = {}
    for r in rows:
        if r.id in matched:
            continue
        if not entries:
            unknown[r.id] = "Kantata's answer to the bulk create listed no entry"
        elif len(entries) < len(rows):
            unknown[r.id] = (f"Kantata's answer to the bulk create listed {len(entries)} of "
                             f"{len(rows)} entries, none of them this row's")
        else:
            unknown[r.id] = ("Kantata's answer to the bulk create names no external reference "
                             "for this row and its content matches no single listed entry")
    return CreateMatch(matched, unknown)


# ------------------------------------------------------------------------ errors
def error_list(body: Any) -> list[Mapping[str, Any]]:
    """The `errors` objects of a Kantata error body (api-notes §9); [] when there are none."""
    errs = body.get("errors") if isinstance(body, Mapping) else None
    return [e for e in errs if isinstance(e, Mapping)] if isinstance(errs, list) else []


def _message(e: Mapping[str, Any]) -> str:
    return redact(str(e.get("message") or "").strip()) or "rejected without a message"


@dataclass(frozen=True, slots=True)
class ErrorMap(Generic[K]):
    """Errors of a rejected bulk request: `mapped` item → Kantata's message(s), and the
    messages that name no item (`unmapped`)."""

    mapped: dict[K, str]
    unmapped: tuple[str, ...]


def _collect(pairs: Iterable[tuple[K | None, str]]) -> ErrorMap[K]:
    mapped: dict[K, list[str]] = {}
    unmapped: list[str] = []
    for key, msg in pairs:
        if key is None:
            unmapped.append(msg)
        elif msg not in mapped.setdefault(key, []):
            mapped[key].append(msg)
    return ErrorMap({k: "; ".join(v) for k, v in mapped.items()}, tuple(dict.fromkeys(unmapped)))


def map_create_errors(body: Any, n: int) -> ErrorMap[int]:
    """Map a rejected bulk create's errors to item positions 0..n-1 through `index`
    (api-notes §6, §14 Q5). An error without a usable index is unmapped."""
    pairs: list[tuple[int | None, str]] = []
    for e in error_list(body):
        raw = e.get("index")
        idx = int(raw) if isinstance(raw, str) and raw.isdigit() else raw
        ok = isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < n
        pairs.append((idx if ok else None, _message(e)))
    return _collect(pairs)


def map_delete_errors(body: Any, ids: Sequence[int]) -> ErrorMap[int]:
    """Map a rejected bulk delete's errors to the entry ids sent, through the error's `id`
    or a "Time entry <id>" in its message (api-notes §8, §14 Q6)."""
    sent = set(ids)
    pairs: list[tuple[int | None, str]] = []
    for e in error_list(body):
        raw_id = str(e.get("id", "")).strip()
        if not raw_id.isdigit():
            m = _ENTRY_IN_MESSAGE.search(str(e.get("message", "")))
            raw_id = m.group(1) if m else ""
        key = int(raw_id) if raw_id.isdigit() and int(raw_id) in sent else None
        pairs.append((key, _message(e)))
    return _collect(pairs)


# ------------------------------------------------------------------------ bisection
class Bisection(Generic[K]):
    """Drives all-or-nothing bulk requests until every item is accepted or rejected on its own.

    Loop: `next_request()` → send it → report `accepted()` or `rejected(...)`. Mapped errors
    drop their items and the rest is sent again (one extra request per round). A refusal that
    names no item makes the request a *suspect*, split in halves: the left half is sent; if it
    is accepted, the right half is known to hold a culprit and is split further without being
    sent whole; if it is refused too, the right half is still unknown and is sent later —
    pooled with other unknown items when the left half's error count accounts for all of the
    parent's errors (so the right half is probably clean), else on its own (so it cannot spoil
    the pool). Error counts only group requests: an item is rejected only after it was refused
    alone, or its half was refused and the other half accepted. Cost with unmappable errors:
    about log2(batch) extra requests per culprit (≤ 8 for one culprit in 100, ≤ 7 per culprit
    beyond; tests/unit/test_batching.py measures it).
    """

    def __init__(self, items: Sequence[K], max_size: int = MAX_BULK) -> None:
        self.max_size = max_size
        self._pool: list[K] = list(items)
        self._alone: list[list[K]] = []
        self._suspects: list[tuple[list[K], tuple[str, ...], int]] = []
        self._outstanding: list[K] | None = None
        self._testing = False
        self.accepted_items: list[K] = []
        self.rejected_items: dict[K, str] = {}
        self.requests = 0

    def next_request(self) -> list[K] | None:
        """The next items to send together, or None when every item is decided."""
        if self._outstanding is not None:
            raise RuntimeError("report the outcome of the outstanding request first")
        self._testing = False
        while self._suspects:
            seg, msgs, _ = self._suspects[-1]
            if len(seg) == 1:
                self._suspects.pop()
                self.rejected_items[seg[0]] = "; ".join(msgs)
                continue
            self._outstanding, self._testing = seg[: len(seg) // 2], True
            break
        else:
            if self._alone:
                self._outstanding = self._alone.pop()
            elif self._pool:
                self._outstanding = self._pool[: self.max_size]
                del self._pool[: self.max_size]
            else:
                return None
        self.requests += 1
        return list(self._outstanding)

    def _take(self) -> tuple[list[K], list[K] | None, tuple[str, ...], int]:
        req = self._outstanding
        if req is None:
            raise RuntimeError("no outstanding request")
        self._outstanding = None
        if not self._testing:
            return req, None, (), 0
        seg, msgs, errors = self._suspects.pop()
        return req, seg[len(req):], msgs, errors

    def accepted(self) -> None:
        """The outstanding request succeeded: all its items are accepted."""
        req, right, msgs, errors = self._take()
        self.accepted_items += req
        if right:  # the parent was refused and its left half is fine: a culprit is on the right
            self._suspects.append((right, msgs, errors))

    def rejected(self, mapped: Mapping[K, str] | None = None, unmapped: Sequence[str] = (),
                 settled: Iterable[K] = (), errors: int | None = None) -> None:
        """The outstanding request was refused as a whole. `mapped`: items Kantata named, with
        its message; `unmapped`: messages naming no item; `settled`: items decided otherwise
        (e.g. a delete target that is already gone), removed without a verdict here; `errors`:
        how many errors the refusal listed (default: the messages given)."""
        req, right, _, parent_errors = self._take()
        settled_set = set(settled) & set(req)
        named = {k: m for k, m in (mapped or {}).items() if k in req and k not in settled_set}
        self.rejected_items.update(named)
        rest = [k for k in req if k not in named and k not in settled_set]
        if named or settled_set:  # progress: the others are unknown again
            self._pool[:0] = rest + (right or [])
            return
        count = errors if errors is not None else max(len(unmapped), 1)
        if right:
            if count >= parent_errors:
                self._pool[:0] = right
            else:
                self._alone.append(right)
        msgs = tuple(unmapped) or ("Kantata rejected the request without a message",)
        if len(rest) == 1:
            self.rejected_items[rest[0]] = "; ".join(msgs)
        elif rest:
            self._suspects.append((rest, msgs, count))

    def abandon(self) -> list[K]:
        """Stop: return every undecided item (outstanding, suspects, unsent)."""
        left = list(self._outstanding or [])
        self._outstanding = None
        for seg, _, _ in self._suspects:
            left += seg
        for seg in self._alone:
            left += seg
        left += self._pool
        self._suspects, self._alone, self._pool = [], [], []
        return list(dict.fromkeys(left))


# ------------------------------------------------------------------------ updates
def _norm(fld: str, v: Any) -> Any:
    if v is None or v == "":
        return None
    if fld in _ID_FIELDS:
        return str(v)
    if fld in ("time_in_minutes", "rate_in_cents") and isinstance(v, str) and v.isdigit():
        return int(v)
    return v


def differing_fields(payload: Mapping[str, Any], remote: Mapping[str, Any]) -> list[str]:
    """Payload fields whose value Kantata's entry does not have (ids compared as strings,
    "" as null)."""
    return [k for k in payload if _norm(k, payload[k]) != _norm(k, remote.get(k))]


def payload_applied(payload: Mapping[str, Any], remote: Mapping[str, Any]) -> bool:
    """True when Kantata's entry already has every value of the payload."""
    return not differing_fields(payload, remote)


@dataclass(frozen=True, slots=True)
class UpdateCheck:
    """What to do with one update after reading Kantata's entry: `push` it; it is `done`
    already (the remote has the payload's values, e.g. our own PUT whose answer was lost);
    `conflict` (the remote changed since `base_updated_at`); `missing` (no such entry)."""

    action: Literal["push", "done", "conflict", "missing"]
    reason: str = ""
    local_wins: bool = False


def check_update(row: OutboxRow, remote: Mapping[str, Any] | None,
                 remote_updated_at: datetime | None,
                 policy: Literal["park", "local_wins"]) -> UpdateCheck:
    """The conflict check for one update (instants compared, second precision).

    An entry that already has the payload's values is `done` whatever its version, so an
    update whose own answer was lost is never reported as a conflict with itself. A row
    without `base_updated_at` (the entry was not mirrored when it was queued) is pushed.
    """
    if remote is None:
        return UpdateCheck("missing", f"time entry {row.entry_id} not found in Kantata "
                                      "(deleted there, or never existed)")
    payload = row.payload or {}
    if payload_applied(payload, remote):
        return UpdateCheck("done", "Kantata already has these values")
    if row.base_updated_at is None or remote_updated_at is None \
            or remote_updated_at == row.base_updated_at:
        return UpdateCheck("push")
    diff = differing_fields(payload, remote)
    # both as UTC instants: Kantata answers in the account's offset, the mirror holds UTC
    reason = (f"Kantata's entry changed since this edit was based on it: base updated_at "
              f"{row.base_updated_at.astimezone(UTC).isoformat()}, Kantata updated_at "
              f"{remote_updated_at.astimezone(UTC).isoformat()}; this edit and Kantata's current "
              f"entry differ in: {', '.join(diff)}")
    if policy == "local_wins":
        return UpdateCheck("push", reason, local_wins=True)
    return UpdateCheck("conflict", reason)


# ------------------------------------------------------------------------ outcomes
OutcomeKind = Literal["ok", "rejected", "conflict", "transient", "not_sent", "unresolved"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What happened to one row in this attempt.

    `ok`: Kantata has the change (`result` says how); `rejected`: a permanent 4xx with
    Kantata's `message`; `conflict`: the remote changed (`message`, `remote`); `transient`:
    429/5xx/timeout/reset or an unreadable answer (`message`, optional `retry_after` seconds);
    `not_sent`: nothing of this attempt was sent (shutdown) or applied (Kantata refused the
    whole request: a 401 for the token, a 405), so the attempt does not count; `message`, when
    given, says why (kept as `last_error`; without one the row's last error stays);
    `unresolved`: a create whose earlier answer was lost is not found by its lookup yet and
    must not be re-sent before `min_delay` seconds (nothing sent, attempt given back).
    `min_delay` (seconds, not capped by the back-off cap) holds a retry back until a request
    whose outcome is unknown can no longer be running at Kantata. `sent` False: certainly
    nothing of this attempt reached Kantata (the connection was refused), so the row's
    `sent_at` goes back to its value before the attempt (no lookup, no settle follow).
    """

    kind: OutcomeKind
    result: str | None = None
    message: str | None = None
    retry_after: float | None = None
    min_delay: float = 0.0
    entry_id: int | None = None
    remote: Mapping[str, Any] | None = None
    remote_updated_at: datetime | None = None
    sent: bool = True
    #: Kantata's rate limiter refused the request (429): nothing was applied, and waiting is
    #: all it asks, so the attempt is given back (throttling never dead-letters a row)
    throttled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The new state of one row: `status`, `last_error` (None = clear it, unless
    `keep_error`), `retry_in` seconds for pending rows, `refund` = give the attempt back,
    `unsent` = nothing of this attempt was sent: `sent_at` returns to `sent_at` (its value
    when the row was claimed)."""

    row_id: int
    status: OutboxStatus
    result: str | None = None
    last_error: str | None = None
    keep_error: bool = False
    retry_in: float = 0.0
    refund: bool = False
    entry_id: int | None = None
    remote: Mapping[str, Any] | None = None
    remote_updated_at: datetime | None = None
    unsent: bool = False
    sent_at: datetime | None = None


def settle_wait(sent_at: datetime | None, now: datetime, settle_seconds: float) -> float:
    """Seconds until a request sent at `sent_at` can no longer be running at Kantata (0 when
    it cannot already, or nothing was sent). Both instants aware; `settle_seconds` is Kantata's
    request time limit (api-notes §10)."""
    if sent_at is None:
        return 0.0
    return max(0.0, settle_seconds - (now - sent_at).total_seconds())


def backoff_seconds(attempts: int, base: float, cap: float,
                    retry_after: float | None = None) -> float:
    """Delay before the next attempt: `retry_after` when Kantata gave one (capped at `cap`),
    else base·2^(attempts-1) capped at `cap` (seconds)."""
    if retry_after is not None and retry_after >= 0:
        return float(min(retry_after, cap))
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))


def decide(row: OutboxRow, outcome: Outcome, *, max_attempts: int, backoff_base: float,
           backoff_cap: float) -> Decision:
    """The per-row decision table (see tests/unit/test_batching.py for every case).

    | outcome   | attempts < max                     | attempts >= max          |
    |-----------|------------------------------------|--------------------------|
    | ok        | done (result)                      | done                     |
    | rejected  | failed, Kantata's message          | failed                   |
    | conflict  | conflict, reason + remote version  | conflict                 |
    | transient | pending, back-off, message kept    | failed (dead letter)     |
    | throttled | pending, Retry-After, refunded     | pending, refunded        |
    | not_sent  | pending now, attempt refunded      | pending, refunded        |
    | unresolved| pending for min_delay, refunded    | pending, refunded        |

    An attempt that sent nothing (`not_sent`, or `sent` False) is `unsent`: the row's
    `sent_at` returns to its value at the claim.
    """
    unsent = outcome.kind == "not_sent" or not outcome.sent
    base = Decision(row_id=row.id, status="done", entry_id=outcome.entry_id,
                    remote=outcome.remote, remote_updated_at=outcome.remote_updated_at,
                    unsent=unsent, sent_at=row.sent_at if unsent else None)
    kind = outcome.kind
    if kind == "ok":
        return replace(base, result=outcome.result)
    if kind == "rejected":
        return replace(base, status="failed", last_error=outcome.message or "rejected by Kantata")
    if kind == "conflict":
        return replace(base, status="conflict", last_error=outcome.message)
    if kind == "transient":
        msg = outcome.message or "temporary failure"
        if outcome.throttled:
            delay = backoff_seconds(1, backoff_base, backoff_cap, outcome.retry_after)
            return replace(base, status="pending", last_error=msg, refund=True,
                           retry_in=max(delay, outcome.min_delay))
        if row.attempts >= max_attempts:
            return replace(base, status="failed", last_error=(
                f"dead letter: gave up after {row.attempts} attempts "
                f"(SYNCD_OUTBOX_MAX_ATTEMPTS={max_attempts}); last error: {msg}"))
        delay = backoff_seconds(row.attempts, backoff_base, backoff_cap, outcome.retry_after)
        return replace(base, status="pending", last_error=msg,
                       retry_in=max(delay, outcome.min_delay))
    if kind == "not_sent":
        return replace(base, status="pending", keep_error=outcome.message is None,
                       last_error=outcome.message, refund=True)
    if kind == "unresolved":
        return replace(base, status="pending", refund=True, retry_in=outcome.min_delay,
                       last_error=outcome.message, unsent=True, sent_at=row.sent_at)
    raise AssertionError(f"unknown outcome kind {kind!r}")


@dataclass
class Tally:
    """Counts of decisions by (op, outcome); outcome is the new status, `retry` for pending."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, op: str, status: str) -> None:
        key = (op, "retry" if status == "pending" else status)
        self.counts[key] = self.counts.get(key, 0) + 1

    def total(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)
