"""The Kantata client against aioresponses: retries, back-off, classification, no blind POST
retries, and the token kept out of errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr

from syncd import budget as budget_module
from syncd.budget import RequestBudget
from syncd.errors import (
    STOPS_THE_RUN,
    AuthError,
    FatalAPIError,
    KantataUnreachable,
    MalformedResponseError,
    RetriableAPIError,
)
from syncd.kantata import SILENT_LIMIT, KantataClient, RetryPolicy, Silence
from syncd.pgserver import free_port
from tests.silent_kantata import silent_kantata

BASE = "http://127.0.0.1:9/api/v1"
TOKEN = "tok-SECRET-123456"
LIST = re.compile(r"^http://127\.0\.0\.1:9/api/v1/time_entries(\?.*)?$")


def envelope(*ids: int) -> dict[str, Any]:
    return {"count": len(ids), "meta": {"count": len(ids), "page_count": 1, "page_number": 1,
                                       "page_size": 200},
            "results": [{"key": "time_entries", "id": str(i)} for i in ids],
            "time_entries": {str(i): {"id": str(i), "updated_at": "2026-01-01T00:00:00-08:00",
                                      "date_performed": "2026-01-01", "time_in_minutes": 5,
                                      "workspace_id": "7", "user_id": "8", "story_id": None,
                                      "role_id": None}
                             for i in ids}}


@pytest.fixture
async def client() -> AsyncIterator[KantataClient]:
    async with aiohttp.ClientSession() as session:
        budget = RequestBudget(60_000)
        yield KantataClient(session, BASE, SecretStr(TOKEN), budget=budget,
                            retry=RetryPolicy(max_retries=3, base=0.001, cap=0.01,
                                              retry_after_cap=0.05))
        await budget.close()


async def test_list_page_sends_visibility_filters_and_auth(client: KantataClient) -> None:
    with aioresponses() as m:
        m.get(LIST, payload=envelope(1, 2))
        page = await client.list_page({"page": "1"})
        assert [e.id for e in page.entries] == [1, 2]
        (key, calls), = m.requests.items()
        assert key[0] == "GET"
        url = str(key[1])
        assert "from_archived_workspaces=true" in url and "on_my_account=false" in url
        assert calls[0].kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


async def test_list_pages_without_foreign_keys_teach_the_client_to_include_them(
        client: KantataClient) -> None:
    """The contract gives workspace_id/user_id/story_id/role_id only with their include=: a
    page without them is asked for again with include=, and so is every later list request."""
    bare = envelope(1)
    for e in bare["time_entries"].values():
        for k in ("workspace_id", "user_id", "story_id", "role_id"):
            del e[k]
    with aioresponses() as m:
        m.get(LIST, payload=bare)
        m.get(LIST, payload=envelope(1))
        m.get(LIST, payload=envelope(2))
        page = await client.list_page({"page": "1"})
        assert page.entries[0].workspace_id == 7 and not page.absent_keys
        await client.list_page({"page": "2", "include": "external_references"})
        urls = [str(k[1]) for k, calls in m.requests.items() for _ in calls]
    assert "include" not in urls[0]
    assert "include=workspace,user,story,role" in urls[1]
    assert "include=external_references,workspace,user,story,role" in urls[2]
    assert client.include_fks


async def test_retries_5xx_then_succeeds(client: KantataClient) -> None:
    with aioresponses() as m:
        m.get(LIST, status=500)
        m.get(LIST, status=503, payload={"errors": [{"type": "system", "message": "down"}]})
        m.get(LIST, payload=envelope(1))
        page = await client.list_page({})
        assert [e.id for e in page.entries] == [1]
        assert sum(len(v) for v in m.requests.values()) == 3


async def test_gives_up_after_max_retries(client: KantataClient) -> None:
    with aioresponses() as m:
        m.get(LIST, status=502, repeat=True)
        with pytest.raises(RetriableAPIError) as err:
            await client.list_page({})
        assert err.value.status == 502
        assert sum(len(v) for v in m.requests.values()) == 4  # 1 + 3 retries


async def test_429_lowers_the_budget_and_honours_capped_retry_after(
        client: KantataClient) -> None:
    with aioresponses() as m:
        m.get(LIST, status=429, headers={"Retry-After": "3600"})
        m.get(LIST, payload=envelope(1))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await client.list_page({})
        # capped at retry_after_cap=0.05 s, not an hour; then the budget's probe for a 1 s
        # window (nothing was admitted before the 429, so nothing is learned from it)
        assert loop.time() - t0 < 2.0
        assert client.budget.throttles == 1 and client.budget.probes == 1
        assert client.budget.learned is None


async def test_timeouts_and_resets_are_retried(client: KantataClient) -> None:
    with aioresponses() as m:
        m.get(LIST, exception=asyncio.TimeoutError())
        m.get(LIST, exception=aiohttp.ServerDisconnectedError())
        m.get(LIST, payload=envelope(4))
        page = await client.list_page({})
        assert [e.id for e in page.entries] == [4]


async def test_malformed_200_is_retried_then_reported(client: KantataClient) -> None:
    with aioresponses() as m:
        m.get(LIST, body="<html>oops</html>", repeat=True)
        with pytest.raises(MalformedResponseError, match="HTML"):
            await client.list_page({})


@pytest.mark.parametrize(("status", "exc"), [(401, AuthError), (403, AuthError),
                                             (400, FatalAPIError), (404, FatalAPIError)])
async def test_4xx_is_not_retried_and_carries_kantata_message(
        client: KantataClient, status: int, exc: type[Exception]) -> None:
    with aioresponses() as m:
        m.get(LIST, status=status, payload={"errors": [{"type": "oauth",
                                                        "message": "Invalid OAuth 2 Request"}]})
        with pytest.raises(exc, match="Invalid OAuth 2 Request") as err:
            await client.list_page({})
        assert TOKEN not in str(err.value)
        assert sum(len(v) for v in m.requests.values()) == 1


async def test_a_refused_read_names_the_url_and_the_setting_to_check() -> None:
    """A new user's wrong base URL gave `FatalAPIError: HTTP 404: no error message`: the
    message now shows the URL asked (no query string, no user, password or token) and points
    to SYNCD_KANTATA_BASE_URL; a 401 or 403 points to SYNCD_KANTATA_TOKEN (or _FILE)."""
    base = "http://127.0.0.1:9/v1"  # a base URL missing its /api
    wrong = re.compile(r"^http://127\.0\.0\.1:9/v1/time_entries(\?.*)?$")
    async with aiohttp.ClientSession() as session:
        budget = RequestBudget(60_000)
        c = KantataClient(session, base, SecretStr(TOKEN), budget=budget,
                          retry=RetryPolicy(max_retries=0))
        with aioresponses() as m:
            m.get(wrong, status=404, body=b"")
            m.get(wrong, status=401, payload={"errors": [{"message": f"bad {TOKEN}"}]})
            m.get(wrong, status=403, body=b"")
            m.get(wrong, status=400, payload={"errors": [{"message": "bad filter"}]})
            errors = []
            for _ in range(4):
                with pytest.raises(FatalAPIError) as err:
                    await c.list_page({"page": "1"})
                errors.append(str(err.value))
        with_user = KantataClient(session, f"http://me:{TOKEN}@127.0.0.1:9/api/v1/",
                                  SecretStr(TOKEN), budget=budget)
        assert with_user.where("/time_entries") == "http://127.0.0.1:9/api/v1/time_entries"
        await budget.close()
    url = "http://127.0.0.1:9/v1/time_entries"
    assert errors == [
        f"HTTP 404: no error message (GET {url} does not exist; check SYNCD_KANTATA_BASE_URL "
        "(Kantata's API root, ending in /api/v1, like https://api.mavenlink.com/api/v1))",
        f"HTTP 401: bad [redacted] (GET {url} refused the token; check SYNCD_KANTATA_TOKEN "
        "or SYNCD_KANTATA_TOKEN_FILE)",
        f"HTTP 403: no error message (GET {url} denied the token access; check "
        "SYNCD_KANTATA_TOKEN or SYNCD_KANTATA_TOKEN_FILE)",
        "HTTP 400: bad filter"]  # names no setting


async def test_bulk_create_is_never_retried_blindly(client: KantataClient) -> None:
    with aioresponses() as m:
        m.post(LIST, exception=aiohttp.ServerDisconnectedError())
        with pytest.raises(RetriableAPIError) as err:
            await client.create_entries([{"workspace_id": 1}])
        assert err.value.status == 0
        assert TOKEN not in str(err.value)
        assert sum(len(v) for v in m.requests.values()) == 1


async def test_bulk_create_returns_422_body_for_item_mapping(client: KantataClient) -> None:
    body = {"errors": [{"type": "validation", "field": "time_in_minutes", "index": 1,
                        "message": "Time in minutes can't be blank"}]}
    with aioresponses() as m:
        m.post(LIST, status=422, payload=body)
        resp = await client.create_entries([{"a": 1}, {"b": 2}])
        assert resp.status == 422 and resp.body == body


def test_repr_hides_token(client: KantataClient) -> None:
    assert TOKEN not in repr(client)


async def test_a_long_run_of_429s_costs_time_not_the_read(
        client: KantataClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # the budget's probes wait up to the candidate windows (1 s … 1 h); scaled down here
    monkeypatch.setattr(budget_module, "CANDIDATE_WINDOWS",
                        tuple(w / 1000 for w in budget_module.CANDIDATE_WINDOWS))
    with aioresponses() as m:
        for _ in range(10):  # more than max_retries=3
            m.get(LIST, status=429)
        m.get(LIST, payload=envelope(7))
        page = await client.list_page({})
        assert [e.id for e in page.entries] == [7]
        assert sum(len(v) for v in m.requests.values()) == 11


async def test_a_refused_connection_is_known_not_sent_unlike_a_timeout_or_reset(
        client: KantataClient) -> None:
    async with aiohttp.ClientSession() as session:
        nobody = KantataClient(session, f"http://127.0.0.1:{free_port()}/api/v1",
                               SecretStr(TOKEN), budget=client.budget)
        with pytest.raises(RetriableAPIError) as refused:  # a real connect, refused
            await nobody.create_entries([{"workspace_id": 1}])
    assert refused.value.status == 0 and refused.value.sent is False
    assert "could not connect" in str(refused.value) and TOKEN not in str(refused.value)
    with aioresponses() as m:
        m.post(LIST, exception=asyncio.TimeoutError())
        m.post(LIST, exception=aiohttp.ServerDisconnectedError())
        m.post(LIST, status=503)
        for _ in range(3):
            with pytest.raises(RetriableAPIError) as maybe:
                await client.create_entries([{"workspace_id": 1}])
            assert maybe.value.sent is True  # the request may have reached Kantata


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5),
    ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),       # IMF-fixdate, 30 s after NOW
    ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),   # obsolete RFC 850 form
    ("Wed Oct 21 07:28:10 2015", 10.0),            # obsolete asctime form
    ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),        # already past: retry now
    (None, None), ("", None), ("soon", None), ("-5", None), ("nan", None),
])
def test_retry_after_reads_seconds_and_http_dates(value: str | None,
                                                  seconds: float | None) -> None:
    """RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds (issue #23: the date form was
    ignored)."""
    from datetime import UTC, datetime

    from syncd.kantata import parse_retry_after

    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now) == seconds


async def test_a_throttled_retry_is_a_warning_with_the_hint_and_the_cap(
        client: KantataClient) -> None:
    """Issue #23: a capped Retry-After was logged at info as `wait: 4.0` alone."""
    from email.utils import format_datetime
    from datetime import UTC, datetime, timedelta

    from structlog.testing import capture_logs

    date = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    with aioresponses() as m, capture_logs() as logs:
        m.get(LIST, status=429, headers={"Retry-After": date})
        m.get(LIST, status=503)
        m.get(LIST, payload=envelope(1))
        await client.list_page({})
    retries = [e for e in logs if e["event"] == "request_retry"]
    assert [e["log_level"] for e in retries] == ["warning", "info"]
    throttled = retries[0]
    assert 85 <= throttled["retry_after"] <= 90  # the HTTP-date, read
    assert throttled["retry_after_cap"] == 0.05 and throttled["capped"] is True
    assert throttled["wait"] == 0.05
    assert retries[1]["retry_after"] is None and retries[1]["capped"] is False


