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


DESCRIPTION = """Run the daemon until SIGTERM or SIGINT: pull (leader only) every
SYNCD_PULL_INTERVAL seconds, push the outbox every SYNCD_PUSH_INTERVAL seconds and at once on
NOTIFY, reconcile and prune (leader only), and serve /healthz, /readyz, /metrics and /status.

It takes no options besides --help: everything comes from settings, read from SYNCD_*
environment variables, then from the TOML file named by SYNCD_CONFIG_FILE, then the defaults
(`syncd config` shows the effective values, `syncd config --reference` all of them). The ones
it needs or uses most:

{settings}

At start it serves HTTP, waits for PostgreSQL, refuses to start (exit 1) while migrations are
pending (run `syncd migrate`), then starts the jobs and tells systemd READY=1. The first
SIGTERM or SIGINT drains for up to SYNCD_SHUTDOWN_GRACE seconds and exits 0; a second one
exits at once (130 / 143). Exit codes: 0 clean shutdown, 1 refused to start, 2 configuration
error. deploy/README.md, Operations, has the details."""

# (setting, what for) shown by `syncd run --help`, with the defaults read from Settings
RUN_SETTINGS = (
    ("database_url", "the database (else libpq's PG* variables)"),
    ("kantata_token", "the token, or SYNCD_KANTATA_TOKEN_FILE"),
    ("kantata_base_url", "Kantata's API"),
    ("http_host", "address of /healthz /readyz /metrics /status"),
    ("http_port", "their port"),
    ("pull_interval", "seconds between pulls"),
    ("push_interval", "seconds between outbox polls"),
    ("shutdown_grace", "seconds to drain after SIGTERM"),
    ("log_level", "DEBUG, INFO, WARNING or ERROR"),
    ("log_format", "json, console or auto"),
)


def _settings_lines() -> str:
    fields = Settings.model_fields
    lines = []
    for name, what in RUN_SETTINGS:
        default = fields[name].default
        shown = "unset" if default is None else f"{default:g}" if isinstance(
            default, float) else str(default)
        lines.append(f"  SYNCD_{name.upper():<22} {what} (default {shown})")
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the daemon: pull, push and reconcile on schedule, "
                                   "serve /healthz /readyz /metrics /status; stop with SIGTERM",
                       description=DESCRIPTION.format(settings=_settings_lines()))
    p.set_defaults(func=_cmd)
