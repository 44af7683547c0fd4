"""The pure push decisions, over plain data: batches, bodies, error mapping, bisection cost,
the conflict check and the per-row decision table."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from syncd import batching
from syncd.batching import Bisection, Outcome, OutboxRow

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def row(i: int = 1, op: str = "create", *, attempts: int = 1, entry_id: int | None = None,
        payload: dict[str, Any] | None = None, base: datetime | None = None,
        sent: datetime | None = None) -> OutboxRow:
    return OutboxRow(id=i, op=op, entry_id=entry_id,  # type: ignore[arg-type]
                     payload=payload if payload is not None else (
                         None if op == "delete" else {"notes": "x"}),
                     correlation_key=f"key-{i}", base_updated_at=base, attempts=attempts,
                     sent_at=sent)


# ------------------------------------------------------------------ chunks and bodies
@pytest.mark.parametrize(("n", "size", "sizes"), [
    (0, 100, []), (1, 100, [1]), (100, 100, [100]), (101, 100, [100, 1]),
    (250, 100, [100, 100, 50]), (7, 3, [3, 3, 1]),
])
def test_chunk(n: int, size: int, sizes: list[int]) -> None:
    parts = batching.chunk(list(range(n)), size)
    assert [len(p) for p in parts] == sizes
    assert [x for p in parts for x in p] == list(range(n))


def test_chunk_rejects_zero() -> None:
    with pytest.raises(ValueError):
        batching.chunk([1], 0)


def test_by_op_groups_in_id_order() -> None:
    rows = [row(3, "delete", entry_id=1), row(1), row(2, "update", entry_id=5), row(0)]
    groups = batching.by_op(rows)
    assert [r.id for r in groups["create"]] == [0, 1]
    assert [r.id for r in groups["update"]] == [2]
    assert [r.id for r in groups["delete"]] == [3]


def test_create_items_carry_the_external_reference() -> None:
    items = batching.create_items([row(1, payload={"workspace_id": 5, "time_in_minutes": 3})],
                                  "svc")
    assert items == [{"workspace_id": 5, "time_in_minutes": 3, "external_reference": {
        "service_name": "svc", "service_model": "syncd_outbox", "service_model_ref": "key-1",
        "status": "successful"}}]


# ------------------------------------------------------------------ answers
def envelope(entries: list[dict[str, Any]], refs: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "count": len(entries), "results": [{"key": "time_entries", "id": e["id"]} for e in entries],
        "time_entries": {e["id"]: e for e in entries}}
    if refs is not None:
        body["external_references"] = refs
    return body


def ref(rid: str, subject: str, key: str, service: str = "svc") -> dict[str, Any]:
    return {"id": rid, "subject_id": subject, "service_name": service,
            "service_model": "syncd_outbox", "service_model_ref": key}


def matched(body: Any, rows: list[OutboxRow]) -> dict[int, tuple[int, dict[str, Any]]]:
    return batching.match_created(body, rows, "svc").matched


def test_created_entries_map_by_reference_not_position() -> None:
    body = envelope([{"id": "11", "external_reference_ids": ["1"]}, {"id": "10"}],
                    {"1": ref("1", "11", "key-1"), "2": ref("2", "10", "key-2"),
                     "3": ref("3", "10", "key-1", service="other")})
    out = matched(body, [row(1), row(2)])
    assert out == {1: (11, {"id": "11"}), 2: (10, {"id": "10"})}  # include-only key stripped


def _item(eid: str, notes: str, *, with_id: bool = True) -> dict[str, Any]:
    e = {"notes": notes, "workspace_id": "5", "time_in_minutes": 30}
    return {"id": eid, **e} if with_id else e


def _body(items: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """An answer keyed by id, whose objects may lack `id` (the contract declares none)."""
    return {"count": len(items), "results": [{"key": "time_entries", "id": k} for k, _ in items],
            "time_entries": dict(items)}


def test_created_entries_matched_by_content_in_any_order_without_id_fields() -> None:
    rows = [row(1, payload={"notes": "a", "workspace_id": 5}),
            row(2, payload={"notes": "b", "workspace_id": 5})]
    # the endpoint's default order (date_performed:desc), not the order sent; no `id` fields
    body = _body([("20", _item("20", "b", with_id=False)), ("10", _item("10", "a", with_id=False))])
    out = matched(body, rows)
    assert {k: v[0] for k, v in out.items()} == {1: 10, 2: 20}
    assert "id" not in out[1][1]  # kept as Kantata sent it


def test_created_entries_never_matched_by_position() -> None:
    """Two rows with equal payloads and no references: the answer cannot tell which entry is
    whose, so both outcomes are unknown (looked up by external reference), never guessed."""
    rows = [row(1, payload={"notes": "same"}), row(2, payload={"notes": "same"})]
    body = _body([("10", _item("10", "same")), ("11", _item("11", "same"))])
    m = batching.match_created(body, rows, "svc")
    assert m.matched == {} and set(m.unknown) == {1, 2}
    assert "matches no single listed entry" in m.unknown[1]


def test_created_entry_whose_id_field_disagrees_with_its_key_is_not_used() -> None:
    rows = [row(1, payload={"notes": "a"})]
    body = _body([("10", _item("99", "a"))])
    m = batching.match_created(body, rows, "svc")
    assert m.matched == {} and "listed no entry" in m.unknown[1]


@pytest.mark.parametrize("body", [
    None, {}, {"errors": []}, envelope([{"id": "11"}]), [1, 2],
    envelope([{"id": "11"}, {"id": "12"}], {"1": ref("1", "11", "key-1")}),
    {"results": [{"key": "stories", "id": "11"}], "time_entries": {"11": {"notes": "x"}}},
])
def test_created_entries_unknown_when_rows_are_not_accounted_for(body: Any) -> None:
    m = batching.match_created(body, [row(1), row(2)], "svc")
    assert 2 in m.unknown and set(m.matched) | set(m.unknown) == {1, 2}


def test_entry_ids_by_ref_sorts_and_ignores_other_services_and_junk() -> None:
    body = {"external_references": {"1": ref("1", "30", "k"), "2": ref("2", "20", "k"),
                                    "3": ref("3", "9", "k", service="x"), "4": "junk",
                                    "5": {"service_name": "svc", "subject_id": "abc"}}}
    assert batching.entry_ids_by_ref(body, "svc") == {"k": [20, 30]}
    assert batching.entry_ids_by_ref({"external_references": []}, "svc") == {}


# ------------------------------------------------------------------ error mapping
def test_map_create_errors_by_index() -> None:
    body = {"errors": [
        {"type": "validation", "field": "time_in_minutes", "message": "too long", "index": 1},
        {"type": "validation", "field": "notes", "message": "blank", "index": "1"},
        {"type": "validation", "message": "bad date", "index": 3},
        {"type": "validation", "message": "out of range", "index": 9},
        {"type": "validation", "message": "bool", "index": True},
        {"type": "system", "message": "whole request"}]}
    m = batching.map_create_errors(body, 4)
    assert m.mapped == {1: "too long; blank", 3: "bad date"}
    assert m.unmapped == ("out of range", "bool", "whole request")


def test_map_delete_errors_by_id_field_or_message() -> None:
    body = {"errors": [
        {"type": "validation", "field": "ids", "id": "5", "message": "invoiced"},
        {"type": "validation", "message": "Time entry 7 could not be deleted: locked"},
        {"type": "validation", "message": "Time entry 99 is not in this request"},
        {"type": "validation", "message": "something else"}]}
    m = batching.map_delete_errors(body, [5, 6, 7])
    assert m.mapped == {5: "invoiced", 7: "Time entry 7 could not be deleted: locked"}
    assert m.unmapped == ("Time entry 99 is not in this request", "something else")


@pytest.mark.parametrize("body", [None, "text", {"errors": "x"}, {"errors": [1, None]}])
def test_error_mapping_tolerates_junk(body: Any) -> None:
    assert batching.map_create_errors(body, 3).mapped == {}
    assert batching.map_delete_errors(body, [1]).mapped == {}


# ------------------------------------------------------------------ bisection
def run_bisection(n: int, bad: set[int], *, mapped: bool, size: int = 100
                  ) -> tuple[Bisection[int], int]:
    """Simulate an all-or-nothing server: a request fails iff it holds a bad item; with
    `mapped` the failure names the bad items, else it names none."""
    bis: Bisection[int] = Bisection(list(range(n)), size)
    sent = 0
    while (req := bis.next_request()) is not None:
        sent += 1
        assert 1 <= len(req) <= size
        culprits = [i for i in req if i in bad]
        if not culprits:
            bis.accepted()
        elif mapped:
            bis.rejected({i: f"bad {i}" for i in culprits})
        else:  # one error per culprit, none naming it
            bis.rejected(None, ["something is wrong"], errors=len(culprits))
    return bis, sent


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3, 99, 100, 250])
@pytest.mark.parametrize("k", [0, 1, 2, 5])
def test_bisection_decides_every_item_exactly(n: int, k: int, mapped: bool) -> None:
    rnd = random.Random(n * 31 + k)
    bad = set(rnd.sample(range(n), min(k, n)))
    bis, sent = run_bisection(n, bad, mapped=mapped)
    assert sorted(bis.accepted_items) == sorted(set(range(n)) - bad)
    assert set(bis.rejected_items) == bad
    assert len(bis.accepted_items) == len(set(bis.accepted_items))
    base = math.ceil(n / 100)
    if mapped:
        assert sent - base <= len(bad)  # one refusal per batch that holds a bad item
        assert all(bis.rejected_items[i] == f"bad {i}" for i in bad)
    else:
        assert all(m == "something is wrong" for m in bis.rejected_items.values())
        assert sent - base <= 7 * len(bad) + 1


# worst case over 300 random placements of k culprits in one batch of 100 (measured)
@pytest.mark.parametrize(("k", "worst_extra"), [(1, 8), (2, 15), (3, 21), (5, 32), (10, 55)])
def test_bisection_cost_when_errors_name_no_item(k: int, worst_extra: int) -> None:
    worst = 0
    for seed in range(300):
        bad = set(random.Random(seed).sample(range(100), k))
        _, sent = run_bisection(100, bad, mapped=False)
        worst = max(worst, sent - 1)
    # log2(100) rounds up to 7 probes per culprit, plus one pooled resend
    assert worst == worst_extra
    assert worst <= 7 * k + 1


def test_bisection_does_not_trust_error_counts_for_verdicts() -> None:
    """A refusal whose error count lies (here: always 1) still ends with exact verdicts."""
    for seed in range(50):
        bad = set(random.Random(seed).sample(range(60), 4))
        bis: Bisection[int] = Bisection(list(range(60)))
        while (req := bis.next_request()) is not None:
            if any(i in bad for i in req):
                bis.rejected(None, ["no"], errors=1)
            else:
                bis.accepted()
        assert set(bis.rejected_items) == bad
        assert sorted(bis.accepted_items) == sorted(set(range(60)) - bad)


def test_bisection_settled_items_leave_the_plan() -> None:
    bis: Bisection[int] = Bisection([1, 2, 3])
    assert bis.next_request() == [1, 2, 3]
    bis.rejected({2: "refused"}, [], settled=[3])
    assert bis.next_request() == [1]
    bis.accepted()
    assert bis.next_request() is None
    assert bis.accepted_items == [1] and bis.rejected_items == {2: "refused"}


def test_bisection_abandon_returns_every_undecided_item() -> None:
    bis: Bisection[int] = Bisection(list(range(10)), 4)
    assert bis.next_request() == [0, 1, 2, 3]
    bis.rejected(None, ["x"])          # suspect [0..3]
    assert bis.next_request() == [0, 1]
    assert sorted(bis.abandon()) == list(range(10))
    assert bis.next_request() is None


def test_bisection_requires_outcome_before_next_request() -> None:
    bis: Bisection[int] = Bisection([1])
    bis.next_request()
    with pytest.raises(RuntimeError):
        bis.next_request()


# ------------------------------------------------------------------ conflict check
REMOTE = {"id": "5", "notes": "old", "time_in_minutes": 30, "story_id": "7", "location": None,
          "updated_at": "2026-03-01T04:00:00-08:00"}


@pytest.mark.parametrize(("payload", "base", "remote_at", "policy", "action", "local_wins"), [
    # same version: push
    ({"notes": "new"}, T0, T0, "park", "push", False),
    # no base recorded (entry was not mirrored): push
    ({"notes": "new"}, None, T0, "park", "push", False),
    # remote changed, different values: conflict / local wins
    ({"notes": "new"}, T0, T0 + timedelta(seconds=1), "park", "conflict", False),
    ({"notes": "new"}, T0, T0 + timedelta(seconds=1), "local_wins", "push", True),
    # remote already has the values (our own PUT whose answer was lost): done, never conflict
    ({"notes": "old"}, T0, T0 + timedelta(seconds=5), "park", "done", False),
    ({"notes": "old", "time_in_minutes": "30", "story_id": 7}, T0, T0 + timedelta(hours=1),
     "park", "done", False),
    ({"location": ""}, T0, T0 + timedelta(hours=1), "park", "done", False),
    # same values and same version: nothing to send
    ({"notes": "old"}, T0, T0, "park", "done", False),
    # one field applied, one not, remote moved: conflict
    ({"notes": "old", "time_in_minutes": 31}, T0, T0 + timedelta(seconds=1), "park",
     "conflict", False),
    # same instant in another offset is the same version
    ({"notes": "new"}, T0, T0.astimezone(datetime.fromisoformat(
        "2026-03-01T04:00:00-08:00").tzinfo), "park", "push", False),
])
def test_check_update(payload: dict[str, Any], base: datetime | None, remote_at: datetime,
                      policy: Any, action: str, local_wins: bool) -> None:
    chk = batching.check_update(row(1, "update", entry_id=5, payload=payload, base=base),
                                REMOTE, remote_at, policy)
    assert (chk.action, chk.local_wins) == (action, local_wins)
    if action == "conflict" or local_wins:
        assert "time_in_minutes" in chk.reason or "notes" in chk.reason
        assert base is not None and base.isoformat() in chk.reason


def test_check_update_missing_entry() -> None:
    chk = batching.check_update(row(1, "update", entry_id=5), None, None, "local_wins")
    assert chk.action == "missing" and "5 not found" in chk.reason


# ------------------------------------------------------------------ the decision table
MAX = 3
KINDS = ("ok", "rejected", "conflict", "transient", "not_sent")
EXPECTED = {
    # kind: (status below max, status at/over max)
    "ok": ("done", "done"),
    "rejected": ("failed", "failed"),
    "conflict": ("conflict", "conflict"),
    "transient": ("pending", "failed"),
    "not_sent": ("pending", "pending"),
}


@pytest.mark.parametrize(("kind", "op", "attempts"), list(itertools.product(
    KINDS, ("create", "update", "delete"), (1, MAX - 1, MAX, MAX + 1))))
def test_decision_table(kind: str, op: str, attempts: int) -> None:
    r = row(1, op, attempts=attempts, entry_id=None if op == "create" else 9)
    out = Outcome(kind=kind,  # type: ignore[arg-type]
                  message="why", result="created" if kind == "ok" else None,
                  entry_id=9 if kind == "ok" else None)
    d = batching.decide(r, out, max_attempts=MAX, backoff_base=1.0, backoff_cap=60.0)
    status = EXPECTED[kind][0 if attempts < MAX else 1]
    assert d.status == status
    assert d.row_id == 1
    assert d.refund is (kind == "not_sent")
    assert d.keep_error is False  # every outcome here says why
    if kind == "not_sent":  # refused as a whole (401): pending, the reason kept
        assert d.last_error == "why" and d.unsent
    if status == "done":
        assert d.last_error is None and d.result == "created" and d.entry_id == 9
    if status in ("failed", "conflict"):
        assert d.last_error is not None and "why" in d.last_error
    if kind == "transient" and status == "failed":
        assert d.last_error.startswith(f"dead letter: gave up after {attempts} attempts")
    if kind == "transient" and status == "pending":
        assert d.retry_in == min(60.0, 2.0 ** (attempts - 1)) and d.last_error == "why"
    if kind != "transient":
        assert d.retry_in == 0.0


@pytest.mark.parametrize(("attempts", "retry_after", "min_delay", "expected"), [
    (1, None, 0.0, 1.0), (2, None, 0.0, 2.0), (4, None, 0.0, 8.0), (30, None, 0.0, 60.0),
    (1, 5.0, 0.0, 5.0), (1, 500.0, 0.0, 60.0),       # Retry-After honoured, capped
    (1, None, 180.0, 180.0), (9, None, 180.0, 180.0),  # settle delay is not capped
])
def test_transient_delay(attempts: int, retry_after: float | None, min_delay: float,
                         expected: float) -> None:
    d = batching.decide(row(attempts=attempts),
                        Outcome(kind="transient", retry_after=retry_after, min_delay=min_delay),
                        max_attempts=100, backoff_base=1.0, backoff_cap=60.0)
    assert d.retry_in == expected


def test_unknown_outcome_kind_is_an_error() -> None:
    with pytest.raises(AssertionError):
        batching.decide(row(), Outcome(kind="bogus"),  # type: ignore[arg-type]
                        max_attempts=1, backoff_base=1, backoff_cap=1)


def test_tally() -> None:
    t = batching.Tally()
    for op, st in [("create", "done"), ("create", "pending"), ("update", "done")]:
        t.add(op, st)
    assert t.total("done") == 2 and t.total("retry") == 1


def test_no_create_answer_makes_matching_raise() -> None:
    """Issue #22: a push never dies on one odd answer. Random shapes the contract allows and
    some it does not (no id fields, ids of another key, nulls, lists, junk references) are
    matched or reported unknown, never a KeyError."""
    rnd = random.Random(22)
    junk: list[Any] = [None, 1, "x", [], {}, {"id": None}, {"id": "abc"}, {"id": "7"}]
    rows = [row(i, payload={"notes": f"n{i % 3}", "workspace_id": 5}) for i in range(1, 6)]
    for _ in range(2000):
        keyed: dict[Any, Any] = {}
        results: list[Any] = []
        for _ in range(rnd.randint(0, 6)):
            k = rnd.choice(["10", "11", "12", "x", 3, ""])
            keyed[k] = rnd.choice([*junk, {"notes": f"n{rnd.randint(0, 3)}",
                                           "workspace_id": rnd.choice(["5", 5, None])}])
            results.append(rnd.choice([{"key": "time_entries", "id": k}, {"id": k},
                                       {"key": "stories", "id": k}, k, None]))
        refs = rnd.choice([None, {}, {"1": ref("1", "10", "key-1")}, {"1": None}, []])
        body = rnd.choice([{"results": results, "time_entries": keyed,
                            "external_references": refs}, results, None])
        m = batching.match_created(body, rows, "svc")
        assert set(m.matched) | set(m.unknown) == {r.id for r in rows}
        assert len({eid for eid, _ in m.matched.values()}) == len(m.matched)  # one entry each


def test_not_sent_without_a_reason_keeps_the_rows_last_error() -> None:
    """A shutdown before sending says nothing new: the row's last error stays."""
    d = batching.decide(row(1, "create", attempts=2), Outcome(kind="not_sent"),
                        max_attempts=MAX, backoff_base=1.0, backoff_cap=60.0)
    assert (d.status, d.refund, d.keep_error, d.last_error, d.unsent) == \
        ("pending", True, True, None, True)


def test_a_push_summary_says_why_a_due_row_was_not_pushed() -> None:
    """The second trial: `a pending row is due now` after a push that claimed nothing, the
    row waiting behind an earlier row of its entry that the daemon held."""
    from datetime import UTC, datetime

    from syncd.push import PushReport

    now = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    held = PushReport(owner="o", counts_after={"pending": 2, "in_flight": 12},
                      next_due_seconds=0.0, next_due_at=now)
    assert held.summary().endswith("; a pending row is due now (held back by an earlier open "
                                   "row of its entry, or claimed by another process)")
    alone = PushReport(owner="o", counts_after={"pending": 2}, next_due_seconds=0.0,
                       next_due_at=now)
    assert alone.summary().endswith("; a pending row is due now")
