"""`syncd migrate [--dry-run]`: apply pending SQL migrations (idempotent, safe concurrently)."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from syncd import migrate
from syncd.commands._util import run_async
from syncd.settings import Settings


async def _migrate(settings: Settings, dry_run: bool) -> int:
    conn = await asyncpg.connect(settings.dsn())
    try:
        if dry_run:
            todo = await migrate.pending(conn)
            for m in todo:
                print(f"-- {m.name}\n{m.sql}")
            print(f"-- {len(todo)} migration(s) pending")
            return 0
        done = await migrate.apply(conn)
        print(f"applied {len(done)} migration(s)" + "".join(f"\n  {m.name}" for m in done)
              if done else "database is up to date")
        return 0
    finally:
        await conn.close()


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    return run_async(_migrate(settings, args.dry_run))


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply pending database migrations",
                       description="Apply pending migrations from migrations/ (forward only, "
                                   "checksummed, under an advisory lock).")
    p.add_argument("--dry-run", action="store_true", help="print the pending SQL, apply nothing")
    p.set_defaults(func=_cmd)
