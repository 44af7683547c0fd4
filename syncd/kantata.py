"""The aiohttp boundary to Kantata OX's time-entries API (the only module that imports aiohttp
for client use).

Contract: `time-entries.openapi.yml` (`GET/POST/DELETE /time_entries`, `GET/PUT/DELETE
/time_entries/{id}`) and api-notes §1-§10. Every request waits for a connection slot and for the
shared `RequestBudget`, then runs under its own timeout (so time queued does not count). Reads are
retried with full-jitter exponential back-off on 429, 5xx, timeouts, resets and malformed
bodies; `Retry-After` (seconds or an HTTP-date, RFC 9110 §10.2.3) is honoured when present but
capped. Writes are never retried here: their
outcome may be ambiguous, which the outbox reconciles (a blind re-POST would duplicate).
The token appears only in the Authorization header and never in an error or log line.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import structlog
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
)

from syncd import batching, pagination
from syncd.budget import RequestBudget
from syncd.errors import (
    AuthError,
    FatalAPIError,
    KantataUnreachable,
    MalformedResponseError,
    RetriableAPIError,
    RetriableError,
    StoppedWaiting,
    WrongBaseURL,
    redact,
    register_secret,
)
from syncd.metrics import Metrics
from syncd.models import Page, Priority

__all__ = ["RUN_REQUESTS", "SILENT_LIMIT", "ApiResponse", "KantataClient", "RequestTally",
           "RetryPolicy", "Silence", "classify", "error_messages", "parse_retry_after",
           "setting_hint"]

log = structlog.get_logger(__name__)

#: Failures while connecting, before a byte of the request is written: the request certainly
#: never reached Kantata (refused, unreachable, DNS, TLS handshake, connect timeout).
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

#: The filters that undo Kantata's visibility defaults (api-notes §4): without them archived and
#: other-account entries are invisible and would later look like deletions.
VISIBILITY = {"from_archived_workspaces": "true", "on_my_account": "false"}

#: The associations whose foreign keys (`pagination.INCLUDE_GATED`) the contract returns only
#: when they are included (TE TimeEntry schema: "will only be included in the response if").
FK_INCLUDES = ("workspace", "user", "story", "role")


#: Requests in a row, process-wide, that Kantata accepted but never answered (each timed out
#: after SYNCD_REQUEST_TIMEOUT or lost its connection, with no status) before a read gives up
#: with `KantataUnreachable`: a Kantata that accepts connections and answers nothing otherwise
#: cost every request its whole retry budget of timeouts, window after window (13+ minutes
#: for `syncd sync`). 3 silences in a row (a single outage of 3 request timeouts, 4.5 minutes
#: at the default) are not a blip; any answer, even an error status, starts the count again.
SILENT_LIMIT = 3


@dataclass(slots=True)
class Silence:
    """The count of consecutive unanswered requests (`SILENT_LIMIT`); plain data, no I/O.

    `unanswered(started, ended)` records a request (monotonic seconds) that got no answer and
    returns whether `limit` is reached; a request that started before the last counted one
    ended overlapped it (concurrent windows timing out together are one silence, not several),
    so `limit` counts silences one after another, at least `limit` request timeouts in all.
    `answered()` is called for any answer with a status and resets the count. Requests whose
    timeout a smaller page may avoid (`too_slow` on a shrinkable page) are not recorded: the
    page-size halving (`pagination.PageSize`) handles them."""

    limit: int = SILENT_LIMIT
    count: int = 0
    since: float = -math.inf  # when the last counted silence ended

    def answered(self) -> None:
        self.count, self.since = 0, -math.inf

    def unanswered(self, started: float, ended: float) -> bool:
        if started >= self.since:
            self.count += 1
            self.since = ended
        return self.reached

    @property
    def reached(self) -> bool:
        return self.count >= self.limit


def too_slow(exc: BaseException) -> bool:
    """A failure a smaller page may avoid: no answer (timeout, reset) or a 5xx (a gateway
    giving up on a slow page). Not a 429, a refused connection, or a malformed body."""
    return isinstance(exc, RetriableAPIError) and exc.sent and (
        exc.status == 0 or exc.status >= 500)


def _no_hidden_resend(session: aiohttp.ClientSession) -> None:
    """Stop aiohttp from sending a PUT or DELETE a second time on its own when the connection
    drops before the answer (it does so for "idempotent" methods on a reused connection,
    aio-libs/aiohttp#10790, with no public switch): a PUT whose answer was lost may have been
    applied, and a second one sent blind would overwrite an edit made in between; the outbox
    reads the entry first instead. Raises RuntimeError when the aiohttp in use no longer has
    the switch (syncd relies on it; it must not silently resend writes)."""
    if not hasattr(session, "_retry_connection"):
        raise RuntimeError(
            f"aiohttp {aiohttp.__version__} has no ClientSession._retry_connection: syncd "
            "cannot stop it resending a write whose answer was lost; pin aiohttp to a "
            "version that has it")
    session._retry_connection = False


def with_includes(params: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """`params` with `names` added to its comma-separated `include` (order kept, no repeats)."""
    have = [n for n in params.get("include", "").split(",") if n]
    return {**params, "include": ",".join(dict.fromkeys([*have, *names]))}


@dataclass(slots=True)
class RequestTally:
    """Requests sent on behalf of one job run (`n`, counted as each is sent)."""

    n: int = 0


#: The tally of the job run this code runs for (set by `runs.job_run`; inherited by the tasks
#: the run starts). One client serves every job, so its own `requests_sent` mixes them: a push
#: that sent nothing was charged the concurrent pull's requests (issue #23).
RUN_REQUESTS: ContextVar[RequestTally | None] = ContextVar("syncd_run_requests", default=None)


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """A Kantata answer: HTTP `status`, decoded JSON `body` (None when empty), `request_id`."""

    status: int
    body: Any
    request_id: str | None
    raw: bytes = b""
    storable: bool = False  # `body` provably holds no NUL / unpaired surrogate (pagination)
    #: A list page already decoded by `pagination.decode_page_typed` (`send(typed=True)`);
    #: `body` is then None.
    page: Page | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Back-off for reads: up to `max_retries` retries, full jitter in
    [0, min(`cap`, `base`·2^attempt)] seconds, `Retry-After` capped at `retry_after_cap`; a 429
    without `Retry-After` goes straight back to the request budget, which holds it until
    Kantata has room (`budget.RequestBudget`)."""

    max_retries: int = 6
    base: float = 1.0
    cap: float = 60.0
    retry_after_cap: float = 120.0

    max_retries_throttled: int = 30

    def stop(self, state: RetryCallState) -> bool:
        """Give up after `max_retries` retries, or `max_retries_throttled` while Kantata keeps
        answering 429: a rate limit costs time, not data."""
        exc = state.outcome.exception() if state.outcome else None
        limit = self.max_retries
        if isinstance(exc, RetriableAPIError) and exc.status == 429:
            limit = max(limit, self.max_retries_throttled)
        return state.attempt_number > limit

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(max(retry_after, 0.0), self.retry_after_cap))
        if getattr(exc, "status", None) == 429:
            return 0.0  # the request budget holds the retry until Kantata has room (budget.py)
        return random.uniform(0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))


