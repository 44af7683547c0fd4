"""Contract test: simulator responses validate against Kantata's published OpenAPI document.

Every public response obtained through the ``api`` fixture in this package is validated (see
conftest.Api); this module adds a sweep over every public operation and proves the validator
really rejects violations. The document is read from KANTATA_OPENAPI_PATH (default: the
published <repo>/../shared/kantata/time-entries.openapi.yml, or the pinned copy in
tests/simulator/contract/ where the clone has no shared folder beside it); a missing file
fails, never skips.
"""

from __future__ import annotations

import os

from pathlib import Path

import orjson
import pytest
from openapi_core.testing import MockRequest, MockResponse

from syncd.simulator import Simulator

from .conftest import (
    PINNED_OPENAPI,
    PUBLISHED_OPENAPI,
    SPEC_HOST,
    Api,
    Contract,
    Ref,
    openapi_path,
)


def test_contract_file_is_found_and_loaded(contract: Contract) -> None:
    assert openapi_path().is_file()
    assert {"/time_entries", "/time_entries/{id}"} <= set(contract.spec["paths"])


def test_the_pinned_copy_is_the_published_contract() -> None:
    """The copy a lone clone validates against is the published file, byte for byte (checked
    wherever the published file is beside the repository, as on the project's machines)."""
    assert PINNED_OPENAPI.is_file()
    if not PUBLISHED_OPENAPI.is_file():
        reason = (f"no published contract at {PUBLISHED_OPENAPI}: the shared folder must be "
                  "beside the repository (../shared/kantata/time-entries.openapi.yml); the "
                  "pinned copy was not compared with it")
        if os.environ.get("SYNCD_REQUIRE_CONTRACT"):
            pytest.fail(reason + " (SYNCD_REQUIRE_CONTRACT is set)")
        pytest.skip(reason)
    assert PINNED_OPENAPI.read_bytes() == PUBLISHED_OPENAPI.read_bytes(), (
        "the published Kantata contract changed: copy it to tests/simulator/contract/ and "
        "re-run the contract tests")


def test_missing_contract_fails_with_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    monkeypatch.setenv("KANTATA_OPENAPI_PATH", str(missing))
    with pytest.raises(FileNotFoundError, match="KANTATA_OPENAPI_PATH") as exc:
        openapi_path()
    assert str(missing) in str(exc.value)


def test_validator_rejects_violations(contract: Contract) -> None:
    good = {"count": 1, "meta": {"count": 1, "page_count": 1, "page_number": 1, "page_size": 20},
            "results": [{"key": "time_entries", "id": "1"}],
            "time_entries": {"1": {"id": "1", "time_in_minutes": 5, "story_id": None}}}
    contract.validate("GET", "/time_entries", {}, 200, "application/json", orjson.dumps(good))
    for bad in ({**good, "count": "1"},
                {**good, "time_entries": {"1": {"time_in_minutes": "5"}}},
                {**good, "time_entries": {"1": {"workspace_id": None}}},  # not documented null
                {**good, "results": [{"key": "time_entries", "id": 1}]}):
        with pytest.raises(Exception):
            contract.validate("GET", "/time_entries", {}, 200, "application/json",
                              orjson.dumps(bad))
    with pytest.raises(Exception):  # an undeclared success status is a violation
        contract.validate("GET", "/time_entries", {}, 201, "application/json", b"{}")
    with pytest.raises(Exception):
        contract.api.validate_response(
            MockRequest(SPEC_HOST, "get", "/api/v1/time_entries"),
            MockResponse(b'{"errors":[{"type":1}]}', status_code=400,
                         content_type="application/json"))


async def test_every_public_operation_validates(api: Api, sim: Simulator, ref: Ref) -> None:
    """Sweep all six operations with includes, errors and both path styles."""
    before = api.contract.validated
    xr = {"service_name": "syncd", "service_model": "TimeEntry", "service_model_ref": "r1"}
    new = {"workspace_id": ref.ws, "date_performed": "2025-06-02", "time_in_minutes": 60,
           "story_id": ref.story_billable, "notes": "✓", "external_reference": xr}
    inc = {"include": "workspace,user,story,role,external_references"}
    r = await api.post("/time_entries", params=inc, json={"time_entry": new})
    eid = next(iter(r.json["time_entries"]))
    await api.post("/time_entries.json", json={"time_entries": [new, {**new, "role_id": None}]})
    await api.post("/time_entries", json={"time_entries": [new, {}]})  # 422
    await api.get("/time_entries", params=inc)
    await api.get("/time_entries.json", params={**inc, "page": "5"})
    await api.get("/time_entries", params={"only": eid, **inc})
    await api.get(f"/time_entries/{eid}", params=inc)
    await api.get(f"/time_entries/{eid}.json")
    await api.get("/time_entries/1")  # 404
    await api.get("/time_entries", params={"updated_after": "x"})  # 400
    await api.put(f"/time_entries/{eid}", params=inc, json={"time_entry": {"notes": None}})
    await api.put(f"/time_entries/{eid}", json={"time_entry": {"time_in_minutes": -1}})  # 422
    await api.delete(f"/time_entries/{eid}")
    await api.delete("/time_entries", params={"ids": "1,2"})  # 404
    await api.get("/time_entries", token="bad")  # 401
    sim.set_faults({"rate_limit_per_minute": 1})
    await api.get("/time_entries")
    await api.get("/time_entries")  # 429: undeclared status, Errors body still validated
    assert api.contract.validated - before == 17


async def test_seeded_pages_validate(seeded_api: Api) -> None:
    """Seeded data (unicode notes, null FKs, other currencies) validates page after page."""
    params = {"per_page": "100", "from_archived_workspaces": "true", "on_my_account": "false",
              "include": "workspace,user,story,role,external_references"}
    for page in (1, 2, 3, 4):
        r = await seeded_api.get("/time_entries", params={**params, "page": str(page)})
        assert r.status == 200
