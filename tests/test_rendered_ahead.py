"""Units planned in a thread ahead of the engine: all of them, in order, errors surfaced,
and the planning stops (its generator closed) when the engine stops taking."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from batchsend.sending import RenderedAhead


def test_every_unit_comes_in_order_and_a_dry_run_iterates_it_plainly() -> None:
    async def take_all() -> list[int]:
        return [u async for u in RenderedAhead(iter(range(1000)), depth=7)]  # type: ignore[arg-type]

    assert asyncio.run(take_all()) == list(range(1000))
    assert list(RenderedAhead(range(5))) == [0, 1, 2, 3, 4]  # type: ignore[arg-type]


def test_an_error_while_planning_surfaces_where_the_unit_was_taken() -> None:
    def planned():
        yield 1
        raise ValueError("row 2 cannot be planned")

    async def take_all() -> list[int]:
        return [u async for u in RenderedAhead(planned())]  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="row 2"):
        asyncio.run(take_all())


def test_planning_stops_when_the_engine_stops_taking() -> None:
    closed = threading.Event()
    made: list[int] = []

    def planned():
        try:
            for n in range(10_000):
                made.append(n)
                yield n
        finally:
            closed.set()  # the row pass's workers are shut down here

    async def take_three() -> list[int]:
        ahead = RenderedAhead(planned(), depth=4).__aiter__()  # type: ignore[arg-type]
        got = [await ahead.__anext__() for _ in range(3)]
        await ahead.aclose()
        return got

    assert asyncio.run(take_three()) == [0, 1, 2]
    assert closed.wait(5)
    time.sleep(0.3)
    assert len(made) <= 3 + 4 + 1  # never more than depth ahead, then it stopped
