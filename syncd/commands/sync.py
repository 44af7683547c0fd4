"""`syncd sync [--since DATE] [--until DATE]`: one pull cycle, then exit."""

from __future__ import annotations

import argparse
from typing import Any


from syncd import migrate, pull
from syncd.app import open_deps
from syncd.commands._util import add_range_arguments, run_async
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
    if held := stats.details.get("windows_read_by_another_run"):
        print(f"sync {stats.run_id}: {held} window(s) left to another syncd run that is reading "
              "them, or read them meanwhile (not read twice); `syncd status` shows when they "
              "are done")
    return 1 if stats.errors else 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    if args.since or args.until:  # a re-read's windows are not pending work of the mirror
        return run_async(_sync(settings, args), stopped=(
            "the windows of --since/--until it had not re-read are re-read only by running the "
            "same command again (a plain `syncd sync` finishes only the ones it was reading)"))
    return run_async(_sync(settings, args))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sync", help="run one pull cycle (backfill what is missing, then incremental) and exit",
        description="One pull cycle: backfill the date_performed windows not read yet, then an "
                    "incremental pass by updated_at; then exit. With --since/--until: re-read "
                    "exactly the entries performed on those dates, then the incremental pass. "
                    "The dates are date_performed dates: the calendar day Kantata records the "
                    "work on (YYYY-MM-DD, no time and no time zone: the same day whatever "
                    "the zone of this machine, the database or UTC), both ends inclusive.")
    add_range_arguments(p, what=" to re-read",
                        since_default="the backfill start when only --until is given")
    p.set_defaults(func=_cmd)
