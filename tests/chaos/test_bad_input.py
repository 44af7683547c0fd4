"""Bad input through the real pull path (simulator → crafted page → syncd.pull.sync_once →
PostgreSQL), one test per kind. Each asserts the four promises of issue #8:

1. a specific error in the logs (structlog `capture_logs`),
2. the same error in the run history (`syncd.rejected_records.reason` for one bad record,
   `syncd.sync_runs.error` / `syncd.windows.last_error` for a bad page),
3. the rest of the data still syncs (good entries of the same cycle reach the mirror),
4. nothing already stored is lost (rows stored before keep their values).

Unit-level decoding of the same inputs is in tests/unit/test_pagination.py; this file proves the
whole pipeline (client retries, page transaction, run history) copes with them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from syncd import pull, store
from syncd.commands.status import render_text
from syncd.app import open_deps
from syncd.errors import MalformedResponseError
from syncd.runs import Deps
from syncd.settings import Settings
from syncd.simulator import SimConfig, Simulator
from tests.chaos.fakes import BODY, DROP, Tamper, serve_tampered
from tests.oracle import mirror_diff

pytestmark = pytest.mark.integration

TOKEN = "bad-input-token-0123456789"


def settings_for(db_dsn: str, url: str, **over: object) -> Settings:
    base: dict[str, object] = dict(
        database_url=db_dsn, kantata_base_url=url, kantata_token=TOKEN,
        kantata_allow_insecure_loopback=True, backfill_start=date(2024, 1, 1),
        backfill_window_months=6, per_page=10, max_retries=2, backoff_base=0.001,
        backoff_cap=0.01, retry_after_cap=0.01, request_timeout=5, overlap=5)
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimConfig(token=TOKEN, entries=80, seed=11, lock_date=None))


@pytest.fixture
def tamper() -> Tamper:
    return Tamper()


@pytest.fixture
async def url(sim: Simulator, tamper: Tamper) -> AsyncIterator[str]:
    async with serve_tampered(sim, tamper) as u:
        yield u


@pytest.fixture
async def deps(db_dsn: str, url: str) -> AsyncIterator[Deps]:
    async with open_deps(settings_for(db_dsn, url)) as d:
        yield d


async def baseline(deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> dict[int, dict]:
    """A clean first cycle; returns the stored rows by id (what must never be lost)."""
    stats = await pull.sync_once(deps)
    assert stats.errors == []
    assert await mirror_diff(conn, sim.list_entries()) == []
    return {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM kantata.time_entries")}


async def assert_nothing_lost(conn: asyncpg.Connection, before: dict[int, dict],
                              changed: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Every row stored before is still there and live; rows not in `changed` are identical."""
    now = {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM kantata.time_entries")}
    for eid, row in before.items():
        assert eid in now, f"{eid} vanished"
        assert now[eid]["deleted_at"] is None, f"{eid} marked deleted"
        if eid not in changed:
            assert now[eid] == row, f"{eid} changed"


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# --------------------------------------------------------------------------- one bad record
Mutation = Callable[[Tamper, str], None]


def field(**kw: Any) -> Mutation:
    return lambda t, eid: t.entry(eid, **kw)


def whole(obj: Any) -> Mutation:
    return lambda t, eid: t.entry(eid, replace=obj)


def raw_notes(new: bytes) -> Mutation:
    """Put bytes orjson will not write (escapes, invalid UTF-8) into the entry's notes."""

    def m(t: Tamper, eid: str) -> None:
        def fn(doc: dict[str, Any], _: web.Request) -> bytes:
            doc["time_entries"][eid]["notes"] = "MARK"
            return orjson.dumps(doc).replace(b'"MARK"', new)

        t.page(fn, when=lambda r: f'"{eid}":'.encode() in r.get(BODY, b""))

    return m


def id_with(value: str) -> Mutation:
    return lambda t, eid: t.entry(eid, id=value)


RECORD_CASES: list[tuple[str, Mutation, str]] = [
    ("negative_minutes", field(time_in_minutes=-5), "time_in_minutes -5 is outside"),
    ("absurd_minutes", field(time_in_minutes=10**7), "time_in_minutes 10000000 is outside"),
    ("minutes_text", field(time_in_minutes="sixty"), "time_in_minutes must be an integer"),
    ("minutes_bool", field(time_in_minutes=True), "got a boolean"),
    ("minutes_float", field(time_in_minutes=60.5), "must be an integer, got float"),
    ("minutes_missing", field(time_in_minutes=DROP), "time_in_minutes is missing"),
    ("date_year_9999", field(date_performed="9999-12-31"), "outside years"),
    ("date_impossible", field(date_performed="2026-02-30"), "not a valid date"),
    ("date_number", field(date_performed=20260101), "date_performed must be YYYY-MM-DD"),
    ("date_missing", field(date_performed=DROP), "date_performed must be YYYY-MM-DD"),
    ("updated_year_9999", field(updated_at="9999-12-31T00:00:00+00:00"), "outside years"),
    ("updated_naive", field(updated_at="2026-03-08T03:00:00"), "has no UTC offset"),
    ("updated_garbage", field(updated_at="yesterday"), "is not ISO 8601"),
    ("updated_missing", field(updated_at=DROP), "updated_at must be an ISO 8601 string"),
    ("created_garbage", field(created_at=12), "created_at must be an ISO 8601 string"),
    ("workspace_text", field(workspace_id="ten"), "workspace_id must be an integer"),
    ("workspace_negative", field(workspace_id="-1"), "workspace_id -1 is outside"),
    ("rate_beyond_bigint", field(rate_in_cents=2**70), "rate_in_cents must be an integer"),
    ("billable_text", field(billable="yes"), "billable must be true, false or null"),
    ("notes_number", field(notes=42), "notes must be a string"),
    # an object without `id` is not here: its map key is its id (contract: no `id` property)
    ("id_text", id_with("abc"), "id must be an integer"),
    ("id_beyond_bigint", id_with(str(2**64)), "is outside 1.."),
    # regressions: each of these crashed or failed the whole page before the fix
    ("entry_is_a_string", whole("not an entry"), "entry is not a JSON object but a string"),
    ("entry_is_an_array", whole([1, 2]), "entry is not a JSON object but an array"),
    ("entry_is_null_in_keyed_object", whole(None), "absent from the `time_entries` object"),
    ("key_and_id_disagree", id_with("8000002"), "holds an entry with id 8000002"),
    ("currency_unit_beyond_integer", field(currency_base_unit=2**40),
     "currency_base_unit 1099511627776 is outside 0..2147483647"),
    ("id_with_nul", id_with("12\x0034"), "id must be an integer"),
    ("id_of_100_kb", id_with("9" * 100_000), "id is not a 64-bit integer (100000 characters)"),
]


@pytest.mark.parametrize(("mutate", "reason"), [c[1:] for c in RECORD_CASES],
                         ids=[c[0] for c in RECORD_CASES])
async def test_bad_record_is_rejected_and_the_rest_syncs(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection,
        mutate: Mutation, reason: str) -> None:
    before = await baseline(deps, sim, conn)
    ids = sorted(before)
    target, others = ids[5], ids[10:14]
    for i in (target, *others):
        sim.edit_entry(i, {"notes": f"edited remotely {i}"})
    mutate(tamper, str(target))

    with capture_logs() as logs:
        stats = await pull.sync_once(deps)

    assert tamper.applied, "the bad record was never served"
    assert any(reason in e["reason"] for e in events(logs, "record_rejected")), logs
    rows = await conn.fetch("SELECT reason, run_id FROM syncd.rejected_records")
    assert [r["reason"] for r in rows if reason in r["reason"]], rows
    assert all(r["run_id"] == stats.run_id for r in rows)
    run = await conn.fetchrow("SELECT status, rows_rejected FROM syncd.sync_runs "
                              "WHERE run_id = $1", stats.run_id)
    assert run["status"] == "ok" and run["rows_rejected"] >= 1
    # the rest of the cycle synced: only the bad entry differs from Kantata
    diffs = await mirror_diff(conn, sim.list_entries())
    assert diffs and all(d.startswith(str(target)) for d in diffs), diffs
    for i in others:
        assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                                   i) == f"edited remotely {i}"
    # the stored version of the bad entry is kept, untouched
    await assert_nothing_lost(conn, before, changed=set(others))
    # and `syncd status` names it, so an operator knows totals may be short
    text = render_text(await store.status_snapshot(conn))
    assert "rejected records: 1 (not in the mirror: totals may be short" in text
    shown = await conn.fetchval("SELECT coalesce(entry_id, '-') FROM syncd.rejected_records")
    assert f"  entry {shown}: " in text and reason in text


