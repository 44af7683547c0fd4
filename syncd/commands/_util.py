"""Helpers shared by command modules: run a coroutine with clear one-line errors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from datetime import date
from typing import Any

import asyncpg

from syncd.errors import FatalError, RetriableError, redact


def parse_date(value: str) -> date:
    """argparse type for YYYY-MM-DD."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a YYYY-MM-DD date") from None


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run `coro`; turn expected failures into one line on stderr and exit code 1 (2 for
    configuration)."""
    try:
        return asyncio.run(coro)
    except ValueError as exc:  # missing token and similar configuration problems
        print(f"syncd: {redact(str(exc))}", file=sys.stderr)
        return 2
    except (FatalError, RetriableError) as exc:
        print(f"syncd: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"syncd: database or network error: {type(exc).__name__}: {redact(str(exc))}",
              file=sys.stderr)
        return 1
