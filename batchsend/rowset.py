"""A set of row numbers in one bit each.

A run's pending rows, and the rows its send pass must render again, are sets of up to
ten million row numbers; a Python ``set`` of them costs about 60 bytes a row (600 MB at
ten million), a :class:`RowSet` one bit (1.25 MB).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["RowSet"]


class RowSet:
    """Row numbers (integers from 0), added and looked up in constant time.

    Example::

        rows = RowSet([3, 5])
        rows.add(8)
        assert 5 in rows and 4 not in rows and len(rows) == 3
    """

    __slots__ = ("_bits", "_count")

    def __init__(self, rows: Iterable[int] = ()) -> None:
        self._bits = bytearray()
        self._count = 0
        for row in rows:
            self.add(row)

    def add(self, row: int) -> None:
        if row < 0:
            raise ValueError(f"a row number is not negative, not {row}")
        i = row >> 3
        bits = self._bits
        if i >= len(bits):
            bits.extend(bytes(max(i + 1 - len(bits), len(bits))))  # grows by doubling
        mask = 1 << (row & 7)
        if not bits[i] & mask:
            bits[i] |= mask
            self._count += 1

    def __contains__(self, row: object) -> bool:
        if type(row) is not int or row < 0:
            return False
        i = row >> 3
        return i < len(self._bits) and bool(self._bits[i] & (1 << (row & 7)))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        for i, byte in enumerate(self._bits):
            if byte:
                for bit in range(8):
                    if byte & (1 << bit):
                        yield i * 8 + bit
