"""Bad outbox input not covered by the outbox suite (tests/integration/test_outbox_*): text
PostgreSQL cannot store, absurd values Kantata accepts but the mirror would refuse, wrong types
Kantata refuses followed by good rows for the same entry, and huge notes. Each row ends `done`
or `failed` with a reason, and never blocks the rows behind it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from structlog.testing import capture_logs

from syncd import pull
from syncd.app import open_deps
from syncd.runs import Deps
from syncd.simulator import Simulator
from tests.integration.conftest import make_settings
from tests.integration.outbox_helpers import (
    drain,
    editable_ids,
    enqueue,
    mirror_from_sim,
    new_entry,
    rows,
)
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration


@pytest.fixture
async def deps(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:
    async with open_deps(make_settings(db_dsn, sim_url)) as d:
        yield d


async def test_nul_in_a_payload_is_refused_at_insert(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.UntranslatableCharacterError, match=r"\\u0000"):
        await conn.execute("INSERT INTO syncd.outbox (op, entry_id, payload) VALUES "
                           "('update', 1, $1::jsonb)", '{"notes": "a\\u0000b"}')
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox") == 0


async def test_lone_surrogate_in_a_payload_is_refused_at_insert(
        conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError, match="(?i)unicode|surrogate"):
        await conn.execute("INSERT INTO syncd.outbox (op, entry_id, payload) VALUES "
                           "('update', 1, $1::jsonb)", '{"notes": "a\\ud800b"}')


INSERT_VIA_FUNCTION = ("INSERT INTO syncd.outbox (op, entry_id, payload) "
                       "VALUES ('update', 1, syncd.outbox_payload($1))")


@pytest.mark.parametrize(("doc", "error", "message"), [
    ({"notes": "a\x00b", "location": "🎉"}, asyncpg.UntranslatableCharacterError,
     "U+0000 (NUL) in notes, which PostgreSQL cannot store"),
    ({"location": "x\ud800", "notes": "\U0001f600 ok"}, asyncpg.InvalidTextRepresentationError,
     "an unpaired UTF-16 surrogate in location,"),
    ({"custom": {"po": ["ok", "\udc00"]}}, asyncpg.InvalidTextRepresentationError,
     "surrogate in custom.po[1],"),
    ({"bad\x00key": 1}, asyncpg.UntranslatableCharacterError, "U+0000 (NUL) in bad?key,"),
    ("a\x00", asyncpg.UntranslatableCharacterError, "U+0000 (NUL) in the payload itself,"),
])
async def test_outbox_payload_names_the_field_postgres_cannot_store(
        conn: asyncpg.Connection, doc: object, error: type[Exception], message: str) -> None:
    """The write path is symmetric with the pull (issue #12): what jsonb cannot hold is refused
    at insert, and `syncd.outbox_payload` says which field (json.dumps escapes it as \\u0000)."""
    with pytest.raises(error) as exc:
        await conn.execute(INSERT_VIA_FUNCTION, json.dumps(doc))
    assert message in str(exc.value)
    assert exc.value.column_name == "payload"  # type: ignore[attr-defined]
    assert "replace it" in exc.value.hint  # type: ignore[attr-defined]
    assert await conn.fetchval("SELECT count(*) FROM syncd.outbox") == 0


async def test_outbox_payload_converts_good_json_as_the_cast_does(
        conn: asyncpg.Connection) -> None:
    doc = json.dumps({"notes": "emoji \U0001f600 and \\u0000 as text", "time_in_minutes": 5})
    await conn.execute(INSERT_VIA_FUNCTION, doc)
    assert await conn.fetchval("SELECT payload = $1::jsonb FROM syncd.outbox", doc)
    with pytest.raises(asyncpg.InvalidTextRepresentationError, match="invalid input syntax"):
        await conn.execute(INSERT_VIA_FUNCTION, '{"notes": ')  # not JSON: the cast's error


async def test_refused_update_then_good_update_of_the_same_entry(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    eid = editable_ids(sim)[0]
    bad = await enqueue(conn, "update", eid, {"time_in_minutes": "lots"})
    good = await enqueue(conn, "update", eid, {"notes": "the row behind"})
    with capture_logs() as logs:
        await drain(deps, conn)
    state = await rows(conn)
    assert state[bad]["status"] == "failed"
    assert state[bad]["last_error"].startswith("HTTP 422")
    assert "Time in minutes" in state[bad]["last_error"]
    assert state[good]["status"] == "done"
    assert sim.get_entry(eid)["notes"] == "the row behind"
    assert any("Time in minutes" in str(e) for e in logs), logs


async def test_200_kb_notes_created_and_mirrored_whole(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    notes = ("ünïcödé ✓ line\n" * 14_000)[:200_000]
    rid = await enqueue(conn, "create", None, new_entry(sim, 1, notes=notes))
    await drain(deps, conn)
    row = (await rows(conn))[rid]
    assert row["status"] == "done"
    assert sim.get_entry(row["entry_id"])["notes"] == notes
    assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                               row["entry_id"]) == notes


async def test_absurd_date_is_never_created_where_the_mirror_cannot_follow(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """A create Kantata might accept but the mirror would reject (year 9999) must not leave a
    remote entry the mirror can never hold; the rows behind it are pushed."""
    before = len(sim.list_entries())
    bad = await enqueue(conn, "create", None, new_entry(sim, 1, date_performed="9999-12-31"))
    good = await enqueue(conn, "create", None, new_entry(sim, 2))
    await drain(deps, conn)
    state = await rows(conn)
    assert state[good]["status"] == "done"
    assert state[bad]["status"] == "failed" and "9999" in state[bad]["last_error"]
    assert len(sim.list_entries()) == before + 1
    await pull.sync_once(deps)
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_absurd_date_in_an_update_is_not_sent(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    await mirror_from_sim(conn, sim)
    eid = editable_ids(sim)[1]
    was = sim.get_entry(eid)
    rid = await enqueue(conn, "update", eid, {"date_performed": "0999-01-01"})
    await drain(deps, conn)
    row = (await rows(conn))[rid]
    assert row["status"] == "failed"
    assert row["last_error"] == ("not sent: date_performed 0999-01-01 is outside years "
                                 "1900..2200, which the mirror stores")
    assert sim.get_entry(eid) == was


@pytest.mark.parametrize(("payload", "refusal"), [
    ({"date_performed": "2026-03-01", "notes": "ok"}, None),
    ({"date_performed": "2026-02-30"}, None),  # Kantata names this one itself
    ({"date_performed": "2201-01-01"}, "outside years 1900..2200"),
    ({"notes": "n" * 1_000_001}, None),  # a megabyte of notes is mirrored whole
    ({"notes": "n" * 4_000_001}, "notes are 4000001 characters"),
    (None, None),
])
def test_mirror_refusal_decision(payload: dict | None, refusal: str | None) -> None:
    from syncd.batching import mirror_refusal

    got = mirror_refusal(payload)
    assert (got is None) if refusal is None else (got is not None and refusal in got)


async def test_an_entry_with_nul_in_kantata_is_updated_without_losing_its_text(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Someone wrote U+0000 into an entry in Kantata; an outbox edit of another field goes
    through, Kantata keeps the original text, and the mirror holds it flagged (issue #12)."""
    eid = editable_ids(sim)[2]
    sim.edit_entry(eid, {"notes": "keep\x00this", "location": "Room\x001"})
    await mirror_from_sim(conn, sim)
    rid = await enqueue(conn, "update", eid, {"time_in_minutes": 42})
    await drain(deps, conn)
    row = (await rows(conn))[rid]
    assert (row["status"], row["result"]) == ("done", "updated"), row["last_error"]
    remote = sim.get_entry(eid)
    assert remote is not None
    assert (remote["time_in_minutes"], remote["notes"], remote["location"]) == (
        42, "keep\x00this", "Room\x001")
    assert tuple(await conn.fetchrow(
        "SELECT time_in_minutes, notes, location FROM kantata.time_entries WHERE id = $1",
        eid)) == (42, "keep\ufffdthis", "Room\ufffd1")
    assert [tuple(r) for r in await conn.fetch(
        "SELECT field, original_utf8 FROM kantata.text_alterations WHERE record_id = $1 "
        "ORDER BY field", eid)] == [("location", b"Room\x001"), ("notes", b"keep\x00this")]
    assert len([e for e in sim.list_entries() if e["id"] == str(eid)]) == 1
