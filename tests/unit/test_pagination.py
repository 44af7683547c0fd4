"""Decoding Kantata pages: envelope, order, validation, and bad input with specific reasons."""

from __future__ import annotations

import base64
import hashlib
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from syncd.errors import MalformedResponseError
from syncd.models import Altered, TimeEntry
from syncd.pagination import (ALTERED_KEY, MAX_TEXT, decode_page, parse_time_entry, sanitise,
                              side_part, side_refs, sideload_plan)


def entry(i: int, **over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "id": str(i), "created_at": "2026-03-08T01:59:59-08:00",
        "updated_at": "2026-03-08T03:00:00-07:00", "date_performed": "2026-03-07",
        "time_in_minutes": 60, "billable": True, "notes": "ok\nline 2 ✓ 🎉",
        "rate_in_cents": 15000, "cost_rate_in_cents": 9000, "currency": "USD",
        "currency_symbol": "$", "currency_base_unit": 100, "approved": False,
        "is_invoiced": False, "taxable": False, "location": None, "workspace_id": "10",
        "user_id": "20", "story_id": None, "role_id": "5",
    }
    e.update(over)
    return e


def page(*entries: dict[str, Any], order: list[str] | None = None, **extra: Any) -> bytes:
    ids = order or [e["id"] for e in entries]
    doc = {"count": len(ids), "meta": {"count": len(ids), "page_count": 1, "page_number": 1,
                                       "page_size": 200},
           "results": [{"key": "time_entries", "id": i} for i in ids],
           "time_entries": {e["id"]: e for e in entries}, **extra}
    return orjson.dumps(doc)


def test_results_order_wins_over_keyed_object_order() -> None:
    p = decode_page(page(entry(3), entry(1), entry(2), order=["2", "3", "1"]))
    assert [e.id for e in p.entries] == [2, 3, 1]
    assert p.result_ids == ("2", "3", "1")
    assert (p.count, p.page_count, p.page_size) == (3, 1, 200)


def test_entry_is_typed_and_keeps_raw() -> None:
    e = parse_time_entry(entry(7, unknown_field={"x": 1}))
    assert e.id == 7 and e.workspace_id == 10 and e.story_id is None and e.role_id == 5
    assert e.date_performed == date(2026, 3, 7)
    assert e.updated_at == datetime(2026, 3, 8, 10, 0, tzinfo=timezone.utc)
    assert e.updated_at.utcoffset() == timedelta(hours=-7)
    assert orjson.loads(e.raw)["unknown_field"] == {"x": 1}


def test_side_loads_are_decoded() -> None:
    body = page(entry(1), workspaces={"10": {"id": "10", "title": "Apollo"}},
                users={"20": {"id": "20", "full_name": "Ada"}}, stories={}, roles={})
    p = decode_page(body)
    assert {(s.kind, s.id, s.label) for s in p.side} == {("workspaces", 10, "Apollo"),
                                                         ("users", 20, "Ada")}


@pytest.mark.parametrize(("over", "reason"), [
    ({"time_in_minutes": -5}, "time_in_minutes -5 is outside"),
    ({"time_in_minutes": "sixty"}, "time_in_minutes must be an integer"),
    ({"time_in_minutes": True}, "got a boolean"),
    ({"time_in_minutes": None}, "time_in_minutes is missing"),
    ({"date_performed": "9999-12-31"}, "outside years"),
    ({"date_performed": "2026-02-30"}, "not a valid date"),
    ({"date_performed": 20260101}, "must be YYYY-MM-DD"),
    ({"updated_at": "2026-03-08T03:00:00"}, "has no UTC offset"),
    ({"updated_at": "yesterday"}, "is not ISO 8601"),
    ({"updated_at": None}, "updated_at must be an ISO 8601 string"),
    ({"notes": 42}, "notes must be a string"),
    ({"billable": "yes"}, "billable must be true, false or null"),
    ({"workspace_id": "ten"}, "workspace_id must be an integer"),
    ({"id": "-3"}, "id -3 is outside"),
    ({"id": "12\x0034"}, "id must be an integer"),
])
def test_bad_entries_are_rejected_with_a_specific_reason(over: dict[str, Any],
                                                         reason: str) -> None:
    p = decode_page(page(entry(1), entry(2, **over), entry(3)))
    assert [e.id for e in p.entries] == [1, 3]
    assert len(p.rejected) == 1
    assert p.rejected[0].entry_id == over.get("id", "2")
    assert reason in p.rejected[0].reason


