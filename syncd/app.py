"""Composition root: opens the process's single asyncpg pool and aiohttp session and builds the
`Deps` every job receives. The daemon lifecycle (`syncd run`) lives in `syncd.daemon`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import structlog

from syncd import budget_store, logs
from syncd.budget import Learned, RequestBudget
from syncd.kantata import KantataClient, RetryPolicy
from syncd.metrics import Metrics
from syncd.runs import Deps
from syncd.settings import Settings

__all__ = ["BudgetKeeper", "open_deps", "open_pool"]

log = structlog.get_logger(__name__)

#: seconds a load or save of the learned request limit may take (a hung database must not
#: hold up a start or a shutdown)
SAVE_TIMEOUT = 5.0


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Explicit so that nothing depends on the server's default; timestamptz values come back as
    # aware UTC datetimes and dates are plain dates either way.
    await conn.execute("SET TimeZone = 'UTC'")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's `reset` on release: nothing. asyncpg has already rolled back a transaction
    left open (`Connection._reset`, before this hook). syncd keeps no session state on pooled
    connections (LISTEN and the leader's advisory lock live on the control connection,
    `control.py`), so asyncpg's default reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL) cost a round trip per release, about 0.2 ms of CPU a page stored (issue #26), and its
    RESET ALL undid `_init_connection`'s `SET TimeZone` after the first release."""


async def open_pool(settings: Settings, *, max_size: int | None = None) -> asyncpg.Pool:
    """Create the asyncpg pool (libpq PG* variables apply when no URL is set); every connection
    keeps its session settings (`_init_connection`, `_keep_session`)."""
    dsn = settings.dsn()
    size = max_size or max(4, settings.window_concurrency + settings.push_concurrency + 2)
    pool = await asyncpg.create_pool(dsn=dsn, min_size=1, max_size=size,
                                     init=_init_connection, reset=_keep_session,
                                     command_timeout=300)
    assert pool is not None
    return pool


