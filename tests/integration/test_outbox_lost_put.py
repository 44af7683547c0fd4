"""Issue #23 item 1: a PUT whose answer is lost after Kantata applied it is never sent again
blind. aiohttp resends "idempotent" methods on its own when a reused connection drops
(aio-libs/aiohttp#10790); syncd turns that off, and the next attempt reads the entry first,
under the same base-version rule as a first send."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from syncd import push
from syncd.app import open_deps
from syncd.runs import Deps
from syncd.simulator import Simulator
from syncd.simulator.faults import Draw
from tests.integration.conftest import make_settings
from tests.integration.outbox_helpers import (
    drain,
    editable_ids,
    enqueue,
    entries_with_note,
    new_entry,
    mirror_from_sim,
    requests_of,
    rows,
)

pytestmark = pytest.mark.integration


def lose_the_answer_of_the_first_put(sim: Simulator, then: Callable[[], object]) -> None:
    """The first PUT is applied and its answer dropped (a lost response); `then` runs right
    after, as a colleague editing in Kantata before any retry could."""
    injector = sim.fault_injector
    original = injector.draw
    state = {"lost": False}

    def draw(*args: object, **kw: object) -> Draw:
        d = original(*args, **kw)  # type: ignore[arg-type]
        current = sim.requests[-1]  # recorded before its fault is drawn
        if not state["lost"] and current["method"] == "PUT":
            state["lost"] = True
            return Draw(None, lost=True)
        return d

    injector.draw = draw  # type: ignore[method-assign]
    original_update = sim.api_update

    def api_update(*args: object, **kw: object) -> bytes:
        out = original_update(*args, **kw)  # type: ignore[arg-type]
        if state["lost"] and not state.get("edited"):
            state["edited"] = True
            then()
        return out

    sim.api_update = api_update  # type: ignore[method-assign]


async def _queue_update(conn: asyncpg.Connection, eid: int, notes: str) -> int:
    base = await conn.fetchval("SELECT updated_at FROM kantata.time_entries WHERE id = $1", eid)
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO syncd.outbox (op, entry_id, payload, base_updated_at)"
        " VALUES ('update', $1, $2::jsonb, $3) RETURNING id",
        eid, orjson.dumps({"notes": notes}).decode(), base)


@pytest.mark.parametrize(("colleague", "outcome", "kept"), [
    # a colleague edits between the lost answer and any retry: their edit survives
    ("a colleague's edit", ("conflict", None), "a colleague's edit"),
    # nobody does: our edit is there, recognised, and never sent twice
    (None, ("done", "already_applied"), "ours"),
])
async def test_a_lost_put_is_read_back_never_resent_blind(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection, colleague: str | None,
        outcome: tuple[str, str | None], kept: str) -> None:
    await mirror_from_sim(conn, sim)
    eid = editable_ids(sim)[4]
    rid = await _queue_update(conn, eid, "ours")
    sim.clear_requests()
    lose_the_answer_of_the_first_put(sim, lambda: colleague and sim.edit_entry(
        eid, {"notes": colleague}))
    await drain(deps, conn)
    row = (await rows(conn))[rid]
    assert (row["status"], row["result"]) == outcome, row["last_error"]
    assert sim.get_entry(eid)["notes"] == kept
    assert [r["fault"] for r in requests_of(sim, "PUT")] == ["lost_response"]  # sent once


async def test_twenty_429s_on_a_bulk_create_use_no_attempt_and_create_once(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Issue #23 item 2: a 429 created nothing and asks only for time; even with
    SYNCD_OUTBOX_MAX_ATTEMPTS=1 it never dead-letters a row."""
    ids = [await enqueue(conn, "create", payload=new_entry(sim, i, notes=f"throttled {i}"))
           for i in range(3)]
    sim.set_faults({"error_rate": 1.0, "statuses": [429]})
    now = datetime.now(UTC)
    async with open_deps(make_settings(db_dsn, sim_url, outbox_max_attempts=1)) as deps:
        for _ in range(20):
            await push.push_once(deps, now=now)
            got = await rows(conn)
            assert {(got[i]["status"], got[i]["attempts"]) for i in ids} == {("pending", 0)}
            now += timedelta(hours=1)
        assert len(requests_of(sim, "POST")) == 20
        assert "429" in (got[ids[0]]["last_error"] or "")
        sim.clear_faults()
        await drain(deps, conn)
    got = await rows(conn)
    assert {got[i]["status"] for i in ids} == {"done"}
    notes = entries_with_note(sim)
    assert [len(notes[f"throttled {i}"]) for i in range(3)] == [1, 1, 1]
