"""`syncd reconcile [--since DATE] [--until DATE]`: re-read windows once, mark vanished entries
deleted, upsert missing or older ones, and print per-window figures."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from syncd import migrate, reconcile_job
from syncd.app import open_deps
from syncd.commands._util import add_range_arguments, run_async
from syncd.reconcile_job import WindowReport
from syncd.settings import Settings

HEADER = (f"{'window':<23} {'checked':>8} {'upserted':>8} {'revived':>7} {'deleted':>7} "
          f"{'kept':>5} {'GETs':>5}  note")


def render(reports: list[WindowReport]) -> str:
    """One line per window plus a total line."""
    lines = [HEADER]
    for r in reports:
        lines.append(f"{r.window.param:<23} {r.checked:>8} {r.upserted:>8} {r.revived:>7} "
                     f"{r.marked_deleted:>7} {r.kept:>5} {r.requests:>5}  {r.error or ''}"
                     .rstrip())
    failed = sum(1 for r in reports if r.error)
    lines.append(f"{len(reports)} windows: {sum(r.checked for r in reports)} checked, "
                 f"{sum(r.upserted for r in reports)} upserted, "
                 f"{sum(r.marked_deleted for r in reports)} marked deleted, "
                 f"{sum(r.requests for r in reports)} GETs"
                 + (f", {failed} failed (retried next run)" if failed else ""))
    return "\n".join(lines)


async def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    lo, hi = settings.backfill_range(datetime.now(UTC).date())
    since, until = args.since or lo, args.until or hi
    async with open_deps(settings) as deps:
        async with deps.pool.acquire() as conn:
            await migrate.check_current(conn)
        reports = await reconcile_job.reconcile_range(deps, since, until)
    print(render(reports))
    return 1 if any(r.error for r in reports) else 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    return run_async(_reconcile(settings, args))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile", help="re-read date windows once: mark entries deleted in Kantata, fix "
                          "missing or older rows",
        description="Re-read date_performed windows from Kantata and compare them with the "
                    "mirror: entries gone remotely get deleted_at (never physically deleted), "
                    "missing or older rows are upserted. Default range: the backfill range.")
    add_range_arguments(p)
    p.set_defaults(func=_cmd)
