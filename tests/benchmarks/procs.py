"""Process plumbing for the benchmark: start the simulator as its own process, run a contender
as a child and read its exact CPU seconds and peak RSS, and read other processes' CPU seconds.

Linux only: CPU time of a running process comes from `/proc/<pid>/stat` (utime + stime, plus
cutime + cstime of its reaped children for the PostgreSQL postmaster, whose backends come and
go). A child's CPU seconds come from `os.wait4` (the rusage of exactly that child). Its peak RSS
is `VmHWM` from `/proc/<pid>/status`, polled every 10 ms until it exits: `ru_maxrss` cannot be
used, because Linux carries the parent's high-water mark across the vfork+exec that starts the
child, so a child of a big parent would report the parent's peak.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ChildResult", "SimProcess", "cpu_seconds", "free_port", "postgres_cpu_seconds",
           "run_child"]

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds used so far by `pid` (and its reaped children if asked)."""
    f = _stat_fields(pid)  # f[0] is field 3 (state); utime is field 14 -> f[11]
    ticks = int(f[11]) + int(f[12])
    if reaped_children:
        ticks += int(f[13]) + int(f[14])
    return ticks / TICKS


def postgres_cpu_seconds(postmaster_pid: int) -> float:
    """CPU seconds of a PostgreSQL cluster: the postmaster, its reaped backends and its live
    children (backends, checkpointer, walwriter...). Differences of two readings are exact."""
    total = cpu_seconds(postmaster_pid, reaped_children=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            f = _stat_fields(int(entry))
            if int(f[1]) == postmaster_pid:  # f[1] is ppid
                total += (int(f[11]) + int(f[12])) / TICKS
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return total


def _vm_hwm_kb(pid: int) -> int:
    """Peak resident set of `pid` since its last exec (KiB); 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ChildResult:
    """A finished child: exit `code`, `wall` seconds, `cpu` seconds (user+system), `peak_rss_mb`
    (VmHWM, MB), and its stdout/stderr."""

    code: int
    wall: float
    cpu: float
    user: float
    system: float
    peak_rss_mb: float
    stdout: str
    stderr: str


def run_child(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 3600.0, log_dir: Path | None = None,
              name: str = "child") -> ChildResult:
    """Run `argv` to completion and measure it with `os.wait4`. Raises TimeoutError (after
    killing it) when it runs longer than `timeout` seconds."""
    log_dir = log_dir or Path("/tmp")
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err)
        deadline = started + timeout
        hwm_kb = 0
        while True:
            hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise TimeoutError(f"{name} ran longer than {timeout:.0f}s")
            time.sleep(0.01)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildResult(code=proc.returncode, wall=wall,
                       cpu=usage.ru_utime + usage.ru_stime, user=usage.ru_utime,
                       system=usage.ru_stime, peak_rss_mb=hwm_kb / 1024,
                       stdout=out_path.read_text(errors="replace"),
                       stderr=err_path.read_text(errors="replace"))


class SimProcess:
    """`python -m syncd simulator` as a separate process on a loopback port."""

    def __init__(self, *, entries: int, seed: int, token: str, log_dir: Path,
                 python: str = sys.executable, reference_entries: int | None = None,
                 max_per_page: int | None = None) -> None:
        self.entries, self.seed, self.token = entries, seed, token
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
        self.control_url = f"http://127.0.0.1:{self.port}/_sim"
        self._log = open(log_dir / "simulator.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, "-m", "syncd", "simulator", "--entries", str(entries), "--seed", str(seed),
             "--port", str(self.port), "--token", token, "--lock-date", "none",
             *(["--reference-entries", str(reference_entries)] if reference_entries else []),
             *(["--max-per-page", str(max_per_page)] if max_per_page else [])],
            stdout=self._log, stderr=subprocess.STDOUT)
        self.seed_seconds = 0.0

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the control API answers. Raises RuntimeError when the process died."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.control_url + "/state", timeout=2) as r:
                    if r.status == 200:
                        self.seed_seconds = time.perf_counter() - t0
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("simulator did not come up")

    def cpu(self) -> float:
        """CPU seconds the simulator has used so far."""
        return cpu_seconds(self.proc.pid)

    def rss_mb(self) -> float:
        """The simulator's current resident set (MB)."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def control(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """Call the control API (`/_sim/...`); returns the body."""
        req = urllib.request.Request(self.control_url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.read()  # type: ignore[no-any-return]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
