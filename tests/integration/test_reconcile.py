"""Reconciliation end to end: simulator → syncd reconcile → PostgreSQL. Deletions are detected,
nothing is wrongly deleted (archiving, moves, rows shifting between pages), re-created entries
come back, and the request cost of a full pass is what the design promises."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from syncd import cli, pull, reconcile_job
from syncd.app import open_deps
from syncd.runs import Deps
from syncd.simulator import Simulator
from syncd.windows import Window
from tests.integration.conftest import TOKEN, make_settings
from tests.oracle import mirror_diff
from tests.silent_kantata import QUICK_GIVE_UP, gave_up_line, silent_kantata

pytestmark = pytest.mark.integration


def _month(e: dict[str, Any]) -> str:
    return str(e["date_performed"])[:7]


def _full_range(deps: Deps) -> tuple[date, date]:
    ws = reconcile_job.default_windows(deps, datetime.now(UTC).date())
    return ws[0].start, ws[-1].end


async def _deleted_ids(conn: asyncpg.Connection) -> set[int]:
    return {r["id"] for r in await conn.fetch(
        "SELECT id FROM kantata.time_entries WHERE deleted_at IS NOT NULL")}


def _by_window_order(sim: Simulator, month: str) -> list[dict[str, Any]]:
    """Entries of one month in Kantata's listing order (date_performed asc, then id asc)."""
    es = [e for e in sim.list_entries() if _month(e) == month]
    return sorted(es, key=lambda e: (e["date_performed"], int(e["id"])))


def _busiest_months(sim: Simulator, n: int) -> list[str]:
    return [m for m, _ in Counter(_month(e) for e in sim.list_entries()).most_common(n)]


def settings(db_dsn: str, sim_url: str, **over: Any) -> Any:
    """Test settings with the request budget out of the way (the simulator is local)."""
    return make_settings(db_dsn, sim_url, **{"rate_limit_per_minute": 600_000.0, **over})


