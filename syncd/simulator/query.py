"""Parsing of ``GET /time_entries`` query parameters into a hashable :class:`ListQuery`.

Rules (api-notes §3, §4, §14): unknown parameters are ignored; booleans parse
``true/TRUE/True`` and ``false/FALSE/False``, blank means "not given", any other value is treated
as not given; ``approved``/``invoiced``/``uninvoiced`` are flags (any non-blank value means
``true``); ``page``/``per_page`` clamp silently; ``limit``+``offset`` replace paging only when
both are given; datetimes accept any ISO 8601 form (``Z`` or numeric offsets; offset-less input is
interpreted in the account zone) and an unparsable one is a 400.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

#: Valid ``order`` fields (api-notes §3); default ``date_performed:desc``.
ORDER_FIELDS: tuple[str, ...] = ("created_at", "date_performed", "updated_at")
DEFAULT_ORDER: tuple[str, bool] = ("date_performed", True)
DEFAULT_PER_PAGE = 20
#: include name -> top-level key (api-notes §2; contract ``include`` of every time-entry
#: operation). Only these are supported; others are dropped.
INCLUDES: dict[str, str] = {
    "workspace": "workspaces",
    "user": "users",
    "story": "stories",
    "role": "roles",
    "external_references": "external_references",
    "invoice": "invoices",
    "active_submission": "timesheet_submissions",
    "recent_submission": "timesheet_submissions",
}
#: Names accepted in ``optional_fields`` (contract enum: ``location_id``, ``user_can_edit``).
OPTIONAL_FIELDS: tuple[str, ...] = ("location_id", "user_can_edit")
MAX_EXTERNAL_REFS = 200


class BadRequest(Exception):
    """A query parameter could not be parsed; rendered as 400 with a Kantata error body."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Normalised filter set; every attribute ``None`` (or default) means "not filtering".

    Instants are epoch seconds (already truncated to whole seconds), dates are ordinals.
    ``date_from``/``date_to`` are inclusive (api-notes §14 Q2); ``*_after``/``*_before`` are strict
    (§14 Q1). ``only`` keeps the request order of ids (duplicates removed).
    """

    date_from: int | None = None
    date_to: int | None = None
    updated_after: int | None = None
    updated_before: int | None = None
    created_after: int | None = None
    created_before: int | None = None
    workspace_ids: frozenset[int] | None = None
    user_ids: frozenset[int] | None = None
    billable: bool | None = None
    approved: bool = False
    invoiced: bool = False
    uninvoiced: bool = False
    from_archived_workspaces: bool = False
    on_my_account: bool = True
    has_external_references: bool | None = None
    ext_service_name: str | None = None
    ext_service_model: str | None = None
    ext_refs: frozenset[str] | None = None
    ext_status: str | None = None
    ext_external_status: str | None = None
    ext_external_message: str | None = None
    without_ext_service_name: str | None = None
    only: tuple[int, ...] | None = None

    @property
    def has_ext_condition(self) -> bool:
        """True when any ``external_reference_*`` condition must match one reference."""
        return any(v is not None for v in (
            self.ext_service_name, self.ext_service_model, self.ext_refs, self.ext_status,
            self.ext_external_status, self.ext_external_message))


@dataclass(frozen=True, slots=True)
class Paging:
    """Effective paging: ``offset``/``size`` select the slice, ``page_number`` is reported in meta."""

    offset: int
    size: int
    page_number: int


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Everything that selects and orders rows (the cache key) plus paging and includes."""

    filters: Filters
    order_field: str
    order_desc: bool
    paging: Paging
    includes: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def cache_key(self) -> tuple[Filters, str, bool]:
        """Key of the filtered+sorted id list cache (everything except paging/includes)."""
        return (self.filters, self.order_field, self.order_desc)


