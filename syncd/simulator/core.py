"""The simulator core: state, business rules, rendering and query execution.

:class:`Simulator` is both the in-process API used by tests (``sim.create_entry(...)`` etc., which
act as Kantata itself and bypass business rules) and the engine behind the aiohttp routes built by
:meth:`Simulator.make_app` (``/api/v1`` public API with Kantata's rules, ``/_sim`` control API).
Facts implemented are cited as api-notes §n (``/work/shared/kantata/api-notes.md``).
"""

from __future__ import annotations

import math
import random
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timezone
from datetime import time as dtime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson

from .config import (
    IGNORED_PAGE_ENTRIES,
    INCONSISTENT_COUNT_EXTRA,
    ContractConfig,
    FaultConfig,
    SimConfig,
)
from .faults import FaultInjector
from .request_log import RequestLog
from .errors import MISSING_PARAMS, ApiError, InvalidInput, NotFound
from .models import (
    CURRENCIES,
    CURRENCY_INDEX,
    EntryStore,
    ExternalReference,
    Role,
    Story,
    User,
    Workspace,
)
from .query import (
    INCLUDES,
    BadRequest,
    Filters,
    Paging,
    parse_date,
    parse_filters,
    parse_includes,
    parse_list_query,
    parse_optional_fields,
    parse_paging,
)
from .seed import (
    FIRST_ENTRY_ID,
    FIRST_EXT_REF_ID,
    FIRST_USER_ID,
    FIRST_WORKSPACE_ID,
    MY_ACCOUNT_ID,
    auto_lock_date,
    seed_entries,
    seed_reference_data,
)

if TYPE_CHECKING:
    pass

MAX_BULK = 100
#: The per-query cache keeps at most this many filtered+sorted lists, and at most
#: `QUERY_CACHE_SLOTS_PER_ENTRY` slots per seeded entry over all of them: enough for a backfill's
#: monthly windows (26 for two years, 4 read at once) beside a whole-account listing, so a
#: windowed reader is not charged a full scan per window that a single-listing reader is not.
QUERY_CACHE_SIZE = 64
QUERY_CACHE_SLOTS_PER_ENTRY = 4
#: Fields writable through PUT (api-notes §7); ``external_reference`` handled separately.
PUT_FIELDS = ("workspace_id", "date_performed", "time_in_minutes", "billable", "rate_in_cents",
              "notes", "role_id", "story_id", "user_id", "location")
#: Fields accepted on POST (api-notes §6 / TE requestBody).
POST_FIELDS = PUT_FIELDS
EXT_REF_STATUSES = ("successful", "pending", "failed")
_EPOCH_ORD = date(1970, 1, 1).toordinal()
#: Ids of the simulated invoices (one per workspace) and timesheet submissions (numbered on
#: first sight), side-loaded by ``include=invoice`` / ``active_submission`` / ``recent_submission``.
FIRST_INVOICE_ID = 60_000_001
FIRST_SUBMISSION_ID = 70_000_001

_LABELS = {
    "workspace_id": "Workspace", "date_performed": "Date performed",
    "time_in_minutes": "Time in minutes", "billable": "Billable", "rate_in_cents": "Rate in cents",
    "cost_rate_in_cents": "Cost rate in cents", "notes": "Notes", "role_id": "Role",
    "story_id": "Story", "user_id": "User", "location": "Location", "approved": "Approved",
    "is_invoiced": "Is invoiced", "taxable": "Taxable", "currency": "Currency", "id": "Id",
    "created_at": "Created at", "updated_at": "Updated at",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_int(v: Any) -> int | None:
    """int, an integer-valued number such as ``60.0`` (JSON Schema counts it as an integer),
    or a decimal string (form bodies, string ids); anything else -> None."""
    if _is_int(v):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "1"):
            return True
        if s in ("false", "0"):
            return False
    if _is_int(v) and v in (0, 1):
        return bool(v)
    return None


