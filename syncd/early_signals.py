"""SIGTERM/SIGINT caught from the first instant of `syncd run` (issue #23).

Importing syncd's dependencies takes about half a second; until the daemon's event loop
installs its own handlers, Python's default dispositions apply and a SIGTERM (systemd
stopping a unit that has just started, `docker stop` right after `docker start`) killed the
process with status 143 and no log line, while the docs promise that a first SIGTERM exits 0.
`install()` is the first thing `syncd run` does (stdlib only, no other syncd import): it only
remembers a first signal, which `Daemon.run` then handles as its own (log line, exit 0); a
second one exits at once with 128 + signal number, as during a shutdown.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

__all__ = ["SIGNALS", "install", "pending", "restore"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_pending: list[int] = []
_previous: dict[int, object] = {}


def _remember(signum: int, _frame: FrameType | None) -> None:
    if _pending:  # a second signal before the daemon took over: immediate exit
        os._exit(128 + signum)
    _pending.append(signum)


def install() -> None:
    """Catch SIGTERM and SIGINT from now on (main thread only; idempotent)."""
    for sig in SIGNALS:
        prev = signal.signal(sig, _remember)
        if prev is not _remember:
            _previous[sig] = prev


def pending() -> int | None:
    """The first signal caught since `install()` (and not yet taken), else None; taking it
    clears it."""
    return _pending.pop(0) if _pending else None


def restore() -> None:
    """Put back the dispositions `install()` replaced (tests)."""
    for sig, prev in _previous.items():
        signal.signal(sig, prev)  # type: ignore[arg-type]
    _previous.clear()
    _pending.clear()
