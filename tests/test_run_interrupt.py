"""Ctrl-C on a real ``batchsend run`` process: once stops cleanly, twice stops at once.

SIGTERM and SIGHUP (``docker stop``, systemd, CI, a closed terminal) count as one press.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from support.campaigns import KEY, write_campaign
from support.processes import batchsend_command, query, start_sandbox

ROWS = 800


@pytest.mark.parametrize(
    ("presses", "signum"),
    [(1, signal.SIGINT), (2, signal.SIGINT), (1, signal.SIGTERM), (1, signal.SIGHUP)],
)
def test_ctrl_c_leaves_a_resumable_run(tmp_path: Path, presses: int, signum: int) -> None:
    record = tmp_path / "record.jsonl"
    db = tmp_path / "i.db"
    campaign = write_campaign(tmp_path / "c", rows=ROWS, send={"concurrency": 4, "batch_size": 20})
    sandbox, base_url = start_sandbox(record, latency_ms=200)
    env = {**os.environ, "BATCHSEND_API_KEY": KEY}
    common = ["--db", str(db), "--base-url", base_url, "--json"]
    try:
        proc = subprocess.Popen(
            batchsend_command("run", str(campaign), *common),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = query(db, "SELECT count(*) FROM recipients WHERE state = 'sent'")
            if found and found[0][0] >= 100:
                break
            time.sleep(0.005)
        if presses == 2:
            # Requests from now on are held 1.5 s, and one has arrived: the second press
            # finds it in flight however slowly this machine handles the signals.
            hold(base_url)
        proc.send_signal(signum)
        seen = ""
        if presses == 2:
            # Two SIGINTs sent before the process gets the CPU are one to the kernel (a
            # busy machine merged them once): press again only once it saw the first.
            seen = read_until(proc, "stopping")
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        err = seen + err
        assert proc.returncode == 130, err
        summary = json.loads(out)
        assert summary["state"] == "interrupted" and summary["interrupted"]
        assert "stopping" in err
        counts = summary["counts"]
        assert 100 <= counts["sent"] < ROWS and counts["pending"] > 0
        if presses == 1:
            assert counts["sending"] == 0  # what was in flight finished and was recorded
        else:
            assert counts["sending"] > 0  # it did not wait for the answers in flight
        (run_id,) = query(db, "SELECT id FROM runs")[0]
        settle(base_url)  # the held requests of the stopped process are delivered now
        resumed = subprocess.run(
            batchsend_command("resume", run_id, *common),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        final = json.loads(resumed.stdout)["counts"]
        delivered = Counter(
            to for line in record.read_text().splitlines() for to in json.loads(line)["to"]
        )
        assert max(delivered.values()) == 1  # nobody twice
        if presses == 1:
            assert resumed.returncode == 0, resumed.stderr
            assert final["sent"] == ROWS == len(delivered)
        else:
            # The rows in flight at the second press are unknown (batchsend left before
            # the answer; whether they were delivered only the provider knows) and are
            # not sent again.
            assert final["sent"] <= len(delivered) <= ROWS
            assert resumed.returncode == 3, resumed.stderr
            assert (
                final["unknown"] == counts["sending"] and final["sent"] + final["unknown"] == ROWS
            )
    finally:
        sandbox.send_signal(signal.SIGINT)
        sandbox.wait(timeout=10)
        assert sandbox.stdout is not None
        sandbox.stdout.close()


def hold(base_url: str) -> None:
    """Hold every request arriving from now on for 1.5 s; return once one has arrived."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        client.post("/_sandbox/config", json={"latency_ms": 1500}).raise_for_status()
        before = client.get("/_sandbox/stats").json()["requests"]  # counted after the change
        deadline = time.monotonic() + 30
        while client.get("/_sandbox/stats").json()["requests"] <= before:
            assert time.monotonic() < deadline, "no request arrived after the hold"
            time.sleep(0.005)


def settle(base_url: str) -> None:
    """Drop the latency and wait until the sandbox has answered every request it holds.

    A held request of the killed process is still accepted afterwards: resent before
    that, under the same Idempotency-Key, it would not be a replay but a second message.
    """
    with httpx.Client(base_url=base_url, timeout=10) as client:
        client.post("/_sandbox/config", json={"latency_ms": 0}).raise_for_status()
        deadline = time.monotonic() + 30
        while client.get("/_sandbox/stats").json()["in_flight"]:
            assert time.monotonic() < deadline, "the sandbox still holds requests"
            time.sleep(0.01)


def read_until(proc: subprocess.Popen, text: str) -> str:
    """``proc``'s stderr up to the line holding ``text`` (killed if it takes 30 s)."""
    assert proc.stderr is not None
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        while not lines or text not in lines[-1]:
            line = proc.stderr.readline()
            assert line, f"stderr ended before {text!r}: {''.join(lines)}"
            lines.append(line)
    finally:
        watchdog.cancel()
    return "".join(lines)
