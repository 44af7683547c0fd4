"""`syncd status [--json]`: watermark, rows, windows, last runs and their errors, outbox."""

from __future__ import annotations

import argparse
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from syncd import budget, budget_store, migrate, mirror_indexes, store
from syncd.commands._util import run_async
from syncd.settings import Settings


def _fmt(v: Any) -> str:
    if isinstance(v, datetime | date):
        return v.isoformat()
    return "-" if v is None else str(v)


def render_text(snap: dict[str, Any]) -> str:
    """Human-readable status, one fact per line."""
    e = snap.get("entries", {})
    lines = [
        f"watermark:        {_fmt(snap.get('watermark'))}",
        f"settled through:  {_fmt(snap.get('settled'))}",
        f"entries:          {e.get('live', 0)} live, {e.get('deleted', 0)} marked deleted "
        f"(last write {_fmt(e.get('last_write'))})",
        "windows:          " + (", ".join(f"{k}={v}" for k, v in snap["windows"].items())
                                 or "none yet"),
        f"altered records:  {snap.get('altered_records', 0)}"
        + (" (text PostgreSQL cannot hold was replaced: kantata.text_alterations)"
           if snap.get("altered_records") else ""),
        f"rejected records: {snap.get('rejected_records', 0)}"
        + (" (not in the mirror: totals may be short; syncd.rejected_records)"
           if snap.get("rejected_records") else ""),
    ]
    for r in snap.get("rejected", []):
        lines.append(f"  entry {_fmt(r['entry_id'])}: {r['reason']} "
                     f"(seen {r['occurrences']}x, last {_fmt(r['last_seen'])})")
    if "outbox" in snap:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(snap["outbox"].items())) or "empty"
        lines.append(f"outbox:           {counts} (oldest pending "
                     f"{_fmt(snap.get('outbox_oldest_pending'))})")
    limits = snap.get("rate_limits")
    if limits is not None and not limits:
        lines.append("rate limit:       none learned (no 429 has taught one yet: a limit is "
                     "learned from 429s after requests Kantata admitted)")
    for b in limits or []:
        lines.append(f"rate limit:       {b['limit_requests']} requests per "
                     f"{b['window_seconds']:g} s ({b['per_minute']}/min) learned from 429s of "
                     f"{b['kantata_base_url']}, last 429 {_fmt(b['last_throttled_at'])}; "
                     f"{b['relaxed_by']}")
    for d in snap.get("deferred_indexes", []):
        lines.append(f"deferred index:   {d['index_name']} (dropped {_fmt(d['deferred_at'])} "
                     "while a backfill loads the empty mirror; "
                     + ("built when that backfill ends)" if d["owner_live"] else
                        "its run is gone: the next syncd job start builds it)"))
    for job, at in sorted(snap.get("last_success", {}).items()):
        lines.append(f"last ok {job + ':':<10} {_fmt(at)}")
    lines.append("recent runs:")
    for r in snap.get("runs", []):
        lines.append(f"  {_fmt(r['started_at'])} {r['job']:<10} {r['status']:<11} "
                     f"pages={r['pages']} requests={r['requests']} rows={r['rows_upserted']}"
                     + (f" error={r['error']}" if r["error"] else ""))
    return "\n".join(lines)


def rate_limits(saved: list[budget_store.Saved], forget_after: float) -> list[dict[str, Any]]:
    """The learned rate limits (`syncd.request_budget`) as `syncd status` shows them: the
    limit, when Kantata's last 429 taught or confirmed it, and how it is relaxed (raised
    `budget.RAISE` after `budget.PROBE_AFTER_WINDOWS` windows held back at it without a 429;
    forgotten `forget_after` seconds after the last 429, 0: never)."""
    out = []
    for s in saved:
        learned = s.learned
        forget_at = (s.last_throttled_at + timedelta(seconds=forget_after)
                     if forget_after and s.last_throttled_at else None)
        out.append({
            "kantata_base_url": s.base_url, "limit_requests": learned.limit,
            "window_seconds": learned.window, "per_minute": round(learned.per_minute, 1),
            "last_throttled_at": s.last_throttled_at, "updated_at": s.updated_at,
            "forget_at": forget_at,
            "relaxed_by": (f"raised {budget.RAISE:.0%} after {budget.PROBE_AFTER_WINDOWS} "
                           "windows held back at it without a 429, then each window; "
                           + (f"forgotten at {forget_at.isoformat()} without another 429 "
                              "(SYNCD_RATE_LIMIT_FORGET_AFTER)" if forget_at else
                              "never forgotten (SYNCD_RATE_LIMIT_FORGET_AFTER=0)"))})
    return out


async def _status(settings: Settings, as_json: bool) -> int:
    conn = await asyncpg.connect(settings.dsn())
    try:
        await migrate.check_current(conn)
        snap = await store.status_snapshot(conn)
        snap["rate_limits"] = rate_limits(await budget_store.load_all(conn),
                                          settings.rate_limit_forget_after)
        snap["deferred_indexes"] = [
            {"index_name": d.index_name, "deferred_at": d.deferred_at,
             "owner_live": d.owner_live}
            for d in await mirror_indexes.deferred_indexes(conn)]
    finally:
        await conn.close()
    if as_json:
        print(orjson.dumps(snap, default=str, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_text(snap))
    return 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    return run_async(_status(settings, args.json))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="show watermark, rows, last runs and errors",
        description="""Show what the mirror holds and how fresh it is, from the database only
(Kantata is not asked), one fact per line:

  watermark        every Kantata create and edit up to this instant is in the mirror (the
                   newest updated_at pulled)
  settled through  changes up to this instant were read by a complete pass at least
                   SYNCD_OVERLAP seconds after they happened; no later pull reads them again
                   (the next pull starts at max(watermark - SYNCD_OVERLAP, settled through))
  entries          live rows, rows marked deleted, and the last write to the mirror
  windows          backfill and reconcile windows by status (a window left running by a
                   process that is gone shows as pending: the next run resumes it)
  altered records  stored with text PostgreSQL cannot hold replaced
  rejected records not stored at all (totals may be short): syncd.rejected_records
  outbox           rows by status and the oldest pending one
  rate limit       the limit learned from Kantata's 429s (syncd.request_budget), its last
                   429, and how it is relaxed: raised 5 % after 10 windows at it without a
                   429, forgotten SYNCD_RATE_LIMIT_FORGET_AFTER after the last 429
  deferred index   (only while there are any) an index of kantata.time_entries dropped
                   while a backfill loads an empty mirror, built when it ends
                   (syncd.deferred_indexes); queries on its columns are slower until then
  last ok          each job's last successful run
  recent runs      the latest runs with their figures and errors; a run whose process is
                   gone (killed) shows as interrupted, "abandoned: ..."

Deletions in Kantata follow with reconciliation (syncd.window_freshness). Exit code 1 when the
database cannot be reached or migrations are pending.""")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd)
