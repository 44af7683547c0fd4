"""CI smoke run of the benchmark harness: tiny size, one repetition, no dlt. Checks that every
row of the report is there with sane figures; the full benchmark never runs in CI."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from syncd.pgserver import find_bin_dir

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(find_bin_dir() is None, reason="needs PostgreSQL binaries")


@pytest.mark.timeout(240)
def test_smoke_run_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.run", "--smoke", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = orjson.loads(out.read_bytes())
    n = res["config"]["entries"]
    assert n == 2000 and res["config"]["repeat"] == 1

    for name in ("pg", "pg_mirror", "plain", "plain_mirror", "plain_include", "bare", "syncd",
                 "syncd_ceiling_9000"):
        b = res["backfill"][name]
        assert "summary" in b, b.get("reason")
        s = b["summary"]
        assert s["rows"]["median"] == n  # every entry landed in a fresh database
        assert 0 < s["wall_s"]["median"] < 60
        assert s["rows_per_s"]["median"] > 0
        assert 0 < s["client_cpu_s"]["median"] < 60
        assert s["server_cpu_s"]["median"] >= 0 and s["postgres_cpu_s"]["median"] >= 0
        assert 10 < s["peak_rss_mb"]["median"] < 500
        assert s["requests"]["median"] >= math.ceil(n / 200)
    assert "dlt" not in res["backfill"]  # never in the smoke run

    idle = res["idle_cycle"]
    assert idle["requests"] == 1, idle["request_lines"]
    assert 1 <= idle["sql_statements"] <= 20, idle["statements"]
    assert idle["process"]["requests"] == 1 and idle["process"]["exit_code"] == 0

    push = res["push"]
    if push["status"] == "ok":
        assert push["post"] == math.ceil(push["creates"] / 100)
        assert push["put"] == push["updates"]
        assert push["delete"] == math.ceil(push["deletes"] / 100)
        assert push["outbox_after"].get("done", 0) == (push["creates"] + push["updates"]
                                                       + push["deletes"])
    rec = res["reconcile"]
    if rec["status"] == "ok":
        assert rec["errors"] == [] and rec["gets"] >= math.ceil(rec["live_entries"] / 200)
        # issue #24: counting first
        st, af = rec["settled"], rec["after_deletions"]
        assert st["errors"] == [] and st["gets"] <= st["windows"] + 2
        assert af["marked_deleted"] == af["deleted"] == 3
        assert af["gets"] <= af["windows"] + 3 * (8 + af["day_pages"])
    hourly = {(h["entries"], h["span_days"]): h for h in res["steady_hourly"]}
    assert set(hourly) == {(100_000, 736), (1_000_000, 736), (100_000, 60)}
    assert all(0 < h["total"] < h["before"] for h in hourly.values())
    assert "Requests an hour of a steady `syncd run`" in proc.stdout

    assert [p["entries"] for p in res["rss_ladder"]] == [500, n]
    assert all(10 < p["peak_rss_mb"]["max"] < 500 for p in res["rss_ladder"])
    names = {t["target"].split(" ")[0] for t in res["targets"]}
    assert {"backfill", "peak", "idle", "push:", "full", "reconciliation"} <= names
    assert "| plain listing, PostgreSQL parses each page → own table (**reference**)" in proc.stdout
    assert "| target |" in proc.stdout

    # issue #16: the difference from the reference is accounted for item by item
    acct = res["accounting"]
    items = {i["item"].split(" (")[0]: i for i in acct["items"]}
    for want in ("process start and imports", "side-loads on every page", "the request ceiling",
                 "monthly `date_performed_between` windows", "validation and decoding",
                 "SQL: window checkpoints",
                 "total: syncd default − the PostgreSQL-parsing reference"):
        assert want in items, sorted(items)
    assert acct["syncd_run"]["details"]["windows_known_empty"] > 0  # 10 years back by default
    assert acct["statements"]["window checkpoints"]["calls"] > 0
    assert 0 < acct["validation"]["syncd_decode_ms"] and 0 < acct["validation"]["bare_ms"]
    assert "Where the time goes" in proc.stdout


@pytest.mark.timeout(120)
def test_lost_answer_creates_are_done_in_seconds_without_duplicates(tmp_path: Path) -> None:
    """tests/benchmarks/ambiguous.py at a small size: a create whose answer was lost but which
    landed is found by the first lookup seconds later (it waited 180 s before issue #12), and
    no policy ever creates an entry twice."""
    out = tmp_path / "ambiguous.json"
    before = set(Path(tempfile.gettempdir()).glob("syncd-bench-amb-*"))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.ambiguous", "--creates", "120", "--repeat",
         "2", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # its throwaway PostgreSQL is removed with the folder it made (issue #23)
    assert set(Path(tempfile.gettempdir()).glob("syncd-bench-amb-*")) <= before
    s = orjson.loads(out.read_bytes())["summary"]
    assert s["before"]["duplicates_free"] and s["after"]["duplicates_free"]
    assert s["after"]["rows"] == s["before"]["rows"] == 240
    assert s["after"]["found_existing"] > 0  # some answers were lost, and found
    assert s["after"]["max_s"] < 15 <= s["before"]["max_s"]
