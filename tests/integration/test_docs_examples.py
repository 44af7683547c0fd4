"""The SQL examples of the outbox contract (migrations/README.md, "Examples") run as pasted
against a mirror of the simulator, and the rows they queue are pushed and end `done`: the
docs' examples cannot drift from what works (issue #15)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import asyncpg
import pytest

from syncd import pull
from syncd.runs import Deps
from syncd.simulator import SimConfig, Simulator
from tests.integration.conftest import TOKEN
from tests.integration.outbox_helpers import drain

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim() -> Simulator:
    """The demo's simulator has a lock date (issue #23): the examples must work under it."""
    return Simulator(SimConfig(token=TOKEN, entries=600, seed=7, lock_date="auto"))


def examples() -> list[str]:
    text = (ROOT / "migrations" / "README.md").read_text()
    section = text.split("### Examples\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


async def test_the_outbox_examples_run_as_pasted_and_their_rows_are_pushed(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    blocks = examples()
    role = f"timesheet_app_{uuid.uuid4().hex[:8]}"
    assert len(blocks) >= 5
    await pull.sync_once(deps)
    for sql in blocks:
        if "outbox_payload" in sql:  # the example of an error
            with pytest.raises(asyncpg.UntranslatableCharacterError,
                               match=r"U\+0000 \(NUL\) in notes"):
                await conn.execute(sql)
            continue
        if "CREATE ROLE" in sql:  # roles are cluster-wide: one of our own, dropped after
            sql = sql.replace("timesheet_app", role)
        await conn.execute(sql)
    await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    queued = await conn.fetch("SELECT op FROM syncd.outbox ORDER BY id")
    assert sorted(r["op"] for r in queued) == ["create", "create", "delete", "update"]
    await drain(deps, conn)
    rows = await conn.fetch("SELECT op, status, last_error FROM syncd.outbox ORDER BY id")
    assert [(r["op"], r["status"]) for r in rows] == [
        ("create", "done"), ("update", "done"), ("delete", "done"), ("create", "done")], rows
    assert await conn.fetchval("SELECT state FROM app.timesheets WHERE id = 42") == "submitted"
