"""`syncd sync [--since DATE] [--until DATE]`: one pull cycle, then exit."""

from __future__ import annotations

import argparse
from typing import Any


from syncd import migrate, pull
from syncd.app import open_deps
from syncd.commands._util import parse_date, run_async
from syncd.runs import error_line
from syncd.settings import Settings


async def _sync(settings: Settings, args: argparse.Namespace) -> int:
    async with open_deps(settings) as deps:
        async with deps.pool.acquire() as conn:
            await migrate.check_current(conn)
        stats = await pull.sync_once(deps, since=args.since, until=args.until)
    print(f"sync {stats.run_id}: {stats.pages} pages, {stats.rows_upserted} rows upserted, "
          f"{stats.rows_altered} stored with text replaced, {stats.rows_rejected} rejected"
          + (f", errors: {error_line(stats.errors)}"
             if stats.errors else ""))
    return 1 if stats.errors else 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    return run_async(_sync(settings, args))


def register(sub: Any) -> None:
    p = sub.add_parser("sync", help="run one pull cycle (backfill what is missing, then "
                                    "incremental) and exit")
    p.add_argument("--since", type=parse_date,
                   help="re-read the windows of date_performed from this date (YYYY-MM-DD), "
                        "then run the incremental pass")
    p.add_argument("--until", type=parse_date,
                   help="re-read up to this date (inclusive); default: today + lookahead")
    p.set_defaults(func=_cmd)
