"""Contract deviations fixed (issue #22) and the contract switches (``ContractConfig``).

Every public answer obtained through the ``api`` fixture is validated against the published
contract (conftest.Api), so each switch's shape is proven contract-valid here as well as
asserted. Switches are set through ``PUT /_sim/contract`` (HTTP) or ``Simulator.set_contract``.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import pytest

from syncd.simulator import Simulator
from syncd.simulator.cli import build_simulator, configure_parser
from syncd.simulator.config import ContractConfig, SimConfig

from .conftest import TOKEN, Api, FakeClock, Ref, iter_ids

FKS = ("workspace_id", "user_id", "story_id", "role_id")


def mk(sim: Simulator, ref: Ref, n: int = 1, **fields: Any) -> list[str]:
    base = {"workspace_id": ref.ws, "date_performed": "2025-06-01", "time_in_minutes": 30,
            "story_id": ref.story_billable, "role_id": ref.role}
    base.update(fields)
    return [sim.create_entry(base)["id"] for _ in range(n)]


def new_entry(ref: Ref, day: str, notes: str, **kw: Any) -> dict[str, Any]:
    return {"workspace_id": ref.ws, "date_performed": day, "time_in_minutes": 15,
            "notes": notes, **kw}


# ------------------------------------------------------------------ deviations fixed
async def test_odd_path_is_authenticated_first_then_a_json_error(api: Api) -> None:
    """``/time_entries/%0A`` used to answer aiohttp's text/plain 404 before the auth check."""
    for path in ("/time_entries/%0A", "/time_entries/%0A.json", "/nowhere\n"):
        r = await api.get(path, token=None)
        assert r.status == 401, (path, r.body)
        assert r.headers["Content-Type"].startswith("application/json")
        api.contract.errors_validator.validate(r.json)
        r = await api.get(path)
        assert r.status == 404, (path, r.body)
        assert r.headers["Content-Type"].startswith("application/json")
        api.contract.errors_validator.validate(r.json)
        assert r.json["errors"][0]["type"] == "system"


async def test_optional_fields_are_returned_when_asked(api: Api, sim: Simulator,
                                                       ref: Ref) -> None:
    loc = sim.locations[0]
    (eid,) = mk(sim, ref, location=loc)
    (locked,) = mk(sim, ref, is_invoiced=True)
    r = await api.get("/time_entries")
    assert "user_can_edit" not in r.json["time_entries"][eid]
    for params in ({"optional_fields": "user_can_edit,location_id"},          # brainstem CSV
                   [("optional_fields", "location_id"), ("optional_fields", "user_can_edit")],
                   {"optional_fields[]": "user_can_edit,location_id,bogus"}):
        doc = (await api.get("/time_entries", params=params)).json
        e = doc["time_entries"][eid]
        assert e["user_can_edit"] is True and e["location_id"] == 1 and e["location"] == loc
        assert doc["time_entries"][locked]["user_can_edit"] is False  # invoiced: refused
        assert doc["time_entries"][locked]["location_id"] is None
    show = (await api.get(f"/time_entries/{eid}", params={"optional_fields": "user_can_edit"}))
    assert show.json["time_entries"][eid]["user_can_edit"] is True
    assert "location_id" not in show.json["time_entries"][eid]
    put = await api.put(f"/time_entries/{eid}", params={"optional_fields": "location_id"},
                        json={"time_entry": {"notes": "x"}})
    assert put.json["time_entries"][eid]["location_id"] == 1


