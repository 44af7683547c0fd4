"""The ops endpoint: /readyz through a Kantata outage, /metrics content, no secrets in any body;
the readiness decision and the /status renderer as pure functions."""

from __future__ import annotations

import asyncio

import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from syncd.http import Readiness, decide_readiness, human_age, render_status
from syncd.simulator import Simulator
from tests.ops.conftest import TOKEN, DaemonProc, assert_clean_output, daemon_env

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("kw", "reason"), [
    ({"stopping": True}, "shutting_down"),
    ({"db_error": "database unavailable: ConnectionRefusedError"}, "database_unavailable"),
    ({"pending": ["0003_x.sql"]}, "migrations_pending"),
    ({"last_pull": None}, "no_successful_pull"),
    ({"last_pull": NOW - timedelta(seconds=901)}, "pull_stale"),
    ({"last_pull": NOW - timedelta(seconds=899)}, "ok"),
    ({"last_pull": None, "last_error": "failed: AuthError: HTTP 401: bad token"},
     "no_successful_pull"),
])
def test_readiness_decision(kw: dict[str, Any], reason: str) -> None:
    args: dict[str, Any] = dict(now=NOW, stopping=False, db_error=None, pending=(),
                                last_pull=NOW, max_age=900.0)
    args.update(kw)
    r = decide_readiness(**args)
    assert r.reason == reason and r.ready == (reason == "ok")
    if reason == "migrations_pending":
        assert "syncd migrate" in r.detail


def test_human_age() -> None:
    assert [human_age(s) for s in (None, 5, 95, 7325, 90000)] == [
        "-", "5 s", "1 min 35 s", "2 h 2 min", "1 d 1 h"]


def test_status_page_escapes_everything() -> None:
    evil = '<script>alert("x")</script> & "quotes"'
    view = {
        "watermark": NOW - timedelta(minutes=3), "entries": {"live": 5, "deleted": 1},
        "outbox": {"failed": 1}, "outbox_oldest_pending": None, "rejected_records": 1,
        "problems": [{"id": 7, "op": "update", "entry_id": 9, "status": "failed",
                      "attempts": 3, "last_error": evil, "updated_at": NOW}],
        "runs": [{"started_at": NOW, "finished_at": NOW, "job": "pull", "status": "failed",
                  "pages": 0, "requests": 1, "rows_upserted": 0, "rows_rejected": 0,
                  "error": evil}],
        "rejects": [{"entry_id": evil, "reason": evil, "occurrences": 1, "last_seen": NOW}],
        "windows": {evil: 1}, "last_success": {"pull": NOW}, "leader_name": evil,
    }
    page = render_status(view, now=NOW, owner=evil, is_leader=False,
                         readiness=Readiness(False, "pull_stale", evil), running=[evil],
                         started_at=NOW)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("&lt;script&gt;") >= 8
    assert 'id="watermark-lag">3 min 0 s ago' in page


@pytest.mark.integration
async def test_readyz_follows_the_pull_through_a_kantata_outage_and_metrics_say_why(
        db_dsn: str, sim_url: str, sim: Simulator, port: int, daemons: Any) -> None:
    sim.set_faults({"error_rate": 1.0, "statuses": [503]})
    started = time.time()
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port, SYNCD_PULL_INTERVAL="1"))
    await d.wait_event("job_failed_retriable", job="pull")
    status, body = await d.get("/readyz")
    assert status == 503
    assert orjson.loads(body)["reason"] == "no_successful_pull"
    assert await d.get("/healthz") == (200, "ok\n")  # alive, waiting the outage out

    sim.clear_faults()
    ready = orjson.loads(await d.wait_http("/readyz", 200, timeout=15))
    assert ready["ready"] is True and ready["leader"] is True

    status, text = await d.get("/metrics")
    assert status == 200

    def value(sample: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(sample + " "))
        return float(line.rsplit(" ", 1)[1])

    ok = 'syncd_kantata_requests_total{endpoint="/time_entries",method="GET",status="200"}'
    assert value(ok) >= 4
    assert value(ok.replace('"200"', '"503"')) >= 2
    assert value('syncd_kantata_retries_total{endpoint="/time_entries"}') >= 1
    assert value('syncd_rows_upserted_total{syncd_job="pull"}') == 300
    assert value('syncd_job_failures_total{syncd_job="pull"}') >= 1
    assert value('syncd_job_duration_seconds_count{syncd_job="pull"}') >= 2
    assert value('syncd_job_last_success_timestamp_seconds{syncd_job="pull"}') >= started
    assert value("syncd_leader") == 1
    assert 0 < value("syncd_watermark_lag_seconds") < 600
    assert value('syncd_outbox_rows{status="pending"}') == 0
    assert value("syncd_outbox_oldest_pending_seconds") == 0
    # No secret in any body or in the logs.
    status_page = (await d.get("/status"))[1]
    for body in (text, status_page, body):
        assert TOKEN not in body and "Bearer" not in body and "Authorization" not in body
    assert_clean_output(d)


@pytest.mark.integration
async def test_readyz_of_the_old_replica_after_a_newer_migrate_says_schema_mismatch(
        db_dsn: str, sim_url: str, port: int, daemons: Any, conn: Any) -> None:
    """A rolling upgrade: the new replica has migrated, the old one still runs. Its /readyz
    must not advise `syncd migrate` (that does nothing) and keeps its last pull."""
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port))
    await d.wait_http("/readyz", 200)
    await conn.execute("INSERT INTO syncd.schema_migrations (version, name, sha256) "
                       "VALUES (999, '0999_from_a_newer_syncd.sql', 'x')")
    deadline = time.monotonic() + 15
    while True:
        status, body = await d.get("/readyz")
        if status == 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    doc = orjson.loads(body)
    assert status == 503 and doc["reason"] == "schema_mismatch", body
    assert "migration 999" in doc["detail"] and "downgrade" in doc["detail"]
    assert doc["last_successful_pull"] is not None


@pytest.mark.integration
@pytest.mark.parametrize("token", [TOKEN, "ops-REJECTED-token-5f2b9e0c"])
async def test_the_token_never_appears_in_logs_or_pages(token: str, db_dsn: str, sim_url: str,
                                                        port: int, daemons: Any) -> None:
    """Scanned at DEBUG, with Kantata accepting the token and with Kantata rejecting it (401
    errors are logged and shown on /status)."""
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port, SYNCD_KANTATA_TOKEN=token,
                                             SYNCD_LOG_LEVEL="DEBUG"))
    if token == TOKEN:
        await d.wait_http("/readyz", 200)
    else:
        failed = await d.wait_event("job_failed_fatal", job="pull")
        assert failed["error_class"] == "AuthError" and failed["level"] == "error"
        status, body = await d.get("/readyz")
        assert status == 503 and "latest pull failed: AuthError: HTTP 401" in body
    bodies = [(await d.get(p))[1] for p in ("/status", "/metrics", "/readyz", "/healthz")]
    d.send(signal.SIGTERM)
    assert await d.wait_exit() == 0
    # a refused token now stops the backfill at its first answer: fewer lines to scan
    assert len(d.lines) > (20 if token == TOKEN else 8)
    for text in (*bodies, d.output):
        assert token not in text
        assert "Bearer" not in text
    assert_clean_output(d)