class BudgetKeeper:
    """Keeps the budget's learned limit in `syncd.request_budget` (`budget_store`): `restore()`
    at start (a limit whose last 429 is older than the budget's `forget_after` is deleted
    instead), a save in the background whenever it changes (`changed`, the budget's
    `on_change`), a delete when it expires (`forgotten`, its `on_forget`), and a last save
    with the newest request's time at `close()`. A database
    error is logged (`request_budget_not_saved` / `_not_loaded`) and never stops a job: the
    limit is then learned again."""

    def __init__(self, pool: asyncpg.Pool, key: budget_store.BudgetKey,
                 budget: RequestBudget) -> None:
        self.pool, self.key, self.budget = pool, key, budget
        self._pending: Learned | None = None
        self._task: asyncio.Task[None] | None = None
        self._forget_task: asyncio.Task[None] | None = None

    async def restore(self) -> budget_store.Saved | None:
        """Load the saved limit into the budget; returns what was loaded (None: nothing)."""
        try:
            async with asyncio.timeout(SAVE_TIMEOUT), self.pool.acquire() as conn:
                saved = await budget_store.load(conn, self.key)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("request_budget_not_loaded", error=f"{type(exc).__name__}: {exc}")
            return None
        if saved is not None:
            now = datetime.now(UTC)
            throttled = saved.last_throttled_at.timestamp() if saved.last_throttled_at else None
            forget_after = self.budget.forget_after
            if throttled is not None and forget_after is not None \
                    and now.timestamp() >= throttled + forget_after:
                log.info("request_budget_forgotten", limit=saved.learned.limit,
                         window_seconds=round(saved.learned.window, 3),
                         last_throttled_at=saved.last_throttled_at.isoformat()
                         if saved.last_throttled_at else None,
                         detail="no 429 for SYNCD_RATE_LIMIT_FORGET_AFTER: learned again at "
                                "the next 429")
                await self._forget()
                return None
            quiet = None if saved.last_request_at is None else (
                now - saved.last_request_at).total_seconds()
            recent = None if saved.recent_starts is None else [
                (now - t).total_seconds() for t in saved.recent_starts]
            self.budget.restore(saved.learned, quiet, recent, throttled)
            log.info("request_budget_restored", limit=saved.learned.limit,
                     window_seconds=round(saved.learned.window, 3),
                     per_minute=round(saved.learned.per_minute, 1))
        return saved

    def forgotten(self) -> None:
        """The budget's `on_forget`: the learned limit expired; delete it soon."""
        log.info("request_budget_forgotten",
                 detail="no 429 for SYNCD_RATE_LIMIT_FORGET_AFTER: learned again at the next 429")
        self._pending = None
        self._forget_task = asyncio.get_running_loop().create_task(self._forget())

    async def _forget(self) -> None:
        try:
            async with asyncio.timeout(SAVE_TIMEOUT), self.pool.acquire() as conn:
                await budget_store.forget(conn, self.key)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("request_budget_not_saved", error=f"{type(exc).__name__}: {exc}")

    def changed(self, learned: Learned) -> None:
        """The budget's `on_change`: save `learned` soon (the newest one wins)."""
        log.info("request_budget_learned", limit=learned.limit,
                 window_seconds=round(learned.window, 3), per_minute=round(learned.per_minute, 1))
        self._pending = learned
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._save_pending())

    async def _save_pending(self) -> None:
        while self._pending is not None:
            learned, self._pending = self._pending, None
            await self._save(learned, None)

    async def _save(self, learned: Learned, last_request_at: datetime | None,
                    recent: list[datetime] | None = None) -> None:
        at = self.budget.throttled_at
        throttled = None if at is None else datetime.fromtimestamp(at, UTC)
        try:
            async with asyncio.timeout(SAVE_TIMEOUT), self.pool.acquire() as conn:
                await budget_store.save(conn, self.key, learned, last_request_at, recent,
                                        throttled)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("request_budget_not_saved", error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Finish a pending save, then save the limit with the newest request's start."""
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._forget_task is not None:
            await asyncio.shield(self._forget_task)
        learned = self.budget.learned
        if learned is not None:
            now = datetime.now(UTC)
            age = self.budget.last_start_age()
            last = None if age is None else now - timedelta(seconds=age)
            recent = [now - timedelta(seconds=a) for a in self.budget.recent_start_ages()]
            await self._save(learned, last, recent)


@asynccontextmanager
async def open_deps(settings: Settings, *, metrics: Metrics | None = None,
                    pool: asyncpg.Pool | None = None) -> AsyncIterator[Deps]:
    """Open pool + session + client for the duration of the block and close them in reverse
    order. Raises ValueError (naming the setting) when no token is configured."""
    token = settings.token()
    logs.register_secret(token.get_secret_value())
    if settings.database_url is not None:
        from syncd.errors import dsn_passwords

        for password in dsn_passwords(settings.dsn()):  # user:pass@ and ?password=
            logs.register_secret(password)
    metrics = metrics or Metrics()
    own_pool = pool is None
    pool = pool or await open_pool(settings)
    connector = aiohttp.TCPConnector(limit=settings.max_connections,
                                     ssl=None if settings.kantata_tls_verify else False)
    budget = RequestBudget(settings.rate_limit_per_minute, settings.rate_limit_floor_per_minute,
                           probe_cap=settings.backoff_cap,
                           forget_after=settings.rate_limit_forget_after or None)
    keeper = BudgetKeeper(pool, budget_store.BudgetKey.of(settings.kantata_base_url,
                                                          token.get_secret_value()), budget)
    try:
        await keeper.restore()
        budget.on_change = keeper.changed
        budget.on_forget = keeper.forgotten
        async with aiohttp.ClientSession(connector=connector) as session:
            client = KantataClient(
                session, settings.kantata_base_url, token, budget=budget,
                retry=RetryPolicy(settings.max_retries, settings.backoff_base,
                                  settings.backoff_cap, settings.retry_after_cap),
                request_timeout=settings.request_timeout,
                connect_timeout=settings.connect_timeout,
                max_connections=settings.max_connections, metrics=metrics)
            deps = Deps(pool=pool, client=client, settings=settings, metrics=metrics)
            try:
                yield deps
            finally:
                if deps.run_owner is not None:  # its session's run locks go with it
                    await deps.run_owner.close()
    finally:
        try:
            await keeper.close()
        finally:
            await budget.close()
            if own_pool:
                await pool.close()
