"""syncd.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from syncd.sdnotify import Notifier, ProgressWatchdog


class FakeSystemd:
    """A bound SOCK_DGRAM socket playing the service manager's NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def assert_silent(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(4096)
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def path_socket() -> Iterator[FakeSystemd]:
    # sun_path is limited to 108 bytes; pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield FakeSystemd(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_socket() -> Iterator[FakeSystemd]:
    name = f"syncd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        yield FakeSystemd(sock, "@" + name)
    finally:
        sock.close()


# --- disabled -------------------------------------------------------------------------------


def test_without_notify_socket_everything_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.stopping() is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None


def test_empty_notify_socket_is_disabled() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


@pytest.mark.parametrize("address", ["vsock:2:1234", "relative/path"])
def test_unsupported_address_disables_instead_of_raising(address: str) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert not n.enabled
    assert n.ready() is False


def test_from_env_defaults_to_process_environment(
    monkeypatch: pytest.MonkeyPatch, path_socket: FakeSystemd
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.env_value)
    with Notifier.from_env() as n:
        assert n.ready() is True
    assert path_socket.recv() == b"READY=1"


# --- datagrams ------------------------------------------------------------------------------


def test_path_socket_receives_exact_datagrams(path_socket: FakeSystemd) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": path_socket.env_value}) as n:
        assert n.enabled
        assert n.ready() is True
        assert n.status("pulling window 2024-01 page 3") is True
        assert n.watchdog() is True
        assert n.stopping() is True
    assert path_socket.recv() == b"READY=1"
    assert path_socket.recv() == b"STATUS=pulling window 2024-01 page 3"
    assert path_socket.recv() == b"WATCHDOG=1"
    assert path_socket.recv() == b"STOPPING=1"
    path_socket.assert_silent()


def test_abstract_socket_receives_exact_datagrams(abstract_socket: FakeSystemd) -> None:
    assert abstract_socket.env_value.startswith("@")
    with Notifier.from_env({"NOTIFY_SOCKET": abstract_socket.env_value}) as n:
        assert n.ready() is True
        assert n.status("idle") is True
        assert n.stopping() is True
    assert abstract_socket.recv() == b"READY=1"
    assert abstract_socket.recv() == b"STATUS=idle"
    assert abstract_socket.recv() == b"STOPPING=1"


def test_status_folds_newlines_so_it_stays_one_assignment(path_socket: FakeSystemd) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": path_socket.env_value}) as n:
        n.status("line one\nREADY=1\r\nthree")
    assert path_socket.recv() == b"STATUS=line one READY=1 three"


def test_status_is_utf8(path_socket: FakeSystemd) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": path_socket.env_value}) as n:
        n.status("synced 12 entries \u2192 ok")
    assert path_socket.recv() == "STATUS=synced 12 entries \u2192 ok".encode()


def test_notify_sends_several_assignments_in_one_datagram(path_socket: FakeSystemd) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": path_socket.env_value}) as n:
        assert n.notify("READY=1", "STATUS=started") is True
    assert path_socket.recv() == b"READY=1\nSTATUS=started"
    path_socket.assert_silent()


def test_vanished_socket_returns_false_and_does_not_raise(path_socket: FakeSystemd) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": path_socket.env_value})
    path_socket.sock.close()
    os.unlink(path_socket.env_value)
    assert n.ready() is False
    assert n.watchdog() is False
    n.close()
    n.close()  # idempotent


# --- watchdog interval ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 120.0),
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 120.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_seconds(env: dict[str, str], expected: float | None) -> None:
    assert Notifier.from_env(env).watchdog_interval() == expected


# --- ProgressWatchdog (pure logic: time is passed in) ---------------------------------------


def test_fed_while_progressing_rate_limited_to_half_the_interval() -> None:
    wd = ProgressWatchdog(interval=120, stall_after=300)
    assert wd.min_gap == 60
    pings = []
    for t in range(0, 301):  # progress every 10 s, tick every second
        if t % 10 == 0:
            wd.progress(float(t))
        if wd.tick(float(t)):
            pings.append(t)
    assert pings == [0, 60, 120, 180, 240, 300]


