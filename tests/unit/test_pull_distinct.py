"""`syncd.pull.distinct_count`: exact, whatever the number of parts it counts in."""

from __future__ import annotations

import random
from array import array

import pytest

from syncd.pull import DISTINCT_CHUNK, distinct_count


@pytest.mark.parametrize("n", [0, 1, DISTINCT_CHUNK, DISTINCT_CHUNK + 1, 5 * DISTINCT_CHUNK + 17])
def test_distinct_count_matches_a_set(n: int) -> None:
    rng = random.Random(n)
    ids = array("q", (rng.randrange(1, 10**12) for _ in range(n)))
    ids.extend(ids[: n // 5])  # repeats, as when rows move between pages of a window
    ids.extend([7, 7, 7])
    assert distinct_count(ids) == len(set(ids))
