"""The dbt package's sources.yml cannot drift from the migrations (issue #25).

Two independent checks against a database migrated with every migration in `migrations/`:
the committed `deploy/dbt/syncd_kantata/models/sources.yml` is exactly what
`deploy/dbt/generate_sources.py` makes from it (names, types, COMMENTs, the functions' result
columns), and the columns sources.yml lists are exactly those `information_schema.columns`
shows for schema kantata and the two BI views of schema syncd. Each is shown to fail when a
migration adds or drops a column. No dbt needed: these run with syncd's own venv.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
import yaml

from syncd import migrate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DBT_DIR = ROOT / "deploy" / "dbt"
SOURCES = DBT_DIR / "syncd_kantata" / "models" / "sources.yml"
PROJECT = DBT_DIR / "syncd_kantata" / "dbt_project.yml"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_sources",
                                                  DBT_DIR / "generate_sources.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_sources"] = mod
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()


def source_columns(text: str) -> set[tuple[str, str, str]]:
    """(schema, relation, column) for every column a sources.yml text lists; the schema is the
    source's name (the default of its schema var)."""
    doc = yaml.safe_load(text)
    return {(s["name"], t["name"], c["name"])
            for s in doc["sources"] for t in s["tables"] for c in t.get("columns", [])}


async def catalog_columns(conn: asyncpg.Connection) -> set[tuple[str, str, str]]:
    rows = await conn.fetch(
        """SELECT table_schema, table_name, column_name FROM information_schema.columns
           WHERE table_schema = 'kantata'
              OR (table_schema = 'syncd' AND table_name IN ('freshness', 'window_freshness'))""")
    return {tuple(r) for r in rows}  # type: ignore[misc]


def drift(generated: str) -> str:
    """'' when the committed sources.yml equals `generated`, else a message with the diff."""
    import difflib

    committed = SOURCES.read_text()
    if committed == generated:
        return ""
    diff = "".join(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                        "sources.yml (committed)", "generated", n=1))
    return ("sources.yml differs from the migrations; run "
            "`.venv/bin/python deploy/dbt/generate_sources.py` and review:\n" + diff)


async def test_sources_yml_is_the_one_generated_from_the_migrations(db_dsn: str) -> None:
    assert drift(await gen.generate(db_dsn)) == ""


async def test_sources_yml_lists_exactly_the_columns_of_the_migrated_database(
        conn: asyncpg.Connection) -> None:
    listed = source_columns(SOURCES.read_text())
    actual = await catalog_columns(conn)
    assert sorted(actual - listed) == [] and sorted(listed - actual) == []
    assert len(listed) > 100  # every table and view, not a sample
    kinds = {(s["name"], t["name"]): t["meta"]["relation_kind"]
             for s in yaml.safe_load(SOURCES.read_text())["sources"] for t in s["tables"]}
    types = {(r["table_schema"], r["table_name"]): r["table_type"] for r in await conn.fetch(
        "SELECT table_schema, table_name, table_type FROM information_schema.tables "
        "WHERE table_schema IN ('kantata', 'syncd')")}
    assert {k: ("view" if types[k] == "VIEW" else "table") for k in kinds} == kinds


ALTERATIONS = {
    "a column added to the mirror": (
        "ALTER TABLE kantata.time_entries ADD COLUMN exact_at_t boolean; "
        "COMMENT ON COLUMN kantata.time_entries.exact_at_t IS 'new';",
        "exact_at_t"),
    "a column dropped from a side table": (
        "ALTER TABLE kantata.roles DROP COLUMN name", "name"),
    "a new table": (
        "CREATE TABLE kantata.budgets (id bigint PRIMARY KEY); "
        "COMMENT ON TABLE kantata.budgets IS 'budgets'; "
        "COMMENT ON COLUMN kantata.budgets.id IS 'id';", "budgets"),
}


@pytest.mark.parametrize("change", list(ALTERATIONS))
async def test_a_migration_that_changes_columns_is_caught_both_ways(
        change: str, db_dsn: str, conn: asyncpg.Connection) -> None:
    sql, name = ALTERATIONS[change]
    await conn.execute(sql)
    listed = source_columns(SOURCES.read_text())
    actual = await catalog_columns(conn)
    assert {c[2] if name != "budgets" else c[1] for c in listed ^ actual} == {name}
    try:
        message = drift(await gen.generate(db_dsn))
    except gen.SpecError as exc:  # the spec names the dropped column
        message = str(exc)
    assert name in message