async def test_invoice_and_submission_includes_side_load(api: Api, sim: Simulator,
                                                         ref: Ref) -> None:
    (plain,) = mk(sim, ref)
    (invoiced,) = mk(sim, ref, is_invoiced=True, approved=True, date_performed="2025-06-04")
    inc = {"include": "invoice,active_submission,recent_submission"}
    doc = (await api.get("/time_entries", params={**inc, "only": plain})).json
    assert doc["invoices"] == {} and doc["timesheet_submissions"] == {}
    e = doc["time_entries"][plain]
    assert e["invoice_id"] is None and e["active_submission_id"] is None
    assert e["recent_submission_id"] is None
    doc = (await api.get("/time_entries", params=inc)).json
    e = doc["time_entries"][invoiced]
    assert set(doc["invoices"]) == {e["invoice_id"]}
    assert doc["invoices"][e["invoice_id"]]["status"] == "new"
    assert e["active_submission_id"] == e["recent_submission_id"]
    sub = doc["timesheet_submissions"][e["active_submission_id"]]
    assert (sub["start_date"], sub["end_date"], sub["status"]) == (
        "2025-06-01", "2025-06-07", "approved")  # the Sunday-to-Saturday week of 2025-06-04
    show = (await api.get(f"/time_entries/{invoiced}", params={"include": "invoice"})).json
    assert show["time_entries"][invoiced]["invoice_id"] == e["invoice_id"]


async def test_integer_valued_numbers_are_integers(api: Api, sim: Simulator, ref: Ref) -> None:
    """JSON Schema counts ``60.0`` as an integer; Kantata's contract types these as integer."""
    body = {"time_entry": {"workspace_id": float(ref.ws), "date_performed": "2025-06-02",
                           "time_in_minutes": 60.0, "rate_in_cents": 1000.0,
                           "story_id": float(ref.story_billable)}}
    r = await api.post("/time_entries", json=body)
    assert r.status == 200, r.body
    (eid,) = r.json["time_entries"]
    assert r.json["time_entries"][eid]["time_in_minutes"] == 60
    r = await api.put(f"/time_entries/{eid}", json={"time_entry": {"time_in_minutes": 45.0}})
    assert r.status == 200 and r.json["time_entries"][eid]["time_in_minutes"] == 45
    r = await api.put(f"/time_entries/{eid}", json={"time_entry": {"time_in_minutes": 45.5}})
    assert r.status == 422
    r = await api.put(f"/time_entries/{eid}", json={"time_entry": {"time_in_minutes": True}})
    assert r.status == 422


# ------------------------------------------------------------------ control of the switches
async def test_contract_control_api(api: Api, sim: Simulator) -> None:
    default = (await api.get("/_sim/contract")).json
    assert default == ContractConfig().to_dict()
    assert not any(v for k, v in default.items() if isinstance(v, bool))
    r = await api.put("/_sim/contract", json={"omit_object_ids": True, "count_mode": "negative"})
    assert r.status == 200 and r.json["omit_object_ids"] and r.json["count_mode"] == "negative"
    assert sim.contract.omit_object_ids and (await api.get("/_sim/state")).json[
        "contract"]["count_mode"] == "negative"
    r = await api.put("/_sim/contract", json={"omit_object_ids": None, "ignore_page": True})
    assert r.json == {**default, "ignore_page": True}  # a PUT replaces; null = default
    for bad in ({"omit_ids": True}, {"count_mode": "sometimes"}, {"ignore_page": "yes"},
                {"bulk_create_order": "random"}, [1]):
        r = await api.put("/_sim/contract", json=bad)
        assert r.status == 400, bad
        assert "error" in r.json
    assert sim.contract.ignore_page  # a refused PUT changes nothing
    r = await api.delete("/_sim/contract")
    assert r.json == default and sim.contract == ContractConfig()
    sim.set_contract({"lowercase_timestamps": True})
    assert sim.contract.lowercase_timestamps
    sim.set_contract(None)
    assert sim.contract == ContractConfig()
    with pytest.raises(ValueError, match="unknown contract switch"):
        sim.set_contract({"nope": True})


def test_contract_switches_from_the_command_line(clock: FakeClock) -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    args = p.parse_args(["--entries", "0", "--contract", "omit_object_ids",
                         "--contract", "count_mode=inconsistent",
                         "--contract", "foreign-keys-only-with-include=true"])
    sim = build_simulator(args)
    assert sim.contract == ContractConfig(omit_object_ids=True, count_mode="inconsistent",
                                          foreign_keys_only_with_include=True)
    assert build_simulator(p.parse_args(["--entries", "0"])).contract == ContractConfig()
    for bad in ("nope", "count_mode", "count_mode=sometimes", "ignore_page=maybe"):
        with pytest.raises(SystemExit):
            p.parse_args(["--contract", bad])
    sim = Simulator(SimConfig(entries=0, clock=clock,
                              contract=ContractConfig(ignore_page=True)))
    assert sim.contract.ignore_page


