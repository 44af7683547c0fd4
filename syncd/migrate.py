"""Forward-only SQL migrations: numbered files in `migrations/`, tracked with checksums.

`apply()` takes a transaction-level advisory lock, then applies each pending file in its own
transaction and records it in `syncd.schema_migrations`. A file whose checksum differs from the
one recorded when it was applied is an error (MigrationError); re-running is a no-op.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from syncd import mirror_indexes
from syncd.errors import MigrationError

__all__ = ["Migration", "apply", "check_current", "discover", "pending"]

LOCK_KEY = 0x53594E44  # advisory lock id for migrations ("SYND")
NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_TABLE = """
CREATE SCHEMA IF NOT EXISTS syncd;
CREATE TABLE IF NOT EXISTS syncd.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: `version` from its 4-digit prefix, `name`, `sql`, `sha256` of `sql`."""

    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The shipped migrations: `syncd/_migrations` in a wheel, `migrations/` in a checkout."""
    packaged = resources.files("syncd") / "_migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "migrations"


def discover(directory: Path | None = None) -> list[Migration]:
    """All migrations, by version. Raises MigrationError on a bad name or a gap in numbering."""
    directory = directory or migrations_dir()
    out = []
    for path in sorted(directory.glob("*.sql")):
        m = NAME_RE.match(path.name)
        if not m:
            raise MigrationError(f"migration file {path.name} does not match NNNN_name.sql")
        out.append(Migration(int(m.group(1)), path.name, path.read_text()))
    for expected, mig in enumerate(out, start=1):
        if mig.version != expected:
            raise MigrationError(f"migration numbering has a gap before {mig.name}")
    return out


async def _applied(conn: asyncpg.Connection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('syncd.schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, sha256 FROM syncd.schema_migrations")
    return {r["version"]: r["sha256"] for r in rows}


def _verify(applied: dict[int, str], available: list[Migration]) -> list[Migration]:
    by_version = {m.version: m for m in available}
    for version, sha in applied.items():
        mig = by_version.get(version)
        if mig is None:
            raise MigrationError(f"database has migration {version} which this syncd does not "
                                 "know; it is older than the database (downgrade?)")
        if mig.sha256 != sha:
            raise MigrationError(f"migration {mig.name} was changed after it was applied "
                                 "(checksum differs); restore the original file")
    return [m for m in available if m.version not in applied]


async def pending(conn: asyncpg.Connection, available: list[Migration] | None = None
                  ) -> list[Migration]:
    """Migrations not yet applied. Raises MigrationError if an applied file changed."""
    return _verify(await _applied(conn), available if available is not None else discover())


async def check_current(conn: asyncpg.Connection) -> None:
    """Raise MigrationError naming the command to run when migrations are pending."""
    todo = await pending(conn)
    if todo:
        raise MigrationError(f"{len(todo)} migration(s) pending ({todo[0].name}...); "
                             "run `syncd migrate` first")


async def apply(conn: asyncpg.Connection, available: list[Migration] | None = None
                ) -> list[Migration]:
    """Apply pending migrations, each in its own transaction, under an advisory lock; return
    the ones applied. Indexes of the mirror left deferred by a backfill
    (`syncd.deferred_indexes`) are built first. Safe to run from several processes at once."""
    available = available if available is not None else discover()
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(CREATE_TABLE)
        # indexes a backfill dropped while loading an empty mirror (migration 0016) are built
        # first: a migration may alter or rely on any of them
        await mirror_indexes.build_deferred_indexes(conn, every=True, reason="syncd migrate")
        for mig in await pending(conn, available):
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO syncd.schema_migrations (version, name, sha256) "
                    "VALUES ($1, $2, $3)", mig.version, mig.name, mig.sha256)
            done.append(mig)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return done