@pytest.fixture
async def deps(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:
    async with open_deps(settings(db_dsn, sim_url)) as d:
        yield d


@pytest.fixture
async def small_pages(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:
    """Deps reading 10 entries per page, so every busy month spans three pages."""
    async with open_deps(settings(db_dsn, sim_url, per_page=10)) as d:
        yield d


async def test_entries_deleted_remotely_are_marked_deleted_and_only_those(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    entries = sim.list_entries()
    gone = {int(e["id"]) for e in entries[::97]}  # 7 entries spread over many months
    for i in gone:
        sim.delete_entry(i)
    reports = await reconcile_job.reconcile_range(deps, *_full_range(deps))
    assert [r.error for r in reports if r.error] == []
    assert sum(r.marked_deleted for r in reports) == len(gone)
    assert await _deleted_ids(conn) == gone
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 600  # kept
    assert await mirror_diff(conn, sim.list_entries()) == []
    run = await conn.fetchrow("SELECT status, details FROM syncd.sync_runs "
                              "WHERE job = 'reconcile'")
    assert run["status"] == "ok"
    windows = await conn.fetch("SELECT status, remote_count FROM syncd.windows "
                               "WHERE purpose = 'reconcile'")
    assert len(windows) == len(reports) and {w["status"] for w in windows} == {"done"}
    assert sum(w["remote_count"] for w in windows) == 600 - len(gone)
    # a second pass changes nothing
    again = await reconcile_job.reconcile_range(deps, *_full_range(deps))
    assert sum(r.marked_deleted + r.upserted for r in again) == 0


async def test_archiving_a_workspace_or_moving_an_entry_marks_nothing_deleted(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    entries = sim.list_entries()
    ws = Counter(e["workspace_id"] for e in entries).most_common(1)[0][0]
    sim.archive_workspace(int(ws))
    # moves in both directions, so whichever window is read first the move is seen as such
    early, late = entries[10], entries[20]
    sim.edit_entry(int(early["id"]), {"date_performed": "2026-11-20"})
    sim.edit_entry(int(late["id"]), {"date_performed": "2024-12-02"})
    reports = await reconcile_job.reconcile_range(deps, *_full_range(deps))
    assert sum(r.marked_deleted for r in reports) == 0
    assert await _deleted_ids(conn) == set()
    assert await mirror_diff(conn, sim.list_entries()) == []
    moved = {r["id"]: r["date_performed"] for r in await conn.fetch(
        "SELECT id, date_performed FROM kantata.time_entries WHERE id = ANY($1::bigint[])",
        [int(early["id"]), int(late["id"])])}
    assert moved == {int(early["id"]): date(2026, 11, 20), int(late["id"]): date(2024, 12, 2)}


async def test_moved_entry_outside_the_reconciled_range_is_kept_by_the_probe(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    month = _busiest_months(sim, 1)[0]
    e = _by_window_order(sim, month)[0]
    sim.edit_entry(int(e["id"]), {"date_performed": "2021-06-01"})  # far outside the range
    start = date.fromisoformat(f"{month}-01")
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    # read in full: counting first, the incremental pass would have moved it already
    reports = await reconcile_job.reconcile_range(deps, start, end, full=True)
    assert [(r.marked_deleted, r.kept) for r in reports] == [(0, 1)]
    # one page plus one `only=` probe
    assert reports[0].requests == 2
    assert await conn.fetchval("SELECT date_performed FROM kantata.time_entries "
                               "WHERE id = $1 AND deleted_at IS NULL", int(e["id"])) == \
        date(2021, 6, 1)


async def test_an_entry_deleted_and_recreated_with_the_same_id_comes_back(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    e = sim.list_entries()[42]
    eid = int(e["id"])
    sim.delete_entry(eid)
    await reconcile_job.reconcile_range(deps, *_full_range(deps))
    assert await _deleted_ids(conn) == {eid}
    sim.create_entry({"id": eid, "workspace_id": e["workspace_id"],
                      "date_performed": e["date_performed"], "time_in_minutes": 15,
                      "notes": "re-created"})
    # in full (counting first, the incremental pass before the counts revives it)
    reports = await reconcile_job.reconcile_range(deps, *_full_range(deps), full=True)
    assert sum(r.revived for r in reports) == 1
    assert await _deleted_ids(conn) == set()
    row = await conn.fetchrow("SELECT notes, time_in_minutes, deleted_at "
                              "FROM kantata.time_entries WHERE id = $1", eid)
    assert (row["notes"], row["time_in_minutes"], row["deleted_at"]) == ("re-created", 15, None)
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_rows_deleted_or_moved_during_a_window_scan_never_cause_a_wrong_deletion(
        small_pages: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Deleting or moving away a row of page 1 while page 2 is requested shifts every later
    row back by one: the row at the top of page 2 is never listed. The count changed, so the
    read is not trusted and the window is read again."""
    deps = small_pages
    await pull.sync_once(deps)
    m_del, m_move = _busiest_months(sim, 2)
    victim = int(_by_window_order(sim, m_del)[0]["id"])
    mover = int(_by_window_order(sim, m_move)[0]["id"])
    skipped = {int(_by_window_order(sim, m)[10]["id"]) for m in (m_del, m_move)}
    orig = deps.client.list_page
    injected: list[str] = []

    async def mutating_list_page(params: dict[str, str], **kw: Any) -> Any:
        span = params.get("date_performed_between", "")
        if params.get("page") == "2" and span[:7] not in injected:
            if span.startswith(m_del):
                sim.delete_entry(victim)
                injected.append(m_del)
            elif span.startswith(m_move):
                sim.edit_entry(mover, {"date_performed": "2021-06-15"})  # an empty month
                injected.append(m_move)
        return await orig(params, **kw)

    deps.client.list_page = mutating_list_page  # type: ignore[method-assign]
    reports = await reconcile_job.reconcile_range(deps, *_full_range(deps), full=True)
    assert sorted(injected) == sorted([m_del, m_move])
    assert await _deleted_ids(conn) == {victim}
    assert not skipped & await _deleted_ids(conn)
    by_month = {r.window.start.isoformat()[:7]: r for r in reports}
    assert by_month[m_del].reads == 2 and by_month[m_del].marked_deleted == 1
    assert by_month[m_move].reads == 2 and by_month[m_move].marked_deleted == 0
    assert all(r.error is None for r in reports)
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_a_delete_and_an_insert_between_pages_keep_the_count_but_the_probe_saves_the_row(
        small_pages: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """The count rule alone is fooled when a row of page 1 is deleted and another row is
    created later in the same window: the count is unchanged and as many distinct ids are
    listed, yet the row at the top of page 2 was skipped. The `only=` probe finds it."""
    deps = small_pages
    await pull.sync_once(deps)
    month = _busiest_months(sim, 1)[0]
    order = _by_window_order(sim, month)
    victim, skipped = int(order[0]["id"]), int(order[10]["id"])
    orig = deps.client.list_page
    done = False

    async def mutating_list_page(params: dict[str, str], **kw: Any) -> Any:
        nonlocal done
        span = params.get("date_performed_between", "")
        if params.get("page") == "2" and span.startswith(month) and not done:
            done = True
            sim.delete_entry(victim)
            sim.create_entry({"workspace_id": order[-1]["workspace_id"],
                              "date_performed": order[-1]["date_performed"],
                              "time_in_minutes": 5, "notes": "late arrival"})
        return await orig(params, **kw)

    deps.client.list_page = mutating_list_page  # type: ignore[method-assign]
    reports = await reconcile_job.reconcile_range(deps, *_full_range(deps), full=True)
    rep = next(r for r in reports if r.window.start.isoformat().startswith(month))
    assert done and rep.trusted and rep.reads == 1
    assert rep.kept == 1 and rep.marked_deleted == 0
    assert skipped not in await _deleted_ids(conn)
    # the victim was listed on page 1, so this pass keeps it; the next pass catches it, by
    # counting: the late arrival is in the mirror, so the month's count is one short
    again = await reconcile_job.reconcile_range(deps, *_full_range(deps))
    assert sum(r.marked_deleted for r in again) == 1
    # (a month of 3 pages of 10 is cheaper to read whole than to halve: "full")
    assert [r.mode for r in again if r.marked_deleted] == ["full"]
    assert {r.mode for r in again if not r.marked_deleted} == {"count"}
    assert await _deleted_ids(conn) == {victim}
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_a_window_that_cannot_be_read_marks_nothing_and_is_reported(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    async with open_deps(settings(db_dsn, sim_url, max_retries=0)) as deps:
        await pull.sync_once(deps)
        sim.delete_entry(int(sim.list_entries()[0]["id"]))
        sim.set_faults({"error_rate": 1.0, "statuses": [503]})
        reports = await reconcile_job.reconcile_range(deps, *_full_range(deps))
    assert reports and all(r.error and "503" in r.error for r in reports)
    assert await _deleted_ids(conn) == set()
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs WHERE job = 'reconcile'") \
        == "partial"
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE purpose = 'reconcile' "
                               "AND status = 'failed'") == len(reports)


async def test_corrupted_pages_never_cause_a_wrong_deletion(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    async with open_deps(settings(db_dsn, sim_url, max_retries=8)) as deps:
        await pull.sync_once(deps)
        sim.set_faults({"bad_page_rate": 0.3, "seed": 5,
                        "bad_page_kinds": ["truncated", "html", "missing_ids"]})
        await reconcile_job.reconcile_range(deps, *_full_range(deps))
    assert await _deleted_ids(conn) == set()


async def test_reconcile_due_schedules_recent_windows_often_and_old_ones_rarely(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await pull.sync_once(deps)
    await conn.execute("INSERT INTO syncd.windows (purpose, window_start, window_end, status) "
                       "VALUES ('reconcile', '2019-01-03', '2019-01-31', 'done')")
    now = datetime.now(UTC)
    first = await reconcile_job.reconcile_due(deps, now=now)
    windows = reconcile_job.default_windows(deps, now.date())
    assert sorted(r.window for r in first) == windows
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE purpose = 'reconcile' "
                               "AND window_start = '2019-01-03'") == 0  # no longer scheduled
    assert await reconcile_job.reconcile_due(deps, now=now + timedelta(minutes=5)) == []
    runs = await conn.fetchval("SELECT count(*) FROM syncd.sync_runs WHERE job = 'reconcile'")
    assert runs == 1  # nothing due: no run recorded
    later = await reconcile_job.reconcile_due(deps, now=now + timedelta(hours=2))
    # "recent" is counted from the day of the call (after 22:00 UTC, now + 2 h is tomorrow)
    cutoff = ((now + timedelta(hours=2)).date()
              - timedelta(days=deps.settings.reconcile_recent_days))
    assert later and all(r.window.end >= cutoff for r in later)
    assert len(later) == sum(1 for w in windows if w.end >= cutoff)
    # the checkpoints are real wall-clock times, so look "8 days later" from now
    week = await reconcile_job.reconcile_due(deps, now=now + timedelta(days=8))
    assert len(week) == len(reconcile_job.default_windows(deps, (now + timedelta(days=8)).date()))


async def test_request_cost_of_a_full_reconciliation(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A full pass costs one GET per 200 entries of each window and one per empty window,
    i.e. close to ceil(n/200) + empty windows; nothing else (no probes when nothing is gone)."""
    per_month = Counter(_month(e) for e in sim.list_entries())
    n = sum(per_month.values())
    for months in (1, 12):
        async with open_deps(settings(db_dsn, sim_url, backfill_window_months=months)
                             ) as deps:
            if months == 1:
                await pull.sync_once(deps)
            windows = reconcile_job.default_windows(deps, datetime.now(UTC).date())
            sim.clear_requests()
            reports = await reconcile_job.reconcile_range(deps, windows[0].start,
                                                          windows[-1].end, full=True)
        gets = [r for r in sim.requests if r["method"] == "GET"]
        sizes = [sum(c for m, c in per_month.items() if w.start.isoformat()[:7] <= m
                     <= w.end.isoformat()[:7]) for w in windows]
        expected = sum(max(1, math.ceil(s / 200)) for s in sizes)
        empty = sum(1 for s in sizes if s == 0)
        nonempty = len(windows) - empty
        assert len(gets) == expected == sum(r.requests for r in reports)
        assert math.ceil(n / 200) + empty <= len(gets) <= math.ceil(n / 200) + empty + nonempty
        print(f"\nfull reconciliation, {months}-month windows: n={n}, {len(windows)} windows "
              f"({empty} empty): {len(gets)} GETs; ceil(n/200)+empty = "
              f"{math.ceil(n / 200) + empty}")


def cli_env(monkeypatch: pytest.MonkeyPatch, db_dsn: str, sim_url: str) -> None:
    """Point the `syncd` command at the test database and simulator."""
    for key, value in {"DATABASE_URL": db_dsn, "KANTATA_BASE_URL": sim_url,
                       "KANTATA_TOKEN": TOKEN, "KANTATA_ALLOW_INSECURE_LOOPBACK": "true",
                       "BACKFILL_START": "2020-01-01", "RATE_LIMIT_PER_MINUTE": "600000",
                       "MAX_RETRIES": "0", "LOG_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(f"SYNCD_{key}", value)


async def test_the_reconcile_command_prints_per_window_figures(
        deps: Deps, sim: Simulator, db_dsn: str, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    await pull.sync_once(deps)
    e = next(e for e in sim.list_entries() if e["date_performed"].startswith("2025-03"))
    sim.delete_entry(int(e["id"]))
    cli_env(monkeypatch, db_dsn, sim_url)
    capsys.readouterr()
    # the command runs its own event loop; the simulator keeps serving on this one
    code = await asyncio.to_thread(cli.main, ["reconcile", "--since", "2025-02-01",
                                              "--until", "2025-04-30"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["window", "checked", "upserted", "revived", "deleted", "kept"]
    # only the window where something was found (a trial user got all 122 windows)
    assert len(lines) == 3 and lines[1].startswith("2025-03-01:2025-03-31")
    assert lines[1].split()[4] == "1"  # marked deleted
    assert lines[-1].startswith("3 windows: 1 changed, 2 unchanged (not listed; --verbose "
                                "lists every window), 0 failed;")
    assert "1 marked deleted" in lines[-1]
    assert await _deleted_ids(conn) == {int(e["id"])}
    code = await asyncio.to_thread(cli.main, ["reconcile", "--since", "2025-02-01",
                                              "--until", "2025-04-30", "--verbose"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and [x.split()[0] for x in lines[1:4]] == [
        "2025-02-01:2025-02-28", "2025-03-01:2025-03-31", "2025-04-01:2025-04-30"]
    assert lines[-1].startswith("3 windows: 0 changed, 3 unchanged, 0 failed;")


async def test_the_reconcile_command_stops_at_once_when_kantata_is_unreachable(
        deps: Deps, db_dsn: str, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Like verify, reconciliation went on window after window against a closed port."""
    await pull.sync_once(deps)
    cli_env(monkeypatch, db_dsn, sim_url)
    monkeypatch.setenv("SYNCD_KANTATA_BASE_URL", "http://127.0.0.1:9/api/v1")  # discard port
    monkeypatch.setenv("SYNCD_MAX_RETRIES", "1")
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["reconcile", "--full"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.startswith("syncd:")] == [
        "syncd: KantataUnreachable: Kantata cannot be reached at http://127.0.0.1:9/api/v1: "
        "GET /time_entries could not connect: ClientConnectorError on all 2 attempts of a "
        "request; check SYNCD_KANTATA_BASE_URL and the network"]
    tried = await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE purpose = 'reconcile' "
                                "AND status <> 'pending'")
    assert 1 <= tried <= 2 * deps.settings.window_concurrency  # not all 80+ of the range
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs WHERE job = 'reconcile'") \
        == "failed"


async def test_shutdown_mid_run_leaves_unfinished_windows_due_and_deletes_nothing_from_them(
        small_pages: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    deps = small_pages
    await pull.sync_once(deps)
    victim = int(_by_window_order(sim, _busiest_months(sim, 1)[0])[-1]["id"])
    sim.delete_entry(victim)
    deps.stopping = asyncio.Event()
    orig = deps.client.list_page

    async def stop_soon(params: dict[str, str], **kw: Any) -> Any:
        if "date_performed_between" in params:
            deps.stopping.set()  # SIGTERM arrives while the first windows are checked
        return await orig(params, **kw)

    deps.client.list_page = stop_soon  # type: ignore[method-assign]
    now = datetime.now(UTC)
    reports = await reconcile_job.reconcile_due(deps, now=now)
    assert reports and len(reports) <= deps.settings.window_concurrency
    assert await _deleted_ids(conn) in (set(), {victim})
    # windows are left: the run was stopped, not failed (it was `partial` or `ok` before)
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs WHERE job = 'reconcile'") \
        == "interrupted"
    deps.stopping.clear()
    deps.client.list_page = orig  # type: ignore[method-assign]
    rest = await reconcile_job.reconcile_due(deps, now=now + timedelta(seconds=1))
    done = {r.window for r in reports if r.error is None}
    assert {r.window for r in rest} == set(reconcile_job.default_windows(deps, now.date())) - done
    assert await _deleted_ids(conn) == {victim}


async def test_a_refused_token_fails_the_window_with_the_reason(
        db_dsn: str, sim_url: str, conn: asyncpg.Connection) -> None:
    from syncd.errors import AuthError

    async with open_deps(make_settings(db_dsn, sim_url, kantata_token="wrong-token")) as deps:
        with pytest.raises(AuthError):
            await reconcile_job.reconcile_range(deps, date(2026, 9, 1), date(2026, 9, 30))
    row = await conn.fetchrow("SELECT status, last_error FROM syncd.windows "
                              "WHERE purpose = 'reconcile'")
    assert row["status"] == "failed"
    assert "Invalid OAuth 2 Request" in row["last_error"]


async def test_the_reconcile_command_stops_when_kantata_accepts_but_never_answers(
        deps: Deps, db_dsn: str, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Like sync and verify, reconciliation spent every retry of every window waiting for a
    Kantata that accepted connections and answered nothing."""
    await pull.sync_once(deps)
    cli_env(monkeypatch, db_dsn, sim_url)
    for k, v in QUICK_GIVE_UP.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    async with silent_kantata() as sk:
        monkeypatch.setenv("SYNCD_KANTATA_BASE_URL", sk.url)
        code = await asyncio.wait_for(
            asyncio.to_thread(cli.main, ["reconcile", "--full"]), 120)
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.startswith("syncd:")] == [gave_up_line(sk.url)]
    # 3 rounds of the concurrent windows (overlapping silences count once), with room for a
    # slow machine: not 7 attempts on each window
    # (and one a window for each page size a timeout halves, 5,000 -> 200: 5, since a
    # timeout of a page that can come down does not count as silence)
    assert 3 <= sk.requests <= (6 + 5) * deps.settings.window_concurrency, sk.lines
    tried = await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE purpose = 'reconcile' "
                                "AND status <> 'pending'")
    assert 1 <= tried <= 2 * deps.settings.window_concurrency  # not all 80+ of the range
    assert await conn.fetchval("SELECT status FROM syncd.sync_runs WHERE job = 'reconcile'") \
        == "failed"


async def test_a_reconciliation_a_shutdown_stops_gives_its_window_back(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A trial: the window a shutdown stopped mid-read was recorded `failed` with `Stopped`, and
    the run `partial`, as if Kantata had failed it. It is given back (`pending`, the reason
    says shutdown), the windows not started are untouched, the run is `interrupted`, and the
    next reconciliation checks every window."""
    async with open_deps(settings(db_dsn, sim_url, per_page=5, window_concurrency=1)) as d:
        await pull.sync_once(d)
        d.stopping = asyncio.Event()
        listed = d.client.list_page
        calls = 0

        async def list_then_stop(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:  # SIGTERM while the first window's second page is read
                d.stopping.set()
            return await listed(*args, **kw)

        d.client.list_page = list_then_stop  # type: ignore[method-assign]
        first, *_, last = sorted(_busiest_months(sim, 3))  # > 5 entries a month
        start = date.fromisoformat(f"{first}-01")
        end = date.fromisoformat(f"{last}-01") + timedelta(days=27)
        reports = await reconcile_job.reconcile_range(d, start, end, full=True)
        d.client.list_page = listed  # type: ignore[method-assign]
        assert (reports, calls) == ([], 2)
        run = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs "
                                  "WHERE job = 'reconcile' ORDER BY started_at DESC LIMIT 1")
        assert run["status"] == "interrupted", run
        assert "stopped before the reconciliation finished" in run["error"], run
        rows = await conn.fetch("SELECT status, last_error FROM syncd.windows "
                                "WHERE purpose = 'reconcile'")
        assert [(r["status"], r["last_error"]) for r in rows] == \
            [("pending", "interrupted: stopped by shutdown")]
        d.stopping = None
        reports = await reconcile_job.reconcile_range(d, start, end, full=True)
        assert len(reports) == len(reconcile_job.month_windows(start, end, 1))
        assert all(r.error is None for r in reports)
        assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE purpose = "
                                   "'reconcile' AND status <> 'done'") == 0


async def test_the_reconcile_command_names_the_windows_it_left_to_another_run(
        deps: Deps, db_dsn: str, sim_url: str, conn: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The second trial: two `syncd reconcile --full` at once; the second said `60 windows: 0
    changed, 60 unchanged` and mentioned the 62 it left to the first only in a JSON warning."""
    import uuid

    from syncd import store

    await pull.sync_once(deps)
    held = Window(date(2025, 3, 1), date(2025, 3, 31))
    other = uuid.uuid4()
    await deps.owner().open_run(other, "reconcile")  # a live run (its session holds the lock)
    await store.start_window(conn, "reconcile", held, restart=True, run_id=other)
    cli_env(monkeypatch, db_dsn, sim_url)
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["reconcile", "--full", "--since", "2025-02-01",
                                              "--until", "2025-04-30"])
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert "2 windows: " in out
    assert out.rstrip().endswith("1 windows left to another syncd run that is reconciling "
                                 "them, or did since this one started (not checked twice)")
    assert await conn.fetchval("SELECT run_id FROM syncd.windows WHERE purpose = 'reconcile' "
                               "AND window_start = $1", held.start) == other