# ------------------------------------------------------------------ one test per switch
async def test_omit_object_ids(api: Api, sim: Simulator, ref: Ref) -> None:
    xr = {"service_name": "syncd", "service_model": "TimeEntry", "service_model_ref": "r1"}
    (eid,) = mk(sim, ref, external_reference=xr)
    await api.put("/_sim/contract", json={"omit_object_ids": True})
    inc = {"include": "workspace,user,story,role,external_references"}
    for doc in ((await api.get("/time_entries", params=inc)).json,
                (await api.get(f"/time_entries/{eid}", params=inc)).json):
        assert list(iter_ids(doc)) == [eid] and list(doc["time_entries"]) == [eid]
        assert "id" not in doc["time_entries"][eid]
        for key in ("workspaces", "users", "stories", "roles", "external_references"):
            assert doc[key] and all("id" not in o for o in doc[key].values()), key
    r = await api.post("/time_entries", params=inc, json={"time_entries": [
        new_entry(ref, "2025-06-02", "a"), new_entry(ref, "2025-06-03", "b")]})
    assert r.status == 200 and all("id" not in e for e in r.json["time_entries"].values())
    new = list(iter_ids(r.json))
    r = await api.put(f"/time_entries/{new[0]}", json={"time_entry": {"notes": "c"}})
    assert "id" not in r.json["time_entries"][new[0]]
    # the simulator's own bookkeeping keeps its ids
    assert {e["id"] for e in sim.list_entries()} == {eid, *new}
    assert (await api.get(f"/_sim/entries/{eid}")).json["id"] == eid


async def test_foreign_keys_only_with_include(api: Api, sim: Simulator, ref: Ref) -> None:
    (eid,) = mk(sim, ref)
    sim.set_contract({"foreign_keys_only_with_include": True})
    e = (await api.get("/time_entries")).json["time_entries"][eid]
    assert not set(FKS) & set(e) and e["notes"] is None
    e = (await api.get("/time_entries", params={"include": "workspace,story"})).json[
        "time_entries"][eid]
    assert (e["workspace_id"], e["story_id"]) == (str(ref.ws), str(ref.story_billable))
    assert "user_id" not in e and "role_id" not in e
    e = (await api.get(f"/time_entries/{eid}", params={"include": "user"})).json[
        "time_entries"][eid]
    assert set(FKS) & set(e) == {"user_id"}
    r = await api.post("/time_entries", json={"time_entries": [new_entry(ref, "2025-06-02", "a")]})
    (new,) = r.json["time_entries"].values()
    assert not set(FKS) & set(new)
    r = await api.put(f"/time_entries/{eid}", params={"include": "role"},
                      json={"time_entry": {"notes": "x"}})
    assert set(FKS) & set(r.json["time_entries"][eid]) == {"role_id"}
    assert sim.get_entry(int(eid))["workspace_id"] == str(ref.ws)  # bookkeeping unaffected
    sim.clear_contract()
    e = (await api.get("/time_entries")).json["time_entries"][eid]
    assert set(FKS) <= set(e)


