"""The chaos harness at CI size (tests/chaos/run.py, `--smoke`): about 30 s of faults,
crashes, restarts and bad input against two `syncd run` daemons, then the oracle. Nothing may
be lost or duplicated and `syncd verify` must exit 0. The long run is
`.venv/bin/python -m tests.chaos.run --minutes 10`."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from syncd.pgserver import find_bin_dir
from tests.chaos.run import SMOKE, ChaosConfig, run_chaos

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
@pytest.mark.skipif(find_bin_dir() is None, reason="needs PostgreSQL server binaries")
async def test_chaos_smoke() -> None:
    seed = int(os.environ.get("SYNCD_CHAOS_SEED", "20261129"))
    cfg = replace(ChaosConfig(), **SMOKE, seed=seed, verbose=False)
    report = await run_chaos(cfg)
    print(report.render())
    assert report.duplicates == 0, report.render()
    assert report.lost == 0, report.render()
    assert report.verify_exit == 0, report.render()
    assert report.ok, report.render()
    # the run really was chaotic
    kills = sum(v for k, v in report.actions.items() if k.startswith("sigkill"))
    assert kills >= 3 and report.actions["restart"] >= 1
    assert report.actions["pg_terminate_backend"] >= 1 and report.actions["pg_restart"] == 1
    assert report.sigterm_exit_codes and set(report.sigterm_exit_codes) == {0}
    assert sum(report.faults.values()) >= 20 and report.rows_compared > 1500
    assert report.outbox_inserted["create"] > 50
