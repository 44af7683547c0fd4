"""structlog configuration, done once by the CLI: JSON lines when stderr is not a TTY, readable
console output when it is. Every line has an ISO UTC timestamp, level and a stable event name;
`run_id`/`job` come from contextvars. A redaction processor removes registered secrets (the
Kantata token, the database password) from every value, and `authorization` keys entirely.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from syncd import errors

__all__ = ["configure", "register_secret"]

_SECRETS: set[str] = set()
REDACTED = "[redacted]"


def register_secret(value: str | None) -> None:
    """Never let `value` (at least 4 characters) appear in a log line (nor in an error message:
    `syncd.errors.redact`)."""
    errors.register_secret(value)
    if value and len(value) >= 4:
        _SECRETS.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for s in _SECRETS:
            if s in value:
                value = value.replace(s, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, BaseException):
        return _scrub(f"{type(value).__name__}: {value}")
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop authorization headers, scrub registered secrets."""
    for key in list(event):
        if key.lower() in ("authorization", "token", "password", "headers"):
            event[key] = REDACTED
        else:
            event[key] = _scrub(event[key])
    return event


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog and route stdlib logging (aiohttp, asyncpg, apscheduler) through it."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if as_json
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("apscheduler.executors.default", "apscheduler.scheduler", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))
