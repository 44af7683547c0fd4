"""/status rendered by headless Chromium against a daemon over a seeded database, and the
gauges /metrics refreshes from the same rows."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from html import unescape
from typing import Any

import asyncpg
import pytest

from tests.ops.conftest import TOKEN, DaemonProc, assert_clean_output, daemon_env

pytestmark = pytest.mark.integration

LOCKED = "HTTP 422: Date performed is locked <b>before 2026-01-03</b> & cannot change"
CONFLICT = "changed in Kantata since it was queued (remote updated_at 2026-04-01T10:00:00Z)"


async def seed(conn: asyncpg.Connection) -> None:
    """Outbox rows in every state (statuses and ages forced after the insert, which resets
    them, as push would leave them) and a failed run in the history."""
    async with conn.transaction():  # one commit: push never sees them pending
        ids = [r["id"] for r in await conn.fetch("""
            INSERT INTO syncd.outbox (op, entry_id, payload)
            SELECT 'update', 900000 + g, '{"notes": "x"}'::jsonb
            FROM generate_series(1, 7) g ORDER BY g RETURNING id""")]
        await conn.execute("""
            UPDATE syncd.outbox SET
                status = CASE WHEN entry_id <= 900002 THEN 'failed'
                              WHEN entry_id = 900003 THEN 'conflict'
                              WHEN entry_id <= 900006 THEN 'done' ELSE 'pending' END,
                attempts = 3, created_at = now() - interval '2 hours',
                last_error = CASE WHEN entry_id <= 900002 THEN $1
                                  WHEN entry_id = 900003 THEN $2 END,
                next_attempt_at = now() + interval '1 day'
            WHERE id = ANY($3::bigint[])""", LOCKED, CONFLICT, ids)
    await conn.execute("""
        INSERT INTO syncd.sync_runs (run_id, job, started_at, finished_at, status, error)
        VALUES (gen_random_uuid(), 'reconcile', now() - interval '1 hour',
                now() - interval '59 minutes', 'failed', 'RetriableAPIError: HTTP 500: seeded')""")


async def dump_dom(url: str) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (tests/run installs Debian's package)")
    profile = tempfile.mkdtemp(prefix="syncd-chromium-")
    try:
        proc = await asyncio.create_subprocess_exec(
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            f"--user-data-dir={profile}", "--dump-dom", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        return out.decode()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</(?:span|dd|p)>', dom, re.S)
    assert m, f"no #{element_id} in the page"
    return unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()


@pytest.mark.browser
async def test_status_page_in_chromium_shows_the_seeded_figures(
        db_dsn: str, sim_url: str, conn: asyncpg.Connection, port: int, daemons: Any) -> None:
    await seed(conn)
    d: DaemonProc = await daemons(daemon_env(db_dsn, sim_url, port))
    await d.wait_http("/readyz", 200)
    dom = await dump_dom(f"http://127.0.0.1:{port}/status")

    assert "<title>syncd status</title>" in dom
    assert [text_of(dom, f"outbox-{s}") for s in ("pending", "done", "failed", "conflict")] == [
        "1", "3", "2", "1"]
    assert text_of(dom, "outbox-oldest-pending").startswith("2 h 0 min")
    assert text_of(dom, "entries-live") == "300"
    assert text_of(dom, "is-leader") == "this replica"
    assert text_of(dom, "ready").startswith("ok")
    assert re.fullmatch(r"\d+ s ago", text_of(dom, "watermark-lag"))
    # Kantata's messages, escaped: the <b> in the message is text, not markup.
    assert unescape(LOCKED).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in dom
    assert "<b>before" not in dom
    assert CONFLICT in dom
    assert "RetriableAPIError: HTTP 500: seeded" in dom
    assert TOKEN not in dom

    # /metrics refreshes the outbox gauges from the same rows on scrape.
    assert await d.metric('syncd_outbox_rows{status="failed"}') == 2
    assert await d.metric('syncd_outbox_rows{status="conflict"}') == 1
    oldest = await d.metric("syncd_outbox_oldest_pending_seconds")
    assert oldest is not None and 7200 <= oldest < 7300
    assert_clean_output(d)
