"""The asyncpg boundary for the learned request limit (`syncd.request_budget`, migration 0013).

One row per installation's Kantata account access: the base URL and the SHA-256 of the token
(never the token). `RequestBudget` learns the limit (`syncd.budget`); `app.open_deps` restores
it at start and saves it here whenever it changes and at shutdown, so a restart starts at the
learned rate (issue #24).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from syncd.budget import Learned

__all__ = ["BudgetKey", "Saved", "forget", "load", "load_all", "save"]


@dataclass(frozen=True, slots=True)
class BudgetKey:
    """Which row: `base_url` (no trailing slash) and `token_sha256` (64 hex digits)."""

    base_url: str
    token_sha256: str

    @classmethod
    def of(cls, base_url: str, token: str) -> BudgetKey:
        """The key of `token` at `base_url`; only the token's SHA-256 is kept."""
        return cls(base_url.rstrip("/"), hashlib.sha256(token.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Saved:
    """A stored limit, when (aware) the saving process last started a request (or None), the
    starts it made in the last window before it stopped (aware; None: not known), Kantata's
    last 429 that taught or confirmed it (`last_throttled_at`, aware; None: not recorded) and
    when the row was last written (`updated_at`)."""

    learned: Learned
    last_request_at: datetime | None
    recent_starts: list[datetime] | None = None
    last_throttled_at: datetime | None = None
    updated_at: datetime | None = None
    base_url: str = ""


def _saved(row: asyncpg.Record) -> Saved:
    return Saved(Learned(row["limit_requests"], row["window_seconds"],
                         row["window_longer_than"]), row["last_request_at"],
                 None if row["recent_starts"] is None else list(row["recent_starts"]),
                 row["last_throttled_at"], row["updated_at"], row["kantata_base_url"])


async def load(conn: asyncpg.Connection, key: BudgetKey) -> Saved | None:
    """The saved limit for `key`; None when there is none or the table does not exist yet
    (migrations not applied: the caller checks them separately)."""
    if await conn.fetchval("SELECT to_regclass('syncd.request_budget')") is None:
        return None
    row = await conn.fetchrow(
        "SELECT kantata_base_url, limit_requests, window_seconds, window_longer_than, "
        "last_request_at, recent_starts, last_throttled_at, updated_at FROM syncd.request_budget "
        "WHERE kantata_base_url = $1 AND token_sha256 = $2", key.base_url, key.token_sha256)
    return None if row is None else _saved(row)


async def load_all(conn: asyncpg.Connection) -> list[Saved]:
    """Every saved limit (one per base URL and token), newest first, for `syncd status`;
    [] when the table does not exist yet."""
    if await conn.fetchval("SELECT to_regclass('syncd.request_budget')") is None:
        return []
    return [_saved(r) for r in await conn.fetch(
        "SELECT kantata_base_url, limit_requests, window_seconds, window_longer_than, "
        "last_request_at, recent_starts, last_throttled_at, updated_at "
        "FROM syncd.request_budget ORDER BY updated_at DESC")]


async def forget(conn: asyncpg.Connection, key: BudgetKey) -> None:
    """Delete the limit for `key` (it expired: `RequestBudget.forget_after`)."""
    await conn.execute("DELETE FROM syncd.request_budget "
                       "WHERE kantata_base_url = $1 AND token_sha256 = $2",
                       key.base_url, key.token_sha256)


async def save(conn: asyncpg.Connection, key: BudgetKey, learned: Learned,
               last_request_at: datetime | None,
               recent_starts: list[datetime] | None = None,
               last_throttled_at: datetime | None = None) -> None:
    """Upsert the limit for `key`. `last_request_at` and `recent_starts` (aware) are written
    at shutdown; None keeps the stored time and clears the starts (a running process: they
    would be out of date). `last_throttled_at` (aware): Kantata's last 429; None keeps the
    stored one (a new row: now)."""
    await conn.execute(
        "INSERT INTO syncd.request_budget AS b (kantata_base_url, token_sha256, limit_requests, "
        "window_seconds, window_longer_than, last_request_at, recent_starts, "
        "last_throttled_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now())) "
        "ON CONFLICT (kantata_base_url, token_sha256) DO UPDATE SET "
        "limit_requests = excluded.limit_requests, window_seconds = excluded.window_seconds, "
        "window_longer_than = excluded.window_longer_than, "
        "last_request_at = coalesce(excluded.last_request_at, b.last_request_at), "
        "recent_starts = excluded.recent_starts, "
        "last_throttled_at = coalesce($8, b.last_throttled_at), "
        "updated_at = now()",
        key.base_url, key.token_sha256, learned.limit, float(learned.window),
        min(float(learned.longer_than), float(learned.window)), last_request_at, recent_starts,
        last_throttled_at)
