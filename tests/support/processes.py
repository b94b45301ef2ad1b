"""batchsend in a child process (a command, a sandbox), and its database watched from outside."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from .campaigns import DOMAIN, KEY
from .sandboxes import TEST_KEY


def batchsend_command(*args: str) -> list[str]:
    """``batchsend ARGS`` as a child's argv (PYTHONPATH, when set, points at this tree)."""
    return [sys.executable, "-m", "batchsend", *args]


def run_batchsend(
    *args: str,
    key: str | None = TEST_KEY,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``batchsend ARGS`` in a child process, to the end, its output captured.

    ``key`` goes in ``BATCHSEND_API_KEY``; with ``key=None`` the child has no such
    variable at all (not even the caller's). ``env`` adds or overrides variables.
    """
    base = {k: v for k, v in os.environ.items() if k != "BATCHSEND_API_KEY"}
    if key is not None:
        base["BATCHSEND_API_KEY"] = key
    return subprocess.run(
        batchsend_command(*args),
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dead_pid() -> int:
    """A process id that belongs to no running process."""
    pid = 4_000_000  # above Linux's pid_max, so never alive
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    """Read the database as an outside observer (a fresh connection per question)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


def start_sandbox(record: Path, latency_ms: int) -> tuple[subprocess.Popen, str]:
    """A ``batchsend sandbox`` process for generated campaigns; returns it and its base URL."""
    proc = subprocess.Popen(
        batchsend_command("sandbox", "--port", "0", "--api-key", KEY, "--domain", DOMAIN,
                          "--latency", str(latency_ms), "--record", str(record)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc, line.rsplit(" ", 1)[1].strip()