async def test_a_read_that_never_connects_through_its_retries_says_kantata_is_unreachable(
        client: KantataClient) -> None:
    """`syncd verify` against a closed port went on window after window for 15 minutes: a
    read whose every attempt could not connect is KantataUnreachable (errors.STOPS_THE_RUN),
    one that got any answer or may have been sent stays an ordinary retriable error."""
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{free_port()}/api/v1"
        nobody = KantataClient(session, base, SecretStr(TOKEN), budget=client.budget,
                               retry=RetryPolicy(max_retries=2, base=0.001, cap=0.01))
        with pytest.raises(KantataUnreachable) as gone:
            await nobody.list_page({})
    assert isinstance(gone.value, STOPS_THE_RUN) and gone.value.sent is False
    assert "cannot be reached" in str(gone.value) and base in str(gone.value)
    assert "all 3 attempts" in str(gone.value) and TOKEN not in str(gone.value)
    refused = aiohttp.ClientConnectorError(None, OSError(111, "refused"))  # type: ignore[arg-type]
    with aioresponses() as m:  # one answer among the failures: not "unreachable"
        m.get(LIST, status=503)
        for _ in range(3):
            m.get(LIST, exception=refused)
        with pytest.raises(RetriableAPIError) as other:
            await client.list_page({})
    assert not isinstance(other.value, KantataUnreachable) and other.value.sent is False


