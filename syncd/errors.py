"""syncd's exceptions, grouped by what the caller should do about them.

`RetriableError`: wait and try again (429, 5xx, timeouts, resets, database unavailable).
`FatalError`: stop this run and tell an operator (bad token, bad configuration, migrations).
`SkippableError`: one record is bad; record it, keep going with the rest.
Messages never contain the Kantata token or a database password.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

REDACTED = "[redacted]"
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never let `value` (at least 4 characters) appear in an error message: `redact` replaces
    it. Called for the Kantata token and the database password (also by `logs.register_secret`)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `[redacted]`. Applied to text that came
    from outside (Kantata's error messages, which could quote the Authorization header) and to
    every error written to the run history or printed by the CLI."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def dsn_passwords(dsn: str | None) -> list[str]:
    """The passwords a PostgreSQL URL carries: the `user:password@` one and every `password=`
    query parameter (libpq connection URIs, PostgreSQL docs 34.1.1.2, accept both). Empty for
    None, a URL without one, or text that is not a URL."""
    if not dsn:
        return []
    try:
        parts = urlsplit(dsn)
        found = [parts.password] if parts.password else []
    except ValueError:  # e.g. a port that is not a number
        return []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
              if k == "password" and v]
    return found


def mask_dsn(dsn: str, replacement: str | None = "********") -> str:
    """`dsn` with its passwords (`user:password@` and `password=` query parameters) replaced
    by `replacement`, or left out when it is None (for a `psql` line to copy). Text that is not
    a URL comes back with the passwords found in it replaced, or as `<database URL>`."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "<database URL>"
    if password is None and "password=" not in parts.query:
        return dsn  # unchanged (geturl would turn postgresql:///db into postgresql:/db)
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}@{host}" if replacement is None
                               else f"{user}:{replacement}@{host}")
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            kept = [(k, v) for k, v in pairs if k != "password"] if replacement is None else \
                [(k, replacement if k == "password" else v) for k, v in pairs]
            parts = parts._replace(query=urlencode(kept, safe="*"))
    return parts.geturl()


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""


class RetriableError(SyncdError):
    """A transient failure: the same call may succeed later."""


class RetriableAPIError(RetriableError):
    """Kantata answered 429/5xx, timed out, or the connection broke (`status` 0 = no answer).

    `sent` is False only when the request certainly never left (the connection could not be
    made), so a write needs no lookup before it is sent again; otherwise it may have reached
    Kantata.
    """

    def __init__(self, status: int, message: str, *, retry_after: float | None = None,
                 request_id: str | None = None, sent: bool = True) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id
        self.sent = sent


class KantataUnreachable(RetriableAPIError):
    """Kantata cannot be worked with at all: either no connection could be made on any attempt
    of one request, through the whole retry budget (`SYNCD_MAX_RETRIES` with back-off: refused,
    host unreachable, DNS, TLS handshake, connect timeout; `sent` False), or Kantata accepted
    connections but answered none of `kantata.SILENT_LIMIT` requests in a row (each timed out
    after SYNCD_REQUEST_TIMEOUT or lost its connection; `sent` True, `kantata.Silence`).
    Nothing else would get through either, so a command stops at the first such request
    instead of trying window after window (`syncd sync`, `verify`, `reconcile`); the daemon
    tries again at its next scheduled run. Raised by reads only."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(0, message, sent=sent)


class StoppedWaiting(RetriableError):
    """A shutdown (the daemon's first SIGTERM) began while a request waited: to be retried (a
    read's back-off, up to SYNCD_BACKOFF_CAP or a capped `Retry-After`, seconds) or for its
    turn under Kantata's rate limit. It ends at once, unsent (`sent` False, as
    RetriableAPIError says it: a push's create is then retried without a lookup), and its job
    stops as between two pages; its run is recorded `interrupted`."""

    sent = False


class MalformedResponseError(RetriableError):
    """A 200 answer that is not the documented envelope (truncated JSON, HTML, missing ids)."""


class PagingError(MalformedResponseError):
    """A paged read that does not progress: a page repeating an earlier one, a page number
    not echoed, more pages than `count` allows, a negative `count` (`pagination.PageGuard`).
    Retried next run, never in a loop within one."""


class PageIgnoredError(PagingError):
    """The server does not page as asked: a page repeats an earlier one, `meta.page_number`
    does not echo `page`, or a page lists entries beyond what `count` allows. The contract
    declares `page` on GET /time_entries without promising it is honoured with every filter
    (issue #27): the pull then reads ranges that fit one page (`windows.Narrowing`)."""


class DatabaseUnavailable(RetriableError):
    """PostgreSQL cannot be reached right now."""


class FatalError(SyncdError):
    """Needs an operator: retrying without a change will not help."""


class FatalAPIError(FatalError):
    """Kantata refused the request in a way retrying will not fix (4xx other than 429)."""

    def __init__(self, status: int, message: str, *, errors: list[dict[str, object]] | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.errors = errors or []
        self.request_id = request_id


class AuthError(FatalAPIError):
    """401/403: the token is missing, revoked, or lacks permission."""


class WrongBaseURL(FatalAPIError):
    """404 on the list endpoint `GET /time_entries`, which every Kantata has (TE spec paths):
    SYNCD_KANTATA_BASE_URL does not name Kantata's API root, so no request can succeed."""


#: Errors after which no other request of the run can succeed: the token is refused, the base
#: URL names no Kantata API, or Kantata cannot be reached at all. A use case that reports other errors per window (backfill,
#: reconciliation, verify) re-raises these, which ends the whole run at once.
STOPS_THE_RUN: tuple[type[SyncdError], ...] = (AuthError, WrongBaseURL, KantataUnreachable)


class ConfigError(FatalError):
    """Invalid configuration; the message names the setting."""


class MigrationError(FatalError):
    """Migrations are missing, pending, or an applied file was changed."""


class SkippableError(SyncdError):
    """One record is unusable; the rest of the work goes on."""


class InvalidRecord(SkippableError):
    """A time entry from Kantata that cannot be stored as-is; `reason` says which field and why."""

    def __init__(self, entry_id: str | None, reason: str) -> None:
        super().__init__(f"time entry {entry_id or '?'}: {reason}")
        self.entry_id = entry_id
        self.reason = reason

