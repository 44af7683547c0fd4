"""The dbt package deploy/dbt/syncd_kantata, run by dbt itself against a mirror that syncd
filled from the simulator (issue #25): `dbt deps`, `dbt build` (models and every test) and
`dbt source freshness` are green; the mart's totals equal the same sums computed straight from
kantata.time_entries; the as-of model shows the entries as they were; an older syncd schema
is refused with a clear message.

dbt runs from .venv-dbt (tests/run installs it from tests/dbt/requirements.txt). Without it
these tests are skipped, except in CI (CI set) or with SYNCD_REQUIRE_DBT=1, where a missing
dbt is a failure: CI must never pass without having run dbt.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from syncd import migrate, pull, reconcile_job
from syncd.app import open_deps
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator
from tests.conftest import _with_db
from tests.integration.conftest import TOKEN, make_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "deploy" / "dbt" / "syncd_kantata"
DBT = ROOT / ".venv-dbt" / "bin" / "dbt"
ENTRIES = 1_500
REQUIRED = yaml.safe_load((PACKAGE / "dbt_project.yml").read_text())["vars"][
    "syncd_kantata_required_schema_version"]


def dbt_required() -> bool:
    """CI (any CI value but 0/false) or SYNCD_REQUIRE_DBT: a missing dbt fails, never skips."""
    ci = os.environ.get("CI", "").strip().lower()
    return (ci not in ("", "0", "false", "no")) or bool(os.environ.get("SYNCD_REQUIRE_DBT"))


@pytest.fixture(scope="module")
def dbt_bin() -> Path:
    if not os.access(DBT, os.X_OK):
        msg = (f"dbt is not installed at {DBT.relative_to(ROOT)}: tests/run installs it "
               "(tests/dbt/requirements.txt)")
        if dbt_required():
            pytest.fail(msg + "; CI must run the dbt tests")
        pytest.skip(msg)
    return DBT


@dataclass
class Mirror:
    """A database syncd filled from the simulator, and what the test knows about its history:
    `as_of` is an instant after the backfill and before the edits, creates and deletions;
    `live_at` the (id, minutes) of the live entries at that instant."""

    dsn: str
    as_of: datetime
    live_at: set[tuple[int, int]]
    edited: list[int]
    deleted: list[int]


async def _fill(dsn: str) -> Mirror:
    sim = Simulator(SimConfig(token=TOKEN, entries=ENTRIES, seed=25, lock_date=None))
    async with running_simulator(sim) as url, open_deps(make_settings(dsn, url)) as deps:
        await pull.sync_once(deps)
        conn = await asyncpg.connect(dsn)
        try:
            as_of = await conn.fetchval("SELECT date_trunc('second', now())")
            live_at = {(r["id"], r["time_in_minutes"]) for r in await conn.fetch(
                "SELECT id, time_in_minutes FROM kantata.time_entries "
                "WHERE deleted_at IS NULL")}
        finally:
            await conn.close()
        later = (as_of + timedelta(seconds=2)).isoformat()
        editable = sorted(int(e["id"]) for e in sim.list_entries() if not e["is_invoiced"])
        edited, deleted = editable[:20], editable[20:30]
        for i in edited:
            e = sim.get_entry(i)
            assert e is not None
            sim.edit_entry(i, {"time_in_minutes": int(e["time_in_minutes"]) + 15,
                               "updated_at": later})
        for i in deleted:
            sim.delete_entry(i)
        for n in range(5):
            sim.create_entry({"time_in_minutes": 30 + n, "updated_at": later})
        await pull.sync_once(deps)
        days = sorted(date.fromisoformat(e["date_performed"]) for e in sim.list_entries())
        await reconcile_job.reconcile_range(deps, days[0], days[-1])
        await pull.sync_once(deps)  # the last pull after the reconciliation: freshness is now
    return Mirror(dsn, as_of, live_at, edited, deleted)


@pytest.fixture(scope="module")
def mirror(pg_server_dsn: str, template_db: str) -> Iterator[Mirror]:
    name = f"syncd_dbt_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        c = await asyncpg.connect(pg_server_dsn)
        try:
            await c.execute(sql)
        finally:
            await c.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        yield asyncio.run(_fill(_with_db(pg_server_dsn, name)))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _profile_target(dsn: str) -> dict[str, Any]:
    u = urlsplit(dsn)
    return {"type": "postgres", "host": u.hostname, "port": u.port or 5432,
            "user": u.username or "postgres", "password": u.password or "",
            "dbname": u.path.lstrip("/"), "schema": "analytics", "threads": 2}


@dataclass
class Project:
    """A dbt project in a temporary folder that installs the package as a user would (local
    path instead of git), with one profile target per database."""

    path: Path
    dbt: Path
    targets: dict[str, str]

    def write(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "dbt_project.yml").write_text(yaml.safe_dump({
            "name": "syncd_kantata_check", "version": "1.0.0", "config-version": 2,
            "profile": "syncd_kantata_check",
            "flags": {"send_anonymous_usage_stats": False, "use_colors": False}}))
        (self.path / "packages.yml").write_text(yaml.safe_dump(
            {"packages": [{"local": str(PACKAGE)}]}))
        (self.path / "profiles.yml").write_text(yaml.safe_dump({"syncd_kantata_check": {
            "target": "mirror",
            "outputs": {t: _profile_target(dsn) for t, dsn in self.targets.items()}}}))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run dbt in the project; no network: anonymous usage stats and version checks off."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_", "PG"))}
        env.update(DBT_SEND_ANONYMOUS_USAGE_STATS="false", DO_NOT_TRACK="1",
                   DBT_VERSION_CHECK="false", DBT_PROFILES_DIR=str(self.path))
        return subprocess.run([str(self.dbt), *args, "--project-dir", str(self.path)],
                              cwd=self.path, env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    def results(self, name: str) -> dict[str, Any]:
        return json.loads((self.path / "target" / name).read_text())


@dataclass
class Built:
    project: Project
    mirror: Mirror
    seconds: dict[str, float]
    outputs: dict[str, str]


def _ok(step: str, proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"dbt {step} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def built(dbt_bin: Path, mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """deps, build and source freshness, once for the module, each required to exit 0."""
    project = Project(tmp_path_factory.mktemp("dbt") / "project", dbt_bin,
                      {"mirror": mirror.dsn})
    project.write()
    seconds, outputs = {}, {}
    as_of = json.dumps({"syncd_kantata_as_of": mirror.as_of.isoformat()})
    for step, args in (("deps", ["deps"]), ("build", ["build", "--vars", as_of]),
                       ("source freshness", ["source", "freshness"])):
        t0 = time.monotonic()
        outputs[step] = _ok(step, project.run(*args))
        seconds[step] = round(time.monotonic() - t0, 1)
    print(f"dbt timings (s): {seconds}")
    return Built(project, mirror, seconds, outputs)


def test_dbt_build_runs_every_model_and_test_green(built: Built) -> None:
    results = built.project.results("run_results.json")["results"]
    kinds: dict[str, int] = defaultdict(int)
    for r in results:
        assert r["status"] in ("success", "pass"), r
        kinds[r["unique_id"].split(".")[0]] += 1
    manifest = built.project.results("manifest.json")
    models = {n["name"] for n in manifest["nodes"].values()
              if n["resource_type"] == "model" and n["package_name"] == "syncd_kantata"}
    assert models == {"stg_kantata__time_entries", "stg_kantata__time_entries_as_of",
                      "stg_kantata__time_entry_changes", "stg_kantata__projects",
                      "stg_kantata__people", "kantata_hours_by_project_person_month"}
    assert kinds["model"] == len(models)
    assert kinds["test"] >= 60  # the source tests of sources.yml and the models' tests
    for step, out in built.outputs.items():
        assert "deprecat" not in out.lower(), f"dbt {step} warns of a deprecation:\n{out}"


def test_source_freshness_passes_on_last_pull_at(built: Built) -> None:
    sources = built.project.results("sources.json")["results"]
    assert [(s["unique_id"], s["status"]) for s in sources] == [
        ("source.syncd_kantata.syncd.freshness", "pass")]
    crit = sources[0]["criteria"]
    assert crit["warn_after"] == {"count": 10, "period": "minute"}
    assert crit["error_after"] == {"count": 15, "period": "minute"}


async def test_the_mart_adds_up_to_kantata_time_entries(built: Built) -> None:
    """Every (project, person, month, currency) row of the mart against sums computed here,
    exactly (fractions), from the live rows of kantata.time_entries."""
    conn = await asyncpg.connect(built.mirror.dsn)
    try:
        raw = await conn.fetch(
            """SELECT workspace_id, user_id, date_trunc('month', date_performed)::date AS m,
                      currency, time_in_minutes, billable, rate_in_cents, currency_base_unit
               FROM kantata.time_entries WHERE deleted_at IS NULL""")
        mart = await conn.fetch("SELECT * FROM analytics.kantata_hours_by_project_person_month")
    finally:
        await conn.close()
    expect: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, Fraction(0)])
    for r in raw:
        agg = expect[(r["workspace_id"], r["user_id"], r["m"], r["currency"])]
        agg[0] += 1
        agg[1] += r["time_in_minutes"]
        if r["billable"]:
            agg[2] += Fraction(r["time_in_minutes"] * r["rate_in_cents"],
                               60 * r["currency_base_unit"])
    got = {(r["workspace_id"], r["user_id"], r["month"], r["currency"]): r for r in mart}
    assert set(got) == set(expect)
    assert len({k[3] for k in got}) >= 3  # several currencies, never added together
    for key, (n, minutes, amount) in expect.items():
        row = got[key]
        assert (row["entries"], row["minutes"]) == (n, minutes), key
        assert Fraction(row["hours"]).limit_denominator(60) == Fraction(minutes, 60)
        assert abs(Fraction(row["billable_amount"]) - amount) < Fraction(1, 10**9), key
    deleted, created = len(built.mirror.deleted), 5
    assert sum(n for n, _, _ in expect.values()) == len(raw) == ENTRIES - deleted + created


async def test_the_as_of_model_shows_the_entries_as_they_were(built: Built) -> None:
    m = built.mirror
    conn = await asyncpg.connect(m.dsn)
    try:
        then = {(r["time_entry_id"], r["time_in_minutes"]) for r in await conn.fetch(
            "SELECT time_entry_id, time_in_minutes, as_of "
            "FROM analytics.stg_kantata__time_entries_as_of")}
        as_of = await conn.fetchval(
            "SELECT DISTINCT as_of FROM analytics.stg_kantata__time_entries_as_of")
        now_live = await conn.fetchval(
            "SELECT count(*) FROM analytics.stg_kantata__time_entries")
        changes = dict(await conn.fetch(
            "SELECT change, count(*) FROM analytics.stg_kantata__time_entry_changes "
            "GROUP BY 1"))
    finally:
        await conn.close()
    assert as_of == m.as_of
    assert then == m.live_at  # the deleted and edited entries as they were, not the 5 new
    assert now_live == len(m.live_at) - len(m.deleted) + 5
    assert changes["edited"] == len(m.edited) and changes["deleted"] == len(m.deleted)
    assert changes["first_seen"] == len(m.live_at) + 5


async def test_an_older_syncd_schema_is_refused_with_a_clear_message(
        built: Built, pg_server_dsn: str) -> None:
    """A database one migration short of what the package needs: dbt build stops in the
    on-run-start check, before any model, saying which version it needs and what to do; a
    login that cannot read syncd.schema_migrations (a syncd_bi member) gets the missing
    columns instead."""
    name = f"syncd_old_{uuid.uuid4().hex[:10]}"
    role = f"dbt_bi_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    old = _with_db(pg_server_dsn, name)
    try:
        conn = await asyncpg.connect(old)
        try:
            await migrate.apply(conn, migrate.discover()[:REQUIRED - 1])
            await admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE syncd_bi')
        finally:
            await conn.close()
        bi = urlsplit(old)._replace(netloc=f"{role}@{urlsplit(old).hostname}:"
                                           f"{urlsplit(old).port}").geturl()
        project = Project(built.project.path, built.project.dbt,
                          {"mirror": built.mirror.dsn, "old": old, "old_bi": bi})
        project.write()
        proc = project.run("build", "--target", "old")
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert (f"syncd_kantata needs the syncd schema at version {REQUIRED} or later"
                in out), out
        assert f"is at version {REQUIRED - 1}" in out and "syncd migrate" in out
        assert "OK created" not in out  # stopped before any model

        proc = project.run("source", "freshness", "--target", "old_bi")
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "kantata.time_entries.learned_via" in out and "syncd migrate" in out, out
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
        Project(built.project.path, built.project.dbt, {"mirror": built.mirror.dsn}).write()