async def test_a_new_column_in_what_time_entries_as_of_returns_is_caught(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """time_entries_as_of is a function, not a table: its result columns are recorded under
    the source's meta, so a flag added to its result (migration 0010's kind of change) is
    drift even when no table or view gains a column."""
    await conn.execute("""
        DROP FUNCTION kantata.time_entries_as_of(timestamptz);
        CREATE FUNCTION kantata.time_entries_as_of(ts timestamptz)
            RETURNS TABLE (id bigint, exact_at_t boolean) LANGUAGE sql STABLE AS
            $$ SELECT id, true FROM kantata.time_entry_versions $$""")
    message = drift(await gen.generate(db_dsn))
    assert "exact_at_t boolean" in message


async def test_a_new_column_of_the_versions_view_is_drift(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    view = await conn.fetchval("SELECT pg_get_viewdef('kantata.time_entry_versions'::regclass)")
    body = view.rstrip().rstrip(";")
    await conn.execute("CREATE OR REPLACE VIEW kantata.time_entry_versions AS "
                       f"SELECT v.*, true AS exact_at_t FROM ({body}) v; "
                       "COMMENT ON COLUMN kantata.time_entry_versions.exact_at_t IS 'new'")
    assert "name: exact_at_t" in drift(await gen.generate(db_dsn))  # the view's columns


async def test_a_new_column_the_as_of_function_returns_is_drift(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """What kantata.time_entries_as_of returns is recorded (meta.syncd_functions): a
    migration that changes it (as 0010 added exact_version) must update the package."""
    await conn.execute(
        "DROP FUNCTION kantata.time_entries_as_of(timestamptz); "
        "CREATE FUNCTION kantata.time_entries_as_of(ts timestamptz) "
        "RETURNS TABLE (id bigint, brand_new boolean) LANGUAGE sql AS 'SELECT 1::bigint, true'")
    assert "- brand_new boolean" in drift(await gen.generate(db_dsn))


def test_the_spec_cannot_name_what_the_database_lacks_or_describe_a_column_twice() -> None:
    catalog = gen.Catalog(
        schema_comments={"kantata": "k", "syncd": "s"},
        relations={"kantata": {"t": gen.Relation("t", "table", "a table", [
                       gen.Column("id", "bigint", "the id"),
                       gen.Column("raw", "jsonb", None)])},
                   "syncd": {}},
        functions={"kantata": []})
    ok: dict[str, Any] = {"sources": {"kantata": {"tables": {"t": {"columns": {
        "raw": {"description": "raw JSON"}}}}}}}
    assert "description: raw JSON" in gen.render(catalog, ok)
    bad = [
        ({"sources": {"kantata": {"tables": {"gone": {}}}}}, "kantata.gone"),
        ({"sources": {"kantata": {"tables": {"t": {"columns": {
            "raw": {"description": "x"}, "gone": {}}}}}}}, "t.gone"),
        ({"sources": {"kantata": {"tables": {"t": {"columns": {
            "raw": {"description": "x"}, "id": {"description": "twice"}}}}}}},
         "has a COMMENT"),
        ({"sources": {"kantata": {"tables": {"t": {}}}}}, "raw has no COMMENT"),
    ]
    for spec, expected in bad:
        with pytest.raises(gen.SpecError, match=expected.replace(".", r"\.")):
            gen.render(catalog, spec)


async def test_the_required_schema_version_has_everything_the_package_reads(
        empty_db_dsn: str) -> None:
    """At exactly the version the package says it needs, every column of sources.yml that
    exists in the latest schema exists already (so the requirement is not too low), and the
    as-of function is there; the requirement is a migration that exists."""
    required = yaml.safe_load(PROJECT.read_text())["vars"]["syncd_kantata_required_schema_version"]
    available = migrate.discover()
    assert 1 <= required <= available[-1].version
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        await migrate.apply(conn, available[:required])
        have = await catalog_columns(conn)
        assert await conn.fetchval(
            "SELECT to_regprocedure('kantata.time_entries_as_of(timestamptz)') IS NOT NULL")
    finally:
        await conn.close()
    assert sorted(source_columns(SOURCES.read_text()) - have) == []
