"""The page-decoding fast path (benchmark issue #7): a page decoded by the strict parser with no
`\\u0000` escape skips the per-string NUL/surrogate walk, and identical side-loaded objects are
parsed once. It must decide exactly like the slow path."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson

from syncd.errors import InvalidRecord
from syncd.pagination import (
    _FAST_DATE,
    _FAST_INSTANT,
    MAX_BIGINT,
    MAX_INT,
    MAX_TEXT,
    _common_time_entry,
    _fast_entries_ok,
    _no_float,
    decode_json_storable,
    decode_page,
    decode_page_fast,
    decode_page_typed,
    parse_time_entry,
)
from syncd.simulator import SimConfig, Simulator
from tests.integration.test_dual_path import entry as dual_path_entry
from tests.unit.test_pagination import entry, page

WS = {"id": "10", "title": "Website ✓", "updated_at": "2026-03-08T03:00:00-07:00"}
USER = {"id": "20", "full_name": "Zoë", "email_address": "z@example.com"}


def test_storable_only_for_strict_json_without_a_nul_escape() -> None:
    assert decode_json_storable(b'{"a": "x \\u00e9 \\ud83d\\ude00"}') == (
        {"a": "x é 😀"}, True)
    assert decode_json_storable(b'{"a": "x\\u0000"}') == ({"a": "x\x00"}, False)
    doc, storable = decode_json_storable(b'{"a": "\\ud800"}')  # lone surrogate: stdlib decodes
    assert doc == {"a": "\ud800"} and storable is False
    # an escaped backslash before "u0000" is harmless text, but the check stays conservative
    assert decode_json_storable(b'{"a": "\\\\u0000"}') == ({"a": "\\u0000"}, False)


def test_fast_and_slow_paths_decode_a_real_page_identically() -> None:
    sim = Simulator(SimConfig(token="t", entries=800, seed=3, lock_date=None))
    body = sim.api_list({"per_page": "200", "include": "workspace,user,story,role",
                         "order": "date_performed:asc", "from_archived_workspaces": "true",
                         "on_my_account": "false"})
    fast = decode_page(body)  # bytes: storable proven
    slow = decode_page(orjson.loads(body))  # a dict: every string walked
    assert len(fast.entries) == 200 and len(fast.side) > 20
    assert fast == slow


def test_nul_anywhere_takes_the_careful_path_and_keeps_every_record() -> None:
    body = page(entry(1), entry(2, notes="bad\x00"), workspaces={"10": WS},
                users={"20": {**USER, "full_name": "x\x00"}})
    p = decode_page(body)
    assert [e.id for e in p.entries] == [1, 2] and p.rejected == () and len(p.altered) == 2
    assert p.entries[1].notes == "bad\ufffd"
    assert sorted(o.kind for o in p.side) == ["users", "workspaces"]
    user = next(o for o in p.side if o.kind == "users")
    assert user.label == "x\ufffd" and "_syncd_altered" in user.raw


def test_identical_side_objects_parse_to_the_same_object_and_changes_are_seen() -> None:
    a = decode_page(page(entry(1), workspaces={"10": WS}, users={"20": USER}))
    b = decode_page(page(entry(2), workspaces={"10": WS}, users={"20": USER}))
    assert a.side == b.side and all(x is y for x, y in zip(a.side, b.side, strict=True))
    c = decode_page(page(entry(3), workspaces={"10": {**WS, "title": "Renamed"}}))
    assert [(o.id, o.label) for o in c.side] == [(10, "Renamed")]
    bad = decode_page(page(entry(4), workspaces={"10": {**WS, "id": "x"}}))
    assert bad.side == () and "workspaces" in bad.rejected[0].reason


ODD_VALUES: list[object] = [
    None, True, False, 0, -1, 1, 7, 2**31, 2**63, -(2**63), 1.5, "", "0", "007", "-5", "+5",
    "12x", "٣", "²", "9" * 19, "9" * 18, "2026-03-07", "2026-3-7", "0999-01-01",
    "2026-03-08T03:00:00-07:00", "2026-03-08T03:00:00", "2026-03-08T03:00:00Z",
    "2301-01-01T00:00:00+00:00", "x" * 50, [], {}, {"a": 1},
]
FIELDS = ["id", "workspace_id", "user_id", "story_id", "role_id", "date_performed",
          "time_in_minutes", "billable", "notes", "rate_in_cents", "cost_rate_in_cents",
          "currency", "currency_base_unit", "approved", "is_invoiced", "taxable", "location",
          "created_at", "updated_at"]


def _careful(raw: dict[str, object]) -> object:
    try:
        return parse_time_entry(raw)  # storable=False: the careful path only
    except InvalidRecord as exc:
        return ("rejected", exc.reason)


def test_the_common_case_path_decides_exactly_like_the_careful_path() -> None:
    rng = random.Random(7)
    checked = fast_hits = 0
    for _ in range(4000):
        raw = entry(rng.randrange(1, 10**6))
        for f in rng.sample(FIELDS, rng.choice([0, 1, 1, 2, 3])):
            if rng.random() < 0.1:
                raw.pop(f, None)
            else:
                raw[f] = rng.choice(ODD_VALUES)
        want = _careful(raw)
        fast = _common_time_entry(raw)
        if fast is not None:
            fast_hits += 1
            assert fast == want, raw
        try:
            got: object = parse_time_entry(raw, storable=True)
        except InvalidRecord as exc:
            got = ("rejected", exc.reason)
        assert got == want, raw
        checked += 1
    assert checked == 4000 and 500 < fast_hits < 4000


# ---------------------------------------------------------------- the page's checks by column
# The rules of `pagination._fast_entries_ok`, stated entry by entry (the form they had until
# the checks ran column by column): the oracle the column-wise checks are compared with.
def entry_ok(raw: dict[str, Any]) -> bool:
    get = raw.get
    minutes, rate, cost, unit = (get("time_in_minutes"), get("rate_in_cents"),
                                 get("cost_rate_in_cents"), get("currency_base_unit"))
    if type(minutes) is not int or not 0 <= minutes <= 1_000_000 \
            or (rate is not None and (type(rate) is not int
                                      or not -MAX_BIGINT <= rate <= MAX_BIGINT)) \
            or (cost is not None and (type(cost) is not int
                                      or not -MAX_BIGINT <= cost <= MAX_BIGINT)) \
            or (unit is not None and (type(unit) is not int or not 0 <= unit <= MAX_INT)):
        return False
    for v in (get("billable"), get("approved"), get("is_invoiced"), get("taxable")):
        if v is not None and v is not True and v is not False:
            return False
    for v in (get("notes"), get("currency"), get("currency_symbol"), get("location")):
        if v is not None and (type(v) is not str or len(v) > MAX_TEXT):
            return False
    u, c, d = get("updated_at"), get("created_at"), get("date_performed")
    if type(u) is not str or not _FAST_INSTANT.fullmatch(u) \
            or (c is not None and (c != u and (type(c) is not str
                                              or not _FAST_INSTANT.fullmatch(c)))) \
            or type(d) is not str or not _FAST_DATE.fullmatch(d):
        return False
    return _no_float(raw)


def test_the_checks_by_column_decide_as_the_checks_entry_by_entry() -> None:
    """`_fast_entries_ok` over a page is true exactly when every entry passes the rules
    stated one entry at a time, on 20,000 random entries (valid, awkward and broken, the
    generator of the dual-path test) in pages of 1 to 12, and on edge spellings that only a
    joined check could get wrong (a value holding the separator, two instants in one)."""
    rng = random.Random(26)
    decided = {True: 0, False: 0}
    for _ in range(4000):
        p_bad = rng.choice([0.0, 0.0, 0.02, 0.1, 0.4])
        raws = [json.loads(dual_path_entry_json(rng, i, p_bad))
                for i in range(1, rng.randint(1, 12) + 1)]
        want = all(map(entry_ok, raws))
        assert _fast_entries_ok(raws) is want, raws
        decided[want] += 1
    assert min(decided.values()) > 500, decided  # both answers, often
    good = {"updated_at": "2024-01-01T10:00:00Z", "date_performed": "2024-01-01",
            "time_in_minutes": 30}
    two = "2024-01-01T10:00:00Z\n2024-01-01T10:00:00Z"
    for odd in ({"updated_at": two}, {"created_at": two}, {"date_performed": "2024-01-01\n"},
                {"created_at": ""}, {"notes": 5}, {"billable": 1}, {"time_in_minutes": True},
                {"rate_in_cents": 2**63}, {"currency_base_unit": -1}, {"x": [1.5]},
                {"x": {"y": 2.0}}, {"x": 0.5}):
        raws = [dict(good), {**good, **odd}]
        assert _fast_entries_ok(raws) is False, odd
        assert entry_ok(raws[1]) is False, odd
    assert _fast_entries_ok([dict(good), {**good, "x": {"y": [1, "a"]}}]) is True


def dual_path_entry_json(rng: random.Random, eid: int, p_bad: float) -> bytes:
    """One entry of the dual-path test's generator as JSON bytes (its awkward number
    spellings written as such, as its page bodies do)."""
    text = json.dumps(dual_path_entry(rng, eid, p_bad))
    for marker in ("6e1", "60.00", "1e3", "3.14159265358979323846", "1.50"):
        text = text.replace(f'"__NUM_{marker}__"', marker)
    return text.replace('"__NUM_18446744073709551616__"', "18446744073709551615").encode()


def test_the_typed_lane_takes_only_pages_the_fast_path_takes_and_decodes_them_alike() -> None:
    """`decode_page_typed` (msgspec) on 3,000 random pages of the dual-path generator (valid,
    awkward, broken): whenever it takes a page, the Page equals `decode_page_fast`'s for the
    same bytes, every field; it takes the common page often, and a real simulator page."""
    from tests.integration.test_dual_path import page_body
    rng = random.Random(2612)
    took = 0
    for _ in range(3000):
        body = page_body(rng)
        typed = decode_page_typed(body)
        if typed is None:
            continue
        took += 1
        doc, storable = decode_json_storable(body)
        fast = decode_page_fast(doc, body, storable=storable)
        assert fast.body is not None, body  # the fast path took it too
        assert typed == fast, body
    assert took > 600, took
    sim = Simulator(SimConfig(token="t", entries=300, seed=3, lock_date=None))
    body = sim.api_list({"per_page": "200", "order": "date_performed:asc",
                         "from_archived_workspaces": "true", "on_my_account": "false"})
    body = body if isinstance(body, bytes) else orjson.dumps(body)
    page = decode_page_typed(body)
    assert page is not None and len(page.refs) == 200 and page.body == body


def test_the_typed_lane_leaves_every_other_page_to_the_fast_path() -> None:
    """An unknown field, a float, a boolean spelled 1, a lone surrogate, a NUL, side-loaded
    objects, an id that disagrees with its key: None (the page is decoded as before)."""
    def body(**over: Any) -> bytes:
        e = {"id": "1", "date_performed": "2024-01-01", "time_in_minutes": 30,
             "updated_at": "2024-01-01T10:00:00Z", "workspace_id": "7", **over}
        return json.dumps({"count": 1, "meta": {"page_count": 1}, "results": [
            {"key": "time_entries", "id": "1"}], "time_entries": {"1": e}}).encode()
    assert decode_page_typed(body()) is not None
    for over in ({"extra": 1}, {"time_in_minutes": 30.0}, {"billable": 1},
                 {"notes": "\ud800"}, {"notes": "a\u0000b"}, {"id": "2"}, {"id": 1},
                 {"updated_at": "2024-01-01T10:00:00"}, {"workspace_id": 7},
                 {"workspace_id": "07a"}, {"time_in_minutes": -1}):
        assert decode_page_typed(body(**over)) is None, over
    deep = body()[:-1] + b', "padding": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert decode_page_typed(deep) is None  # nested too deeply: RecursionError, not raised
    side = json.loads(body())
    side["workspaces"] = {"7": {"id": "7", "title": "W"}}
    assert decode_page_typed(json.dumps(side).encode()) is None
    absent = decode_page_typed(json.dumps({"results": [{"id": "1"}], "time_entries": {"1": {
        "date_performed": "2024-01-01", "time_in_minutes": 1,
        "updated_at": "2024-01-01T10:00:00Z"}}}).encode())
    assert absent is not None and absent.absent_keys == {"workspace_id", "user_id",
                                                         "story_id", "role_id"}
    assert absent.refs[0] == (1, None, None, None, None) and absent.count == 1


def test_foreign_keys_survive_the_id_memo_filling_up(monkeypatch: Any) -> None:
    """The memo of checked foreign-key spellings is cleared when full: a key it held before
    the clear keeps its value (it read as null after a clear, so its object was never
    side-loaded), on both lanes; the refs and the distinct ids by kind agree."""
    from syncd import pagination
    monkeypatch.setattr(pagination, "_MEMO_SIZE", 10)

    def body() -> bytes:
        entries = {str(i): {"id": str(i), "date_performed": "2024-01-01", "time_in_minutes": 1,
                            "updated_at": "2024-01-01T10:00:00Z", "workspace_id": "7",
                            "user_id": str(100 + i), "story_id": None, "role_id": "7"}
                   for i in range(1, 5)}
        return json.dumps({"count": 4, "meta": {"page_count": 1}, "results": [
            {"key": "time_entries", "id": k} for k in entries], "time_entries": entries}).encode()

    for decode in (decode_page_typed,
                   lambda b: decode_page_fast(*decode_json_storable(b)[:1], b, storable=True)):
        pagination._ID_MEMO.clear()
        pagination._ID_MEMO.update({str(n): n for n in range(1000, 1007)})  # 7 of 10
        pagination._ID_MEMO.update({"7": 7, "101": 101})  # known before the clear that the
        # three other user ids cause
        p = decode(body())
        assert p is not None and p.body is not None
        assert list(p.refs) == [(i, 7, 100 + i, None, 7) for i in range(1, 5)]
        assert dict(pagination.side_ids(p.listed())) == {
            "workspaces": {7}, "users": {101, 102, 103, 104}, "stories": set(), "roles": {7}}
        assert p.listed_ids() == [1, 2, 3, 4]


def test_refs_follow_results_order_when_the_map_lists_entries_in_another() -> None:
    """The typed lane checks the `time_entries` map in its own order and keeps the foreign
    keys that way; the refs still come out in `results` order, as on the fast path."""
    entries = {str(i): {"id": str(i), "date_performed": "2024-01-01", "time_in_minutes": 1,
                        "updated_at": "2024-01-01T10:00:00Z", "workspace_id": str(10 + i),
                        "user_id": str(20 + i), "story_id": None, "role_id": str(40 + i)}
               for i in (1, 2, 3)}
    body = json.dumps({"count": 3, "meta": {"page_count": 1}, "results": [
        {"key": "time_entries", "id": i} for i in ("3", "1", "2")],
        "time_entries": entries}).encode()
    typed = decode_page_typed(body)
    fast = decode_page_fast(decode_json_storable(body)[0], body, storable=True)
    assert typed is not None and typed == fast
    assert list(typed.refs) == [(3, 13, 23, None, 43), (1, 11, 21, None, 41),
                                (2, 12, 22, None, 42)]
    assert typed.listed_ids() == [3, 1, 2]
