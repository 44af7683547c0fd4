"""Composition root: opens the process's single asyncpg pool and aiohttp session and builds the
`Deps` every job receives. The daemon lifecycle (`syncd run`) lives in `syncd.daemon`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg

from syncd import logs
from syncd.budget import RequestBudget
from syncd.kantata import KantataClient, RetryPolicy
from syncd.metrics import Metrics
from syncd.runs import Deps
from syncd.settings import Settings

__all__ = ["open_deps", "open_pool"]


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Explicit so that nothing depends on the server's default; timestamptz values come back as
    # aware UTC datetimes and dates are plain dates either way.
    await conn.execute("SET TimeZone = 'UTC'")


async def open_pool(settings: Settings, *, max_size: int | None = None) -> asyncpg.Pool:
    """Create the asyncpg pool (libpq PG* variables apply when no URL is set)."""
    dsn = settings.dsn()
    size = max_size or max(4, settings.window_concurrency + settings.push_concurrency + 2)
    pool = await asyncpg.create_pool(dsn=dsn, min_size=1, max_size=size,
                                     init=_init_connection, command_timeout=300)
    assert pool is not None
    return pool


@asynccontextmanager
async def open_deps(settings: Settings, *, metrics: Metrics | None = None,
                    pool: asyncpg.Pool | None = None) -> AsyncIterator[Deps]:
    """Open pool + session + client for the duration of the block and close them in reverse
    order. Raises ValueError (naming the setting) when no token is configured."""
    token = settings.token()
    logs.register_secret(token.get_secret_value())
    if settings.database_url is not None:
        from urllib.parse import urlsplit

        logs.register_secret(urlsplit(settings.dsn() or "").password)
    metrics = metrics or Metrics()
    own_pool = pool is None
    pool = pool or await open_pool(settings)
    connector = aiohttp.TCPConnector(limit=settings.max_connections,
                                     ssl=None if settings.kantata_tls_verify else False)
    budget = RequestBudget(settings.rate_limit_per_minute, settings.rate_limit_floor_per_minute)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            client = KantataClient(
                session, settings.kantata_base_url, token, budget=budget,
                retry=RetryPolicy(settings.max_retries, settings.backoff_base,
                                  settings.backoff_cap, settings.retry_after_cap),
                request_timeout=settings.request_timeout,
                connect_timeout=settings.connect_timeout,
                max_connections=settings.max_connections, metrics=metrics)
            yield Deps(pool=pool, client=client, settings=settings, metrics=metrics)
    finally:
        await budget.close()
        if own_pool:
            await pool.close()
