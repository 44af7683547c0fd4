"""Control API (/_sim), in-process API, time zones/DST, seed data, running_simulator and CLI."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, datetime, timezone
from typing import Any

import aiohttp
import pytest

from syncd.simulator import InvalidInput, NotFound, SimConfig, Simulator
from syncd.simulator.cli import configure_parser
from syncd.simulator.testing import running_simulator

from .conftest import REPO, TOKEN, Api, FakeClock, Ref, iter_ids, make_sim
from syncd.simulator.app import build_app


# ----------------------------------------------------------------------- control API
async def test_control_entries_roundtrip(api: Api, sim: Simulator, ref: Ref,
                                         clock: FakeClock) -> None:
    r = await api.post("/_sim/entries", json={
        "id": 123, "workspace_id": ref.ws_archived, "date_performed": "2020-01-04",
        "time_in_minutes": 5, "updated_at": "2020-01-05T00:00:00Z",
        "created_at": "2020-01-04T23:00:00+01:00", "is_invoiced": True, "notes": "",
        "location": "Somewhere new"})
    assert r.status == 201
    e = r.json
    assert e["id"] == "123" and e["updated_at"] == "2020-01-04T16:00:00-08:00"
    assert e["created_at"] == "2020-01-04T14:00:00-08:00" and e["is_invoiced"] is True
    assert e["notes"] == "" and e["location"] == "Somewhere new"
    other = (await api.post("/_sim/entries", json={"workspace_id": ref.ws_other})).json
    assert int(other["id"]) > 123
    listed = (await api.get("/_sim/entries")).json["time_entries"]
    assert [x["id"] for x in listed] == ["123", other["id"]]  # ignores default filters
    assert listed == sim.list_entries()
    assert (await api.get("/_sim/entries/123")).json == e
    # PATCH bumps updated_at to now unless given
    clock.advance(5)
    p = (await api.patch("/_sim/entries/123", json={"notes": "edited"})).json
    assert p["notes"] == "edited" and p["updated_at"] == "2025-06-16T12:00:05-07:00"
    p = (await api.patch("/_sim/entries/123", json={"updated_at": "2025-06-16T12:00:01-07:00"}
                         )).json
    assert p["updated_at"] == "2025-06-16T12:00:01-07:00"  # forced values are honoured
    assert (await api.delete("/_sim/entries/123")).json == {"deleted": "123"}
    assert (await api.get("/_sim/entries/123")).status == 404
    assert (await api.delete("/_sim/entries/123")).status == 404
    assert (await api.patch("/_sim/entries/123", json={})).status == 404
    r = await api.post("/_sim/entries", json={"id": other["id"]})
    assert r.status == 400 and "exists" in r.json["error"]
    r = await api.post("/_sim/entries", json={"time_in_minutes": "x"})
    assert r.status == 400
    r = await api.post("/_sim/entries", data=b"{", headers={"Content-Type": "application/json"})
    assert r.status == 400


async def test_control_workspaces_lock_invoice_state(api: Api, sim: Simulator,
                                                     ref: Ref) -> None:
    e = sim.create_entry({"workspace_id": ref.ws})
    r = await api.post(f"/_sim/workspaces/{ref.ws}/archive")
    assert r.status == 200 and r.json["archived"] is True
    assert (await api.get(f"/time_entries/{e['id']}")).status == 404
    r = await api.post(f"/_sim/workspaces/{ref.ws}/unarchive")
    assert r.json["archived"] is False
    assert (await api.get(f"/time_entries/{e['id']}")).status == 200
    assert (await api.post("/_sim/workspaces/1/archive")).status == 404
    r = await api.put("/_sim/lock_date", json={"lock_date": "2025-05-31"})
    assert r.json == {"lock_date": "2025-05-31"} and sim.lock_date == date(2025, 5, 31)
    assert (await api.get("/_sim/lock_date")).json == {"lock_date": "2025-05-31"}
    assert (await api.put("/_sim/lock_date", json={"lock_date": None})).json == {
        "lock_date": None}
    assert sim.lock_date is None
    assert (await api.put("/_sim/lock_date", json={"lock_date": "31/05/2025"})).status == 400
    assert (await api.put("/_sim/lock_date", json={})).status == 400
    r = await api.post(f"/_sim/entries/{e['id']}/invoice")
    assert r.json["is_invoiced"] is True
    assert (await api.post("/_sim/entries/5/invoice")).status == 404
    state = (await api.get("/_sim/state")).json
    assert state["entries"] == 1 and state["lock_date"] is None
    assert state["workspaces"] == len(sim.workspaces)
    for kind, table in (("workspaces", sim.workspaces), ("users", sim.users),
                        ("stories", sim.stories), ("roles", sim.roles)):
        got = (await api.get(f"/_sim/{kind}")).json[kind]
        assert [int(x["id"]) for x in got] == sorted(table)
    ws = (await api.get("/_sim/workspaces")).json["workspaces"]
    assert any(not w["on_my_account"] for w in ws) and any(w["archived"] for w in ws)


def test_in_process_api_errors(sim: Simulator, ref: Ref) -> None:
    with pytest.raises(NotFound):
        sim.edit_entry(1, {"notes": "x"})
    with pytest.raises(NotFound):
        sim.delete_entry(1)
    with pytest.raises(NotFound):
        sim.invoice_entry(1)
    with pytest.raises(NotFound):
        sim.archive_workspace(1)
    with pytest.raises(InvalidInput):
        sim.create_entry({"workspace_id": 1})
    with pytest.raises(InvalidInput):
        sim.create_entry({"updated_at": "yesterday"})
    with pytest.raises(InvalidInput):
        sim.set_lock_date("not a date")
    assert sim.get_entry(1) is None
    e = sim.create_entry({"date_performed": date(2025, 1, 2),
                          "updated_at": datetime(2025, 1, 3, tzinfo=timezone.utc)})
    assert e["date_performed"] == "2025-01-02" and e["updated_at"] == "2025-01-02T16:00:00-08:00"
    sim.delete_entry(int(e["id"]))
    assert sim.list_entries() == []


def test_control_bypasses_rules_public_does_not(sim: Simulator, ref: Ref) -> None:
    sim.set_lock_date(date(2025, 5, 31))
    e = sim.create_entry({"workspace_id": ref.ws_archived, "date_performed": "2025-01-01"})
    e2 = sim.edit_entry(int(e["id"]), {"time_in_minutes": 9, "is_invoiced": True})
    assert e2["time_in_minutes"] == 9 and e2["is_invoiced"] is True
    sim.delete_entry(int(e["id"]))


# -------------------------------------------------------------------------- time zones
@pytest.mark.parametrize(("tz", "instant", "expected"), [
    ("America/Los_Angeles", datetime(2025, 1, 15, 20, 0, tzinfo=timezone.utc),
     "2025-01-15T12:00:00-08:00"),
    ("America/Los_Angeles", datetime(2025, 7, 15, 19, 0, tzinfo=timezone.utc),
     "2025-07-15T12:00:00-07:00"),
    # the DST switch: 2025-03-09 02:00 PST -> 03:00 PDT
    ("America/Los_Angeles", datetime(2025, 3, 9, 9, 59, 59, tzinfo=timezone.utc),
     "2025-03-09T01:59:59-08:00"),
    ("America/Los_Angeles", datetime(2025, 3, 9, 10, 0, 0, tzinfo=timezone.utc),
     "2025-03-09T03:00:00-07:00"),
    ("Europe/Berlin", datetime(2025, 1, 15, 11, 0, 0, 999_000, tzinfo=timezone.utc),
     "2025-01-15T12:00:00+01:00"),
    ("UTC", datetime(2025, 1, 15, 12, 0, tzinfo=timezone.utc), "2025-01-15T12:00:00+00:00"),
])
async def test_timestamps_use_account_offset(contract: Any, tz: str, instant: datetime,
                                             expected: str) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    s = make_sim(FakeClock(instant), timezone=tz)
    async with TestClient(TestServer(build_app(s))) as client:
        a = Api(client, contract, s)
        r = await a.post("/time_entries", json={"time_entry": {
            "workspace_id": Ref(s).ws, "date_performed": "2025-01-01", "time_in_minutes": 1}})
        e = next(iter(r.json["time_entries"].values()))
        assert e["created_at"] == expected and e["updated_at"] == expected
        assert not e["created_at"].endswith("Z")


def test_naive_clock_rejected() -> None:
    with pytest.raises(ValueError):
        Simulator(SimConfig(entries=0, clock=lambda: datetime(2025, 1, 1)))  # noqa: DTZ001 (naive on purpose)


# ------------------------------------------------------------------------------- seed
def test_seed_is_deterministic(clock: FakeClock) -> None:
    a = make_sim(clock, entries=500, seed=3)
    b = make_sim(clock, entries=500, seed=3)
    c = make_sim(clock, entries=500, seed=4)
    assert a.list_entries() == b.list_entries()
    assert a.list_entries() != c.list_entries()
    assert {k: (w.title, w.archived, w.account_id) for k, w in a.workspaces.items()} == {
        k: (w.title, w.archived, w.account_id) for k, w in b.workspaces.items()}


def test_seed_is_realistic(clock: FakeClock) -> None:
    s = make_sim(clock, entries=3000, seed=1, lock_date="auto")
    entries = s.list_entries()
    assert len(entries) == 3000
    notes = [e["notes"] for e in entries]
    assert None in notes and "" in notes
    assert any(n and "\n" in n for n in notes)
    assert any(n and any(ord(ch) > 0xFFFF for ch in n) for n in notes)  # emoji
    assert any(e["is_invoiced"] for e in entries) and any(e["approved"] for e in entries)
    assert any(e["story_id"] is None for e in entries)
    assert any(e["role_id"] is None for e in entries)
    assert all(e["is_invoiced"] <= e["approved"] for e in entries)
    dates = sorted(e["date_performed"] for e in entries)
    assert dates[0] < "2023-07-01" and dates[-1] >= "2025-06-01" and dates[-1] <= "2025-06-16"
    shared = Counter(e["updated_at"] for e in entries).most_common(1)[0][1]
    assert shared >= 50  # MANY entries share one updated_at second
    for e in entries:
        c = datetime.fromisoformat(e["created_at"])
        u = datetime.fromisoformat(e["updated_at"])
        assert u >= c and u <= clock.now
    assert s.lock_date is not None and s.lock_date.weekday() == 5 and s.lock_date < date(
        2025, 6, 16)
    assert any(w.archived for w in s.workspaces.values())
    assert any(w.account_id != s.my_account_id for w in s.workspaces.values())
    visible = s.api_list({"per_page": "1"})
    everything = s.api_list({"per_page": "1", "from_archived_workspaces": "true",
                             "on_my_account": "false"})
    import orjson
    assert orjson.loads(visible)["count"] < orjson.loads(everything)["count"] == 3000
    assert {e["currency"] for e in entries} >= {"USD", "EUR"}
    # two years of Pacific time: both PST and PDT offsets appear, never Z
    assert {e["created_at"][-6:] for e in entries} == {"-08:00", "-07:00"}
    assert {e["updated_at"][-6:] for e in entries} == {"-08:00", "-07:00"}


# -------------------------------------------------------------------- running_simulator
async def test_running_simulator_serves_on_loopback(seeded_sim: Simulator) -> None:
    async with running_simulator(seeded_sim) as base_url:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            async with c.get(f"{base_url}/time_entries", params={"per_page": "3"}) as r:
                assert r.status == 200
                assert len(list(iter_ids(await r.json()))) == 3
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as c:
            async with c.get(f"{base_url}/time_entries"):
                pass
    with pytest.raises(ValueError):
        async with running_simulator(seeded_sim, host="0.0.0.0"):
            pass


async def test_shutdown_wakes_hanging_requests(sim: Simulator) -> None:
    sim.set_faults({"timeout_rate": 1.0})  # hang_seconds is 30 by default
    t0 = time.monotonic()
    async with running_simulator(sim) as base_url:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            task = asyncio.ensure_future(c.get(f"{base_url}/time_entries"))
            await asyncio.sleep(0.2)
            assert sim.requests and sim.requests[-1]["fault"] == "timeout"
            await asyncio.sleep(0)
        # leaving the session closes the client side; leaving the server must not take 30 s
    with pytest.raises(Exception):
        await task
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------------- CLI
def test_cli_parser_has_help_everywhere() -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    for action in p._actions:
        if action.dest != "help":
            assert action.help, action.dest
    args = p.parse_args([])
    assert (args.host, args.port, args.max_per_page, args.lock_date) == (
        "127.0.0.1", 8089, 200, "auto")
    args = p.parse_args(["--lock-date", "2025-05-31", "--rate-limit-per-minute", "5",
                         "--entries", "10", "--timezone", "UTC"])
    assert args.lock_date == date(2025, 5, 31) and args.rate_limit_per_minute == 5
    assert p.parse_args(["--lock-date", "none"]).lock_date is None
    for bad in (["--lock-date", "soon"], ["--timezone", "Mars/Olympus"], ["--entries", "-1"],
                ["--max-per-page", "0"], ["--rate-limit-per-minute", "x"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_cli_serves_until_sigterm(unused_tcp_port: int) -> None:
    code = ("import argparse, sys; from syncd.simulator.cli import configure_parser, run; "
            "p = argparse.ArgumentParser(); configure_parser(p); "
            "sys.exit(run(p.parse_args(sys.argv[1:])))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(unused_tcp_port), "--token", "T",
         "--entries", "500", "--seed", "5"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{unused_tcp_port}/api/v1" in line, line
        url = f"http://127.0.0.1:{unused_tcp_port}/api/v1/time_entries.json?per_page=1"

        async def fetch() -> int:
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer T"}) as c:
                async with c.get(url) as r:
                    return (await r.json())["count"]

        assert asyncio.run(fetch()) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_on_a_taken_port_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A new-user trial: the port in use was only logged. Exit 1 and one plain line."""
    import socket

    from syncd import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["simulator", "--port", str(port), "--entries", "10"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"syncd simulator: cannot serve on 127.0.0.1:{port}: ")
    assert err.endswith("address already in use (choose another --port)"), err


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_control_route_is_documented_in_the_simulator_readme() -> None:
    """Issue #23: `GET /_sim/lock_date` worked but was not documented. Every method and path
    of the control API (`/_sim/...`) appears in syncd/simulator/README.md's table."""
    import re

    text = (REPO / "syncd" / "simulator" / "README.md").read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    documented = {(m, p) for m, p in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/_sim/[^`\s]+)",
                                                table)}
    # "`/_sim/users`" after a documented GET of the same row
    for row in table.splitlines():
        verbs = re.findall(r"`(GET|POST|PUT|PATCH|DELETE) /_sim/", row)
        documented |= {(v, p) for v in verbs for p in re.findall(r"`(/_sim/[^`\s]+)`", row)}
    missing = []
    for route in build_app(Simulator(SimConfig(entries=1))).router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/_sim") and route.method != "HEAD" and \
                (route.method, path) not in documented:
            missing.append(f"{route.method} {path}")
    assert missing == []
