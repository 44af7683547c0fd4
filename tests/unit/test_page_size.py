"""`pagination.PageSize` (issue #24, and the new-user trial of 2026-12-04): halved after a
timeout or 5xx, never below the documented 200, and raised again after answered pages, so a
burst of errors does not cost a long-running daemon 25 times the requests for ever."""

from __future__ import annotations

from syncd.pagination import PageSize


def answer(size: PageSize, n: int) -> list[int]:
    """The raises `n` answered pages make."""
    return [r for r in (size.answered() for _ in range(n)) if r is not None]


def test_a_burst_of_errors_halves_the_size_and_answers_raise_it_back() -> None:
    size = PageSize(5000)
    assert answer(size, 500) == []  # at the wanted size: nothing to raise
    assert [size.shrink() for _ in range(6)] == [2500, 1250, 625, 312, 200, 200]
    assert answer(size, PageSize.GROW_AFTER - 1) == []
    assert answer(size, 1) == [400]
    assert answer(size, 4 * PageSize.GROW_AFTER) == [800, 1600, 3200, 5000]
    assert size.current == 5000 and answer(size, 1000) == []


def test_a_size_that_fails_again_after_a_raise_is_tried_ever_more_rarely() -> None:
    size = PageSize(400)
    size.shrink()  # 200
    waits = []
    for _ in range(8):
        n = 0
        while size.answered() is None:
            n += 1
        waits.append(n + 1)
        size.shrink()  # 400 fails again
    assert waits == [50, 100, 200, 400, 800, 1600, 3200, 3200]
    assert size.current == 200


def test_a_shrink_without_a_raise_before_it_keeps_the_wait() -> None:
    size = PageSize(5000)
    size.shrink()
    size.shrink()  # two halvings in a row (one burst): the next raise still after 50
    assert answer(size, PageSize.GROW_AFTER) == [2500]
    assert size.grow_after == PageSize.GROW_AFTER


def test_a_small_wanted_size_is_never_raised_past_it() -> None:
    size = PageSize(150)  # below the documented 200: the floor is 150
    assert size.shrink() == 150
    assert answer(size, 500) == [] and size.current == 150


def test_a_size_that_failed_is_halved_once_however_many_reads_failed_at_it() -> None:
    """Four windows failing at 5,000 together halve it once, not to 312 (the rule each read
    kept on its own before; reconciliation, the first page of a narrowed read and the
    incremental pass did not keep it)."""
    size = PageSize(5000)
    assert size.after_failure(5000) == (2500, True)
    assert [size.after_failure(5000) for _ in range(3)] == [(2500, False)] * 3
    assert size.current == 2500
    assert size.after_failure(2500) == (1250, True)
    for _ in range(3):
        size.shrink()  # 625, 312, 200
    assert size.after_failure(200) is None  # at the floor: the failure is raised
    assert size.after_failure(400) == (200, False)
