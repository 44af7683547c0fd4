"""GET /time_entries: envelope, paging, ordering, filters, includes, `only`, show route."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from syncd.simulator import Simulator

from .conftest import Api, Ref, iter_ids
from syncd.simulator.app import build_app

ENTRY_FIELDS = {
    "id", "created_at", "updated_at", "date_performed", "time_in_minutes", "billable", "notes",
    "rate_in_cents", "cost_rate_in_cents", "currency", "currency_symbol", "currency_base_unit",
    "approved", "is_invoiced", "taxable", "location", "workspace_id", "user_id", "story_id",
    "role_id",
}


def mk(sim: Simulator, ref: Ref, n: int = 1, **fields: Any) -> list[str]:
    """Create ``n`` entries through the in-process API; returns their ids (strings)."""
    base = {"workspace_id": ref.ws, "date_performed": "2025-06-01", "time_in_minutes": 30}
    base.update(fields)
    return [sim.create_entry(base)["id"] for _ in range(n)]


async def ids_of(api: Api, **params: str) -> list[str]:
    r = await api.get("/time_entries", params=params)
    assert r.status == 200, r.body
    return list(iter_ids(r.json))


# ----------------------------------------------------------------------------- envelope
async def test_envelope_shape_and_types(api: Api, sim: Simulator, ref: Ref) -> None:
    ids = mk(sim, ref, 3, story_id=ref.story_billable, notes="héllo 👋\nworld")
    r = await api.get("/time_entries")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    doc = r.json
    assert list(doc) == ["count", "meta", "results", "time_entries"]
    assert doc["count"] == 3
    assert doc["meta"] == {"count": 3, "page_count": 1, "page_number": 1, "page_size": 20}
    assert doc["results"] == [{"key": "time_entries", "id": i} for i in ids]  # ties: id asc
    assert list(doc["time_entries"]) == ids
    e = doc["time_entries"][ids[0]]
    assert set(e) == ENTRY_FIELDS
    assert e["id"] == ids[0] and e["workspace_id"] == str(ref.ws)
    assert e["story_id"] == str(ref.story_billable) and e["user_id"] == str(ref.user)
    assert e["notes"] == "héllo 👋\nworld"
    assert e["date_performed"] == "2025-06-01"
    assert e["created_at"] == "2025-06-16T12:00:00-07:00" and e["updated_at"].endswith("-07:00")
    assert isinstance(e["time_in_minutes"], int) and isinstance(e["billable"], bool)


async def test_null_foreign_keys_stay_null(api: Api, sim: Simulator, ref: Ref) -> None:
    (eid,) = mk(sim, ref, story_id=None, role_id=None, notes=None)
    e = (await api.get(f"/time_entries/{eid}")).json["time_entries"][eid]
    assert e["story_id"] is None and e["role_id"] is None and e["notes"] is None
    assert e["location"] is None


async def test_empty_match(api: Api) -> None:
    doc = (await api.get("/time_entries", params={"include": "user"})).json
    assert doc == {"count": 0, "meta": {"count": 0, "page_count": 0, "page_number": 0,
                                        "page_size": 20},
                   "results": [], "time_entries": {}, "users": {}}


# ------------------------------------------------------------------------------ paging
async def test_paging_default_clamp_and_past_end(api: Api, sim: Simulator, ref: Ref) -> None:
    ids = mk(sim, ref, 45)
    doc = (await api.get("/time_entries")).json
    assert len(doc["results"]) == 20 and doc["meta"]["page_count"] == 3
    doc = (await api.get("/time_entries", params={"page": "3"})).json
    assert [x["id"] for x in doc["results"]] == ids[40:]
    assert doc["meta"] == {"count": 45, "page_count": 3, "page_number": 3, "page_size": 20}
    doc = (await api.get("/time_entries", params={"page": "9", "per_page": "10"})).json
    assert doc["results"] == [] and doc["time_entries"] == {} and doc["count"] == 45
    assert doc["meta"] == {"count": 45, "page_count": 5, "page_number": 9, "page_size": 10}
    for junk in ("0", "-3", "abc", ""):
        doc = (await api.get("/time_entries", params={"per_page": junk})).json
        assert doc["meta"]["page_size"] == 20 and len(doc["results"]) == 20, junk
    doc = (await api.get("/time_entries", params={"page": "0", "per_page": "7"})).json
    assert [x["id"] for x in doc["results"]] == ids[:7]


async def test_per_page_clamped_to_max(api: Api, sim: Simulator, ref: Ref) -> None:
    mk(sim, ref, 205)
    doc = (await api.get("/time_entries", params={"per_page": "500"})).json
    assert doc["meta"]["page_size"] == 200 and len(doc["results"]) == 200
    assert doc["meta"]["page_count"] == 2


async def test_max_per_page_configurable(clock: Any, contract: Any) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from .conftest import make_sim
    s = make_sim(clock, max_per_page=5)
    r = Ref(s)
    mk(s, r, 8)
    async with TestClient(TestServer(build_app(s))) as client:
        a = Api(client, contract, s)
        doc = (await a.get("/time_entries", params={"per_page": "50"})).json
        assert doc["meta"]["page_size"] == 5 and len(doc["results"]) == 5


async def test_limit_offset_only_when_both(api: Api, sim: Simulator, ref: Ref) -> None:
    ids = mk(sim, ref, 30)
    assert await ids_of(api, limit="5", offset="3") == ids[3:8]
    doc = (await api.get("/time_entries", params={"limit": "5", "offset": "10"})).json
    assert doc["meta"]["page_size"] == 5 and doc["meta"]["page_number"] == 3
    # only one of them: page/per_page rules apply
    assert await ids_of(api, limit="5") == ids[:20]
    assert await ids_of(api, offset="5", per_page="4") == ids[:4]
    # both given: page/per_page ignored; limit clamped to [1, max]
    assert await ids_of(api, limit="2", offset="1", page="3", per_page="10") == ids[1:3]
    assert await ids_of(api, limit="0", offset="0") == ids[:1]
    assert len(await ids_of(api, limit="999", offset="0")) == 30


# ---------------------------------------------------------------------------- ordering
@pytest.fixture
def ordered(sim: Simulator, ref: Ref, clock: Any) -> dict[str, str]:
    """Entries with ties on every sort field: a,b share everything; c differs."""
    a = sim.create_entry({"workspace_id": ref.ws, "date_performed": "2025-05-02",
                          "time_in_minutes": 5, "created_at": "2025-06-01T10:00:00Z",
                          "updated_at": "2025-06-10T10:00:00Z"})["id"]
    c = sim.create_entry({"workspace_id": ref.ws, "date_performed": "2025-05-01",
                          "time_in_minutes": 5, "created_at": "2025-06-02T10:00:00Z",
                          "updated_at": "2025-06-09T10:00:00Z"})["id"]
    b = sim.create_entry({"workspace_id": ref.ws, "date_performed": "2025-05-02",
                          "time_in_minutes": 5, "created_at": "2025-06-01T10:00:00Z",
                          "updated_at": "2025-06-10T10:00:00Z"})["id"]
    return {"a": a, "b": b, "c": c}


@pytest.mark.parametrize(("order", "expected"), [
    (None, "abc"),  # default date_performed:desc, ties id asc
    ("date_performed:desc", "abc"),
    ("date_performed:asc", "cab"),
    ("created_at:asc", "abc"),
    ("created_at:desc", "cab"),
    ("updated_at:asc", "cab"),
    ("updated_at:desc", "abc"),
    ("updated_at", "cab"),  # no direction -> asc
    ("updated_at:DESC", "abc"),
    ("updated_at:sideways", "cab"),  # anything but desc -> asc
    ("bogus:asc", "abc"),  # invalid field -> default
    ("id:desc", "abc"),
    ("", "abc"),
])
async def test_every_order_value_with_id_tiebreak(api: Api, ordered: dict[str, str],
                                                  order: str | None, expected: str) -> None:
    params = {} if order is None else {"order": order}
    got = await ids_of(api, **params)
    assert got == [ordered[k] for k in expected]


# ----------------------------------------------------------------------------- filters
async def test_date_performed_between_inclusive(api: Api, sim: Simulator, ref: Ref) -> None:
    e1 = mk(sim, ref, date_performed="2025-03-01")
    e2 = mk(sim, ref, date_performed="2025-03-15")
    e3 = mk(sim, ref, date_performed="2025-03-31")
    mk(sim, ref, date_performed="2025-04-01")
    mk(sim, ref, date_performed="2025-02-28")
    got = await ids_of(api, date_performed_between="2025-03-01:2025-03-31",
                       order="date_performed:asc")
    assert got == e1 + e2 + e3
    r = await api.get("/time_entries", params={"date_performed_between": "2025-03-01"})
    assert r.status == 400 and r.json["errors"][0]["type"] == "system"
    r = await api.get("/time_entries", params={"date_performed_between": "2025-02-30:2025-03-01"})
    assert r.status == 400


async def test_updated_after_before_strict_with_offsets(api: Api, sim: Simulator,
                                                        ref: Ref) -> None:
    t0 = mk(sim, ref, updated_at="2025-06-10T10:00:00Z")
    t1 = mk(sim, ref, 2, updated_at="2025-06-10T10:00:01Z")
    t2 = mk(sim, ref, updated_at="2025-06-10T10:00:02Z")
    # strictly after, any offset form, compared as instants
    for v in ("2025-06-10T10:00:00Z", "2025-06-10T10:00:00+00:00",
              "2025-06-10T03:00:00-07:00", "2025-06-10T15:30:00+05:30",
              "2025-06-10T10:00:00.999Z"):
        assert await ids_of(api, updated_after=v, order="updated_at:asc") == t1 + t2, v
    assert await ids_of(api, updated_before="2025-06-10T10:00:01Z") == t0
    assert await ids_of(api, updated_before="2025-06-10T10:00:02-00:00",
                        updated_after="2025-06-10T10:00:00Z") == t1
    # offset-less input = account zone (America/Los_Angeles, PDT)
    assert await ids_of(api, updated_after="2025-06-10T03:00:01",
                        order="updated_at:asc") == t2


async def test_created_after_before_strict(api: Api, sim: Simulator, ref: Ref) -> None:
    a = mk(sim, ref, created_at="2025-01-01T00:00:00-08:00")
    b = mk(sim, ref, created_at="2025-01-01T08:00:01Z")
    assert await ids_of(api, created_after="2025-01-01T08:00:00Z") == b
    assert await ids_of(api, created_before="2025-01-01T00:00:01-08:00") == a
    assert await ids_of(api, created_before="2025-01-01T00:00:00-08:00") == []


@pytest.mark.parametrize("param", ["updated_after", "updated_before", "created_after",
                                   "created_before"])
@pytest.mark.parametrize("value", ["yesterday", "2025-13-01T00:00:00Z", "2025-06-10T25:00:00Z"])
async def test_bad_datetime_is_400(api: Api, param: str, value: str) -> None:
    r = await api.get("/time_entries", params={param: value})
    assert r.status == 400
    (err,) = r.json["errors"]
    assert err["type"] == "system" and param in err["message"]


async def test_workspace_user_and_billable_filters(api: Api, sim: Simulator, ref: Ref) -> None:
    a = mk(sim, ref, billable=True)
    b = mk(sim, ref, workspace_id=ref.ws2, billable=False, user_id=ref.user2)
    c = mk(sim, ref, workspace_id=ref.ws_nonbillable)
    assert await ids_of(api, workspace_id=str(ref.ws)) == a
    assert await ids_of(api, workspace_ids=f"{ref.ws2},{ref.ws_nonbillable}") == b + c
    assert await ids_of(api, workspace_id="abc") == []
    assert await ids_of(api, with_user_ids=str(ref.user2)) == b
    assert await ids_of(api, with_user_ids=f"{ref.user},{ref.user2}") == a + b + c
    assert await ids_of(api, billable="true") == a
    assert await ids_of(api, billable="TRUE") == a
    assert await ids_of(api, billable="FALSE") == b + c
    assert await ids_of(api, billable="") == a + b + c  # blank = not given


async def test_approved_invoiced_uninvoiced_flags(api: Api, sim: Simulator, ref: Ref) -> None:
    appr = mk(sim, ref, workspace_id=ref.ws_approvals, approved=True)
    pending = mk(sim, ref, workspace_id=ref.ws_approvals)
    no_appr_needed = mk(sim, ref, workspace_id=ref.ws_no_approvals)
    inv = mk(sim, ref, workspace_id=ref.ws_approvals, approved=True, is_invoiced=True)
    everything = sorted(appr + pending + no_appr_needed + inv, key=int)
    got = sorted(await ids_of(api, approved="true"), key=int)
    assert got == sorted(appr + no_appr_needed + inv, key=int)
    # "always processed as true; the actual value you provide is ignored"
    assert sorted(await ids_of(api, approved="false"), key=int) == got
    assert await ids_of(api, invoiced="false") == inv
    assert sorted(await ids_of(api, uninvoiced="true"), key=int) == sorted(
        appr + pending + no_appr_needed, key=int)
    assert sorted(await ids_of(api, approved=""), key=int) == everything


async def test_default_filters_archived_and_other_account(api: Api, sim: Simulator,
                                                          ref: Ref) -> None:
    mine = mk(sim, ref)
    archived = mk(sim, ref, workspace_id=ref.ws_archived)
    other = mk(sim, ref, workspace_id=ref.ws_other)
    assert await ids_of(api) == mine
    assert await ids_of(api, from_archived_workspaces="true") == mine + archived
    assert await ids_of(api, from_archived_workspaces="false") == mine
    assert await ids_of(api, on_my_account="false") == mine + other
    assert await ids_of(api, on_my_account="true") == mine
    assert await ids_of(api, on_my_account="false",
                        from_archived_workspaces="true") == mine + archived + other
    assert await ids_of(api, on_my_account="") == mine  # blank -> default true
    # the filter follows the workspace's state at query time
    sim.unarchive_workspace(ref.ws_archived)
    assert await ids_of(api) == mine + archived


async def test_external_reference_filters(api: Api, sim: Simulator, ref: Ref) -> None:
    def xr(service: str, model_ref: str) -> dict[str, str]:
        return {"service_name": service, "service_model": "TimeEntry",
                "service_model_ref": model_ref}

    plain = mk(sim, ref)
    a = mk(sim, ref, external_reference=xr("syncd", "uuid-a"))
    b = mk(sim, ref, external_reference=xr("syncd", "uuid-b"))
    other = mk(sim, ref, external_reference=xr("jira", "uuid-a"))
    assert await ids_of(api, external_reference_service_name="syncd") == a + b
    assert await ids_of(api, external_reference_service_name="syncd",
                        external_reference_service_model_refs="uuid-a,nope") == a
    assert await ids_of(api, external_reference_service_model_refs="uuid-a") == a + other
    assert await ids_of(api, has_external_references="true") == a + b + other
    assert await ids_of(api, has_external_references="false") == plain
    assert await ids_of(api, without_external_reference_service_name="syncd") == plain + other
    refs = ",".join(f"r{i}" for i in range(201))
    r = await api.get("/time_entries", params={"external_reference_service_model_refs": refs})
    assert r.status == 400
    refs = ",".join(f"r{i}" for i in range(199)) + ",uuid-b"
    assert await ids_of(api, external_reference_service_model_refs=refs) == b


async def test_unknown_params_ignored(api: Api, sim: Simulator, ref: Ref) -> None:
    ids = mk(sim, ref, 2)
    assert await ids_of(api, foo="bar", search="x", optional_fields="user_can_edit") == ids


# ---------------------------------------------------------------------------- includes
async def test_includes_side_load(api: Api, sim: Simulator, ref: Ref) -> None:
    (eid,) = mk(sim, ref, story_id=ref.story_billable, role_id=ref.role, external_reference={
        "service_name": "syncd", "service_model": "TimeEntry", "service_model_ref": "u1",
        "status": "successful"})
    (eid2,) = mk(sim, ref, story_id=None, role_id=None)
    r = await api.get("/time_entries", params={
        "include": "workspace,user,story,role,external_references,nonsense,invoice"})
    doc = r.json
    assert set(doc) == {"count", "meta", "results", "time_entries", "workspaces", "users",
                        "stories", "roles", "external_references", "invoices"}
    assert doc["invoices"] == {} and doc["time_entries"][eid]["invoice_id"] is None
    assert list(doc["workspaces"]) == [str(ref.ws)]
    assert doc["workspaces"][str(ref.ws)]["title"]
    assert list(doc["users"]) == [str(ref.user)]
    assert list(doc["stories"]) == [str(ref.story_billable)]
    assert list(doc["roles"]) == [str(ref.role)]
    (xid,) = doc["external_references"]
    x = doc["external_references"][xid]
    assert x["service_name"] == "syncd" and x["service_model_ref"] == "u1"
    assert x["subject_id"] == int(eid) and x["subject_type"] == "TimeEntry"
    assert doc["time_entries"][eid]["external_reference_ids"] == [xid]
    assert doc["time_entries"][eid2]["external_reference_ids"] == []
    # without the include, no external_reference_ids
    doc = (await api.get("/time_entries", params={"include": "story"})).json
    assert "external_reference_ids" not in doc["time_entries"][eid]
    assert set(doc) == {"count", "meta", "results", "time_entries", "stories"}


# -------------------------------------------------------------------------------- only
async def test_only_unpaginated_no_404_default_filters(api: Api, sim: Simulator,
                                                       ref: Ref) -> None:
    ids = mk(sim, ref, 25)
    hidden = mk(sim, ref, workspace_id=ref.ws_archived)
    want = ids[::-1]  # request order does not matter, `order` does
    doc = (await api.get("/time_entries", params={
        "only": ",".join(want + hidden + ["999", "abc"]), "per_page": "5"})).json
    assert [x["id"] for x in doc["results"]] == ids  # all 25, not paginated, sorted
    assert doc["count"] == 25
    doc = (await api.get("/time_entries", params={
        "only": hidden[0], "from_archived_workspaces": "true"})).json
    assert [x["id"] for x in doc["results"]] == hidden
    doc = (await api.get("/time_entries", params={"only": "123456"})).json
    assert doc["results"] == [] and doc["count"] == 0
    doc = (await api.get("/time_entries", params={"only": ids[0],
                                                  "date_performed_between":
                                                  "2020-01-01:2020-01-02"})).json
    assert doc["results"] == []


# -------------------------------------------------------------------------------- show
async def test_show_route_and_default_filter_404(api: Api, sim: Simulator, ref: Ref) -> None:
    (eid,) = mk(sim, ref)
    (arch,) = mk(sim, ref, workspace_id=ref.ws_archived)
    (other,) = mk(sim, ref, workspace_id=ref.ws_other)
    for path in (f"/time_entries/{eid}", f"/time_entries/{eid}.json", f"/time_entries/{eid}/"):
        r = await api.get(path, params={"include": "workspace"})
        assert r.status == 200, path
        doc = r.json
        assert doc["count"] == 1 and doc["results"] == [{"key": "time_entries", "id": eid}]
        assert list(doc["workspaces"]) == [str(ref.ws)]
    for hidden, params in ((arch, {}), (other, {}), ("99999999", {}),
                           (eid, {"workspace_id": str(ref.ws2)})):
        r = await api.get(f"/time_entries/{hidden}", params=params)
        assert r.status == 404
        assert r.json["errors"][0]["type"] == "system"
    assert (await api.get(f"/time_entries/{arch}",
                          params={"from_archived_workspaces": "true"})).status == 200
    assert (await api.get(f"/time_entries/{other}",
                          params={"on_my_account": "false"})).status == 200


async def test_json_suffix_and_trailing_slash_on_collection(api: Api, sim: Simulator,
                                                            ref: Ref) -> None:
    ids = mk(sim, ref, 2)
    for path in ("/time_entries", "/time_entries.json", "/time_entries/"):
        r = await api.get(path)
        assert r.status == 200 and list(iter_ids(r.json)) == ids


async def test_seeded_paging_walk_is_complete(seeded_api: Api, seeded_sim: Simulator) -> None:
    """Walking updated_at:asc pages over the seed visits every visible entry exactly once."""
    seen: list[str] = []
    page = 1
    params = {"order": "updated_at:asc", "per_page": "50", "from_archived_workspaces": "true",
              "on_my_account": "false"}
    while True:
        doc = (await seeded_api.get("/time_entries", params={**params, "page": str(page)})).json
        if not doc["results"]:
            break
        seen += [x["id"] for x in doc["results"]]
        page += 1
    assert sorted(seen, key=int) == [e["id"] for e in seeded_sim.list_entries()]
    ups = [seeded_sim.get_entry(int(i))["updated_at"] for i in seen]  # type: ignore[index]
    inst = [datetime.fromisoformat(u).astimezone(timezone.utc) for u in ups]
    assert inst == sorted(inst)


def test_reference_entries_sizes_the_side_loads_independently_of_entries() -> None:
    """`reference_entries` (the memory benchmark's control) gives a 2,000-entry account the
    workspaces, users and stories of a 1,000,000-entry one; the entries stay 2,000."""
    from syncd.simulator import SimConfig
    small = Simulator(SimConfig(entries=2000, seed=3))
    shaped = Simulator(SimConfig(entries=2000, seed=3, reference_entries=1_000_000))
    big = Simulator(SimConfig(entries=0, seed=3, reference_entries=1_000_000))
    assert (len(small.workspaces), len(small.users)) == (8, 6)
    assert (len(shaped.workspaces), len(shaped.users), len(shaped.stories)) == (300, 250, 1200)
    assert len(big.stories) == len(shaped.stories)
    assert shaped.store.live_count == small.store.live_count == 2000
