"""The test oracle: compare `kantata.time_entries` with the simulator field by field."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg
import orjson

TYPED = ("workspace_id", "user_id", "story_id", "role_id")
PLAIN = ("time_in_minutes", "billable", "notes", "rate_in_cents", "cost_rate_in_cents",
         "currency", "currency_symbol", "currency_base_unit", "approved", "is_invoiced",
         "taxable", "location")


def _expected(e: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: (int(e[k]) if e.get(k) is not None else None) for k in TYPED}
    out.update({k: e.get(k) for k in PLAIN})
    out["date_performed"] = date.fromisoformat(e["date_performed"])
    out["created_at"] = datetime.fromisoformat(e["created_at"]) if e.get("created_at") else None
    out["updated_at"] = datetime.fromisoformat(e["updated_at"])
    return out


async def mirror_diff(conn: asyncpg.Connection, remote: list[dict[str, Any]]) -> list[str]:
    """Every difference between the live mirror rows and `remote` (GET /_sim/entries), as text.
    Empty list = exact mirror (typed columns and `raw`)."""
    rows = {r["id"]: r for r in await conn.fetch(
        "SELECT * FROM kantata.time_entries WHERE deleted_at IS NULL")}
    diffs: list[str] = []
    seen = set()
    for e in remote:
        eid = int(e["id"])
        seen.add(eid)
        row = rows.get(eid)
        if row is None:
            diffs.append(f"{eid}: missing from mirror")
            continue
        for col, want in _expected(e).items():
            if row[col] != want:
                diffs.append(f"{eid}.{col}: mirror {row[col]!r} != kantata {want!r}")
        raw = orjson.loads(row["raw"])
        if raw != e:
            keys = sorted(k for k in set(raw) | set(e) if raw.get(k) != e.get(k))
            diffs.append(f"{eid}.raw differs in {keys}")
    for extra in sorted(set(rows) - seen):
        diffs.append(f"{extra}: live in mirror but not in Kantata")
    return diffs
