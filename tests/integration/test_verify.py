"""`syncd verify` against the simulator and a real mirror: exit codes, named windows and ids,
and no writes at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import asyncpg
import orjson
import pytest

from syncd import cli, pull, reconcile_job
from syncd.app import open_deps
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.silent_kantata import QUICK_GIVE_UP, gave_up_line, silent_kantata
from tests.integration.test_reconcile import (  # noqa: F401 - fixtures
    cli_env,
    settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def deps(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:
    async with open_deps(settings(db_dsn, sim_url)) as d:
        yield d


async def _verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `syncd verify ARGV`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    # the command runs its own event loop; the simulator keeps serving on this one
    code = await asyncio.to_thread(cli.main, ["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def _snapshot(conn: asyncpg.Connection) -> list[Any]:
    return [await conn.fetchrow(q) for q in (
        "SELECT count(*), max(synced_at), count(deleted_at) FROM kantata.time_entries",
        "SELECT count(*), max(synced_at) FROM kantata.workspaces",
        "SELECT count(*) FROM syncd.sync_runs",
        "SELECT count(*), max(started_at), max(finished_at) FROM syncd.windows",
        "SELECT watermark, updated_at FROM syncd.watermarks",
        "SELECT count(*) FROM syncd.rejected_records",
    )]


def _entry_in(sim: Simulator, month: str, skip: int = 0) -> dict[str, Any]:
    return [e for e in sim.list_entries() if e["date_performed"].startswith(month)][skip]


async def test_exact_mirror_exits_0_and_writes_nothing(
        deps: Deps, sim: Simulator, db_dsn: str, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    await pull.sync_once(deps)
    cli_env(monkeypatch, db_dsn, sim_url)
    before = await _snapshot(conn)
    sim.clear_requests()
    code, out, _ = await _verify(capsys)
    assert code == 0, out
    assert "identical" in out.splitlines()[-1]
    assert await _snapshot(conn) == before
    assert {r["method"] for r in sim.requests} == {"GET"}


async def test_remote_changes_not_yet_seen_exit_1_naming_windows_and_ids(
        deps: Deps, sim: Simulator, db_dsn: str, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    await pull.sync_once(deps)
    gone = int(_entry_in(sim, "2025-03")["id"])
    sim.delete_entry(gone)
    edited = int(_entry_in(sim, "2025-05")["id"])
    sim.edit_entry(edited, {"time_in_minutes": 7})
    new = int(sim.create_entry({"date_performed": "2025-05-20", "time_in_minutes": 30})["id"])
    hidden = int(_entry_in(sim, "2026-02")["id"])  # marked deleted locally by mistake
    await conn.execute("UPDATE kantata.time_entries SET deleted_at = now() WHERE id = $1", hidden)
    cli_env(monkeypatch, db_dsn, sim_url)
    before = await _snapshot(conn)

    code, out, _ = await _verify(capsys)
    assert code == 1, out
    assert "DRIFT 2025-03-01:2025-03-31" in out
    assert f"extra locally (1): {gone}" in out
    assert "DRIFT 2025-05-01:2025-05-31" in out
    assert f"missing locally (1): {new}" in out
    assert f"stale {edited}:" in out and "kantata" in out and "7 min" in out
    assert "DRIFT 2026-02-01:2026-02-28" in out and f"missing locally (1): {hidden}" in out
    assert out.count("DRIFT 20") == 3
    assert "3 differ" in out.splitlines()[-1]

    code, out, _ = await _verify(capsys, "--json", "--since", "2025-01-01", "--until",
                              "2025-12-31")
    assert code == 1
    doc = orjson.loads(out)
    assert doc["identical"] is False and doc["exit_code"] == 1 and doc["windows"] == 12
    by_window = {d["window"]: d for d in doc["differences"]}
    assert set(by_window) == {"2025-03-01:2025-03-31", "2025-05-01:2025-05-31"}
    assert by_window["2025-03-01:2025-03-31"]["extra_locally"] == [gone]
    may = by_window["2025-05-01:2025-05-31"]
    assert may["missing_locally"] == [new]
    assert [s["id"] for s in may["stale"]] == [edited]
    assert may["stale"][0]["kantata_minutes"] == 7
    assert may["kantata"]["count"] == may["mirror"]["count"] + 1
    assert await _snapshot(conn) == before  # verify wrote nothing

    # reconciliation repairs exactly this drift, and verify then agrees
    await reconcile_job.reconcile_range(deps, date(2020, 1, 1), date(2026, 12, 31))
    code, out, _ = await _verify(capsys)
    assert code == 0, out


async def test_verify_range_is_usable_as_an_oracle(deps: Deps, sim: Simulator) -> None:
    await pull.sync_once(deps)
    res = await reconcile_job.verify_range(deps, date(2024, 11, 1), date(2026, 11, 30))
    assert res.identical and len(res.windows) == 25
    assert res.requests == len(res.windows)  # every month fits in one page of 200


async def test_unreachable_kantata_stops_at_the_first_window_with_one_line(
        deps: Deps, db_dsn: str, sim_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A trial user's verify against a closed port tried window after window for over 15
    minutes: the first request that cannot connect through its retries stops the command."""
    await pull.sync_once(deps)
    cli_env(monkeypatch, db_dsn, sim_url)
    monkeypatch.setenv("SYNCD_KANTATA_BASE_URL", "http://127.0.0.1:9/api/v1")  # discard port
    monkeypatch.setenv("SYNCD_MAX_RETRIES", "2")
    monkeypatch.setenv("SYNCD_BACKOFF_BASE", "0.01")
    monkeypatch.setenv("SYNCD_BACKOFF_CAP", "0.02")
    code, out, err = await _verify(capsys)  # the whole backfill range: 80+ windows
    assert code == 2
    assert out == ""  # no window after window of ERROR lines
    assert err.strip().splitlines() == [
        "syncd: KantataUnreachable: Kantata cannot be reached at http://127.0.0.1:9/api/v1: "
        "GET /time_entries could not connect: ClientConnectorError on all 3 attempts of a "
        "request; check SYNCD_KANTATA_BASE_URL and the network"]


