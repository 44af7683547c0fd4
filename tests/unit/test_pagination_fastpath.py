"""The page-decoding fast path (benchmark issue #7): a page decoded by the strict parser with no
`\\u0000` escape skips the per-string NUL/surrogate walk, and identical side-loaded objects are
parsed once. It must decide exactly like the slow path."""

from __future__ import annotations

import random

import orjson

from syncd.errors import InvalidRecord
from syncd.pagination import (
    _common_time_entry,
    decode_json_storable,
    decode_page,
    parse_time_entry,
)
from syncd.simulator import SimConfig, Simulator
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
