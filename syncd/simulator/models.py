"""Data model of the simulator: reference objects and the compact time-entry store.

Time entries are kept column-wise (one ``array``/``bytearray``/``list`` per field, indexed by a
*slot* = insertion position) so that a million entries cost well under 200 MB instead of the
~1 KB a dict per entry would cost. Deleted entries keep their slot (``alive[slot] == 0``).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from datetime import date
from typing import Any

#: (code, symbol, base unit) of the currencies the simulator knows (api-notes §5, §14 Q16).
CURRENCIES: tuple[tuple[str, str, int], ...] = (
    ("USD", "$", 100),
    ("EUR", "€", 100),
    ("GBP", "£", 100),
    ("JPY", "¥", 1),
)
CURRENCY_INDEX: dict[str, int] = {c[0]: i for i, c in enumerate(CURRENCIES)}


@dataclass(slots=True)
class Workspace:
    """A Kantata project. ``account_id`` decides ``on_my_account`` visibility (api-notes §4)."""

    id: int
    title: str
    account_id: int
    archived: bool = False
    currency: str = "USD"
    require_time_approvals: bool = False
    tasks_default_non_billable: bool = False
    created_at: int = 0  # epoch seconds
    updated_at: int = 0  # epoch seconds


@dataclass(slots=True)
class User:
    """A Kantata user. ``rate_in_cents``/``cost_rate_in_cents`` are per hour, in the entry currency."""

    id: int
    full_name: str
    email_address: str
    account_id: int
    role_id: int | None = None
    rate_in_cents: int = 15000
    cost_rate_in_cents: int = 8000


@dataclass(slots=True)
class Story:
    """A task in a workspace; ``billable`` drives the entry's ``billable`` default (api-notes §5)."""

    id: int
    title: str
    workspace_id: int
    billable: bool = True
    created_at: int = 0
    updated_at: int = 0


@dataclass(slots=True)
class Role:
    """A project role."""

    id: int
    name: str
    created_at: int = 0
    updated_at: int = 0


@dataclass(slots=True)
class ExternalReference:
    """An external reference attached to a time entry (api-notes §5 ``external_reference``)."""

    id: int
    subject_id: int
    service_name: str
    service_model: str
    service_model_ref: str
    status: str | None = None
    external_message: str | None = None
    external_link: str | None = None
    external_status: str | None = None
    locked: bool | None = None
    created_at: int = 0
    updated_at: int = 0


@dataclass
class EntryStore:
    """Column store of time entries.

    Units: ``created``/``updated`` are epoch seconds (UTC instants, whole seconds); ``date`` is a
    proleptic Gregorian ordinal (``date.toordinal()``); ``story``/``role`` use 0 for null;
    ``currency`` indexes :data:`CURRENCIES`; ``location`` is 0 for null else 1 + index into
    ``location_names``. ``cache[slot]`` holds the rendered JSON bytes of the entry (without
    include-only fields) or ``None`` when stale.
    """

    ids: array = field(default_factory=lambda: array("q"))
    created: array = field(default_factory=lambda: array("q"))
    updated: array = field(default_factory=lambda: array("q"))
    date: array = field(default_factory=lambda: array("i"))
    minutes: array = field(default_factory=lambda: array("i"))
    rate: array = field(default_factory=lambda: array("q"))
    cost_rate: array = field(default_factory=lambda: array("q"))
    workspace: array = field(default_factory=lambda: array("q"))
    user: array = field(default_factory=lambda: array("q"))
    story: array = field(default_factory=lambda: array("q"))
    role: array = field(default_factory=lambda: array("q"))
    billable: bytearray = field(default_factory=bytearray)
    approved: bytearray = field(default_factory=bytearray)
    invoiced: bytearray = field(default_factory=bytearray)
    taxable: bytearray = field(default_factory=bytearray)
    currency: bytearray = field(default_factory=bytearray)
    location: bytearray = field(default_factory=bytearray)
    alive: bytearray = field(default_factory=bytearray)
    notes: list[str | None] = field(default_factory=list)
    cache: list[bytes | None] = field(default_factory=list)
    slot_of: dict[int, int] = field(default_factory=dict)
    ext_refs: dict[int, list[ExternalReference]] = field(default_factory=dict)
    location_names: list[str] = field(default_factory=list)
    live_count: int = 0

    def __len__(self) -> int:
        return self.live_count

    def location_code(self, name: str | None) -> int:
        """Map a location name to its stored code, registering unknown names (0 = null)."""
        if name is None:
            return 0
        try:
            return self.location_names.index(name) + 1
        except ValueError:
            if len(self.location_names) >= 255:
                raise ValueError("too many distinct locations") from None
            self.location_names.append(name)
            return len(self.location_names)

    def append(self, v: dict[str, Any]) -> int:
        """Append one entry given fully-normalised values; returns its slot.

        Expected keys: id, created, updated (epoch s), date (date), minutes, rate, cost_rate,
        workspace, user, story (int|None), role (int|None), billable, approved, invoiced,
        taxable (bool), currency (index), location (str|None), notes (str|None).
        """
        slot = len(self.ids)
        eid = int(v["id"])
        self.ids.append(eid)
        self.created.append(int(v["created"]))
        self.updated.append(int(v["updated"]))
        d: date = v["date"]
        self.date.append(d.toordinal())
        self.minutes.append(int(v["minutes"]))
        self.rate.append(int(v["rate"]))
        self.cost_rate.append(int(v["cost_rate"]))
        self.workspace.append(int(v["workspace"]))
        self.user.append(int(v["user"]))
        self.story.append(int(v["story"] or 0))
        self.role.append(int(v["role"] or 0))
        self.billable.append(1 if v["billable"] else 0)
        self.approved.append(1 if v["approved"] else 0)
        self.invoiced.append(1 if v["invoiced"] else 0)
        self.taxable.append(1 if v["taxable"] else 0)
        self.currency.append(int(v["currency"]))
        self.location.append(self.location_code(v["location"]))
        self.alive.append(1)
        self.notes.append(v["notes"])
        self.cache.append(None)
        self.slot_of[eid] = slot
        self.live_count += 1
        return slot

    def kill(self, slot: int) -> None:
        """Hard-delete the entry in ``slot`` (the slot is never reused)."""
        if not self.alive[slot]:
            return
        self.alive[slot] = 0
        self.cache[slot] = None
        self.notes[slot] = None
        self.slot_of.pop(self.ids[slot], None)
        self.ext_refs.pop(slot, None)
        self.live_count -= 1
