"""A set of row numbers, a bit each: what a set of ints would say, in far less memory."""

from __future__ import annotations

import random
import sys

import pytest

from batchsend.rowset import RowSet


def test_it_answers_as_a_set_of_ints_would() -> None:
    rng = random.Random(16)
    rows = [rng.randrange(0, 50_000) for _ in range(20_000)]
    kept = RowSet(rows)
    plain = set(rows)
    assert len(kept) == len(plain)
    assert list(kept) == sorted(plain)
    for probe in [*range(-3, 60), *rng.sample(range(0, 60_000), 2_000), 10**9, "7", 3.0]:
        assert (probe in kept) == (probe in plain and type(probe) is int), probe
    with pytest.raises(ValueError):
        kept.add(-1)


def test_ten_million_rows_take_a_bit_each() -> None:
    kept = RowSet(range(1, 10_000_001, 3))
    assert len(kept) == 3_333_334 and 9_999_997 in kept and 9_999_998 not in kept
    assert sys.getsizeof(kept._bits) < 3 * 1024 * 1024  # a set of them: ~200 MB