async def test_new_bad_record_is_rejected_and_its_page_still_stored(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    new = sim.create_entry({"date_performed": "2026-11-01", "time_in_minutes": 30,
                            "notes": "brand new"})
    good = sim.create_entry({"date_performed": "2026-11-02", "time_in_minutes": 45})
    tamper.entry(new["id"], time_in_minutes=-1)
    with capture_logs() as logs:
        stats = await pull.sync_once(deps)
    assert [e["entry_id"] for e in events(logs, "record_rejected")] == [new["id"]]
    assert await conn.fetchval("SELECT reason FROM syncd.rejected_records WHERE entry_id = $1",
                               new["id"]) == "time_in_minutes -1 is outside 0..1000000"
    assert stats.rows_rejected == 1
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries WHERE id = $1",
                               int(new["id"])) == 0
    assert await conn.fetchval("SELECT time_in_minutes FROM kantata.time_entries WHERE id = $1",
                               int(good["id"])) == 45
    await assert_nothing_lost(conn, before)


async def test_the_same_bad_record_on_every_cycle_is_counted_not_duplicated(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    await baseline(deps, sim, conn)
    eid = sorted(int(e["id"]) for e in sim.list_entries())[3]
    sim.edit_entry(eid, {"notes": "x"})
    tamper.entry(str(eid), billable="maybe")
    await pull.sync_once(deps)
    await pull.sync_once(deps)  # the overlap re-reads it
    rows = await conn.fetch("SELECT entry_id, occurrences FROM syncd.rejected_records")
    assert [(r["entry_id"], r["occurrences"]) for r in rows] == [(str(eid), 2)]


async def test_200_kb_notes_are_stored_whole(deps: Deps, sim: Simulator,
                                             conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    eid = sorted(before)[7]
    big = ("ünïcödé ✓ line\n" * 14_000)[:200_000]
    sim.edit_entry(eid, {"notes": big})
    stats = await pull.sync_once(deps)
    assert stats.rows_rejected == 0
    assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                               eid) == big
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_unknown_fields_are_kept_in_raw(deps: Deps, sim: Simulator, tamper: Tamper,
                                              conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    eid = sorted(before)[2]
    sim.edit_entry(eid, {"notes": "has extras"})
    tamper.entry(str(eid), custom_fields={"po": "PO-7", "nested": [1, {"a": None}]},
                 brand_new_flag=True)
    with capture_logs() as logs:
        stats = await pull.sync_once(deps)
    assert stats.rows_rejected == 0 and not events(logs, "record_rejected")
    raw = orjson.loads(await conn.fetchval(
        "SELECT raw FROM kantata.time_entries WHERE id = $1", eid))
    assert raw["custom_fields"] == {"po": "PO-7", "nested": [1, {"a": None}]}
    assert raw["brand_new_flag"] is True and raw["notes"] == "has extras"
    diffs = await mirror_diff(conn, sim.list_entries())
    assert diffs == [f"{eid}.raw differs in ['brand_new_flag', 'custom_fields']"]


async def test_nul_written_by_a_kantata_user_is_stored_not_rejected(
        deps: Deps, sim: Simulator, conn: asyncpg.Connection) -> None:
    """Real remote data (no tampering): Kantata stores the NUL, PostgreSQL cannot; the entry is
    live with U+FFFD in its place and flagged (issue #12)."""
    before = await baseline(deps, sim, conn)
    a, b = sorted(before)[:2]
    sim.edit_entry(a, {"notes": "pasted\x00from a terminal", "time_in_minutes": 77})
    sim.edit_entry(b, {"notes": "fine"})
    with capture_logs() as logs:
        stats = await pull.sync_once(deps)
    assert not events(logs, "record_rejected") and stats.rows_rejected == 0
    assert [(e["id"], e["fields"], e["reasons"]) for e in events(logs, "record_altered")] == [
        (a, ["notes"], ["nul"])]
    assert tuple(await conn.fetchrow(
        "SELECT notes, time_in_minutes FROM kantata.time_entries WHERE id = $1", a)) == (
        "pasted\ufffdfrom a terminal", 77)
    assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                               b) == "fine"
    await assert_nothing_lost(conn, before, changed={a, b})


ALTERATIONS_SEEN = (
    "SELECT record_kind, record_id, field, reasons, original_utf8 FROM kantata.text_alterations "
    "ORDER BY record_kind, record_id, field")


async def test_every_entry_reaches_the_mirror_whatever_its_text(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    """Issue #12: NUL in notes, in location, in a side-loaded workspace title, in an unknown
    field and in a key; a lone surrogate; a megabyte of notes; emoji. Every entry is a live row
    with exact numbers and dates, the altered ones are flagged with their original text, and the
    BI total equals Kantata's to the minute."""
    await baseline(deps, sim, conn)
    ids = sorted(int(e["id"]) for e in sim.list_entries())
    nul_notes, nul_loc, extra, key, surrogate, big, emoji = ids[3:10]
    megabyte = ("ünïcödé ✓ 🎉 " * 80_000)[:1_000_000]
    sim.edit_entry(nul_notes, {"notes": "tab\x00separated", "time_in_minutes": 95})
    sim.edit_entry(nul_loc, {"location": "Berlin\x00Mitte"})
    sim.edit_entry(big, {"notes": megabyte})
    sim.edit_entry(emoji, {"notes": "done 🎉 ✓ 𝄞 👩‍💻"})
    for i in (extra, key, surrogate):
        sim.edit_entry(i, {"notes": f"tampered {i}"})
    tamper.entry(str(extra), custom_fields={"po": "PO\x007"})
    tamper.entry(str(key), **{"bad\x00key": 1})
    raw_notes(b'"half \\ud83d of an emoji"')(tamper, str(surrogate))
    ws = int(sim.get_entry(ids[20])["workspace_id"])
    sim.rename_workspace(ws, "Project\x00Zero")

    with capture_logs() as logs:
        stats = await pull.sync_once(deps)

    assert stats.errors == [] and stats.rows_rejected == 0
    assert await conn.fetchval("SELECT count(*) FROM syncd.rejected_records") == 0
    remote = {int(e["id"]): e for e in sim.list_entries()}
    rows = {r["id"]: r for r in await conn.fetch(
        "SELECT * FROM kantata.time_entries WHERE deleted_at IS NULL")}
    assert rows.keys() == remote.keys()
    for i, e in remote.items():
        r = rows[i]
        assert (r["time_in_minutes"], r["date_performed"].isoformat(), r["rate_in_cents"],
                r["billable"], r["approved"], r["workspace_id"]) == (
            e["time_in_minutes"], e["date_performed"], e["rate_in_cents"], e["billable"],
            e["approved"], int(e["workspace_id"])), i
        assert r["updated_at"] == datetime.fromisoformat(e["updated_at"]), i
    assert await conn.fetchval(
        "SELECT sum(time_in_minutes) FROM kantata.time_entries WHERE deleted_at IS NULL"
    ) == sum(e["time_in_minutes"] for e in remote.values())
    assert rows[nul_notes]["notes"] == "tab\ufffdseparated"
    assert rows[nul_loc]["location"] == "Berlin\ufffdMitte"
    assert rows[surrogate]["notes"] == "half \ufffd of an emoji"
    assert rows[big]["notes"] == megabyte and rows[emoji]["notes"] == "done 🎉 ✓ 𝄞 👩‍💻"
    assert orjson.loads(rows[extra]["raw"])["custom_fields"] == {"po": "PO\ufffd7"}
    assert orjson.loads(rows[key]["raw"])["bad\ufffdkey"] == 1
    assert await conn.fetchval("SELECT title FROM kantata.workspaces WHERE id = $1",
                               ws) == "Project\ufffdZero"

    expected = [
        ("time_entry", nul_notes, "notes", ["nul"], b"tab\x00separated"),
        ("time_entry", nul_loc, "location", ["nul"], b"Berlin\x00Mitte"),
        ("time_entry", extra, "custom_fields.po", ["nul"], b"PO\x007"),
        ("time_entry", key, "<key>", ["nul"], b"bad\x00key"),
        ("time_entry", surrogate, "notes", ["unpaired_surrogate"],
         "half \ud83d of an emoji".encode("utf-8", "surrogatepass")),
        ("workspace", ws, "title", ["nul"], b"Project\x00Zero"),
    ]
    assert [tuple(r) for r in await conn.fetch(ALTERATIONS_SEEN)] == sorted(expected)
    fresh = await conn.fetchrow("SELECT records_altered, records_rejected FROM syncd.freshness")
    assert tuple(fresh) == (6, 0)
    assert "altered records:  6 (text PostgreSQL cannot hold was replaced" in render_text(
        await store.status_snapshot(conn))
    altered = events(logs, "record_altered")
    assert {(e["kind"], e["id"]) for e in altered} >= {
        ("time_entries", i) for i in (nul_notes, nul_loc, extra, key, surrogate)} | {
        ("workspaces", ws)}
    assert stats.rows_altered == len(altered) and stats.details["rows_altered"] == len(altered)
    assert deps.metrics.rows_altered.labels("pull")._value.get() == len(altered)

    # the overlap re-read stores the same versions again: nothing new, nothing rejected
    again = await pull.sync_once(deps)
    assert again.rows_rejected == 0
    assert [tuple(r) for r in await conn.fetch(ALTERATIONS_SEEN)] == sorted(expected)
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == len(remote)


async def test_results_naming_an_id_missing_from_the_keyed_object(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    ids = sorted(before)
    for i in ids[:3]:
        sim.edit_entry(i, {"notes": f"e{i}"})

    def drop_one(doc: dict[str, Any], _: web.Request) -> dict[str, Any]:
        doc["time_entries"].pop(str(ids[1]), None)
        return doc

    tamper.page(drop_one, when=lambda r: r.query.get("order") == "updated_at:asc")
    with capture_logs() as logs:
        await pull.sync_once(deps)
    assert any("absent from the `time_entries` object" in e["reason"]
               for e in events(logs, "record_rejected"))
    assert await conn.fetchval("SELECT reason FROM syncd.rejected_records WHERE entry_id = $1",
                               str(ids[1])) == (
        "listed in `results` but absent from the `time_entries` object")
    for i in (ids[0], ids[2]):
        assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                                   i) == f"e{i}"
    await assert_nothing_lost(conn, before, changed={ids[0], ids[2]})


async def test_malformed_results_items_are_rejected_not_silently_dropped(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    """Two broken references on one page: both logged, one dead letter (same key, stored once
    in the same statement), and the page's good entry still stored."""
    before = await baseline(deps, sim, conn)
    ids = sorted(before)
    for i in ids[:3]:
        sim.edit_entry(i, {"notes": f"e{i}"})

    def break_refs(doc: dict[str, Any], _: web.Request) -> dict[str, Any]:
        doc["results"][0] = doc["results"][0]["id"]  # a bare string
        doc["results"][1] = {"key": "time_entries"}  # no id
        return doc

    tamper.page(break_refs, when=lambda r: r.query.get("order") == "updated_at:asc")
    with capture_logs() as logs:
        stats = await pull.sync_once(deps)
    reason = "`results` item is not a {key, id} reference"
    assert [e["reason"] for e in events(logs, "record_rejected")] == [reason, reason]
    rows = await conn.fetch("SELECT entry_id, reason, occurrences, run_id "
                            "FROM syncd.rejected_records")
    assert [(r["entry_id"], r["reason"], r["occurrences"], r["run_id"]) for r in rows] == [
        (None, reason, 1, stats.run_id)]
    assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                               ids[2]) == f"e{ids[2]}"
    await assert_nothing_lost(conn, before, changed={ids[2]})


async def test_an_id_listed_twice_is_stored_once(deps: Deps, sim: Simulator, tamper: Tamper,
                                                 conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    eid = sorted(before)[4]
    sim.edit_entry(eid, {"notes": "twice"})

    def dup(doc: dict[str, Any], _: web.Request) -> dict[str, Any]:
        doc["results"] = doc["results"] + doc["results"][-1:]
        return doc

    tamper.page(dup, when=lambda r: r.query.get("order") == "updated_at:asc")
    stats = await pull.sync_once(deps)
    assert stats.errors == [] and stats.rows_rejected == 0
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_bad_side_loaded_object_is_rejected_entries_still_stored(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    eid = sorted(before)[6]
    sim.edit_entry(eid, {"notes": "side"})

    def bad_user(doc: dict[str, Any], _: web.Request) -> dict[str, Any]:
        for key in list(doc.get("users", {}))[:1]:
            doc["users"][key] = dict(doc["users"][key], id="seven")
        return doc

    tamper.page(bad_user, when=lambda r: r.query.get("order") == "updated_at:asc")
    with capture_logs() as logs:
        await pull.sync_once(deps)
    assert any("users: id must be an integer" in e["reason"]
               for e in events(logs, "record_rejected"))
    assert await conn.fetchval("SELECT count(*) FROM syncd.rejected_records WHERE reason = $1",
                               "users: id must be an integer, got 'seven'") == 1
    assert await mirror_diff(conn, sim.list_entries()) == []
    await assert_nothing_lost(conn, before, changed={eid})


# --------------------------------------------------------------------------- one bad page
def _body(data: bytes, content_type: str = "application/json") -> Callable[..., web.Response]:
    return lambda doc, req: web.Response(status=200, body=data, content_type=content_type)


def _doc(fn: Callable[[dict[str, Any]], Any]) -> Callable[..., bytes]:
    return lambda doc, req: orjson.dumps(fn(doc))


PAGE_CASES: list[tuple[str, Callable[..., Any], str]] = [
    ("truncated_json", lambda doc, req: orjson.dumps(doc)[:150], "invalid or truncated JSON"),
    ("html_200", _body(b"<!DOCTYPE html><html><body>Maintenance</body></html>", "text/html"),
     "response body is HTML"),
    ("empty_200", _body(b""), "response body is empty"),
    ("binary_200", _body(b"\x1f\x8b\x08\x00\x00\x00garbage"), "invalid or truncated JSON"),
    ("json_array", _doc(lambda d: [d]), "not a JSON object"),
    ("json_null", _doc(lambda d: None), "not a JSON object"),
    ("no_results", _doc(lambda d: {k: v for k, v in d.items() if k != "results"}),
     "no `results` array"),
    ("results_not_list", _doc(lambda d: dict(d, results={"0": d["results"][0]})),
     "no `results` array"),
    ("keyed_object_is_list", _doc(lambda d: dict(d, time_entries=list(
        d["time_entries"].values()))), "not an object keyed by id"),
    ("meta_not_object", _doc(lambda d: dict(d, meta=[1])), "`meta` is not an object"),
    ("page_count_text", _doc(lambda d: dict(d, meta=dict(d["meta"], page_count="2"))),
     "meta.page_count is not an integer"),
    ("count_float", _doc(lambda d: dict(d, count=1.5, meta=dict(d["meta"], count=1.5))),
     "meta.count is not an integer"),
    ("nested_too_deeply", lambda doc, req: orjson.dumps(doc)[:-1] + b',"x":' + b"[" * 5000
     + b"]" * 5000 + b"}", "nested too deeply"),
]


def _second_page_of_one_window(picked: list[str]) -> Callable[[web.Request], bool]:
    """Page 2 of the first window that reaches page 2, every time it is asked for."""

    def when(r: web.Request) -> bool:
        w = r.query.get("date_performed_between")
        if w is None or r.query.get("page") != "2":
            return False
        if not picked:
            picked.append(w)
        return w == picked[0]

    return when


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in PAGE_CASES],
                         ids=[c[0] for c in PAGE_CASES])
async def test_persistently_bad_page_fails_its_window_only(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection,
        make: Callable[..., Any], message: str) -> None:
    before = await baseline(deps, sim, conn)
    edited = sorted(before)[-1]
    sim.edit_entry(edited, {"notes": "picked up by the incremental pass"})
    picked: list[str] = []
    tamper.page(make, when=_second_page_of_one_window(picked))

    with capture_logs() as logs:
        stats = await pull.sync_once(deps, since=date(2024, 1, 1),
                                     until=datetime.now(UTC).date() + timedelta(days=31))

    assert picked, "no window had a second page"
    # log: the window failure names the cause
    failed = events(logs, "window_failed")
    assert len(failed) == 1 and message in failed[0]["error"], failed
    # run history: the run is partial with the cause; the window row keeps it too
    run = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs WHERE run_id = $1",
                              stats.run_id)
    assert run["status"] == "partial" and message in run["error"], dict(run)
    w = await conn.fetchrow("SELECT status, last_error, pages_done FROM syncd.windows "
                            "WHERE status = 'failed'")
    assert message in w["last_error"] and w["pages_done"] == 1
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status = 'done'") >= 1
    # the rest synced (other windows and the incremental pass), nothing stored was lost
    assert await mirror_diff(conn, sim.list_entries()) == []
    await assert_nothing_lost(conn, before, changed={edited})
    # once Kantata answers properly again, the failed window is read and marked done
    tamper.rules.clear()
    stats = await pull.sync_once(deps)
    assert stats.errors == []
    assert await conn.fetchval("SELECT count(*) FROM syncd.windows WHERE status <> 'done'") == 0


async def test_bad_page_once_is_retried_and_the_cause_logged(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    tamper.page(_body(b"<html>502 Bad Gateway</html>", "text/html"), times=1)
    tamper.page(lambda doc, req: orjson.dumps(doc)[:-40], times=1)
    with capture_logs() as logs:
        stats = await pull.sync_once(deps)
    assert stats.errors == [] and tamper.applied == 2
    retries = [e for e in logs if e["event"] == "request_retry"]
    assert any("HTML" in e.get("error", "") for e in retries), retries
    assert any("truncated JSON" in e.get("error", "") for e in retries), retries
    assert await mirror_diff(conn, sim.list_entries()) == []


def _incremental(r: web.Request) -> bool:
    return r.query.get("order") == "updated_at:asc"


async def _edits_over_seconds(sim: Simulator, ids: list[int], n: int) -> datetime:
    """Edit `n` entries, one per second starting a minute from now; return a `now` for
    sync_once that lies after all of them."""
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=60)
    for k, i in enumerate(ids[:n]):
        sim.edit_entry(i, {"notes": f"wave {i}", "updated_at": (base + timedelta(
            seconds=k)).isoformat()})
    return base + timedelta(seconds=n + 10)


async def test_persistently_bad_incremental_page_fails_the_run_keeps_what_was_read(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    ids = sorted(before)
    now = await _edits_over_seconds(sim, ids, 15)  # page 1: 10 entries, page 2: 5
    wm_before = await conn.fetchval("SELECT watermark FROM syncd.watermarks")
    seen: list[str] = []

    def second_page(r: web.Request) -> bool:
        if not _incremental(r):
            return False
        key = r.query["updated_after"]
        if key not in seen:
            seen.append(key)
        return seen.index(key) >= 1

    tamper.page(_body(b"<html><h1>Service Unavailable</h1></html>", "text/html"),
                when=second_page)
    with capture_logs() as logs, pytest.raises(MalformedResponseError, match="HTML"):
        await pull.sync_once(deps, now=now)
    finished = events(logs, "job_finished")[-1]
    assert finished["status"] == "failed" and "HTML" in finished["error"]
    run = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs "
                              "ORDER BY started_at DESC LIMIT 1")
    assert run["status"] == "failed" and "MalformedResponseError" in run["error"]
    # page 1 is stored and the watermark moved only over it
    stored = [i for i in ids[:15] if await conn.fetchval(
        "SELECT notes FROM kantata.time_entries WHERE id = $1", i) == f"wave {i}"]
    assert len(stored) == 10
    assert await conn.fetchval("SELECT watermark FROM syncd.watermarks") >= wm_before
    await assert_nothing_lost(conn, before, changed=set(ids[:15]))
    tamper.rules.clear()
    await pull.sync_once(deps, now=now)
    assert await mirror_diff(conn, sim.list_entries()) == []


async def test_unordered_incremental_page_is_a_specific_failure(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    ids = sorted(before)
    now = await _edits_over_seconds(sim, ids, 6)

    def reverse(doc: dict[str, Any], _: web.Request) -> dict[str, Any]:
        doc["results"] = doc["results"][::-1]
        return doc

    tamper.page(reverse, when=_incremental)
    with capture_logs() as logs, pytest.raises(MalformedResponseError,
                                               match="not ordered by updated_at"):
        await pull.sync_once(deps, now=now)
    run = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs "
                              "ORDER BY started_at DESC LIMIT 1")
    assert run["status"] == "failed" and "not ordered by updated_at" in run["error"]
    assert "not ordered by updated_at" in events(logs, "job_finished")[-1]["error"]
    await assert_nothing_lost(conn, before)


async def test_server_ignoring_updated_after_cannot_loop_forever(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    before = await baseline(deps, sim, conn)
    ids = sorted(before)
    now = await _edits_over_seconds(sim, ids, 25)
    first: list[bytes] = []

    def same_page(doc: dict[str, Any], _: web.Request) -> bytes:
        if not first:
            first.append(orjson.dumps(doc))
        return first[0]

    tamper.page(same_page, when=_incremental)
    with capture_logs() as logs, pytest.raises(MalformedResponseError, match="did not advance"):
        await pull.sync_once(deps, now=now)
    assert "did not advance" in events(logs, "job_finished")[-1]["error"]
    assert tamper.applied <= 3
    await assert_nothing_lost(conn, before, changed=set(ids[:10]))


async def test_rejected_record_on_a_full_page_does_not_end_the_incremental_pass(
        deps: Deps, sim: Simulator, tamper: Tamper, conn: asyncpg.Connection) -> None:
    """A page of `per_page` results with one rejected entry is still a full page: the pass
    must go on to the next page in the same cycle."""
    before = await baseline(deps, sim, conn)
    ids = sorted(before)
    now = await _edits_over_seconds(sim, ids, 25)
    tamper.entry(str(ids[2]), time_in_minutes=-3)
    stats = await pull.sync_once(deps, now=now)
    assert stats.rows_rejected == 1
    diffs = await mirror_diff(conn, sim.list_entries())
    assert diffs and all(d.startswith(str(ids[2])) for d in diffs), diffs


# --------------------------------------------------------------------------- bad configuration
SECRET = "tok-never-print-me-0123456789"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            env: dict[str, str], argv: list[str]) -> tuple[int, str]:
    from syncd.cli import main

    base = {"SYNCD_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
            "SYNCD_KANTATA_TOKEN": SECRET}
    for k, v in {**base, **env}.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


CONFIG_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("interval_negative", {"SYNCD_PULL_INTERVAL": "-5"},
     "invalid setting SYNCD_PULL_INTERVAL (from the environment): Input should be greater than 0"),
    ("per_page_over_max", {"SYNCD_PER_PAGE": "9000"},
     "invalid setting SYNCD_PER_PAGE (from the environment): Input should be less than or equal to 5000"),
    ("backfill_start_not_a_date", {"SYNCD_BACKFILL_START": "2024-13-01"},
     "invalid setting SYNCD_BACKFILL_START (from the environment):"),
    ("bad_log_level", {"SYNCD_LOG_LEVEL": "LOUD"},
     "invalid setting SYNCD_LOG_LEVEL (from the environment): Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("bad_conflict_policy", {"SYNCD_CONFLICT_POLICY": "remote_wins"},
     "invalid setting SYNCD_CONFLICT_POLICY (from the environment): Input should be 'park' or 'local_wins'"),
    ("port_out_of_range", {"SYNCD_HTTP_PORT": "70000"}, "invalid setting SYNCD_HTTP_PORT (from the environment):"),
    ("base_url_not_http", {"SYNCD_KANTATA_BASE_URL": "ftp://api.mavenlink.com"},
     "invalid setting SYNCD_KANTATA_BASE_URL (from the environment): Value error, must be an http(s) URL"),
    ("plain_http_to_loopback_without_opt_in",
     {"SYNCD_KANTATA_BASE_URL": "http://127.0.0.1:8089/api/v1"},
     "SYNCD_KANTATA_BASE_URL: plain http to loopback host '127.0.0.1' also needs "
     "SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK=true"),
    ("tls_verify_off_for_a_remote_host",
     {"SYNCD_KANTATA_TLS_VERIFY": "false", "SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK": "true"},
     "SYNCD_KANTATA_BASE_URL: SYNCD_KANTATA_TLS_VERIFY=false is only allowed for a simulator "
     "on a loopback address (127.0.0.0/8, ::1, localhost), and host 'api.mavenlink.com' is "
     "not one"),
    # a trial: the message did not say the host was what was wrong (nor leaks the password)
    ("plain_http_to_a_remote_host",
     {"SYNCD_KANTATA_BASE_URL": "http://me:hunter2@10.1.2.3:8080/api/v1",
      "SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK": "true"},
     "SYNCD_KANTATA_BASE_URL: plain http is only allowed for a simulator on a loopback "
     "address (127.0.0.0/8, ::1, localhost), and host '10.1.2.3' is not one"),
    ("token_and_token_file", {"SYNCD_KANTATA_TOKEN_FILE": "/etc/hostname"},
     "SYNCD_KANTATA_TOKEN: set SYNCD_KANTATA_TOKEN or SYNCD_KANTATA_TOKEN_FILE, not both"),
    ("token_file_missing", {"SYNCD_KANTATA_TOKEN": None,
                            "SYNCD_KANTATA_TOKEN_FILE": "/nonexistent/token"},
     "SYNCD_KANTATA_TOKEN_FILE: /nonexistent/token is not a file"),
    # accepted before (a trial): an interval of `inf`, a lock key beyond PostgreSQL's bigint
    ("interval_inf", {"SYNCD_PULL_INTERVAL": "inf"}, "SYNCD_PULL_INTERVAL"),
    ("grace_nan", {"SYNCD_SHUTDOWN_GRACE": "nan"}, "SYNCD_SHUTDOWN_GRACE"),
    ("lock_key_beyond_bigint", {"SYNCD_LEADER_LOCK_KEY": "99999999999999999999"},
     "SYNCD_LEADER_LOCK_KEY"),
]


