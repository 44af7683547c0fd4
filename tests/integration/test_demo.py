"""`syncd demo`, the first thing a new user runs."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from syncd import cli
from syncd.commands import demo

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def own_temp_dir(monkeypatch: pytest.MonkeyPatch,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each test's demos use a default folder of their own (`tempfile.gettempdir()`, in this
    process and in the demos it starts): a demo the machine's user keeps running in
    /tmp/syncd-demo-$UID must not make these tests fail, nor they stop it. Readable by the
    postgres user, who runs a demo's server there. (pytest's own temporary folders are
    placed first, where they always are.)"""
    tmp_path_factory.getbasetemp()
    path = Path(tempfile.mkdtemp(prefix="syncd-demo-test-"))
    path.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _run_demo(*args: str, env_url: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    if env_url:
        env["SYNCD_DATABASE_URL"] = env_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", "demo", *args, env=env,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out_b.decode() + err_b.decode()[-2000:]


async def test_demo_mirrors_and_says_how_to_connect(db_dsn: str) -> None:
    code, out = await _run_demo("--entries", "1500", "--cycles", "2", "--database-url", db_dsn)
    assert code == 0, out
    assert "backfill: 1500 entries" in out
    assert "cycle 2:" in out
    assert "reconciliation marked 1 deleted" in out
    assert "exact mirror: 1503 live entries" in out  # 1500 + 2 x 2 created - 1 deleted
    assert f"psql '{db_dsn}'" in out
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 1504
        assert await conn.fetchval("SELECT count(*) FROM kantata.workspaces") > 0
        # the history queries of the README have something to show
        after_approval = await conn.fetch(
            """SELECT diff FROM kantata.time_entry_changes
               WHERE change = 'edited' AND (was_approved OR was_invoiced)""")
        assert len(after_approval) == 2, after_approval
        assert any("corrected after approval" in r["diff"] for r in after_approval)
        assert await conn.fetchval("SELECT count(*) FROM kantata.time_entry_changes "
                                   "WHERE change = 'deleted'") == 1
    finally:
        await conn.close()


def test_demo_without_postgres_says_exactly_what_to_do(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "find_bin_dir", lambda: None)
    assert cli.main(["demo", "--entries", "10"]) == 2
    out = capsys.readouterr().out
    assert "apt-get install postgresql" in out
    assert "syncd demo --database-url postgresql://" in out


@pytest.mark.parametrize(("url", "cause"), [
    ("postgresql://x:sekrit99@127.0.0.1:1/x", "ConnectionRefusedError"),
    ("mysql://u:sekrit99@127.0.0.1/db", "scheme is expected"),
    ("postgresql://u:sekrit99@127.0.0.1:bad/db", "invalid literal for int()"),
])
async def test_demo_with_a_database_it_cannot_use_says_why_without_a_traceback(
        url: str, cause: str) -> None:
    """A trial user's unreachable `--database-url` printed a Python traceback."""
    code, out = await _run_demo("--database-url", url)
    assert code == 2
    assert "syncd demo: cannot use --database-url" in out and cause in out
    assert "Traceback" not in out and "sekrit99" not in out


async def test_demo_refuses_a_database_that_holds_entries(db_dsn: str) -> None:
    """A database given explicitly is refused once it holds entries: nothing is written."""
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute(
            "INSERT INTO kantata.time_entries (id, date_performed, time_in_minutes, updated_at,"
            " raw) VALUES (8000010, '2026-01-05', 30, now(), '{\"id\": \"8000010\"}')")
        code, out = await _run_demo("--entries", "10", "--database-url", db_dsn)
        assert code == 2 and "already holds mirrored time entries" in out, out
        rows = await conn.fetch("SELECT id, raw FROM kantata.time_entries")
        assert [(r["id"], r["raw"]) for r in rows] == [(8000010, '{"id": "8000010"}')]
        assert await conn.fetchval("SELECT count(*) FROM kantata.workspaces") == 0
    finally:
        await conn.close()


def test_demo_ignores_syncd_database_url(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A shell that exported SYNCD_DATABASE_URL for the real mirror (as the rehearsal section
    does) must not get simulated entries in it: with no server binaries and the variable set,
    the demo still stops and asks for an explicit, empty --database-url."""
    monkeypatch.setattr(demo, "find_bin_dir", lambda: None)
    monkeypatch.setenv("SYNCD_DATABASE_URL", "postgresql://u:pw@127.0.0.1:1/real_mirror")
    assert cli.main(["demo", "--entries", "10"]) == 2
    out = capsys.readouterr().out
    assert "SYNCD_DATABASE_URL is ignored" in out and "pw" not in out


def test_the_printed_psql_command_leaves_the_password_out() -> None:
    assert demo._without_password("postgresql://bi:s3cret@db.internal:5432/mirror") == \
        "postgresql://bi@db.internal:5432/mirror"
    assert demo._without_password("postgresql:///syncd") == "postgresql:///syncd"


async def test_demo_into_a_new_empty_database(empty_db_dsn: str) -> None:
    """`CREATE DATABASE x` and nothing else, as a user without server binaries would do."""
    code, out = await _run_demo("--entries", "300", "--cycles", "1", "--database-url",
                                empty_db_dsn)
    assert code == 0, out
    assert "1/5 using the empty database given with --database-url" in out
    assert "exact mirror: 302 live entries" in out


async def test_demo_keep_serves_and_its_outbox_recipe_works_when_pasted(
        db_dsn: str, tmp_path: Path) -> None:
    """The new-user trial: after `syncd demo` nothing could be pushed against its data. With
    --keep the simulator stays up, and the printed exports and recipe, pasted into a shell,
    push an outbox edit that lands in Kantata and in the mirror."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", "demo", "--keep", "--entries", "800", "--cycles", "1",
        "--database-url", db_dsn, "--dir", str(tmp_path), env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    out: list[str] = []
    try:
        while not any(" run    # " in line for line in out):
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, "".join(out)
            out.append(line.decode())
        shell_at = next(i for i, line in enumerate(out) if line.startswith("In another shell"))
        recipe = [line.strip() for line in out[shell_at:]
                  if line.startswith(("  export ", "  psql ")) or " push; " in line]
        assert len(recipe) == 4, out
        # the psql command and queries to try, as without --keep (the first trial missed them)
        tried = "".join(out[:shell_at])
        assert "  psql 'postgresql://" in tried and "kantata.time_entry_changes" in tried, out
        sim_url = re.search(r"SYNCD_KANTATA_BASE_URL='(http://[^']+)/api/v1'", "".join(out))
        assert sim_url, out
        # the demo's simulator has the lock date the outbox examples assume (issue #23),
        # readable with GET /_sim/lock_date as syncd/simulator/README.md says
        async with aiohttp.ClientSession() as http:
            async with http.get(sim_url.group(1) + "/_sim/lock_date") as resp:
                lock = date.fromisoformat((await resp.json())["lock_date"])
        assert f"lock date {lock}" in "".join(out)
        assert timedelta(days=60) <= datetime.now(UTC).date() - lock < timedelta(days=67)
        conn = await asyncpg.connect(db_dsn)
        try:
            # a row Kantata refuses (dated on or before the lock date): push exits 1, and the
            # recipe's list still runs and shows it (`;`, not `&&`)
            locked = await conn.fetchval(
                "INSERT INTO syncd.outbox (op, entry_id, payload) SELECT 'update', id, "
                "'{\"notes\": \"locked\"}' FROM kantata.time_entries WHERE deleted_at IS NULL "
                "AND date_performed <= $1 ORDER BY id LIMIT 1 RETURNING id", lock)
            assert locked is not None
        finally:
            await conn.close()
        # pasted into a shell whose PATH does not have syncd (the README installs into .venv)
        shell_env = {**env, "PATH": "/usr/bin:/bin"}
        shell = await asyncio.create_subprocess_exec(
            "bash", "-uc", "\n".join(recipe), env=shell_env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        text, _ = await asyncio.wait_for(shell.communicate(), 120)
        listed = text.decode()
        assert shell.returncode == 0, listed  # the list's exit code: it ran
        assert "1 failed" in listed and "lock date" in listed, listed
        assert re.search(r"(?m)^\s*\d+\s+update\b.*\bdone\b", listed), listed
        conn = await asyncpg.connect(db_dsn)
        try:
            assert await conn.fetchval("SELECT status FROM syncd.outbox WHERE id = $1",
                                       locked) == "failed"
            row = await conn.fetchrow("SELECT status, result, entry_id, "
                                      "(payload->>'time_in_minutes')::int AS m FROM syncd.outbox "
                                      "WHERE id <> $1", locked)
            assert (row["status"], row["result"]) == ("done", "updated")  # a real change
            assert await conn.fetchval("SELECT time_in_minutes FROM kantata.time_entries "
                                       "WHERE id = $1", row["entry_id"]) == row["m"]
        finally:
            await conn.close()
        assert proc.returncode is None  # still serving
        # `syncd demo --stop` ends the kept demo too
        stop = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "syncd", "demo", "--stop", "--dir", str(tmp_path), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        said, _ = await asyncio.wait_for(stop.communicate(), 60)
        assert "stopped the demo's simulator" in said.decode(), said.decode()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(2)  # Ctrl-C
            await asyncio.wait_for(proc.wait(), 30)


def test_an_interrupted_demo_says_how_to_stop_what_it_left() -> None:
    """A trial user's Ctrl-C in the middle of `syncd demo` exited silently, its PostgreSQL still
    running: it now says so and names `syncd demo --stop`."""
    import signal
    import subprocess
    import tempfile

    if demo.find_bin_dir() is None:
        pytest.skip("needs PostgreSQL binaries")
    tmp_path = Path(tempfile.mkdtemp(prefix="syncd-demo-int-"))  # the postgres user reads it
    tmp_path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "demo", "--dir", str(tmp_path / "demo"), "--entries",
         "300000"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # interrupt it in the middle: once the backfill has begun
            if line.startswith("3/5"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([sys.executable, "-m", "syncd", "demo", "--dir", str(tmp_path / "demo"),
                        "--stop"], cwd=ROOT, env=env, capture_output=True, timeout=60)
        tmp_path.rmdir()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "syncd demo --stop" in err and "Traceback" not in err


def _no_server_may_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that would touch the demo's PostgreSQL fails the test."""
    def touched(*_: object) -> None:
        raise AssertionError("the demo touched its PostgreSQL")

    monkeypatch.setattr(demo, "_start_postgres", touched)
    monkeypatch.setattr(demo, "_holds_entries", touched)
    monkeypatch.setattr(demo, "find_bin_dir", lambda: Path("/usr/lib/postgresql/bin"))


@pytest.mark.parametrize("extra", [[], ["--database-url", "postgresql://u@127.0.0.1:1/x"]])
def test_a_second_demo_refuses_while_a_kept_one_runs(
        extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A new-user trial: a second `syncd demo` restarted the kept demo's PostgreSQL and dropped
    its database. It now refuses in one line, naming the pid and `syncd demo --stop`."""
    import subprocess

    _no_server_may_start(monkeypatch)
    # a live process whose command line names syncd, like `syncd demo --keep`
    kept = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "syncd"])
    try:
        (tmp_path / "keep.pid").write_text(str(kept.pid))
        assert cli.main(["demo", "--entries", "10", "--dir", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"syncd demo: a kept demo (pid {kept.pid}) is still running from "
                       f"{tmp_path}; `syncd demo --stop --dir {tmp_path}` ends it")
        assert kept.poll() is None and (tmp_path / "keep.pid").exists()
    finally:
        kept.kill()
        kept.wait()


@pytest.mark.parametrize("holder", ["dead", "not syncd"])
def test_a_stale_kept_demo_pid_file_does_not_block(
        holder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The pid file of a kept demo that is gone (or whose pid now names another program) does
    not block: the demo goes on (here to its no-PostgreSQL message)."""
    import subprocess

    other = subprocess.Popen(["sleep", "60"])
    try:
        if holder == "dead":
            other.kill()
            other.wait()
        else:  # its command line is readable once exec is done
            import time

            cmdline = Path(f"/proc/{other.pid}/cmdline")
            for _ in range(100):
                if cmdline.read_bytes():
                    break
                time.sleep(0.01)
        (tmp_path / "keep.pid").write_text(str(other.pid))
        monkeypatch.setattr(demo, "find_bin_dir", lambda: None)
        assert cli.main(["demo", "--entries", "10", "--dir", str(tmp_path)]) == 2
        captured = capsys.readouterr()
        assert "apt-get install postgresql" in captured.out and "kept demo" not in captured.err
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(("argv", "said"), [
    (["--entries", "-5"], "argument --entries: expected a number >= 1, got -5"),
    (["--entries", "0"], "argument --entries: expected a number >= 1, got 0"),
    (["--entries", "many"], "argument --entries: expected a whole number, got 'many'"),
    (["--cycles", "-1"], "argument --cycles: expected a number >= 0, got -1"),
])
def test_bad_demo_numbers_are_usage_errors_before_anything_runs(
        argv: list[str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`syncd demo --entries -5` ended in a traceback from SimConfig after starting PostgreSQL."""
    _no_server_may_start(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--dir", str(tmp_path), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_demo_stop_says_it_removes_every_database_on_the_demo_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--stop` removed databases a user had created on the demo server without mention."""
    (tmp_path / "demo" / "pg").mkdir(parents=True)  # a stopped demo server's folder
    assert cli.main(["demo", "--stop", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert f"removed {tmp_path / 'demo'}: the whole throwaway server with every database in it" \
        in out and not (tmp_path / "demo").exists()
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "every database in it (also any you created there)" in " ".join(
        capsys.readouterr().out.split())


def test_demo_stop_removes_only_what_the_demo_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`syncd demo --stop --dir DIR` deleted all of DIR, a user's own files too, even a folder
    that never held a demo (a new user's trial): now its server and pid file only, DIR when
    that leaves it empty, and nothing at all where there is no demo."""
    mine = tmp_path / "mine"
    (mine / "pg" / "data").mkdir(parents=True)
    (mine / "keep.pid").write_text("999999999")  # a stale kept demo
    (mine / "notes.txt").write_text("mine")
    assert cli.main(["demo", "--stop", "--dir", str(mine)]) == 0
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert f"{mine} keeps the files the demo did not make" in capsys.readouterr().out
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.csv").write_text("1,2")
    assert cli.main(["demo", "--stop", "--dir", str(precious)]) == 0
    assert (precious / "data.csv").read_text() == "1,2"
    assert "nothing to stop" in capsys.readouterr().out
