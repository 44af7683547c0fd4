"""Pure decoding of Kantata list pages: envelope → entries in `results` order, with validation.

Facts used (api-notes §2, §5, §11): the canonical order is the `results` array, objects are keyed
by string id in `time_entries`; ids are strings; timestamps are ISO 8601 with an offset at
second precision; `date_performed` is a plain date. A record that breaks these rules becomes a
`Rejected` with a specific reason and the rest of the page goes on. A page that is not the
documented envelope at all raises `MalformedResponseError`.

Text is never a reason to drop a record (issue #12): a string that PostgreSQL `text`/`jsonb`
cannot hold (NUL, an unpaired UTF-16 surrogate, over `MAX_TEXT` characters) is stored with the
offending characters replaced by U+FFFD (or cut), and the record's `raw` document says so
under `ALTERED_KEY`: one item per altered string with its path, the reasons and the original
(base64 of its UTF-8 bytes, surrogates kept with `surrogatepass`), see `sanitise`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace
from datetime import date, datetime
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, ne
from typing import Annotated, Any, Literal

import msgspec
import orjson

from syncd.errors import InvalidRecord, MalformedResponseError, PageIgnoredError, PagingError
from syncd.models import Altered, EntryRefs, Page, Rejected, SideObject, TimeEntry

__all__ = [
    "ALTERED_KEY", "DOCUMENTED_MAX_PER_PAGE", "INCLUDE_GATED", "PageGuard", "PageSize",
    "PagingTrust",
    "SideRef", "decode_json", "decode_json_storable", "decode_page", "decode_page_fast",
    "decode_page_typed",
    "make_storable", "parse_side_object", "parse_time_entry", "sanitise", "side_part",
    "side_refs", "sideload_plan",
]

MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1  # PostgreSQL `integer` columns (currency_base_unit)
MAX_ID_TEXT = 100  # longest id string quoted back in a reject reason
MAX_TEXT = 4_000_000  # characters per string; a longer one is cut (an alteration), never dropped
#: Key added to a record's `raw` when strings in it were altered to be storable (see `sanitise`).
ALTERED_KEY = "_syncd_altered"
REPLACEMENT = "\ufffd"
MIN_YEAR, MAX_YEAR = 1900, 2200
MISSING_FROM_KEYED = "listed in `results` but absent from the `time_entries` object"
SIDE_KINDS = {"workspaces": "title", "users": "full_name", "stories": "title", "roles": "name"}
#: Foreign keys the contract gives "only ... if" their association is in `include=` (TE
#: TimeEntry schema, L2228-2320); `Page.absent_keys` says which of them a page lacked.
INCLUDE_GATED = ("workspace_id", "user_id", "story_id", "role_id")
SIDE_MEMO_SIZE = 4096  # distinct side-loaded objects remembered (~0.5 KB each)
_SURROGATE = re.compile("[\ud800-\udfff]")  # a str can hold them unpaired; UTF-8 cannot


_NUL_ESCAPE = re.compile(rb"\\u0000")


def has_nul_escape(body: bytes) -> bool:
    """Whether JSON bytes `body` hold a `\\u0000` escape (the only way JSON spells NUL, which
    PostgreSQL's text and jsonb cannot hold), or an escaped backslash followed by `u0000` (a
    false positive: the page then takes the careful path, which decides). A compiled search
    takes half the time of `bytes.__contains__`, whose search stops at every "0" of the body
    (100 KB simulator pages: 30 against 63 µs); a body without a backslash needs neither."""
    return b"\\" in body and _NUL_ESCAPE.search(body) is not None


def decode_json_storable(body: bytes) -> tuple[Any, bool]:
    """`decode_json(body)` plus whether every string in it is provably storable in PostgreSQL
    text/jsonb without walking it: true when the strict parser (orjson, which refuses unpaired
    surrogates and raw control characters) decoded it and the bytes hold no `\\u0000` escape
    (the only way JSON can spell NUL). Raises MalformedResponseError like `decode_json`."""
    try:
        return orjson.loads(body), not has_nul_escape(body)
    except orjson.JSONDecodeError:
        return decode_json(body), False


def decode_json(body: bytes) -> Any:
    """Decode a response body. orjson first; the stdlib (which tolerates lone surrogates, so one
    bad string rejects one record instead of the page) second. Raises MalformedResponseError."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode("utf-8", errors="surrogateescape"))
    except RecursionError:
        raise MalformedResponseError(
            f"response body is JSON nested too deeply to decode ({len(body)} bytes)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = body[:60].decode("utf-8", errors="replace").replace("\n", " ")
        kind = "HTML" if body.lstrip()[:1] == b"<" else "invalid or truncated JSON"
        raise MalformedResponseError(
            f"response body is {kind} ({len(body)} bytes, starts {snippet!r})") from exc


def _int(v: object, field: str, *, nullable: bool, lo: int = 0, hi: int = MAX_BIGINT) -> int | None:
    if v is None:
        if nullable:
            return None
        raise ValueError(f"{field} is missing")
    if isinstance(v, bool):
        raise ValueError(f"{field} must be an integer, got a boolean")
    if isinstance(v, str):
        if len(v) > 20:
            raise ValueError(f"{field} is not a 64-bit integer ({len(v)} characters)")
        if not v.isascii() or not v.lstrip("-").isdigit():
            raise ValueError(f"{field} must be an integer, got {v[:40]!r}")
        v = int(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        v = int(v)  # JSON Schema counts 60.0 as an integer (the contract's `integer` types)
    if not isinstance(v, int):
        raise ValueError(f"{field} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{field} {v} is outside {lo}..{hi}")
    return v


def _bool(v: object, field: str) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    raise ValueError(f"{field} must be true, false or null, got {type(v).__name__}")


def _text(v: object, field: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{field} must be a string, got {type(v).__name__}")
    return v


def _clean_string(v: str) -> tuple[str, list[str]]:
    """`v` made storable, and the reasons it had to change (empty when it did not)."""
    reasons: list[str] = []
    if "\x00" in v:
        reasons.append("nul")
        v = v.replace("\x00", REPLACEMENT)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        reasons.append("unpaired_surrogate")
        v = _SURROGATE.sub(REPLACEMENT, v)
    if len(v) > MAX_TEXT:
        reasons.append("too_long")
        v = v[:MAX_TEXT]
    return v, reasons


def _original(v: str, reasons: list[str]) -> dict[str, Any]:
    raw = v.encode("utf-8", "surrogatepass")
    if "too_long" in reasons:  # a copy of an over-long text would be over-long too
        return {"original_length": len(v), "original_sha256": hashlib.sha256(raw).hexdigest()}
    return {"original_b64": base64.b64encode(raw).decode("ascii")}


def sanitise(v: Any, path: str = "") -> tuple[Any, list[dict[str, Any]]]:
    """`v` (decoded JSON) with every string, object key included, made storable in PostgreSQL
    `text`/`jsonb`, and the list of alterations: `{"path": "notes", "reasons": ["nul"],
    "original_b64": "..."}`, path as `a.b[2]` (a key that was altered itself: `a.<key>`),
    reasons among `nul` (U+0000 → U+FFFD), `unpaired_surrogate` (each → U+FFFD) and
    `too_long` (cut to MAX_TEXT characters; then `original_length` and `original_sha256`
    instead of the copy). `original_b64` decodes with `base64` then
    `.decode("utf-8", "surrogatepass")` to the exact original. Unchanged parts are returned as
    they were (no copy when nothing changed). Never raises."""
    alterations: list[dict[str, Any]] = []
    return _sanitise(v, path, alterations), alterations


def _sanitise(v: Any, path: str, out: list[dict[str, Any]]) -> Any:
    if isinstance(v, str):
        clean, reasons = _clean_string(v)
        if reasons:
            out.append({"path": path or "$", "reasons": reasons, **_original(v, reasons)})
        return clean
    if isinstance(v, dict):
        changed = False
        result: dict[str, Any] = {}
        for k, item in v.items():
            key = k
            if isinstance(k, str):
                key, reasons = _clean_string(k)
                if reasons:
                    out.append({"path": f"{path}.<key>" if path else "<key>",
                                "key": key, "reasons": reasons, **_original(k, reasons)})
            sub = f"{path}.{key}" if path else str(key)
            clean = _sanitise(item, sub, out)
            changed |= key is not k or clean is not item
            result[key] = clean
        return result if changed else v
    if isinstance(v, list):
        items = [_sanitise(item, f"{path}[{i}]", out) for i, item in enumerate(v)]
        return items if any(a is not b for a, b in zip(items, v, strict=True)) else v
    return v


def _storable(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`raw` sanitised, with the alterations recorded under ALTERED_KEY; and the alterations."""
    clean, alterations = sanitise(dict(raw))
    if alterations:
        clean[ALTERED_KEY] = alterations
    return clean, alterations


def make_storable(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object made storable in `jsonb` (`sanitise`), the alterations recorded under
    ALTERED_KEY when there were any. Never raises."""
    return _storable(raw)[0]


def _altered(kind: str, ident: int, alterations: list[dict[str, Any]]) -> Altered | None:
    if not alterations:
        return None
    reasons = dict.fromkeys(r for a in alterations for r in a["reasons"])
    return Altered(kind=kind, id=ident, fields=tuple(a["path"] for a in alterations),
                   reasons=tuple(reasons))


def _instant(v: object, field: str, *, nullable: bool) -> datetime | None:
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{field} must be an ISO 8601 string, got {type(v).__name__}")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        try:  # RFC 3339 §5.6 NOTE: "t" and "z" may be lower case
            dt = datetime.fromisoformat(v.upper()) if len(v) <= 40 else None
        except ValueError:
            dt = None
        if dt is None:
            raise ValueError(f"{field} {v[:40]!r} is not ISO 8601") from None
    if dt.tzinfo is None:
        raise ValueError(f"{field} {v!r} has no UTC offset")
    if not MIN_YEAR <= dt.year <= MAX_YEAR:
        raise ValueError(f"{field} {v!r} is outside years {MIN_YEAR}..{MAX_YEAR}")
    return dt


def _date(v: object, field: str) -> date:
    if not isinstance(v, str) or len(v) != 10:
        raise ValueError(f"{field} must be YYYY-MM-DD, got {str(v)[:40]!r}")
    try:
        d = date.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{field} {v!r} is not a valid date") from None
    if not MIN_YEAR <= d.year <= MAX_YEAR:
        raise ValueError(f"{field} {v} is outside years {MIN_YEAR}..{MAX_YEAR}")
    return d


def parse_time_entry(raw: Mapping[str, Any], *, storable: bool = False,
                     key: str | None = None) -> TimeEntry:
    """Validate one TimeEntry object (api-notes §5) and type it. Raises InvalidRecord(id, reason)
    only for what cannot be a row (no id, an id or a number that is not an integer, a date or
    timestamp that is not one): text is made storable instead (`sanitise`, recorded in `raw`).

    `key` is the entry's key in the `time_entries` map (or its `results` id): the contract
    gives the id there and declares no `id` property (TE:L36-40, TimeEntry schema), so an
    object without `id` takes the key; an `id` field that disagrees with the key is refused.
    Unknown fields are kept in `raw` and otherwise ignored. `storable=True` lets the fast path
    skip the walk for NUL and unpaired surrogates (the caller proved there are none,
    `decode_json_storable`).
    """
    return _parse_entry(raw, storable=storable, key=key)[0]


def _parse_entry(raw: Mapping[str, Any], *, storable: bool, key: str | None = None
                 ) -> tuple[TimeEntry, Altered | None]:
    """`parse_time_entry`, plus what of the entry was altered to be storable (or None)."""
    if storable and type(raw) is dict:
        fast = _common_time_entry(raw, key)
        if fast is not None:
            return fast, None
    rid = raw.get("id", key) if isinstance(raw, Mapping) else key
    entry_id = rid if isinstance(rid, str) else key
    try:
        if not isinstance(raw, Mapping):
            raise ValueError(f"entry is not a JSON object but {_json_type(raw)}")
        raw, alterations = _storable(raw)
        rid = raw.get("id", key)
        ident = _int(rid, "id", nullable=False, lo=1)
        assert ident is not None
        minutes = _int(raw.get("time_in_minutes"), "time_in_minutes", nullable=False,
                       hi=1_000_000)
        assert minutes is not None
        updated = _instant(raw.get("updated_at"), "updated_at", nullable=False)
        assert updated is not None
        return TimeEntry(
            id=ident,
            workspace_id=_int(raw.get("workspace_id"), "workspace_id", nullable=True),
            user_id=_int(raw.get("user_id"), "user_id", nullable=True),
            story_id=_int(raw.get("story_id"), "story_id", nullable=True),
            role_id=_int(raw.get("role_id"), "role_id", nullable=True),
            date_performed=_date(raw.get("date_performed"), "date_performed"),
            time_in_minutes=minutes,
            billable=_bool(raw.get("billable"), "billable"),
            notes=_text(raw.get("notes"), "notes"),
            rate_in_cents=_int(raw.get("rate_in_cents"), "rate_in_cents", nullable=True,
                               lo=-MAX_BIGINT),
            cost_rate_in_cents=_int(raw.get("cost_rate_in_cents"), "cost_rate_in_cents",
                                    nullable=True, lo=-MAX_BIGINT),
            currency=_text(raw.get("currency"), "currency"),
            currency_symbol=_text(raw.get("currency_symbol"), "currency_symbol"),
            currency_base_unit=_int(raw.get("currency_base_unit"), "currency_base_unit",
                                    nullable=True, hi=MAX_INT),
            approved=_bool(raw.get("approved"), "approved"),
            is_invoiced=_bool(raw.get("is_invoiced"), "is_invoiced"),
            taxable=_bool(raw.get("taxable"), "taxable"),
            location=_text(raw.get("location"), "location"),
            created_at=_instant(raw.get("created_at"), "created_at", nullable=True),
            updated_at=updated,
            raw=orjson.dumps(raw).decode(),
        ), _altered("time_entries", ident, alterations)
    except ValueError as exc:
        raise InvalidRecord(entry_id, str(exc)) from None


_ID_DIGITS = 18  # an id of at most 18 decimal digits is below 2**63: no range check needed
_INT_FIELDS = (("time_in_minutes", False, 0, 1_000_000),
               ("rate_in_cents", True, -MAX_BIGINT, MAX_BIGINT),
               ("cost_rate_in_cents", True, -MAX_BIGINT, MAX_BIGINT),
               ("currency_base_unit", True, 0, MAX_INT))
_ID_FIELDS = ("workspace_id", "user_id", "story_id", "role_id")
_BOOL_FIELDS = ("billable", "approved", "is_invoiced", "taxable")
_TEXT_FIELDS = ("notes", "currency", "currency_symbol", "location")


#: Memos of the fast path: the same few thousand ids and dates repeat on every page, and a dict
#: lookup costs a tenth of validating and converting the text again. Keyed by the exact text,
#: so a hit returns what the conversion would; cleared when full (`_MEMO_SIZE` each).
_ID_MEMO: dict[str, int] = {}
_DATE_MEMO: dict[str, date] = {}
_MEMO_SIZE = 50_000


def _id_or_fail(v: object) -> int | None:
    """A side id of the common case: None, or a digit string of at most 18 digits (so below
    2**63). Raises ValueError otherwise, TypeError for a value that is not text (the careful
    path then decides)."""
    if v is None:
        return None
    hit = _ID_MEMO.get(v)  # type: ignore[call-overload]
    if hit is not None:
        return hit
    if type(v) is str and len(v) <= _ID_DIGITS and v.isascii() and v.isdigit():
        if len(_ID_MEMO) >= _MEMO_SIZE:
            _ID_MEMO.clear()
        n = _ID_MEMO[v] = int(v)
        return n
    raise ValueError


def _date_or_fail(v: object) -> date:
    """`date_performed` of the common case: `YYYY-MM-DD` within MIN_YEAR..MAX_YEAR. Raises
    ValueError otherwise."""
    hit = _DATE_MEMO.get(v)  # type: ignore[call-overload]
    if hit is not None:
        return hit
    if type(v) is not str or len(v) != 10:
        raise ValueError
    d = date.fromisoformat(v)
    if not MIN_YEAR <= d.year <= MAX_YEAR:
        raise ValueError
    if len(_DATE_MEMO) >= _MEMO_SIZE:
        _DATE_MEMO.clear()
    _DATE_MEMO[v] = d
    return d


def _common_time_entry(raw: dict[str, Any], key: str | None = None) -> TimeEntry | None:
    """`parse_time_entry` for the common case, unrolled (no loop or call per field: this is
    the backfill's hottest code, ~200,000 calls at 200k entries): a storable entry whose ids
    are digit strings, numbers are ints, flags are booleans, timestamps carry an offset.
    Returns None as soon as anything is unusual, and the careful path decides (and words the
    reason). It accepts a subset of what the careful path accepts, with equal results
    (tests/unit/test_pagination_fastpath.py compares them)."""
    get = raw.get
    try:
        rid = get("id", key)
        if type(rid) is not str or len(rid) > _ID_DIGITS or not (rid.isascii()
                                                                 and rid.isdigit()):
            return None
        ident = int(rid)
        if ident < 1:
            return None
        ws, user, story, role = (_id_or_fail(get("workspace_id")), _id_or_fail(get("user_id")),
                                 _id_or_fail(get("story_id")), _id_or_fail(get("role_id")))
        minutes = get("time_in_minutes")
        if type(minutes) is not int or not 0 <= minutes <= 1_000_000:
            return None
        rate, cost, unit = get("rate_in_cents"), get("cost_rate_in_cents"), \
            get("currency_base_unit")
        if (rate is not None and (type(rate) is not int or not -MAX_BIGINT <= rate <= MAX_BIGINT)) \
                or (cost is not None and (type(cost) is not int
                                          or not -MAX_BIGINT <= cost <= MAX_BIGINT)) \
                or (unit is not None and (type(unit) is not int or not 0 <= unit <= MAX_INT)):
            return None
        billable, approved, invoiced, taxable = (get("billable"), get("approved"),
                                                 get("is_invoiced"), get("taxable"))
        for v in (billable, approved, invoiced, taxable):
            if v is not None and v is not True and v is not False:
                return None
        notes, currency, symbol, location = (get("notes"), get("currency"),
                                             get("currency_symbol"), get("location"))
        for v in (notes, currency, symbol, location):
            if v is not None and (type(v) is not str or len(v) > MAX_TEXT):
                return None
        u = get("updated_at")
        if type(u) is not str:
            return None
        updated = datetime.fromisoformat(u)
        v = get("created_at")
        # an entry never edited has created_at == updated_at: one parse for both
        created = None if v is None else updated if v == u else \
            datetime.fromisoformat(v) if type(v) is str else None
        if (created is None and v is not None) or updated.tzinfo is None \
                or not MIN_YEAR <= updated.year <= MAX_YEAR or (created is not None and (
                    created.tzinfo is None or not MIN_YEAR <= created.year <= MAX_YEAR)):
            return None
        performed = _date_or_fail(get("date_performed"))
    except (ValueError, TypeError, OverflowError):
        return None
    return TimeEntry(ident, ws, user, story, role, performed, minutes, billable, notes, rate,
                     cost, currency, symbol, unit, approved, invoiced, taxable, location,
                     created, updated, orjson.dumps(raw).decode())


def parse_side_object(kind: str, raw: Mapping[str, Any], *, storable: bool = False,
                      text: str | None = None, key: str | None = None) -> SideObject:
    """Validate a side-loaded workspace/user/story/role. Raises InvalidRecord (no id, or an id
    that is not an integer, or an `id` field that disagrees with `key`); text is made storable
    as for `parse_time_entry`. `key` is the object's key in its top-level map, which is its id
    when the object has no `id` field (api-notes §2: "indexed by ID"). `storable` as for
    `parse_time_entry`; `text` is `raw` already serialised (kept as `SideObject.raw`)."""
    return _parse_side(kind, raw, storable=storable, text=text, key=key)[0]


def _parse_side(kind: str, raw: Mapping[str, Any], *, storable: bool = False,
                text: str | None = None, key: str | None = None
                ) -> tuple[SideObject, Altered | None]:
    rid = raw.get("id", key) if isinstance(raw, Mapping) else key
    alterations: list[dict[str, Any]] = []
    try:
        if not isinstance(raw, Mapping):
            raise ValueError(f"{kind} object is not a JSON object")
        if not storable:
            raw, alterations = _storable(raw)
            text = None if alterations else text
            rid = raw.get("id", key)
        ident = _int(rid, "id", nullable=False, lo=1)
        assert ident is not None
        if key is not None and str(ident) != key.strip():
            raise ValueError(f"key {key[:MAX_ID_TEXT]!r} holds an object with id {ident}")
        label = raw.get(SIDE_KINDS[kind])
        parent = raw.get("workspace_id") if kind == "stories" else None
        return SideObject(
            kind=kind,  # type: ignore[arg-type]
            id=ident,
            label=label if isinstance(label, str) else None,
            parent_id=_int(parent, "workspace_id", nullable=True),
            updated_at=_instant(raw.get("updated_at"), "updated_at", nullable=True),
            raw=text if text is not None else orjson.dumps(raw).decode(),
        ), _altered(kind, ident, alterations)
    except ValueError as exc:
        rid_text = rid if isinstance(rid, str) else key
        raise InvalidRecord(rid_text, f"{kind}: {exc}") from None


@functools.lru_cache(maxsize=SIDE_MEMO_SIZE)
def _storable_side(kind: str, key: str, text: str) -> SideObject:
    """`parse_side_object` of a storable object given as its JSON text and its map key,
    memoised: every page side-loads the same few hundred workspaces/users/stories/roles, and
    an identical object always parses to the same (frozen) SideObject. Raises InvalidRecord
    (never cached).

    The key is text, not the bytes `orjson.dumps` returns: those keep orjson's whole output
    buffer (~4 KB for a 250-byte object), which made this memo 7 MB at 1,750 objects; the text
    is exact-size and is also the SideObject's `raw`, so key and value share it (issue #7)."""
    return parse_side_object(kind, orjson.loads(text), storable=True, text=text, key=key)


def _json_type(v: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(v), type(v).__name__)


def _raw_text(obj: object) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return repr(obj)[:10_000]


def _envelope_int(body: Mapping[str, Any], meta: Mapping[str, Any], key: str,
                  default: int | None) -> int | None:
    v = meta.get(key, body.get(key) if key == "count" else None)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():  # JSON Schema counts 60.0 as an integer
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedResponseError(f"meta.{key} is not an integer")
    return v


def decode_page(body: bytes | Mapping[str, Any], *, storable: bool = False) -> Page:
    """Decode one list/create response into a Page. Raises MalformedResponseError when the body
    is not the envelope (not JSON, not an object, `results` or `time_entries` of the wrong type).
    A `results` id absent from `time_entries` and invalid entries become `Page.rejected`.
    `storable=True` says a decoded `body` came from `decode_json_storable` with True (bytes are
    checked here)."""
    if isinstance(body, bytes | bytearray):
        doc, storable = decode_json_storable(bytes(body))
    else:
        doc = body
    if not isinstance(doc, Mapping):
        raise MalformedResponseError("response body is not a JSON object")
    results = doc.get("results")
    keyed = doc.get("time_entries", {})
    if not isinstance(results, list):
        raise MalformedResponseError("response has no `results` array")
    if not isinstance(keyed, Mapping):
        raise MalformedResponseError("`time_entries` is not an object keyed by id")
    meta = doc.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise MalformedResponseError("`meta` is not an object")
    entries: list[TimeEntry] = []
    rejected: list[Rejected] = []
    ids: list[str] = []
    altered: list[Altered] = []
    absent: set[str] = set()
    for ref in results:
        # `type(...) is dict` first: an isinstance check against the Mapping ABC costs ~1 µs
        if (type(ref) is not dict and not isinstance(ref, Mapping)) \
                or not isinstance(ref.get("id"), str | int):
            # counted as a listed row so a page with one bad reference is still a full page
            ids.append("?")
            rejected.append(Rejected(entry_id=None, raw=_raw_text(ref), reason=(
                "`results` item is not a {key, id} reference")))
            continue
        if ref.get("key", "time_entries") != "time_entries":
            continue
        rid = str(ref["id"])
        ids.append(rid)
        raw = keyed.get(rid)
        if raw is None:
            rejected.append(Rejected(entry_id=rid, raw="null", reason=MISSING_FROM_KEYED))
            continue
        try:
            entry, alt = _parse_entry(raw, storable=storable, key=rid)
        except InvalidRecord as exc:
            rejected.append(Rejected(entry_id=exc.entry_id or rid, reason=exc.reason,
                                     raw=_raw_text(raw)))
            continue
        if str(entry.id) != rid:
            rejected.append(Rejected(entry_id=rid, raw=_raw_text(raw), reason=(
                f"`time_entries` key {rid[:MAX_ID_TEXT]!r} holds an entry with id "
                f"{entry.id}")))
            continue
        entries.append(entry)
        if alt is not None:
            altered.append(alt)
        if not absent.issuperset(INCLUDE_GATED) and type(raw) is dict:
            absent.update(k for k in INCLUDE_GATED if k not in raw)
    side = _side_objects(doc, storable, rejected, altered)
    count = _envelope_int(doc, meta, "count", len(ids))
    assert count is not None
    return Page(
        count=count,
        page_count=_envelope_int(doc, meta, "page_count", 1 if ids else 0) or 0,
        page_number=_envelope_int(doc, meta, "page_number", None),
        page_size=_envelope_int(doc, meta, "page_size", len(ids)) or 0,
        absent_keys=frozenset(absent),
        result_ids=tuple(ids),
        entries=tuple(entries),
        side=tuple(side),
        rejected=tuple(rejected),
        altered=tuple(altered),
    )


def _side_objects(doc: Mapping[str, Any], storable: bool, rejected: list[Rejected],
                  altered: list[Altered]) -> list[SideObject]:
    """The side-loaded objects of a page (api-notes §2 Includes); their rejects and
    alterations are appended to `rejected` and `altered`."""
    side: list[SideObject] = []
    for kind in SIDE_KINDS:
        objs = doc.get(kind)
        if not isinstance(objs, Mapping):
            continue
        for okey, raw in objs.items():
            okey = str(okey)
            try:
                if storable and isinstance(raw, Mapping):
                    side.append(_storable_side(kind, okey, orjson.dumps(raw).decode()))
                else:
                    obj, alt = _parse_side(kind, raw, key=okey)
                    side.append(obj)
                    if alt is not None:
                        altered.append(alt)
            except InvalidRecord as exc:
                rejected.append(Rejected(entry_id=None, reason=exc.reason, raw=_raw_text(raw)))
    return side


_FAST_ID_DIGITS = 18
#: RFC 3339 with seconds and an offset, `t`/`z` in either case (what Kantata sends, api-notes
#: §5), every field in range but the offset's hours (PostgreSQL refuses beyond 15: DataError,
#: the careful path); the year within MIN_YEAR..MAX_YEAR as written. ASCII digits only.
_FAST_INSTANT = re.compile(
    r"(?:19[0-9][0-9]|2[01][0-9][0-9]|2200)-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:[Zz]|[+-][01][0-9]:[0-5][0-9])")
_FAST_DATE = re.compile(
    r"(?:19[0-9][0-9]|2[01][0-9][0-9]|2200)-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])")


def _no_float(v: object) -> bool:
    """No JSON number with a fraction or exponent in `v`: orjson re-spells those (`1.50` ->
    `1.5`, `6e1` -> `60.0`) where PostgreSQL's jsonb keeps them as written, so `raw` would
    differ between the paths; such an entry takes the careful path."""
    if type(v) is dict:
        return all(_no_float(x) for x in v.values())
    if type(v) is list:
        return all(_no_float(x) for x in v)
    return type(v) is not float


def _all_spelled(values: list[str], one: re.Pattern[str]) -> bool:
    """Whether every string of `values` fully matches `one` (a pattern without `\n`): one
    match over them joined by `\n` against `(?:one)(?:\n(?:one))*`, and exactly
    len(values) - 1 separators (so no value contributed two matches)."""
    if not values:
        return True
    joined = "\n".join(values)
    return joined.count("\n") == len(values) - 1 and _LISTS[one].fullmatch(joined) is not None


_FAST_ID = re.compile(r"[1-9][0-9]{0,%d}" % (_FAST_ID_DIGITS - 1))  # an entry's own id
_FAST_FK = re.compile(r"[0-9]{1,%d}" % _ID_DIGITS)  # a foreign key, as `_id_or_fail` takes it
_LISTS = {rx: re.compile(f"(?:{rx.pattern})(?:\n(?:{rx.pattern}))*")
          for rx in (_FAST_INSTANT, _FAST_DATE, _FAST_ID, _FAST_FK)}
_NONE = type(None)
_INTS, _INTS_OR_NONE = frozenset({int}), frozenset({int, _NONE})
_BOOLS_OR_NONE, _STRS, _STRS_OR_NONE = frozenset({bool, _NONE}), frozenset({str}), \
    frozenset({str, _NONE})


#: The keys whose values `_fast_entries_ok` (or, for ids and foreign keys, its caller) types:
#: an entry with no other key needs no search for a float elsewhere.
_FAST_KEYS = frozenset(("id", "created_at", "updated_at", "date_performed", *INCLUDE_GATED,
                        *(f for f, *_ in _INT_FIELDS), *_BOOL_FIELDS, *_TEXT_FIELDS))


def _column(raws: list[dict[str, Any]], key: str) -> list[Any]:
    """`raw.get(key)` of every entry, in order (None for an absent key)."""
    return list(map(dict.get, raws, repeat(key)))


def _fast_entries_ok(raws: list[dict[str, Any]]) -> bool:
    """Whether PostgreSQL's plain casts of every entry of `raws` (`store.STORE_PAGE_BODY`)
    store what the careful path (`parse_time_entry`) would, unchanged: minutes, amounts and
    the base unit are JSON integers in range, flags booleans, text fields strings of at most
    MAX_TEXT characters, `date_performed` and the timestamps spelled as `_FAST_DATE` and
    `_FAST_INSTANT` (a 30th of February passes here and PostgreSQL refuses it: DataError,
    careful path), no number with a fraction or exponent anywhere. Ids and foreign keys are
    the caller's (strings or null there; a float among them is not searched for here). Pure;
    checks a page column by column (type sets, min/max, one regular
    expression match per column) so that the loops run in C: about 1.6 µs an entry, where
    checking each entry on its own cost 2.6 (issue #26: the backfill's per-entry Python work).
    `tests/unit/test_pagination_fastpath.py` states the rules entry by entry and compares the
    two on random entries."""
    minutes = _column(raws, "time_in_minutes")
    if not set(map(type, minutes)) <= _INTS or min(minutes) < 0 or max(minutes) > 1_000_000:
        return False
    for key, lo, hi in (("rate_in_cents", -MAX_BIGINT, MAX_BIGINT),
                        ("cost_rate_in_cents", -MAX_BIGINT, MAX_BIGINT),
                        ("currency_base_unit", 0, MAX_INT)):
        values = _column(raws, key)
        if not set(map(type, values)) <= _INTS_OR_NONE:
            return False
        present = [v for v in values if v is not None]
        if present and (min(present) < lo or max(present) > hi):
            return False
    for key in _BOOL_FIELDS:
        if not set(map(type, _column(raws, key))) <= _BOOLS_OR_NONE:
            return False
    for key in _TEXT_FIELDS:
        values = _column(raws, key)
        if not set(map(type, values)) <= _STRS_OR_NONE \
                or max(map(len, filter(None, values)), default=0) > MAX_TEXT:
            return False
    if not _stamps_ok(_column(raws, "updated_at"), _column(raws, "created_at"),
                      _column(raws, "date_performed")):
        return False
    if all(map(_FAST_KEYS.issuperset, raws)):
        return True  # every value was typed above (ids and foreign keys: the caller's)
    kinds = set(map(type, chain.from_iterable(map(dict.values, raws))))
    return float not in kinds and ((dict not in kinds and list not in kinds)
                                   or all(map(_no_float, raws)))


def _stamps_ok(updated: list[Any], created: list[Any], performed: list[Any], *,
               typed: bool = False) -> bool:
    """The timestamp columns of a page's entries: every `updated_at` a string spelled as
    `_FAST_INSTANT`, every `date_performed` one spelled as `_FAST_DATE`, every `created_at`
    null, absent (None or msgspec's UNSET), equal to its `updated_at` (spelled as that is:
    not matched again; two in three entries) or a string spelled as `_FAST_INSTANT`. Dates
    are matched once each: a page, ordered by `date_performed`, holds a few distinct ones."""
    created = [c for c in compress(created, map(ne, created, updated))
               if c is not None and c is not msgspec.UNSET]
    return ((typed or set(map(type, updated)) <= _STRS and set(map(type, performed)) <= _STRS
             and set(map(type, created)) <= _STRS)
            and _all_spelled(updated, _FAST_INSTANT) and _all_spelled(created, _FAST_INSTANT)
            and _all_spelled(list(set(performed)), _FAST_DATE))


def _listed_ids_ok(keys: list[Any], ids: list[Any]) -> bool:
    """A page's `results` references, as their `key` and `id` columns: every key
    "time_entries", every id a positive integer of at most 18 digits without leading zeros,
    as a string, each listed once (an id listed twice: the map has fewer entries than
    listed)."""
    return (keys.count("time_entries") == len(keys) and set(map(type, ids)) == _STRS
            and _all_spelled(ids, _FAST_ID) and len(set(ids)) == len(ids))


def _refs(ids: list[str], foreign_keys: list[list[Any]] | Callable[[], list[list[Any]]], *,
          typed: bool = False, distinct: list[set[Any]] | None = None) -> EntryRefs | None:
    """The page's `EntryRefs` (ids and the four foreign-key columns, INCLUDE_GATED order, None
    for null or absent), or None when a foreign key is not one `_id_or_fail` takes (null, or
    a digit string of at most 18 digits). Only each column's distinct values are checked, and
    kept as spelled for `EntryRefs.side_texts` (`_ID_MEMO` remembers the spellings already
    checked). `typed`: the values are known to be strings or None (msgspec typed them);
    `distinct`: each column's set of values, kept (and `foreign_keys` a function giving the
    columns when the refs are first read)."""
    side = []
    for i in range(len(INCLUDE_GATED)):
        if distinct is None:
            assert not callable(foreign_keys)
            values = foreign_keys[i]
            if not typed and not set(map(type, values)) <= _STRS_OR_NONE:
                return None
            seen = set(values)
        else:
            seen = distinct[i]
        seen.discard(None)
        new = seen.difference(_ID_MEMO)
        if new:
            if not _all_spelled(list(new), _FAST_FK):
                return None
            if len(_ID_MEMO) + len(new) > _MEMO_SIZE:
                _ID_MEMO.clear()
            _ID_MEMO.update(zip(new, map(int, new)))
        side.append((_REF_SLOTS[i][0], seen))  # as spelled: `EntryRefs.side_ids` converts
    return EntryRefs(list(map(int, ids)), foreign_keys if callable(foreign_keys)
                     else (lambda: foreign_keys), side)


def _body_page(body: bytes, envelope: Mapping[str, Any], meta: Mapping[str, Any],
               ids: list[str], refs: EntryRefs, absent: set[str],
               side: list[SideObject] | tuple[()] = (), rejected: list[Rejected] | tuple[()] = (),
               altered: list[Altered] | tuple[()] = ()) -> Page:
    """The Page of a list page whose entries PostgreSQL types (`Page.body`), with the
    envelope's figures (`_envelope_int`: raises MalformedResponseError for one that is not
    an integer)."""
    count = _envelope_int(envelope, meta, "count", len(ids))
    assert count is not None
    return Page(
        count=count,
        page_count=_envelope_int(envelope, meta, "page_count", 1) or 0,
        page_number=_envelope_int(envelope, meta, "page_number", None),
        page_size=_envelope_int(envelope, meta, "page_size", len(ids)) or 0,
        absent_keys=frozenset(absent), result_ids=tuple(ids), entries=(), side=tuple(side),
        rejected=tuple(rejected), altered=tuple(altered), body=body, refs=refs)


def decode_page_fast(doc: Any, body: bytes, *, storable: bool) -> Page:
    """`decode_page` for a page whose entries PostgreSQL is to type and store (issue #26,
    `store.store_page_body`): `doc` is `body` decoded (`decode_json_storable`, with its
    `storable`). Returns a Page with `body` set, no `entries` and one `EntryRef` per listed
    entry (id and foreign keys, in `results` order), the envelope figures, `absent_keys` and
    the side-loaded objects as `decode_page` gives them.

    Python checks what the statement relies on: the `time_entries` map holds exactly the
    entries `results` lists, each once (the statement reads the map), each `results` item is
    a `{key: "time_entries", id}` reference whose object's `id` field, if any, equals the key,
    the key is a positive integer of at most 18 digits without leading zeros, each foreign key
    is null, absent or a string of at most 18 digits, and every other field is as
    `_fast_entries_ok` says. Anything else, or a body that is not provably storable text
    (`storable` false: NUL, unpaired surrogates) or longer than MAX_TEXT, returns
    `decode_page(doc)` instead: the careful path for that page. The checks run column by
    column over the page (C loops), not entry by entry. Raises MalformedResponseError like
    `decode_page`."""
    if not storable or len(body) > MAX_TEXT or type(doc) is not dict:
        return decode_page(doc, storable=storable)
    results, keyed, meta = doc.get("results"), doc.get("time_entries"), doc.get("meta") or {}
    if type(results) is not list or not results or type(keyed) is not dict \
            or type(meta) is not dict or len(keyed) != len(results) \
            or set(map(type, results)) != _DICTS:
        return decode_page(doc, storable=storable)
    ids = _column(results, "id")
    if not _listed_ids_ok(list(map(dict.get, results, repeat("key"), repeat("time_entries"))),
                          ids):
        return decode_page(doc, storable=storable)
    raws = list(map(keyed.get, ids))
    if set(map(type, raws)) != _DICTS \
            or list(map(dict.get, raws, repeat("id"), ids)) != ids \
            or not _fast_entries_ok(raws):
        return decode_page(doc, storable=storable)
    refs = _refs(ids, [_column(raws, key) for key in INCLUDE_GATED])
    if refs is None:
        return decode_page(doc, storable=storable)
    absent = {k for k in INCLUDE_GATED if not all(map(dict.__contains__, raws, repeat(k)))}
    rejected: list[Rejected] = []
    altered: list[Altered] = []
    side = _side_objects(doc, storable, rejected, altered)
    return _body_page(body, doc, meta, ids, refs, absent, side, rejected, altered)


_DICTS = frozenset({dict})


# ------------------------------------------------------------------ the typed lane
# A backfill page as msgspec types it in one pass in C (issue #26): the same rules as
# `decode_page_fast`, each field's JSON type, range and presence checked while decoding, so
# the common page costs no Python per entry. Anything the types refuse (an unknown field, a
# float, a boolean spelled 1, a lone surrogate) sends the page down `decode_page_fast`.
_Unset = msgspec.UnsetType
_Bigint = Annotated[int, msgspec.Meta(ge=-MAX_BIGINT, le=MAX_BIGINT)]


class _TypedEntry(msgspec.Struct, forbid_unknown_fields=True, gc=False, kw_only=True):
    """One entry of the contract's TimeEntry schema with only the fields PostgreSQL's page
    statement types (`store.STORE_PAGE_BODY`) and the value kinds `_fast_entries_ok` lets
    through; UNSET is an absent key. `gc=False` (msgspec: for structs never in a reference
    cycle; decoded JSON is a tree): 400 such objects a page were half of the collector's
    young-generation passes (1,000,000 entries: 2,452 -> ~1,120, 1.16 -> ~0.6 s of CPU).
    The fields are declared in the order the contract's schema (and the simulator) gives
    them: msgspec looks a key up at the next field first, so keys in that order are found
    at once (decoding 40 simulator pages: 0.197 -> 0.182 ms a page); any other order
    decodes alike, a little slower."""

    id: Any = msgspec.UNSET
    created_at: str | None | _Unset = msgspec.UNSET
    updated_at: str
    date_performed: str
    time_in_minutes: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
    billable: bool | None | _Unset = msgspec.UNSET
    notes: str | None | _Unset = msgspec.UNSET
    rate_in_cents: _Bigint | None | _Unset = msgspec.UNSET
    cost_rate_in_cents: _Bigint | None | _Unset = msgspec.UNSET
    currency: str | None | _Unset = msgspec.UNSET
    currency_symbol: str | None | _Unset = msgspec.UNSET
    currency_base_unit: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] | None | _Unset = \
        msgspec.UNSET
    approved: bool | None | _Unset = msgspec.UNSET
    is_invoiced: bool | None | _Unset = msgspec.UNSET
    taxable: bool | None | _Unset = msgspec.UNSET
    location: str | None | _Unset = msgspec.UNSET
    workspace_id: str | None | _Unset = msgspec.UNSET
    user_id: str | None | _Unset = msgspec.UNSET
    story_id: str | None | _Unset = msgspec.UNSET
    role_id: str | None | _Unset = msgspec.UNSET


class _TypedRef(msgspec.Struct, gc=False, kw_only=True):
    """A `results` item: `{key, id}`, the key "time_entries" when absent as in
    `decode_page_fast`, the id a string (its spelling checked by `decode_page_typed`);
    untracked by the collector as `_TypedEntry`."""

    key: Literal["time_entries"] = "time_entries"
    id: str


class _TypedPage(msgspec.Struct, kw_only=True):
    """The list envelope (api-notes §1); the side-loaded kinds only to see that there are
    none (a page with them takes `decode_page_fast`, which parses them)."""

    count: Any = None
    meta: Any = None
    results: list[_TypedRef]
    time_entries: dict[str, _TypedEntry]
    workspaces: Any = msgspec.UNSET
    users: Any = msgspec.UNSET
    stories: Any = msgspec.UNSET
    roles: Any = msgspec.UNSET


_TYPED_PAGE = msgspec.json.Decoder(_TypedPage)

_FK_OF = {k: attrgetter(k) for k in INCLUDE_GATED}
_UPDATED, _CREATED, _PERFORMED, _ENTRY_ID = (
    attrgetter("updated_at"), attrgetter("created_at"), attrgetter("date_performed"),
    attrgetter("id"))


def decode_page_typed(body: bytes) -> Page | None:
    """The Page `decode_page_fast` would give for list page `body` (JSON bytes as Kantata sent
    them), decoded and checked by msgspec's types in one pass; None when the page is not one
    this lane takes (not strict JSON, a `\\u0000` escape, longer than MAX_TEXT, side-loaded
    objects, a field beyond the typed ones or of another kind, or any rule of
    `decode_page_fast` broken): the caller then decodes it as before. Never raises for a
    malformed body (None: the caller's path raises what it raises)."""
    if len(body) > MAX_TEXT or has_nul_escape(body):
        return None
    try:
        doc = _TYPED_PAGE.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # (nested too deeply: the caller's decoder says so)
    results, keyed = doc.results, doc.time_entries
    meta = {} if doc.meta is None else doc.meta
    if not results or len(keyed) != len(results) or type(meta) is not dict \
            or doc.workspaces is not msgspec.UNSET or doc.users is not msgspec.UNSET \
            or doc.stories is not msgspec.UNSET or doc.roles is not msgspec.UNSET:
        return None
    ids = list(map(_ENTRY_ID, results))  # strings (typed); keys "time_entries" (typed)
    listed = set(ids)
    if len(listed) != len(ids) or keyed.keys() != listed or not _all_spelled(ids, _FAST_ID):
        return None
    # every check below is of the page's entries as a set (map order); only `EntryRefs`
    # needs `results` order, and builds it when asked
    entries, keys = list(keyed.values()), list(keyed)
    own = list(map(_ENTRY_ID, entries))
    if own != keys and any(o is not msgspec.UNSET and o != i for o, i in zip(own, keys)):
        return None
    if not _stamps_ok(list(map(_UPDATED, entries)), list(map(_CREATED, entries)),
                      list(map(_PERFORMED, entries)), typed=True):
        return None
    columns, distinct, absent = [], [], set()
    for key in INCLUDE_GATED:  # in map order; the decoded page is not kept for `EntryRefs`
        column = list(map(_FK_OF[key], entries))
        values = set(column)  # UNSET found by hash, not compared with every value
        if msgspec.UNSET in values:
            absent.add(key)
            values.discard(msgspec.UNSET)
            column = [None if v is msgspec.UNSET else v for v in column]
        columns.append(column)
        distinct.append(values)

    def in_results_order() -> list[list[str | None]]:
        if keys == ids:
            return columns
        at = {k: i for i, k in enumerate(keys)}
        order = [at[i] for i in ids]
        return [[c[i] for i in order] for c in columns]

    refs = _refs(ids, in_results_order, typed=True, distinct=distinct)
    if refs is None:
        return None
    try:
        return _body_page(body, {} if doc.count is None else {"count": doc.count}, meta, ids,
                          refs, absent)
    except MalformedResponseError:
        return None


# ------------------------------------------------------------------ page size
#: Kantata's documented `per_page` maximum (api-notes §3): the floor a page size comes down to.
DOCUMENTED_MAX_PER_PAGE = 200


class PageSize:
    """The `per_page` a process asks Kantata for (issue #24): `wanted` (SYNCD_PER_PAGE; Kantata's
    own Ruby client asks 5,000 time entries a page, api-notes §3 and §14 Q4) until a list page
    times out or fails with a 5xx, then half of it each time, never below
    DOCUMENTED_MAX_PER_PAGE (or `wanted`, if smaller). Kantata clamps what it does not allow and
    says what it used in `meta.page_size`; paging follows that, so a server that clamps to 200
    costs the same requests as asking for 200.

    `resume_page(offset, size)` says where a read that stopped after `offset` entries continues
    at `size`: the page number when `offset` is a whole number of such pages, else None (the
    read starts again at page 1; re-reading stored entries changes nothing).

    `served(size)` records the `meta.page_size` of an answer; `expected` is then what a request
    of `current` brings (entries), which sizes the memory a request reserves: a server that
    clamps to 200 must not make every request reserve 5,000 entries (that let one request
    travel at a time).

    `answered()`, after every list page answered, raises a halved size again: after
    GROW_AFTER answers in a row since the last halving it doubles (up to `wanted`), so a
    burst of 5xx does not leave a long-running daemon asking 200 a page for ever (25 times
    the requests where Kantata serves 5,000); each halving that follows a raise doubles the
    answers the next raise waits for (up to GROW_AFTER_MAX), so a server that cannot serve
    the bigger size costs one failed request per 50, 100, ... 3,200 pages."""

    GROW_AFTER = 50
    GROW_AFTER_MAX = 3200

    def __init__(self, wanted: int) -> None:
        if wanted < 1:
            raise ValueError("per_page must be at least 1")
        self.wanted = wanted
        self.current = wanted
        self._served: int | None = None
        self._answers = 0  # list pages answered since the last halving or raise
        self._grow_after = self.GROW_AFTER
        self._raised = False  # the last change was a raise

    @property
    def grow_after(self) -> int:
        """Answers in a row the next raise waits for."""
        return self._grow_after

    def answered(self) -> int | None:
        """Count one list page answered; returns the new size when this raises it (else
        None)."""
        self._answers += 1
        if self.current >= self.wanted or self._answers < self._grow_after:
            return None
        self.current = min(self.wanted, self.current * 2)
        self._answers, self._raised = 0, True
        return self.current

    def served(self, size: int) -> None:
        """Record the page size (entries) an answer was served at (`meta.page_size`)."""
        if size > 0:
            self._served = size

    @property
    def known_served(self) -> int | None:
        """The page size (entries) Kantata last served a request of this process, if any
        answer said (`served`); None before."""
        return self._served

    @property
    def expected(self) -> int:
        """Entries a request of `current` is expected to bring: the last served size when it
        is smaller (Kantata clamps `per_page`), else `current`."""
        return min(self.current, self._served) if self._served else self.current

    @property
    def floor(self) -> int:
        return min(DOCUMENTED_MAX_PER_PAGE, self.wanted)

    @property
    def can_shrink(self) -> bool:
        return self.current > self.floor

    def after_failure(self, size: int) -> tuple[int, bool] | None:
        """A list page asked at `size` entries timed out or failed with a 5xx: (the size to
        ask it again at, whether this halved the size). Another read that failed at `size`
        has halved it already when it is smaller now: it is not halved twice for one size
        (four windows failing together halved 5,000 to 312). None when `size` cannot come
        down (at `floor`): the failure is the caller's to raise."""
        if size > self.current:
            return self.current, False
        if size <= self.floor:
            return None
        return self.shrink(), True

    def shrink(self) -> int:
        """Halve the size (not below `floor`) after a timeout or 5xx; returns the new size."""
        self.current = max(self.floor, self.current // 2)
        if self._raised:  # the raised size failed: wait longer before the next raise
            self._grow_after = min(self.GROW_AFTER_MAX, self._grow_after * 2)
        self._answers, self._raised = 0, False
        return self.current

    @staticmethod
    def resume_page(offset: int, size: int) -> int | None:
        if size < 1 or offset % size:
            return None
        return offset // size + 1


# ------------------------------------------------------------------ paging loop guard
def count_usable(count: int) -> bool:
    """Whether `count` can be a number of entries (the contract types it as an integer and
    does not say it is non-negative; a negative one tells nothing about the query)."""
    return count >= 0

class PageGuard:
    """The loop guard of one paged query (the idea of the Singer SDK's paginator guard):
    `check(requested, page)` after every page raises PagingError, naming the cause, when

    - the page lists exactly the ids of an earlier page of the same query (a server that
      ignores `page` would be paged until `meta.page_count` ran out);
    - `meta.page_number` is present and does not echo the page asked for (api-notes §2:
      brainstem echoes `params[:page]`);
    - a page with results lies beyond what `count / page_size` allows (`count` of that same
      answer, so entries added while paging do not trip it; a negative `count` says nothing,
      see `count_usable`);
    - more than `max_pages` pages were read.

    The first three raise `PageIgnoredError` past page 1 (the server does not page as asked;
    the pull falls back to reading ranges that fit one page, `windows.Narrowing`); on page 1
    and past `max_pages`, plain PagingError. Pure: the caller stops reading and leaves the window (or watermark) where it
    was. Memory: one hash per page read."""

    def __init__(self, query: str, *, max_pages: int = 100_000) -> None:
        self.query = query
        self.max_pages = max_pages
        self._seen: dict[int, int] = {}
        self.pages = 0

    def check(self, requested: int, page: Page) -> None:
        """Raise PagingError when `page` (the answer to page number `requested`) shows the
        paging is not progressing; return otherwise."""
        self.pages += 1
        where = f"{self.query}, page {requested} (request {self.pages} of this read)"
        if self.pages > self.max_pages:
            raise PagingError(f"{where}: more than {self.max_pages} pages; read stopped")
        if not page.result_ids:
            return
        # past page 1 the server does not page as asked; page 1 wrong is another fault
        error = PageIgnoredError if requested > 1 else PagingError
        if page.page_number is not None and page.page_number != requested:
            raise error(f"{where}: Kantata answered page {page.page_number} instead "
                        "(`meta.page_number` does not echo `page`); read stopped")
        size = page.page_size or len(page.result_ids)
        allowed = -(-page.count // size) if size > 0 else 0
        if count_usable(page.count) and requested > allowed:
            raise error(
                f"{where}: {len(page.result_ids)} entries listed beyond the {allowed} page(s) "
                f"that count {page.count} / page size {size} allows; read stopped")
        key = hash(page.result_ids)
        first = self._seen.get(key)
        if first is not None and first != requested:
            raise error(
                f"{where}: lists the same {len(page.result_ids)} ids as page {first}; the "
                "server is not paging (is `page` ignored?); read stopped")
        self._seen[key] = requested

    def seen(self, page_no: int, result_ids: Sequence[str]) -> None:
        """Count `result_ids` as page `page_no` of this query without checking it: a page read
        under another query that stands in for it (the incremental pull's keyset page standing
        in for page 1 of its crowded second, `cursor.next_step`)."""
        if result_ids:
            self._seen.setdefault(hash(tuple(result_ids)), page_no)


class PagingTrust:
    """Whether Kantata honours `page`, as learnt during one run (issue #27): `reason` is None
    until a read shows it does not (a `PageIgnoredError`), then that error's text. Every read
    of the run after that asks page 1 only and narrows ranges that do not fit one page
    (`windows.Narrowing`) instead of finding out again with a page 2 request."""

    def __init__(self) -> None:
        self.reason: str | None = None

    @property
    def ignored(self) -> bool:
        return self.reason is not None

    def distrust(self, reason: str) -> bool:
        """Record that `page` is not honoured; True the first time (the caller logs it once)."""
        first = self.reason is None
        if first:
            self.reason = reason
        return first


#: The contract point an ignored `page` breaks, for the warning logged once per run.
PAGE_CONTRACT_POINT = ("GET /time_entries query parameter `page` (time-entries.openapi.yml; "
                       "declared, not promised with every filter)")


# ------------------------------------------------------------------ side-loads once per run
#: A side-loaded object's key: (kind, id), kind as the include's top-level key.
SideRef = tuple[str, int]
#: Which `TimeEntry` field (by position) references which side-loaded kind.
_REF_SLOTS = (("workspaces", 1), ("users", 2), ("stories", 3), ("roles", 4))


def _entry_refs(e: TimeEntry) -> list[SideRef]:
    """The side-loaded objects one entry references (api-notes §2 Includes: `workspace` ->
    `workspaces` keyed by `workspace_id`, and so on)."""
    return [(kind, e[i]) for kind, i in _REF_SLOTS if e[i] is not None]


def side_ids(entries: Sequence[TimeEntry]) -> list[tuple[str, AbstractSet[int]]]:
    """The ids of the side-loaded objects `entries` reference, by kind: [(kind, distinct
    ids)] in INCLUDE_GATED order, column by column (for `EntryRefs`, its `side_ids`).
    `pull.SideLoads` checks a page's references against what its run has committed as sets
    by kind, without building (kind, id) pairs."""
    if isinstance(entries, EntryRefs):
        return entries.side_ids  # type: ignore[return-value]
    out = []
    for kind, i in _REF_SLOTS:
        ids = set(map(itemgetter(i), entries))
        ids.discard(None)
        out.append((kind, ids))
    return out


def side_refs(entries: Sequence[TimeEntry]) -> set[SideRef]:
    """The side-loaded objects `entries` reference, as (kind, id)."""
    refs: set[SideRef] = set()
    for kind, ids in side_ids(entries):
        refs.update(zip(repeat(kind), ids))
    return refs


def sideload_plan(entries: Iterable[TimeEntry], known: Container[SideRef], *,
                  max_ids: int = 200) -> tuple[list[list[int]], set[SideRef]]:
    """Which entries to ask for again with `include=` so that every object `entries`
    reference and `known` lacks is side-loaded once: ([chunks of at most `max_ids` entry ids,
    for `only=`], the refs those requests cover). Greedy, in entry order: an entry is chosen
    when it references an object not yet covered, and then covers all four of its references,
    so a page of 200 entries whose objects are all new takes one request of at most 200 ids
    (api-notes §14 Q18: at most 200 ids in `only=`)."""
    chosen: list[int] = []
    covered: set[SideRef] = set()
    for e in entries:
        refs = _entry_refs(e)
        if any(ref not in known and ref not in covered for ref in refs):
            chosen.append(e.id)
            covered.update(refs)
    covered = {ref for ref in covered if ref not in known}
    return [chosen[i:i + max_ids] for i in range(0, len(chosen), max_ids)], covered


def side_part(page: Page) -> Page:
    """`page` with only its side-loaded part: the objects, and the rejects and alterations of
    side-loaded objects (a side-load request's entries are not what it is for)."""
    return replace(page, entries=(), result_ids=(),
                   rejected=tuple(r for r in page.rejected if r.entry_id is None
                                  and r.reason.split(":", 1)[0] in SIDE_KINDS),
                   altered=tuple(a for a in page.altered if a.kind in SIDE_KINDS))
