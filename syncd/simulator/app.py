"""aiohttp routes of the simulator: the public Kantata API (``/api/v1``) and the control API (``/_sim``).

Public request pipeline (api-notes §1, §9, §10): log -> bearer auth (401 ``oauth``) -> per-token
rate limit (429 ``system``, ``Retry-After`` only when configured) -> fault draws (latency, reset,
timeout, error, lost response, bad page) -> route (``.json`` suffix and a trailing slash accepted;
unknown route or method -> 404 ``system``). Every response carries ``x-request-id``; JSON bodies
are ``application/json; charset=utf-8``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from .errors import MISSING_PARAMS, ApiError, InvalidInput, NotFound
from .faults import SERVER_MESSAGES, corrupt_page

if TYPE_CHECKING:
    from .core import Simulator

log = logging.getLogger("syncd.simulator")

SIM_KEY: web.AppKey[Simulator] = web.AppKey("sim", object)  # type: ignore[arg-type]
STOP_KEY: web.AppKey[asyncio.Event] = web.AppKey("stop", asyncio.Event)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)

_COLLECTION = re.compile(r"^time_entries(?:\.json)?/?$")
_ITEM = re.compile(r"^time_entries/(\d+)(?:\.json)?/?$")
_FORM_KEY = re.compile(r"^(\w+)\[(\w+)\]$")
JSON_CT = "application/json"
UNAUTHORIZED = b'{"errors":[{"type":"oauth","message":"Invalid OAuth 2 Request"}]}'


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON_CT, charset="utf-8")


def _error(e: ApiError) -> web.Response:
    return _json(e.status, orjson.dumps({"errors": e.errors}))


class _BadBody(Exception):
    pass


def _decode_body(request: web.Request, raw: bytes) -> Any:
    """JSON body, Rails-structured form body (``time_entry[notes]=x``) or ``None`` when empty."""
    if not raw.strip():
        return None
    if request.content_type == "application/x-www-form-urlencoded":
        out: dict[str, Any] = {}
        for k, v in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            m = _FORM_KEY.match(k)
            if m:
                sub = out.setdefault(m.group(1), {})
                if isinstance(sub, dict):
                    sub[m.group(2)] = v
            else:
                out[k] = v
        return out
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise _BadBody(f"Invalid JSON body: {e}") from None


def _query_dict(request: web.Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in request.query:
        vals = request.query.getall(k)
        out[k] = vals[0] if len(vals) == 1 else list(vals)
    return out


def _body_for_log(request: web.Request, raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return _decode_body(request, raw)
    except _BadBody:
        return raw.decode("utf-8", "replace")


def _authorized(request: web.Request, token: str) -> bool:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    return scheme.lower() == "bearer" and value.strip() == token


def _route(sim: Simulator, request: web.Request, body_raw: bytes) -> tuple[web.Response, bool]:
    """Run the public operation; returns (response, is_list_get)."""
    tail = request.match_info.get("tail", "")
    method = request.method
    q = request.query
    try:
        m = _ITEM.fullmatch(tail)
        if m:
            eid = int(m.group(1))
            if method == "GET":
                return _json(200, sim.api_show(eid, q)), False
            if method == "PUT":
                return _json(200, sim.api_update(eid, _decode_body(request, body_raw), q)), False
            if method == "DELETE":
                sim.api_delete(eid)
                return web.Response(status=204), False
            raise ApiError.system(404, "Page not found")
        if _COLLECTION.fullmatch(tail):
            if method == "GET":
                return _json(200, sim.api_list(q)), True
            if method == "POST":
                return _json(200, sim.api_create(_decode_body(request, body_raw), q)), False
            if method == "DELETE":
                ids: Any = q.get("ids")
                if ids is None or not ids.strip():
                    body = _decode_body(request, body_raw)
                    if isinstance(body, dict):
                        ids = body.get("ids")
                    elif isinstance(body, list):
                        ids = body
                    else:
                        ids = None
                sim.api_bulk_delete(ids)
                return web.Response(status=204), False
        raise ApiError.system(404, "Page not found")
    except _BadBody as e:
        return _error(ApiError.syntax(str(e))), False
    except ApiError as e:
        return _error(e), False


async def public_handler(request: web.Request) -> web.StreamResponse:
    """Every ``/api/v1/*`` request (auth, rate limit, faults, routing, request log), counted
    in ``Simulator.in_flight`` while it is handled (its peak is ``peak_in_flight``)."""
    sim = request.app[SIM_KEY]
    sim.in_flight += 1
    sim.peak_in_flight = max(sim.peak_in_flight, sim.in_flight)
    try:
        return await _public(request, sim)
    finally:
        sim.in_flight -= 1


async def _public(request: web.Request, sim: Simulator) -> web.StreamResponse:
    raw = await request.read()
    record: dict[str, Any] = {
        "method": request.method, "path": request.path, "query": _query_dict(request),
        "body": _body_for_log(request, raw), "status": None,
        "time": datetime.fromtimestamp(sim.now(), sim.tz).isoformat(), "fault": None,
        "request_id": request[REQUEST_ID],
    }
    sim.requests.record(record)

    if not _authorized(request, sim.config.token):
        record["status"] = 401
        return _json(401, UNAUTHORIZED)

    faults = sim.fault_injector
    over = faults.throttle(sim.config.token, sim.config.rate_limit_per_minute)
    if over is not None:
        limit, retry_after = over
        record["status"], record["fault"] = 429, "rate_limit"
        resp = _json(429, orjson.dumps({"errors": [{
            "type": "system",
            "message": f"Too many requests: limit is {limit} per minute. "
                       "Retry after a small delay."}]}))
        if retry_after is None and sim.config.retry_after is not None:
            retry_after = max(0, math.ceil(sim.config.retry_after))
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return resp

    draw = faults.draw()
    if faults.config.latency_ms:
        await asyncio.sleep(faults.config.latency_ms / 1000.0)
    if draw.kind == "reset":
        record["fault"] = "reset"
        _drop(request)
        return web.Response(status=500)
    if draw.kind == "timeout":
        record["fault"] = "timeout"
        stop = request.app[STOP_KEY]
        try:
            await asyncio.wait_for(stop.wait(), sim.config.hang_seconds)
        except TimeoutError:
            pass
        _drop(request)
        return web.Response(status=504)
    if draw.kind == "error":
        status = draw.status or 500
        record["status"], record["fault"] = status, "error"
        message = SERVER_MESSAGES.get(status, "A server error has occurred.")
        return _json(status, orjson.dumps({"errors": [{"type": "system", "message": message}]}))

    try:
        resp, is_list = _route(sim, request, raw)
    except Exception:  # pragma: no cover - a bug in the simulator, still answer like Kantata
        log.exception("simulator error on %s %s", request.method, request.path_qs)
        resp, is_list = _json(500, b'{"errors":[{"type":"system","message":'
                                   b'"A server error has occurred."}]}'), False
    record["status"] = resp.status
    if draw.lost:
        record["fault"] = "lost_response"
        _drop(request)
        return resp
    if is_list and resp.status == 200 and draw.bad_page is not None:
        record["fault"] = f"bad_page:{draw.bad_page}"
        assert isinstance(resp.body, bytes)
        content_type, body = corrupt_page(resp.body, draw.bad_page)
        if content_type == "text/html":
            return web.Response(status=200, content_type="text/html", charset="utf-8",
                                text=body.decode())
        return _json(200, body)
    return resp


def _drop(request: web.Request) -> None:
    """Close the connection abruptly without writing a response."""
    transport = request.transport
    if transport is not None:
        transport.abort()


# ------------------------------------------------------------------ control API
def _ctl_error(status: int, message: str) -> web.Response:
    return _json(status, orjson.dumps({"error": message}))


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"invalid JSON body: {e}") from None


def _entry_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise NotFound(f"no such id {request.match_info['id']!r}") from None


@web.middleware
async def _control_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map in-process exceptions to control-API JSON errors; public 405 -> 404 (§7)."""
    try:
        return await handler(request)
    except NotFound as e:
        return _ctl_error(404, str(e))
    except InvalidInput as e:
        return _ctl_error(400, str(e))
    except web.HTTPException as e:
        if request.path.startswith("/_sim"):
            return _ctl_error(e.status, e.reason)
        raise


async def ctl_list_entries(request: web.Request) -> web.Response:
    """``GET /_sim/entries`` -> ``{"time_entries":[...]}`` every live entry, by id."""
    return _json(200, request.app[SIM_KEY].list_entries_bytes())


async def ctl_get_entry(request: web.Request) -> web.Response:
    """``GET /_sim/entries/{id}`` -> the entry or 404."""
    e = request.app[SIM_KEY].get_entry(_entry_id(request))
    if e is None:
        raise NotFound("time entry not found")
    return _json(200, orjson.dumps(e))


async def ctl_create_entry(request: web.Request) -> web.Response:
    """``POST /_sim/entries`` one entry object (any field) -> the created entry (201)."""
    body = await _json_body(request)
    return _json(201, orjson.dumps(request.app[SIM_KEY].create_entry(body or {})))


async def ctl_edit_entry(request: web.Request) -> web.Response:
    """``PATCH /_sim/entries/{id}`` -> the edited entry."""
    body = await _json_body(request)
    return _json(200, orjson.dumps(request.app[SIM_KEY].edit_entry(_entry_id(request),
                                                                    body or {})))


async def ctl_delete_entry(request: web.Request) -> web.Response:
    """``DELETE /_sim/entries/{id}`` -> ``{"deleted": "<id>"}``."""
    eid = _entry_id(request)
    request.app[SIM_KEY].delete_entry(eid)
    return _json(200, orjson.dumps({"deleted": str(eid)}))


async def ctl_invoice(request: web.Request) -> web.Response:
    """``POST /_sim/entries/{id}/invoice`` -> the invoiced entry."""
    return _json(200, orjson.dumps(request.app[SIM_KEY].invoice_entry(_entry_id(request))))


async def ctl_archive(request: web.Request) -> web.Response:
    """``POST /_sim/workspaces/{id}/archive`` -> the workspace."""
    return _json(200, orjson.dumps(request.app[SIM_KEY].archive_workspace(_entry_id(request))))


async def ctl_unarchive(request: web.Request) -> web.Response:
    """``POST /_sim/workspaces/{id}/unarchive`` -> the workspace."""
    return _json(200, orjson.dumps(request.app[SIM_KEY].unarchive_workspace(_entry_id(request))))


async def ctl_lock_date(request: web.Request) -> web.Response:
    """``PUT /_sim/lock_date {"lock_date": "YYYY-MM-DD"|null}``; ``GET`` reads it."""
    sim = request.app[SIM_KEY]
    if request.method == "PUT":
        body = await _json_body(request)
        if not isinstance(body, dict) or "lock_date" not in body:
            raise InvalidInput('body must be {"lock_date": "YYYY-MM-DD" | null}')
        sim.set_lock_date(body["lock_date"])
    ld = sim.lock_date.isoformat() if sim.lock_date else None
    return _json(200, orjson.dumps({"lock_date": ld}))


async def ctl_requests(request: web.Request) -> web.Response:
    """``GET /_sim/requests`` -> the public request log; ``DELETE`` clears it."""
    sim = request.app[SIM_KEY]
    if request.method == "DELETE":
        sim.clear_requests()
        return web.Response(status=204)
    return _json(200, orjson.dumps({"requests": sim.requests}))


async def _settable(request: web.Request, put: Any, clear: Any, current: Any) -> web.Response:
    """A control resource set by PUT (a JSON object, validated by `put`: 400 on a bad one),
    reset by DELETE, read by GET; answers its current value (`current().to_dict()`)."""
    if request.method == "PUT":
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        try:
            put(body)
        except (TypeError, ValueError) as e:
            raise InvalidInput(str(e)) from None
    elif request.method == "DELETE":
        clear()
    return _json(200, orjson.dumps(current().to_dict()))


async def ctl_faults(request: web.Request) -> web.Response:
    """``PUT /_sim/faults`` sets, ``DELETE`` clears, ``GET`` reads the fault configuration."""
    sim = request.app[SIM_KEY]
    return await _settable(request, sim.set_faults, sim.clear_faults, lambda: sim.faults)


async def ctl_contract(request: web.Request) -> web.Response:
    """``PUT /_sim/contract`` sets (JSON object of switches, unknown keys 400, ``null`` = default),
    ``DELETE`` resets, ``GET`` reads the contract switches (config.ContractConfig)."""
    sim = request.app[SIM_KEY]
    return await _settable(request, sim.set_contract, sim.clear_contract, lambda: sim.contract)


async def ctl_state(request: web.Request) -> web.Response:
    """``GET /_sim/state`` -> counts, lock date, version, faults."""
    return _json(200, orjson.dumps(request.app[SIM_KEY].state()))


def _ref_handler(kind: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return _json(200, orjson.dumps({kind: request.app[SIM_KEY].reference_list(kind)}))

    handler.__doc__ = f"``GET /_sim/{kind}`` -> ``{{\"{kind}\": [...]}}`` sorted by id."
    return handler


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = uuid.uuid4().hex
    response.headers["x-request-id"] = rid


@web.middleware
async def _request_id(request: web.Request, handler: Any) -> web.StreamResponse:
    request[REQUEST_ID] = uuid.uuid4().hex
    return await handler(request)


async def _on_shutdown(app: web.Application) -> None:
    app[STOP_KEY].set()


def build_app(sim: Simulator) -> web.Application:
    """Create the aiohttp application for ``sim`` (see module docstring for routes)."""
    app = web.Application(middlewares=[_request_id, _control_errors],
                          client_max_size=32 * 1024 * 1024)
    app[SIM_KEY] = sim
    app[STOP_KEY] = asyncio.Event()
    app.on_response_prepare.append(_on_prepare)
    app.on_shutdown.append(_on_shutdown)
    r = app.router
    r.add_route("*", "/api/v1", public_handler)
    # Any character, newline included (``/time_entries/%0A``): every public path goes through
    # the auth check and answers a JSON error body, never aiohttp's text/plain 404.
    r.add_route("*", "/api/v1/{tail:[\\s\\S]*}", public_handler)
    r.add_get("/_sim/entries", ctl_list_entries)
    r.add_post("/_sim/entries", ctl_create_entry)
    r.add_get(r"/_sim/entries/{id}", ctl_get_entry)
    r.add_patch(r"/_sim/entries/{id}", ctl_edit_entry)
    r.add_delete(r"/_sim/entries/{id}", ctl_delete_entry)
    r.add_post(r"/_sim/entries/{id}/invoice", ctl_invoice)
    r.add_post(r"/_sim/workspaces/{id}/archive", ctl_archive)
    r.add_post(r"/_sim/workspaces/{id}/unarchive", ctl_unarchive)
    r.add_route("GET", "/_sim/lock_date", ctl_lock_date)
    r.add_route("PUT", "/_sim/lock_date", ctl_lock_date)
    r.add_route("GET", "/_sim/requests", ctl_requests)
    r.add_route("DELETE", "/_sim/requests", ctl_requests)
    for m in ("GET", "PUT", "DELETE"):
        r.add_route(m, "/_sim/faults", ctl_faults)
        r.add_route(m, "/_sim/contract", ctl_contract)
    r.add_get("/_sim/state", ctl_state)
    for kind in ("workspaces", "users", "stories", "roles"):
        r.add_get(f"/_sim/{kind}", _ref_handler(kind))
    return app


__all__ = ["build_app", "SIM_KEY", "MISSING_PARAMS"]
