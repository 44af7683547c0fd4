"""The simulator's log of public API requests (`GET /_sim/requests`, `Simulator.requests`):
one dict per request with method, path, query, body, status, time, fault and request id,
capped at `cap` records (the oldest are dropped in batches of a tenth)."""

from __future__ import annotations

from typing import Any

__all__ = ["RequestLog"]


class RequestLog(list[dict[str, Any]]):
    """A list of request records that keeps at most about `cap` of them."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append `entry` (completed later by the handler) and trim; return it."""
        self.append(entry)
        if len(self) > self.cap + self.cap // 10:
            del self[: len(self) - self.cap]
        return entry
