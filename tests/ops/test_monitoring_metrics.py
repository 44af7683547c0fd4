"""Every metric that deploy/monitoring/ (alert rules and dashboard) uses is exposed by a running
syncd: a daemon is started against the simulator, pulls, pushes an outbox row and reconciles,
then /metrics is scraped. A renamed or removed metric breaks this test (issue #14)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import yaml

from tests.ops.conftest import DaemonProc, daemon_env

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "monitoring"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"), "gauge": (), "untyped": (), "info": ("_info",)}
NOT_OURS = {"up"}  # Prometheus's own series about the scrape


def used_metrics() -> set[str]:
    doc = yaml.safe_load((PACK / "alerts.yml").read_text())
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    dash = orjson.loads((PACK / "dashboard.json").read_bytes())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return {m for e in exprs for m in re.findall(r"\b(syncd_[a-z_]+)\b", e)} - {
        "syncd_job"}  # the label, not a metric


def exposed(text: str) -> tuple[set[str], set[str]]:
    """(every series name /metrics can serve, names with at least one sample)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        base = name.removesuffix("_total") if kind == "counter" else name
        names |= {base, *(base + s for s in SUFFIXES.get(kind, ()))}
    sampled = {line.split("{", 1)[0].split(" ", 1)[0]
               for line in text.splitlines() if line and not line.startswith("#")}
    return names, sampled


async def test_every_metric_of_the_rules_and_dashboard_is_exposed_by_a_live_syncd(
        db_dsn: str, sim_url: str, sim: Any, conn: asyncpg.Connection, port: int,
        daemons: Any) -> None:
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port))
    await d.wait_event("job_finished", job="pull", status="ok", timeout=30)
    await conn.execute(
        """INSERT INTO syncd.outbox (op, payload) VALUES ('create', jsonb_build_object(
               'workspace_id', $1::bigint, 'date_performed', current_date::text,
               'time_in_minutes', 30))""", int(sim.list_entries()[0]["workspace_id"]))
    await d.wait_event("job_finished", job="push", timeout=30,
                       where=lambda e: bool(d.find("outbox_batch_claimed")))
    _, text = await d.get("/metrics")
    names, sampled = exposed(text)
    used = used_metrics()
    assert len(used) >= 15, used
    missing = sorted(m for m in used if m not in names and m not in NOT_OURS)
    assert missing == [], f"used by deploy/monitoring but not exposed: {missing}"
    # the series the main alerts read carry values already after one pull and one push
    for m in ("syncd_job_last_success_timestamp_seconds", "syncd_job_interval_seconds",
              "syncd_leader", "syncd_outbox_rows", "syncd_outbox_oldest_pending_seconds",
              "syncd_kantata_rate_limit_requests_per_second",
              "syncd_kantata_rate_limit_floor_requests_per_second",
              "syncd_watermark_lag_seconds", "syncd_rows_upserted_total",
              "syncd_kantata_requests_total", "syncd_job_duration_seconds_bucket",
              "syncd_outbox_items_total"):
        assert m in sampled, m
    assert 'syncd_job_interval_seconds{syncd_job="pull"} 2.0' in text
    # bounded labels: no label value looks like an id, a URL or a message
    for labels in re.findall(r"^syncd_\w+\{([^}]*)\}", text, re.M):
        for value in re.findall(r'="([^"]*)"', labels):
            assert len(value) <= 40 and not re.search(r"\d{5,}|://|\s", value), labels


async def test_reconcile_overdue_is_right_from_the_first_scrape(
        db_dsn: str, sim_url: str, conn: asyncpg.Connection, port: int, daemons: Any) -> None:
    """Issue #23: the gauge read 0 until the leader's first reconcile check (5 minutes after
    start) while no window had ever been reconciled. It is computed from the database on
    scrape: a window never reconciled is overdue since its backfill ended."""
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port))
    await d.wait_event("job_finished", job="pull", status="ok", timeout=30)
    backfilled = await conn.fetchval(
        "UPDATE syncd.windows SET last_done_at = now() - interval '2 hours' "
        "WHERE purpose = 'backfill' RETURNING 1")
    assert backfilled
    assert not d.find("job_started", job="reconcile")  # its first check is minutes away
    _, text = await d.get("/metrics")
    value = float(re.search(r"^syncd_reconcile_overdue_seconds (\S+)$", text, re.M)[1])
    assert 7200 <= value < 7260, text
