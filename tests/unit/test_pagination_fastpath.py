"""The page-decoding fast path (benchmark issue #7): a page decoded by the strict parser with no
`\\u0000` escape skips the per-string NUL/surrogate walk, and identical side-loaded objects are
parsed once. It must decide exactly like the slow path."""

from __future__ import annotations

import orjson

from syncd.pagination import decode_json_storable, decode_page
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


def test_nul_anywhere_still_rejects_only_its_record() -> None:
    body = page(entry(1), entry(2, notes="bad\x00"), workspaces={"10": WS},
                users={"20": {**USER, "full_name": "x\x00"}})
    p = decode_page(body)
    assert [e.id for e in p.entries] == [1]
    reasons = sorted(r.reason for r in p.rejected)
    assert len(reasons) == 2 and all("NUL" in r for r in reasons)
    assert [o.kind for o in p.side] == ["workspaces"]


def test_identical_side_objects_parse_to_the_same_object_and_changes_are_seen() -> None:
    a = decode_page(page(entry(1), workspaces={"10": WS}, users={"20": USER}))
    b = decode_page(page(entry(2), workspaces={"10": WS}, users={"20": USER}))
    assert a.side == b.side and all(x is y for x, y in zip(a.side, b.side, strict=True))
    c = decode_page(page(entry(3), workspaces={"10": {**WS, "title": "Renamed"}}))
    assert [(o.id, o.label) for o in c.side] == [(10, "Renamed")]
    bad = decode_page(page(entry(4), workspaces={"10": {**WS, "id": "x"}}))
    assert bad.side == () and "workspaces" in bad.rejected[0].reason
