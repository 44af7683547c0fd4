"""Helpers shared by the outbox tests: enqueue rows with plain SQL (as an application would),
drain until every row is settled, and read the simulator's view of syncd's creates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson

from syncd import pagination, push, store
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.conftest import TOKEN

SERVICE = "syncd"


async def mirror_from_sim(conn: asyncpg.Connection, sim: Simulator) -> None:
    """Seed the mirror with every simulator entry (what a full pull stores, without its
    requests), so updates and deletes get their base version."""
    entries = [pagination.parse_time_entry(e) for e in sim.list_entries()]
    await store.upsert_entries(conn, entries)


def live_workspace(sim: Simulator) -> int:
    """A workspace time can be added to (not archived, on the token's account)."""
    return next(w.id for w in sorted(sim.workspaces.values(), key=lambda w: w.id)
                if not w.archived and w.account_id == sim.my_account_id)


def new_entry(sim: Simulator, i: int, **over: Any) -> dict[str, Any]:
    day = date(2026, 3, 1) + timedelta(days=i % 20)
    fields: dict[str, Any] = {"workspace_id": live_workspace(sim),
                              "date_performed": day.isoformat(),
                              "time_in_minutes": 15 + i % 90, "notes": f"outbox create {i}"}
    fields.update(over)
    return fields


async def enqueue(conn: asyncpg.Connection, op: str, entry_id: int | None = None,
                  payload: dict[str, Any] | None = None) -> int:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO syncd.outbox (op, entry_id, payload) VALUES ($1, $2, $3::jsonb) RETURNING id",
        op, entry_id, orjson.dumps(payload).decode() if payload is not None else None)


async def enqueue_many(conn: asyncpg.Connection, rows: list[tuple[str, int | None,
                                                                   dict[str, Any] | None]]
                       ) -> list[int]:
    recs = await conn.fetch(
        """INSERT INTO syncd.outbox (op, entry_id, payload)
           SELECT * FROM unnest($1::text[], $2::bigint[], $3::jsonb[]) RETURNING id""",
        [r[0] for r in rows], [r[1] for r in rows],
        [orjson.dumps(r[2]).decode() if r[2] is not None else None for r in rows])
    return sorted(r["id"] for r in recs)


async def rows(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    return {r["id"]: r for r in await conn.fetch("SELECT * FROM syncd.outbox ORDER BY id")}


async def drain(deps: Deps, conn: asyncpg.Connection, *, rounds: int = 20,
                owner: str = "test") -> list[push.PushReport]:
    """Run push_once until no row is pending/in_flight, moving the clock past every back-off
    (and past leases) between rounds. Fails if rows are still open after `rounds`."""
    now = datetime.now(UTC)
    reports = []
    for _ in range(rounds):
        reports.append(await push.push_once(deps, owner=owner, now=now))
        open_rows = await conn.fetchval(
            "SELECT count(*) FROM syncd.outbox WHERE status IN ('pending', 'in_flight')")
        if not open_rows:
            return reports
        now += timedelta(hours=1)
    raise AssertionError(f"outbox not drained after {rounds} rounds")


async def syncd_refs(sim_url: str) -> dict[str, list[int]]:
    """correlation key → ids of live Kantata entries carrying syncd's external reference, read
    through the public API (`include=external_references`); call with faults cleared."""
    out: dict[str, list[int]] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        page = 1
        while True:
            params = {"external_reference_service_name": SERVICE, "include": "external_references",
                      "from_archived_workspaces": "true", "on_my_account": "false",
                      "per_page": "200", "page": str(page)}
            async with http.get(f"{sim_url}/time_entries", params=params) as resp:
                assert resp.status == 200
                body = await resp.json()
            for ref in body["external_references"].values():
                if ref["service_name"] == SERVICE:
                    out.setdefault(ref["service_model_ref"], []).append(int(ref["subject_id"]))
            if page >= body["meta"]["page_count"]:
                return out
            page += 1


def editable_ids(sim: Simulator) -> list[int]:
    """Ids of live entries Kantata lets a client edit or delete (not invoiced), ascending."""
    return sorted(int(e["id"]) for e in sim.list_entries() if not e["is_invoiced"])


def invoiced_ids(sim: Simulator) -> list[int]:
    return sorted(int(e["id"]) for e in sim.list_entries() if e["is_invoiced"])


def entries_with_note(sim: Simulator) -> dict[str, list[int]]:
    """notes → ids over every live entry (`GET /_sim/entries`)."""
    out: dict[str, list[int]] = {}
    for e in sim.list_entries():
        out.setdefault(e.get("notes") or "", []).append(int(e["id"]))
    return out


def requests_of(sim: Simulator, method: str, *, faults: bool = True) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["method"] == method and (faults or not r["fault"])]
