"""The live progress line: rate and ETA from an injected clock; silent off a terminal."""

from __future__ import annotations

import io

import pytest
from support.clock import FakeClock

from batchsend.progress import Progress, ProgressDisplay, RateMeter, describe


def test_rate_and_eta_over_a_sliding_window() -> None:
    clock = FakeClock(0.0)
    meter = RateMeter(window=10.0, clock=clock)
    assert meter.rate() is None and meter.eta(100) is None
    for second, done in enumerate([0, 100, 200, 300]):
        clock.t = float(second)
        meter.add(done)
    assert meter.rate() == pytest.approx(100.0)
    assert meter.eta(500) == pytest.approx(5.0)
    # a stall ages out of the window: the rate follows the recent pace, not the average
    for second in range(4, 20):
        clock.t = float(second)
        meter.add(300 + (second - 3) * 10)
    assert meter.rate() == pytest.approx(10.0)
    assert meter.eta(0) == 0.0


@pytest.mark.parametrize(
    ("progress", "total", "rate", "eta", "expected"),
    [
        (
            Progress(sent=1200, failed=3, retrying=7, in_flight=48),
            5000,
            410.2,
            9.4,
            "sent 1,200/5,000  failed 3  retrying 7  in flight 48  410/s  ETA 00:09",
        ),
        (Progress(), 10, None, None, "-/s  ETA --:--"),
        (Progress(sent=5), 10, 1.0, 3725.0, "ETA 1:02:05"),
    ],
)
def test_describe(progress: Progress, total: int, rate, eta, expected: str) -> None:
    assert expected in describe(progress, total, rate, eta)


def test_quiet_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(100, stream=stream)
    assert not display.enabled
    display.update(Progress(sent=50))
    display.close()
    assert stream.getvalue() == ""


def test_draws_when_enabled() -> None:
    stream = io.StringIO()
    clock = FakeClock(0.0)
    display = ProgressDisplay(100, stream=stream, enabled=True, clock=clock)
    display.update(Progress(sent=10))
    clock.t = 1.0
    line = display.update(Progress(sent=30, failed=2, in_flight=8))
    display.close()
    assert "sent 30/100" in line and "22/s" in line
    assert "sent 30/100" in stream.getvalue()