def test_results_id_missing_from_keyed_object_is_rejected_not_fatal() -> None:
    p = decode_page(page(entry(1), order=["1", "99"]))
    assert [e.id for e in p.entries] == [1]
    assert p.rejected[0].entry_id == "99"
    assert "absent from the `time_entries` object" in p.rejected[0].reason


def altered(e: TimeEntry) -> list[dict[str, Any]]:
    return orjson.loads(e.raw)[ALTERED_KEY]


def original(item: dict[str, Any]) -> str:
    return base64.b64decode(item["original_b64"]).decode("utf-8", "surrogatepass")


@pytest.mark.parametrize(("over", "path", "reason", "stored"), [
    ({"notes": "bad\x00nul"}, "notes", "nul", "bad\ufffdnul"),
    ({"location": "\x00Berlin"}, "location", "nul", "\ufffdBerlin"),
    ({"currency_symbol": "$\x00"}, "currency_symbol", "nul", "$\ufffd"),
    ({"extra": {"k": ["ok", "v\x00"]}}, "extra.k[1]", "nul", None),
])
def test_text_postgres_cannot_hold_is_replaced_and_recorded_never_rejected(
        over: dict[str, Any], path: str, reason: str, stored: str | None) -> None:
    p = decode_page(page(entry(1), entry(2, **over), entry(3)))
    assert [e.id for e in p.entries] == [1, 2, 3] and p.rejected == () and len(p.altered) == 1
    assert p.altered == (Altered(kind="time_entries", id=2, fields=(path,), reasons=(reason,)),)
    e = p.entries[1]
    assert (e.time_in_minutes, e.date_performed, e.rate_in_cents) == (60, date(2026, 3, 7), 15000)
    [item] = altered(e)
    assert item["path"] == path and item["reasons"] == [reason]
    field, value = next(iter(over.items()))
    if stored is not None:
        assert orjson.loads(e.raw)[field] == stored
        if field in ("notes", "location"):
            assert getattr(e, field) == stored
    # the original is recoverable exactly from raw
    inner = value if isinstance(value, str) else value["k"][1]
    assert original(item) == inner
    assert ALTERED_KEY not in orjson.loads(p.entries[0].raw)


def test_lone_surrogate_is_replaced_and_the_record_kept() -> None:
    body = page(entry(1), entry(2, notes="PLACEHOLDER")).replace(b"PLACEHOLDER", b"a\\ud800b")
    p = decode_page(body)
    assert [e.id for e in p.entries] == [1, 2] and p.rejected == ()
    assert p.entries[1].notes == "a\ufffdb"
    [item] = altered(p.entries[1])
    assert item["reasons"] == ["unpaired_surrogate"] and original(item) == "a\ud800b"


def test_an_altered_key_is_recorded_with_its_clean_name() -> None:
    p = decode_page(page(entry(1, **{"bad\x00key": 1})))
    [e] = p.entries
    doc = orjson.loads(e.raw)
    assert doc["bad\ufffdkey"] == 1
    [item] = doc[ALTERED_KEY]
    assert item["path"] == "<key>" and item["key"] == "bad\ufffdkey"
    assert original(item) == "bad\x00key"


