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
import re
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


#: read at import, before the suite's autouse fixture scrubs SYNCD_* variables from each test
DBT_REQUIRED = dbt_required()


@pytest.fixture(scope="module")
def dbt_bin() -> Path:
    if not os.access(DBT, os.X_OK):
        msg = (f"dbt is not installed at {DBT.relative_to(ROOT)}: tests/run installs it "
               "(tests/dbt/requirements.txt)")
        if DBT_REQUIRED:
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
            sim.create_entry({"time_in_minutes": 30 + n, "updated_at": later,
                              "created_at": later})
        await pull.sync_once(deps)
        days = sorted(date.fromisoformat(e["date_performed"]) for e in sim.list_entries())
        await reconcile_job.reconcile_range(deps, days[0], days[-1])
        await pull.sync_once(deps)  # the last pull after the reconciliation: freshness is now
    return Mirror(dsn, as_of, live_at, edited, deleted)


async def _admin(dsn: str, *sqls: str) -> None:
    c = await asyncpg.connect(dsn)
    try:
        for sql in sqls:
            await c.execute(sql)
    finally:
        await c.close()


async def _migrate_to(dsn: str, version: int) -> None:
    c = await asyncpg.connect(dsn)
    try:
        await migrate.apply(c, migrate.discover()[:version])
    finally:
        await c.close()


@dataclass
class Databases:
    """The filled mirror; `old`, migrated one migration short of what the package needs;
    `old_bi`, the same database through a login that is a member of syncd_bi."""

    mirror: Mirror
    old: str
    old_bi: str


@pytest.fixture(scope="module")
def databases(pg_server_dsn: str, template_db: str) -> Iterator[Databases]:
    tag = uuid.uuid4().hex[:10]
    filled, old, role = f"syncd_dbt_{tag}", f"syncd_old_{tag}", f"dbt_bi_{tag}"
    asyncio.run(_admin(pg_server_dsn, f'CREATE DATABASE "{filled}" TEMPLATE "{template_db}"',
                       f'CREATE DATABASE "{old}"'))
    try:
        old_dsn = _with_db(pg_server_dsn, old)
        asyncio.run(_migrate_to(old_dsn, REQUIRED - 1))
        # syncd_bi exists once any database of this server is migrated (0003)
        asyncio.run(_admin(pg_server_dsn, f'CREATE ROLE "{role}" LOGIN IN ROLE syncd_bi'))
        u = urlsplit(old_dsn)
        bi_dsn = u._replace(netloc=f"{role}@{u.hostname}:{u.port}").geturl()
        yield Databases(asyncio.run(_fill(_with_db(pg_server_dsn, filled))), old_dsn, bi_dsn)
    finally:
        asyncio.run(_admin(pg_server_dsn, f'DROP DATABASE IF EXISTS "{filled}" WITH (FORCE)',
                           f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)',
                           f'DROP ROLE IF EXISTS "{role}"'))


def _profile_target(dsn: str) -> dict[str, Any]:
    u = urlsplit(dsn)
    return {"type": "postgres", "host": u.hostname, "port": u.port or 5432,
            "user": u.username or "postgres", "password": u.password or "",
            "dbname": u.path.lstrip("/"), "schema": "analytics", "threads": 2}


def _write_project(path: Path, packages: dict[str, Any], targets: dict[str, str]) -> Path:
    """A dbt project as a user would have it: dbt_project.yml, packages.yml, profiles.yml
    with one target per database (the first is the default)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dbt_project.yml").write_text(yaml.safe_dump({
        "name": "syncd_kantata_check", "version": "1.0.0", "config-version": 2,
        "profile": "syncd_kantata_check",
        "flags": {"send_anonymous_usage_stats": False, "use_colors": False}}))
    (path / "packages.yml").write_text(yaml.safe_dump(packages))
    (path / "profiles.yml").write_text(yaml.safe_dump({"syncd_kantata_check": {
        "target": next(iter(targets)),
        "outputs": {t: _profile_target(dsn) for t, dsn in targets.items()}}}))
    return path


def _documented_packages_yml() -> dict[str, Any]:
    """The packages.yml block of migrations/README.md's dbt section."""
    text = (ROOT / "migrations" / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "subdirectory:" in b]
    assert len(blocks) == 1, "migrations/README.md should show one packages.yml with subdirectory"
    return yaml.safe_load(blocks[0])


