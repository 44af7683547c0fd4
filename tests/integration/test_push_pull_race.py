"""A pull and a push at the same moment (a new user's trial): a page the pull read before the
push's DELETE and wrote after it brought the deleted entry back (`deleted … push`, then
`restored … pull` in the same second; BI saw a live entry that Kantata no longer had, until a
reconciliation). A listing revives a deleted row only when it was asked for after the
deletion was recorded (`store.LISTED_SINCE`, the run's start on the database clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from syncd import pull, push, store
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.outbox_helpers import editable_ids, enqueue

pytestmark = pytest.mark.integration


async def test_a_page_read_before_a_push_delete_does_not_bring_the_entry_back(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)  # backfill
    eid = editable_ids(sim)[-1]
    sim.edit_entry(eid, {"notes": "edited in Kantata"})
    await pull.sync_once(deps)  # the new version is mirrored; the next pull re-reads it
    row = await enqueue(conn, "delete", eid)
    listed = deps.client.list_page
    pushed: list[Any] = []

    async def list_then_push(*args: Any, **kw: Any) -> Any:
        page = await listed(*args, **kw)
        if str(eid) in page.result_ids and not pushed:  # read, not yet written: push now
            pushed.append(await push.push_once(deps, owner="racing"))
        return page

    deps.client.list_page = list_then_push  # type: ignore[method-assign]
    try:
        await pull.sync_once(deps)  # the incremental pass lists the entry (the lookback)
    finally:
        deps.client.list_page = listed  # type: ignore[method-assign]
    assert pushed and pushed[0].done == 1
    assert await conn.fetchval("SELECT status FROM syncd.outbox WHERE id = $1", row) == "done"
    assert sim.get_entry(eid) is None  # gone from Kantata
    got = await conn.fetchrow("SELECT deleted_at, learned_via FROM kantata.time_entries "
                              "WHERE id = $1", eid)
    assert got["deleted_at"] is not None and got["learned_via"] == "push", dict(got)
    changes = [r["change"] for r in await conn.fetch(
        "SELECT change FROM kantata.time_entry_changes WHERE entry_id = $1 "
        "ORDER BY changed_at, change", eid)]
    assert "restored" not in changes, changes


@pytest.mark.parametrize("careful", [False, True], ids=["page_statement", "careful_path"])
async def test_only_a_listing_asked_for_after_the_deletion_brings_a_row_back(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection, careful: bool) -> None:
    """Both write paths, the same rule: a listing asked for before the deletion (its run
    started earlier) leaves the row deleted, even with a newer version (its columns are
    updated); one asked for after brings it back."""
    await pull.sync_once(deps)
    eid = editable_ids(sim)[0]
    before = await conn.fetchval("SELECT now() - interval '1 second'")
    await store.mark_deleted(conn, [eid])
    sim.edit_entry(eid, {"notes": "listed again"})
    page = await deps.client.list_page({"only": str(eid)})
    assert page.result_ids == (str(eid),)

    async def write(since: datetime) -> None:
        async with conn.transaction():
            if careful:
                await store.set_write_context(conn, "pull", history=True, listed_since=since)
                entries = page.entries or pull.careful_page(page, referenced_side=False).entries
                await store.upsert_entries(conn, entries)
            else:  # the page's body as Kantata sent it
                body = orjson.dumps({"time_entries": {str(eid): sim.get_entry(eid)}})
                await store.store_page_body(conn, body, learned_via="pull",
                                            history=True, listed_since=since)

    await write(before)
    got = await conn.fetchrow("SELECT deleted_at, notes FROM kantata.time_entries "
                              "WHERE id = $1", eid)
    assert got["deleted_at"] is not None and got["notes"] == "listed again"
    after = datetime.now(UTC) + timedelta(seconds=1)
    await write(after)
    assert await conn.fetchval("SELECT deleted_at FROM kantata.time_entries WHERE id = $1",
                               eid) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.set_write_context(conn, "pull", history=True,
                                      listed_since=datetime(2026, 1, 1))  # noqa: DTZ001
