"""A tampering front for the simulator: the real Kantata simulator answers, then crafted rules
rewrite `GET /time_entries` list pages before they reach syncd (bad input on demand).

    tamper = Tamper()
    tamper.entry("8000007", time_in_minutes=-5)            # one field of one entry, every page
    tamper.page(lambda doc, req: b"<html>", times=1)        # a whole page, once
    async with serve_tampered(sim, tamper) as base_url: ...

Rules see the decoded page (`doc`, a dict) and the aiohttp request; they return the new doc
(dict), raw bytes (sent as `application/json`) or a ready `web.Response`. `times=None` means
every matching page.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from syncd.simulator import Simulator
from syncd.simulator.app import build_app

__all__ = ["DROP", "Tamper", "serve_tampered"]

BODY: web.RequestKey[bytes] = web.RequestKey("tamper_body", bytes)
DROP = object()  # field value meaning "remove this key"
_UNSET = object()
PageFn = Callable[[dict[str, Any], web.Request], "dict[str, Any] | bytes | web.Response"]


@dataclass
class _Rule:
    fn: PageFn
    when: Callable[[web.Request], bool]
    times: int | None
    applied: int = 0


@dataclass
class Tamper:
    """Ordered rewrite rules for list pages; `applied` counts pages actually rewritten."""

    rules: list[_Rule] = field(default_factory=list)
    applied: int = 0

    def page(self, fn: PageFn, *, times: int | None = None,
             when: Callable[[web.Request], bool] = lambda r: True) -> None:
        """Rewrite whole pages with `fn(doc, request)`."""
        self.rules.append(_Rule(fn, when, times))

    def entry(self, eid: str, *, times: int | None = None, replace: Any = _UNSET,
              **fields: Any) -> None:
        """Change entry `eid` on every page listing it: set `fields` (DROP removes a key), or
        replace the whole object with `replace`."""

        def fn(doc: dict[str, Any], _: web.Request) -> dict[str, Any]:
            if replace is not _UNSET:
                doc["time_entries"][eid] = replace
                return doc
            obj = doc["time_entries"][eid]
            for k, v in fields.items():
                if v is DROP:
                    obj.pop(k, None)
                else:
                    obj[k] = v
            return doc

        self.page(fn, times=times, when=lambda r: _lists(r, eid))

    def raw(self, old: bytes, new: bytes, *, times: int | None = None) -> None:
        """Byte-level replace in the serialized page (invalid UTF-8, escapes orjson won't
        write)."""

        def fn(doc: dict[str, Any], _: web.Request) -> bytes:
            return _dumps(doc).replace(old, new)

        self.page(fn, times=times, when=lambda r: old in r.get(BODY, b""))

    def apply(self, request: web.Request, body: bytes) -> web.StreamResponse | None:
        request[BODY] = body
        out: Any = None
        for rule in self.rules:
            if rule.times is not None and rule.applied >= rule.times:
                continue
            if not rule.when(request):
                continue
            doc = orjson.loads(body) if out is None else out
            if isinstance(doc, bytes | web.Response):
                break
            out = rule.fn(doc, request)
            rule.applied += 1
        if out is None:
            return None
        self.applied += 1
        if isinstance(out, web.StreamResponse):
            return out
        data = out if isinstance(out, bytes) else _dumps(out)
        return web.Response(status=200, body=data, content_type="application/json")


def _dumps(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits: the stdlib writes them
        return json.dumps(doc).encode()


def _lists(request: web.Request, eid: str) -> bool:
    return f'"{eid}":'.encode() in request.get(BODY, b"")


@asynccontextmanager
async def serve_tampered(sim: Simulator, tamper: Tamper) -> AsyncIterator[str]:
    """Serve `sim` on a loopback port with `tamper` applied to list pages; yield the API base
    URL (`http://127.0.0.1:<port>/api/v1`)."""

    @web.middleware
    async def rewrite(request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        path = request.path.rstrip("/")
        if (request.method == "GET" and path.endswith("/api/v1/time_entries")
                and resp.status == 200 and isinstance(resp, web.Response)
                and isinstance(resp.body, bytes)):
            new = tamper.apply(request, resp.body)
            if new is not None:
                return new
        return resp

    app = build_app(sim)
    app.middlewares.append(rewrite)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        await runner.cleanup()
