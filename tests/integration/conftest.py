"""Integration fixtures: a running simulator on loopback and syncd Deps pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import pytest

from syncd.app import open_deps
from syncd.runs import Deps
from syncd.settings import Settings
from syncd.simulator import SimConfig, Simulator
from syncd.simulator.testing import running_simulator

TOKEN = "integration-token-0123456789"


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimConfig(token=TOKEN, entries=600, seed=7, lock_date=None))


@pytest.fixture
async def sim_url(sim: Simulator) -> AsyncIterator[str]:
    async with running_simulator(sim) as url:
        yield url


def make_settings(db_dsn: str, sim_url: str, **over: object) -> Settings:
    base: dict[str, object] = dict(
        database_url=db_dsn, kantata_base_url=sim_url, kantata_token=TOKEN,
        kantata_allow_insecure_loopback=True, backfill_start=date(2020, 1, 1),
        backoff_base=0.01, backoff_cap=0.05, retry_after_cap=0.1, request_timeout=5,
        overlap=5, rate_limit_per_minute=60_000)
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def deps(db_dsn: str, sim_url: str) -> AsyncIterator[Deps]:
    async with open_deps(make_settings(db_dsn, sim_url)) as d:
        yield d
