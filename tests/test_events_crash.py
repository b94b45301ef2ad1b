"""A receiver killed (SIGKILL) in the middle of an event storm has stored every event it
acknowledged; the rest are stored once when the provider delivers them again."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from support.processes import batchsend_command

from batchsend.events.tosend import signature

SECRET = "crash-secret-0123456789"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        batchsend_command("events", "serve", "--db", str(db), "--port", str(port)),
        env={**os.environ, "BATCHSEND_TOSEND_WEBHOOK_SECRET": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the receiver did not start")


def _body(n: int) -> bytes:
    return json.dumps(
        {"type": "complaint", "data": {"email": f"u{n}@example.org", "message_id": f"m-{n}"}}
    ).encode()


def _post(port: int, n: int) -> bool:
    body = _body(n)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/tosend",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-ToSend-Signature": signature(body, SECRET)},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ConnectionError):
        return False


def test_kill_9_during_an_event_storm_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    port = _port()
    proc = _serve(db, port)
    total = 2000
    acknowledged: set[int] = set()
    lock = threading.Lock()
    queue = iter(range(total))

    def sender() -> None:
        while True:
            with lock:
                n = next(queue, None)
            if n is None:
                return
            if _post(port, n):
                with lock:
                    acknowledged.add(n)

    threads = [threading.Thread(target=sender) for _ in range(16)]
    for t in threads:
        t.start()
    while len(acknowledged) < 300:  # mid-storm
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for t in threads:
        t.join()
    seen = len(acknowledged)
    assert 300 <= seen < total, seen

    conn = sqlite3.connect(db)
    stored = {int(k) for (k,) in conn.execute("SELECT substr(message_key, 3) FROM events")}
    conn.close()
    assert acknowledged <= stored  # every acknowledged event survived the kill

    # the provider's retries: everything not acknowledged is delivered again
    proc = _serve(db, port)
    try:
        for n in range(total):
            if n not in acknowledged:
                assert _post(port, n)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    conn = sqlite3.connect(db)
    count, distinct = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT message_key) FROM events"
    ).fetchone()
    suppressed = conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0]
    conn.close()
    assert count == distinct == total  # no loss, no duplicate
    assert suppressed == total


def test_kill_9_while_the_sandbox_posts_a_storm_its_retries_bring_the_rest(
    make_sandbox, tmp_path: Path
) -> None:
    """The provider's side of the same promise: the sandbox posts real webhooks, the
    receiver dies mid-storm, comes back on the same port, and the sandbox's own retries
    deliver what was not acknowledged. The stored events equal the sandbox's record."""
    from support.campaigns import write_campaign
    from support.processes import run_batchsend

    db = tmp_path / "events.db"
    port = _port()
    proc = _serve(db, port)
    sandbox = make_sandbox(
        seed=5,
        bounce_rate=0.5,
        complaint_rate=0.5,
        event_delay_s=0.01,
        tosend_webhook_url=f"http://127.0.0.1:{port}/webhooks/tosend",
        webhook_secret=SECRET,
        webhook_max_attempts=12,
        webhook_backoff_s=0.1,
        webhook_concurrency=8,
    )
    campaign = write_campaign(
        tmp_path / "c", rows=1000, base_url=sandbox.base_url, send={"batch_size": 100}
    )
    assert run_batchsend("run", str(campaign), "--db", str(tmp_path / "runs.db")).returncode == 0

    def acknowledged() -> int:
        return sum(1 for e in sandbox.events() if e["webhook"] and e["webhook"]["acknowledged"])

    deadline = time.monotonic() + 30
    while acknowledged() < 100:  # mid-storm
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seen_acked = {
        (e["recipient"], e["type"])
        for e in sandbox.events()
        if e["webhook"] and e["webhook"]["acknowledged"]
    }
    conn = sqlite3.connect(db)
    stored = set(conn.execute("SELECT recipient, type FROM events"))
    conn.close()
    assert seen_acked <= stored  # nothing the sandbox saw acknowledged was lost

    proc = _serve(db, port)  # back on the same port: the sandbox's retries find it
    try:
        deadline = time.monotonic() + 60
        while True:
            posted = [e for e in sandbox.events() if e["webhook"] is not None]
            if all(e["webhook"]["acknowledged"] for e in posted):
                break
            assert time.monotonic() < deadline, sum(
                not e["webhook"]["acknowledged"] for e in posted
            )
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    expected = {(e["recipient"], e["type"], e["message_id"]) for e in posted}
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT recipient, type, message_key FROM events").fetchall()
    conn.close()
    assert len(rows) == len(set(rows)) == len(expected)  # no duplicate
    assert set(rows) == expected  # no loss
