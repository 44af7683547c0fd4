"""Helpers to run a simulator on a real loopback socket inside tests.

``async with running_simulator(sim) as base_url:`` yields ``http://127.0.0.1:<port>/api/v1``
(port 0 = pick a free one) and shuts the server down cleanly on exit (hanging ``timeout``
faults are woken so shutdown is quick).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from .core import Simulator
from .app import build_app

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@asynccontextmanager
async def running_simulator(sim: Simulator, host: str = "127.0.0.1",
                            port: int = 0) -> AsyncIterator[str]:
    """Serve ``app.build_app(sim)`` on ``host:port`` (loopback only) and yield the API base URL."""
    if host not in _LOOPBACK:
        raise ValueError(f"running_simulator binds loopback only, not {host!r}")
    runner = web.AppRunner(build_app(sim), handle_signals=False, access_log=None,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        bound_port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound_port}/api/v1"
    finally:
        await runner.cleanup()