def test_silence_counts_unanswered_requests_one_after_another_and_any_answer_resets_it(
        ) -> None:
    """The pure decision of `kantata.Silence`: `SILENT_LIMIT` requests in a row without an
    answer; requests overlapping a counted one (concurrent windows) are the same silence."""
    s = Silence(limit=3)
    assert [s.unanswered(0.0, 1.0), s.unanswered(1.5, 2.5)] == [False, False]
    assert s.unanswered(2.0, 3.0) is False and s.count == 2  # started inside the last one
    s.answered()  # any answer, even an error status
    assert s.count == 0
    assert [s.unanswered(t, t + 1) for t in (10.0, 11.0, 12.0)] == [False, False, True]
    assert s.reached and Silence().limit == SILENT_LIMIT == 3


async def test_a_kantata_that_accepts_but_never_answers_is_given_up_after_three_requests(
        client: KantataClient) -> None:
    """A new user's sync and verify ran for 13+ minutes against a Kantata that accepted
    connections and answered nothing: every request waited SYNCD_REQUEST_TIMEOUT through
    every retry. The third unanswered request in a row is KantataUnreachable
    (errors.STOPS_THE_RUN); a shrinkable page's timeout does not count (its size is halved)."""
    async with silent_kantata() as sk, aiohttp.ClientSession() as session:
        hung = KantataClient(session, sk.url, SecretStr(TOKEN), budget=client.budget,
                             retry=RetryPolicy(max_retries=6, base=0.001, cap=0.01),
                             request_timeout=0.2)
        for _ in range(4):  # a too-big page: the caller halves it, nothing counted
            with pytest.raises(RetriableAPIError) as big:
                await hung.list_page({}, shrinkable=True)
            assert not isinstance(big.value, KantataUnreachable)
        assert hung.silence.count == 0 and sk.requests == 4
        with pytest.raises(KantataUnreachable) as gone:
            await hung.list_page({})
    assert sk.requests == 4 + 3  # not 7 attempts
    assert isinstance(gone.value, STOPS_THE_RUN) and gone.value.sent is True
    assert str(gone.value) == (
        f"Kantata at {sk.url} accepted connections but answered none of the last 3 requests "
        "within SYNCD_REQUEST_TIMEOUT (0.2 s), the last: GET /time_entries timed out: "
        "TimeoutError; check SYNCD_KANTATA_BASE_URL and Kantata's status")