def test_not_fed_before_any_progress() -> None:
    wd = ProgressWatchdog(interval=10, stall_after=30)
    assert wd.last_progress is None
    assert wd.stalled(0.0)
    assert [t for t in range(100) if wd.tick(float(t))] == []


def test_start_time_counts_as_progress() -> None:
    wd = ProgressWatchdog(interval=10, stall_after=30, now=1000.0)
    assert wd.tick(1000.0) is True
    assert wd.tick(1004.9) is False  # rate limit: 5 s
    assert wd.tick(1005.0) is True
    assert wd.tick(1030.0) is True  # exactly stall_after: still fed
    assert wd.tick(1035.0) is False  # 35 s without progress: stalled


def test_not_fed_after_a_stall_and_resumes_after_progress() -> None:
    wd = ProgressWatchdog(interval=10, stall_after=30)
    wd.progress(0.0)
    assert wd.tick(0.0) is True
    assert wd.tick(29.0) is True
    # No more progress: from 30 s past the last one, nothing is fed, however often we tick.
    assert not any(wd.tick(t / 2) for t in range(62, 400))
    assert wd.stalled(100.0)
    wd.progress(200.0)
    assert not wd.stalled(200.0)
    assert wd.tick(200.0) is True
    assert wd.tick(201.0) is False
    assert wd.tick(205.0) is True


def test_progress_never_moves_backwards() -> None:
    wd = ProgressWatchdog(interval=10, stall_after=30)
    wd.progress(100.0)
    wd.progress(50.0)
    assert wd.last_progress == 100.0


def test_hung_daemon_is_killed_and_healthy_one_is_not() -> None:
    """Replays the systemd rule (no WATCHDOG=1 within `interval` => kill) on a timeline."""
    interval, stall_after = 120.0, 300.0
    wd = ProgressWatchdog(interval=interval, stall_after=stall_after, now=0.0)
    hang_at = 3600.0
    pings = [0.0]
    t = 0.0
    while t <= hang_at + 2000:
        if t < hang_at and t % 45 == 0:  # progress every 45 s until the hang
            wd.progress(t)
        if wd.tick(t):
            pings.append(t)
        t += 1.0
    healthy = [p for p in pings if p <= hang_at]
    gaps = [b - a for a, b in itertools.pairwise(healthy)]
    assert max(gaps) <= interval  # never killed while progressing
    last_ping = pings[-1]
    last_progress = wd.last_progress
    assert last_progress is not None and last_progress < hang_at
    # The last ping happens no later than stall_after after the last progress...
    assert last_progress < last_ping <= last_progress + stall_after
    # ...so systemd kills the daemon at most stall_after + interval after it hung.
    assert last_ping + interval <= hang_at + stall_after + interval


@pytest.mark.parametrize(("interval", "stall_after"), [(0, 10), (-1, 10), (10, 0), (10, -5)])
def test_rejects_non_positive_durations(interval: float, stall_after: float) -> None:
    with pytest.raises(ValueError):
        ProgressWatchdog(interval=interval, stall_after=stall_after)


def test_pump_sends_watchdog_only_when_due(path_socket: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": path_socket.env_value, "WATCHDOG_USEC": "10000000"}
    with Notifier.from_env(env) as n:
        interval = n.watchdog_interval()
        assert interval == 10.0
        wd = ProgressWatchdog(interval=interval, stall_after=30)
        assert wd.pump(n, 0.0) is False  # no progress yet
        wd.progress(1.0)
        assert wd.pump(n, 1.0) is True
        assert wd.pump(n, 2.0) is False  # rate limited
        assert wd.pump(n, 6.0) is True
        assert wd.pump(n, 40.0) is False  # stalled
    assert path_socket.recv() == b"WATCHDOG=1"
    assert path_socket.recv() == b"WATCHDOG=1"
    path_socket.assert_silent()
