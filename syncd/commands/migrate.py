"""`syncd migrate [--dry-run]`: apply pending SQL migrations (idempotent, safe concurrently)."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from syncd import migrate, mirror_indexes
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
            waiting = await mirror_indexes.deferred_indexes(conn)
            if waiting:  # `syncd migrate` builds these before any migration
                print(f"-- {len(waiting)} index(es) of kantata.time_entries deferred by a "
                      "backfill, built first: " + ", ".join(d.index_name for d in waiting))
            return 0
        # what apply() would build first, built here so that it can be said
        built = await mirror_indexes.build_deferred_indexes(conn, every=True,
                                                            reason="syncd migrate")
        done = await migrate.apply(conn)
        if built:
            print(f"built {len(built)} index(es) of kantata.time_entries a backfill had "
                  "deferred: " + ", ".join(built))
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
