"""Live progress of a run on standard error: sent, failed, retries, rate, ETA.

Shown with ``rich`` only when standard error is a terminal; otherwise (a pipe, a log
file, a test) nothing is printed, so scripts get clean output. The figures come from
the engine's :class:`Progress` snapshots, counted in memory as it records each answer:
the display never queries SQLite.

The arithmetic (rate over a sliding window, ETA) is a pure function of snapshots and
an injected clock, so it is tested without a terminal and without sleeping.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["Progress", "ProgressDisplay", "RateMeter", "describe"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Counts of a send in progress, as the engine reports them. Counts are rows
    (recipients of the input); the send's total is the display's to know.
    """

    sent: int = 0
    failed: int = 0
    retrying: int = 0  # units waiting to be tried again
    unknown: int = 0  # rows the provider may or may not have accepted
    in_flight: int = 0  # rows whose request is out (or waiting to be retried)
    requests: int = 0  # HTTP attempts made
    elapsed: float = 0.0  # seconds since the engine started
    rate: float = 0.0  # rows sent per second since the start

    @property
    def done(self) -> int:
        return self.sent + self.failed


class RateMeter:
    """Rows per second over the last ``window`` seconds, and the time left at that pace."""

    def __init__(self, *, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._points: deque[tuple[float, int]] = deque()

    def add(self, done: int) -> None:
        """Record that ``done`` rows are settled now."""
        now = self._clock()
        self._points.append((now, done))
        while len(self._points) > 2 and now - self._points[0][0] > self.window:
            self._points.popleft()

    def rate(self) -> float | None:
        """Rows per second, or ``None`` before two distinct moments were seen."""
        if len(self._points) < 2:
            return None
        (t0, d0), (t1, d1) = self._points[0], self._points[-1]
        if t1 <= t0:
            return None
        return (d1 - d0) / (t1 - t0)

    def eta(self, remaining: int) -> float | None:
        """Seconds until ``remaining`` more rows are settled at the current rate."""
        if remaining <= 0:
            return 0.0
        rate = self.rate()
        if not rate:
            return None
        return remaining / rate


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe(progress: Progress, total: int, rate: float | None, eta: float | None) -> str:
    """One line of progress: ``total`` rows to settle, at ``rate`` rows a second.

    e.g. ``sent 1,200/5,000  failed 3  retrying 7  in flight 48  410/s  ETA 00:09``.
    """
    rate_text = f"{rate:,.0f}/s" if rate is not None else "-/s"
    return (
        f"sent {progress.sent:,}/{total:,}  failed {progress.failed:,}  "
        f"retrying {progress.retrying:,}  in flight {progress.in_flight:,}  "
        f"{rate_text}  ETA {_duration(eta)}"
    )


class ProgressDisplay:
    """A live line on standard error while a run sends (a no-op when it is not a terminal).

    The send pass passes :meth:`update` as :func:`batchsend.engine.send_units`'
    ``on_progress`` callback, which the engine calls a few times a second.

    ``line`` writes the line from the progress, the total, the rate and the ETA
    (:func:`describe` by default; reconcile shows its lookups with its own).

    Example::

        display = ProgressDisplay(total=5000)
        display.update(Progress(sent=1200, failed=3))
        display.close()
    """

    def __init__(
        self,
        total: int,
        *,
        stream: IO[str] | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        line: Callable[[Progress, int, float | None, float | None], str] = describe,
    ) -> None:
        self.total = total
        self._describe = line
        stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(stream) if enabled is None else enabled
        self.meter = RateMeter(clock=clock)
        self.line = line(Progress(), total, None, None)
        self._progress: Any = None
        self._task: Any = None
        if self.enabled:
            # Imported here: rich costs import time that non-terminal runs need not pay.
            import rich.progress
            from rich.console import Console

            self._progress = rich.progress.Progress(
                rich.progress.TextColumn("[bold]batchsend[/bold]"),
                rich.progress.BarColumn(),
                rich.progress.TextColumn("{task.description}"),
                console=Console(file=stream),
                transient=False,
            )
            self._task = self._progress.add_task(self.line, total=max(total, 1))
            self._progress.start()

    def update(self, progress: Progress) -> str:
        """Show ``progress`` (rate over the recent window and ETA computed here); returns
        the line shown.
        """
        done = progress.done
        self.meter.add(done)
        self.line = self._describe(
            progress, self.total, self.meter.rate(), self.meter.eta(self.total - done)
        )
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description=self.line)
        return self.line

    def close(self) -> None:
        """Release the terminal (the last line stays on screen)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
