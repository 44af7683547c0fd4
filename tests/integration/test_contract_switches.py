"""Issue #22: syncd holds under every answer the published contract allows, not only under the
simulator's defaults. Each case turns on one of the simulator's contract switches
(`syncd/simulator/README.md`, "Contract switches") and runs the whole path: backfill, an
incremental pass after remote edits, three creates, an update and a delete through the outbox,
another pass, reconciliation after a remote deletion, and `verify`. The mirror must then equal Kantata column by column (foreign keys
included), every create must hold its own entry id, and nothing may be created twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from syncd import pull, reconcile_job
from syncd.app import open_deps
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings
from tests.integration.outbox_helpers import (
    drain,
    editable_ids,
    enqueue,
    entries_with_note,
    new_entry,
    requests_of,
)
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration

#: switch settings -> keys of `raw` that may differ from `GET /_sim/entries` under them
#: (`raw` keeps what Kantata's API sent, which the switch changes on purpose)
CASES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "defaults": ({}, set()),
    "objects_without_id": ({"omit_object_ids": True}, {"id"}),
    "foreign_keys_only_with_include": ({"foreign_keys_only_with_include": True}, set()),
    "creates_in_default_order_without_references": (
        {"bulk_create_order": "default", "external_references_only_if_included": True,
         "write_answers_ignore_include": True}, set()),
    "write_answers_without_foreign_keys": (
        {"foreign_keys_only_with_include": True, "write_answers_ignore_include": True}, set()),
    "inclusive_updated_after": ({"updated_after_inclusive": True}, set()),
    "negative_count": ({"count_mode": "negative"}, set()),
    "inconsistent_count": ({"count_mode": "inconsistent"}, set()),
    "lower_case_t_and_z": ({"lowercase_timestamps": True}, {"created_at", "updated_at"}),
    # with pages of 10 (CASE_SETTINGS), every window needs several (issue #27)
    "page_ignored": ({"ignore_page": True}, set()),
}


#: settings of a case other than the defaults
CASE_SETTINGS: dict[str, dict[str, Any]] = {"page_ignored": {"per_page": 10}}


@pytest.fixture
async def deps(request: pytest.FixtureRequest, db_dsn: str, sim_url: str
               ) -> AsyncIterator[Deps]:
    """The integration `deps`, with the settings of the case (`CASE_SETTINGS`)."""
    spec = getattr(request.node, "callspec", None)
    over = CASE_SETTINGS.get(spec.params.get("case", "") if spec else "", {})
    async with open_deps(make_settings(db_dsn, sim_url, **over)) as d:
        yield d


def _significant(diffs: list[str], raw_keys: set[str]) -> list[str]:
    """`mirror_diff` lines, less `raw` differences confined to the keys the switch changes."""
    out = []
    for d in diffs:
        if ".raw differs in " in d:
            keys = set(eval(d.split(".raw differs in ", 1)[1]))  # noqa: S307 - our own repr
            if keys <= raw_keys:
                continue
        out.append(d)
    return out


async def _create_rows(conn: asyncpg.Connection, sim: Simulator) -> dict[int, str]:
    """Three creates with distinct notes and dates (so `date_performed:desc` reorders them)."""
    notes: dict[int, str] = {}
    for i, day in enumerate(("2026-03-02", "2026-03-09", "2026-03-05")):
        note = f"contract switch create {i}"
        rid = await enqueue(conn, "create", payload=new_entry(
            sim, i, notes=note, date_performed=day))
        notes[rid] = note
    return notes


@pytest.mark.parametrize("case", list(CASES))
async def test_whole_path_is_exact_under_each_contract_switch(
        case: str, deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    switches, raw_keys = CASES[case]
    sim.set_contract(switches)
    with capture_logs() as logs:
        first = await pull.sync_once(deps)
        assert not first.errors, first.errors
        editable = editable_ids(sim)
        edited, updated, deleted = editable[3], editable[5], editable[8]
        sim.edit_entry(edited, {"notes": "edited in Kantata"})
        second = await pull.sync_once(deps)
        assert not second.errors, second.errors

        creates = await _create_rows(conn, sim)
        base = await conn.fetchval(
            "SELECT updated_at FROM kantata.time_entries WHERE id = $1", updated)
        await conn.execute(
            "INSERT INTO syncd.outbox (op, entry_id, payload, base_updated_at)"
            " VALUES ('update', $1, $2::jsonb, $3)", updated,
            orjson.dumps({"notes": "edited through the outbox"}).decode(), base)
        await enqueue(conn, "delete", deleted)
        await drain(deps, conn)
        third = await pull.sync_once(deps)
        assert not third.errors, third.errors
        gone = editable[11]
        sim.delete_entry(gone)  # a deletion only reconciliation can see
        today = datetime.now(UTC).date()
        reports = await reconcile_job.reconcile_range(deps, date(2020, 1, 1), today)
        assert not [r.error for r in reports if r.error]
        verdict = await reconcile_job.verify_range(deps, date(2020, 1, 1), today)

    assert not [e for e in logs if e.get("exc_info")], "no traceback"
    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM syncd.outbox")}
    assert {r["status"] for r in rows.values()} == {"done"}, \
        {i: (r["status"], r["last_error"]) for i, r in rows.items()}
    by_note = entries_with_note(sim)
    for rid, note in creates.items():
        assert len(by_note[note]) == 1, f"{note!r} created {len(by_note[note])} times"
        assert rows[rid]["entry_id"] == by_note[note][0], "create recorded with another entry"
    assert sim.get_entry(updated)["notes"] == "edited through the outbox"
    assert deleted not in {int(e["id"]) for e in sim.list_entries()}
    assert len(requests_of(sim, "POST")) == 1  # one bulk create, never sent again

    assert await conn.fetchval(
        "SELECT deleted_at IS NOT NULL FROM kantata.time_entries WHERE id = $1", gone)
    assert _significant(await mirror_diff(conn, sim.list_entries()), raw_keys) == []
    assert verdict.identical, (verdict.diffs, verdict.errors)
    # every foreign key mirrored, none blanked by a page that did not carry it
    assert await conn.fetchval(
        "SELECT count(*) FROM kantata.time_entries WHERE workspace_id IS NULL") == 0
    assert await conn.fetchval("SELECT count(*) FROM kantata.workspaces") > 0
    assert await conn.fetchval("SELECT count(*) FROM kantata.users") > 0


async def test_a_server_that_ignores_page_is_found_out_within_two_requests(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Every page number answers page 1 with a huge `meta.page_count`: the loop guard ends a
    window's paging at its second page, and the window is then read by date ranges that fit
    one page (issue #27, tests/integration/test_page_ignored.py): every window done, the
    mirror exact, no page past 2 ever asked for."""
    sim.set_contract({"ignore_page": True})
    async with open_deps(make_settings(db_dsn, sim_url, per_page=10)) as deps:  # many pages
        stats = await pull.sync_once(deps)
    assert not stats.errors, stats.errors
    assert "is `page` ignored?" in stats.details["page_ignored"]
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status <> 'done'") == 0
    assert await mirror_diff(conn, sim.list_entries()) == []
    pages = [int(r["query"].get("page", "1")) for r in requests_of(sim, "GET")
             if "date_performed_between" in r["query"] and "only" not in r["query"]]
    assert max(pages) <= 2


async def test_verify_names_a_blanked_foreign_key(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Count, minutes and updated_at agree, but a foreign key differs: verify compares every
    typed column and names it (issue #22 item 3: it used to say identical)."""
    await pull.sync_once(deps)
    eid = editable_ids(sim)[2]
    await conn.execute("UPDATE kantata.time_entries SET workspace_id = NULL WHERE id = $1", eid)
    res = await reconcile_job.verify_range(deps, date(2020, 1, 1), datetime.now(UTC).date())
    assert [(s.id, s.fields) for d in res.diffs for s in d.stale] == [(eid, ("workspace_id",))]