def error_messages(body: Any) -> str:
    """Kantata's own messages from an `{"errors":[{type,message,...}]}` body (api-notes §9),
    with registered secrets redacted (a server or proxy may quote the Authorization header)."""
    if isinstance(body, Mapping) and isinstance(body.get("errors"), list):
        msgs = [str(e.get("message", "")) for e in body["errors"] if isinstance(e, Mapping)]
        if any(msgs):
            return redact("; ".join(m for m in msgs if m))
    return "no error message"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header value (RFC 9110 §10.2.3): either
    delay-seconds (a non-negative decimal integer; a fraction is accepted too) or an HTTP-date
    (IMF-fixdate, or the obsolete RFC 850 / asctime forms), counted from `now` (aware) and 0
    when already past. None when absent or unreadable (then the client backs off normally)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110: an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    return seconds if seconds >= 0 and seconds == seconds else None  # not negative, not NaN


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers.get("Retry-After"), datetime.now(UTC))


def setting_hint(status: int, method: str, url: str) -> str:
    """What an operator should check after a refused read of `url` (no query string, no
    credentials: `KantataClient.where`), or "" when the status names no setting: 401/403 →
    SYNCD_KANTATA_TOKEN or SYNCD_KANTATA_TOKEN_FILE; 404 on a list or lookup (the contract's paths exist on every Kantata,
    TE spec `/time_entries`) → SYNCD_KANTATA_BASE_URL, which should end in /api/v1."""
    if status in (401, 403):
        what = "refused the token" if status == 401 else "denied the token access"
        return (f"{method} {url} {what}; check SYNCD_KANTATA_TOKEN or "
                "SYNCD_KANTATA_TOKEN_FILE")
    if status == 404:
        return (f"{method} {url} does not exist; check SYNCD_KANTATA_BASE_URL (Kantata's API "
                "root, ending in /api/v1, like https://api.mavenlink.com/api/v1)")
    return ""