async def test_bulk_create_order(api: Api, sim: Simulator, ref: Ref) -> None:
    sent = [new_entry(ref, "2025-06-02", "first"), new_entry(ref, "2025-06-05", "second"),
            new_entry(ref, "2025-06-03", "third"), new_entry(ref, "2025-06-05", "fourth")]
    r = await api.post("/time_entries", json={"time_entries": sent})
    notes = [r.json["time_entries"][i]["notes"] for i in iter_ids(r.json)]
    assert notes == ["first", "second", "third", "fourth"]  # default switch: request order
    await api.put("/_sim/contract", json={"bulk_create_order": "default"})
    r = await api.post("/time_entries", json={"time_entries": sent})
    ids = list(iter_ids(r.json))
    notes = [r.json["time_entries"][i]["notes"] for i in ids]
    assert notes == ["second", "fourth", "third", "first"]  # date_performed:desc, id asc
    assert ids[0] < ids[1] and list(r.json["time_entries"]) == ids
    # created in the order sent: ids ascend with the request
    by_note = {e["notes"]: int(e["id"]) for e in sim.list_entries() if e["id"] in ids}
    assert [by_note[n] for n in ("first", "second", "third", "fourth")] == sorted(by_note.values())


async def test_external_references_only_if_included(api: Api, sim: Simulator,
                                                    ref: Ref) -> None:
    xr = {"service_name": "syncd", "service_model": "TimeEntry", "service_model_ref": "r9"}
    await api.put("/_sim/contract", json={"external_references_only_if_included": True})
    r = await api.post("/time_entries", json={"time_entries": [
        new_entry(ref, "2025-06-02", "a", external_reference=xr)]})
    (eid,) = r.json["time_entries"]
    assert "external_references" not in r.json
    assert "external_reference_ids" not in r.json["time_entries"][eid]
    for doc in ((await api.get("/time_entries")).json,
                (await api.get(f"/time_entries/{eid}")).json):
        assert "external_references" not in doc
        assert "external_reference_ids" not in doc["time_entries"][eid]
    doc = (await api.get("/time_entries", params={"include": "external_references"})).json
    (xid,) = doc["time_entries"][eid]["external_reference_ids"]
    assert doc["external_references"][xid]["service_model_ref"] == "r9"


async def test_write_answers_ignore_include(api: Api, sim: Simulator, ref: Ref) -> None:
    xr = {"service_name": "syncd", "service_model": "TimeEntry", "service_model_ref": "r8"}
    inc = {"include": "external_references,workspace"}
    sim.set_contract({"write_answers_ignore_include": True})
    r = await api.post("/time_entries", params=inc, json={"time_entries": [
        new_entry(ref, "2025-06-02", "a", external_reference=xr)]})
    (eid,) = r.json["time_entries"]
    assert set(r.json) == {"count", "meta", "results", "time_entries"}
    assert "external_reference_ids" not in r.json["time_entries"][eid]
    r = await api.put(f"/time_entries/{eid}", params=inc, json={"time_entry": {"notes": "b"}})
    assert set(r.json) == {"count", "meta", "results", "time_entries"}
    doc = (await api.get(f"/time_entries/{eid}", params=inc)).json  # reads still honour it
    assert doc["external_references"] and doc["workspaces"]


async def test_ignore_page(api: Api, sim: Simulator, ref: Ref) -> None:
    mk(sim, ref, 5)
    first = (await api.get("/time_entries", params={"per_page": "2"})).json
    await api.put("/_sim/contract", json={"ignore_page": True})
    for params, number in (({"per_page": "2", "page": "2"}, 2),
                           ({"per_page": "2", "page": "999"}, 999),
                           ({"limit": "2", "offset": "4"}, 3)):
        doc = (await api.get("/time_entries", params=params)).json
        assert doc["results"] == first["results"], params
        assert doc["count"] == 5 and doc["meta"]["page_number"] == number
        assert doc["meta"]["page_count"] == 100_000  # max(3, 200000 // 2)
    doc = (await api.get("/time_entries", params={"per_page": "200", "page": "3"})).json
    assert doc["meta"]["page_count"] == 1000 and len(doc["results"]) == 5


