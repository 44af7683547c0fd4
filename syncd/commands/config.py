"""`syncd config [--reference]`: the effective configuration, secrets masked, with where each
value came from (env, file, default), and a warning when the Kantata token cannot be used
(none, an empty file, a line break in it: what `sync`, `run` and `push` refuse); `--reference` prints the markdown settings table that
deploy/README.md holds (generated from `syncd.settings.Settings`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from syncd.settings import Settings, describe, reference_table


def _cmd(args: argparse.Namespace, settings: Settings | None) -> int:
    if args.reference:
        print(reference_table(), end="")
        return 0
    assert settings is not None
    rows = describe(settings, os.environ)
    width = max(len(v) for v, _, _ in rows)
    for var, value, source in rows:
        print(f"{var:<{width}}  {value}  ({source})")
    try:  # read only by the commands that call Kantata (the outbox commands need none)
        settings.token()
    except (ValueError, OSError) as exc:
        print(f"syncd: warning: {exc}; commands that call Kantata will refuse to start",
              file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "config", help="show the effective configuration (secrets masked) and its sources",
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference", action="store_true",
                   help="print the settings reference (markdown) instead, without reading "
                        "any configuration")
    p.set_defaults(func=_cmd)