@pytest.mark.parametrize(("env", "message"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_invalid_setting_is_one_line_naming_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        env: dict[str, Any], message: str) -> None:
    code, err = run_cli(monkeypatch, capsys, env, ["status"])
    assert code == 2
    assert err.startswith("syncd: invalid setting") and message in err, err
    assert "hunter2" not in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert SECRET not in err


def test_missing_token_is_named_before_anything_connects(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(monkeypatch, capsys, {"SYNCD_KANTATA_TOKEN": None}, ["sync"])
    assert code == 2
    assert err == ("syncd: invalid setting SYNCD_KANTATA_TOKEN: no Kantata token configured "
                   "(set SYNCD_KANTATA_TOKEN or SYNCD_KANTATA_TOKEN_FILE)")


def test_empty_token_file_is_named_as_empty(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Any) -> None:
    """An empty token file said 'no Kantata token configured' (a trial): it names the file."""
    f = tmp_path / "token"
    f.write_text("\n")
    code, err = run_cli(monkeypatch, capsys, {"SYNCD_KANTATA_TOKEN": None,
                                              "SYNCD_KANTATA_TOKEN_FILE": str(f)}, ["sync"])
    assert code == 2
    assert f"invalid setting SYNCD_KANTATA_TOKEN_FILE: {f} is empty" in err, err


@pytest.mark.parametrize("where", ["env", "file"])
def test_a_token_with_a_line_break_is_named_not_an_http_header_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Any, where: str) -> None:
    """A token holding a line break failed every request with aiohttp's 'Forbidden control
    character detected in headers' (a trial): the setting is named, the token never shown."""
    token = "s3cr3t-t0ken\nX-Injected: 1"
    if where == "env":
        env: dict[str, Any] = {"SYNCD_KANTATA_TOKEN": token}
        setting = "SYNCD_KANTATA_TOKEN"
    else:
        f = tmp_path / "token"
        f.write_text(token + "\n")
        env = {"SYNCD_KANTATA_TOKEN": None, "SYNCD_KANTATA_TOKEN_FILE": str(f)}
        setting = "SYNCD_KANTATA_TOKEN_FILE"
    code, err = run_cli(monkeypatch, capsys, env, ["sync"])
    assert code == 2
    assert err == (f"syncd: invalid setting {setting}: the token holds a control character "
                   "(a line break?) at position 13; a bearer token is one line"), err
    assert "s3cr3t" not in err and "Injected" not in err
    # `syncd config` shows it too (it said nothing, exit 0: a second trial), as a warning
    code, err = run_cli(monkeypatch, capsys, env, ["config"])
    assert code == 0
    assert err.startswith(f"syncd: warning: invalid setting {setting}: the token holds a "
                          "control character"), err
    assert "s3cr3t" not in err and "Injected" not in err


@pytest.mark.parametrize(("toml", "message"), [
    ("pull_interval = 60\nbogus_key = 1\n",
     "invalid setting: unknown key 'bogus_key' in SYNCD_CONFIG_FILE"),
    ('pull_interval = "soon"\n', "invalid setting SYNCD_PULL_INTERVAL (from "),
    ("pull_interval = \n", "invalid setting SYNCD_CONFIG_FILE: "),  # not TOML: was a traceback
    (b"pull_interval = 1\n# \xff\xfe\n", "invalid setting SYNCD_CONFIG_FILE: "),
], ids=["unknown_key", "wrong_type", "not_toml", "not_utf8"])
def test_bad_config_file_is_one_line_naming_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any,
        toml: str | bytes, message: str) -> None:
    f = tmp_path / "syncd.toml"
    f.write_bytes(toml if isinstance(toml, bytes) else toml.encode())
    code, err = run_cli(monkeypatch, capsys, {"SYNCD_CONFIG_FILE": str(f)}, ["status"])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1
    if "SYNCD_PULL_INTERVAL" in message or "unknown key" in message:
        assert str(f) in err  # which file: a value in the environment would say so instead


