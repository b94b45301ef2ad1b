"""Fake clocks: time that moves only when a test says so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class FakeClock:
    """Seconds (a ``time.monotonic`` or ``time.time`` stand-in) that stand still.

    A test moves them by setting ``t``; ``sleep`` advances them at once, notes the wait in
    ``slept`` and, like a real sleep, lets other tasks run (a scripted server, a stop).
    """

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


class SteppingClock:
    """A datetime clock that advances ``step`` seconds on every reading."""

    def __init__(self, start: datetime | None = None, step: float = 0.1) -> None:
        self.now = start or datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
        self.step = timedelta(seconds=step)

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


class VirtualTime:
    """Concurrent sleepers on a virtual clock; one chosen wake-up comes late."""

    def __init__(self, late_call: int, lateness: float) -> None:
        self.t = 1000.0
        self.calls = 0
        self.late_call = late_call
        self.lateness = lateness
        self.sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.calls += 1
        extra = self.lateness if self.calls == self.late_call else 0.0
        future = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.t + seconds + extra, self.calls, future))
        await future

    async def run(self, tasks: list[asyncio.Task[None]]) -> None:
        while not all(task.done() for task in tasks):
            for _ in range(5):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            if not self.sleepers:
                continue
            self.sleepers.sort(key=lambda s: (s[0], s[1]))
            wake, _, future = self.sleepers.pop(0)
            self.t = max(self.t, wake)
            future.set_result(None)
