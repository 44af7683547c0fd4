"""`syncd run`: the daemon (pull, push, reconciliation, HTTP endpoint) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg

from syncd.daemon import Daemon
from syncd.errors import FatalError, MigrationError
from syncd.settings import Settings


def _cmd(_args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(Daemon(settings).run())
    except ValueError as exc:  # configuration, e.g. no token
        print(f"syncd: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"syncd: refusing to start: {exc}", file=sys.stderr)
        return 1
    except FatalError as exc:
        print(f"syncd: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"syncd: database error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the daemon: pull, push and reconcile on schedule, "
                                   "serve /healthz /readyz /metrics /status; stop with SIGTERM")
    p.set_defaults(func=_cmd)