def test_a_megabyte_of_notes_and_emoji_are_stored_as_they_are() -> None:
    big = "n" * 1_000_001
    p = decode_page(page(entry(1, notes=big), entry(2, notes="🎉 ✓ 𝄞 ok")))
    assert [e.notes for e in p.entries] == [big, "🎉 ✓ 𝄞 ok"] and p.altered == ()
    assert all(ALTERED_KEY not in orjson.loads(e.raw) for e in p.entries)


def test_only_text_beyond_what_postgres_can_hold_is_cut_with_its_hash() -> None:
    huge = "x" * (MAX_TEXT + 5)
    [e] = decode_page(page(entry(1, notes=huge))).entries
    assert e.notes == huge[:MAX_TEXT]
    [item] = altered(e)
    assert item["reasons"] == ["too_long"] and item["original_length"] == MAX_TEXT + 5
    assert item["original_sha256"] == hashlib.sha256(huge.encode()).hexdigest()


def test_sanitise_returns_clean_input_itself_and_lists_every_alteration() -> None:
    doc = {"a": "ok", "b": [1, {"c": "✓"}]}
    clean, alterations = sanitise(doc)
    assert clean is doc and alterations == []
    clean, alterations = sanitise({"a": "x\x00", "b": [{"c": "\udfff\x00"}]})
    assert clean == {"a": "x\ufffd", "b": [{"c": "\ufffd\ufffd"}]}
    assert [(a["path"], a["reasons"]) for a in alterations] == [
        ("a", ["nul"]), ("b[0].c", ["nul", "unpaired_surrogate"])]


@pytest.mark.parametrize(("body", "message"), [
    (b'{"count": 1, "results": [{"key": "time_entries", "id"', "invalid or truncated JSON"),
    (b"<html><body>Maintenance</body></html>", "HTML"),
    (b"[]", "not a JSON object"),
    (b'{"count": 0}', "no `results` array"),
    (b'{"results": [], "time_entries": []}', "not an object keyed by id"),
    (b'{"results": [], "meta": {"page_count": "2"}}', "meta.page_count is not an integer"),
    (b"", "invalid or truncated JSON"),
])
def test_malformed_pages_raise_a_specific_error(body: bytes, message: str) -> None:
    with pytest.raises(MalformedResponseError, match=message):
        decode_page(body)


def test_empty_page_past_the_end() -> None:
    body = orjson.dumps({"count": 5, "meta": {"count": 5, "page_count": 1, "page_number": 9,
                                              "page_size": 20},
                         "results": [], "time_entries": {}})
    p = decode_page(body)
    assert p.entries == () and p.count == 5 and p.page_number == 9


# ------------------------------------------------------------------ side-loads once per run
def _entries(*refs: tuple[int, int | None, int | None, int | None, int | None]) -> list[TimeEntry]:
    out = []
    for i, ws, user, story, role in refs:
        out.append(parse_time_entry(entry(i, workspace_id=None if ws is None else str(ws),
                                          user_id=None if user is None else str(user),
                                          story_id=None if story is None else str(story),
                                          role_id=None if role is None else str(role))))
    return out


def test_side_refs_name_each_referenced_object_once() -> None:
    es = _entries((1, 10, 20, None, 40), (2, 10, 21, 30, None), (3, 11, 20, 30, 40))
    assert side_refs(es) == {("workspaces", 10), ("users", 20), ("roles", 40), ("users", 21),
                             ("stories", 30), ("workspaces", 11)}


def test_sideload_plan_asks_only_for_entries_that_bring_something_new() -> None:
    es = _entries((1, 10, 20, None, 40), (2, 10, 20, None, 40), (3, 10, 21, None, 40),
                  (4, 11, 21, 30, 40))
    chunks, covered = sideload_plan(es, known=set())
    assert chunks == [[1, 3, 4]]  # entry 2 references nothing entry 1 did not
    assert covered == {("workspaces", 10), ("users", 20), ("roles", 40), ("users", 21),
                       ("workspaces", 11), ("stories", 30)}
    # what the run already knows is neither asked for nor claimed as covered
    chunks, covered = sideload_plan(es, known={("workspaces", 10), ("users", 20),
                                                ("roles", 40), ("users", 21)})
    assert chunks == [[4]] and covered == {("workspaces", 11), ("stories", 30)}
    assert sideload_plan(es, known=covered | {("workspaces", 10), ("users", 20),
                                              ("roles", 40), ("users", 21)}) == ([], set())


