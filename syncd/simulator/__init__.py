"""Kantata OX time-entries API simulator (aiohttp.web) for syncd's tests, benchmarks and rehearsals.

Usage::

    from syncd.simulator import Simulator, SimConfig, FaultConfig
    sim = Simulator(SimConfig(token="t", entries=1000, seed=1))
    app = build_app(sim)          # (syncd.simulator.app) /api/v1 (public, Bearer t) and /_sim (control, no auth)

See ``core.Simulator`` for the in-process API and ``testing.running_simulator`` for a live server.
"""

from __future__ import annotations

from .config import ContractConfig, FaultConfig, SimConfig
from .core import Simulator
from .errors import ApiError, InvalidInput, NotFound

__all__ = ["ApiError", "ContractConfig", "FaultConfig", "InvalidInput", "NotFound", "SimConfig",
           "Simulator"]
