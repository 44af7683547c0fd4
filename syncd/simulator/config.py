"""Configuration objects of the Kantata OX simulator.

`SimConfig` describes the simulated account (token, seed data, time zone, paging limit, lock date,
rate limit); `FaultConfig` describes injected transport/server faults and can be replaced at run time
through ``PUT /_sim/faults`` or :meth:`Simulator.set_faults`; `ContractConfig` selects answers that
the published contract allows but today's simulator does not give (``PUT /_sim/contract`` or
:meth:`Simulator.set_contract`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any

#: Fault kinds accepted in ``FaultConfig.bad_page_kinds``.
BAD_PAGE_KINDS: tuple[str, ...] = ("truncated", "html", "missing_ids")


@dataclass
class SimConfig:
    """Static configuration of one simulated Kantata account.

    Attributes:
        token: the only bearer token accepted on ``/api/v1`` (``Authorization: Bearer <token>``).
        entries: number of time entries generated at start-up (deterministic given ``seed``).
        reference_entries: size the workspaces, users and stories as for an account with this
            many entries (``None``: as for ``entries``). The side-loads of a page grow with
            them, so a memory benchmark can vary ``entries`` with the page shape held constant.
        seed: seed of the deterministic data generator: ids, workspaces, users, minutes,
            notes and every other field but the dates are the same for a seed on any day.
        anchor: the day the seed data ends (its entries span the 730 days before this day's
            local midnight); ``None``: today in ``timezone``, so the dates move with the day
            (by whole days, whatever the time) and the tests' "recent" windows hold data.
            Set it to get the very same dates on any day; it must not be after today.
        timezone: IANA zone used to render ``created_at``/``updated_at`` offsets and to interpret
            offset-less filter input (api-notes §11, §14 Q3). Default US Pacific.
        max_per_page: silent clamp for ``per_page``/``limit`` (api-notes §3, §14 Q4).
        lock_date: account line-item lock date; entries performed on or before it cannot be
            created, edited or deleted through the public API (api-notes §7). ``"auto"`` picks a
            Saturday about two months before today; ``None`` means no lock.
        rate_limit_per_minute: per-token request budget per sliding 60 s window; ``None`` = off.
        retry_after: seconds sent in ``Retry-After`` on 429; ``None`` = header omitted
            (real Kantata sends none, api-notes §10).
        hang_seconds: how long a ``timeout`` fault hangs before closing the connection.
        clock: callable returning the current aware datetime; default real time.
        max_logged_requests: the public request log keeps at most this many newest records
            (long-running rehearsals would otherwise grow without bound).
    """

    token: str = "sim-token"
    entries: int = 1000
    reference_entries: int | None = None
    seed: int = 1
    anchor: date | None = None
    timezone: str = "America/Los_Angeles"
    max_per_page: int = 200
    lock_date: date | str | None = None
    rate_limit_per_minute: int | None = None
    retry_after: float | None = None
    hang_seconds: float = 30.0
    clock: Callable[[], datetime] | None = None
    max_logged_requests: int = 100_000
    contract: ContractConfig | None = None


#: Values accepted by ``ContractConfig.bulk_create_order``.
BULK_CREATE_ORDERS: tuple[str, ...] = ("request", "default")
#: Values accepted by ``ContractConfig.count_mode``.
COUNT_MODES: tuple[str, ...] = ("exact", "negative", "inconsistent")
#: ``meta.page_count`` under ``ignore_page`` is at least this many entries' worth of pages
#: (the issue #22 report: "heading for 200,000").
IGNORED_PAGE_ENTRIES = 200_000
#: ``count`` under ``count_mode="inconsistent"`` is the real count plus this.
INCONSISTENT_COUNT_EXTRA = 7


@dataclass
class ContractConfig:
    """Contract switches: answer shapes the published contract allows and syncd must survive.

    Every default is today's simulator behaviour (what recorded Kantata traffic shows); each switch
    turns on one shape that ``time-entries.openapi.yml`` permits. Switches only change public
    answers (``/api/v1``); the request log and ``/_sim`` read the same data either way. Facts
    cited as "contract" are the TimeEntry schema and list/create/show/update operations of
    ``../shared/kantata/time-entries.openapi.yml`` (issue #22 lists what a contract-only server
    did to syncd).

    Attributes:
        omit_object_ids: objects in ``time_entries`` and in every side-loaded map carry no ``id``
            field; the id is only the map key and the ``results`` id (no schema of the contract
            has an ``id`` property).
        foreign_keys_only_with_include: ``workspace_id``, ``user_id``, ``story_id``, ``role_id``
            appear in a time entry only when ``workspace``/``user``/``story``/``role`` is in
            ``include=`` (contract TimeEntry descriptions: "will only be included in the response
            if ...").
        bulk_create_order: ``"request"`` lists created entries in ``results`` in the order sent;
            ``"default"`` in the endpoint's default order, ``date_performed:desc`` then id
            ascending (contract: results "in sorted order", order default ``date_performed:desc``).
        external_references_only_if_included: answers carry ``external_references`` and
            ``external_reference_ids`` only when ``include=external_references`` was asked for.
            Today's simulator already behaves so; the switch exists so a test can say it relies
            on it (see ``write_answers_ignore_include`` for answers that drop them anyway).
        write_answers_ignore_include: create and update answers ignore ``include=`` (no
            side-loads, no include-only fields), as a server generated from the contract does;
            the contract declares ``include`` on POST/PUT but no schema requires any key.
        ignore_page: ``page`` and ``offset`` are ignored: every page number answers the content
            of page 1, ``meta.page_number`` echoes the requested number and ``meta.page_count``
            is ``max(real, IGNORED_PAGE_ENTRIES // page_size)``.
        count_mode: ``"exact"``; ``"negative"``: ``count`` and ``meta.count`` are -1;
            ``"inconsistent"``: they are the real count + ``INCONSISTENT_COUNT_EXTRA``.
            ``meta.page_count`` is computed from the reported count; results stay right.
            Applies to every envelope (list, show, create, update).
        lowercase_timestamps: ``created_at``/``updated_at`` (entries and side-loaded objects)
            are rendered in UTC with a lower-case ``t`` and ``z``, e.g.
            ``2026-01-02t03:04:05z`` (RFC 3339 §5.6 NOTE allows lower case).
        updated_after_inclusive: ``updated_after`` keeps entries updated at the boundary second
            too (``>=`` instead of ``>``; the contract says "after" without more, issue #23).
    """

    omit_object_ids: bool = False
    foreign_keys_only_with_include: bool = False
    bulk_create_order: str = "request"
    external_references_only_if_included: bool = False
    write_answers_ignore_include: bool = False
    ignore_page: bool = False
    count_mode: str = "exact"
    lowercase_timestamps: bool = False
    updated_after_inclusive: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContractConfig:
        """Build and validate from a JSON object; unknown keys raise ValueError, ``null`` for a
        key means its default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown contract switch(es): {', '.join(unknown)}")
        cfg = cls(**{k: v for k, v in data.items() if v is not None})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError when a switch has a value of the wrong type or outside its choices."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("bool", bool) and not isinstance(v, bool):
                raise ValueError(f"{f.name} must be true or false")
        if self.bulk_create_order not in BULK_CREATE_ORDERS:
            raise ValueError(f"bulk_create_order must be one of {', '.join(BULK_CREATE_ORDERS)}")
        if self.count_mode not in COUNT_MODES:
            raise ValueError(f"count_mode must be one of {', '.join(COUNT_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (the shape ``GET /_sim/contract`` answers)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def reshapes_objects(self) -> bool:
        """True when rendered objects differ from the cached default rendering."""
        return self.omit_object_ids or self.foreign_keys_only_with_include \
            or self.lowercase_timestamps


@dataclass
class FaultConfig:
    """Injected faults for public routes (``/api/v1``); never applied to ``/_sim``.

    All rates are probabilities in [0, 1] drawn per public request from ``random.Random(seed)``
    so that the same request sequence yields the same faults. ``reset_rate``, ``timeout_rate``,
    ``error_rate`` and ``lost_response_rate`` share one draw (at most one of them per request;
    their sum must be <= 1). ``bad_page_rate`` has its own draw and only affects successful
    ``GET /time_entries`` lists.

    Attributes:
        error_rate: answer a status from ``statuses`` without doing anything.
        statuses: HTTP statuses used by ``error_rate`` (default 500, 502, 503).
        latency_ms: fixed delay added before every public request is handled.
        timeout_rate: hang ``SimConfig.hang_seconds`` then close the connection, nothing done.
        reset_rate: close the connection abruptly without a response, nothing done.
        lost_response_rate: apply the request, then drop the connection without answering.
        rate_limit_per_minute: overrides ``SimConfig.rate_limit_per_minute`` when not ``None``.
        rate_limit_window: seconds of the sliding window the rate limit counts requests in
            (default 60: "per minute"; 1 models a per-second limit, so a test of the client's
            adaptation does not wait a minute per window).
        retry_after: overrides ``SimConfig.retry_after`` when not ``None``.
        seed: RNG seed for the fault draws.
        bad_page_rate: probability that a successful list page is corrupted.
        bad_page_kinds: corruption kinds to pick from: ``truncated`` (JSON cut in half),
            ``html`` (200 ``text/html`` body), ``missing_ids`` (``results`` names an id that is
            absent from ``time_entries``).
    """

    error_rate: float = 0.0
    statuses: list[int] = field(default_factory=lambda: [500, 502, 503])
    latency_ms: float = 0.0
    timeout_rate: float = 0.0
    reset_rate: float = 0.0
    lost_response_rate: float = 0.0
    rate_limit_per_minute: int | None = None
    rate_limit_window: float = 60.0
    retry_after: float | None = None
    seed: int = 0
    bad_page_rate: float = 0.0
    bad_page_kinds: list[str] = field(default_factory=lambda: list(BAD_PAGE_KINDS))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build and validate a FaultConfig from a JSON object; raises ValueError on bad input.

        Unknown keys are rejected so typos in tests do not silently disable a fault. ``null``
        for a key means its default.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault option(s): {', '.join(unknown)}")
        kwargs = {k: v for k, v in data.items() if v is not None}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError when a value is out of range or of the wrong type."""
        for name in ("error_rate", "timeout_rate", "reset_rate", "lost_response_rate",
                     "bad_page_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 \
                    or math.isnan(v):
                raise ValueError(f"{name} must be a number between 0 and 1")
        total = self.error_rate + self.timeout_rate + self.reset_rate + self.lost_response_rate
        if total > 1.0 + 1e-9:
            raise ValueError("error_rate + timeout_rate + reset_rate + lost_response_rate must be <= 1")
        if isinstance(self.latency_ms, bool) or not isinstance(self.latency_ms, (int, float)) \
                or self.latency_ms < 0:
            raise ValueError("latency_ms must be a non-negative number")
        if not isinstance(self.statuses, list) or not self.statuses or not all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599
                for s in self.statuses):
            raise ValueError("statuses must be a non-empty list of HTTP status codes")
        if self.rate_limit_per_minute is not None and (
                isinstance(self.rate_limit_per_minute, bool)
                or not isinstance(self.rate_limit_per_minute, int)
                or self.rate_limit_per_minute < 1):
            raise ValueError("rate_limit_per_minute must be a positive integer or null")
        if isinstance(self.rate_limit_window, bool) or not isinstance(
                self.rate_limit_window, (int, float)) or not 0 < self.rate_limit_window <= 3600:
            raise ValueError("rate_limit_window must be a number of seconds in (0, 3600]")
        if self.retry_after is not None and (
                isinstance(self.retry_after, bool) or not isinstance(self.retry_after, (int, float))
                or self.retry_after < 0):
            raise ValueError("retry_after must be a non-negative number or null")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError("seed must be an integer")
        if not isinstance(self.bad_page_kinds, list) or not self.bad_page_kinds or any(
                k not in BAD_PAGE_KINDS for k in self.bad_page_kinds):
            raise ValueError(f"bad_page_kinds must be a non-empty list drawn from {BAD_PAGE_KINDS}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (the shape ``GET /_sim/faults`` answers)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