def test_sideload_plan_chunks_at_the_only_limit() -> None:
    es = _entries(*[(i, i, None, None, None) for i in range(1, 451)])
    chunks, covered = sideload_plan(es, known=set(), max_ids=200)
    assert [len(c) for c in chunks] == [200, 200, 50] and len(covered) == 450
    assert [i for c in chunks for i in c] == list(range(1, 451))


def test_side_part_keeps_only_side_objects_and_their_problems() -> None:
    body = page(entry(1, notes="a\u0000b"), entry(2, time_in_minutes="x"),
                workspaces={"5": {"id": "5", "title": "W\u0000"}, "6": {"id": "6x", "title": "bad id"}})
    full = decode_page(body)
    assert full.entries and full.rejected and full.altered
    part = side_part(full)
    assert part.entries == () and part.result_ids == ()
    assert [o.id for o in part.side] == [5]
    assert [a.kind for a in part.altered] == ["workspaces"]
    assert len(part.rejected) == 1 and part.rejected[0].reason.startswith("workspaces:")


# ---------------------------------------------------------------- the paging loop guard
def _listing(ids: list[str], *, count: int, number: int | None, size: int = 2) -> Any:
    from syncd.models import Page
    return Page(count=count, page_count=99, page_number=number, page_size=size,
                result_ids=tuple(ids), entries=(), side=(), rejected=())


def test_a_server_ignoring_page_is_told_apart_from_other_paging_faults() -> None:
    """Past page 1 a repeated page, an unechoed page number or a page beyond `count` raise
    PageIgnoredError (the pull narrows instead, issue #27); page 1 wrong raises PagingError."""
    from syncd.errors import PageIgnoredError, PagingError
    from syncd.pagination import PageGuard

    g = PageGuard("window W")
    g.check(1, _listing(["1", "2"], count=10, number=1))
    with pytest.raises(PageIgnoredError, match="same 2 ids as page 1"):
        g.check(2, _listing(["1", "2"], count=10, number=2))
    with pytest.raises(PageIgnoredError, match="answered page 1 instead"):
        PageGuard("w").check(2, _listing(["3", "4"], count=10, number=1))
    with pytest.raises(PageIgnoredError, match="beyond the 1 page"):
        PageGuard("w").check(2, _listing(["3", "4"], count=2, number=2))
    for bad in (_listing(["1", "2"], count=10, number=3), _listing(["1", "2"], count=0, number=1)):
        with pytest.raises(PagingError) as caught:
            PageGuard("w").check(1, bad)
        assert not isinstance(caught.value, PageIgnoredError)


def test_a_stand_in_page_counts_as_page_1_of_the_query() -> None:
    from syncd.errors import PageIgnoredError
    from syncd.pagination import PageGuard

    g = PageGuard("second S")
    g.seen(1, ("1", "2"))  # the keyset page standing in for the second's page 1
    with pytest.raises(PageIgnoredError, match="same 2 ids as page 1"):
        g.check(2, _listing(["1", "2"], count=4, number=2))
    g2 = PageGuard("second S")
    g2.seen(1, ("1", "2"))
    g2.check(2, _listing(["3", "4"], count=4, number=2))  # a server that pages: fine


def test_paging_trust_is_learnt_once() -> None:
    from syncd.pagination import PagingTrust

    t = PagingTrust()
    assert not t.ignored
    assert t.distrust("page 2 repeats page 1") is True
    assert t.distrust("again") is False
    assert t.ignored and t.reason == "page 2 repeats page 1"
