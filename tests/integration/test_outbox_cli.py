"""`syncd push` and `syncd outbox list|retry|discard` as an operator runs them (real processes
against the simulator and PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import datetime

import asyncpg
import orjson
import pytest

from syncd.simulator import Simulator
from tests.integration.outbox_helpers import (
    enqueue, enqueue_many, entries_with_note, new_entry, rows,
)
from tests.integration.test_cli_sync import ROOT, env_for, syncd

pytestmark = pytest.mark.integration


async def test_push_then_list_retry_and_discard(db_dsn: str, sim_url: str, sim: Simulator,
                                                conn: asyncpg.Connection) -> None:
    env = env_for(db_dsn, sim_url)
    good = await enqueue(conn, "create", payload=new_entry(sim, 1))
    bad = await enqueue(conn, "create", payload=new_entry(sim, 2, time_in_minutes=5000))
    gone = await enqueue(conn, "update", 987654321, {"notes": "x"})

    code, out, err = await syncd(env, "push")
    assert code == 1, err[-2000:]                     # some rows failed
    assert "3 rows: 1 done, 2 failed, 0 conflict" in out
    assert "syncd outbox list --status failed" in out
    assert entries_with_note(sim)["outbox create 1"] == [(await rows(conn))[good]["entry_id"]]

    code, out, _ = await syncd(env, "outbox", "list")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3  # header + the two failed rows (done rows are hidden by default)
    assert f"{bad:>8} create" in out and "Time in minutes must be between 1 and 1440" in out
    assert f"{gone:>8} update  987654321 failed" in out and "not found in Kantata" in out

    code, out, _ = await syncd(env, "outbox", "list", "--status", "done", "--json")
    listed = orjson.loads(out)
    assert [(r["id"], r["result"]) for r in listed] == [(good, "created")]
    assert listed[0]["payload"]["notes"] == "outbox create 1"

    code, out, _ = await syncd(env, "outbox", "retry", str(bad), str(good))
    assert code == 1
    assert f"retried 1 row(s): {bad}" in out and f"left alone (missing, or not failed or " \
                                                  f"conflict): {good}" in out
    assert (await rows(conn))[bad]["status"] == "pending"

    code, out, _ = await syncd(env, "outbox", "discard", str(bad))
    assert code == 0 and f"discarded 1 row(s): {bad}" in out
    assert bad not in await rows(conn)

    code, out, _ = await syncd(env, "outbox", "retry", "--all-failed")
    assert code == 0 and f"retried 1 row(s): {gone}" in out

    code, out, _ = await syncd(env, "push", "--json")
    report = orjson.loads(out)
    assert code == 1 and report["outcomes"] == {"update:failed": 1}
    assert report["outbox_after"]["done"] == 1 and report["outbox_after"]["failed"] == 1


async def test_push_says_when_a_waiting_row_is_tried_next(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A trial user saw "1 to retry later" and no word of when."""
    env = env_for(db_dsn, "http://127.0.0.1:9/api/v1")  # refused: certainly not sent
    rid = await enqueue(conn, "create", payload=new_entry(sim, 1))
    code, out, err = await syncd(env, "push")
    assert code == 0, err[-2000:]
    due = await conn.fetchval("SELECT next_attempt_at FROM syncd.outbox WHERE id = $1", rid)
    assert due is not None and "1 to retry later" in out
    shown = re.search(r"next attempt of a waiting row at (\S+) \(in (\d+) s", out)
    assert shown, out
    assert abs((datetime.fromisoformat(shown[1]) - due).total_seconds()) < 2
    code, out, _ = await syncd(env, "push", "--json")
    assert abs((datetime.fromisoformat(orjson.loads(out)["next_attempt_at"]) - due)
               .total_seconds()) < 2


async def test_outbox_commands_need_only_the_database(db_dsn: str, sim_url: str) -> None:
    env = env_for(db_dsn, sim_url)
    del env["SYNCD_KANTATA_TOKEN"]
    code, out, err = await syncd(env, "outbox", "list", "--status", "all")
    assert code == 0, err
    assert "no matching outbox rows" in out
    code, _, err = await syncd(env, "outbox", "retry")
    assert code == 2 and "give row ids or --all-failed" in err
    for action in ("retry", "discard"):  # reached PostgreSQL: exit 1, a DataError (a trial)
        code, _, err = await syncd(env, "outbox", action, "99999999999999999999")
        assert code == 2 and "expected a number <= 9223372036854775807" in err, err


async def test_discarding_twice_says_why_in_plain_words(db_dsn: str, sim_url: str,
                                                        conn: asyncpg.Connection) -> None:
    env = env_for(db_dsn, sim_url)
    row = await enqueue(conn, "delete", 8000001)
    code, out, _ = await syncd(env, "outbox", "discard", str(row))
    assert code == 0 and f"discarded 1 row(s): {row}" in out
    code, out, _ = await syncd(env, "outbox", "discard", str(row))
    assert code == 1
    assert out.strip() == (f"discarded 0 row(s)\nleft alone (missing, in flight, done, or a "
                           f"create whose earlier request may have reached Kantata): {row}")


async def test_list_into_a_pipe_closed_early_ends_quietly(db_dsn: str, sim_url: str,
                                                          conn: asyncpg.Connection) -> None:
    # 400 rows as indented JSON are far more than a pipe holds, so `head` closes it mid-write
    await enqueue_many(conn, [("delete", 8000000 + i, None) for i in range(400)])
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"{sys.executable} -m syncd outbox list --json --limit 1000 | head -n 1;"
                      " echo \"syncd exit ${PIPESTATUS[0]}\"",
        env=env_for(db_dsn, sim_url), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().splitlines() == ["[", "syncd exit 0"]
    assert err.decode() == ""