@dataclass
class Step:
    ok: bool
    seconds: float
    output: str


@dataclass
class Runs:
    """Every dbt command of this module, run once, by name; `artifacts` holds the saved
    run_results/manifest/sources JSON files."""

    steps: dict[str, Step]
    artifacts: Path
    mirror: Mirror
    git_project: Path

    def ok(self, name: str) -> Step:
        step = self.steps[name]
        assert step.ok, f"dbt {name} failed:\n{step.output}"
        return step

    def artifact(self, name: str) -> dict[str, Any]:
        return json.loads((self.artifacts / name).read_text())


@pytest.fixture(scope="module")
def runs(dbt_bin: Path, databases: Databases,
         tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """All dbt commands in one process (tests/dbt/dbt_steps.py): in a project that installs
    the package from its folder, deps, build and source freshness on the filled mirror, then
    build on the old database and source freshness on it as a syncd_bi member; and dbt deps
    in a project that installs it from git as migrations/README.md says."""
    base = tmp_path_factory.mktemp("dbt")
    main = _write_project(base / "project", {"packages": [{"local": str(PACKAGE)}]},
                          {"mirror": databases.mirror.dsn, "old": databases.old,
                           "old_bi": databases.old_bi})
    steps: list[dict[str, Any]] = []
    at = ["--project-dir", str(main), "--profiles-dir", str(main)]
    as_of = json.dumps({"syncd_kantata_as_of": databases.mirror.as_of.isoformat()})
    target = main / "target"
    steps += [
        {"name": "deps", "args": ["deps", *at]},
        {"name": "build", "args": ["build", "--vars", as_of, *at],
         "save": {str(target / "run_results.json"): str(base / "build.json"),
                  str(target / "manifest.json"): str(base / "manifest.json")}},
        {"name": "source freshness", "args": ["source", "freshness", *at],
         "save": {str(target / "sources.json"): str(base / "sources.json")}},
        {"name": "as_of without offset", "args": [
            "compile", "--select", "stg_kantata__time_entries_as_of",
            "--vars", json.dumps({"syncd_kantata_as_of": "2026-11-01"}), *at]},
        {"name": "build old", "args": ["build", "--target", "old", *at]},
        {"name": "source freshness old_bi",
         "args": ["source", "freshness", "--target", "old_bi", *at]},
    ]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    git_project = base / "git-project"
    if head.returncode == 0:
        doc = _documented_packages_yml()
        doc["packages"][0].update(git=f"file://{ROOT}", revision=head.stdout.strip())
        _write_project(git_project, doc, {"mirror": databases.mirror.dsn})
        steps.append({"name": "deps git", "args": [
            "deps", "--project-dir", str(git_project), "--profiles-dir", str(git_project)]})
    (base / "steps.json").write_text(json.dumps(steps))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_", "PG"))}
    env.update(DBT_SEND_ANONYMOUS_USAGE_STATS="false", DO_NOT_TRACK="1",
               DBT_VERSION_CHECK="false")
    t0 = time.monotonic()
    proc = subprocess.run([str(dbt_bin.parent / "python"), str(Path(__file__).with_name(
        "dbt_steps.py")), str(base / "steps.json")], cwd=main, env=env, capture_output=True,
        text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found: dict[str, Step] = {}
    for chunk in proc.stdout.split("@@step ")[1:]:
        name, _, rest = chunk.partition("\n")
        body, _, done = rest.rpartition("@@done ")
        _, status, seconds = done.strip().rsplit(" ", 2)
        found[name] = Step(status == "0", float(seconds), body)
    assert [s["name"] for s in steps] == list(found), proc.stdout[-3000:] + proc.stderr
    print(f"dbt steps (s): { {n: s.seconds for n, s in found.items()} }, "
          f"process {time.monotonic() - t0:.1f}")
    return Runs(found, base, databases.mirror, git_project)


def test_dbt_build_runs_every_model_and_test_green(runs: Runs) -> None:
    for name in ("deps", "build", "source freshness"):
        out = runs.ok(name).output
        assert "deprecat" not in out.lower(), f"dbt {name} warns of a deprecation:\n{out}"
    results = runs.artifact("build.json")["results"]
    kinds: dict[str, int] = defaultdict(int)
    for r in results:
        assert r["status"] in ("success", "pass"), r
        kinds[r["unique_id"].split(".")[0]] += 1
    manifest = runs.artifact("manifest.json")
    models = {n["name"] for n in manifest["nodes"].values()
              if n["resource_type"] == "model" and n["package_name"] == "syncd_kantata"}
    assert models == {"stg_kantata__time_entries", "stg_kantata__time_entries_as_of",
                      "stg_kantata__time_entry_changes", "stg_kantata__projects",
                      "stg_kantata__people", "kantata_hours_by_project_person_month"}
    assert kinds["model"] == len(models)
    assert kinds["test"] >= 80  # the source tests of sources.yml and the models' tests


def test_an_as_of_without_its_offset_is_refused_by_name(runs: Runs) -> None:
    """A trial: '2026-11-01' was taken, as midnight of the session's time zone."""
    step = runs.steps["as_of without offset"]
    assert not step.ok
    assert "var syncd_kantata_as_of must be an ISO 8601 instant with its offset" in step.output
    assert "not '2026-11-01'" in step.output


def test_source_freshness_passes_on_last_pull_at(runs: Runs) -> None:
    sources = runs.artifact("sources.json")["results"]
    assert [(s["unique_id"], s["status"]) for s in sources] == [
        ("source.syncd_kantata.syncd.freshness", "pass")]
    crit = sources[0]["criteria"]
    # 2 and SYNCD_READY_MAX_PULL_AGE_INTERVALS pull intervals at the defaults (2 and 3 minutes);
    # tests/unit/test_docs.py derives them from Settings and checks the files and the docs.
    assert crit["warn_after"] == {"count": 2, "period": "minute"}
    assert crit["error_after"] == {"count": 3, "period": "minute"}


async def test_the_mart_adds_up_to_kantata_time_entries(runs: Runs) -> None:
    """Every (project, person, month, currency) row of the mart against sums computed here,
    exactly (fractions), from the live rows of kantata.time_entries."""
    runs.ok("build")
    conn = await asyncpg.connect(runs.mirror.dsn)
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
    deleted, created = len(runs.mirror.deleted), 5
    assert sum(n for n, _, _ in expect.values()) == len(raw) == ENTRIES - deleted + created


async def test_the_as_of_model_shows_the_entries_as_they_were(runs: Runs) -> None:
    runs.ok("build")
    m = runs.mirror
    conn = await asyncpg.connect(m.dsn)
    try:
        then = {(r["time_entry_id"], r["time_in_minutes"]) for r in await conn.fetch(
            "SELECT time_entry_id, time_in_minutes FROM analytics.stg_kantata__time_entries_as_of")}
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


def test_an_older_syncd_schema_is_refused_with_a_clear_message(runs: Runs) -> None:
    """A database one migration short of what the package needs: dbt build stops in the
    on-run-start check, before any model, saying which version it needs and what to do; a
    syncd_bi member, who cannot read syncd.schema_migrations, gets the missing columns."""
    old = runs.steps["build old"]
    assert not old.ok
    assert f"syncd_kantata needs the syncd schema at version {REQUIRED} or later" in old.output
    assert f"is at version {REQUIRED - 1}" in old.output and "syncd migrate" in old.output
    assert "OK created" not in old.output  # stopped before any model
    bi = runs.steps["source freshness old_bi"]
    assert not bi.ok
    # what migration REQUIRED adds: the as-of function's exact_version column
    assert "kantata.time_entries_as_of().exact_version" in bi.output \
        and "syncd migrate" in bi.output, bi.output


def test_the_documented_git_install_with_subdirectory_works(runs: Runs) -> None:
    """`dbt deps` with the packages.yml of migrations/README.md, pointed at this repository's
    commit, installs the package: the subdirectory is right."""
    if "deps git" not in runs.steps:
        if DBT_REQUIRED:
            pytest.fail("not a git checkout: the documented git install was not checked")
        pytest.skip("not a git checkout")
    assert _documented_packages_yml()["packages"][0]["subdirectory"] == \
        str(PACKAGE.relative_to(ROOT))
    runs.ok("deps git")
    installed = yaml.safe_load(
        (runs.git_project / "dbt_packages" / "syncd_kantata" / "dbt_project.yml").read_text())
    assert installed["name"] == "syncd_kantata"
