"""`syncd outbox list|retry|discard`: operators' view of `syncd.outbox` and the two repairs."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from syncd import outbox
from syncd.commands._util import at_least, emit, run_async
from syncd.settings import Settings

OPEN = ["pending", "in_flight", "failed", "conflict"]


def _age(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "-"
    s = int((now - ts).total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def render_rows(rows: list[dict[str, Any]], now: datetime, *, full: bool = False) -> str:
    """One line per row: id, op, entry, status, attempts, age, then the reason if any."""
    if not rows:
        return "no matching outbox rows"
    lines = [f"{'id':>8} {'op':<6} {'entry_id':>10} {'status':<9} {'tries':>5} {'age':>5}  "
             "result / last error"]
    for r in rows:
        why = r["last_error"] or r["result"] or ""
        if r["status"] == "pending" and r["next_attempt_at"] and r["next_attempt_at"] > now:
            why = f"(retry in {_age(now, r['next_attempt_at'])}) {why}"
        lease = r.get("lease_expires_at")
        if r["status"] == "in_flight" and lease is not None:  # a trial: said nothing
            why = (f"(held by {r.get('lease_owner')}, lease ends in {_age(now, lease)}) {why}"
                   if lease > now else
                   f"(lease of {r.get('lease_owner')} ended {_age(lease, now)} ago: the next "
                   f"push takes it over) {why}")
        if not full and len(why) > 160:
            why = why[:157] + "..."
        entry = "-" if r["entry_id"] is None else r["entry_id"]  # 0 is an id, not none
        lines.append(f"{r['id']:>8} {r['op']:<6} {entry:>10} {r['status']:<9} "
                     f"{r['attempts']:>5} {_age(r['created_at'], now):>5}  {why}")
    return "\n".join(lines)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(settings.dsn())
    try:
        if args.action == "list":
            statuses = None if "all" in (args.status or []) else (args.status or OPEN)
            rows = await outbox.list_rows(conn, statuses=statuses, limit=args.limit)
            if args.json:
                emit(orjson.dumps(rows, default=str, option=orjson.OPT_INDENT_2).decode())
            else:
                emit(render_rows(rows, datetime.now(UTC), full=args.full))
            return 0
        if args.action == "retry":
            changed = await outbox.retry_rows(conn, args.ids, all_failed=args.all_failed)
            emit(f"retried {len(changed)} row(s)" + (f": {_ids(changed)}" if changed else ""))
            return _report_skipped(args.ids, changed, "missing, or not failed or conflict")
        changed = await outbox.discard_rows(conn, args.ids)
        emit(f"discarded {len(changed)} row(s)" + (f": {_ids(changed)}" if changed else ""))
        return _report_skipped(args.ids, changed, "missing, in flight, done, or a create whose "
                                "earlier request may have reached Kantata")
    finally:
        await conn.close()


#: an outbox row id: a positive bigint (a larger one reached PostgreSQL: exit 1, a trial)
ROW_ID = at_least(1, 2**63 - 1)


def _ids(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)


def _report_skipped(asked: list[int], changed: list[int], why: str) -> int:
    skipped = sorted(set(asked) - set(changed))
    if skipped:
        emit(f"left alone ({why}): {_ids(skipped)}")
        return 1
    return 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "retry" and not args.ids and not args.all_failed:
        args.parser.error("give row ids or --all-failed")
    return run_async(_run(settings, args))


def register(sub: Any) -> None:
    p = sub.add_parser("outbox", help="list, retry or discard outbox rows",
                       description="Inspect and repair syncd.outbox (the local changes syncd "
                                   "pushes to Kantata). Needs only the database.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser(
        "list", help="show rows (default: pending, in_flight, failed and conflict)",
        description="Newest first. The last column is Kantata's reason for failed rows, the "
                    "remote change for conflict rows, the last temporary error and the time "
                    "to the next attempt for pending rows, and how done rows ended.")
    ls.add_argument("--status", action="append",
                    choices=["pending", "in_flight", "done", "failed", "conflict", "all"],
                    help="only rows in this status (repeatable; 'all' for every row)")
    ls.add_argument("--limit", type=at_least(1), default=100, help="at most this many rows (100)")
    ls.add_argument("--full", action="store_true", help="do not shorten long errors")
    ls.add_argument("--json", action="store_true",
                    help="every column as JSON, including payload and remote_entry")
    ls.set_defaults(func=_cmd, parser=ls)
    rt = actions.add_parser(
        "retry", help="push failed or conflict rows again",
        description="Puts failed and conflict rows back to pending with fresh attempts. A "
                    "conflict row is retried on top of the Kantata version it met, i.e. the "
                    "local change then wins over that remote change (a newer remote change "
                    "conflicts again). A create whose earlier send had an unknown outcome is "
                    "looked up in Kantata before it is sent again. Other rows are left alone.")
    rt.add_argument("ids", nargs="*", type=ROW_ID, metavar="ID", help="outbox row ids")
    rt.add_argument("--all-failed", action="store_true", help="every failed row (not conflicts)")
    rt.set_defaults(func=_cmd, parser=rt)
    dc = actions.add_parser(
        "discard", help="delete rows that will not be pushed",
        description="Deletes the given pending, failed or conflict rows from the outbox: the "
                    "change is dropped, Kantata is not touched. Rows in flight, done rows "
                    "(history) and creates whose earlier request may have reached Kantata are "
                    "left alone.")
    dc.add_argument("ids", nargs="+", type=ROW_ID, metavar="ID", help="outbox row ids")
    dc.set_defaults(func=_cmd, parser=dc)