async def test_timeouts_between_answers_are_retried_as_before(client: KantataClient) -> None:
    """Two timeouts, an error status (an answer: the count starts again), two more timeouts:
    retried to the answer, never KantataUnreachable."""
    with aioresponses() as m:
        for exc in (asyncio.TimeoutError(), aiohttp.ServerDisconnectedError()):
            m.get(LIST, exception=exc)
        m.get(LIST, status=503)
        for exc in (asyncio.TimeoutError(), aiohttp.ServerDisconnectedError()):
            m.get(LIST, exception=exc)
        m.get(LIST, payload=envelope(5))
        client.retry = RetryPolicy(max_retries=6, base=0.001, cap=0.01)
        page = await client.list_page({})
    assert [e.id for e in page.entries] == [5] and client.silence.count == 0


async def test_a_shutdown_ends_a_read_waiting_to_be_retried(client: KantataClient) -> None:
    """The daemon's SIGTERM sets `stopping`: a read in its back-off (here 30 s after a 503)
    ends at once with StoppedWaiting, without another request; a read whose back-off ends
    before a shutdown is retried as ever."""
    from syncd.errors import StoppedWaiting

    client.retry = RetryPolicy(max_retries=3, base=30.0, cap=30.0)
    client.stopping = asyncio.Event()
    with aioresponses() as m:
        m.get(LIST, status=503, repeat=True)
        read = asyncio.ensure_future(client.list_page({"page": "1"}))
        while not m.requests:  # the first attempt was answered: now in its back-off
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        client.stopping.set()
        with pytest.raises(StoppedWaiting, match="was not retried"):
            await read
        assert asyncio.get_running_loop().time() - started < 1.0
        assert sum(len(calls) for calls in m.requests.values()) == 1
    client.retry = RetryPolicy(max_retries=3, base=0.001, cap=0.01)
    client.stopping = asyncio.Event()
    with aioresponses() as m:
        m.get(LIST, status=503)
        m.get(LIST, payload=envelope(1))
        page = await client.list_page({"page": "1"})
        assert [e.id for e in page.entries] == [1]


def test_a_create_a_shutdown_stopped_before_it_was_sent_needs_no_lookup() -> None:
    """StoppedWaiting (a request that waited for its turn when the daemon began to shut
    down) left nothing at Kantata: the push's create is retried without the lookup settle
    a create whose answer was lost waits for."""
    from syncd import push
    from syncd.errors import StoppedWaiting

    stopped = push._transient(StoppedWaiting("shutting down"), sent=True)
    lost = push._transient(RetriableAPIError(0, "no answer"), sent=True)
    assert stopped.min_delay == 0.0 and lost.min_delay == push.LOOKUP_SECONDS > 0
