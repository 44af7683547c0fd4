"""Reference clients for the backfill benchmark (never used by syncd): the plain listing a new
user would write (issue #16), and the same client shaped step by step like syncd's requests so
that the cost of each difference is measured on its own.

All shapes: aiohttp with 4 concurrent page fetches (pages 2..page_count are queued as soon as a
page 1 gives `meta.page_count`), orjson decode, one set-based `unnest` upsert per page, every
column sent as text and cast by PostgreSQL, no retries, validation, checkpoints or run history.

- `--listing plain`: `GET /time_entries?per_page=200&from_archived_workspaces=true&
  on_my_account=false` (Kantata's default order), one listing for the whole account.
  (`on_my_account=false` as well as the issue's `from_archived_workspaces=true`: without it the
  listing leaves out entries of other accounts' projects, api-notes §4, and the row counts
  would differ.) `--listing windows`: the calendar-month `date_performed_between` windows and
  `order=date_performed:asc` syncd's backfill asks for.
- `--include`: side-load `workspace,user,story,role` on every page as syncd does (the side-loaded
  objects are parsed with the page and otherwise ignored).
- `--table own`: a table of the mirror's columns with only its primary key (created before the
  clock starts); `--table mirror`: `kantata.time_entries` itself, with its indexes and triggers.
- `--parse pg` (issue #26, the reference row): the page body is handed to PostgreSQL as it came,
  one `INSERT … SELECT … FROM jsonb_each($1::jsonb -> 'time_entries') … ON CONFLICT (id) DO
  UPDATE` per page, every column cast by PostgreSQL; Python decodes only page 1 of a listing
  (for `meta.page_count`). `--parse python` (default): orjson, then one `unnest` of text arrays.

    python -m tests.benchmarks.bare --base-url URL --token T --dsn DSN --since D --until D
        [--listing plain|windows] [--include] [--table own|mirror] [--parse python|pg]

prints one JSON line: {"rows", "pages", "requests", "bytes", "seconds"}.
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
OWN_TABLE = "bench_plain.time_entries"
OWN_DDL = f"""
DROP SCHEMA IF EXISTS bench_plain CASCADE;
CREATE SCHEMA bench_plain;
CREATE TABLE {OWN_TABLE} (
    {", ".join(f"{c} {t}" for c, t in zip(COLUMNS, TYPES, strict=True))},
    raw jsonb NOT NULL, deleted_at timestamptz, synced_at timestamptz NOT NULL,
    PRIMARY KEY (id))
"""


def upsert_sql(table: str) -> str:
    """The one set-based upsert per page (newer `updated_at` wins, as in the mirror)."""
    return f"""
INSERT INTO {table} AS t ({", ".join(COLUMNS)}, raw, synced_at)
SELECT {", ".join(f"u.c{i}::{ty}" for i, ty in enumerate(TYPES))}, u.raw::jsonb, now()
FROM unnest({", ".join(f"${i + 1}::text[]" for i in range(len(COLUMNS) + 1))})
     AS u({", ".join(f"c{i}" for i in range(len(COLUMNS)))}, raw)
ON CONFLICT (id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])}, raw = excluded.raw,
    deleted_at = NULL, synced_at = excluded.synced_at
WHERE t.updated_at < excluded.updated_at
"""


def pg_upsert_sql(table: str) -> str:
    """The one statement per page of `--parse pg`: PostgreSQL parses the body and casts every
    column (newer `updated_at` wins, as in the mirror)."""
    return f"""
INSERT INTO {table} AS t ({", ".join(COLUMNS)}, raw, synced_at)
SELECT {", ".join(f"(e.value ->> '{c}')::{ty}" for c, ty in zip(COLUMNS, TYPES, strict=True))},
       e.value, now()
FROM jsonb_each($1::jsonb -> 'time_entries') AS e
ON CONFLICT (id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])}, raw = excluded.raw,
    deleted_at = NULL, synced_at = excluded.synced_at