def test_config_file_that_does_not_exist_is_an_error_not_ignored(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(monkeypatch, capsys, {"SYNCD_CONFIG_FILE": "/nonexistent/syncd.toml"},
                        ["status"])
    assert code == 2
    assert err == "syncd: invalid setting SYNCD_CONFIG_FILE: /nonexistent/syncd.toml is not a file"


# --------------------------------------------------------------------------- the daemon stays up
async def test_daemon_stays_up_through_bad_pages_and_bad_records(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """`syncd run` as a process against a Kantata whose incremental pages are HTML for a while
    and which serves an entry PostgreSQL cannot store: the pull job fails with the cause in the
    logs and the run history, /healthz keeps answering, and the next good cycle catches up."""
    from syncd.pgserver import free_port
    from tests.ops.conftest import TOKEN as OPS_TOKEN
    from tests.ops.conftest import DaemonProc, assert_clean_output, daemon_env

    sim = Simulator(SimConfig(token=OPS_TOKEN, entries=120, seed=5, lock_date=None))
    tamper = Tamper()
    async with serve_tampered(sim, tamper) as url:
        d = DaemonProc(daemon_env(db_dsn, url, free_port()))
        await d.start()
        try:
            await d.wait_event("job_finished", job="pull", status="ok", timeout=30)
            ids = sorted(int(e["id"]) for e in sim.list_entries())
            tamper.page(_body(b"<html><body>Service Unavailable</body></html>", "text/html"),
                        when=_incremental)
            sim.edit_entry(ids[0], {"notes": "nul\x00inside"})
            sim.edit_entry(ids[1], {"notes": "waiting for a good page"})
            seen: list[dict[str, Any]] = []
            for _ in range(2):  # two failed cycles in a row
                await d.wait_event("job_finished", job="pull", status="failed", timeout=30,
                                   where=lambda e: "HTML" in (e.get("error") or "")
                                   and e not in seen)
                seen.append(d.find("job_finished", job="pull", status="failed")[-1])
            assert await d.get("/healthz") == (200, "ok\n")
            assert d.proc is not None and d.proc.returncode is None
            failed = await conn.fetch("SELECT error FROM syncd.sync_runs WHERE job = 'pull' "
                                      "AND status = 'failed'")
            assert len(failed) >= 2 and all("response body is HTML" in r["error"]
                                            for r in failed)
            tamper.rules.clear()
            await d.wait_event("record_altered", timeout=40,
                               where=lambda e: e.get("id") == ids[0])
            await d.wait_event("job_finished", job="pull", status="ok", timeout=40,
                               where=lambda e: e.get("rows_altered", 0) >= 1)
            assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                                       ids[0]) == "nul\ufffdinside"
            assert await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                                       ids[1]) == "waiting for a good page"
            diffs = await mirror_diff(conn, sim.list_entries())
            assert all(x.startswith(str(ids[0])) for x in diffs), diffs
            d.send()
            assert await d.wait_exit(timeout=20) == 0
            assert_clean_output(d)
        finally:
            await d.close()


async def test_an_unexpected_exception_is_recorded_as_a_failure_with_its_message(
        deps: Deps, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (not a SyncdError) used to end the run as 'interrupted' with only the class name,
    which hid it among shutdowns."""

    async def broken(*_: Any, **__: Any) -> Any:
        raise KeyError("results")

    monkeypatch.setattr(deps.client, "list_page", broken)
    with pytest.raises(KeyError):
        await pull.sync_once(deps)
    run = await conn.fetchrow("SELECT status, error FROM syncd.sync_runs")
    assert (run["status"], run["error"]) == ("failed", "KeyError: 'results'")
