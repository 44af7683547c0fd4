"""Security checks of issue #8: the token stays secret on every error path (CLI stderr, logs,
run history, /status, /metrics), TLS is verified unless explicitly disabled for a loopback
simulator, all SQL is parameterised, the BI role cannot write, and syncd runs as a database
role that owns only its own schemas."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from syncd import pull
from syncd.app import open_deps
from syncd.errors import RetriableAPIError
from syncd.pgserver import free_port
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator
from tests.chaos.fakes import Tamper, serve_tampered
from tests.oracle import mirror_diff
from syncd.simulator.app import build_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sec-TOKEN-5f4dcc3b5aa765d61d8327deb882cf99"
DB_PASSWORD = "pw-S3cr3t-never-shown"


def env_for(db_dsn: str, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update(SYNCD_DATABASE_URL=db_dsn, SYNCD_KANTATA_BASE_URL=url, SYNCD_KANTATA_TOKEN=TOKEN,
               SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK="true", SYNCD_BACKFILL_START="2024-01-01",
               SYNCD_BACKFILL_WINDOW_MONTHS="12", SYNCD_MAX_RETRIES="1",
               SYNCD_BACKOFF_BASE="0.01", SYNCD_BACKOFF_CAP="0.05", SYNCD_LOG_FORMAT="json",
               SYNCD_LOG_LEVEL="DEBUG")
    env.update(extra)
    return env


async def syncd(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `python -m syncd ARGS`; return (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def assert_no_secret(*texts: str) -> None:
    for t in texts:
        assert TOKEN not in t, t[-2000:]
        assert DB_PASSWORD not in t, t[-2000:]
        # nor a recognisable part of it (e.g. a truncated echo)
        assert TOKEN[4:24] not in t, t[-2000:]


def echo_auth_401(doc: dict[str, Any], req: web.Request) -> web.Response:
    """A Kantata (or a proxy in front of it) that quotes the credentials in its error."""
    body = {"errors": [{"type": "oauth", "message": "Invalid OAuth 2 Request: "
                        f"{req.headers.get('Authorization')} was revoked"}]}
    return web.Response(status=401, body=orjson.dumps(body), content_type="application/json")


# --------------------------------------------------------------------------- token on error paths
async def test_token_absent_from_cli_errors_and_run_history_on_401(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    sim = Simulator(SimConfig(token="a-different-token", entries=20, seed=1, lock_date=None))
    async with running_simulator(sim) as url:
        code, out = await syncd(env_for(db_dsn, url), "sync")
    assert code == 1 and "AuthError: HTTP 401: Invalid OAuth 2 Request" in out
    errors = [r["error"] for r in await conn.fetch("SELECT error FROM syncd.sync_runs")]
    assert errors and all("AuthError" in e for e in errors)
    assert_no_secret(out, *errors)


async def test_token_echoed_by_kantata_is_redacted_everywhere(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    sim = Simulator(SimConfig(token=TOKEN, entries=20, seed=1, lock_date=None))
    tamper = Tamper()
    tamper.page(echo_auth_401)
    async with serve_tampered(sim, tamper) as url:
        code, out = await syncd(env_for(db_dsn, url), "sync")
    assert code == 1 and "was revoked" in out and "[redacted]" in out
    errors = [r["error"] for r in await conn.fetch("SELECT error FROM syncd.sync_runs")]
    assert errors and all("was revoked" in e for e in errors)
    assert_no_secret(out, *errors)


async def test_token_absent_when_requests_time_out(db_dsn: str,
                                                   conn: asyncpg.Connection) -> None:
    sim = Simulator(SimConfig(token=TOKEN, entries=20, seed=1, lock_date=None,
                              hang_seconds=5))
    sim.set_faults({"timeout_rate": 1.0})
    async with running_simulator(sim) as url:
        code, out = await syncd(env_for(db_dsn, url, SYNCD_REQUEST_TIMEOUT="0.3",
                                        SYNCD_MAX_RETRIES="0"), "sync")
    assert code == 1 and "timed out" in out
    assert_no_secret(out, *[r["error"] or "" for r in await conn.fetch(
        "SELECT error FROM syncd.sync_runs")])


async def test_token_and_password_absent_when_nothing_answers(db_dsn: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1"  # nobody listens
    code, out = await syncd(env_for(db_dsn, url), "sync")
    assert code == 1 and "RetriableAPIError" in out
    assert_no_secret(out)
    dead_db = f"postgresql://syncd:{DB_PASSWORD}@127.0.0.1:{free_port()}/syncd"
    for cmd in ("sync", "status", "push", "verify"):
        code, out = await syncd(env_for(dead_db, url), cmd)
        assert code in (1, 2), (cmd, out)
        assert "Traceback" not in out, out
        assert_no_secret(out)


async def test_daemon_keeps_the_token_out_of_status_metrics_and_logs(
        db_dsn: str, conn: asyncpg.Connection) -> None:
    """A daemon whose token Kantata refuses, quoting it back: /status, /metrics, the run
    history and every log line stay clean."""
    from tests.ops.conftest import DaemonProc, daemon_env

    sim = Simulator(SimConfig(token=TOKEN, entries=40, seed=3, lock_date=None))
    tamper = Tamper()
    async with serve_tampered(sim, tamper) as url:
        env = daemon_env(db_dsn, url, free_port(), SYNCD_KANTATA_TOKEN=TOKEN,
                         SYNCD_LOG_LEVEL="DEBUG")
        d = DaemonProc(env)
        await d.start()
        try:
            await d.wait_event("job_finished", job="pull", status="ok", timeout=30)
            tamper.page(echo_auth_401)
            await d.wait_event("job_finished", job="pull", status="failed", timeout=30)
            await d.wait_http("/healthz", 200)
            _, status_page = await d.get("/status")
            _, metrics = await d.get("/metrics")
            assert "was revoked" in status_page  # the error is shown, redacted
            errors = [r["error"] or "" for r in await conn.fetch(
                "SELECT error FROM syncd.sync_runs")]
            assert any("was revoked" in e for e in errors)
            d.send()
            assert await d.wait_exit(timeout=20) == 0
            assert_no_secret(status_page, metrics, d.output, *errors)
        finally:
            await d.close()


# --------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
async def https_sim(self_signed: tuple[Path, Path]) -> AsyncIterator[tuple[str, Simulator]]:
    sim = Simulator(SimConfig(token=TOKEN, entries=30, seed=2, lock_date=None))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*self_signed)
    runner = web.AppRunner(build_app(sim), handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
    await site.start()
    try:
        yield f"https://127.0.0.1:{port}/api/v1", sim
    finally:
        await runner.cleanup()


def _settings(db_dsn: str, url: str, **over: Any) -> Any:
    from syncd.settings import Settings

    base: dict[str, Any] = dict(database_url=db_dsn, kantata_base_url=url, kantata_token=TOKEN,
                                max_retries=0, backfill_start="2024-01-01",
                                backfill_window_months=12)
    base.update(over)
    return Settings(**base)


async def test_tls_is_verified_by_default(db_dsn: str, https_sim: tuple[str, Simulator],
                                          conn: asyncpg.Connection) -> None:
    url, sim = https_sim
    async with open_deps(_settings(db_dsn, url)) as deps:
        with pytest.raises(RetriableAPIError, match="Certificate"):
            await deps.client.list_page({"per_page": "1"})
        with pytest.raises(RetriableAPIError, match="Certificate"):
            await pull.sync_once(deps)
    errors = [r["error"] for r in await conn.fetch("SELECT error FROM syncd.sync_runs")]
    assert errors and all("ClientConnectorCertificateError" in e for e in errors)
    assert sim.requests == []  # no request ever reached the server
    assert await conn.fetchval("SELECT count(*) FROM kantata.time_entries") == 0


async def test_tls_verification_off_only_for_a_loopback_simulator(
        db_dsn: str, https_sim: tuple[str, Simulator], conn: asyncpg.Connection) -> None:
    from pydantic import ValidationError

    url, sim = https_sim
    with pytest.raises(ValidationError, match="TLS_VERIFY=false to loopback host '127.0.0.1' "
                       "also needs SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK=true"):
        _settings(db_dsn, url, kantata_tls_verify=False)  # no explicit opt-in
    with pytest.raises(ValidationError, match="only allowed for a simulator on a loopback "
                       r"address .* host 'kantata.example.com' is not one"):
        _settings(db_dsn, "https://kantata.example.com/api/v1", kantata_tls_verify=False,
                  kantata_allow_insecure_loopback=True)
    async with open_deps(_settings(db_dsn, url, kantata_tls_verify=False,
                                   kantata_allow_insecure_loopback=True)) as deps:
        stats = await pull.sync_once(deps)
    assert stats.errors == []
    assert await mirror_diff(conn, sim.list_entries()) == []


# --------------------------------------------------------------------------- SQL
DB_CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor",
            "copy_from_query"}
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|REVOKE|"
                       r"TRUNCATE|LOCK|LISTEN|NOTIFY|UNLISTEN|SET|COPY|WITH|DO)\b")
#: Interpolations allowed in SQL text, per file: identifiers and fragments from constants,
#: never a value. A new entry here needs a reason.
ALLOWED: dict[str, dict[str, str]] = {
    "syncd/store.py": {
        "', '.join(ENTRY_COLUMNS)": "column names from the ENTRY_COLUMNS constant",
        "ENTRY_SET_LIST": "SET list built from the ENTRY_COLUMNS constant",
        "MERGED_RAW": "a constant jsonb expression",
        "PAGE_BODY_VALUES": "casts of the _PAGE_TYPES constant's columns",
        "ENTRY_ON_CONFLICT": "the upsert's conflict clause, built from the constants above",
        "WINDOW_RUN_IS_LIVE": "a constant EXISTS clause (syncd.run_is_live of the row's run)",
        "_PAGE_CONTEXT_4": "a constant CTE (set_config of parameters $2, $3, $4)",
        "_PAGE_CONTEXT_10": "a constant CTE (set_config of parameters $2, $3, $10)",
        "_PAGE_STORED": "a constant CTE built from the constants above",
        "_PAGE_CHECKPOINT": "a constant CTE (parameters $4..$9)",
        "table": "table name from the SIDE_SQL constant", "label": "column from SIDE_SQL",
        "extra_col": "literal column fragment", "extra_val": "literal fragment",
        "extra_set": "literal SET fragment",
    },
    "syncd/outbox.py": {"LIST_COLUMNS": "column list constant"},
    "syncd/commands/demo.py": {"DEMO_DB": "database name constant"},
}
#: DB calls whose SQL is not a literal: (file, source of the argument) -> reason.
ALLOWED_DYNAMIC = {("syncd/migrate.py", "mig.sql"): "migration files shipped with syncd, "
                   "checksummed",
                   ("syncd/mirror_indexes.py", "rebuild_statement(definition)"):
                   "an index definition pg_get_indexdef wrote into syncd.deferred_indexes "
                   "(only syncd's role may write it), checked to be one CREATE INDEX on "
                   "kantata.time_entries and run as one prepared statement"}


def sql_problems(source: str, filename: str) -> list[str]:
    """Every place in `source` where SQL text could carry an interpolated value."""
    problems: list[str] = []
    allowed = ALLOWED.get(filename, {})
    tree = ast.parse(source)

    def check_fstring(node: ast.JoinedStr) -> None:
        for v in node.values:
            if isinstance(v, ast.FormattedValue):
                expr = ast.unparse(v.value)
                if expr not in allowed:
                    problems.append(f"{filename}:{node.lineno}: interpolates {expr!r} into SQL")

    def is_sql_text(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return bool(SQL_START.search(node.value))
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            return isinstance(first, ast.Constant) and bool(SQL_START.search(str(first.value)))
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and is_sql_text(node):
            check_fstring(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add) and (
                is_sql_text(node.left) or is_sql_text(node.right)):
            problems.append(f"{filename}:{node.lineno}: SQL built with "
                            f"{type(node.op).__name__}: {ast.unparse(node)[:60]!r}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "format" and is_sql_text(node.func.value)):
            problems.append(f"{filename}:{node.lineno}: SQL built with .format()")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in DB_CALLS and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr):
                check_fstring(arg)
            elif not (isinstance(arg, ast.Constant)
                      or (isinstance(arg, ast.Name) and arg.id.isupper())
                      or (isinstance(arg, ast.Attribute) and arg.attr.isupper())
                      or (filename, ast.unparse(arg)) in ALLOWED_DYNAMIC):
                problems.append(f"{filename}:{node.lineno}: {node.func.attr}() with SQL from "
                                f"{ast.unparse(arg)[:60]!r}")
    return problems


def test_all_sql_is_parameterised() -> None:
    files = [p for p in (ROOT / "syncd").rglob("*.py") if "simulator" not in p.parts]
    assert len(files) > 20
    problems = [x for p in files
                for x in sql_problems(p.read_text(), str(p.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize("snippet", [
    'async def f(conn, eid):\n    await conn.fetch(f"SELECT * FROM t WHERE id = {eid}")\n',
    'Q = f"""\nDELETE FROM syncd.outbox WHERE id = {row_id}\n"""\n',
    'async def f(conn, s):\n    await conn.execute("UPDATE t SET notes = \'%s\'" % s)\n',
    'async def f(conn, s):\n    await conn.execute("SELECT 1 WHERE x = " + s)\n',
    'async def f(conn, s):\n    await conn.execute("DELETE FROM t WHERE a = {}".format(s))\n',
    'async def f(conn, sql):\n    await conn.fetchval(sql)\n',
    'async def f(conn, label):\n    await conn.fetch(f"SELECT {label} FROM x")\n',
])
def test_the_sql_check_catches_interpolated_values(snippet: str) -> None:
    assert sql_problems(snippet, "syncd/example.py")


# --------------------------------------------------------------------------- database roles
def _as(dsn: str, user: str, password: str | None = None) -> str:
    scheme, _, rest = dsn.partition("://")
    _, _, hostpart = rest.partition("@")
    cred = f"{user}:{password}" if password else user
    return f"{scheme}://{cred}@{hostpart}"


async def test_bi_role_cannot_create_or_change_objects(conn: asyncpg.Connection,
                                                       db_dsn: str) -> None:
    """Complements tests/integration/test_freshness.py (reads yes, DML no): no DDL, no
    writes through the views, no functions of syncd's."""
    name = f"bi_{uuid.uuid4().hex[:10]}"
    await conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE syncd_bi")
    bi = await asyncpg.connect(_as(db_dsn, name))
    try:
        for sql in ("CREATE TABLE kantata.mine (id int)", "CREATE TABLE syncd.mine (id int)",
                    "CREATE VIEW kantata.v AS SELECT 1",
                    "ALTER TABLE kantata.time_entries ADD COLUMN x int",
                    "DROP VIEW syncd.freshness",
                    "UPDATE syncd.freshness SET outbox_pending = 0",
                    "SELECT syncd.outbox_notify()",
                    "SELECT * FROM syncd.rejected_records",
                    "SELECT * FROM syncd.watermarks",
                    "COMMENT ON TABLE kantata.time_entries IS 'x'"):
            with pytest.raises((asyncpg.InsufficientPrivilegeError,
                                asyncpg.ObjectNotInPrerequisiteStateError,
                                asyncpg.WrongObjectTypeError,
                                asyncpg.FeatureNotSupportedError)):
                await bi.execute(sql)
                pytest.fail(f"syncd_bi could run: {sql}")
        # a GRANT without grant option is only a warning in PostgreSQL: it must change nothing
        await bi.execute("GRANT SELECT ON kantata.time_entries TO PUBLIC")
        assert await conn.fetchval(
            """SELECT count(*) FROM information_schema.role_table_grants
               WHERE grantee = 'PUBLIC' AND table_schema IN ('kantata', 'syncd')""") == 0
    finally:
        await bi.close()
        await conn.execute(f"DROP ROLE {name}")


