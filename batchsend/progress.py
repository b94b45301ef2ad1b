"""Progress of a run on standard error: sent, failed, retries, rate, ETA.

On a terminal, a live line drawn with ``rich``. Elsewhere (CI, cron, ``nohup``, a pipe)
a plain log line every :data:`LOG_INTERVAL` seconds, so a long run shows that it moves
and when it should end without filling the log::

    batchsend: sent 1,200 / 5,000 (24%), 0 failed, 0 unknown, 410/s, ETA 9 s

A run shorter than that prints none; ``$BATCHSEND_PROGRESS_INTERVAL`` sets another
interval. ``enabled=False`` (``--quiet``) shows neither;
warnings (:meth:`ProgressDisplay.warn`) are shown in every mode. The figures come from
the engine's :class:`Progress` snapshots, counted in memory as it records each answer:
the display never queries SQLite.

The arithmetic (rate over a sliding window, ETA) is a pure function of snapshots and
an injected clock, so it is tested without a terminal and without sleeping.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from batchsend.workers import default_workers

__all__ = [
    "LOG_INTERVAL",
    "Progress",
    "ProgressDisplay",
    "RateMeter",
    "checked_line",
    "describe",
    "log_line",
]

#: Seconds between two progress lines when standard error is not a terminal
#: (``$BATCHSEND_PROGRESS_INTERVAL`` sets another).
LOG_INTERVAL = 10.0
INTERVAL_VARIABLE = "BATCHSEND_PROGRESS_INTERVAL"


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


def checked_line(progress: Progress, total: int, rate: float | None, eta: float | None) -> str:
    """The row pass's line: rows checked so far (``progress.sent`` counts them), the rate."""
    rate_text = f"{rate:,.0f} rows/s" if rate is not None else "- rows/s"
    return f"checking the recipients: {progress.sent:,} rows checked, {rate_text}"


def workers_suffix(workers: int | None) -> str:
    """``  (2 workers)``: how many processes the row pass uses (None: every core)."""
    n = workers if workers is not None else default_workers()
    return f"  ({n} worker{'s' if n != 1 else ''})"


def _eta_words(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def log_line(progress: Progress, total: int, rate: float | None, eta: float | None) -> str:
    """One progress line for a log: ``sent 1,200 / 5,000 (24%), 0 failed, 0 unknown,
    410/s, ETA 9 s``."""
    percent = f" ({progress.sent * 100 // total}%)" if total > 0 else ""
    rate_text = f"{rate:,.0f}/s" if rate is not None else "-/s"
    return (
        f"sent {progress.sent:,} / {total:,}{percent}, {progress.failed:,} failed, "
        f"{progress.unknown:,} unknown, {rate_text}, ETA {_eta_words(eta)}"
    )


class ProgressDisplay:
    """Progress on standard error while a run sends: a live line on a terminal, a log
    line every ``log_interval`` seconds elsewhere, nothing with ``enabled=False``.

    ``enabled``: None chooses by the stream (the live line on a terminal, log lines
    otherwise); True forces the live line; False shows no progress. The send pass passes
    :meth:`update` as :func:`batchsend.engine.send_units`' ``on_progress`` callback,
    which the engine calls a few times a second, and :meth:`warn` as its ``on_warning``.

    ``line`` writes the line from the progress, the total, the rate and the ETA
    (:func:`describe` by default; reconcile shows its lookups with its own), ``log_line``
    the log line (:func:`log_line`); ``suffix`` ends both (``  2 workers``). A ``total``
    of 0 is a count with no known end: the row pass's rows checked
    (:func:`checked_line`).

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
        log_line: Callable[[Progress, int, float | None, float | None], str] = log_line,
        log_interval: float | None = None,
        suffix: str = "",
    ) -> None:
        self.total = total
        self._describe = line
        self._log_line = log_line
        self.suffix = suffix
        stream = stream if stream is not None else sys.stderr
        self.stream = stream
        self.enabled = _isatty(stream) if enabled is None else enabled
        # Log lines: asked for nothing in particular, and no terminal to draw on.
        self.logging = enabled is None and not self.enabled
        if log_interval is None:
            log_interval = _interval_from_environment()
        self.log_interval = log_interval
        self._clock = clock
        self._next_log = clock() + log_interval
        self.meter = RateMeter(clock=clock)
        self.line = line(Progress(), total, None, None) + suffix
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
            # total 0: a count with no known end (the row pass), an indeterminate bar
            self._task = self._progress.add_task(self.line, total=total or None)
            self._progress.start()

    def update(self, progress: Progress) -> str:
        """Show ``progress`` (rate over the recent window and ETA computed here); returns
        the line shown.
        """
        done = progress.done
        self.meter.add(done)
        rate, eta = self.meter.rate(), self.meter.eta(self.total - done)
        self.line = self._describe(progress, self.total, rate, eta) + self.suffix
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description=self.line)
        elif self.logging:
            now = self._clock()
            if now >= self._next_log:
                self._next_log = now + self.log_interval
                text = self._log_line(progress, self.total, rate, eta)
                self._print(f"batchsend: {text}{self.suffix}")
        return self.line

    def warn(self, text: str) -> None:
        """Show ``text`` (a warning the user should see now), whatever the mode."""
        self._print(f"batchsend: {text}")

    def _print(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
            return
        # A closed or broken stderr must not stop a send.
        with contextlib.suppress(OSError, ValueError):
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Release the terminal (the last line stays on screen)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _interval_from_environment() -> float:
    """``$BATCHSEND_PROGRESS_INTERVAL`` seconds if it is a positive number, else the default."""
    with contextlib.suppress(ValueError):
        seconds = float(os.environ.get(INTERVAL_VARIABLE) or LOG_INTERVAL)
        if 0 < seconds < float("inf"):
            return seconds
    return LOG_INTERVAL


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
