"""The webhook receiver's sustained events/s with durable writes, on one core.

Usage: ``python bench/events_bench.py [--events 20000] [--connections 64] [--shape current]``

``batchsend events serve`` runs in a child process pinned to core 0 (``taskset``, when
there is one), writing to a fresh database; this process, pinned to core 1, posts
``--events`` distinct signed ToSend bounce events over ``--connections`` concurrent
keep-alive connections (aiohttp), each event a separate request, and counts only 200s.
Every 200 means the event was committed before the answer (durable before
acknowledged), so the figure is durable events per second. Afterwards the database is
opened and the stored count compared with the acknowledged count (they must be equal).
The goal (issue 13): at least 2,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from batchsend.events.tosend import signature

SECRET = "bench-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() != 1 else []


def _body(n: int) -> bytes:
    return json.dumps(
        {
            "type": "bounced",
            "data": {
                "email": f"user{n}@example.org",
                "bounce_type": "Permanent",
                "is_hard_bounce": True,
                "reason": "550 5.1.1 user unknown",
                "timestamp": "2026-12-03T08:00:00Z",
                "message_id": f"bench-{n:08d}",
            },
            "created_at": "2026-12-03T08:00:01Z",
        }
    ).encode()


async def _blast(url: str, events: int, connections: int, first: int = 0) -> tuple[int, int, float]:
    bodies = [_body(n) for n in range(first, first + events)]
    next_index = 0
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal next_index, ok, failed
            while next_index < events:
                body = bodies[next_index]
                next_index += 1
                headers = {
                    "Content-Type": "application/json",
                    "X-ToSend-Signature": signature(body, SECRET),
                    "X-ToSend-Event": "bounced",
                }
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        ok += 1
                    else:
                        failed += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return ok, failed, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="batchsend-events-bench-"))
    db = folder / "events.db"
    port = _free_port()
    env = {**os.environ, "BATCHSEND_TOSEND_WEBHOOK_SECRET": SECRET}
    command = [*_pinned(0), sys.executable, "-m", "batchsend", "events", "serve"]
    proc = subprocess.Popen(
        [*command, "--db", str(db), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the receiver did not start") from None
                time.sleep(0.05)
        if _pinned(1):
            os.sched_setaffinity(0, {1})
        url = f"http://127.0.0.1:{port}/webhooks/tosend"
        asyncio.run(
            _blast(url, 200, 8, first=10**9)
        )  # warm up: connections, first pages of the file
        ok, failed, seconds = asyncio.run(_blast(url, args.events, args.connections))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    conn.close()
    rate = ok / seconds if seconds else 0.0
    print(f"receiver pinned to one core: {'yes' if _pinned(0) else 'no (no taskset)'}")
    print(f"events posted: {args.events:,} over {args.connections} connections")
    print(f"acknowledged (200): {ok:,}   refused: {failed:,}   in {seconds:.2f} s")
    print(f"durable events/s: {rate:,.0f}   (goal: at least 2,000)")
    print(f"stored in the database: {stored:,} (warm-up included: {ok + 200:,} acknowledged)")
    print("goal met" if rate >= 2000 and stored == ok + 200 else "GOAL NOT MET")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
