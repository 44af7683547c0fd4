"""The per-query cache of filtered+sorted lists stays exact across every kind of write."""

from __future__ import annotations

import random
from typing import Any

import orjson

from syncd.simulator import Simulator

from .conftest import FakeClock, Ref, make_sim

QUERIES: list[dict[str, str]] = [
    {},
    {"order": "updated_at:asc", "from_archived_workspaces": "true", "on_my_account": "false"},
    {"order": "created_at:desc", "billable": "true"},
    {"order": "updated_at:asc", "updated_after": "2025-06-16T11:00:00-07:00"},
    {"order": "date_performed:asc", "date_performed_between": "2025-01-01:2025-03-31"},
    {"has_external_references": "true", "order": "updated_at:desc"},
    {"external_reference_service_name": "syncd"},
    {"invoiced": "1"},
]


def page_ids(sim: Simulator, q: dict[str, str]) -> list[str]:
    doc = orjson.loads(sim.api_list({**q, "per_page": "200", "page": "1"}))
    return [r["id"] for r in doc["results"]] + [str(doc["count"])]


def fresh(sim: Simulator, q: dict[str, str]) -> list[str]:
    saved = dict(sim._qcache)
    sim._qcache.clear()
    try:
        return page_ids(sim, q)
    finally:
        sim._qcache.clear()
        sim._qcache.update(saved)


def test_cache_patched_exactly_under_random_writes(clock: FakeClock) -> None:
    sim = make_sim(clock, entries=400, seed=11)
    ref = Ref(sim)
    rng = random.Random(5)
    ids = [int(e["id"]) for e in sim.list_entries()]
    for q in QUERIES:
        page_ids(sim, q)  # warm the cache
    for step in range(300):
        op = rng.random()
        clock.advance(rng.choice([0, 0, 1, 30]))
        if op < 0.3:
            fields: dict[str, Any] = {"notes": f"s{step}"}
            if rng.random() < 0.5:
                fields["billable"] = rng.random() < 0.5
            if rng.random() < 0.3:
                fields["date_performed"] = f"2025-0{rng.randint(1, 6)}-1{rng.randint(0, 9)}"
            if rng.random() < 0.2:
                fields["external_reference"] = {"service_name": "syncd", "service_model": "T",
                                                "service_model_ref": f"r{step}"}
            sim.edit_entry(rng.choice(ids), fields)
        elif op < 0.5:
            e = sim.create_entry({"workspace_id": rng.choice([ref.ws, ref.ws_archived,
                                                              ref.ws_other]),
                                  "date_performed": "2025-02-0" + str(rng.randint(1, 9))})
            ids.append(int(e["id"]))
        elif op < 0.65 and len(ids) > 10:
            victim = ids.pop(rng.randrange(len(ids)))
            sim.delete_entry(victim)
        elif op < 0.75:
            sim.invoice_entry(rng.choice(ids))
        elif op < 0.8:
            w = rng.choice([ref.ws, ref.ws2])
            (sim.archive_workspace if rng.random() < 0.5 else sim.unarchive_workspace)(w)
        for q in rng.sample(QUERIES, 3):
            assert page_ids(sim, q) == fresh(sim, q), (step, q)
    for q in QUERIES:
        assert page_ids(sim, q) == fresh(sim, q)


def test_cache_hit_does_not_recompute(clock: FakeClock) -> None:
    sim = make_sim(clock, entries=200, seed=2)
    q = {"order": "updated_at:asc"}
    page_ids(sim, q)
    (key,) = sim._qcache
    arr = sim._qcache[key][1]
    page_ids(sim, {**q, "page": "2", "per_page": "5"})
    assert sim._qcache[key][1] is arr  # paging params are not part of the key
    sim.edit_entry(int(sim.list_entries()[0]["id"]), {"notes": "x"})
    page_ids(sim, q)
    assert sim._qcache[key][1] is arr  # patched in place, not rebuilt
    sim.set_lock_date(None)  # non-entry writes invalidate
    page_ids(sim, q)
    assert sim._qcache[key][1] is not arr