WHERE t.updated_at < excluded.updated_at
RETURNING 1
"""


PLAIN = {"per_page": "200", "from_archived_workspaces": "true", "on_my_account": "false"}
INCLUDE = "workspace,user,story,role"


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


def listings(listing: str, include: bool, since: date, until: date) -> list[dict[str, str]]:
    """The query of page 1 of every listing the client reads."""
    base = dict(PLAIN, include=INCLUDE) if include else dict(PLAIN)
    if listing == "plain":
        return [base]
    return [{**base, "order": "date_performed:asc", "date_performed_between": w}
            for w in month_windows(since, until)]


def page_columns(doc: dict[str, object]) -> list[list[str | None]]:
    """What the reference does with a decoded page: the entries in `results` order as one
    text array per column, then `raw` as JSON text (empty lists for an empty page)."""
    keyed = doc["time_entries"]
    entries = [keyed[r["id"]] for r in doc["results"]]  # type: ignore[index, attr-defined]
    cols = [[_text(e.get(c)) for e in entries] for c in COLUMNS]
    cols.append([orjson.dumps(e).decode() for e in entries])
    return cols


def _text(v: object) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


async def run(base_url: str, token: str, dsn: str, since: date, until: date, *,
              listing: str = "plain", include: bool = False, table: str = "own",
              parse: str = "python") -> dict[str, float]:
    """Copy every entry of the listings into the database; return the figures (seconds)."""
    queue: asyncio.Queue[tuple[dict[str, str], int] | None] = asyncio.Queue()
    for q in listings(listing, include, since, until):
        queue.put_nowait((q, 1))
    figures = {"rows": 0, "pages": 0, "requests": 0, "bytes": 0}
    pending = queue.qsize()  # pages queued or in progress
    done = asyncio.Event()
    pool = await asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY)
    if table == "own":
        async with pool.acquire() as conn:
            await conn.execute(OWN_DDL)
    target = OWN_TABLE if table == "own" else "kantata.time_entries"
    upsert = upsert_sql(target) if parse == "python" else pg_upsert_sql(target)
    headers = {"Authorization": f"Bearer {token}"}
    url = base_url.rstrip("/") + "/time_entries"
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal pending
        while True:
            item = await queue.get()
            if item is None:
                return
            query, page = item
            async with session.get(url, params={**query, "page": str(page)}) as resp:
                resp.raise_for_status()
                body = await resp.read()
            figures["requests"] += 1
            figures["bytes"] += len(body)
            if page == 1 or parse == "python":
                doc = orjson.loads(body)
            if page == 1:
                for p in range(2, doc["meta"]["page_count"] + 1):
                    queue.put_nowait((query, p))
                    pending += 1
            if parse == "pg":
                async with pool.acquire() as conn:
                    rows = len(await conn.fetch(upsert, body.decode()))
            else:
                cols = page_columns(doc)
                rows = len(cols[0])
                if rows:
                    async with pool.acquire() as conn:
                        await conn.execute(upsert, *cols)
            if rows:
                figures["rows"] += rows
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
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--since", type=date.fromisoformat, required=True)
    p.add_argument("--until", type=date.fromisoformat, required=True)
    p.add_argument("--listing", choices=("plain", "windows"), default="plain")
    p.add_argument("--include", action="store_true", help="side-load workspace,user,story,role")
    p.add_argument("--table", choices=("own", "mirror"), default="own")
    p.add_argument("--parse", choices=("python", "pg"), default="python",
                   help="who decodes the page: Python (orjson) or PostgreSQL (the body as jsonb)")
    a = p.parse_args(argv)
    figures = asyncio.run(run(a.base_url, a.token, a.dsn, a.since, a.until,
                              listing=a.listing, include=a.include, table=a.table,
                              parse=a.parse))
    sys.stdout.write(orjson.dumps(figures).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
