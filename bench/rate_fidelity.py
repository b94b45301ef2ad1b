"""Rate fidelity: does a run keep to the provider's own rate, in the provider's own units?

    python -m bench.rate_fidelity                       # the three cases below
    python -m bench.rate_fidelity --rows 20000 --seconds 120

Each case runs a real campaign (``run_campaign``, in this process) against a sandbox
that enforces its provider's documented limit in its documented unit, and measures,
from the sandbox's own log of accepted messages, the rate it sustained:

* ToSend, batches of 100, the account's ``limit_per_second`` = R emails/s (R = 50 and
  500): the client learns R from ``GET /v2/info`` and paces recipients, not requests;
* v1, 600 requests a minute (its documented limit), with the campaign's ``rate = 10``.

The goal: at least 0.95 R after the first second, with zero 429 answers. A run that
would take longer than ``--seconds`` is stopped there the way Ctrl-C stops it (the
requests in flight finish), so the figure is the sustained rate over that window. Only
loopback is ever contacted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from tests.support.campaigns import DOMAIN, KEY
from tests.support.gauntlet import write_campaign

GOAL = 0.95

CASES: dict[str, dict[str, Any]] = {
    "tosend-50": {
        "provider": "tosend",
        "sandbox": {"tosend_emails_per_second": 50},
        "send": {"batch_size": 100, "concurrency": 16},
        "limit": 50.0,
        "unit": "emails/s",
    },
    "tosend-500": {
        "provider": "tosend",
        "sandbox": {"tosend_emails_per_second": 500},
        "send": {"batch_size": 100, "concurrency": 16},
        "limit": 500.0,
        "unit": "emails/s",
    },
    "v1-600-per-minute": {
        "provider": "v1",
        "sandbox": {"v1_requests_per_minute": 600},
        "send": {"concurrency": 16, "rate": 10},
        "limit": 10.0,
        "unit": "requests/s",
    },
}


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def sustained(messages: list[dict[str, Any]], unit: str) -> tuple[float, int, float]:
    """(rate after the first second, counted, window in s) from the accepted messages.

    Emails count every address (to + cc + bcc); requests count one per distinct request
    (v1 sends one message per request). The window runs from one second after the first
    acceptance to the last one.
    """
    if not messages:
        return 0.0, 0, 0.0
    times = sorted(
        (_epoch(m["received_at"]), len(m["to"]) + len(m["cc"]) + len(m["bcc"])) for m in messages
    )
    start = times[0][0] + 1.0
    end = times[-1][0]
    counted = sum(n if unit == "emails/s" else 1 for t, n in times if t >= start)
    window = end - start
    return (counted / window if window > 0 else 0.0), counted, window


def run_case(name: str, rows: int, seconds: float, workdir: Path) -> dict[str, Any]:
    case = CASES[name]
    sandbox = Sandbox(api_keys=(KEY,), domains=(DOMAIN,), **case["sandbox"]).start()
    try:
        campaign = write_campaign(
            workdir / name,
            rows=rows,
            provider=case["provider"],
            send={"max_attempts": 5, "max_retry_time": 60, **case["send"]},
            base_url=sandbox.base_url,
        )
        # Stop a run longer than the window as Ctrl-C would (its handler is the send pass's).
        timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        try:
            summary = run_campaign(
                campaign,
                db_path=workdir / f"{name}.db",
                api_key=KEY,
                progress=False,
                report_path=workdir / f"{name}.csv",
            )
        finally:
            timer.cancel()
        elapsed = time.monotonic() - started
        stats = sandbox.stats()
        rate, counted, window = sustained(sandbox.messages(), case["unit"])
    finally:
        sandbox.stop()
    refused = stats["faults"].get("429", 0)
    share = rate / case["limit"]
    return {
        "case": name,
        "limit": f"{case['limit']:g} {case['unit']}",
        "rows_sent": summary.counts.get("sent", 0),
        "stopped_at_window": summary.interrupted,
        "seconds": round(elapsed, 1),
        "sustained": round(rate, 2),
        "counted_after_first_second": counted,
        "window_s": round(window, 2),
        "share_of_limit": round(share, 3),
        "429s": refused,
        "goal_met": share >= GOAL and refused == 0,
    }


def main(argv: list[str] | None = None) -> int:
    # Benchmarks send the same generated campaigns again and again: a register of sends
    # of their own, so they neither refuse themselves nor touch the user's.
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="batchsend-bench-state-")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="stop each run after this long")
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="rate-fidelity-") as tmp:
        for name in args.case or list(CASES):
            result = run_case(name, args.rows, args.seconds, Path(tmp))
            print(json.dumps(result), flush=True)
            results.append(result)
    print(
        "rate fidelity: "
        + ("every goal met" if all(r["goal_met"] for r in results) else "GOAL MISSED")
    )
    return 0 if all(r["goal_met"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
