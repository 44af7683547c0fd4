"""Domain values shared by the pure core and the IO modules: immutable records (frozen dataclasses,
and a NamedTuple for the high-volume `TimeEntry`) and id types."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence, Set as AbstractSet
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, NamedTuple, NewType, overload

EntryId = NewType("EntryId", int)
OutboxId = NewType("OutboxId", int)
OutboxOp = Literal["create", "update", "delete"]
OutboxStatus = Literal["pending", "in_flight", "done", "failed", "conflict"]
Priority = Literal["push", "reconcile", "pull"]


class TimeEntry(NamedTuple):
    """One Kantata time entry as stored in `kantata.time_entries`, immutable.

    Money is in cents of `currency` per hour; `time_in_minutes` in minutes; `date_performed` is a
    calendar date (never a point in time); `created_at`/`updated_at` are aware instants.
    `raw` is the entry exactly as received, as JSON text (api-notes §5).

    A NamedTuple rather than a frozen dataclass: its fields are the columns of the
    `syncd.time_entry_in` record type in order (migrations/0005), so a page of entries goes to
    PostgreSQL as one array of records with no copying (`store.upsert_entries`), and it is built
    in 0.6 instead of 2.5 µs (a frozen dataclass sets each of 21 fields through
    `object.__setattr__`; issue #7). Construct it with keywords.
    """

    id: int
    workspace_id: int | None
    user_id: int | None
    story_id: int | None
    role_id: int | None
    date_performed: date
    time_in_minutes: int
    billable: bool | None
    notes: str | None
    rate_in_cents: int | None
    cost_rate_in_cents: int | None
    currency: str | None
    currency_symbol: str | None
    currency_base_unit: int | None
    approved: bool | None
    is_invoiced: bool | None
    taxable: bool | None
    location: str | None
    created_at: datetime | None
    updated_at: datetime
    raw: str


class EntryRef(NamedTuple):
    """What Python keeps of a listed entry whose page PostgreSQL types and stores (issue #26,
    `pagination.decode_page_fast`): its id and foreign keys, in `TimeEntry`'s first five
    positions, so the side-load planning (`pagination.side_refs`, `sideload_plan`) reads both
    alike."""

    id: int
    workspace_id: int | None
    user_id: int | None
    story_id: int | None
    role_id: int | None


def _fk(v: str | None) -> int | None:
    return None if v is None else int(v)


class EntryRefs(Sequence[EntryRef]):
    """The `EntryRef`s of a page PostgreSQL types (issue #26), kept as columns: `ids` (ints, in
    `results` order), the four foreign-key columns as the body spells them (digit strings of
    at most 18 digits or None, checked by `pagination`) and `side_texts`, each kind's distinct
    referenced ids as the body spells them ([(kind, set of str)] in workspace, user,
    story, role order); `side_ids` gives the same as ints, converted on first use. A backfill
    page needs only `ids` and `side_texts` (`pull.SideLoads` checks them against the
    spellings of what its run committed); the ints and the per-entry tuples are built on
    first use (side-load planning of a page with uncommitted objects, the careful path,
    tests), so the common page converts no foreign key and builds no tuples (`columns`
    gives the four columns, in `ids` order, when first needed). Equal to another EntryRefs
    or a tuple holding the same EntryRefs in order."""

    __slots__ = ("ids", "side_texts", "_side_ids", "_columns", "_rows")

    def __init__(self, ids: list[int], columns: Callable[[], Sequence[Sequence[str | None]]],
                 side_texts: list[tuple[str, AbstractSet[str]]]) -> None:
        self.ids = ids
        self.side_texts = side_texts
        self._side_ids: list[tuple[str, frozenset[int]]] | None = None
        self._columns = columns
        self._rows: tuple[EntryRef, ...] | None = None

    @property
    def side_ids(self) -> list[tuple[str, frozenset[int]]]:
        """Each kind's distinct referenced ids as ints, [(kind, frozenset)] in `side_texts`
        order (converted once)."""
        if self._side_ids is None:
            self._side_ids = [(kind, frozenset(map(int, texts)))
                              for kind, texts in self.side_texts]
        return self._side_ids

    def rows(self) -> tuple[EntryRef, ...]:
        """The EntryRefs, one per listed entry (built once)."""
        if self._rows is None:
            self._rows = tuple(map(EntryRef, self.ids,
                                   *(map(_fk, c) for c in self._columns())))
        return self._rows

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> EntryRef: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[EntryRef, ...]: ...
    def __getitem__(self, i: Any) -> Any:
        return self.rows()[i]

    def __iter__(self) -> Iterator[EntryRef]:
        return iter(self.rows())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EntryRefs):
            return self.ids == other.ids and self.rows() == other.rows()
        if isinstance(other, tuple):
            return self.rows() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.rows())

    def __repr__(self) -> str:
        return f"EntryRefs({list(self.rows())!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class SideObject:
    """A side-loaded workspace, user, story or role (api-notes §2 Includes), kept as raw JSON text
    with the few columns BI needs (`title`/`full_name`/`name`)."""

    kind: Literal["workspaces", "users", "stories", "roles"]
    id: int
    label: str | None
    parent_id: int | None
    updated_at: datetime | None
    raw: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Altered:
    """A record stored with some strings changed so that PostgreSQL can hold them (issue #12):
    `kind` is "time_entries" or a side-load kind, `fields` the paths in `raw` (`notes`,
    `a.b[2]`, `x.<key>`), `reasons` the distinct reasons (nul, unpaired_surrogate, too_long)."""

    kind: str
    id: int
    fields: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """A record that could not be stored: which id (if known), why, and the raw text."""

    entry_id: str | None
    reason: str
    raw: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One decoded `GET /time_entries` page: entries in `results` order plus envelope figures.

    `count`, `page_count`, `page_number`, `page_size` come from `count`/`meta` (api-notes §2);
    they are advisory (recomputed per request).
    """

    count: int
    page_count: int
    #: None when the answer had no `meta.page_number` (older Kantata: no `meta` at all)
    page_number: int | None
    page_size: int
    result_ids: tuple[str, ...]
    entries: tuple[TimeEntry, ...]
    side: tuple[SideObject, ...]
    rejected: tuple[Rejected, ...]
    #: Records (entries and side-loaded objects) stored with text altered to be storable
    #: (`pagination.sanitise`; the originals are in each record's `raw`).
    altered: tuple[Altered, ...] = ()
    #: Include-gated foreign keys (`pagination.INCLUDE_GATED`) that some listed entry did not
    #: carry at all (absent, not null): the request lacked their `include=` (TE TimeEntry).
    absent_keys: frozenset[str] = frozenset()
    #: The page's bytes as they came, when PostgreSQL is to type and store its entries (issue
    #: #26, `pagination.decode_page_fast`): `entries` is then empty and `refs` lists them.
    body: bytes | None = None
    refs: Sequence[EntryRef] = ()

    def listed(self) -> Sequence[TimeEntry] | Sequence[EntryRef]:
        """The page's entries as typed by Python (`entries`) or, for a page PostgreSQL types,
        their `refs`: id first, then workspace, user, story and role ids."""
        return self.refs if self.body is not None else self.entries

    def listed_ids(self) -> Sequence[int]:
        """The ids of `listed()`, in order (`EntryRefs.ids` as they are, without tuples)."""
        refs = self.refs
        if self.body is not None and isinstance(refs, EntryRefs):
            return refs.ids
        return [e.id for e in self.listed()]