class Simulator:
    """An in-memory Kantata OX account serving the time-entries API.

    Construction seeds ``config.entries`` deterministic entries (see seed.py). Reference data is
    exposed read-only as dicts keyed by int id: ``workspaces: dict[int, Workspace]``,
    ``users: dict[int, User]``, ``stories: dict[int, Story]``, ``roles: dict[int, Role]``
    (dataclasses from models.py); ``locations: list[str]`` (account locations);
    ``my_account_id`` (account of the token), ``me`` (the token's user id), ``lock_date``.

    Every write bumps ``version`` which invalidates the per-query cache of filtered+sorted slot
    lists; each entry's rendered JSON bytes are cached until that entry is written.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        if self.config.max_per_page < 1 or self.config.entries < 0:
            raise ValueError("SimConfig: max_per_page must be >= 1 and entries >= 0")
        self.tz = ZoneInfo(self.config.timezone)
        self._clock: Callable[[], datetime] = self.config.clock or (
            lambda: datetime.now(timezone.utc))
        self.store = EntryStore()
        self.workspaces: dict[int, Workspace] = {}
        self.users: dict[int, User] = {}
        self.stories: dict[int, Story] = {}
        self.roles: dict[int, Role] = {}
        self.my_account_id = MY_ACCOUNT_ID
        self.me = FIRST_USER_ID
        self.version = 0
        self._next_id = FIRST_ENTRY_ID
        self._next_ext_ref_id = FIRST_EXT_REF_ID
        self._qcache: OrderedDict[tuple[Any, ...], tuple[int, array]] = OrderedDict()
        self._ref_cache: dict[tuple[str, int], bytes] = {}
        self.requests = RequestLog(self.config.max_logged_requests)
        #: public requests being handled now, and the most at once since the log was cleared
        self.in_flight = 0
        self.peak_in_flight = 0
        self.fault_injector = FaultInjector()
        self.contract = ContractConfig()
        if self.config.contract is not None:
            self.set_contract(self.config.contract)
        self._submissions: dict[tuple[int, int, int], int] = {}
        self._submission_keys: dict[int, tuple[int, int, int]] = {}
        self.fmt_ts: Callable[[int], str] = lru_cache(maxsize=1 << 16)(self._fmt_ts)
        rng = random.Random(self.config.seed)
        anchor = self.config.anchor or self.today()
        if anchor > self.today():
            raise ValueError(f"SimConfig: anchor {anchor} is after today ({self.today()}): "
                             "the seed data would be from the future")
        # the data starts from the anchor day's local midnight: the same for a whole day
        now = math.floor(datetime.combine(anchor, dtime(0), self.tz).timestamp())
        ref = self.config.reference_entries
        seed_reference_data(self.roles, self.workspaces, self.stories, self.users, self.store,
                            self.config.entries if ref is None else ref, rng, now)
        self.locations: list[str] = list(self.store.location_names)
        if self.config.entries:
            self._next_id, self._next_ext_ref_id = seed_entries(
                self.store, self.workspaces, self.stories, self.users, self.config.entries, rng,
                now, self.tz, next_id=self._next_id, next_ext_ref_id=self._next_ext_ref_id)
        ld = self.config.lock_date
        if ld == "auto":
            self.lock_date: date | None = auto_lock_date(self.today())
        elif isinstance(ld, str):
            self.lock_date = parse_date(ld)
        else:
            self.lock_date = ld

    # ------------------------------------------------------------------ time
    def now(self) -> int:
        """Current instant as whole epoch seconds (from the configured clock)."""
        dt = self._clock()
        if dt.tzinfo is None:
            raise ValueError("SimConfig.clock must return timezone-aware datetimes")
        return math.floor(dt.timestamp())

    def today(self) -> date:
        """Today's date in the account time zone."""
        return datetime.fromtimestamp(self.now(), self.tz).date()

    def _fmt_ts(self, epoch: int) -> str:
        """Epoch seconds -> ISO 8601 with the account's UTC offset, never ``Z`` (api-notes §11)."""
        return datetime.fromtimestamp(epoch, self.tz).isoformat()

    def _parse_ts(self, v: Any, name: str) -> int:
        if isinstance(v, datetime):
            if v.tzinfo is None:
                raise InvalidInput(f"{name} must be timezone-aware")
            return math.floor(v.timestamp())
        if _is_int(v):
            return int(v)
        if isinstance(v, str):
            try:
                dt = datetime.fromisoformat(v.strip())
            except ValueError:
                raise InvalidInput(f"{name}: '{v}' is not an ISO 8601 date-time") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=self.tz)
            return math.floor(dt.timestamp())
        raise InvalidInput(f"{name} must be an ISO 8601 string")

    def _bump(self) -> None:
        self.version += 1

    # ------------------------------------------------------------- rendering
    def entry_dict(self, slot: int) -> dict[str, Any]:
        """Public representation of the entry in ``slot`` (without include-only fields).

        Ids and FKs are strings, null FKs stay null (api-notes §2), timestamps via :meth:`fmt_ts`,
        ``date_performed`` a plain ``YYYY-MM-DD`` date (§11).
        """
        s = self.store
        code, symbol, base = CURRENCIES[s.currency[slot]]
        loc = s.location[slot]
        story = s.story[slot]
        role = s.role[slot]
        return {
            "id": str(s.ids[slot]),
            "created_at": self.fmt_ts(s.created[slot]),
            "updated_at": self.fmt_ts(s.updated[slot]),
            "date_performed": date.fromordinal(s.date[slot]).isoformat(),
            "time_in_minutes": s.minutes[slot],
            "billable": bool(s.billable[slot]),
            "notes": s.notes[slot],
            "rate_in_cents": s.rate[slot],
            "cost_rate_in_cents": s.cost_rate[slot],
            "currency": code,
            "currency_symbol": symbol,
            "currency_base_unit": base,
            "approved": bool(s.approved[slot]),
            "is_invoiced": bool(s.invoiced[slot]),
            "taxable": bool(s.taxable[slot]),
            "location": s.location_names[loc - 1] if loc else None,
            "workspace_id": str(s.workspace[slot]),
            "user_id": str(s.user[slot]),
            "story_id": str(story) if story else None,
            "role_id": str(role) if role else None,
        }

    def entry_bytes(self, slot: int) -> bytes:
        """Cached ``orjson`` rendering of :meth:`entry_dict` (invalidated on write)."""
        b = self.store.cache[slot]
        if b is None:
            # orjson returns an over-allocated buffer (~8 KB resident per object);
            # an exact-size copy keeps a million cached entries at ~0.5 GB.
            b = memoryview(orjson.dumps(self.entry_dict(slot))).tobytes()
            self.store.cache[slot] = b
        return b

    def _ws_dict(self, w: Workspace) -> dict[str, Any]:
        code, symbol, base = CURRENCIES[CURRENCY_INDEX[w.currency]]
        return {"id": str(w.id), "title": w.title, "archived": w.archived,
                "account_id": w.account_id, "currency": code, "currency_symbol": symbol,
                "currency_base_unit": base, "require_time_approvals": w.require_time_approvals,
                "tasks_default_non_billable": w.tasks_default_non_billable,
                "created_at": self.fmt_ts(w.created_at), "updated_at": self.fmt_ts(w.updated_at)}

    def _user_dict(self, u: User) -> dict[str, Any]:
        d: dict[str, Any] = {"id": str(u.id), "full_name": u.full_name,
                             "email_address": u.email_address}
        if u.role_id is not None:
            d["role_id"] = str(u.role_id)
        return d

    def _story_dict(self, st: Story) -> dict[str, Any]:
        return {"id": str(st.id), "title": st.title, "workspace_id": str(st.workspace_id),
                "billable": st.billable, "story_type": "task", "state": "started",
                "time_trackable": True, "archived": False,
                "created_at": self.fmt_ts(st.created_at), "updated_at": self.fmt_ts(st.updated_at)}

    def _role_dict(self, r: Role) -> dict[str, Any]:
        return {"id": str(r.id), "name": r.name, "created_at": self.fmt_ts(r.created_at),
                "updated_at": self.fmt_ts(r.updated_at)}

    def _ext_dict(self, r: ExternalReference) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": str(r.id), "subject_id": r.subject_id, "subject_type": "TimeEntry",
            "subject_ref": {"key": "time_entries", "id": str(r.subject_id)},
            "service_name": r.service_name, "service_model": r.service_model,
            "service_model_ref": r.service_model_ref}
        for k in ("status", "external_message", "external_link", "external_status", "locked"):
            v = getattr(r, k)
            if v is not None:
                d[k] = v
        d["created_at"] = self.fmt_ts(r.created_at)
        d["updated_at"] = self.fmt_ts(r.updated_at)
        return d

    def _ref_bytes(self, kind: str, rid: int) -> bytes:
        key = (kind, rid)
        b = self._ref_cache.get(key)
        if b is None:
            if kind == "workspaces":
                b = orjson.dumps(self._ws_dict(self.workspaces[rid]))
            elif kind == "users":
                b = orjson.dumps(self._user_dict(self.users[rid]))
            elif kind == "stories":
                b = orjson.dumps(self._story_dict(self.stories[rid]))
            else:
                b = orjson.dumps(self._role_dict(self.roles[rid]))
            b = memoryview(b).tobytes()
            self._ref_cache[key] = b
        return b

    def envelope(self, slots: Sequence[int], count: int, paging: Paging,
                 includes: Iterable[str], optional: Iterable[str] = (), *,
                 page_count: int | None = None, echo_page: bool = False) -> bytes:
        """Assemble the Kantata list envelope from cached entry bytes (api-notes §2, §3).

        ``count`` is the size of the whole match; ``meta`` follows brainstem: ``page_count =
        ceil(count/page_size)`` (0 when empty), ``page_number`` = requested page (0 when empty,
        unless ``echo_page``); ``page_count`` given overrides the computed one. Every requested
        include key is present even when ``{}``; ``optional`` fields (``location_id``,
        ``user_can_edit``) are added to each entry. The current :class:`ContractConfig` shapes
        the answer (count mode, ids, foreign keys, timestamps); with every switch off the
        entries are the cached bytes as they are.
        """
        c = self.contract
        size = paging.size
        shown = count
        if c.count_mode == "negative":
            shown = -1
        elif c.count_mode == "inconsistent":
            shown = count + INCONSISTENT_COUNT_EXTRA
        if page_count is None:
            page_count = -(-shown // size) if shown > 0 else 0
        meta = {"count": shown, "page_count": page_count,
                "page_number": paging.page_number if count or echo_page else 0,
                "page_size": size}
        s = self.store
        includes = tuple(includes)
        optional = tuple(optional)
        ids = s.ids
        id_strs = [b"%d" % ids[sl] for sl in slots]
        extra = self._extra_fields(includes, optional)
        reshape = c.reshapes_objects
        if reshape:
            bodies = [self._reshaped_entry(sl, includes, extra) for sl in slots]
        elif extra is not None:
            bodies = []
            for sl in slots:
                eb = self.entry_bytes(sl)
                bodies.append(eb[:-1] + b"," + orjson.dumps(extra(sl))[1:])
        else:
            bodies = [self.entry_bytes(sl) for sl in slots]
        parts = [b'{"count":%d,"meta":' % shown, orjson.dumps(meta), b',"results":[',
                 b",".join(b'{"key":"time_entries","id":"' + i + b'"}' for i in id_strs),
                 b'],"time_entries":{',
                 b",".join(b'"' + i + b'":' + body for i, body in zip(id_strs, bodies)),
                 b"}"]
        done: set[str] = set()
        for inc in includes:
            key = INCLUDES[inc]
            if key in done:
                continue
            done.add(key)
            items: list[bytes] = []
            if inc == "external_references":
                for sl in slots:
                    for r in s.ext_refs.get(sl, ()):
                        d = self._ext_dict(r)
                        items.append(b'"%d":' % r.id + orjson.dumps(
                            self._reshape_side(d) if reshape else d))
            elif inc == "invoice":
                seen: dict[int, None] = {}
                for sl in slots:
                    iid = self._invoice_id(sl)
                    if iid is not None:
                        seen[iid] = None
                items = [b'"%d":' % iid + self._side_bytes(
                    self._invoice_dict(iid), reshape) for iid in seen]
            elif key == "timesheet_submissions":
                seen = {}
                for sl in slots:
                    sid = self._submission_id(sl)
                    if sid is not None:
                        seen[sid] = None
                items = [b'"%d":' % sid + self._side_bytes(
                    self._submission_dict(sid), reshape) for sid in seen]
            else:
                col = {"workspace": s.workspace, "user": s.user, "story": s.story,
                       "role": s.role}[inc]
                table: Mapping[int, Any] = {"workspace": self.workspaces, "user": self.users,
                                            "story": self.stories, "role": self.roles}[inc]
                seen = {}
                for sl in slots:
                    rid = col[sl]
                    if rid and rid in table:
                        seen[rid] = None
                if reshape:
                    items = [b'"%d":' % rid + orjson.dumps(self._reshape_side(
                        orjson.loads(self._ref_bytes(key, rid)))) for rid in seen]
                else:
                    items = [b'"%d":' % rid + self._ref_bytes(key, rid) for rid in seen]
            parts += [b',"', key.encode(), b'":{', b",".join(items), b"}"]
        parts.append(b"}")
        return b"".join(parts)

    # ------------------------------------------- include-only / optional fields and switches
    def _extra_fields(self, includes: tuple[str, ...], optional: tuple[str, ...]
                      ) -> Callable[[int], dict[str, Any]] | None:
        """Per-entry include-only and optional fields (contract TimeEntry: ``*_id`` of
        ``invoice``/``active_submission``/``recent_submission``, ``external_reference_ids``,
        ``location_id``, ``user_can_edit``), or ``None`` when nothing extra was asked for.
        An absent association is JSON ``null`` (brainstem ``to_s_except_nil``, api-notes §2)."""
        want_ext = "external_references" in includes
        want_inv = "invoice" in includes
        want_act = "active_submission" in includes
        want_rec = "recent_submission" in includes
        want_loc = "location_id" in optional
        want_edit = "user_can_edit" in optional
        if not (want_ext or want_inv or want_act or want_rec or want_loc or want_edit):
            return None
        s = self.store

        def extra(sl: int) -> dict[str, Any]:
            d: dict[str, Any] = {}
            if want_ext:
                d["external_reference_ids"] = [str(r.id) for r in s.ext_refs.get(sl, ())]
            if want_inv:
                iid = self._invoice_id(sl)
                d["invoice_id"] = None if iid is None else str(iid)
            if want_act or want_rec:
                sid = self._submission_id(sl)
                if want_act:
                    d["active_submission_id"] = None if sid is None else str(sid)
                if want_rec:
                    d["recent_submission_id"] = None if sid is None else str(sid)
            if want_loc:
                d["location_id"] = s.location[sl] or None
            if want_edit:
                d["user_can_edit"] = self._refusal(sl, "updated") is None
            return d

        return extra

    def _invoice_id(self, slot: int) -> int | None:
        """The invoice of an invoiced entry: one simulated invoice per workspace."""
        if not self.store.invoiced[slot]:
            return None
        return FIRST_INVOICE_ID + self.store.workspace[slot] - FIRST_WORKSPACE_ID

    def _invoice_dict(self, iid: int) -> dict[str, Any]:
        """Contract ``Invoice`` of a simulated invoice (see :meth:`_invoice_id`)."""
        ws = self.workspaces[iid - FIRST_INVOICE_ID + FIRST_WORKSPACE_ID]
        code, symbol, base = CURRENCIES[CURRENCY_INDEX[ws.currency]]
        number = iid - FIRST_INVOICE_ID + 1
        return {"id": str(iid), "title": f"Invoice #{number}", "user_invoice_number": number,
                "status": "new", "draft": False, "currency": code, "currency_symbol": symbol,
                "currency_base_unit": base, "created_at": self.fmt_ts(ws.created_at),
                "updated_at": self.fmt_ts(ws.updated_at)}

    def _submission_id(self, slot: int) -> int | None:
        """The timesheet submission of an approved entry: one per (workspace, user, week
        starting Sunday), numbered on first sight; ``None`` when not approved. Active and most
        recent submission are the same (the simulator keeps no rejected timesheets)."""
        s = self.store
        if not s.approved[slot]:
            return None
        day = s.date[slot]
        week = day - (date.fromordinal(day).weekday() + 1) % 7
        key = (s.workspace[slot], s.user[slot], week)
        sid = self._submissions.get(key)
        if sid is None:
            sid = FIRST_SUBMISSION_ID + len(self._submissions)
            self._submissions[key] = sid
            self._submission_keys[sid] = key
        return sid

    def _submission_dict(self, sid: int) -> dict[str, Any]:
        """Contract ``TimesheetSubmission`` of a simulated, approved submission."""
        ws_id, _user, week = self._submission_keys[sid]
        start, end = date.fromordinal(week), date.fromordinal(week + 6)
        ws = self.workspaces[ws_id]
        code, symbol, base = CURRENCIES[CURRENCY_INDEX[ws.currency]]
        ts = self.fmt_ts(min(self.now(), math.floor(datetime(
            end.year, end.month, end.day, 17, tzinfo=self.tz).timestamp())))
        return {"id": str(sid), "type": "TimesheetSubmission", "status": "approved",
                "title": f"Timesheet {start.isoformat()} - {end.isoformat()}",
                "start_date": start.isoformat(), "end_date": end.isoformat(),
                "currency": code, "currency_symbol": symbol, "currency_base_unit": base,
                "created_at": ts, "updated_at": ts}

    def _side_bytes(self, d: dict[str, Any], reshape: bool) -> bytes:
        return orjson.dumps(self._reshape_side(d) if reshape else d)

    @staticmethod
    def _lower_utc(epoch: int) -> str:
        """Epoch seconds -> ``YYYY-MM-DDtHH:MM:SSz`` (UTC, lower-case ``t``/``z``)."""
        return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dt%H:%M:%Sz")

    def _reshape_side(self, d: dict[str, Any]) -> dict[str, Any]:
        """Apply ``omit_object_ids`` / ``lowercase_timestamps`` to a side-loaded object."""
        c = self.contract
        if c.omit_object_ids:
            d.pop("id", None)
        if c.lowercase_timestamps:
            for k in ("created_at", "updated_at"):
                v = d.get(k)
                if isinstance(v, str):
                    d[k] = self._lower_utc(math.floor(datetime.fromisoformat(v).timestamp()))
        return d

    def _reshaped_entry(self, slot: int, includes: tuple[str, ...],
                        extra: Callable[[int], dict[str, Any]] | None) -> bytes:
        """An entry as the contract switches shape it (slow path, switches on only)."""
        c = self.contract
        d = orjson.loads(self.entry_bytes(slot))
        if c.omit_object_ids:
            del d["id"]
        if c.foreign_keys_only_with_include:
            for assoc in ("workspace", "user", "story", "role"):
                if assoc not in includes:
                    del d[assoc + "_id"]
        if c.lowercase_timestamps:
            d["created_at"] = self._lower_utc(self.store.created[slot])
            d["updated_at"] = self._lower_utc(self.store.updated[slot])
        if extra is not None:
            d.update(extra(slot))
        return orjson.dumps(d)

    # ---------------------------------------------------------------- queries
    def _filter(self, cands: Iterable[int], f: Filters) -> list[int]:
        """Slots among ``cands`` (alive) that pass every filter incl. default filters (§4)."""
        s = self.store
        allowed = {w.id for w in self.workspaces.values()
                   if (f.from_archived_workspaces or not w.archived)
                   and (not f.on_my_account or w.account_id == self.my_account_id)
                   and (f.workspace_ids is None or w.id in f.workspace_ids)}
        alive, ws = s.alive, s.workspace
        out = [x for x in cands if alive[x] and ws[x] in allowed]
        if f.date_from is not None:
            d, lo, hi = s.date, f.date_from, f.date_to
            out = [x for x in out if lo <= d[x] <= hi]  # type: ignore[operator]
        up, cr = s.updated, s.created
        if f.updated_after is not None:
            t = f.updated_after
            if self.contract.updated_after_inclusive:
                out = [x for x in out if up[x] >= t]
            else:
                out = [x for x in out if up[x] > t]
        if f.updated_before is not None:
            t = f.updated_before
            out = [x for x in out if up[x] < t]
        if f.created_after is not None:
            t = f.created_after
            out = [x for x in out if cr[x] > t]
        if f.created_before is not None:
            t = f.created_before
            out = [x for x in out if cr[x] < t]
        if f.user_ids is not None:
            us, uids = s.user, f.user_ids
            out = [x for x in out if us[x] in uids]
        if f.billable is not None:
            b, want = s.billable, int(f.billable)
            out = [x for x in out if b[x] == want]
        if f.approved:
            ap = s.approved
            no_approval = {w.id for w in self.workspaces.values()
                           if not w.require_time_approvals}
            out = [x for x in out if ap[x] or ws[x] in no_approval]
        if f.invoiced:
            inv = s.invoiced
            out = [x for x in out if inv[x]]
        if f.uninvoiced:
            inv = s.invoiced
            out = [x for x in out if not inv[x]]
        refs = s.ext_refs
        if f.has_external_references is not None:
            want_refs = f.has_external_references
            out = [x for x in out if bool(refs.get(x)) == want_refs]
        if f.has_ext_condition:
            def ok(r: ExternalReference) -> bool:
                return ((f.ext_service_name is None or r.service_name == f.ext_service_name)
                        and (f.ext_service_model is None or r.service_model == f.ext_service_model)
                        and (f.ext_refs is None or r.service_model_ref in f.ext_refs)
                        and (f.ext_status is None or r.status == f.ext_status)
                        and (f.ext_external_status is None
                             or r.external_status == f.ext_external_status)
                        and (f.ext_external_message is None
                             or r.external_message == f.ext_external_message))
            if len(out) < len(refs):  # e.g. re-checking one written entry
                out = [x for x in out if any(ok(r) for r in refs.get(x, ()))]
            else:
                matching = {sl for sl, lst in refs.items() if any(ok(r) for r in lst)}
                out = [x for x in out if x in matching]
        if f.without_ext_service_name is not None:
            name = f.without_ext_service_name
            out = [x for x in out
                   if not any(r.service_name == name for r in refs.get(x, ()))]
        return out

    def _sort(self, slots: list[int], order_field: str, desc: bool) -> None:
        """Sort in place by ``order_field`` then id ASC always (brainstem tiebreak, §3)."""
        slots.sort(key=self._sort_key(order_field, desc))

    def select(self, filters: Filters, order_field: str, order_desc: bool) -> array:
        """Filtered + sorted slots for a query, cached per (query, state ``version``).

        ``only`` queries (at most a few hundred candidates) are computed directly and not
        cached, so id probes never evict the big cached lists of a paging client.
        """
        if filters.only is not None:
            so = self.store.slot_of
            small = self._filter([so[i] for i in filters.only if i in so], filters)
            self._sort(small, order_field, order_desc)
            return array("q", small)
        key = (filters, order_field, order_desc)
        hit = self._qcache.get(key)
        if hit is not None and hit[0] == self.version:
            self._qcache.move_to_end(key)
            return hit[1]
        out = self._filter(range(len(self.store.ids)), filters)
        self._sort(out, order_field, order_desc)
        arr = array("q", out)
        self._qcache[key] = (self.version, arr)
        self._qcache.move_to_end(key)
        budget = QUERY_CACHE_SLOTS_PER_ENTRY * len(self.store.ids) + 10_000
        held = sum(len(a) for _, a in self._qcache.values())
        while len(self._qcache) > QUERY_CACHE_SIZE or (held > budget and len(self._qcache) > 1):
            _, (_, dropped) = self._qcache.popitem(last=False)
            held -= len(dropped)
        return arr

    # ------------------------------------------------------------ public API
    def api_list(self, query: Mapping[str, str]) -> bytes:
        """``GET /time_entries``: envelope bytes (api-notes §2-§4). Raises ApiError(400)."""
        try:
            q = parse_list_query(query, self.tz, self.config.max_per_page)
        except BadRequest as e:
            raise ApiError.system(400, str(e)) from None
        matched = self.select(q.filters, q.order_field, q.order_desc)
        count = len(matched)
        size = q.paging.size
        if q.filters.only is not None:
            page: Sequence[int] = matched  # ``only`` bypasses pagination (§3)
        elif self.contract.ignore_page:  # every page answers page 1 (ContractConfig)
            real = -(-count // size) if count else 0
            return self.envelope(matched[:size], count, q.paging, q.includes, q.optional,
                                 page_count=max(real, IGNORED_PAGE_ENTRIES // size),
                                 echo_page=True)
        else:
            page = matched[q.paging.offset:q.paging.offset + size]
        return self.envelope(page, count, q.paging, q.includes, q.optional)

    def api_show(self, eid: int, query: Mapping[str, str]) -> bytes:
        """``GET /time_entries/{id}``; filters incl. defaults apply, 404 when hidden (§9)."""
        try:
            filters = parse_filters(query, self.tz, with_only=False)
        except BadRequest as e:
            raise ApiError.system(400, str(e)) from None
        slot = self.store.slot_of.get(eid)
        if slot is None or not self._filter([slot], filters):
            raise ApiError.system(404, "Record not found")
        return self._present([slot], query)

    def _present(self, slots: Sequence[int], query: Mapping[str, str], *,
                 write: bool = False) -> bytes:
        """Envelope for explicit slots in the given order (create/update/show responses);
        ``write`` answers ignore ``include=`` under ``write_answers_ignore_include``."""
        paging = parse_paging(query, self.config.max_per_page)
        paging = Paging(offset=0, size=paging.size, page_number=1)
        includes = () if write and self.contract.write_answers_ignore_include \
            else parse_includes(query.get("include"))
        return self.envelope(slots, len(slots), paging, includes, parse_optional_fields(query))

    def _check_fields(self, raw: Mapping[str, Any], allowed: Iterable[str],
                      errors: list[dict[str, Any]], *, public: bool) -> dict[str, Any]:
        """Type-check/coerce the given fields; append validation errors; return normalised values.

        Output keys: workspace, date, minutes, billable, rate, cost_rate, notes, role, story,
        user, location, approved, invoiced, taxable, currency, id, created, updated (only keys
        present in ``raw`` and ``allowed``).
        """
        out: dict[str, Any] = {}

        def err(fld: str, msg: str) -> None:
            errors.append({"type": "validation", "field": fld, "message": msg})

        for fld in allowed:
            if fld not in raw:
                continue
            v = raw[fld]
            label = _LABELS.get(fld, fld)
            if fld in ("workspace_id", "user_id", "story_id", "role_id", "id"):
                if v is None or v == "":
                    if fld in ("story_id", "role_id"):
                        out[fld[:-3]] = None
                    else:
                        err(fld, f"{label} can't be blank")
                    continue
                iv = _as_int(v)
                if iv is None or iv <= 0:
                    err(fld, f"{label} must be a positive integer id")
                    continue
                table: Mapping[int, Any] | None = {
                    "workspace_id": self.workspaces, "user_id": self.users,
                    "story_id": self.stories, "role_id": self.roles}.get(fld)
                if table is not None and iv not in table:
                    err(fld, f"{label} {iv} not found")
                    continue
                out["id" if fld == "id" else fld[:-3]] = iv
            elif fld == "date_performed":
                if v is None or v == "":
                    err(fld, "Date performed can't be blank")
                    continue
                if isinstance(v, date) and not isinstance(v, datetime):
                    out["date"] = v
                    continue
                try:
                    out["date"] = parse_date(v) if isinstance(v, str) else None
                except ValueError:
                    out["date"] = None
                if out["date"] is None:
                    del out["date"]
                    err(fld, f"Date performed is not a valid YYYY-MM-DD date: {v!r}")
            elif fld == "time_in_minutes":
                if v is None or v == "":
                    err(fld, "Time in minutes can't be blank")
                    continue
                iv = _as_int(v)
                if iv is None:
                    err(fld, "Time in minutes must be an integer")
                elif not 1 <= iv <= 1440:
                    err(fld, "Time in minutes must be between 1 and 1440")
                else:
                    out["minutes"] = iv
            elif fld in ("billable", "approved", "is_invoiced", "taxable"):
                bv = _as_bool(v)
                if bv is None:
                    err(fld, f"{label} must be true or false")
                else:
                    out[{"is_invoiced": "invoiced"}.get(fld, fld)] = bv
            elif fld in ("rate_in_cents", "cost_rate_in_cents"):
                iv = _as_int(v)
                if iv is None or iv < 0 or iv > 2**53:
                    err(fld, f"{label} must be a non-negative integer")
                else:
                    out["rate" if fld == "rate_in_cents" else "cost_rate"] = iv
            elif fld == "notes":
                if v is not None and not isinstance(v, str):
                    err(fld, "Notes must be a string")
                else:
                    out["notes"] = v
            elif fld == "location":
                if v is not None and not isinstance(v, str):
                    err(fld, "Location must be a string")
                elif public and v not in (None, "") and v not in self.locations:
                    err(fld, f"Location must match the name of an existing account location "
                             f"({', '.join(self.locations)})")
                else:
                    out["location"] = v or None
            elif fld == "currency":
                if v not in CURRENCY_INDEX:
                    err(fld, f"Currency must be one of {', '.join(CURRENCY_INDEX)}")
                else:
                    out["currency"] = CURRENCY_INDEX[v]
            elif fld in ("created_at", "updated_at"):
                try:
                    out["created" if fld == "created_at" else "updated"] = self._parse_ts(v, fld)
                except InvalidInput as e:
                    err(fld, str(e))
        return out

    def _check_ext_ref(self, v: Any, errors: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Validate an ``external_reference`` request object (api-notes §5)."""
        def err(msg: str) -> None:
            errors.append({"type": "validation", "field": "external_reference", "message": msg})

        if not isinstance(v, Mapping):
            err("External reference must be an object")
            return None
        out: dict[str, Any] = {}
        ok = True
        for k in ("service_name", "service_model", "service_model_ref"):
            x = v.get(k)
            if _is_int(x) and k == "service_model_ref":
                x = str(x)
            if not isinstance(x, str) or not x.strip():
                err(f"External reference {k} can't be blank")
                ok = False
            else:
                out[k] = x
        st = v.get("status")
        if st is not None and st not in EXT_REF_STATUSES:
            err(f"External reference status must be one of {', '.join(EXT_REF_STATUSES)}")
            ok = False
        out["status"] = st
        for k in ("external_message", "external_link", "external_status"):
            x = v.get(k)
            if x is not None and not isinstance(x, str):
                err(f"External reference {k} must be a string")
                ok = False
            out[k] = x
        lk = v.get("locked")
        if lk is not None and not isinstance(lk, bool):
            err("External reference locked must be true or false")
            ok = False
        out["locked"] = lk
        return out if ok else None

    def _lock_msg(self, d: date) -> str | None:
        if self.lock_date is not None and d <= self.lock_date:
            return (f"Date performed {d.isoformat()} is on or before the lock date "
                    f"{self.lock_date.isoformat()}; time is locked")
        return None

    def _validate_create(self, raw: Any) -> tuple[dict[str, Any], dict[str, Any] | None,
                                                  list[dict[str, Any]]]:
        """Public create rules (api-notes §5-§7). Returns (values, ext_ref, errors)."""
        errors: list[dict[str, Any]] = []
        if not isinstance(raw, Mapping):
            return {}, None, [{"type": "validation", "field": "base",
                               "message": "Time entry must be an object"}]
        for req in ("workspace_id", "date_performed", "time_in_minutes"):
            if raw.get(req) is None or raw.get(req) == "":
                errors.append({"type": "validation", "field": req,
                               "message": f"{_LABELS[req]} can't be blank"})
        present = {k: v for k, v in raw.items() if not (
            k in ("workspace_id", "date_performed", "time_in_minutes") and v in (None, ""))}
        vals = self._check_fields(present, POST_FIELDS, errors, public=True)
        ws = self.workspaces.get(vals.get("workspace", 0))
        if ws is not None and ws.archived:
            errors.append({"type": "validation", "field": "workspace_id",
                           "message": f"Workspace {ws.id} is archived; time cannot be added"})
        if "date" in vals:
            msg = self._lock_msg(vals["date"])
            if msg:
                errors.append({"type": "validation", "field": "date_performed", "message": msg})
        ext = None
        if raw.get("external_reference") is not None:
            ext = self._check_ext_ref(raw["external_reference"], errors)
        return vals, ext, errors

    def _complete_new(self, vals: dict[str, Any]) -> dict[str, Any]:
        """Fill create defaults: user = token owner, role = user's role, billable from the story
        else not ``tasks_default_non_billable`` (api-notes §5, §14 Q14), rates from the user,
        currency from the workspace, flags false."""
        ws = self.workspaces[vals["workspace"]]
        user = self.users.get(vals.get("user") or self.me) or self.users[self.me]
        story = self.stories.get(vals.get("story") or 0)
        if "billable" not in vals:
            vals["billable"] = story.billable if story is not None \
                else not ws.tasks_default_non_billable
        vals.setdefault("user", user.id)
        vals.setdefault("role", user.role_id)
        vals.setdefault("story", None)
        vals.setdefault("rate", user.rate_in_cents if vals["billable"] else 0)
        vals.setdefault("cost_rate", user.cost_rate_in_cents)
        vals.setdefault("notes", None)
        vals.setdefault("location", None)
        vals.setdefault("approved", False)
        vals.setdefault("invoiced", False)
        vals.setdefault("taxable", False)
        vals.setdefault("currency", CURRENCY_INDEX[ws.currency])
        return vals

    def _insert(self, vals: dict[str, Any], ext: Iterable[dict[str, Any]] = ()) -> int:
        now = self.now()
        eid = vals.get("id")
        if eid is None:
            eid = self._next_id
        vals["id"] = eid
        vals.setdefault("created", now)
        vals.setdefault("updated", max(now, vals["created"]))
        exts = list(ext)

        def mutate() -> int:
            slot = self.store.append(vals)
            for e in exts:
                self._attach_ext(slot, e, vals["updated"])
            return slot

        slot = self._write(None, mutate)
        self._next_id = max(self._next_id, eid + 1)
        return slot

    def _sort_key(self, order_field: str, desc: bool) -> Callable[[int], int]:
        """Composite integer sort key: field value, then id ASC (see :meth:`_sort`)."""
        s = self.store
        col = {"created_at": s.created, "updated_at": s.updated, "date_performed": s.date}[
            order_field]
        ids = s.ids
        if desc:
            return lambda x: ((-col[x]) << 64) + ids[x]
        return lambda x: (col[x] << 64) + ids[x]

    def _write(self, slot: int | None, mutate: Callable[[], int | None]) -> int:
        """Run an entry write and keep the query cache exact instead of dropping it.

        Cached filtered+sorted lists that are current (``version`` matches) get the entry
        removed (located by binary search on its pre-write sort key) and, when it still
        matches the query after the write, re-inserted at its new position; they are then
        re-stamped with the new version. Paging a million entries while writes happen thus
        costs O(log n + memmove) per write and cached query, not a re-sort. ``slot=None`` means
        an insert; ``mutate`` returns the new slot.
        """
        live = [(k, arr) for k, (ver, arr) in self._qcache.items() if ver == self.version]
        if slot is not None:
            for key, arr in live:
                kf = self._sort_key(key[1], key[2])
                pos = bisect_left(arr, kf(slot), key=kf)
                if pos < len(arr) and arr[pos] == slot:
                    del arr[pos]
        result = mutate()
        if slot is None:
            assert result is not None
            slot = result
        self.version += 1
        eid = self.store.ids[slot]
        for key, arr in live:
            f: Filters = key[0]
            if (f.only is None or eid in f.only) and self._filter([slot], f):
                kf = self._sort_key(key[1], key[2])
                arr.insert(bisect_left(arr, kf(slot), key=kf), slot)
            self._qcache[key] = (self.version, arr)
        return slot

    def _attach_ext(self, slot: int, e: dict[str, Any], ts: int) -> None:
        """Add (or replace, same ``service_name``) an external reference on the entry."""
        refs = self.store.ext_refs.setdefault(slot, [])
        for i, r in enumerate(refs):
            if r.service_name == e["service_name"]:
                new = ExternalReference(id=r.id, subject_id=self.store.ids[slot],
                                        created_at=r.created_at, updated_at=ts, **e)
                refs[i] = new
                return
        refs.append(ExternalReference(id=self._next_ext_ref_id, subject_id=self.store.ids[slot],
                                      created_at=ts, updated_at=ts, **e))
        self._next_ext_ref_id += 1

    def api_create(self, body: Any, query: Mapping[str, str]) -> bytes:
        """``POST /time_entries``: single ``time_entry`` or bulk ``time_entries`` (<= 100),
        all-or-nothing with ``index`` on each error (api-notes §6, §14 Q5)."""
        if not isinstance(body, Mapping):
            raise ApiError.syntax(MISSING_PARAMS)
        if "time_entry" in body:
            items, bulk = [body["time_entry"]], False
        elif "time_entries" in body:
            items, bulk = body["time_entries"], True
            if not isinstance(items, list) or not items:
                raise ApiError.syntax(MISSING_PARAMS + " (time_entries must be a non-empty array)")
            if len(items) > MAX_BULK:
                raise ApiError(422, [{
                    "type": "validation", "field": "time_entries",
                    "message": f"Cannot create more than {MAX_BULK} time entries in one request "
                               f"(got {len(items)})"}])
        else:
            raise ApiError.syntax(MISSING_PARAMS)
        prepared: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        all_errors: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            vals, ext, errors = self._validate_create(item)
            if bulk:
                for e in errors:
                    e["index"] = i
            all_errors += errors
            prepared.append((vals, ext))
        if all_errors:
            raise ApiError(422, all_errors)
        slots = [self._insert(self._complete_new(v), [ext] if ext else []) for v, ext in prepared]
        if self.contract.bulk_create_order == "default":
            slots.sort(key=self._sort_key("date_performed", True))
        return self._present(slots, query, write=True)

    def _slot_or_404(self, eid: int) -> int:
        slot = self.store.slot_of.get(eid)
        if slot is None:
            raise ApiError.system(404, "Record not found")
        return slot

    def _refusal(self, slot: int, verb: str) -> str | None:
        """Why the entry in ``slot`` cannot be edited/deleted (invoiced, locked), else None."""
        s = self.store
        eid = s.ids[slot]
        if s.invoiced[slot]:
            return f"Time entry {eid} could not be {verb}: it has been invoiced"
        d = date.fromordinal(s.date[slot])
        if self.lock_date is not None and d <= self.lock_date:
            return (f"Time entry {eid} could not be {verb}: its date performed {d.isoformat()} "
                    f"is on or before the lock date {self.lock_date.isoformat()}")
        return None

    def api_update(self, eid: int, body: Any, query: Mapping[str, str]) -> bytes:
        """``PUT /time_entries/{id}``: partial update of the writable fields (api-notes §7).

        Default filters do not apply to writes (only to index/show). 422 when invoiced, locked
        (current or new date), or a value is invalid; unknown keys are ignored.
        """
        slot = self._slot_or_404(eid)
        if not isinstance(body, Mapping) or not isinstance(body.get("time_entry"), Mapping):
            raise ApiError.syntax(MISSING_PARAMS)
        raw = body["time_entry"]
        reason = self._refusal(slot, "updated")
        if reason:
            raise ApiError(422, [{"type": "validation", "field": "base", "message": reason,
                                  "id": str(eid)}])
        errors: list[dict[str, Any]] = []
        vals = self._check_fields(raw, PUT_FIELDS, errors, public=True)
        if "workspace" in vals and vals["workspace"] != self.store.workspace[slot]:
            ws = self.workspaces[vals["workspace"]]
            if ws.archived:
                errors.append({"type": "validation", "field": "workspace_id",
                               "message": f"Workspace {ws.id} is archived; time cannot be moved "
                                          f"there"})
        if "date" in vals:
            msg = self._lock_msg(vals["date"])
            if msg:
                errors.append({"type": "validation", "field": "date_performed", "message": msg})
        ext = None
        if raw.get("external_reference") is not None:
            ext = self._check_ext_ref(raw["external_reference"], errors)
        if errors:
            raise ApiError(422, errors)
        self._apply(slot, vals, [ext] if ext else [])
        return self._present([slot], query, write=True)

    def _apply(self, slot: int, vals: dict[str, Any], exts: Iterable[dict[str, Any]] = (),
               updated: int | None = None) -> None:
        """Write normalised values into ``slot``; ``updated_at`` = given or max(now, previous)."""
        self._write(slot, lambda: self._mutate(slot, vals, list(exts), updated))

    def _mutate(self, slot: int, vals: dict[str, Any], exts: list[dict[str, Any]],
                updated: int | None) -> None:
        s = self.store
        if "workspace" in vals:
            s.workspace[slot] = vals["workspace"]
        if "date" in vals:
            s.date[slot] = vals["date"].toordinal()
        if "minutes" in vals:
            s.minutes[slot] = vals["minutes"]
        for key, col in (("billable", s.billable), ("approved", s.approved),
                         ("invoiced", s.invoiced), ("taxable", s.taxable)):
            if key in vals:
                col[slot] = 1 if vals[key] else 0
        if "rate" in vals:
            s.rate[slot] = vals["rate"]
        if "cost_rate" in vals:
            s.cost_rate[slot] = vals["cost_rate"]
        if "notes" in vals:
            s.notes[slot] = vals["notes"]
        if "role" in vals:
            s.role[slot] = vals["role"] or 0
        if "story" in vals:
            s.story[slot] = vals["story"] or 0
        if "user" in vals:
            s.user[slot] = vals["user"]
        if "location" in vals:
            s.location[slot] = s.location_code(vals["location"])
        if "currency" in vals:
            s.currency[slot] = vals["currency"]
        if "created" in vals:
            s.created[slot] = vals["created"]
        if updated is None:
            updated = vals.get("updated")
        if updated is None:
            updated = max(self.now(), s.updated[slot])
        s.updated[slot] = updated
        for e in exts:
            self._attach_ext(slot, e, updated)
        s.cache[slot] = None

    def api_delete(self, eid: int) -> None:
        """``DELETE /time_entries/{id}``: 204, 404 unknown, 422 invoiced/locked (api-notes §8)."""
        slot = self._slot_or_404(eid)
        reason = self._refusal(slot, "deleted")
        if reason:
            raise ApiError(422, [{"type": "validation", "field": "base", "message": reason,
                                  "id": str(eid)}])
        self._write(slot, lambda: self.store.kill(slot))

    def api_bulk_delete(self, ids_value: Any) -> None:
        """``DELETE /time_entries`` with ``ids`` (comma string or array, <= 100), all-or-nothing.

        422 with one error per undeletable id (``id`` + message naming it and why); 404 when
        every id is unknown (api-notes §8, §14 Q6); 400 when ``ids`` is missing/empty.
        """
        if isinstance(ids_value, str):
            toks = [t.strip() for t in ids_value.split(",") if t.strip()]
        elif isinstance(ids_value, list) and all(
                isinstance(t, str) or _is_int(t) for t in ids_value):
            toks = [str(t).strip() for t in ids_value if str(t).strip()]
        elif _is_int(ids_value):
            toks = [str(ids_value)]
        else:
            toks = []
        toks = list(dict.fromkeys(toks))
        if not toks:
            raise ApiError.syntax(MISSING_PARAMS + " (ids)")
        if len(toks) > MAX_BULK:
            raise ApiError(422, [{"type": "validation", "field": "ids",
                                  "message": f"You can provide up to {MAX_BULK} IDs "
                                             f"(got {len(toks)})"}])
        errors: list[dict[str, Any]] = []
        slots: list[int] = []
        unknown = 0
        for t in toks:
            slot = self.store.slot_of.get(int(t)) if t.isdigit() else None
            if slot is None:
                unknown += 1
                errors.append({"type": "validation", "field": "ids", "id": t,
                               "message": f"Time entry {t} could not be deleted: not found"})
                continue
            reason = self._refusal(slot, "deleted")
            if reason:
                errors.append({"type": "validation", "field": "ids", "id": t, "message": reason})
            slots.append(slot)
        if unknown == len(toks):
            raise ApiError(404, [{"type": "system", "id": e["id"],
                                  "message": f"Time entry {e['id']} not found"} for e in errors])
        if errors:
            raise ApiError(422, errors)
        for slot in slots:
            self._write(slot, lambda: self.store.kill(slot))  # noqa: B023 - called at once

    # ------------------------------------------------------ in-process API
    def _slot(self, eid: int) -> int:
        slot = self.store.slot_of.get(int(eid))
        if slot is None:
            raise NotFound(f"time entry {eid} not found")
        return slot

    def list_entries(self) -> list[dict[str, Any]]:
        """Every live entry, rendered like the public API (no include-only fields), by id.

        Ignores default filters (archived / other-account entries included). Same as
        ``GET /_sim/entries`` ``["time_entries"]``.
        """
        return orjson.loads(self.list_entries_bytes())["time_entries"]

    def list_entries_bytes(self) -> bytes:
        """``{"time_entries":[...]}`` bytes for ``GET /_sim/entries`` (sorted by id)."""
        s = self.store
        slots = sorted((sl for sl in s.slot_of.values()), key=s.ids.__getitem__)
        parts = [b'{"time_entries":[']
        for sl in slots:
            parts.append(self.entry_bytes(sl))
            parts.append(b",")
        if len(parts) > 1:
            parts.pop()
        parts.append(b"]}")
        return b"".join(parts)

    def get_entry(self, id: int) -> dict[str, Any] | None:  # noqa: A002 - brief's name
        """One entry as the public API renders it, or ``None``; ignores default filters."""
        slot = self.store.slot_of.get(int(id))
        return None if slot is None else orjson.loads(self.entry_bytes(slot))

    def _control_fields(self, fields: Mapping[str, Any], *, create: bool) -> tuple[
            dict[str, Any], list[dict[str, Any]]]:
        if not isinstance(fields, Mapping):
            raise InvalidInput("entry fields must be an object")
        errors: list[dict[str, Any]] = []
        allowed = list(PUT_FIELDS) + ["cost_rate_in_cents", "approved", "is_invoiced", "taxable",
                                      "currency", "created_at", "updated_at"]
        if create:
            allowed.append("id")
        vals = self._check_fields(fields, allowed, errors, public=False)
        exts: list[dict[str, Any]] = []
        raw_ext = []
        if fields.get("external_reference") is not None:
            raw_ext.append(fields["external_reference"])
        if fields.get("external_references") is not None:
            if not isinstance(fields["external_references"], list):
                raise InvalidInput("external_references must be an array")
            raw_ext += fields["external_references"]
        for e in raw_ext:
            ok = self._check_ext_ref(e, errors)
            if ok is not None:
                exts.append(ok)
        if errors:
            raise InvalidInput("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        return vals, exts

    def create_entry(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Create an entry as Kantata itself (no lock-date / archived / invoiced rules).

        Any entry field may be given, incl. ``id``, ``created_at``, ``updated_at`` (ISO 8601 or
        aware datetime), ``approved``, ``is_invoiced``, ``external_reference(s)``. Defaults:
        first visible workspace, today, 60 minutes, then the public create defaults.
        Raises InvalidInput on malformed values or a duplicate id.
        """
        vals, exts = self._control_fields(fields, create=True)
        if "id" in vals and vals["id"] in self.store.slot_of:
            raise InvalidInput(f"time entry {vals['id']} already exists")
        if "workspace" not in vals:
            vals["workspace"] = next(w.id for w in self.workspaces.values()
                                     if not w.archived and w.account_id == self.my_account_id)
        vals.setdefault("date", self.today())
        vals.setdefault("minutes", 60)
        slot = self._insert(self._complete_new(vals), exts)
        return orjson.loads(self.entry_bytes(slot))

    def edit_entry(self, id: int, fields: Mapping[str, Any]) -> dict[str, Any]:  # noqa: A002
        """Edit as a user in the Kantata UI (bypasses rules); ``updated_at`` = now unless given
        (never moved backwards implicitly). Raises NotFound / InvalidInput."""
        slot = self._slot(id)
        vals, exts = self._control_fields(fields, create=False)
        self._apply(slot, vals, exts)
        return orjson.loads(self.entry_bytes(slot))

    def delete_entry(self, id: int) -> None:  # noqa: A002
        """Hard-delete an entry (bypasses rules). Raises NotFound."""
        slot = self._slot(id)
        self._write(slot, lambda: self.store.kill(slot))

    def invoice_entry(self, id: int) -> dict[str, Any]:  # noqa: A002
        """Mark an entry invoiced (and approved: Kantata invoices approved time only); this is a
        write, so ``updated_at`` moves to now. Raises NotFound."""
        slot = self._slot(id)
        self._apply(slot, {"invoiced": True, "approved": True})
        return orjson.loads(self.entry_bytes(slot))

    def _workspace(self, id: int) -> Workspace:  # noqa: A002
        ws = self.workspaces.get(int(id))
        if ws is None:
            raise NotFound(f"workspace {id} not found")
        return ws

    def archive_workspace(self, id: int) -> dict[str, Any]:  # noqa: A002
        """Archive a workspace: its entries disappear unless ``from_archived_workspaces=true``."""
        return self._set_archived(id, True)

    def unarchive_workspace(self, id: int) -> dict[str, Any]:  # noqa: A002
        """Undo :meth:`archive_workspace`."""
        return self._set_archived(id, False)

    def rename_workspace(self, id: int, title: str) -> dict[str, Any]:  # noqa: A002
        """Rename a workspace as a Kantata user would (any text, NUL included); its
        ``updated_at`` moves to now. Raises NotFound."""
        ws = self._workspace(id)
        ws.title = title
        ws.updated_at = max(self.now(), ws.updated_at)
        self._ref_cache.pop(("workspaces", ws.id), None)
        self._bump()
        return self._ws_dict(ws)

    def _set_archived(self, id: int, archived: bool) -> dict[str, Any]:  # noqa: A002
        ws = self._workspace(id)
        ws.archived = archived
        ws.updated_at = max(self.now(), ws.updated_at)
        self._ref_cache.pop(("workspaces", ws.id), None)
        self._bump()
        return self._ws_dict(ws)

    def set_lock_date(self, d: date | str | None) -> None:
        """Set (``date`` or ``YYYY-MM-DD``) or clear (``None``) the account lock date."""
        if isinstance(d, str):
            try:
                d = parse_date(d)
            except ValueError as e:
                raise InvalidInput(str(e)) from None
        elif d is not None and (not isinstance(d, date) or isinstance(d, datetime)):
            raise InvalidInput("lock_date must be a YYYY-MM-DD date or null")
        self.lock_date = d
        self._bump()

    def clear_requests(self) -> None:
        """Forget the public-request log (and the peak of requests in flight)."""
        self.requests.clear()
        self.peak_in_flight = self.in_flight

    def set_faults(self, faults: FaultConfig | Mapping[str, Any]) -> None:
        """Replace the fault configuration and reseed the fault RNG (deterministic)."""
        cfg = faults if isinstance(faults, FaultConfig) else FaultConfig.from_dict(faults)
        cfg.validate()
        self.fault_injector.configure(cfg)

    @property
    def faults(self) -> FaultConfig:
        """The current fault configuration (set with `set_faults`)."""
        return self.fault_injector.config

    def clear_faults(self) -> None:
        """Back to no faults (rate limit falls back to ``SimConfig``)."""
        self.set_faults(FaultConfig())

    def set_contract(self, contract: ContractConfig | Mapping[str, Any] | None) -> None:
        """Replace the contract switches (:class:`ContractConfig`, a JSON-like mapping with
        ``null`` = default, or ``None`` = all defaults). Raises ValueError on an unknown switch
        or a bad value. The per-query cache is dropped (``updated_after_inclusive`` changes
        which entries match); stored entries, the request log and ``/_sim`` are unaffected."""
        if contract is None:
            cfg = ContractConfig()
        elif isinstance(contract, ContractConfig):
            cfg = contract
        else:
            cfg = ContractConfig.from_dict(contract)
        cfg.validate()
        self.contract = cfg
        self._qcache.clear()

    def clear_contract(self) -> None:
        """Back to every contract switch off (today's answers)."""
        self.set_contract(None)

    def state(self) -> dict[str, Any]:
        """Summary for ``GET /_sim/state``."""
        s = self.store
        return {
            "entries": s.live_count,
            "workspaces": len(self.workspaces),
            "archived_workspaces": sum(1 for w in self.workspaces.values() if w.archived),
            "users": len(self.users), "stories": len(self.stories), "roles": len(self.roles),
            "lock_date": self.lock_date.isoformat() if self.lock_date else None,
            "my_account_id": self.my_account_id, "me": str(self.me),
            "timezone": self.config.timezone, "version": self.version,
            "requests": len(self.requests), "faults": self.faults.to_dict(),
            "contract": self.contract.to_dict(),
        }

    def reference_list(self, kind: str) -> list[dict[str, Any]]:
        """Rendered workspaces/users/stories/roles for ``GET /_sim/<kind>`` (sorted by id)."""
        if kind == "workspaces":
            return [dict(self._ws_dict(w), on_my_account=w.account_id == self.my_account_id)
                    for w in sorted(self.workspaces.values(), key=lambda w: w.id)]
        if kind == "users":
            return [self._user_dict(u) for u in sorted(self.users.values(), key=lambda u: u.id)]
        if kind == "stories":
            return [self._story_dict(x) for x in sorted(self.stories.values(),
                                                         key=lambda x: x.id)]
        if kind == "roles":
            return [self._role_dict(r) for r in sorted(self.roles.values(), key=lambda r: r.id)]
        raise NotFound(kind)
