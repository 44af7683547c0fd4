"""`syncd push`: drain the outbox once (push every due row to Kantata), print a summary, exit."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from syncd import migrate, push
from syncd.app import open_deps
from syncd.commands._util import run_async
from syncd.settings import Settings


async def _push(settings: Settings, as_json: bool) -> int:
    async with open_deps(settings) as deps:
        async with deps.pool.acquire() as conn:
            await migrate.check_current(conn)
        report = await push.push_once(deps)
    if as_json:
        print(orjson.dumps({"run_id": str(report.run_id), **report.as_dict()}).decode())
    else:
        print(report.summary())
        if report.failed or report.conflict:
            print("see them with: syncd outbox list --status failed --status conflict")
    return 1 if report.failed or report.conflict else 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    return run_async(_push(settings, args.json))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "push", help="push every due outbox row to Kantata once and exit",
        description="Drain syncd.outbox once: creates in bulks of 100, updates checked for "
                    "conflicts and sent one by one, deletes in bulks of 100. Rows that hit "
                    "429/5xx/timeouts stay pending with a back-off for a later run. Exit code: "
                    "0 when every row pushed ended done (or waits for a retry), 1 when some "
                    "ended failed or conflict (or on an error), 2 on bad configuration.")
    p.add_argument("--json", action="store_true", help="print the run's figures as JSON")
    p.set_defaults(func=_cmd)
