"""The bare limit: the fastest honest pipeline from the list endpoint into
`kantata.time_entries`, written for the benchmark only (never used by syncd).

aiohttp with 4 concurrent page fetches, orjson decode, one batched `unnest` upsert per page
into the same table (same columns, same `raw` jsonb, same newer-wins conflict rule). It asks for
exactly the URLs syncd's backfill asks for (the same monthly `date_performed_between` windows,
`per_page=200`, the same `include` side-loads and visibility filters), so both move the same bytes
through the same server. Unlike syncd it fetches pages 2..page_count of a window as soon as page 1
told it how many there are, and it has no retries, no validation, no checkpoints, no run history
and no side-loaded tables. Type conversion is left to PostgreSQL (every column travels as text).

    python -m tests.benchmarks.bare --base-url URL --token T --dsn DSN --since D --until D

prints one JSON line: {"rows", "pages", "requests", "seconds"}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import date

import aiohttp
import asyncpg
import orjson

CONCURRENCY = 4
COLUMNS = ("id", "workspace_id", "user_id", "story_id", "role_id", "date_performed",
           "time_in_minutes", "billable", "notes", "rate_in_cents", "cost_rate_in_cents",
           "currency", "currency_symbol", "currency_base_unit", "approved", "is_invoiced",
           "taxable", "location", "created_at", "updated_at")
TYPES = ("bigint", "bigint", "bigint", "bigint", "bigint", "date", "integer", "boolean", "text",
         "bigint", "bigint", "text", "text", "integer", "boolean", "boolean", "boolean", "text",
         "timestamptz", "timestamptz")
# Every column arrives as text[]; PostgreSQL casts (cheaper than building Python datetimes).
UPSERT = f"""
INSERT INTO kantata.time_entries AS t ({", ".join(COLUMNS)}, raw, synced_at)
SELECT {", ".join(f"u.c{i}::{ty}" for i, ty in enumerate(TYPES))}, u.raw::jsonb, now()
FROM unnest({", ".join(f"${i + 1}::text[]" for i in range(len(COLUMNS) + 1))})
     AS u({", ".join(f"c{i}" for i in range(len(COLUMNS)))}, raw)
ON CONFLICT (id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])}, raw = excluded.raw,
    deleted_at = NULL, synced_at = excluded.synced_at
WHERE t.updated_at < excluded.updated_at
"""
PARAMS = {"per_page": "200", "include": "workspace,user,story,role",
          "order": "date_performed:asc", "from_archived_workspaces": "true",
          "on_my_account": "false"}


def month_windows(since: date, until: date) -> list[str]:
    """`YYYY-MM-DD:YYYY-MM-DD` calendar-month windows covering since..until (what syncd asks)."""
    out, y, m = [], since.year, since.month
    while date(y, m, 1) <= until:
        ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
        start = max(date(y, m, 1), since)
        end = min(date.fromordinal(date(ny, nm, 1).toordinal() - 1), until)
        out.append(f"{start.isoformat()}:{end.isoformat()}")
        y, m = ny, nm
    return out


def _text(v: object) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


async def run(base_url: str, token: str, dsn: str, since: date, until: date) -> dict[str, float]:
    """Copy every entry of the windows into the database; return the figures."""
    queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
    for w in month_windows(since, until):
        queue.put_nowait((w, 1))
    figures = {"rows": 0, "pages": 0, "requests": 0}
    pending = queue.qsize()  # pages queued or in progress
    done = asyncio.Event()
    pool = await asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY)
    headers = {"Authorization": f"Bearer {token}"}
    url = base_url.rstrip("/") + "/time_entries"
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal pending
        while True:
            item = await queue.get()
            if item is None:
                return
            window, page = item
            async with session.get(url, params={**PARAMS, "date_performed_between": window,
                                                "page": str(page)}) as resp:
                resp.raise_for_status()
                body = await resp.read()
            figures["requests"] += 1
            doc = orjson.loads(body)
            if page == 1:
                for p in range(2, doc["meta"]["page_count"] + 1):
                    queue.put_nowait((window, p))
                    pending += 1
            keyed = doc["time_entries"]
            entries = [keyed[r["id"]] for r in doc["results"]]
            if entries:
                cols = [[_text(e.get(c)) for e in entries] for c in COLUMNS]
                cols.append([orjson.dumps(e).decode() for e in entries])
                async with pool.acquire() as conn:
                    await conn.execute(UPSERT, *cols)
                figures["rows"] += len(entries)
                figures["pages"] += 1
            pending -= 1
            if pending == 0:
                done.set()

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(CONCURRENCY)]
        waiter = asyncio.create_task(done.wait())
        finished, _ = await asyncio.wait([waiter, *workers],
                                         return_when=asyncio.FIRST_COMPLETED)
        for t in finished:
            if t is not waiter:
                t.result()  # a worker failed: raise its error
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
    seconds = time.perf_counter() - started
    await pool.close()
    return {**figures, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    """Command line wrapper; prints the figures as one JSON line."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--since", type=date.fromisoformat, required=True)
    p.add_argument("--until", type=date.fromisoformat, required=True)
    a = p.parse_args(argv)
    figures = asyncio.run(run(a.base_url, a.token, a.dsn, a.since, a.until))
    sys.stdout.write(orjson.dumps(figures).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
