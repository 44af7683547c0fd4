"""Shared fixtures: a real PostgreSQL (from SYNCD_TEST_DSN, or a throwaway cluster started here),
a migrated template database cloned per test, and a scrubbed SYNCD_* environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from syncd import migrate
from syncd.pgserver import TempPostgres

KEEP_ENV = {"SYNCD_TEST_DSN", "SYNCD_PG_DIR"}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """In-process `cli.main` calls configure logging for the whole process (a level filter,
    handlers on pytest's captured stderr); undo that after every test so later tests neither
    lose their INFO events nor log into a closed stream."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.fixture(autouse=True)
def _scrub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SYNCD_") and key not in KEEP_ENV:
            monkeypatch.delenv(key)


def _with_db(dsn: str, db: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """DSN of a server we may create databases on (superuser)."""
    dsn = os.environ.get("SYNCD_TEST_DSN")
    if dsn:
        yield dsn
        return
    if os.environ.get("CI"):
        pytest.fail("CI must provide SYNCD_TEST_DSN (tests/run starts PostgreSQL)")
    d = Path(tempfile.mkdtemp(prefix="syncd-pytest-"))
    d.chmod(0o755)
    pg = TempPostgres(d / "pg").start()
    try:
        yield pg.dsn
    finally:
        pg.stop(remove=True)


@pytest.fixture(scope="session")
def template_db(pg_server_dsn: str) -> str:
    """Name of a database with every migration applied, used as a template per test."""
    name = f"syncd_tpl_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(_with_db(pg_server_dsn, name))
        try:
            await migrate.apply(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return name


@contextlib.asynccontextmanager
async def scratch_database(pg_server_dsn: str, prefix: str,
                           template: str | None = None) -> AsyncIterator[str]:
    """A new database (a copy of `template`, else empty) for the block; dropped after it.
    Yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await admin.close()
    try:
        yield _with_db(pg_server_dsn, name)
    finally:
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def db_dsn(pg_server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test; dropped afterwards."""
    async with scratch_database(pg_server_dsn, "syncd_t", template_db) as dsn:
        yield dsn


@pytest.fixture
async def empty_db_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh database with no migrations applied."""
    async with scratch_database(pg_server_dsn, "syncd_e") as dsn:
        yield dsn


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` (each has a smaller always-run variant) run only when asked:
    `-m slow` or SYNCD_RUN_SLOW=1."""
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("SYNCD_RUN_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or SYNCD_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
