"""`syncd demo`, the first thing a new user runs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from syncd import cli
from syncd.commands import demo

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def test_demo_mirrors_and_says_how_to_connect(db_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["SYNCD_DATABASE_URL"] = db_dsn
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", "demo", "--entries", "1500", "--cycles", "2", env=env,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out = out_b.decode()
    assert proc.returncode == 0, out + err_b.decode()[-2000:]
    assert "backfill: 1500 entries" in out
    assert "cycle 2:" in out
    assert "exact mirror: 1504 live entries" in out
    assert f"psql '{db_dsn}'" in out
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 1504
        assert await conn.fetchval("SELECT count(*) FROM kantata.workspaces") > 0
    finally:
        await conn.close()


def test_demo_without_postgres_says_exactly_what_to_do(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "find_bin_dir", lambda: None)
    assert cli.main(["demo", "--entries", "10"]) == 2
    out = capsys.readouterr().out
    assert "apt-get install postgresql" in out
    assert "SYNCD_DATABASE_URL=postgresql://" in out
