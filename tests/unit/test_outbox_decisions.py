"""Outbox decisions added after the new-user trial: an attempt that certainly sent nothing
leaves no trace of a send (no lookup, no settle); conflict messages in one time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from syncd import batching
from syncd.batching import Outcome, OutboxRow

T = datetime(2026, 3, 1, 10, tzinfo=UTC)


def row(sent_at: datetime | None = None, attempts: int = 1) -> OutboxRow:
    return OutboxRow(id=1, op="create", entry_id=None, payload={"notes": "x"},
                     correlation_key="k", base_updated_at=None, attempts=attempts,
                     sent_at=sent_at)


def decide(r: OutboxRow, o: Outcome) -> batching.Decision:
    return batching.decide(r, o, max_attempts=3, backoff_base=1, backoff_cap=60)


def test_an_attempt_that_sent_nothing_restores_the_earlier_sent_at() -> None:
    refused = Outcome(kind="transient", message="could not connect", sent=False)
    d = decide(row(), refused)
    assert (d.status, d.unsent, d.sent_at, d.retry_in) == ("pending", True, None, 1.0)
    # an earlier send whose outcome is still unknown stays known
    assert decide(row(sent_at=T), refused).sent_at == T
    # also when the row is dead-lettered, and for attempts abandoned before sending
    assert decide(row(attempts=3), refused).unsent
    assert decide(row(sent_at=T), Outcome(kind="not_sent")).sent_at == T
    assert decide(row(sent_at=T), Outcome(kind="not_sent")).unsent


def test_an_attempt_that_may_have_reached_kantata_keeps_its_send() -> None:
    for o in (Outcome(kind="transient", message="timed out", min_delay=180),
              Outcome(kind="ok", result="created"), Outcome(kind="rejected", message="422")):
        assert not decide(row(), o).unsent


def test_a_conflict_names_both_versions_as_utc_instants() -> None:
    base = datetime(2026, 10, 4, 1, 2, 8, tzinfo=UTC)
    remote_at = datetime(2026, 11, 29, 12, 5, 50, tzinfo=timezone(timedelta(hours=-8)))
    r = OutboxRow(id=1, op="update", entry_id=5, payload={"notes": "local"},
                  correlation_key="k", base_updated_at=base, attempts=1)
    chk = batching.check_update(r, {"id": "5", "notes": "remote"}, remote_at, "park")
    assert chk.action == "conflict"
    assert ("base updated_at 2026-10-04T01:02:08+00:00, Kantata updated_at "
            "2026-11-29T20:05:50+00:00; this edit and Kantata's current entry differ in: "
            "notes") in chk.reason


def test_a_lost_create_not_found_yet_waits_out_the_request_limit_without_an_attempt() -> None:
    """Issue #12: looked up seconds after the lost answer and not found, the create is not
    re-sent before Kantata's 3-minute request limit has passed since its send."""
    assert batching.settle_wait(T, T + timedelta(seconds=2), 180) == 178
    assert batching.settle_wait(T, T + timedelta(seconds=180), 180) == 0
    assert batching.settle_wait(T, T + timedelta(hours=1), 180) == 0
    assert batching.settle_wait(None, T, 180) == 0
    d = decide(row(sent_at=T, attempts=3),
               Outcome(kind="unresolved", min_delay=178, message="not listed yet"))
    assert (d.status, d.retry_in, d.refund, d.unsent, d.sent_at, d.last_error) == (
        "pending", 178, True, True, T, "not listed yet")  # never a dead letter for waiting