@pytest.mark.parametrize("mode,shown,pages", [("negative", -1, 0), ("inconsistent", 12, 3)])
async def test_count_mode(api: Api, sim: Simulator, ref: Ref, mode: str, shown: int,
                          pages: int) -> None:
    ids = mk(sim, ref, 5)
    sim.set_contract({"count_mode": mode})
    doc = (await api.get("/time_entries", params={"per_page": "5"})).json
    assert doc["count"] == doc["meta"]["count"] == shown
    assert doc["meta"]["page_count"] == pages
    assert sorted(iter_ids(doc)) == sorted(ids)  # the results themselves stay right
    doc = (await api.get(f"/time_entries/{ids[0]}")).json
    assert doc["count"] == (-1 if mode == "negative" else 8)
    r = await api.post("/time_entries", json={"time_entries": [new_entry(ref, "2025-06-02", "a")]})
    assert r.json["count"] == (-1 if mode == "negative" else 8)
    assert len(r.json["results"]) == 1


async def test_lowercase_timestamps(api: Api, sim: Simulator, ref: Ref) -> None:
    xr = {"service_name": "syncd", "service_model": "TimeEntry", "service_model_ref": "r7"}
    (eid,) = mk(sim, ref, external_reference=xr)
    before = sim.get_entry(int(eid))
    assert before["created_at"] == "2025-06-16T12:00:00-07:00"
    sim.set_contract({"lowercase_timestamps": True})
    inc = {"include": "workspace,story,role,external_references"}
    doc = (await api.get("/time_entries", params=inc)).json
    e = doc["time_entries"][eid]
    assert e["created_at"] == e["updated_at"] == "2025-06-16t19:00:00z"
    for key in ("workspaces", "stories", "roles", "external_references"):
        for o in doc[key].values():
            assert o["created_at"].endswith("z") and "t" in o["created_at"], key
            assert o["created_at"] == o["created_at"].lower()
    assert sim.get_entry(int(eid)) == before  # /_sim keeps the account's rendering
    bad = dict(doc, time_entries={eid: dict(e, created_at="2025-06-16 19h")})
    with pytest.raises(Exception):  # the validator does check date-time formats
        api.contract.validate("GET", "/time_entries", {}, 200, "application/json",
                              orjson.dumps(bad))


async def test_updated_after_inclusive(api: Api, sim: Simulator, ref: Ref,
                                       clock: FakeClock) -> None:
    (at_boundary,) = mk(sim, ref)  # updated 2025-06-16T12:00:00-07:00
    clock.advance(1)
    (later,) = mk(sim, ref)
    q = {"updated_after": "2025-06-16T12:00:00-07:00"}
    assert list(iter_ids((await api.get("/time_entries", params=q)).json)) == [later]
    await api.put("/_sim/contract", json={"updated_after_inclusive": True})
    assert set(iter_ids((await api.get("/time_entries", params=q)).json)) == {at_boundary, later}
    await api.delete("/_sim/contract")
    assert list(iter_ids((await api.get("/time_entries", params=q)).json)) == [later]


async def test_switches_leave_the_request_log_alone(api: Api, sim: Simulator, ref: Ref) -> None:
    mk(sim, ref, 3)
    everything = {"omit_object_ids": True, "foreign_keys_only_with_include": True,
                  "bulk_create_order": "default", "external_references_only_if_included": True,
                  "write_answers_ignore_include": True, "ignore_page": True,
                  "count_mode": "inconsistent", "lowercase_timestamps": True,
                  "updated_after_inclusive": True}
    assert set(everything) == set(ContractConfig().to_dict())
    entries = (await api.get("/_sim/entries")).body
    await api.delete("/_sim/requests")
    await api.get("/time_entries", params={"page": "2"})
    sim.set_contract(everything)
    await api.get("/time_entries", params={"page": "2"})
    log = (await api.get("/_sim/requests")).json["requests"]
    assert [(x["path"], x["query"], x["status"], x["fault"]) for x in log] == [
        ("/api/v1/time_entries", {"page": "2"}, 200, None)] * 2
    assert (await api.get("/_sim/entries")).body == entries
    doc = orjson.loads(sim.api_list({"include": "workspace,user,story,role,external_references,"
                                     "invoice,active_submission,recent_submission"}))
    assert doc["count"] == 10 and len(doc["results"]) == 3
    assert TOKEN  # the api fixture authenticated every public call above