def classify(status: int, body: Any, *, request_id: str | None = None,
             retry_after: float | None = None, hint: str = "") -> None:
    """Raise the error class for a non-2xx answer; return for 2xx.

    429, 5xx → RetriableAPIError; 401/403 → AuthError; other 4xx → FatalAPIError (with the
    `errors` list for item mapping). `hint` (`setting_hint`) is appended to a 4xx's message
    after Kantata's own. Source: api-notes §9-§10.
    """
    if 200 <= status < 300:
        return
    msg = error_messages(body)
    if hint and status < 500 and status != 429:
        msg = f"{msg} ({redact(hint)})"
    if status == 429 or status >= 500:
        raise RetriableAPIError(status, msg, retry_after=retry_after, request_id=request_id)
    errors = body.get("errors") if isinstance(body, Mapping) else None
    errs = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    if status in (401, 403):
        raise AuthError(status, msg, errors=errs, request_id=request_id)
    raise FatalAPIError(status, msg, errors=errs, request_id=request_id)


def _endpoint(path: str) -> str:
    return "/time_entries/{id}" if path.count("/") > 1 else path


class KantataClient:
    """Async client for one Kantata account. Shapes are Kantata's JSON (api-notes §2).

    `session` is the process's single aiohttp ClientSession; `base_url` like
    `https://api.mavenlink.com/api/v1`; `budget` is shared by every job; `max_connections`
    bounds requests in flight.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: SecretStr, *,
                 budget: RequestBudget, retry: RetryPolicy | None = None,
                 request_timeout: float = 90.0, connect_timeout: float = 10.0,
                 max_connections: int = 8, metrics: Metrics | None = None) -> None:
        self._session = session
        _no_hidden_resend(session)
        self._base = base_url.rstrip("/")
        register_secret(token.get_secret_value())  # kept out of every error message
        self._auth = {"Authorization": f"Bearer {token.get_secret_value()}",
                      "Accept": "application/json"}
        self.budget = budget
        self.retry = retry or RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=connect_timeout)
        self._slots = asyncio.Semaphore(max_connections)
        self.metrics = metrics or Metrics()
        self.metrics.rate_limit.set(budget.rate_per_minute / 60)
        self.metrics.rate_limit_floor.set(budget.floor / 60)
        self.requests_sent = 0
        #: Set when the process shuts down (`stop_waiting_when`): a read waiting to be retried
        #: then ends at once (`_retry_sleep`, StoppedWaiting).
        self.stopping: asyncio.Event | None = None
        #: Unanswered requests in a row, across every job and window (`SILENT_LIMIT`).
        self.silence = Silence()
        #: Learned from the first list page that lacked them: this Kantata returns the
        #: foreign keys only with their `include=`, so every list request asks for them.
        self.include_fks = False

    def __repr__(self) -> str:  # never show the header dict
        return f"KantataClient({self._base!r})"

    def where(self, path: str) -> str:
        """The URL of `path` as an error may show it: no query string, no user or password."""
        u = urlsplit(self._base + path)
        host = u.netloc.rpartition("@")[2]
        return redact(urlunsplit((u.scheme, host, u.path, "", "")))

    # ------------------------------------------------------------------ transport
    async def send(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                   json: Any = None, priority: Priority = "pull",
                   shrinkable: bool = False, typed: bool = False) -> ApiResponse:
        """Send one request (no retry). Returns any answer with a status; raises
        RetriableAPIError(status 0) when no answer came (timeout, reset, refused), with
        `sent=False` when the connection could not even be made (nothing was sent). A request
        sent but not answered is counted in `silence` unless `shrinkable` (a smaller page may
        be answered); any answer resets the count. `typed`: a 2xx body is first offered to
        `pagination.decode_page_typed` (a list page for PostgreSQL to type); when it takes
        it, the answer carries the Page and no decoded `body`."""
        data = orjson.dumps(json) if json is not None else None
        headers = dict(self._auth)
        if data is not None:
            headers["Content-Type"] = "application/json"
        endpoint = _endpoint(path)
        async with self._slots:
            started = await self.budget.acquire(priority)
            self.requests_sent += 1
            tally = RUN_REQUESTS.get()
            if tally is not None:
                tally.n += 1
            asked = time.monotonic()
            try:
                async with self._session.request(
                        method, self._base + path, params=params, data=data, headers=headers,
                        timeout=self._timeout, allow_redirects=False) as resp:
                    raw = await resp.read()
                    status, rid = resp.status, resp.headers.get("x-request-id")
                    retry_after = _retry_after(resp.headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.budget.unanswered(started)
                self.metrics.requests.labels(endpoint, method, "0").inc()
                sent = not isinstance(exc, _NOT_SENT)
                if sent and not shrinkable:
                    self.silence.unanswered(asked, time.monotonic())
                kind = ("could not connect" if not sent else
                        "timed out" if isinstance(exc, TimeoutError) else "failed")
                raise RetriableAPIError(0, f"{method} {endpoint} {kind}: "
                                           f"{type(exc).__name__}", sent=sent) from None
        self.silence.answered()
        self.metrics.requests.labels(endpoint, method, str(status)).inc()
        if status == 429:
            self.budget.throttled(started)
            self.metrics.throttled.inc()
        else:  # Kantata's limit counted it (a 5xx too)
            self.budget.succeeded(started)
        self.metrics.rate_limit.set(self.budget.rate_per_minute / 60)
        body: Any = None
        storable = False
        if typed and 200 <= status < 300 and raw:
            page = pagination.decode_page_typed(raw)
            if page is not None:
                return ApiResponse(status, None, rid, raw, True, page)
        if raw and status != 204:
            try:
                body, storable = pagination.decode_json_storable(raw)
            except MalformedResponseError:
                if 200 <= status < 300:
                    raise
                body = None
        if status == 429 or status >= 500:
            raise RetriableAPIError(status, error_messages(body), retry_after=retry_after,
                                    request_id=rid)
        return ApiResponse(status, body, rid, raw, storable)

    async def _read(self, path: str, params: Mapping[str, str], priority: Priority,
                    decode: bool, *, shrinkable: bool = False, fast: bool = False
                    ) -> tuple[ApiResponse, Page | None]:
        endpoint = _endpoint(path)

        def retry(exc: BaseException) -> bool:
            # a page that may be too big is not asked for again at the same size: the caller
            # halves it (`pagination.PageSize`); 429s and malformed bodies are retried as ever
            return (isinstance(exc, RetriableError)
                    and not isinstance(exc, (KantataUnreachable, StoppedWaiting))
                    and not (shrinkable and too_slow(exc)))

        def log_retry(state: RetryCallState) -> None:  # the cause of every retry is logged
            exc = state.outcome.exception() if state.outcome else None
            hint = getattr(exc, "retry_after", None)
            throttled = getattr(exc, "status", None) == 429
            # a 429 is logged as a warning (it slows every job sharing the token), with
            # Kantata's Retry-After and whether syncd waits less (SYNCD_RETRY_AFTER_CAP)
            budget_holds = throttled and hint is None  # no back-off: the budget waits
            (log.warning if throttled else log.info)(
                "request_retry", endpoint=endpoint, attempt=state.attempt_number + 1,
                error=f"{type(exc).__name__}: {exc}",
                wait=None if budget_holds else round(state.upcoming_sleep, 3),
                retry_after=None if hint is None else round(hint, 3),
                retry_after_cap=self.retry.retry_after_cap,
                capped=hint is not None and hint > self.retry.retry_after_cap,
                **({"detail": "held by the request budget until Kantata's limit admits it"}
                   if budget_holds else {}))

        unsent_only, attempts = True, 0  # every attempt failed before a byte was sent
        try:
            async for attempt in AsyncRetrying(
                    stop=self.retry.stop, wait=self.retry.wait,
                    retry=retry_if_exception(retry), reraise=True,
                    before_sleep=log_retry, sleep=self._retry_sleep):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.metrics.retries.labels(endpoint).inc()
                    attempts += 1
                    try:
                        resp = await self.send("GET", path, params=params, priority=priority,
                                               shrinkable=shrinkable, typed=decode and fast)
                    except RetriableAPIError as exc:
                        unsent_only = unsent_only and not exc.sent
                        if exc.sent and exc.status == 0 and not shrinkable \
                                and self.silence.reached:
                            raise self._silent(exc) from None
                        raise
                    unsent_only = False
                    return self._decoded(resp, decode, attempt.retry_state.attempt_number,
                                         fast=fast, path=path)
        except KantataUnreachable:
            raise
        except RetriableAPIError as exc:
            if not (unsent_only and attempts > self.retry.max_retries):
                raise
            # the whole retry budget spent without one connection: Kantata cannot be reached
            raise KantataUnreachable(
                f"Kantata cannot be reached at {self._base}: {exc} on all {attempts} attempts "
                "of a request; check SYNCD_KANTATA_BASE_URL and the network") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def stop_waiting_when(self, stopping: asyncio.Event) -> None:
        """From when `stopping` is set (the daemon's first SIGTERM), no request of this client
        waits any more: a read waiting to be retried (its back-off, Kantata's `Retry-After`)
        and a request waiting for its turn under Kantata's rate limit (`budget`, e.g. after a
        429 without `Retry-After`) end at once with StoppedWaiting, sending nothing; requests
        already sent, and starts allowed at once, go on."""
        self.stopping = stopping
        self.budget.give_up_waiting_when(stopping, lambda: StoppedWaiting(
            "shutting down: a request waiting for its turn under Kantata's rate limit was "
            "not sent"))

    async def _retry_sleep(self, seconds: float) -> None:
        """The wait before a read's next attempt (seconds, `RetryPolicy.wait`), cut short by a
        shutdown (`stopping`): raises StoppedWaiting then, so the read and its job end now
        rather than after the back-off (the daemon's grace is 30 s; a back-off may be 60 s,
        a `Retry-After` 120 s)."""
        stopping = self.stopping
        if stopping is None:
            await asyncio.sleep(seconds)
            return
        if not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), seconds)
            except TimeoutError:
                return
        raise StoppedWaiting(f"shutting down: a read waiting {seconds:.1f} s to be retried "
                             "was not retried")

    def _silent(self, last: RetriableAPIError) -> KantataUnreachable:
        """The error of a Kantata that accepts connections but answers nothing (`Silence`);
        `last` is the latest unanswered request's error."""
        return KantataUnreachable(
            f"Kantata at {self._base} accepted connections but answered none of the last "
            f"{self.silence.count} requests within SYNCD_REQUEST_TIMEOUT "
            f"({self._timeout.total:g} s), the last: {last}; check SYNCD_KANTATA_BASE_URL "
            "and Kantata's status",
            sent=True)

    def _decoded(self, resp: ApiResponse, decode: bool, attempt_number: int, *,
                 fast: bool = False, path: str = "/time_entries"
                 ) -> tuple[ApiResponse, Page | None]:
        """Classify and decode one answer of `_read` (raising what `_read` retries); `fast`:
        leave the entries for PostgreSQL to type (`pagination.decode_page_fast`)."""
        try:
            classify(resp.status, resp.body, request_id=resp.request_id,
                     hint=setting_hint(resp.status, "GET", self.where(path)))
        except FatalAPIError as exc:
            if exc.status == 404 and path == "/time_entries":  # the listing itself is missing
                raise WrongBaseURL(exc.status, str(exc).removeprefix("HTTP 404: "),
                                   errors=exc.errors, request_id=exc.request_id) from None
            raise
        if decode and not resp.raw.strip():
            raise MalformedResponseError(f"HTTP {resp.status} response body is empty")
        page = (None if not decode else resp.page if resp.page is not None else
                pagination.decode_page_fast(resp.body, resp.raw, storable=resp.storable)
                if fast else pagination.decode_page(resp.body, storable=resp.storable))
        if page is not None and attempt_number <= self.retry.max_retries:
            missing = [r.entry_id for r in page.rejected
                       if r.reason == pagination.MISSING_FROM_KEYED]
            if missing:  # an inconsistent answer: ask again before rejecting records
                raise MalformedResponseError(
                    f"page lists {len(missing)} id(s) absent from `time_entries` "
                    f"(e.g. {missing[0]})")
        return resp, page

    # ------------------------------------------------------------------ reads
    async def _read_list(self, params: Mapping[str, str], priority: Priority, *,
                         shrinkable: bool = False, fast: bool = False
                         ) -> tuple[ApiResponse, Page]:
        """`GET /time_entries` whose entries carry their foreign keys: a page that lacks them
        (the contract returns them only with their `include=`) teaches the client to ask for
        them on every list request from then on; that page is asked for again at once, with
        a warning in the log (once per client)."""
        if self.include_fks:
            params = with_includes(params, FK_INCLUDES)
        resp, page = await self._read("/time_entries", params, priority, True,
                                      shrinkable=shrinkable, fast=fast)
        assert page is not None
        if page.absent_keys and not self.include_fks:
            self.include_fks = True
            log.warning("kantata_foreign_keys_need_include", absent=sorted(page.absent_keys),
                        detail="list pages without include= lack foreign keys; asking for "
                               f"include={','.join(FK_INCLUDES)} on every list request")
            resp, page = await self._read("/time_entries", with_includes(params, FK_INCLUDES),
                                          priority, True, shrinkable=shrinkable, fast=fast)
            assert page is not None
        if page.absent_keys:
            log.warning("kantata_foreign_keys_absent", absent=sorted(page.absent_keys),
                        detail="absent even with include=; stored values are kept")
        return resp, page

    async def list_page(self, params: Mapping[str, str], *,
                        priority: Priority = "pull", shrinkable: bool = False,
                        fast: bool = False) -> Page:
        """`GET /time_entries` with `params` (visibility overrides added), decoded, its entries
        with their foreign keys (`_read_list`). Retries transient failures; raises
        RetriableError when they persist, FatalAPIError on 4xx. `shrinkable`: the page may be
        too big to answer in time, so a timeout, reset or 5xx is raised at once
        (RetriableAPIError, `too_slow(exc)` true) for the caller to ask a smaller page.
        `fast`: the page's entries are left for PostgreSQL to type (`Page.body`,
        `pagination.decode_page_fast`)."""
        return (await self._read_list({**VISIBILITY, **params}, priority,
                                      shrinkable=shrinkable, fast=fast))[1]

    async def get_by_ids(self, ids: Sequence[int], *, priority: Priority = "push",
                         extra: Mapping[str, str] | None = None) -> Page:
        """`GET /time_entries?only=<ids>` (≤ 200 ids, unpaginated, no 404 on misses;
        api-notes §4, §14 Q18)."""
        if len(ids) > 200:
            raise ValueError("at most 200 ids per only= request")
        params = {"only": ",".join(str(i) for i in ids), **(extra or {})}
        return await self.list_page(params, priority=priority)

    async def find_by_external_refs(self, service_name: str, refs: Sequence[str], *,
                                    priority: Priority = "push") -> Page:
        """Entries carrying an external reference of `service_name` with one of `refs`
        (≤ 200; `external_reference_service_model_refs`, TE spec GET /time_entries)."""
        if len(refs) > 200:
            raise ValueError("at most 200 refs per lookup")
        params = {"external_reference_service_name": service_name,
                  "external_reference_service_model_refs": ",".join(refs),
                  "include": "external_references", "per_page": "200"}
        return await self.list_page(params, priority=priority)

    async def find_refs(self, service_name: str, refs: Sequence[str], *,
                        priority: Priority = "push") -> tuple[Page, dict[str, list[int]]]:
        """`find_by_external_refs` plus which entry ids carry each ref (read from the
        side-loaded `external_references` map, which `Page` does not keep)."""
        if len(refs) > 200:
            raise ValueError("at most 200 refs per lookup")
        params = {**VISIBILITY, "external_reference_service_name": service_name,
                  "external_reference_service_model_refs": ",".join(refs),
                  "include": "external_references", "per_page": "200"}
        resp, page = await self._read_list(params, priority)
        return page, batching.entry_ids_by_ref(resp.body, service_name)

    # ------------------------------------------------------------------ writes (no retry)
    async def create_entries(self, items: Sequence[Mapping[str, Any]]) -> ApiResponse:
        """Bulk `POST /time_entries` with `{"time_entries": [...]}` (≤ 100; all-or-nothing,
        api-notes §6, §14 Q5). Returns the answer for any status < 500 other than 429; raises
        RetriableAPIError when the outcome is unknown (no answer, 429, 5xx)."""
        if not 1 <= len(items) <= 100:
            raise ValueError("bulk create takes 1..100 items")
        # the external references match answers to items; the associations make the answer
        # carry the foreign keys (include-gated in the contract) so the mirror row is whole
        return await self.send("POST", "/time_entries", json={"time_entries": list(items)},
                               params=with_includes({"include": "external_references"},
                                                    FK_INCLUDES), priority="push")

    async def update_entry(self, entry_id: int, fields: Mapping[str, Any]) -> ApiResponse:
        """`PUT /time_entries/{id}` with `{"time_entry": fields}` (partial; api-notes §7)."""
        return await self.send("PUT", f"/time_entries/{entry_id}",
                               json={"time_entry": dict(fields)},
                               params={"include": ",".join(FK_INCLUDES)}, priority="push")

    async def delete_entries(self, ids: Sequence[int]) -> ApiResponse:
        """Bulk `DELETE /time_entries?ids=...` (≤ 100, all-or-nothing, 204; api-notes §8)."""
        if not 1 <= len(ids) <= 100:
            raise ValueError("bulk delete takes 1..100 ids")
        return await self.send("DELETE", "/time_entries",
                               params={"ids": ",".join(str(i) for i in ids)}, priority="push")
