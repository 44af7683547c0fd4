"""The operations HTTP endpoint (aiohttp.web) on `SYNCD_HTTP_HOST:SYNCD_HTTP_PORT`.

- `GET /healthz`: 200 `ok` while the process runs (liveness; never touches the database).
- `GET /readyz`: 200 only when the database answers, migrations are current and the last
  successful pull (by any replica, from `syncd.sync_runs`) is younger than
  `ready_max_pull_age_intervals` x `pull_interval`; otherwise 503 with a JSON reason.
- `GET /metrics`: Prometheus text from the process registry; database-derived gauges (outbox
  rows by status, oldest pending outbox row, watermark lag, most overdue reconciliation) are
  refreshed on scrape, at most every `GAUGE_REFRESH` seconds.
- `GET /status`: a small server-rendered HTML page for operators.

Responses never contain the Kantata token or the database password (every body is scrubbed
of them as a last line of defence; nothing renders settings).
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncd import migrate, outbox, reconcile_job, store
from syncd.errors import MigrationError
from syncd.metrics import Metrics
from syncd.scheduler import DB_UNAVAILABLE
from syncd.settings import Settings

__all__ = ["OpsState", "Readiness", "decide_readiness", "human_age", "make_app",
           "render_status", "start_http"]

log = structlog.get_logger(__name__)

PROBE_TIMEOUT = 2.0  # seconds a readiness/metrics/status query may take
GAUGE_REFRESH = 10.0  # seconds between database refreshes of the gauges on /metrics

LAST_PULL = """SELECT max(finished_at) FROM syncd.sync_runs
               WHERE job = 'pull' AND status IN ('ok', 'partial')"""
# How the latest finished pull ended when it failed or was interrupted ("failed: <error>",
# "interrupted: <why>"; shown by /readyz while not ready).
LAST_PULL_ERROR = """SELECT CASE WHEN status IN ('failed', 'interrupted')
                                 THEN status || ': ' || coalesce(error, 'no error recorded') END
                     FROM syncd.sync_runs WHERE job = 'pull' AND finished_at IS NOT NULL
                     ORDER BY started_at DESC LIMIT 1"""
WATERMARK = "SELECT watermark FROM syncd.watermarks WHERE stream = 'time_entries'"
PROBLEMS = """SELECT id, op, entry_id, status, attempts, last_error, updated_at
              FROM syncd.outbox WHERE status IN ('failed', 'conflict')
              ORDER BY updated_at DESC, id DESC LIMIT $1"""
REJECTS = """SELECT entry_id, reason, occurrences, last_seen FROM syncd.rejected_records
             ORDER BY last_seen DESC LIMIT $1"""
# Who holds the leader lock: a bigint advisory key shows as classid (high 32 bits) and objid
# (low 32 bits) with objsubid 1 in pg_locks.
LEADER = """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = ($1::bigint >> 32)::oid
              AND l.objid = ($1::bigint & 4294967295)::oid"""


@dataclass
class OpsState:
    """What the endpoint reads. `pool` is None until the database was reached at startup;
    `is_leader` and `running_jobs` are filled in by the daemon once it runs them."""

    settings: Settings
    metrics: Metrics
    owner: str
    stopping: asyncio.Event
    migrations: list[migrate.Migration]
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    secrets: tuple[str, ...] = ()
    pool: Any = None
    is_leader: Callable[[], bool] = lambda: False
    running_jobs: Callable[[], list[str]] = list
    gauges_refreshed: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Readiness:
    """`reason` is one of ok, shutting_down, starting, database_unavailable,
    migrations_pending, schema_mismatch, no_successful_pull, pull_stale; `detail` is a
    sentence."""

    ready: bool
    reason: str
    detail: str
    last_pull: datetime | None = None


def decide_readiness(*, now: datetime, stopping: bool, db_error: str | None,
                     pending: Sequence[str], last_pull: datetime | None,
                     max_age: float, last_error: str | None = None) -> Readiness:
    """The readiness decision from plain facts (`max_age` in seconds; `last_error`: how the
    latest pull ended when it failed or was interrupted, "failed: <error>" or "interrupted:
    <why>")."""
    why = f"; latest pull {last_error}" if last_error else ""
    if stopping:
        return Readiness(False, "shutting_down", "the daemon is shutting down")
    if db_error is not None:
        return Readiness(False, "database_unavailable", db_error)
    if pending:
        return Readiness(False, "migrations_pending",
                         f"{len(pending)} migration(s) pending ({pending[0]}); run "
                         "`syncd migrate`")
    if last_pull is None:
        return Readiness(False, "no_successful_pull", "no pull has succeeded yet" + why)
    age = (now - last_pull).total_seconds()
    if age > max_age:
        return Readiness(False, "pull_stale", f"last successful pull {human_age(age)} ago "
                         f"(limit {human_age(max_age)}){why}", last_pull)
    return Readiness(True, "ok", f"last successful pull {human_age(age)} ago", last_pull)


def human_age(seconds: float | None) -> str:
    """`95.3` -> `1 min 35 s`; None -> `-`."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


# ---------------------------------------------------------------------------- database facts
async def check_readiness(state: OpsState, now: datetime) -> Readiness:
    """Query the facts (bounded by PROBE_TIMEOUT) and decide."""
    if state.stopping.is_set():
        return decide_readiness(now=now, stopping=True, db_error=None, pending=(),
                                last_pull=None, max_age=0)
    if state.pool is None:
        return Readiness(False, "starting", "waiting for the database")
    db_error, pending, last_pull, last_error = None, [], None, None
    mismatch: str | None = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT), state.pool.acquire() as conn:
            try:
                pending = [m.name for m in await migrate.pending(conn, state.migrations)]
            except MigrationError as exc:
                # the schema is newer than this syncd (the old replica of a rolling upgrade)
                # or an applied migration file changed: `syncd migrate` is not the remedy
                mismatch = str(exc)
            if not pending:
                last_pull = await conn.fetchval(LAST_PULL)
                last_error = await conn.fetchval(LAST_PULL_ERROR)
    except (*DB_UNAVAILABLE, TimeoutError) as exc:
        db_error = f"database unavailable: {type(exc).__name__}"
    if mismatch is not None and db_error is None:
        return Readiness(False, "schema_mismatch", mismatch, last_pull)
    s = state.settings
    return decide_readiness(now=now, stopping=False, db_error=db_error, pending=pending,
                            last_pull=last_pull, last_error=last_error,
                            max_age=s.ready_max_pull_age_intervals * s.pull_interval)


async def refresh_gauges(state: OpsState, now: datetime) -> None:
    """Set the outbox, watermark and reconcile-overdue gauges from the database (cached
    GAUGE_REFRESH s; on a database error the previous values stay)."""
    if state.pool is None or time.monotonic() - state.gauges_refreshed < GAUGE_REFRESH:
        return
    try:
        async with asyncio.timeout(PROBE_TIMEOUT), state.pool.acquire() as conn:
            counts = await outbox.status_counts(conn, now=now)
            watermark = await conn.fetchval(WATERMARK)
            overdue = await reconcile_job.overdue_now(conn, state.settings, now)
    except (*DB_UNAVAILABLE, TimeoutError) as exc:
        log.debug("metrics_refresh_failed", error=type(exc).__name__)
        return
    m = state.metrics
    for status, n in counts["counts"].items():
        m.outbox_rows.labels(status).set(n)
    m.outbox_oldest_pending.set(counts["oldest_pending_seconds"] or 0.0)
    if watermark is not None:
        m.watermark_lag.set(max(0.0, (now - watermark).total_seconds()))
    m.reconcile_overdue.set(overdue)
    state.gauges_refreshed = time.monotonic()


async def status_view(state: OpsState, now: datetime) -> dict[str, Any]:
    """Everything /status shows, as plain data (raises on database errors)."""
    async with asyncio.timeout(PROBE_TIMEOUT * 2), state.pool.acquire() as conn:
        view = await store.status_snapshot(conn, runs=15)
        view["problems"] = [dict(r) for r in await conn.fetch(PROBLEMS, 25)]
        view["rejects"] = [dict(r) for r in await conn.fetch(REJECTS, 10)]
        view["leader_name"] = await conn.fetchval(LEADER, state.settings.leader_lock_key)
    return view


# ---------------------------------------------------------------------------- HTML
def _e(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return html.escape(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ"))
    return html.escape(str(value))


def _age(now: datetime, at: datetime | None) -> str:
    return "-" if at is None else human_age((now - at).total_seconds()) + " ago"


def _took(started: datetime, finished: datetime | None) -> str:
    if finished is None:
        return "running"
    seconds = (finished - started).total_seconds()
    return f"{seconds:.2f} s" if seconds < 10 else human_age(seconds)


def _table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
           empty: str) -> str:
    if not rows:
        return f'<p id="{table_id}-empty" class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _dl(items: Sequence[tuple[str, str, str]]) -> str:
    return "<dl>" + "".join(f'<dt>{_e(label)}</dt><dd id="{key}">{value}</dd>'
                            for key, label, value in items) + "</dl>"


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{color:#555}dd{margin:0}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;
vertical-align:top}th{background:#f4f4f4}.bad{color:#b00020;font-weight:bold}
.ok{color:#1b7f1b;font-weight:bold}.muted{color:#777}.err{max-width:60em;white-space:pre-wrap}"""


def render_status(view: Mapping[str, Any], *, now: datetime, owner: str, is_leader: bool,
                  readiness: Readiness, running: Sequence[str], started_at: datetime) -> str:
    """The /status page. Every value from the database is HTML-escaped."""
    entries = view.get("entries") or {}
    wm = view.get("watermark")
    counts_by_status: Mapping[str, int] = view.get("outbox") or {}
    ready_cls = "ok" if readiness.ready else "bad"
    summary = _dl([
        ("ready", "Ready", f'<span class="{ready_cls}">{_e(readiness.reason)}</span> '
                           f"{_e(readiness.detail)}"),
        ("replica", "This replica", f"{_e(owner)} (up {_e(human_age((now - started_at).total_seconds()))})"),
        ("is-leader", "Leader", "this replica" if is_leader
         else f"another replica: {_e(view.get('leader_name'))}" if view.get("leader_name")
         else '<span class="bad">none</span>'),
        ("running", "Running now", _e(", ".join(running) or "nothing")),
    ])
    freshness = _dl([
        ("watermark", "Watermark (changes seen up to)", f"{_e(wm)}"),
        ("watermark-lag", "Watermark lag", _e(_age(now, wm))),
        ("last-write", "Last write to the mirror", _e(_age(now, entries.get("last_write")))),
        ("entries-live", "Time entries (live)", _e(entries.get("live", 0))),
        ("entries-deleted", "Marked deleted", _e(entries.get("deleted", 0))),
        ("records-altered", "Stored with text replaced (kantata.text_alterations)",
         _e(view.get("altered_records", 0))),
        *((f"last-ok-{_e(job)}", f"Last successful {job}", f"{_e(at)} ({_e(_age(now, at))})")
          for job, at in sorted((view.get("last_success") or {}).items())),
        ("windows", "Backfill/reconcile windows",
         _e(", ".join(f"{k}={v}" for k, v in (view.get("windows") or {}).items()) or "none")),
    ])
    counts = _table("outbox-counts", ["Status", "Rows"], [
        [_e(s), f'<span id="outbox-{s}">{_e(counts_by_status.get(s, 0))}</span>']
        for s in outbox.STATUSES
    ], "no outbox")
    oldest = view.get("outbox_oldest_pending")
    problems = _table("problems", ["Outbox id", "Op", "Entry", "Status", "Attempts",
                                   "Kantata's message / reason", "Updated"], [
        [_e(p["id"]), _e(p["op"]), _e(p["entry_id"]),
         f'<span class="bad">{_e(p["status"])}</span>', _e(p["attempts"]),
         f'<div class="err">{_e(p["last_error"])}</div>', _e(p["updated_at"])]
        for p in view.get("problems", [])
    ], "no failed or conflicting outbox rows")
    runs = _table("runs", ["Started", "Job", "Status", "Took", "Pages", "Requests", "Rows",
                           "Rejected", "Error"], [
        [_e(r["started_at"]), _e(r["job"]),
         f'<span class="{"ok" if r["status"] in ("ok", "running") else "bad"}">'
         f'{_e(r["status"])}</span>',
         _e(_took(r["started_at"], r.get("finished_at"))),
         _e(r["pages"]), _e(r["requests"]), _e(r["rows_upserted"]), _e(r["rows_rejected"]),
         f'<div class="err">{_e(r["error"]) if r.get("error") else ""}</div>']
        for r in view.get("runs", [])
    ], "no runs yet")
    rejects = _table("rejects", ["Entry", "Reason", "Seen", "Last seen"], [
        [_e(r["entry_id"]), f'<div class="err">{_e(r["reason"])}</div>', _e(r["occurrences"]),
         _e(r["last_seen"])] for r in view.get("rejects", [])
    ], "none")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>syncd status</title>
<meta http-equiv="refresh" content="30"><style>{CSS}</style></head>
<body><h1>syncd status</h1><p class="muted">Generated {_e(now)}; refreshes every 30 s.</p>
{summary}
<h2>Freshness</h2>{freshness}
<h2>Outbox</h2>{counts}
<p>Oldest pending row: <span id="outbox-oldest-pending">{_e(_age(now, oldest))}</span>
{f"(queued {_e(oldest)})" if oldest else ""}</p>
<h2>Conflicts and failures</h2>
<p class="muted">Inspect with <code>syncd outbox list --status failed</code>, then
<code>syncd outbox retry ID</code> or <code>syncd outbox discard ID</code>.</p>{problems}
<h2>Recent runs</h2>{runs}
<h2>Rejected records <span id="rejected-count">({_e(view.get("rejected_records", 0))})</span></h2>
{rejects}
</body></html>"""


# ---------------------------------------------------------------------------- handlers
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}


def _scrub(state: OpsState, text: str) -> str:
    for secret in state.secrets:
        if secret and secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def make_app(state: OpsState) -> web.Application:
    """The aiohttp application serving the four endpoints."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers=SECURITY_HEADERS)

    async def readyz(_: web.Request) -> web.Response:
        r = await check_readiness(state, datetime.now(UTC))
        body = {"ready": r.ready, "reason": r.reason, "detail": r.detail,
                "last_successful_pull": r.last_pull.isoformat() if r.last_pull else None,
                "leader": state.is_leader()}
        return web.Response(body=_scrub(state, orjson.dumps(body).decode()).encode(),
                            status=200 if r.ready else 503, content_type="application/json",
                            headers=SECURITY_HEADERS)

    async def metrics(_: web.Request) -> web.Response:
        await refresh_gauges(state, datetime.now(UTC))
        text = _scrub(state, generate_latest(state.metrics.registry).decode())
        return web.Response(body=text.encode(), headers={
            **SECURITY_HEADERS, "Content-Type": CONTENT_TYPE_LATEST})

    async def status(_: web.Request) -> web.Response:
        now = datetime.now(UTC)
        readiness = await check_readiness(state, now)
        try:
            view = await status_view(state, now) if state.pool is not None else {}
        except (*DB_UNAVAILABLE, TimeoutError) as exc:
            view = {}
            readiness = Readiness(False, "database_unavailable",
                                  f"database unavailable: {type(exc).__name__}")
        page = render_status(view, now=now, owner=state.owner, is_leader=state.is_leader(),
                             readiness=readiness, running=state.running_jobs(),
                             started_at=state.started_at)
        return web.Response(text=_scrub(state, page), content_type="text/html",
                            status=200, headers=SECURITY_HEADERS)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app


async def start_http(state: OpsState, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `make_app(state)` on host:port (0 = any free port); return the runner (call
    `cleanup()` to stop) and the bound port. Raises OSError when the port is taken."""
    runner = web.AppRunner(make_app(state), handle_signals=False, access_log=None,
                           shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    return runner, bound
