"""Exceptions raised by the simulator core.

`ApiError` carries a Kantata error body (``{"errors":[{type,message[,field][,index][,id]}]}``,
api-notes §9) for the public API; `NotFound` and `InvalidInput` are raised by the in-process /
control API (``/_sim``), which answers them as 404 / 400 ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A public-API error: HTTP ``status`` and the list of Kantata error objects."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{status}: {errors}")
        self.status = status
        self.errors = errors

    @classmethod
    def system(cls, status: int, message: str) -> ApiError:
        """Single ``{"type":"system"}`` error (404 not found, 400 bad filter, 5xx)."""
        return cls(status, [{"type": "system", "message": message}])

    @classmethod
    def syntax(cls, message: str) -> ApiError:
        """400 ``{"type":"syntax"}`` error, e.g. missing root key (api-notes §9)."""
        return cls(400, [{"type": "syntax", "message": message}])


class NotFound(LookupError):
    """Control/in-process API: the referenced entry/workspace does not exist."""


class InvalidInput(ValueError):
    """Control/in-process API: a field value is malformed."""


MISSING_PARAMS = ("Missing required parameters. Please see our documentation at "
                  "https://developer.kantata.com")
