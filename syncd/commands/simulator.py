"""`syncd simulator`: serve the Kantata OX time-entries simulator (see syncd/simulator/README.md)."""

from __future__ import annotations

import argparse
from typing import Any

from syncd.settings import Settings


def _cmd(args: argparse.Namespace, settings: Settings | None) -> int:
    from syncd.simulator import cli as simcli

    return simcli.run(args)


def register(sub: Any) -> None:
    from syncd.simulator import cli as simcli

    p = sub.add_parser("simulator", help="serve a fake Kantata OX time-entries API with "
                                         "seeded data (for tests and rehearsals)",
                       description="A faithful, fault-injecting simulator of Kantata OX's "
                                   "time-entries API under /api/v1, with a control API under "
                                   "/_sim.")
    simcli.configure_parser(p)
    p.set_defaults(func=_cmd, needs_settings=False)
