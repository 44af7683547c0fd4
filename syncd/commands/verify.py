"""`syncd verify [--since DATE] [--until DATE] [--json]`: compare the mirror with Kantata window
by window without writing anything. Exit 0 identical, 1 drift, 2 error (nothing compared
wrongly, but something could not be compared: configuration, connection, token, a window that
could not be read)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson

from syncd import migrate, reconcile_job
from syncd.app import open_deps
from syncd.commands._util import add_range_arguments, cancel_on_sigterm, database_error_line
from syncd.errors import SyncdError
from syncd.reconcile import Summary, WindowDiff
from syncd.reconcile_job import VerifyResult
from syncd.settings import Settings

IDENTICAL, DRIFT, ERROR = 0, 1, 2
SHOWN_IDS = 50  # per list in text output; --json lists every id


def exit_code(res: VerifyResult) -> int:
    """1 when any window differs (a definite finding), else 2 when a window could not be read,
    else 0."""
    if res.diffs:
        return DRIFT
    return ERROR if res.errors else IDENTICAL


def _ts(v: datetime | None) -> str:
    return v.astimezone(UTC).isoformat() if v else "-"


def _summary(s: Summary) -> str:
    if s.unreadable:
        return (f"{s.count} entries ({s.unreadable} could not be read: their minutes are "
                f"unknown), {s.minutes} min in the {s.count - s.unreadable} read, max updated_at "
                f"{_ts(s.max_updated_at)}")
    return f"{s.count} entries, {s.minutes} min, max updated_at {_ts(s.max_updated_at)}"


def _ids(label: str, ids: tuple[int, ...]) -> list[str]:
    if not ids:
        return []
    more = f" … and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return [f"  {label} ({len(ids)}): {', '.join(map(str, ids[:SHOWN_IDS]))}{more}"]


def render_text(res: VerifyResult, since: date, until: date) -> str:
    """Differences and unreadable windows, one block per window, then a summary line."""
    lines: list[str] = []
    for d in res.diffs:
        lines.append(f"DRIFT {d.window.param}")
        lines.append(f"  mirror:  {_summary(d.mirror)}")
        lines.append(f"  kantata: {_summary(d.kantata)}")
        lines += _ids("missing locally", d.missing_locally)
        lines += _ids("extra locally", d.extra_locally)
        for s in d.stale[:SHOWN_IDS]:
            differ = f" (differ: {', '.join(s.fields)})" if s.fields else ""
            lines.append(f"  stale {s.id}: mirror {_ts(s.mirror_updated_at)} "
                         f"{s.mirror_minutes} min, kantata {_ts(s.kantata_updated_at)} "
                         f"{s.kantata_minutes} min{differ}")
        if len(d.stale) > SHOWN_IDS:
            lines.append(f"  … and {len(d.stale) - SHOWN_IDS} more stale")
    for w, err in res.errors:
        lines.append(f"ERROR {w.param}: {err}")
    verdict = {IDENTICAL: "identical", DRIFT: "DRIFT", ERROR: "INCOMPLETE"}[exit_code(res)]
    lines.append(f"verify {since}..{until}: {verdict}; {len(res.windows)} windows, "
                 f"{len(res.diffs)} differ, {len(res.errors)} could not be read "
                 f"({res.requests} GETs)")
    return "\n".join(lines)


def _diff_json(d: WindowDiff) -> dict[str, Any]:
    def summ(s: Summary) -> dict[str, Any]:
        return {"count": s.count, "minutes": s.minutes, "unreadable": s.unreadable,
                "max_updated_at": _ts(s.max_updated_at) if s.max_updated_at else None}

    return {"window": d.window.param, "mirror": summ(d.mirror), "kantata": summ(d.kantata),
            "missing_locally": list(d.missing_locally),
            "extra_locally": list(d.extra_locally),
            "stale": [{"id": s.id, "mirror_updated_at": _ts(s.mirror_updated_at),
                       "kantata_updated_at": _ts(s.kantata_updated_at),
                       "mirror_minutes": s.mirror_minutes, "kantata_minutes": s.kantata_minutes,
                       "fields": list(s.fields)}
                      for s in d.stale]}


def render_json(res: VerifyResult, since: date, until: date) -> str:
    """The same facts as `render_text`, every id included."""
    doc = {"since": since.isoformat(), "until": until.isoformat(),
           "identical": res.identical, "exit_code": exit_code(res),
           "windows": len(res.windows), "requests": res.requests,
           "differences": [_diff_json(d) for d in res.diffs],
           "errors": [{"window": w.param, "error": e} for w, e in res.errors]}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    lo, hi = settings.backfill_range(datetime.now(UTC).date())
    since, until = args.since or lo, args.until or hi
    async with open_deps(settings) as deps:
        async with deps.pool.acquire() as conn:
            await migrate.check_current(conn)
        res = await reconcile_job.verify_range(deps, since, until)
    print(render_json(res, since, until) if args.json else render_text(res, since, until))
    return exit_code(res)


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    if args.since and args.until and args.until < args.since:
        print("syncd: --until is before --since", file=sys.stderr)
        return ERROR
    try:
        return asyncio.run(cancel_on_sigterm(_verify(settings, args)))
    except asyncio.CancelledError:  # a trial: it exited 143 saying nothing
        print("syncd: stopped by SIGTERM before verify finished; nothing was compared to the "
              "end (verify writes nothing)", file=sys.stderr)
        return 143
    except ValueError as exc:  # missing token and similar configuration problems
        print(f"syncd: {exc}", file=sys.stderr)
    except SyncdError as exc:
        print(f"syncd: {type(exc).__name__}: {exc}", file=sys.stderr)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(database_error_line(exc), file=sys.stderr)
    return ERROR


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify", help="compare the mirror with Kantata (read-only); exit 0 identical, "
                       "1 drift, 2 error",
        description="Compare the live mirror rows with Kantata window by window (count, sum of "
                    "time_in_minutes, max updated_at; then ids where they differ) and print the "
                    "differences. Writes nothing. Exit codes: 0 identical, 1 drift, 2 error. "
                    "Default range: the backfill range.")
    add_range_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd)
