"""Measure the simulator: seed time, resident memory, page-serve time (in-process and over HTTP).

``python -m syncd.simulator.bench --entries 1000000`` prints one line per figure. Figures are
wall-clock on the current machine; RSS is read from ``/proc/self/status`` (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import datetime, timezone

import aiohttp

from .config import SimConfig
from .core import Simulator
from .testing import running_simulator

LIST_QUERY = {"order": "updated_at:asc", "per_page": "200", "from_archived_workspaces": "true",
              "on_my_account": "false"}


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _http(sim: Simulator, pages: int) -> tuple[float, float, float]:
    async with running_simulator(sim) as base:
        headers = {"Authorization": f"Bearer {sim.config.token}"}
        async with aiohttp.ClientSession(headers=headers) as c:
            lat: list[float] = []
            t0 = time.perf_counter()
            for p in range(1, pages + 1):
                t = time.perf_counter()
                async with c.get(f"{base}/time_entries", params={**LIST_QUERY,
                                                                 "page": str(p)}) as r:
                    await r.read()
                lat.append(time.perf_counter() - t)
            total = time.perf_counter() - t0
    return total, statistics.median(lat), max(lat)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print them."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--entries", type=int, default=200_000, help="entries to seed")
    p.add_argument("--pages", type=int, default=200, help="200-entry pages to fetch over HTTP")
    args = p.parse_args(argv)
    base_rss = rss_mb()
    t = time.perf_counter()
    sim = Simulator(SimConfig(entries=args.entries, seed=1,
                              clock=lambda: datetime.now(timezone.utc)))
    seed_s = time.perf_counter() - t
    print(f"entries={args.entries} seed={seed_s:.2f}s rss_after_seed={rss_mb():.0f}MB "
          f"(interpreter+imports {base_rss:.0f}MB)")
    t = time.perf_counter()
    sim.api_list({**LIST_QUERY, "page": "1"})
    print(f"first page of a new query (filter+sort all): {(time.perf_counter() - t) * 1e3:.0f}ms")
    t = time.perf_counter()
    n = 0
    for page in range(2, 502):
        sim.api_list({**LIST_QUERY, "page": str(page)})
        n += 1
    print(f"cold pages (entries rendered first time): {(time.perf_counter() - t) / n * 1e3:.2f}"
          f" ms/page")
    t = time.perf_counter()
    for page in range(2, 502):
        sim.api_list({**LIST_QUERY, "page": str(page)})
    print(f"warm pages (cached bytes): {(time.perf_counter() - t) / n * 1e3:.2f} ms/page")
    eid = int(sim.store.ids[0])
    t = time.perf_counter()
    sim.edit_entry(eid, {"notes": "bench"})
    sim.api_list({**LIST_QUERY, "page": "3"})
    print(f"write + next page of the same query: {(time.perf_counter() - t) * 1e3:.2f}ms")
    total, median, worst = asyncio.run(_http(sim, args.pages))
    print(f"HTTP: {args.pages} pages of 200 in {total:.2f}s, median {median * 1e3:.1f}ms, "
          f"max {worst * 1e3:.1f}ms per page")
    t = time.perf_counter()
    for page in range(1, sim.store.live_count // 200 + 2):
        sim.api_list({**LIST_QUERY, "page": str(page)})
    print(f"rendered every entry (full walk) in {time.perf_counter() - t:.1f}s; "
          f"rss={rss_mb():.0f}MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
