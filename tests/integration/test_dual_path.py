"""Issue #26: the same random pages, valid, awkward and broken, stored by the careful path
(Python decodes and types every entry, `pagination.decode_page` + `store.upsert_entries`) into
one real database and by the fast path (PostgreSQL types the body, `decode_page_fast` +
`store.store_page_body`, the careful path for a page it refuses) into another: every column
of every row, the dead letters with their reasons, the side-loaded objects, the checkpoints
and the history must be identical, and so must what Python decides on (ids, rejects, side
references, envelope figures).

A seeded generator (not hypothesis: the comparison needs a whole sequence of pages over the
same ids, so that updates, ties of `updated_at`, absent keys and history are exercised).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from syncd import pagination, store
from syncd.app import open_deps
from syncd.pull import store_landed
from syncd.runs import Deps, RunStats
from syncd.windows import Window
from tests.conftest import scratch_database
from tests.integration.conftest import make_settings

SEED = 2026
PAGES = 160
IDS = range(1, 41)  # a small pool: pages update each other's entries
WINDOW = Window(date(2024, 1, 1), date(2024, 1, 31))

GOOD_TS = ["2024-01-0{d}T10:00:00Z", "2024-01-0{d}T10:00:00+00:00", "2024-01-0{d}T11:30:00+01:30",
           "2024-01-0{d}t10:00:00z"]
BAD_TS = ["2024-01-01T10:00:00.5Z", "2024-01-01T10:00:00.123456-05:00",  # valid, not fast
          "2024-01-01T10:00:00", "2024-02-30T10:00:00Z", "2024-01-01T24:00:00Z", "garbage",
          "1899-12-31T23:00:00Z", "2201-01-01T00:00:00Z", "2024-01-01 10:00:00+00:00",
          "2024-01-01T10:00:00.1234567Z", "2024-01-01T10:00+05:30", "2024-01-01T10:00:00+0530",
          "1900-01-01T00:30:00+01:00", 20240101, None, "2024-01-01T10:00:00+23:00"]
GOOD_DATES = ["2024-01-15", "2024-02-29", "2023-12-31", "1900-01-01", "2200-12-31"]
BAD_DATES = ["2023-02-29", "2024-13-01", "1899-12-31", "2024-W01-1", "20240101", "2024-1-5",
             None, 20240115, "2024-04-31", "2201-01-01"]
NUMS = [0, 1, 60, 480, "60", 60.0, -1, 2_000_000, 1.5, None, True, "__NUM_6e1__",
        "__NUM_60.00__", 1_000_000, "1-2", "-", " 60"]
MONEY = [0, 12_345, -500, None, 2**60, "__NUM_1e3__", 5.0, "100", 2**53, 2**53 - 1,
         "__NUM_18446744073709551616__", "__NUM_3.14159265358979323846__", 1.5, False]
UNIT = [100, 1, 0, None, 2**31, -1, 100.0]
TEXTS = ["ok", "", "é ü 漢字 🎉", None, "nul\x00here", "lone\ud800surrogate", 5, ["a"],
         "quote\" back\\slash", "\u2028line"]
FKS = ["7", "12", "0", "007", None, 5, "abc", "-1", "1234567890123456789", "3"]
BOOLS = [True, False, None, "yes", 0, 1]
ABSENT = object()


def pick(rng: random.Random, good: list[Any], bad: list[Any], p_bad: float,
         required: bool = False) -> Any:
    if rng.random() < (0.08 if p_bad or not required else 0.0):
        return ABSENT
    return rng.choice(bad if rng.random() < p_bad else good)


def entry(rng: random.Random, eid: int, p_bad: float) -> dict[str, Any]:
    day = rng.randint(1, 3)
    e: dict[str, Any] = {"id": str(eid)}
    e["workspace_id"] = pick(rng, ["7", "12", None], FKS, p_bad)
    e["user_id"] = pick(rng, ["3", "12"], FKS, p_bad)
    e["story_id"] = pick(rng, ["7", None], FKS, p_bad)
    e["role_id"] = pick(rng, ["3"], FKS, p_bad)
    e["date_performed"] = pick(rng, GOOD_DATES, BAD_DATES, p_bad, required=True)
    e["time_in_minutes"] = pick(rng, [30, 60, 480, 0], NUMS, p_bad, required=True)
    e["billable"] = pick(rng, [True, False], BOOLS, p_bad)
    e["notes"] = pick(rng, ["ok", "", "é 漢字"], TEXTS, p_bad)
    e["rate_in_cents"] = pick(rng, [10_000, 0, None], MONEY, p_bad)
    e["cost_rate_in_cents"] = pick(rng, [5_000, None], MONEY, p_bad)
    e["currency"] = pick(rng, ["USD", "EUR"], TEXTS, p_bad)
    e["currency_symbol"] = pick(rng, ["$", "€"], TEXTS, p_bad)
    e["currency_base_unit"] = pick(rng, [100], UNIT, p_bad)
    e["approved"] = pick(rng, [True, False, None], BOOLS, p_bad)
    e["is_invoiced"] = pick(rng, [False], BOOLS, p_bad)
    e["taxable"] = pick(rng, [True, None], BOOLS, p_bad)
    e["location"] = pick(rng, [None, "office"], TEXTS, p_bad)
    ts = [t.format(d=day) for t in GOOD_TS]
    e["updated_at"] = pick(rng, ts, BAD_TS, p_bad, required=True)
    e["created_at"] = pick(rng, [None, *ts], BAD_TS, p_bad)
    if rng.random() < 0.1:
        e["extra"] = {"n": rng.choice([0.1, 1.25, -0.0, 10**18, *(["__NUM_1.50__"] * (p_bad > 0))]),
                      rng.choice(["k", "k\x00", "k\ud801"] if p_bad else ["k"]): [1, "x"]}
    if e["updated_at"] is ABSENT and rng.random() < 0.5:
        e["updated_at"] = ts[0]  # mostly keep the required one
    out = {k: v for k, v in e.items() if v is not ABSENT}
    r = rng.random() if p_bad else 1.0
    if r < 0.1 or rng.random() < 0.05:
        del out["id"]  # the contract has no id property: the key is the id
    elif r < 0.04:
        out["id"] = str(eid + 1)  # disagrees with its key
    elif r < 0.07:
        out["id"] = eid  # a number
    return out


def page_body(rng: random.Random) -> bytes:
    """One list page as JSON bytes (awkward number spellings written as such)."""
    p_bad = rng.choice([0.0, 0.0, 0.0, 0.0, 0.0, 0.02, 0.1, 0.4])
    ids = rng.sample(IDS, rng.randint(0, 12))
    keyed = {str(i): entry(rng, i, p_bad) for i in ids}
    results: list[Any] = [{"key": "time_entries", "id": str(i)} for i in ids]
    if p_bad and rng.random() < 0.3:
        oddity = rng.choice(["dup", "missing", "notref", "otherkey", "leading0", "intid"])
        if oddity == "dup" and ids:
            results.append(results[0])
        elif oddity == "missing":
            results.append({"key": "time_entries", "id": "999"})
        elif oddity == "notref":
            results.append("nope")
        elif oddity == "otherkey":
            results.append({"key": "workspaces", "id": "7"})
        elif oddity == "leading0" and ids:
            keyed["0" + str(ids[0])] = keyed.pop(str(ids[0]))
            results[0] = {"key": "time_entries", "id": "0" + str(ids[0])}
        elif oddity == "intid" and ids:
            results[0] = {"key": "time_entries", "id": ids[0]}
    doc: dict[str, Any] = {"count": len(results), "results": results, "time_entries": keyed,
                           "meta": {"count": len(results), "page_count": 1, "page_number": 1,
                                    "page_size": 20}}
    if rng.random() < 0.3:
        doc["workspaces"] = {"7": {"id": "7", "title": rng.choice(["Acme", "A\x00cme"]
                                                                 if p_bad else ["Acme"])},
                             "12": {"title": "No id field"}}
        doc["users"] = {"3": {"id": "3", "full_name": "Ann"},
                        "12": {"id": rng.choice(["12", "13"]), "full_name": "Bob"}}
    text = json.dumps(doc)
    for marker in ("6e1", "60.00", "1e3", "18446744073709551616",
                   "3.14159265358979323846", "1.50"):
        text = text.replace(f'"__NUM_{marker}__"', marker)
    return text.encode()


@pytest.fixture
async def second_dsn(pg_server_dsn: str, template_db: str) -> AsyncIterator[str]:
    async with scratch_database(pg_server_dsn, "syncd_t", template_db) as dsn:
        yield dsn


ENTRY = ", ".join(c for c in store.ENTRY_COLUMNS if c != "raw")


async def snapshot(conn: asyncpg.Connection, since: datetime) -> dict[str, list[tuple]]:
    """Everything the two paths write, with instants from `now()` (not from Kantata) masked."""
    def mask(v: Any) -> Any:
        return "now" if isinstance(v, datetime) and v >= since else v

    queries = {
        "entries": f"SELECT {ENTRY}, raw::text, deleted_at, learned_via "
                   "FROM kantata.time_entries ORDER BY id",
        "history": f"SELECT {ENTRY}, valid_from, valid_to, deleted, first_seen, learned_via "
                   "FROM kantata.time_entry_history ORDER BY id, version_id",
        "rejects": "SELECT entry_id, reason, raw, occurrences FROM syncd.rejected_records "
                   "ORDER BY entry_id, reason",
        "workspaces": "SELECT id, title, raw::text FROM kantata.workspaces ORDER BY id",
        "users": "SELECT id, full_name, raw::text FROM kantata.users ORDER BY id",
        "windows": "SELECT purpose, pages_done, rows_seen FROM syncd.windows",
    }
    return {k: [tuple(mask(v) for v in r.values()) for r in await conn.fetch(q)]
            for k, q in queries.items()}


async def test_fast_and_careful_paths_store_the_same(db_dsn: str, second_dsn: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(SEED)
    one_statement = 0  # pages written by store.store_page_body (one round trip)
    store_page_body = store.store_page_body

    async def counted(*args: Any, **kwargs: Any) -> int:
        nonlocal one_statement
        one_statement += 1
        return await store_page_body(*args, **kwargs)
    monkeypatch.setattr(store, "store_page_body", counted)
    since = datetime.now(UTC)
    url = "http://127.0.0.1:9"  # no request is sent
    async with open_deps(make_settings(db_dsn, url)) as careful_deps, \
            open_deps(make_settings(second_dsn, url)) as fast_deps:
        deps_of: dict[str, Deps] = {"careful": careful_deps, "fast": fast_deps}
        stats = {k: RunStats(run_id=uuid.uuid4(), job="backfill") for k in deps_of}
        for d in deps_of.values():
            async with d.pool.acquire() as conn:
                await store.start_window(conn, "backfill", WINDOW, restart=True)
        taken = {"fast": 0, "refused": 0, "careful_in_python": 0, "typed": 0}
        for n in range(1, PAGES + 1):
            body = page_body(rng)
            doc, storable = pagination.decode_json_storable(body)
            careful = pagination.decode_page(doc, storable=storable)
            fast = pagination.decode_page_fast(doc, body, storable=storable)
            typed = pagination.decode_page_typed(body)
            if typed is not None:  # the typed lane decides and decodes as the fast path
                assert typed == fast, body
                taken["typed"] += 1
            _, careful_landed = await store_landed(
                careful_deps, careful, stats["careful"], purpose="backfill", window=WINDOW,
                page_no=n)
            _, fast_landed = await store_landed(
                fast_deps, fast, stats["fast"], purpose="backfill", window=WINDOW, page_no=n)
            if fast.body is None:
                taken["careful_in_python"] += 1
            elif fast_landed.body is None:
                taken["refused"] += 1
            else:
                taken["fast"] += 1
            # what Python decides on is the same on both paths
            where = f"page {n}: {body[:300]!r}"
            assert [e.id for e in fast_landed.listed()] == \
                [e.id for e in careful_landed.entries], where
            assert fast.result_ids == careful.result_ids, where
            assert (fast.count, fast.page_count, fast.page_number, fast.page_size) == \
                (careful.count, careful.page_count, careful.page_number, careful.page_size)
            assert sorted((r.entry_id or "", r.reason) for r in fast_landed.rejected) == \
                sorted((r.entry_id or "", r.reason) for r in careful_landed.rejected), where
            assert pagination.side_refs(fast_landed.listed()) == \
                pagination.side_refs(careful_landed.entries), where
            assert sorted(fast_landed.side, key=lambda o: (o.kind, o.id)) == \
                sorted(careful_landed.side, key=lambda o: (o.kind, o.id)), where
            if fast_landed.body is not None:
                assert fast.absent_keys == careful.absent_keys, where
            if n % 40 == 0 or n == PAGES:
                got = {}
                for k, d in deps_of.items():
                    async with d.pool.acquire() as conn:
                        got[k] = await snapshot(conn, since)
                for table in got["careful"]:
                    assert got["fast"][table] == got["careful"][table], (n, table)
        assert stats["fast"].rows_upserted == stats["careful"].rows_upserted
        assert stats["fast"].rows_rejected == stats["careful"].rows_rejected
        assert stats["fast"].rows_altered == stats["careful"].rows_altered
    # every route was taken, often: the comparison above is not vacuous
    assert taken["fast"] >= PAGES // 4, taken
    assert one_statement >= PAGES // 8, (one_statement, taken)  # pages without side objects
    assert taken["typed"] >= PAGES // 8, taken
    assert taken["refused"] >= 1, taken  # a 30th of February: PostgreSQL refuses it
    assert taken["careful_in_python"] >= 10, taken
    assert got["careful"]["history"], "no entry was ever updated"
    assert got["careful"]["rejects"] and len(got["careful"]["entries"]) >= 30
