"""Helpers shared by command modules: run a coroutine with clear one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from datetime import date
from typing import Any

import asyncpg

from syncd.errors import FatalError, RetriableError, redact


def at_least(least: int, most: int | None = None) -> Any:
    """An argparse type: a whole number of at least `least` (and at most `most`), else a
    usage error (exit 2) naming the option."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {n}")
        if most is not None and n > most:
            raise argparse.ArgumentTypeError(f"expected a number <= {most}, got {n}")
        return n
    return parse


def parse_date(value: str) -> date:
    """argparse type for a calendar date, YYYY-MM-DD."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date; use YYYY-MM-DD, e.g. 2026-01-31") from None


def add_range_arguments(p: argparse.ArgumentParser, *, what: str = "",
                        since_default: str = "the backfill start") -> None:
    """`--since`/`--until` over date_performed (`what`: e.g. " to re-read"), defaulting to
    the backfill range."""
    p.add_argument("--since", type=parse_date,
                   help=f"first date_performed date{what} (YYYY-MM-DD, inclusive; a calendar "
                        "date, no time zone applies: the day Kantata records the work on); "
                        f"default: {since_default}")
    p.add_argument("--until", type=parse_date,
                   help=f"last date_performed date{what} (YYYY-MM-DD, inclusive; a calendar "
                        "date, no time zone applies); default: today + SYNCD_LOOKAHEAD_DAYS")


#: The cancellation's message when SIGTERM stops a one-shot command (the run's recorded error).
SIGTERM_REASON = "stopped by SIGTERM; the next run resumes"


async def cancel_on_sigterm(coro: Coroutine[Any, Any, int]) -> int:
    """Await `coro` with SIGTERM cancelling it (CancelledError, message SIGTERM_REASON) as
    Ctrl-C does, instead of killing the process mid-write."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel, SIGTERM_REASON)
    except (ValueError, RuntimeError):  # not the main thread (embedded use): no handler
        return await coro
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class StdoutClosed(Exception):
    """The reader of stdout went away (`syncd outbox list --json | head`)."""


def emit(text: str) -> None:
    """Print `text` (and a newline) to stdout at once. Raises StdoutClosed when the reader has
    closed the pipe, which `run_async` turns into a quiet exit 0."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise StdoutClosed from None


def discard_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so nothing complains at exit."""
    _discard_stdout()


def _discard_stdout() -> None:
    # what is still buffered can never be written: point stdout at /dev/null so the
    # interpreter's final flush does not complain about the broken pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def database_error_line(exc: BaseException) -> str:
    """The one line for an error reaching or using PostgreSQL (secrets redacted). Kantata's
    network errors arrive as RetriableError: an OSError is PostgreSQL's connection, and a
    database or role that does not exist is the URL's too, so those name SYNCD_DATABASE_URL."""
    points_at_url = isinstance(exc, OSError | asyncpg.InvalidCatalogNameError
                               | asyncpg.InvalidAuthorizationSpecificationError
                               | asyncpg.InvalidPasswordError)
    hint = ("; check SYNCD_DATABASE_URL and that PostgreSQL is running there"
            if points_at_url else "")
    return f"syncd: database or network error: {type(exc).__name__}: {redact(str(exc))}{hint}"


#: What a one-shot command stopped by SIGTERM says by default.
RESUMES = "the next run resumes where this one stopped"


def run_async(coro: Coroutine[Any, Any, int], *, stopped: str = RESUMES) -> int:
    """Run `coro`; turn expected failures into one line on stderr and exit code 1 (2 for
    configuration). SIGTERM cancels the work like Ctrl-C does, so the run is recorded as
    interrupted (exit 143) instead of being left `running`; `stopped` says what happens to
    the work left."""
    try:
        return asyncio.run(cancel_on_sigterm(coro))
    except asyncio.CancelledError:
        print(f"syncd: stopped by SIGTERM; {stopped}", file=sys.stderr)
        return 143
    except (StdoutClosed, BrokenPipeError):  # the reader has what it wanted (`| head`)
        _discard_stdout()
        return 0
    except ValueError as exc:  # missing token and similar configuration problems
        print(f"syncd: {redact(str(exc))}", file=sys.stderr)
        return 2
    except (FatalError, RetriableError) as exc:
        print(f"syncd: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(database_error_line(exc), file=sys.stderr)
        return 1
