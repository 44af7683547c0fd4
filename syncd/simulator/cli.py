"""``syncd simulator``: serve a seeded Kantata OX simulator until SIGINT/SIGTERM.

The main ``syncd`` CLI mounts this with ``configure_parser(subparser)`` and calls ``run(args)``.
Stand-alone: ``python -m syncd.simulator.cli --port 8089 --token T --entries 10000``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys
import time
from datetime import date
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from .config import ContractConfig, SimConfig
from .core import Simulator
from .app import build_app

log = logging.getLogger("syncd.simulator")


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _lock_date(value: str) -> date | str | None:
    if value in ("auto", "none", ""):
        return None if value in ("none", "") else "auto"
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, 'auto' or 'none', got {value!r}")


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown IANA time zone {value!r}") from None
    return value


def _non_negative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected >= 0, got {n}")
    return n


def _positive(value: str) -> int:
    n = _non_negative(value)
    if n == 0:
        raise argparse.ArgumentTypeError("expected >= 1")
    return n


def _switch(value: str) -> tuple[str, object]:
    """``NAME`` (a boolean switch turned on) or ``NAME=VALUE`` -> (name, parsed value)."""
    name, sep, raw = value.partition("=")
    name = name.strip().replace("-", "_")
    default = ContractConfig().to_dict()
    if name not in default:
        raise argparse.ArgumentTypeError(
            f"unknown contract switch {name!r} (known: {', '.join(default)})")
    if isinstance(default[name], bool):
        if not sep or raw.lower() in ("true", "1", "on", "yes"):
            return name, True
        if raw.lower() in ("false", "0", "off", "no"):
            return name, False
        raise argparse.ArgumentTypeError(f"{name} takes true or false, got {raw!r}")
    if not sep:
        raise argparse.ArgumentTypeError(f"{name} needs a value: {name}=VALUE")
    try:
        ContractConfig.from_dict({name: raw})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, raw


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the simulator options to ``p`` (every option has help text)."""
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; the simulator has no TLS)")
    p.add_argument("--port", type=int, default=8089, help="TCP port (default 8089)")
    p.add_argument("--token", default="sim-token",
                   help="the bearer token accepted on /api/v1 (default sim-token)")
    p.add_argument("--entries", type=_non_negative, default=10_000,
                   help="number of time entries to seed (default 10000; 1000000 works)")
    p.add_argument("--reference-entries", type=_non_negative, default=None,
                   help="size workspaces, users and stories as for this many entries (default: "
                        "--entries); holds a page's side-loads constant across --entries")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the deterministic data (default 1): ids, users, workspaces, "
                        "minutes, notes and every other field but the dates are the same for "
                        "a seed on any day; the dates (date_performed, created_at, "
                        "updated_at, and approved/invoiced, which follow an entry's age) end "
                        "at --anchor")
    p.add_argument("--anchor", type=_date, default=None,
                   help="the day the seed data ends, YYYY-MM-DD, not after today (default: "
                        "today in --timezone, so dates move with the day by whole days, never "
                        "with the time of day); set it to get the same dates on any day too")
    p.add_argument("--timezone", type=_zone, default="America/Los_Angeles",
                   help="IANA zone of the account; timestamps carry its UTC offset "
                        "(default America/Los_Angeles)")
    p.add_argument("--max-per-page", type=_positive, default=200,
                   help="silent clamp for per_page/limit (default 200, Kantata's documented max)")
    p.add_argument("--lock-date", type=_lock_date, default="auto",
                   help="account lock date YYYY-MM-DD, 'auto' (a Saturday ~60 days ago, default) "
                        "or 'none'")
    p.add_argument("--rate-limit-per-minute", type=_positive, default=None,
                   help="per-token request budget per minute answered with 429 (default off)")
    p.add_argument("--retry-after", type=float, default=None,
                   help="seconds to send in Retry-After on 429 (default: no header, like Kantata)")
    p.add_argument("--hang-seconds", type=float, default=30.0,
                   help="how long a 'timeout' fault hangs before closing (default 30)")
    p.add_argument("--contract", type=_switch, action="append", default=[],
                   metavar="SWITCH[=VALUE]",
                   help="turn on a contract switch (repeatable), e.g. --contract omit_object_ids "
                        "--contract count_mode=negative; see the simulator README (default: "
                        "all off; PUT /_sim/contract changes them at run time)")


def build_simulator(args: argparse.Namespace) -> Simulator:
    """Create the Simulator described by parsed ``args``; raises ValueError on a bad
    ``--contract`` value."""
    contract = ContractConfig.from_dict(dict(getattr(args, "contract", None) or []))
    return Simulator(SimConfig(
        token=args.token, entries=args.entries, reference_entries=args.reference_entries,
        seed=args.seed, anchor=getattr(args, "anchor", None), timezone=args.timezone,
        max_per_page=args.max_per_page, lock_date=args.lock_date,
        rate_limit_per_minute=args.rate_limit_per_minute, retry_after=args.retry_after,
        hang_seconds=args.hang_seconds, contract=contract))


async def _serve(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    sim = build_simulator(args)
    seeded = time.perf_counter() - started
    runner = web.AppRunner(build_app(sim), handle_signals=False, access_log=None,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = f"[{args.host}]" if ":" in args.host else args.host
    log.info("Kantata simulator serving http://%s:%d/api/v1 (control /_sim, %d entries seeded "
             "in %.1fs, lock date %s)", host, args.port, sim.store.live_count, seeded,
             sim.lock_date or "none")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code: 0 after a signal, 1 when it
    cannot serve (port taken, address not local), said in one line on stderr."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return asyncio.run(_serve(args))
    except OSError as e:
        # one plain line and exit 1 (a new-user trial saw only a log event): the port is taken,
        # the host is not an address of this machine, ...
        why = (e.strerror or str(e)).lower() if e.errno is not None else str(e)
        print(f"syncd simulator: cannot serve on {args.host}:{args.port}: {why} "
              "(choose another --port)" if e.errno == errno.EADDRINUSE else
              f"syncd simulator: cannot serve on {args.host}:{args.port}: {why}",
              file=sys.stderr, flush=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m syncd.simulator.cli``)."""
    p = argparse.ArgumentParser(prog="syncd simulator", description=__doc__)
    configure_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
