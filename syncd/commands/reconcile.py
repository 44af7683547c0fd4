"""`syncd reconcile [--since DATE] [--until DATE] [--full]`: check windows once (counting first,
or every page with `--full`), mark vanished entries deleted, upsert missing or older ones, and
print the windows where something was found or changed (every window with `--verbose`) and
a summary by outcome."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from syncd import migrate, reconcile_job
from syncd.app import open_deps
from syncd.commands._util import add_range_arguments, run_async
from syncd.reconcile_job import WindowReport
from syncd.settings import Settings
from syncd.windows import month_windows

HEADER = (f"{'window':<23} {'checked':>8} {'upserted':>8} {'revived':>7} {'deleted':>7} "
          f"{'kept':>5} {'GETs':>5} {'read':<6} note")


def _mode(r: WindowReport) -> str:
    """`count` (Kantata's count matched), `days` (narrowed by counts to ranges of days read),
    `full` (every page read); `-` when the window failed before it was checked."""
    return r.mode or "-"


def changed(r: WindowReport) -> bool:
    """Something was found or changed in the window (rows upserted, revived or marked deleted,
    deletion candidates kept by the probe), or it failed."""
    return bool(r.upserted or r.revived or r.marked_deleted or r.kept or r.error)


def render(reports: list[WindowReport], *, verbose: bool = False) -> str:
    """The windows where something was found or changed (every window with `verbose`), one
    line each under a header, then a summary line: windows by outcome, then the totals."""
    shown = reports if verbose else [r for r in reports if changed(r)]
    lines = [HEADER] if shown else []
    for r in shown:
        lines.append(f"{r.window.param:<23} {r.checked:>8} {r.upserted:>8} {r.revived:>7} "
                     f"{r.marked_deleted:>7} {r.kept:>5} {r.requests:>5} {_mode(r):<6} "
                     f"{r.error or ''}".rstrip())
    failed = sum(1 for r in reports if r.error)
    found = sum(1 for r in reports if changed(r) and not r.error)
    same = len(reports) - found - failed
    hidden = "" if verbose or not same else " (not listed; --verbose lists every window)"
    lines.append(f"{len(reports)} windows: {found} changed, {same} unchanged{hidden}, "
                 f"{failed} failed" + (" (retried next run)" if failed else "") + "; "
                 f"{sum(r.checked for r in reports)} checked, "
                 f"{sum(r.upserted for r in reports)} upserted, "
                 f"{sum(r.marked_deleted for r in reports)} marked deleted, "
                 f"{sum(r.requests for r in reports)} GETs ("
                 + ", ".join(f"{sum(1 for r in reports if r.mode == m)} {m}"
                             for m in ("count", "days", "full")) + ")")
    return "\n".join(lines)


async def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    lo, hi = settings.backfill_range(datetime.now(UTC).date())
    since, until = args.since or lo, args.until or hi
    async with open_deps(settings) as deps:
        async with deps.pool.acquire() as conn:
            await migrate.check_current(conn)
        reports = await reconcile_job.reconcile_range(deps, since, until, full=args.full)
    print(render(reports, verbose=args.verbose))
    # only another run leaves windows without a report here (a shutdown raises instead)
    left = len(month_windows(since, until, settings.backfill_window_months)) - len(reports)
    if left > 0:  # a trial: said only in a JSON warning on stderr
        print(f"{left} windows left to another syncd run that is reconciling them, or did "
              "since this one started (not checked twice)")
    return 1 if any(r.error for r in reports) else 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    return run_async(_reconcile(settings, args))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile", help="check date windows once: mark entries deleted in Kantata, fix "
                          "missing or older rows",
        description="Check date_performed windows against Kantata and compare them with the "
                    "mirror: entries gone remotely get deleted_at (never physically deleted), "
                    "missing or older rows are upserted. After an incremental pass, a window "
                    "whose live mirror count equals Kantata's count costs one request; the "
                    "others are narrowed to the days that differ and those are read. Windows "
                    "whose full read is due (SYNCD_RECONCILE_FULL_INTERVAL) are read in full. "
                    "Default range: the backfill range.")
    add_range_arguments(p)
    p.add_argument("--full", action="store_true",
                   help="read every window page by page now, whatever the counts say")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="list every window, not only those where something was found or "
                        "changed")
    p.set_defaults(func=_cmd)