async def test_a_kantata_that_never_answers_stops_verify_with_one_line(
        deps: Deps, db_dsn: str, sim_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """verify against a Kantata that accepted connections and answered nothing spent 7
    request timeouts on each round of windows, then went on to the next ones: the third
    unanswered request in a row stops the command."""
    await pull.sync_once(deps)
    cli_env(monkeypatch, db_dsn, sim_url)
    for k, v in QUICK_GIVE_UP.items():
        monkeypatch.setenv(k, v)
    async with silent_kantata() as sk:
        monkeypatch.setenv("SYNCD_KANTATA_BASE_URL", sk.url)
        code, out, err = await asyncio.wait_for(_verify(capsys), 120)
    assert code == 2 and out == ""
    # one line of its own (the log may say how the page size came down before it)
    assert [line for line in err.splitlines() if not line.startswith("{")] == \
        [gave_up_line(sk.url)]
    # 3 rounds of the concurrent windows (overlapping silences count once), with room for a
    # slow machine: not 7 attempts on each window
    # (and one a window for each page size a timeout halves, 5,000 -> 200: 5, since a
    # timeout of a page that can come down does not count as silence)
    assert 3 <= sk.requests <= (6 + 5) * deps.settings.window_concurrency, sk.lines


async def test_bad_token_missing_token_and_unreachable_database_exit_2(
        deps: Deps, db_dsn: str, sim_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cli_env(monkeypatch, db_dsn, sim_url)
    monkeypatch.setenv("SYNCD_KANTATA_TOKEN", "not-the-right-token-at-all")
    code, _, err = await _verify(capsys, "--since", "2025-01-01", "--until", "2025-01-31")
    assert code == 2 and "AuthError: HTTP 401" in err
    assert "not-the-right-token" not in err
    monkeypatch.delenv("SYNCD_KANTATA_TOKEN")
    code, _, err = await _verify(capsys)
    assert code == 2 and "SYNCD_KANTATA_TOKEN" in err
    cli_env(monkeypatch, db_dsn, sim_url)
    monkeypatch.setenv("SYNCD_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    code, _, err = await _verify(capsys)
    assert code == 2 and "database or network error" in err


async def test_a_base_url_without_the_api_root_stops_verify_with_one_line(
        deps: Deps, db_dsn: str, sim_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A trial's verify and reconcile against a base URL missing `/v1` printed the same 404
    for each of 122 windows: the listing itself missing is WrongBaseURL, which stops the run."""
    await pull.sync_once(deps)
    cli_env(monkeypatch, db_dsn, sim_url)
    monkeypatch.setenv("SYNCD_KANTATA_BASE_URL", sim_url.removesuffix("/v1"))
    code, out, err = await _verify(capsys)
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("syncd: WrongBaseURL: HTTP 404: ") and \
        "check SYNCD_KANTATA_BASE_URL" in line, line
