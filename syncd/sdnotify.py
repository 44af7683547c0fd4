"""Minimal, dependency-free systemd ``sd_notify`` client and a progress-gated watchdog.

Protocol (see ``sd_notify(3)``): the service manager passes ``NOTIFY_SOCKET`` (a
filesystem path, or an abstract-namespace name written with a leading ``@``) and
the service sends newline-separated ``KEY=VALUE`` assignments as single
``AF_UNIX``/``SOCK_DGRAM`` datagrams, e.g. ``b"READY=1"``.

Everything here is a no-op when ``NOTIFY_SOCKET`` is unset (running in a
terminal, under Docker, in tests), so callers never need to branch on it.
Send failures are swallowed and reported through the return value: losing a
status update must never take the daemon down.

The watchdog is deliberately *not* fed on a timer. :class:`ProgressWatchdog`
only allows ``WATCHDOG=1`` while jobs report progress, so a daemon whose event
loop is alive but whose sync is stuck stops pinging and is restarted by
systemd (``WatchdogSec=`` in ``deploy/syncd.service``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "ProgressWatchdog"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager over ``NOTIFY_SOCKET``.

    Build it with :meth:`from_env`. ``address`` is the raw ``NOTIFY_SOCKET``
    value (``None``/empty disables every method). ``watchdog_usec`` and
    ``watchdog_pid`` are the raw ``WATCHDOG_USEC`` / ``WATCHDOG_PID`` values.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        self._address = address or None
        self._target = _socket_address(self._address) if self._address else None
        if self._address and self._target is None:
            log.warning("unsupported NOTIFY_SOCKET %r; systemd notifications disabled",
                        self._address)
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``."""
        return cls(
            environ.get("NOTIFY_SOCKET"),
            watchdog_usec=environ.get("WATCHDOG_USEC"),
            watchdog_pid=environ.get("WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._target is not None

    # -- protocol messages -------------------------------------------------

    def ready(self) -> bool:
        """``READY=1``: startup finished (``Type=notify`` units become "active")."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """``STATUS=<text>``: free-form one-line status shown by ``systemctl status``.

        Newlines would start a new assignment in the protocol, so they are
        folded into spaces.
        """
        one_line = " ".join(text.splitlines())
        return self.notify(f"STATUS={one_line}")

    def stopping(self) -> bool:
        """``STOPPING=1``: graceful shutdown has begun."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive ping. Prefer gating it with :class:`ProgressWatchdog`."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Watchdog timeout in **seconds**, or ``None`` when the watchdog is off.

        Derived from ``WATCHDOG_USEC`` (microseconds). ``None`` as well when
        ``WATCHDOG_PID`` is set to a pid other than ours (the variables were
        meant for a parent and merely inherited), or when either value is
        malformed. systemd expects a ping at least once per interval; the
        usual advice, followed by :class:`ProgressWatchdog`, is every half.
        """
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 1_000_000

    # -- transport ---------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Sends ``assignments`` joined by newlines as one datagram.

        Returns True if a datagram was sent, False if notifications are
        disabled or the send failed (the failure is logged at debug level).
        """
        if self._target is None:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._target)
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", payload, exc)
            return False
        return True

    def close(self) -> None:
        """Releases the client socket (safe to call more than once)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _socket_address(address: str) -> str | bytes | None:
    """Maps a ``NOTIFY_SOCKET`` value to a ``sendto`` address; ``None`` if unsupported.

    ``@name`` is Linux's abstract namespace (leading NUL byte on the wire).
    ``vsock:`` addresses (systemd >= 254, for VMs) are not supported.
    """
    if address.startswith("@"):
        return b"\0" + address[1:].encode("utf-8")
    if address.startswith("/"):
        return address
    return None


class ProgressWatchdog:
    """Decides when to send ``WATCHDOG=1``: only while work is progressing.

    Pure logic: every time argument is a monotonic timestamp in **seconds**
    (e.g. ``time.monotonic()``) supplied by the caller; nothing here reads a
    clock or does I/O (except :meth:`pump`, which only forwards to a Notifier).

    The daemon calls :meth:`progress` whenever a job moves forward (a page
    fetched, a batch pushed, an idle poll cycle completed successfully) and
    calls :meth:`tick` periodically (more often than ``interval / 2``); when
    ``tick`` returns True it sends ``WATCHDOG=1``.

    - ``interval``: the systemd watchdog timeout in seconds
      (:meth:`Notifier.watchdog_interval`). Pings are rate-limited to one per
      ``interval / 2``.
    - ``stall_after``: seconds without progress after which pings stop. Set
      it above the longest legitimate gap between progress events (the poll
      interval plus a slow request). A daemon that stalls is then killed by
      systemd at most ``stall_after + interval`` seconds after its last
      progress.
    - ``now``: optional start time; if given it counts as progress, giving
      the first job ``stall_after`` seconds to report in. Without it nothing
      is fed until the first :meth:`progress`.
    """

    def __init__(self, interval: float, stall_after: float, *, now: float | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if stall_after <= 0:
            raise ValueError(f"stall_after must be > 0 seconds, got {stall_after!r}")
        self.interval = float(interval)
        self.stall_after = float(stall_after)
        self._last_progress: float | None = now
        self._last_ping: float | None = None

    @property
    def min_gap(self) -> float:
        """Minimum seconds between two pings: half the watchdog interval."""
        return self.interval / 2

    @property
    def last_progress(self) -> float | None:
        """Timestamp (seconds) of the most recent progress, or None."""
        return self._last_progress

    def progress(self, now: float) -> None:
        """Records that some job made progress at ``now`` (seconds)."""
        if self._last_progress is None or now > self._last_progress:
            self._last_progress = now

    def stalled(self, now: float) -> bool:
        """True if no progress was recorded within the last ``stall_after`` seconds."""
        return self._last_progress is None or now - self._last_progress > self.stall_after

    def tick(self, now: float) -> bool:
        """Returns True if ``WATCHDOG=1`` should be sent at ``now`` (and records the ping)."""
        if self.stalled(now):
            return False
        if self._last_ping is not None and now - self._last_ping < self.min_gap:
            return False
        self._last_ping = now
        return True

    def pump(self, notifier: Notifier, now: float) -> bool:
        """Convenience: ``tick(now)`` and, if due, ``notifier.watchdog()``. Returns whether sent."""
        return self.tick(now) and notifier.watchdog()
