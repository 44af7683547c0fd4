"""A throwaway PostgreSQL cluster from the local server binaries, for `syncd demo` and the tests.

The cluster listens on a loopback TCP port only, trusts local connections, and lives in one
directory that `stop()` can delete. Server binaries are found on PATH or under Debian's
`/usr/lib/postgresql/<version>/bin`. `initdb` and `postgres` refuse to run as root, so when this
process is root they run as the `postgres` OS user (`runuser -u postgres --`).

Run as a module it prints shell `export` lines, for scripts:

    eval "$(python -m syncd.pgserver start --dir /tmp/pg)"   # exports SYNCD_TEST_DSN, SYNCD_PG_DIR
    python -m syncd.pgserver stop --dir /tmp/pg
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgServerError", "TempPostgres", "find_bin_dir"]


class PgServerError(RuntimeError):
    """The throwaway PostgreSQL could not be found, initialised or started; the message says why."""


def find_bin_dir() -> Path | None:
    """Return the directory holding `initdb` and `pg_ctl`, or None when no server is installed."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TempPostgres:
    """One throwaway cluster in `directory`, listening on 127.0.0.1:`port`.

    `dsn` connects as the `postgres` superuser to the `postgres` database. Raises PgServerError
    from `start()` when binaries are missing or the server does not come up (the server log's
    tail is in the message).
    """

    directory: Path
    port: int = 0
    bin_dir: Path | None = None
    extra_options: str = ""  # more `-c name=value` server options (benchmarks)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_pg(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._as_pg(argv), capture_output=True, text=True, check=False)

    def start(self, *, durable: bool = False) -> TempPostgres:
        """Initialise (first time only) and start the cluster; return self.

        `durable=False` turns off fsync for speed (tests, benchmarks); the demo keeps it on.
        """
        bin_dir = self.bin_dir or find_bin_dir()
        if bin_dir is None:
            raise PgServerError(
                "no PostgreSQL server binaries found (initdb/pg_ctl). Install them with "
                "'apt-get install postgresql' or set SYNCD_DATABASE_URL to an existing database."
            )
        self.bin_dir = bin_dir
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        if not (self.data_dir / "PG_VERSION").exists():
            res = self._run([str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                             "--auth=trust", "-E", "UTF8", "--no-locale"])
            if res.returncode != 0:
                raise PgServerError(f"initdb failed: {res.stderr.strip()[-800:]}")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.directory} -c max_connections=300 "
                "-c shared_buffers=128MB")
        if not durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if self.extra_options:
            opts += " " + self.extra_options
        log = self.directory / "postgres.log"
        res = self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log),
                         "-o", opts, "-w", "-t", "60", "start"])
        if res.returncode != 0:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else res.stderr
            raise PgServerError(f"postgres did not start on 127.0.0.1:{self.port}: {tail.strip()}")
        (self.directory / "port").write_text(str(self.port))
        return self

    def stop(self, *, remove: bool = False) -> None:
        """Stop the server (fast shutdown) and optionally delete its directory."""
        bin_dir = self.bin_dir or find_bin_dir()
        if bin_dir is not None and (self.data_dir / "postmaster.pid").exists():
            self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                       "-w", "stop"])
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self) -> None:
        """Restart the server on the same port (fast shutdown: sessions are cut, as in a real
        restart under load; used by reliability tests). Raises PgServerError when it fails."""
        bin_dir = self.bin_dir or find_bin_dir()
        assert bin_dir is not None
        # -l: without a log file the new server inherits pg_ctl's stdout, which is our capture
        # pipe, and this call would wait for it to close (i.e. forever).
        res = self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                         "-l", str(self.directory / "postgres.log"), "-w", "-t", "60",
                         "restart"])
        if res.returncode != 0:
            raise PgServerError(f"postgres restart failed: {res.stderr.strip()[-800:]}")


def main(argv: list[str] | None = None) -> int:
    """`python -m syncd.pgserver start|stop --dir DIR [--port N]`; start prints export lines."""
    parser = argparse.ArgumentParser(prog="python -m syncd.pgserver")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.action == "stop":
        TempPostgres(args.dir).stop(remove=True)
        return 0
    try:
        pg = TempPostgres(args.dir, port=args.port).start()
    except PgServerError as exc:
        print(f"echo 'pgserver: {exc}' >&2; false", file=sys.stdout)
        return 1
    print(f"export SYNCD_TEST_DSN='{pg.dsn}'")
    print(f"export SYNCD_PG_DIR='{pg.directory}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
