"""Fault injection for the simulator's public API: which fault (if any) a request gets, the
per-token rate limit, and how a good list page is corrupted. Plain decisions over
`FaultConfig`; the HTTP app (app.py) carries them out. Deterministic for a given `seed`."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass

import orjson

from .config import FaultConfig

__all__ = ["Draw", "FaultInjector", "corrupt_page"]

SERVER_MESSAGES = {503: "Service is unavailable", 502: "Bad Gateway"}


@dataclass(frozen=True, slots=True)
class Draw:
    """The fault of one request: `kind` None (none), "reset", "timeout" or "error" (then
    `status`) happen before routing; `lost` drops the answer after applying the request;
    `bad_page` (a kind name) corrupts a successful list page."""

    kind: str | None = None
    status: int | None = None
    lost: bool = False
    bad_page: str | None = None


class FaultInjector:
    """The current `FaultConfig`, its RNG and the rate-limit windows per token."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.configure(config or FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration, reseed the RNG and forget the rate-limit windows."""
        self.config = config
        self.rng = random.Random(config.seed)
        self.windows: dict[str, deque[float]] = {}

    def throttle(self, token: str, default_limit: int | None) -> tuple[int, int | None] | None:
        """(limit, Retry-After seconds or None) when this request is over the token's limit
        (requests per sliding `rate_limit_window` seconds, 60 by default); None when it may go
        on (and is counted)."""
        limit = self.config.rate_limit_per_minute or default_limit
        if not limit:
            return None
        window = self.windows.setdefault(token, deque())
        mono = time.monotonic()
        while window and window[0] <= mono - self.config.rate_limit_window:
            window.popleft()
        if len(window) >= limit:
            after = self.config.retry_after
            return limit, None if after is None else max(0, math.ceil(after))
        window.append(mono)
        return None

    def draw(self, default_retry_after: float | None = None) -> Draw:
        """The fault for the next request (four RNG draws per request, always)."""
        f = self.config
        r_main, r_status, r_bad, r_kind = (self.rng.random(), self.rng.random(),
                                           self.rng.random(), self.rng.random())
        edge = f.reset_rate
        if r_main < edge:
            return Draw("reset")
        edge += f.timeout_rate
        if r_main < edge:
            return Draw("timeout")
        edge += f.error_rate
        if r_main < edge:
            return Draw("error", status=f.statuses[int(r_status * len(f.statuses))
                                                   % len(f.statuses)])
        lost = r_main < edge + f.lost_response_rate
        bad = None
        if r_bad < f.bad_page_rate:
            kinds = f.bad_page_kinds
            bad = kinds[int(r_kind * len(kinds)) % len(kinds)]
        return Draw(None, lost=lost, bad_page=bad)


def corrupt_page(body: bytes, kind: str) -> tuple[str, bytes]:
    """(content type, body) of a bad page of `kind` made from a good list body: `truncated`
    (JSON cut in half), `html` (a gateway error page) or `missing_ids` (`results` naming an id
    the keyed object lacks)."""
    if kind == "truncated":
        return "application/json", body[: max(1, len(body) // 2)]
    if kind == "html":
        return "text/html", (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
                             b"<body><h1>Bad Gateway</h1><p>upstream hiccup</p></body></html>")
    doc = orjson.loads(body)
    entries = doc.get("time_entries", {})
    if doc.get("results"):
        entries.pop(doc["results"][-1]["id"], None)
    else:
        doc.setdefault("results", []).append({"key": "time_entries", "id": "999999999"})
    return "application/json", orjson.dumps(doc)