@pytest.fixture
async def least_privilege_db(pg_server_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """An empty database owned by postgres and a LOGIN role (no superuser, no CREATEROLE,
    no CREATEDB) with only CONNECT and CREATE on it. Yields (dsn as that role, role)."""
    suffix = uuid.uuid4().hex[:10]
    role, db = f"syncd_app_{suffix}", f"syncd_lp_{suffix}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB "
                            f"PASSWORD '{DB_PASSWORD}'")
        await admin.execute(f'CREATE DATABASE "{db}"')
        await admin.execute(f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC')
        await admin.execute(f'GRANT CONNECT, CREATE ON DATABASE "{db}" TO {role}')
        base, _, _ = pg_server_dsn.rpartition("/")
        yield _as(f"{base}/{db}", role, DB_PASSWORD), role
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_daemon_works_as_a_role_owning_only_its_schemas(
        least_privilege_db: tuple[str, str], pg_server_dsn: str) -> None:
    from tests.integration.outbox_helpers import new_entry
    from tests.ops.conftest import DaemonProc, daemon_env

    dsn, role = least_privilege_db
    sim = Simulator(SimConfig(token=TOKEN, entries=150, seed=4, lock_date=None))
    async with running_simulator(sim) as url:
        env = env_for(dsn, url)
        code, out = await syncd(env, "migrate")
        assert code == 0, out
        for cmd in ("sync", "push", "reconcile", "verify", "status"):
            code, out = await syncd(env, cmd)
            assert code == 0, (cmd, out)
        c = await asyncpg.connect(dsn)
        try:
            owners = {r["nspname"]: r["owner"] for r in await c.fetch(
                """SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace
                   WHERE nspname IN ('kantata', 'syncd')""")}
            assert owners == {"kantata": role, "syncd": role}
            assert not await c.fetchval("SELECT rolsuper OR rolcreaterole OR rolcreatedb "
                                        "FROM pg_roles WHERE rolname = current_user")
            assert await mirror_diff(c, sim.list_entries()) == []
            # the daemon: pulls, pushes a create from the outbox, shuts down cleanly
            d = DaemonProc(daemon_env(dsn, url, free_port(), SYNCD_KANTATA_TOKEN=TOKEN))
            await d.start()
            try:
                await d.wait_event("daemon_ready", timeout=30)
                await c.execute("INSERT INTO syncd.outbox (op, payload) VALUES "
                                "('create', $1::jsonb)",
                                orjson.dumps(new_entry(sim, 1, notes="least privilege")).decode())
                await d.wait_event("job_finished", job="push", timeout=30,
                                   where=lambda e: e.get("status") == "ok")
                deadline = asyncio.get_running_loop().time() + 20
                while await c.fetchval("SELECT status FROM syncd.outbox") != "done":
                    assert asyncio.get_running_loop().time() < deadline, d.output[-2000:]
                    await asyncio.sleep(0.2)
                d.send()
                assert await d.wait_exit(timeout=20) == 0
                assert "InsufficientPrivilege" not in d.output
                assert_no_secret(d.output)
            finally:
                await d.close()
            assert [e["notes"] for e in sim.list_entries()].count("least privilege") == 1
        finally:
            await c.close()
