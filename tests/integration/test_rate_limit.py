"""A backfill under a sliding rate limit with default budget settings (issue #24), against the
simulator (no `Retry-After`, as Kantata) and a real PostgreSQL, on a window scaled down from a
minute to a second so that it runs in seconds: the first run learns the limit and finishes near
the best schedule the limiter allows, with few 429s; the learned limit is kept in
`syncd.request_budget` (keyed by base URL and the token's SHA-256, never the token); a second
process on the same database starts at the learned rate and is refused nothing."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta

import asyncpg

from syncd import budget_store, pull, store
from syncd.commands import status
from syncd.app import open_deps
from syncd.simulator import Simulator
from tests.integration.conftest import TOKEN, make_settings

LIMIT, WINDOW = 10, 1.0  # 600 per minute, in a 1 s sliding window


def feasible(admitted: int) -> float:
    """The best a sliding log of LIMIT per WINDOW allows for `admitted` requests: request
    i + LIMIT starts a window after request i. (Issue #24's "LIMIT at once, then one every
    WINDOW/LIMIT" is a token bucket's; a sliding log refuses its (LIMIT + 1)-th request.)"""
    return ((admitted - 1) // LIMIT) * WINDOW


async def backfill(db_dsn: str, sim_url: str, sim: Simulator) -> tuple[float, int, int]:
    """One `syncd sync`-like process: (seconds, requests admitted, requests refused)."""
    sim.clear_requests()
    settings = make_settings(db_dsn, sim_url, rate_limit_per_minute=None, per_page=14)
    async with open_deps(settings) as deps:
        t0 = time.perf_counter()
        stats = await pull.sync_once(deps)
        seconds = time.perf_counter() - t0
    assert stats.errors == []
    refused = sum(1 for r in sim.requests if r["status"] == 429)
    return seconds, len(sim.requests) - refused, refused


async def test_backfill_under_a_sliding_limit_learns_it_and_keeps_it(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    sim.set_faults({"rate_limit_per_minute": LIMIT, "rate_limit_window": WINDOW})
    seconds, admitted, refused = await backfill(db_dsn, sim_url, sim)
    assert admitted >= 5 * LIMIT, "too few requests to show a pace"
    assert seconds <= 1.3 * feasible(admitted), (seconds, admitted, refused)
    # the refusals in flight when the burst filled the window (≤ 8 connections), a probe
    assert 1 <= refused <= 8 + 2, refused
    row = await conn.fetchrow("SELECT * FROM syncd.request_budget")
    assert row["kantata_base_url"] == sim_url
    assert row["token_sha256"] == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert TOKEN not in str(dict(row))
    assert (row["limit_requests"], row["window_seconds"]) == (LIMIT, WINDOW)
    assert row["last_request_at"] is not None and row["recent_starts"]

    # a new process, the same database: the mirror is read again from scratch, at once
    await conn.execute("TRUNCATE kantata.time_entries CASCADE")
    await conn.execute("DELETE FROM syncd.windows")
    await conn.execute("DELETE FROM syncd.watermarks")
    seconds, admitted_again, refused = await backfill(db_dsn, sim_url, sim)
    assert admitted_again >= admitted - 2
    assert refused <= 1, refused  # no burst into a window the first run filled, no probes
    assert seconds <= 1.3 * feasible(admitted_again), (seconds, admitted_again)

    # `syncd status` shows the learned limit, its last 429 and how it is relaxed
    snap = {"rate_limits": status.rate_limits(await budget_store.load_all(conn), 86400.0)}
    (shown,) = snap["rate_limits"]
    assert (shown["limit_requests"], shown["window_seconds"]) == (LIMIT, WINDOW)
    last_429 = await conn.fetchval("SELECT last_throttled_at FROM syncd.request_budget")
    assert shown["last_throttled_at"] == last_429 and last_429 is not None
    assert shown["forget_at"] == last_429 + timedelta(days=1)
    text = status.render_text({**await store.status_snapshot(conn), **snap})
    line = next(x for x in text.splitlines() if x.startswith("rate limit:"))
    assert f"{LIMIT} requests per 1 s (600.0/min)" in line and "raised 5%" in line
    assert f"forgotten at {(last_429 + timedelta(days=1)).isoformat()}" in line

    # a day without a 429 (SYNCD_RATE_LIMIT_FORGET_AFTER): the next start forgets the limit
    await conn.execute("UPDATE syncd.request_budget "
                       "SET last_throttled_at = now() - interval '25 hours'")
    async with open_deps(make_settings(db_dsn, sim_url, rate_limit_per_minute=None)) as deps:
        assert deps.client.budget.learned is None
        assert deps.client.budget.rate_per_minute == float("inf")
    assert await conn.fetchval("SELECT count(*) FROM syncd.request_budget") == 0
