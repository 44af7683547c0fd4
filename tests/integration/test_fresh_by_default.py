"""Fresh by default (issue #24): under `syncd run` with default settings a remote edit is in the
mirror within 75 s, shown without waiting 75 s.

An edit made just after a pull read Kantata is read by the next pull, which the scheduler
starts `SYNCD_PULL_INTERVAL` seconds after that one (APScheduler `IntervalTrigger`, fixed
rate, `coalesce`, first run at once; `syncd.scheduler`). So the worst delay is the interval
plus the time a pull takes to read and store the edit: the test reads the daemon's own pull
job (its trigger, on a started scheduler) and measures that pull against the simulator and
PostgreSQL, then checks the edit landed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date

import asyncpg

from syncd.app import open_deps
from syncd.daemon import Daemon
from syncd.scheduler import JobScheduler
from syncd.settings import Settings
from syncd.simulator import Simulator
from tests.integration.conftest import TOKEN

FRESH_WITHIN = 75.0  # seconds, issue #24


async def test_a_remote_edit_is_mirrored_within_75_s_with_default_settings(
        db_dsn: str, sim_url: str, sim: Simulator, conn: asyncpg.Connection) -> None:
    settings = Settings(database_url=db_dsn, kantata_base_url=sim_url, kantata_token=TOKEN,
                        kantata_allow_insecure_loopback=True,
                        backfill_start=date(2020, 1, 1))  # the data's range; the rest default
    assert settings.pull_interval == 60.0
    async with open_deps(settings) as deps:
        [pull] = [s for s in Daemon(settings)._job_specs(deps) if s.name == "pull"]
        scheduler = JobScheduler([pull], is_leader=lambda: True, stopping=asyncio.Event())
        scheduler.start()  # installs the daemon's trigger; paused before its first wake-up
        scheduler._aps.pause()
        job = scheduler._aps.get_job("pull")
        interval = job.trigger.interval.total_seconds()
        scheduler._aps.shutdown(wait=False)
        assert interval == settings.pull_interval == 60.0 and pull.first_delay == 0.0

        await pull.func()  # the backfill of the first run
        entry_id = int(sim.list_entries()[0]["id"])
        sim.edit_entry(entry_id, {"notes": "edited in Kantata"})
        t0 = time.perf_counter()
        await pull.func()  # the next scheduled run
        took = time.perf_counter() - t0
    notes = await conn.fetchval("SELECT notes FROM kantata.time_entries WHERE id = $1",
                                entry_id)
    assert notes == "edited in Kantata"
    assert interval + took <= FRESH_WITHIN, (interval, took)
