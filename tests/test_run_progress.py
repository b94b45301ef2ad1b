"""Progress: the live line on a terminal, a log line every few seconds elsewhere, none
with --quiet; rate and ETA from an injected clock."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from support.campaigns import write_campaign
from support.clock import FakeClock
from support.processes import run_batchsend

from batchsend.progress import (
    LOG_INTERVAL,
    Progress,
    ProgressDisplay,
    RateMeter,
    describe,
    log_line,
)


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


def test_off_a_terminal_a_log_line_every_interval() -> None:
    stream = io.StringIO()
    clock = FakeClock(0.0)
    display = ProgressDisplay(5000, stream=stream, clock=clock)
    assert not display.enabled and display.logging
    display.update(Progress(sent=0))
    clock.t = 5.0
    display.update(Progress(sent=2050))
    assert stream.getvalue() == ""  # a run shorter than the interval prints no progress
    clock.t = LOG_INTERVAL
    display.update(Progress(sent=4100, failed=2, unknown=1))
    clock.t = LOG_INTERVAL + 5
    display.update(Progress(sent=4500, failed=2, unknown=1))
    clock.t = 2 * LOG_INTERVAL
    display.update(Progress(sent=4897, failed=2, unknown=1))
    display.close()
    assert stream.getvalue().splitlines() == [
        "batchsend: sent 4,100 / 5,000 (82%), 2 failed, 1 unknown, 410/s, ETA 2 s",
        "batchsend: sent 4,897 / 5,000 (97%), 2 failed, 1 unknown, 80/s, ETA 1 s",
    ]


def test_quiet_shows_no_progress_but_shows_warnings() -> None:
    stream = io.StringIO()
    clock = FakeClock(0.0)
    display = ProgressDisplay(100, stream=stream, enabled=False, clock=clock)
    for second in range(0, 100, 5):
        clock.t = float(second)
        display.update(Progress(sent=second))
    display.warn("cannot connect to http://127.0.0.1:9: Connection refused")
    display.close()
    assert (
        stream.getvalue() == "batchsend: cannot connect to http://127.0.0.1:9: Connection refused\n"
    )


@pytest.mark.parametrize(
    ("progress", "total", "rate", "eta", "expected"),
    [
        (
            Progress(sent=1200),
            5000,
            410.4,
            9.3,
            "sent 1,200 / 5,000 (24%), 0 failed, 0 unknown, 410/s, ETA 9 s",
        ),
        (Progress(sent=0), 10, None, None, "sent 0 / 10 (0%), 0 failed, 0 unknown, -/s, ETA -"),
        (Progress(sent=5, failed=1), 10, 1.0, 125.0, "ETA 2 min 05 s"),
        (Progress(sent=5), 10, 1.0, 3725.0, "ETA 1 h 02 min"),
        (Progress(), 0, None, None, "sent 0 / 0, 0 failed"),
    ],
)
def test_log_line(progress: Progress, total: int, rate, eta, expected: str) -> None:
    assert expected in log_line(progress, total, rate, eta)


def test_the_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("BATCHSEND_PROGRESS_INTERVAL", "0.5")
    assert ProgressDisplay(1, stream=io.StringIO()).log_interval == 0.5
    monkeypatch.setenv("BATCHSEND_PROGRESS_INTERVAL", "soon")
    assert ProgressDisplay(1, stream=io.StringIO()).log_interval == LOG_INTERVAL


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


def test_through_the_cli_stderr_piped_gets_log_lines_and_quiet_none(
    tmp_path: Path, sandbox
) -> None:
    campaign = write_campaign(
        tmp_path / "c", rows=30, provider="v1", base_url=sandbox.base_url, send={"rate": 25}
    )
    db = str(tmp_path / "b.db")
    env = {"BATCHSEND_PROGRESS_INTERVAL": "0.2"}
    loud = run_batchsend("run", str(campaign), "--db", db, "--limit", "15", "--json", env=env)
    assert loud.returncode == 0, loud.stderr
    lines = [line for line in loud.stderr.splitlines() if line.startswith("batchsend: sent ")]
    assert lines and all(" / 15 (" in line and "/s, ETA " in line for line in lines), loud.stderr

    run_id = json.loads(loud.stdout)["run_id"]
    quiet = run_batchsend("resume", run_id, "--db", db, "--quiet", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "batchsend: sent " not in quiet.stderr
    assert f"run {run_id}: finished in " in quiet.stderr  # the final summary still shows
