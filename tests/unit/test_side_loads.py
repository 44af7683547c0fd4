"""`pull.SideLoads` (issue #16) against a scripted client: each object asked for once per run,
known absent only when Kantata answered for an entry that references it, and a page that is
cancelled while it waits for another window's request leaves that request alone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from syncd.models import Page
from syncd.pagination import decode_page
from syncd.pull import SideLoads, SideSeen
from tests.unit.test_pagination import entry


def envelope(*entries: dict[str, Any], **side: dict[str, dict[str, Any]]) -> Page:
    ids = [e["id"] for e in entries]
    return decode_page(orjson.dumps({
        "count": len(ids), "meta": {"count": len(ids), "page_count": 1, "page_number": 1,
                                    "page_size": 200},
        "results": [{"key": "time_entries", "id": i} for i in ids],
        "time_entries": {e["id"]: e for e in entries}, **side}))


def e(i: int, ws: int) -> dict[str, Any]:
    return entry(i, workspace_id=str(ws), user_id=None, story_id=None, role_id=None)


def ws(i: int) -> dict[str, dict[str, Any]]:
    return {str(i): {"id": str(i), "title": f"W{i}"}}


class Client:
    """Answers `only=` requests from a script: entry id -> (entry or None, side objects)."""

    def __init__(self, answers: dict[int, tuple[dict[str, Any] | None, dict[str, Any]]]) -> None:
        self.answers, self.asked = answers, []
        self.gate: asyncio.Event | None = None

    async def list_page(self, params: dict[str, str], priority: str = "pull") -> Page:
        assert "include" in params and "only" in params
        ids = [int(i) for i in params["only"].split(",")]
        self.asked.append(ids)
        if self.gate is not None:
            await self.gate.wait()
        found, side = [], {}
        for i in ids:
            ent, objs = self.answers[i]
            if ent is not None:
                found.append(ent)
            for kind, o in objs.items():
                side.setdefault(kind, {}).update(o)
        return envelope(*found, **side)


def loads_with(client: Client) -> SideLoads:
    return SideLoads(SimpleNamespace(client=client))  # type: ignore[arg-type]


async def test_each_object_is_asked_for_once_and_absent_only_when_answered() -> None:
    client = Client({1: (None, {}),  # deleted between its page and the side-load request
                     2: (e(2, 10), {"workspaces": ws(10)}),
                     3: (e(3, 11), {}),  # answered, but its workspace is not visible
                     4: (e(4, 11), {})})
    sl = loads_with(client)
    a = await sl.for_page(envelope(e(1, 10)))
    assert a.side == () and client.asked == [[1]]  # not asked twice for the same page
    b = await sl.for_page(envelope(e(2, 10)))  # the object is asked for again, and found
    assert [o.id for o in b.side] == [10] and client.asked == [[1], [2]]
    again = await sl.for_page(envelope(e(5, 10)))
    assert [o.id for o in again.side] == [10] and len(client.asked) == 2  # no request
    c = await sl.for_page(envelope(e(3, 11)))
    assert c.side == () and (("workspaces", 11) in sl.absent)
    d = await sl.for_page(envelope(e(4, 11)))
    assert d.side == () and len(client.asked) == 3 and sl.requests == 3


async def test_a_cancelled_waiter_does_not_cancel_the_request_it_waits_for() -> None:
    client = Client({1: (e(1, 10), {"workspaces": ws(10)}), 2: (e(2, 10), {})})
    client.gate = asyncio.Event()
    sl = loads_with(client)
    owner = asyncio.create_task(sl.for_page(envelope(e(1, 10))))
    await asyncio.sleep(0.01)  # the owner's request is in flight
    waiter = asyncio.create_task(sl.for_page(envelope(e(2, 10))))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    client.gate.set()
    page = await asyncio.wait_for(owner, 2.0)
    assert [o.id for o in page.side] == [10] and client.asked == [[1]]


async def test_with_the_runs_side_seen_a_page_carries_only_objects_no_page_committed() -> None:
    """`side_seen` is filled by `store_landed` once a page's transaction commits: later pages
    leave those objects out (every backfill page references ~270, nearly all committed),
    unless the page brought a newer version itself (include=)."""
    client = Client({1: (e(1, 10), {"workspaces": ws(10)}), 2: (e(2, 11), {"workspaces": ws(11)}),
                     3: (e(3, 10), {})})
    seen = SideSeen()
    sl = SideLoads(SimpleNamespace(client=client), side_seen=seen)  # type: ignore[arg-type]
    first = await sl.for_page(envelope(e(1, 10)))
    assert [o.id for o in first.side] == [10]
    again = await sl.for_page(envelope(e(3, 10)))  # not committed yet: carried again
    assert [o.id for o in again.side] == [10] and client.asked == [[1]]
    seen.commit(first.side)  # what store_landed does once the page's transaction commits
    assert seen.committed["workspaces"] == {"10"} and seen.raw[("workspaces", 10)] == first.side[0].raw
    later = await sl.for_page(envelope(e(3, 10), e(2, 11)))
    assert [o.id for o in later.side] == [11] and client.asked == [[1], [2]]
    newer = {"10": {"id": "10", "title": "W10, renamed"}}
    own = await sl.for_page(envelope(e(3, 10), workspaces=newer))
    assert [(o.id, o.label) for o in own.side] == [(10, "W10, renamed")]
    seen.commit(later.side)
    assert await sl.for_page(envelope(e(3, 10), e(2, 11))) == envelope(e(3, 10), e(2, 11))
    assert len(client.asked) == 2  # every reference committed: the page as it came


def test_side_seen_checks_a_typed_page_by_spelling_and_falls_back_to_ints() -> None:
    """A typed page's references are checked as the body spells them (`committed`, no
    int built), an unusual spelling ("0010") against the ints; an object not committed is
    missing either way."""
    from syncd.models import SideObject
    from syncd.pagination import decode_page_typed

    def typed(ws: str) -> Any:
        doc = {"count": 1, "meta": {"page_count": 1}, "results": [{"key": "time_entries",
                                                                   "id": "1"}],
               "time_entries": {"1": {"id": "1", "date_performed": "2024-01-01",
                                      "time_in_minutes": 5, "updated_at": "2024-01-01T10:00:00Z",
                                      "workspace_id": ws, "user_id": None}}}
        page = decode_page_typed(orjson.dumps(doc))
        assert page is not None and page.body is not None
        return page.listed()

    seen = SideSeen()
    assert not seen.has_all(typed("10"))
    seen.commit([SideObject(kind="workspaces", id=10, label="W", parent_id=None,
                            updated_at=None, raw="{}")])
    assert seen.committed["workspaces"] == {"10"}
    refs = typed("10")
    assert seen.has_all(refs) and refs._side_ids is None  # found by spelling: no int built
    odd = typed("0010")
    assert seen.has_all(odd) and odd.side_ids == [("workspaces", frozenset({10})),
                                                  ("users", frozenset()),
                                                  ("stories", frozenset()),
                                                  ("roles", frozenset())]
    assert not seen.has_all(typed("11"))