def parse_bool(value: str | None) -> bool | None:
    """Brainstem boolean parsing: true/TRUE/True, false/FALSE/False, anything else = not given."""
    if value is None:
        return None
    v = value.strip()
    if v in ("true", "TRUE", "True"):
        return True
    if v in ("false", "FALSE", "False"):
        return False
    return None


def _flag(q: Mapping[str, str], name: str) -> bool:
    v = q.get(name)
    return v is not None and v.strip() != ""


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def parse_id_list(value: str) -> list[int]:
    """Comma-separated ids; non-numeric tokens are dropped (brainstem), duplicates removed."""
    out: list[int] = []
    seen: set[int] = set()
    for tok in value.split(","):
        tok = tok.strip()
        if tok.isdigit():
            i = int(tok)
            if i not in seen:
                seen.add(i)
                out.append(i)
    return out


def parse_instant(value: str, tz: tzinfo, name: str) -> int:
    """Parse an ISO 8601 date-time (any offset, ``Z``, or none = account zone) to epoch seconds.

    Fractions are truncated: filters compare at second precision (api-notes §11, §14 Q1).
    Raises :class:`BadRequest` when unparsable.
    """
    v = value.strip()
    try:
        if not v:
            raise ValueError
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise BadRequest(
            f"Invalid {name}: '{value}' is not an ISO 8601 date-time "
            f"(e.g. 2024-01-31T17:00:00-08:00)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return math.floor(dt.timestamp())


def parse_date(value: str) -> date:
    """Strict ``YYYY-MM-DD`` (raises ValueError)."""
    v = value.strip()
    if len(v) != 10 or v[4] != "-" or v[7] != "-":
        raise ValueError(f"'{value}' is not a YYYY-MM-DD date")
    return date.fromisoformat(v)


def parse_order(value: str | None) -> tuple[str, bool]:
    """``field:dir`` -> (field, desc). Unknown field -> default; dir other than desc -> asc (§3)."""
    if value is None:
        return DEFAULT_ORDER
    fld, _, direction = value.strip().partition(":")
    fld = fld.strip()
    if fld not in ORDER_FIELDS:
        return DEFAULT_ORDER
    return fld, direction.strip().lower() == "desc"


def parse_includes(value: str | None) -> tuple[str, ...]:
    """Supported include names in request order; unknown names silently dropped (§2)."""
    if not value:
        return ()
    out: list[str] = []
    for tok in value.split(","):
        tok = tok.strip()
        if tok in INCLUDES and tok not in out:
            out.append(tok)
    return tuple(out)


def parse_optional_fields(q: Mapping[str, object]) -> tuple[str, ...]:
    """Requested optional fields in :data:`OPTIONAL_FIELDS` order, from a comma-separated value
    (brainstem, api-notes §2), a repeated parameter (the contract's array, form style, exploded)
    or ``optional_fields[]``; unknown names are silently dropped."""
    raw: list[str] = []
    getall = getattr(q, "getall", None)
    for name in ("optional_fields", "optional_fields[]"):
        vals: object = getall(name, []) if getall is not None else q.get(name)
        if isinstance(vals, str):
            raw.append(vals)
        elif isinstance(vals, (list, tuple)):
            raw += [v for v in vals if isinstance(v, str)]
    asked = {tok.strip() for v in raw for tok in v.split(",")}
    return tuple(f for f in OPTIONAL_FIELDS if f in asked)


def parse_paging(q: Mapping[str, str], max_per_page: int) -> Paging:
    """page/per_page (defaults 1/20, clamp to max, <1 or junk -> 20) or limit+offset (§3)."""
    limit = _int_or_none(q.get("limit"))
    offset = _int_or_none(q.get("offset"))
    if q.get("limit") is not None and q.get("offset") is not None and limit is not None \
            and offset is not None:
        size = min(max(limit, 1), max_per_page)
        off = max(offset, 0)
        return Paging(offset=off, size=size, page_number=off // size + 1)
    per_page = _int_or_none(q.get("per_page"))
    if per_page is None or per_page < 1:
        per_page = DEFAULT_PER_PAGE
    per_page = min(per_page, max_per_page)
    page = _int_or_none(q.get("page"))
    if page is None or page < 1:
        page = 1
    return Paging(offset=(page - 1) * per_page, size=per_page, page_number=page)


def parse_filters(q: Mapping[str, str], tz: tzinfo, *, with_only: bool = True) -> Filters:
    """Build :class:`Filters` from query params; raises :class:`BadRequest` on bad values."""
    kw: dict[str, object] = {}
    dpb = q.get("date_performed_between")
    if dpb is not None and dpb.strip():
        a, sep, b = dpb.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            kw["date_from"] = parse_date(a).toordinal()
            kw["date_to"] = parse_date(b).toordinal()
        except ValueError:
            raise BadRequest(
                f"Invalid date_performed_between: '{dpb}' (expected YYYY-MM-DD:YYYY-MM-DD)"
            ) from None
    for name in ("updated_after", "updated_before", "created_after", "created_before"):
        v = q.get(name)
        if v is not None and v.strip():
            kw[name] = parse_instant(v, tz, name)
    ws: set[int] | None = None
    v = q.get("workspace_id")
    if v is not None and v.strip():
        one = _int_or_none(v)
        ws = {one} if one is not None else set()
    v = q.get("workspace_ids")
    if v is not None and v.strip():
        many = set(parse_id_list(v))
        ws = many if ws is None else ws & many
    if ws is not None:
        kw["workspace_ids"] = frozenset(ws)
    v = q.get("with_user_ids")
    if v is not None and v.strip():
        kw["user_ids"] = frozenset(parse_id_list(v))
    kw["billable"] = parse_bool(q.get("billable"))
    kw["approved"] = _flag(q, "approved")
    kw["invoiced"] = _flag(q, "invoiced")
    kw["uninvoiced"] = _flag(q, "uninvoiced")
    fa = parse_bool(q.get("from_archived_workspaces"))
    kw["from_archived_workspaces"] = bool(fa)
    oma = parse_bool(q.get("on_my_account"))
    kw["on_my_account"] = True if oma is None else oma
    kw["has_external_references"] = parse_bool(q.get("has_external_references"))
    for param, attr in (("external_reference_service_name", "ext_service_name"),
                        ("external_reference_service_model", "ext_service_model"),
                        ("external_reference_status", "ext_status"),
                        ("external_reference_external_status", "ext_external_status"),
                        ("external_reference_external_message", "ext_external_message"),
                        ("without_external_reference_service_name", "without_ext_service_name")):
        v = q.get(param)
        if v is not None and v != "":
            kw[attr] = v
    refs: set[str] | None = None
    v = q.get("external_reference_service_model_refs")
    if v is not None and v.strip():
        toks = [t.strip() for t in v.split(",") if t.strip()]
        if len(toks) > MAX_EXTERNAL_REFS:
            raise BadRequest(
                f"external_reference_service_model_refs accepts up to {MAX_EXTERNAL_REFS} ids "
                f"(got {len(toks)})")
        refs = set(toks)
    v = q.get("external_reference_service_model_ref")
    if v is not None and v.strip():
        refs = {v.strip()} if refs is None else refs & {v.strip()}
    if refs is not None:
        kw["ext_refs"] = frozenset(refs)
    if with_only:
        v = q.get("only")
        if v is not None and v.strip():
            kw["only"] = tuple(parse_id_list(v))
    return Filters(**kw)  # type: ignore[arg-type]


def parse_list_query(q: Mapping[str, str], tz: tzinfo, max_per_page: int) -> ListQuery:
    """Parse the full ``GET /time_entries`` query string (see module docstring)."""
    fld, desc = parse_order(q.get("order"))
    return ListQuery(
        filters=parse_filters(q, tz),
        order_field=fld,
        order_desc=desc,
        paging=parse_paging(q, max_per_page),
        includes=parse_includes(q.get("include")),
        optional=parse_optional_fields(q),
    )
