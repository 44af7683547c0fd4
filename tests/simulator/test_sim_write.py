"""POST / PUT / DELETE on /time_entries: validation, bulk all-or-nothing, lock date, invoiced."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from syncd.simulator import Simulator

from .conftest import Api, FakeClock, Ref, iter_ids


def body(ref: Ref, **fields: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"workspace_id": ref.ws, "date_performed": "2025-06-02",
                         "time_in_minutes": 60}
    b.update(fields)
    return b


# ------------------------------------------------------------------------------ create
async def test_create_single_defaults(api: Api, sim: Simulator, ref: Ref) -> None:
    r = await api.post("/time_entries", json={"time_entry": body(ref)})
    assert r.status == 200
    doc = r.json
    (eid,) = iter_ids(doc)
    e = doc["time_entries"][eid]
    assert doc["count"] == 1
    assert e["workspace_id"] == str(ref.ws) and e["date_performed"] == "2025-06-02"
    assert e["time_in_minutes"] == 60 and e["billable"] is True  # no story -> true
    assert e["user_id"] == str(sim.me) and e["notes"] is None and e["story_id"] is None
    assert e["approved"] is False and e["is_invoiced"] is False
    assert e["created_at"] == e["updated_at"] == "2025-06-16T12:00:00-07:00"
    assert sim.get_entry(int(eid)) == e
    assert e["role_id"] == (str(sim.users[sim.me].role_id) if sim.users[sim.me].role_id else None)


async def test_create_billable_default_from_story(api: Api, sim: Simulator, ref: Ref) -> None:
    st = sim.stories[ref.story_nonbillable]
    r = await api.post("/time_entries.json", json={"time_entry": body(
        ref, workspace_id=st.workspace_id, story_id=str(st.id))})
    e = next(iter(r.json["time_entries"].values()))
    assert e["billable"] is False and e["story_id"] == str(st.id)
    r = await api.post("/time_entries", json={"time_entry": body(
        ref, story_id=ref.story_billable)})
    assert next(iter(r.json["time_entries"].values()))["billable"] is True
    r = await api.post("/time_entries", json={"time_entry": body(
        ref, story_id=ref.story_billable, billable=False, notes="x", rate_in_cents=123,
        user_id=ref.user2, role_id=ref.role, location="Remote")})
    e = next(iter(r.json["time_entries"].values()))
    assert (e["billable"], e["notes"], e["rate_in_cents"], e["user_id"], e["role_id"],
            e["location"]) == (False, "x", 123, str(ref.user2), str(ref.role), "Remote")


async def test_create_missing_root_key_and_bad_json(api: Api, sim: Simulator, ref: Ref) -> None:
    for payload in ({"entry": body(ref)}, body(ref), [], {}):
        r = await api.post("/time_entries", json=payload)
        assert r.status == 400, payload
        (err,) = r.json["errors"]
        assert err["type"] == "syntax" and err["message"].startswith(
            "Missing required parameters.")
    r = await api.post("/time_entries", data=b"{not json",
                       headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.json["errors"][0]["type"] == "syntax"
    assert sim.list_entries() == []


@pytest.mark.parametrize(("fields", "field"), [
    ({"time_in_minutes": 0}, "time_in_minutes"),
    ({"time_in_minutes": 1441}, "time_in_minutes"),
    ({"time_in_minutes": "abc"}, "time_in_minutes"),
    ({"time_in_minutes": 1.5}, "time_in_minutes"),
    ({"time_in_minutes": True}, "time_in_minutes"),
    ({"time_in_minutes": None}, "time_in_minutes"),
    ({"date_performed": "2025-02-30"}, "date_performed"),
    ({"date_performed": "06/02/2025"}, "date_performed"),
    ({"date_performed": ""}, "date_performed"),
    ({"workspace_id": 1}, "workspace_id"),
    ({"workspace_id": None}, "workspace_id"),
    ({"story_id": 1}, "story_id"),
    ({"role_id": 1}, "role_id"),
    ({"user_id": 1}, "user_id"),
    ({"billable": "maybe"}, "billable"),
    ({"notes": 5}, "notes"),
    ({"location": "Mars"}, "location"),
    ({"rate_in_cents": -1}, "rate_in_cents"),
    ({"external_reference": {"service_name": "syncd"}}, "external_reference"),
])
async def test_create_validation(api: Api, sim: Simulator, ref: Ref, fields: dict[str, Any],
                                 field: str) -> None:
    r = await api.post("/time_entries", json={"time_entry": body(ref, **fields)})
    assert r.status == 422, r.body
    errs = r.json["errors"]
    assert any(e["field"] == field and e["type"] == "validation" for e in errs), errs
    assert all("index" not in e for e in errs)
    assert sim.list_entries() == []


async def test_create_required_fields(api: Api, sim: Simulator) -> None:
    r = await api.post("/time_entries", json={"time_entry": {}})
    assert r.status == 422
    assert {e["field"] for e in r.json["errors"]} == {"workspace_id", "date_performed",
                                                      "time_in_minutes"}


async def test_create_in_archived_workspace_refused(api: Api, sim: Simulator, ref: Ref) -> None:
    r = await api.post("/time_entries", json={"time_entry": body(ref,
                                                                 workspace_id=ref.ws_archived)})
    assert r.status == 422 and r.json["errors"][0]["field"] == "workspace_id"
    r = await api.post("/time_entries", json={"time_entry": body(ref, workspace_id=ref.ws_other)})
    assert r.status == 200  # other-account projects are writable; only hidden by default


async def test_bulk_create_order_and_envelope(api: Api, sim: Simulator, ref: Ref) -> None:
    items = [body(ref, notes=f"n{i}", date_performed=f"2025-06-{10 - i:02d}") for i in range(5)]
    r = await api.post("/time_entries", json={"time_entries": items})
    assert r.status == 200
    doc = r.json
    ids = list(iter_ids(doc))
    assert doc["count"] == 5 and len(ids) == 5
    assert [doc["time_entries"][i]["notes"] for i in ids] == [f"n{i}" for i in range(5)]
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)


async def test_bulk_create_all_or_nothing_with_index(api: Api, sim: Simulator,
                                                     ref: Ref) -> None:
    items = [body(ref), body(ref, time_in_minutes=0), body(ref),
             body(ref, workspace_id=None, date_performed="bad")]
    r = await api.post("/time_entries", json={"time_entries": items})
    assert r.status == 422
    errs = r.json["errors"]
    assert {(e["index"], e["field"]) for e in errs} == {
        (1, "time_in_minutes"), (3, "workspace_id"), (3, "date_performed")}
    assert all(e["type"] == "validation" and e["message"] for e in errs)
    assert sim.list_entries() == []


async def test_bulk_create_limit(api: Api, sim: Simulator, ref: Ref) -> None:
    r = await api.post("/time_entries", json={"time_entries": [body(ref)] * 101})
    assert r.status == 422 and r.json["errors"][0]["type"] == "validation"
    assert "100" in r.json["errors"][0]["message"]
    assert sim.list_entries() == []
    r = await api.post("/time_entries", json={"time_entries": [body(ref)] * 100})
    assert r.status == 200 and r.json["count"] == 100
    assert len(sim.list_entries()) == 100
    r = await api.post("/time_entries", json={"time_entries": []})
    assert r.status == 400


async def test_create_with_external_reference(api: Api, sim: Simulator, ref: Ref) -> None:
    xr = {"service_name": "syncd", "service_model": "TimeEntry", "service_model_ref": "uuid-1",
          "status": "successful", "external_link": "https://x.example/1"}
    r = await api.post("/time_entries", params={"include": "external_references"},
                       json={"time_entries": [body(ref, external_reference=xr), body(ref)]})
    assert r.status == 200
    doc = r.json
    first, second = iter_ids(doc)
    (xid,) = doc["time_entries"][first]["external_reference_ids"]
    assert doc["external_references"][xid]["service_model_ref"] == "uuid-1"
    assert doc["time_entries"][second]["external_reference_ids"] == []
    found = await api.get("/time_entries", params={
        "external_reference_service_name": "syncd",
        "external_reference_service_model_refs": "uuid-1,uuid-2"})
    assert list(iter_ids(found.json)) == [first]


async def test_form_encoded_single_create(api: Api, sim: Simulator, ref: Ref) -> None:
    r = await api.post("/time_entries", data={
        "time_entry[workspace_id]": str(ref.ws), "time_entry[date_performed]": "2025-06-03",
        "time_entry[time_in_minutes]": "34", "time_entry[billable]": "false"})
    assert r.status == 200
    e = next(iter(r.json["time_entries"].values()))
    assert e["time_in_minutes"] == 34 and e["billable"] is False


# ------------------------------------------------------------------------------ update
async def test_put_partial_update_bumps_updated_at(api: Api, sim: Simulator, ref: Ref,
                                                   clock: FakeClock) -> None:
    e0 = sim.create_entry(body(ref, notes="old", story_id=ref.story_billable))
    clock.advance(90)
    r = await api.put(f"/time_entries/{e0['id']}", json={"time_entry": {"notes": "new\nline",
                                                                        "ignored_field": 1}})
    assert r.status == 200
    e1 = r.json["time_entries"][e0["id"]]
    changed = {k for k in e0 if e0[k] != e1[k]}
    assert changed == {"notes", "updated_at"}
    assert e1["updated_at"] == "2025-06-16T12:01:30-07:00"
    assert sim.get_entry(int(e0["id"])) == e1
    # a second write in the same second keeps updated_at >= previous
    r = await api.put(f"/time_entries/{e0['id']}.json", json={"time_entry": {
        "time_in_minutes": 15, "story_id": None, "billable": True, "date_performed": "2025-06-05",
        "workspace_id": str(ref.ws2), "role_id": ref.role, "user_id": ref.user2,
        "rate_in_cents": 0, "location": "Remote"}})
    e2 = r.json["time_entries"][e0["id"]]
    assert e2["updated_at"] == e1["updated_at"]
    assert (e2["time_in_minutes"], e2["story_id"], e2["date_performed"], e2["workspace_id"],
            e2["user_id"], e2["location"]) == (15, None, "2025-06-05", str(ref.ws2),
                                               str(ref.user2), "Remote")


async def test_put_updated_at_never_goes_backwards(api: Api, sim: Simulator, ref: Ref) -> None:
    e = sim.create_entry(body(ref, updated_at="2030-01-01T00:00:00Z"))
    r = await api.put(f"/time_entries/{e['id']}", json={"time_entry": {"notes": "x"}})
    assert r.json["time_entries"][e["id"]]["updated_at"] == "2029-12-31T16:00:00-08:00"


async def test_put_errors(api: Api, sim: Simulator, ref: Ref) -> None:
    e = sim.create_entry(body(ref))
    r = await api.put("/time_entries", json={"time_entry": {"notes": "x"}})
    assert r.status == 404  # no bulk update route
    r = await api.put("/time_entries/99999999", json={"time_entry": {"notes": "x"}})
    assert r.status == 404 and r.json["errors"][0]["type"] == "system"
    r = await api.put(f"/time_entries/{e['id']}", json={"notes": "x"})
    assert r.status == 400 and r.json["errors"][0]["type"] == "syntax"
    r = await api.put(f"/time_entries/{e['id']}", json={"time_entry": {"time_in_minutes": 0}})
    assert r.status == 422 and r.json["errors"][0]["field"] == "time_in_minutes"
    r = await api.put(f"/time_entries/{e['id']}", json={"time_entry": {
        "workspace_id": ref.ws_archived}})
    assert r.status == 422
    assert sim.get_entry(int(e["id"])) == e
    r = await api.request("PATCH", f"/time_entries/{e['id']}", json={"time_entry": {}})
    assert r.status == 404


async def test_put_on_archived_workspace_entry_allowed(api: Api, sim: Simulator,
                                                       ref: Ref) -> None:
    """Default filters apply to index/show only, not to writes (api-notes §4, §7)."""
    e = sim.create_entry(body(ref, workspace_id=ref.ws_archived))
    r = await api.put(f"/time_entries/{e['id']}", json={"time_entry": {"notes": "x"}})
    assert r.status == 200 and r.json["time_entries"][e["id"]]["notes"] == "x"


# ------------------------------------------------------------------ lock date / invoiced
async def test_lock_date_refusals(api: Api, sim: Simulator, ref: Ref) -> None:
    sim.set_lock_date(date(2025, 5, 31))  # a Saturday
    locked = sim.create_entry(body(ref, date_performed="2025-05-31"))  # control API bypasses
    free = sim.create_entry(body(ref, date_performed="2025-06-01"))
    r = await api.post("/time_entries", json={"time_entry": body(ref,
                                                                 date_performed="2025-05-31")})
    assert r.status == 422
    (err,) = r.json["errors"]
    assert err["field"] == "date_performed" and "lock date" in err["message"]
    r = await api.post("/time_entries", json={"time_entries": [
        body(ref), body(ref, date_performed="2025-01-01")]})
    assert r.status == 422 and r.json["errors"][0]["index"] == 1
    r = await api.put(f"/time_entries/{locked['id']}", json={"time_entry": {"notes": "x"}})
    assert r.status == 422 and "lock date" in r.json["errors"][0]["message"]
    r = await api.put(f"/time_entries/{free['id']}", json={"time_entry": {
        "date_performed": "2025-05-30"}})
    assert r.status == 422 and r.json["errors"][0]["field"] == "date_performed"
    r = await api.delete(f"/time_entries/{locked['id']}")
    assert r.status == 422
    assert r.json["errors"][0]["id"] == locked["id"]
    assert sim.get_entry(int(locked["id"])) == locked
    assert sim.get_entry(int(free["id"])) == free
    r = await api.post("/time_entries", json={"time_entry": body(ref,
                                                                 date_performed="2025-06-01")})
    assert r.status == 200
    sim.set_lock_date(None)
    assert (await api.delete(f"/time_entries/{locked['id']}")).status == 204


async def test_invoiced_refusals(api: Api, sim: Simulator, ref: Ref) -> None:
    e = sim.create_entry(body(ref))
    inv = sim.invoice_entry(int(e["id"]))
    assert inv["is_invoiced"] is True and inv["approved"] is True
    r = await api.put(f"/time_entries/{e['id']}", json={"time_entry": {"notes": "x"}})
    assert r.status == 422 and "invoiced" in r.json["errors"][0]["message"]
    r = await api.delete(f"/time_entries/{e['id']}")
    assert r.status == 422
    assert r.json["errors"][0] == {
        "type": "validation", "field": "base", "id": e["id"],
        "message": f"Time entry {e['id']} could not be deleted: it has been invoiced"}
    assert sim.get_entry(int(e["id"])) == inv


# ------------------------------------------------------------------------------ delete
async def test_delete_single(api: Api, sim: Simulator, ref: Ref) -> None:
    e = sim.create_entry(body(ref))
    r = await api.delete(f"/time_entries/{e['id']}.json")
    assert r.status == 204 and r.body == b""
    assert sim.get_entry(int(e["id"])) is None
    r = await api.delete(f"/time_entries/{e['id']}")
    assert r.status == 404 and r.json["errors"][0]["type"] == "system"


@pytest.mark.parametrize("how", ["query", "body_string", "body_array", "body_int_array"])
async def test_bulk_delete_ways(api: Api, sim: Simulator, ref: Ref, how: str) -> None:
    ids = [sim.create_entry(body(ref))["id"] for _ in range(3)]
    keep = sim.create_entry(body(ref))["id"]
    kw: dict[str, Any] = {
        "query": {"params": {"ids": ",".join(ids)}},
        "body_string": {"json": {"ids": ",".join(ids)}},
        "body_array": {"json": {"ids": ids}},
        "body_int_array": {"json": {"ids": [int(i) for i in ids]}},
    }[how]
    r = await api.delete("/time_entries", **kw)
    assert r.status == 204 and r.body == b""
    assert [e["id"] for e in sim.list_entries()] == [keep]


async def test_bulk_delete_all_or_nothing_names_ids(api: Api, sim: Simulator, ref: Ref) -> None:
    sim.set_lock_date(date(2025, 5, 31))
    ok = sim.create_entry(body(ref))["id"]
    inv = sim.create_entry(body(ref))["id"]
    sim.invoice_entry(int(inv))
    locked = sim.create_entry(body(ref, date_performed="2025-05-01"))["id"]
    before = sim.list_entries()
    r = await api.delete("/time_entries", params={"ids": f"{ok},{inv},{locked},77777777"})
    assert r.status == 422
    errs = r.json["errors"]
    assert [e["id"] for e in errs] == [inv, locked, "77777777"]
    assert errs[0]["message"] == f"Time entry {inv} could not be deleted: it has been invoiced"
    assert "lock date" in errs[1]["message"] and locked in errs[1]["message"]
    assert errs[2]["message"] == "Time entry 77777777 could not be deleted: not found"
    assert all(e["type"] == "validation" for e in errs)
    assert sim.list_entries() == before


async def test_bulk_delete_limits_and_missing(api: Api, sim: Simulator, ref: Ref) -> None:
    e = sim.create_entry(body(ref))["id"]
    r = await api.delete("/time_entries", params={"ids": "77777777,88888888"})
    assert r.status == 404
    assert {x["id"] for x in r.json["errors"]} == {"77777777", "88888888"}
    r = await api.delete("/time_entries", params={"ids": ",".join(str(i) for i in range(1, 102))})
    assert r.status == 422 and "100" in r.json["errors"][0]["message"]
    for kw in ({}, {"json": {}}, {"json": {"ids": ""}}, {"params": {"ids": " "}}):
        r = await api.delete("/time_entries", **kw)
        assert r.status == 400 and r.json["errors"][0]["type"] == "syntax", kw
    assert sim.get_entry(int(e)) is not None
    # duplicates are fine
    r = await api.delete("/time_entries", json={"ids": f"{e},{e}"})
    assert r.status == 204
