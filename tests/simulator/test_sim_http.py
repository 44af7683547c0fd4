"""Auth, headers, rate limit, injected faults and the request log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from syncd.simulator import FaultConfig, Simulator

from .conftest import TOKEN, Api, Contract, FakeClock, Ref, iter_ids, make_sim
from syncd.simulator.app import build_app

NEW = {"time_entry": {"date_performed": "2025-06-02", "time_in_minutes": 60}}


def new_entry(ref: Ref) -> dict[str, Any]:
    return {"time_entry": {**NEW["time_entry"], "workspace_id": ref.ws}}


DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError)


# ------------------------------------------------------------------------------- auth
@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
])
async def test_401_without_valid_bearer(api: Api, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/time_entries"), ("GET", "/time_entries/1.json"),
                         ("POST", "/time_entries"), ("DELETE", "/time_entries/1"),
                         ("PUT", "/time_entries/1")):
        r = await api.request(method, path, headers=headers, token=None)
        assert r.status == 401
        assert r.json == {"errors": [{"type": "oauth", "message": "Invalid OAuth 2 Request"}]}
        assert r.headers["x-request-id"]
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_bearer_scheme_case_insensitive(api: Api) -> None:
    r = await api.get("/time_entries", headers={"Authorization": f"bearer {TOKEN}"}, token=None)
    assert r.status == 200


async def test_request_ids_unique_everywhere(api: Api) -> None:
    seen = set()
    for path in ("/time_entries", "/nope", "/_sim/state", "/_sim/nope", "/time_entries/abc"):
        r = await api.get(path)
        seen.add(r.headers["x-request-id"])
    assert len(seen) == 5


async def test_unknown_public_routes_404(api: Api) -> None:
    for method, path in (("GET", "/workspaces"), ("GET", "/time_entries/abc"),
                         ("POST", "/time_entries/1"), ("PATCH", "/time_entries"),
                         ("GET", "")):
        r = await api.request(method, path)
        assert r.status == 404, (method, path)
        assert r.json["errors"][0]["type"] == "system"


# ------------------------------------------------------------------------- rate limit
async def test_rate_limit_without_retry_after(api: Api, sim: Simulator) -> None:
    sim.set_faults({"rate_limit_per_minute": 3})
    statuses = [(await api.get("/time_entries")).status for _ in range(3)]
    r = await api.get("/time_entries")
    assert statuses == [200, 200, 200] and r.status == 429
    (err,) = r.json["errors"]
    assert err["type"] == "system" and err["message"]
    assert "Retry-After" not in r.headers
    assert sim.requests[-1]["fault"] == "rate_limit" and sim.requests[-1]["status"] == 429
    # /_sim is never limited
    assert (await api.get("/_sim/state")).status == 200


async def test_rate_limit_with_retry_after_from_config(clock: FakeClock,
                                                       contract: Contract) -> None:
    s = make_sim(clock, rate_limit_per_minute=2, retry_after=7)
    async with TestClient(TestServer(build_app(s))) as client:
        a = Api(client, contract, s)
        assert (await a.get("/time_entries")).status == 200
        assert (await a.post("/time_entries", json={"time_entry": {}})).status == 422
        r = await a.get("/time_entries")
        assert r.status == 429 and r.headers["Retry-After"] == "7"
        # a bad token is answered 401 before the budget is consulted
        assert (await a.get("/time_entries", token="bad")).status == 401
        s.set_faults(FaultConfig(rate_limit_per_minute=100))
        assert (await a.get("/time_entries")).status == 200


# ----------------------------------------------------------------------------- faults
async def test_error_fault_does_nothing(api: Api, sim: Simulator, ref: Ref) -> None:
    sim.set_faults({"error_rate": 1.0, "statuses": [503]})
    r = await api.post("/time_entries", json=new_entry(ref))
    assert r.status == 503 and r.json["errors"][0]["type"] == "system"
    assert sim.list_entries() == []
    assert sim.requests[-1]["fault"] == "error" and sim.requests[-1]["status"] == 503
    assert (await api.get("/_sim/entries")).status == 200  # control API unaffected
    sim.clear_faults()
    assert (await api.post("/time_entries", json=new_entry(ref))).status == 200


async def test_error_statuses_default_and_deterministic(api: Api, sim: Simulator) -> None:
    async def run() -> list[int]:
        return [(await api.get("/time_entries")).status for _ in range(30)]

    sim.set_faults({"error_rate": 0.5, "seed": 42})
    first = await run()
    sim.set_faults({"error_rate": 0.5, "seed": 42})
    assert await run() == first
    assert set(first) <= {200, 500, 502, 503} and 200 in first and len(set(first)) > 2
    sim.set_faults({"error_rate": 0.5, "seed": 43})
    assert await run() != first


async def test_reset_fault_applies_nothing(api: Api, sim: Simulator, ref: Ref) -> None:
    sim.set_faults({"reset_rate": 1.0})
    with pytest.raises(DISCONNECTED):
        await api.post("/time_entries", json=new_entry(ref))
    assert sim.list_entries() == []
    e = sim.create_entry({"workspace_id": ref.ws})
    with pytest.raises(DISCONNECTED):
        await api.delete(f"/time_entries/{e['id']}")
    assert sim.get_entry(int(e["id"])) == e
    assert [x["fault"] for x in sim.requests] == ["reset", "reset"]
    assert sim.requests[0]["status"] is None


async def test_lost_response_applies_write(api: Api, sim: Simulator, ref: Ref) -> None:
    sim.set_faults({"lost_response_rate": 1.0})
    with pytest.raises(DISCONNECTED):
        await api.post("/time_entries", json=new_entry(ref))
    with pytest.raises(DISCONNECTED):  # the blind retry creates a duplicate
        await api.post("/time_entries", json=new_entry(ref))
    assert len(sim.list_entries()) == 2
    rec = sim.requests[-1]
    assert rec["fault"] == "lost_response" and rec["status"] == 200
    assert rec["body"] == new_entry(ref)
    eid = sim.list_entries()[0]["id"]
    with pytest.raises(DISCONNECTED):
        await api.delete(f"/time_entries/{eid}")
    assert len(sim.list_entries()) == 1


async def test_timeout_fault_hangs_then_closes(clock: FakeClock, contract: Contract) -> None:
    s = make_sim(clock, hang_seconds=0.3)
    ref = Ref(s)
    async with TestClient(TestServer(build_app(s))) as client:
        a = Api(client, contract, s)
        s.set_faults({"timeout_rate": 1.0})
        t0 = time.monotonic()
        with pytest.raises(DISCONNECTED):
            await a.post("/time_entries", json=new_entry(ref))
        assert time.monotonic() - t0 >= 0.25
        assert s.list_entries() == [] and s.requests[-1]["fault"] == "timeout"
        # a client with a shorter timeout gives up first
        with pytest.raises(asyncio.TimeoutError):
            await a.get("/time_entries", timeout=0.1)


async def test_latency(api: Api, sim: Simulator) -> None:
    sim.set_faults({"latency_ms": 150})
    t0 = time.monotonic()
    assert (await api.get("/time_entries")).status == 200
    assert time.monotonic() - t0 >= 0.14


@pytest.mark.parametrize("kind", ["truncated", "html", "missing_ids"])
async def test_bad_pages(api: Api, sim: Simulator, ref: Ref, kind: str) -> None:
    ids = [sim.create_entry({"workspace_id": ref.ws})["id"] for _ in range(3)]
    sim.set_faults({"bad_page_rate": 1.0, "bad_page_kinds": [kind]})
    r = await api.get("/time_entries", validate=False)
    assert r.status == 200
    if kind == "truncated":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(r.body)
    elif kind == "html":
        assert r.headers["Content-Type"].startswith("text/html")
        assert r.body.lstrip().startswith(b"<!DOCTYPE html>")
    else:
        doc = r.json
        named = list(iter_ids(doc))
        assert named == ids and set(named) - set(doc["time_entries"])
    assert sim.requests[-1]["fault"] == f"bad_page:{kind}"
    # only lists are corrupted
    assert (await api.get(f"/time_entries/{ids[0]}")).status == 200
    assert (await api.post("/time_entries", json=new_entry(ref))).status == 200
    sim.create_entry({"workspace_id": ref.ws})


async def test_missing_ids_on_empty_page(api: Api, sim: Simulator) -> None:
    sim.set_faults({"bad_page_rate": 1.0, "bad_page_kinds": ["missing_ids"]})
    doc = (await api.get("/time_entries", validate=False)).json
    assert doc["results"] and not doc["time_entries"]


async def test_fault_config_validation(api: Api, sim: Simulator) -> None:
    for bad in ({"error_rate": 2}, {"nope": 1}, {"statuses": []},
                {"bad_page_kinds": ["weird"]}, {"error_rate": 0.6, "reset_rate": 0.6},
                {"rate_limit_per_minute": 0}):
        r = await api.put("/_sim/faults", json=bad)
        assert r.status == 400 and r.json["error"], bad
        with pytest.raises(ValueError):
            sim.set_faults(bad)
    r = await api.put("/_sim/faults", json={"error_rate": 0.25, "seed": 3, "retry_after": None})
    assert r.status == 200 and r.json["error_rate"] == 0.25 and r.json["statuses"] == [
        500, 502, 503]
    assert sim.faults.error_rate == 0.25
    r = await api.delete("/_sim/faults")
    assert r.status == 200 and sim.faults == FaultConfig()


# ------------------------------------------------------------------------ request log
async def test_request_log(api: Api, sim: Simulator, ref: Ref) -> None:
    await api.get("/time_entries.json", params={"page": "2", "include": "user"})
    await api.post("/time_entries", json=new_entry(ref))
    await api.get("/time_entries", token="wrong")
    await api.get("/_sim/state")  # control requests are not logged
    r = await api.get("/_sim/requests")
    reqs = r.json["requests"]
    assert reqs == sim.requests
    assert [(x["method"], x["path"], x["status"]) for x in reqs] == [
        ("GET", "/api/v1/time_entries.json", 200), ("POST", "/api/v1/time_entries", 200),
        ("GET", "/api/v1/time_entries", 401)]
    assert reqs[0]["query"] == {"page": "2", "include": "user"} and reqs[0]["body"] is None
    assert reqs[1]["body"] == new_entry(ref) and reqs[1]["fault"] is None
    assert reqs[0]["time"] == "2025-06-16T12:00:00-07:00"
    assert (await api.delete("/_sim/requests")).status == 204
    assert sim.requests == []
    await api.get("/time_entries")
    sim.clear_requests()
    assert (await api.get("/_sim/requests")).json == {"requests": []}


async def test_request_log_is_capped(clock: FakeClock, contract: Contract) -> None:
    s = make_sim(clock, max_logged_requests=10)
    async with TestClient(TestServer(build_app(s))) as client:
        a = Api(client, contract, s)
        for i in range(25):
            await a.get("/time_entries", params={"n": str(i)})
        assert 10 <= len(s.requests) <= 11
        assert s.requests[-1]["query"] == {"n": "24"}


async def test_retry_after_rounds_up(api: Api, sim: Simulator) -> None:
    sim.set_faults({"rate_limit_per_minute": 1, "retry_after": 0.2})
    await api.get("/time_entries")
    r = await api.get("/time_entries")
    assert r.status == 429 and r.headers["Retry-After"] == "1"
