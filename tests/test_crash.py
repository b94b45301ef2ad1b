"""kill -9 at random moments, resume, repeat: nobody emailed twice, nobody lost.

A real ``batchsend`` process sends a generated campaign to a sandbox process that
records every accepted message to a file. The test SIGKILLs the sender at random
points of its progress (read from the database, as any observer could), looks at what
the dead process left ``sending``, resumes, and repeats. Then, from the sandbox's own
record: no recipient got two messages; every row is terminal; every ``unknown`` row was
in flight at one of the kills; SQLite's integrity check passes. The sandbox does not
de-duplicate (no provider does), so an unknown row is never sent again: one more resume
sends nothing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from support.campaigns import KEY, write_campaign
from support.processes import batchsend_command, query, start_sandbox

TERMINAL = {"sent", "failed", "skipped", "unknown"}


def crash_and_resume(
    tmp_path: Path, *, rows: int, kills: int, provider: str, latency_ms: int, seed: int
) -> None:
    rng = random.Random(seed)
    record = tmp_path / "record.jsonl"
    db = tmp_path / "crash.db"
    send = {"concurrency": 4, "batch_size": 20} if provider == "tosend" else {"concurrency": 8}
    campaign = write_campaign(tmp_path / "c", rows=rows, provider=provider, send=send)
    sandbox, base_url = start_sandbox(record, latency_ms)
    env = {**os.environ, "BATCHSEND_API_KEY": KEY}
    common = ["--db", str(db), "--base-url", base_url, "--json"]
    in_flight_at_kills: set[int] = set()
    run_id: str | None = None

    def command() -> list[str]:
        if run_id is None:
            return batchsend_command("run", str(campaign), *common)
        return batchsend_command("resume", run_id, *common)

    try:
        for i in range(kills):
            before = query(db, "SELECT count(*) FROM recipients WHERE state != 'pending'")
            done_before = before[0][0] if before else 0
            remaining = rows - done_before
            target = done_before + rng.randint(1, max(1, remaining // (kills - i + 1)))
            proc = subprocess.Popen(
                command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                found = query(db, "SELECT count(*) FROM recipients WHERE state != 'pending'")
                if found and found[0][0] >= target:
                    break
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            ids = query(db, "SELECT id FROM runs")
            if ids:
                run_id = ids[0][0]
                in_flight_at_kills |= {
                    r for (r,) in query(db, "SELECT row FROM recipients WHERE state = 'sending'")
                }
        assert run_id is not None, "no kill left a recorded run; raise the targets"
        assert in_flight_at_kills, "no kill caught a request in flight"

        final = subprocess.run(command(), env=env, capture_output=True, text=True, timeout=300)
        summary = json.loads(final.stdout)
        assert summary["state"] == "finished"

        states = dict(query(db, "SELECT row, state FROM recipients WHERE run_id = ?", run_id))
        assert sorted(states) == list(range(1, rows + 1))  # nobody lost
        assert set(states.values()) <= TERMINAL
        unknown = {r for r, s in states.items() if s == "unknown"}
        # finished, but with unknown rows (the kills caught requests in flight): exit 3
        assert final.returncode == (3 if unknown else 0), final.stderr
        assert summary["counts"]["unknown"] == len(unknown)
        assert unknown <= in_flight_at_kills
        delivered = Counter(
            to for line in record.read_text().splitlines() for to in json.loads(line)["to"]
        )
        assert max(delivered.values()) == 1  # nobody emailed twice
        sent = {r for r, s in states.items() if s == "sent"}
        addresses = {f"user{r}@example.org": r for r in range(1, rows + 1)}
        delivered_rows = {addresses[a] for a in delivered}
        assert sent <= delivered_rows <= sent | unknown
        assert query(db, "PRAGMA integrity_check") == [("ok",)]

        # Another resume leaves the unknown rows alone: not one more message.
        lines = len(record.read_text().splitlines())
        again = subprocess.run(command(), env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == final.returncode, again.stderr
        assert json.loads(again.stdout)["counts"] == summary["counts"]
        assert len(record.read_text().splitlines()) == lines
    finally:
        sandbox.send_signal(signal.SIGINT)
        try:
            sandbox.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sandbox.kill()
            sandbox.wait()
        assert sandbox.stdout is not None
        sandbox.stdout.close()


def test_kill_9_and_resume_never_sends_twice(tmp_path: Path) -> None:
    crash_and_resume(tmp_path, rows=3000, kills=4, provider="tosend", latency_ms=20, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize(("provider", "seed"), [("tosend", 2), ("tosend", 3), ("v1", 4)])
def test_kill_9_and_resume_never_sends_twice_long(tmp_path: Path, provider: str, seed: int) -> None:
    crash_and_resume(tmp_path, rows=5000, kills=8, provider=provider, latency_ms=5, seed=seed)
