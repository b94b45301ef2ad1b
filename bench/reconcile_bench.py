"""How fast ``batchsend reconcile`` looks unknown messages up against the sandbox.

Usage: ``python bench/reconcile_bench.py [--rows 2000] [--concurrency 8 32]``

A ``batchsend sandbox`` subprocess (default mode) receives one generated campaign per
provider with every request faulted so that every row ends ``unknown``: half the
requests are refused with a 500 before processing (not delivered: their lookups answer
404 / no event, and the rows go back to pending) and the rest are accepted and then
their connection dropped (delivered: found, the rows become sent). Then
``reconcile_run`` (what ``batchsend reconcile`` calls) settles them, with the grace
period at 0 and no rate limit, once per concurrency asked; each round starts from a copy
of the database as the faulty run left it. Printed per provider and concurrency:
messages looked up, HTTP requests, seconds, lookups/s, and the client's CPU per lookup.

ToSend's lookups are ``GET /v2/emails/{id}`` (an index lookup in the sandbox); v1's are
``GET /api/v1/events?recipient=...``, which the sandbox answers by scanning its log, so
v1 figures fall as the log grows: they measure the sandbox as much as batchsend.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from batchsend.reconcile import reconcile_run
from batchsend.run import run_campaign

KEY = "sk-bench"
ADMIN = "tsend_admin_bench"


def start_sandbox() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchsend", "sandbox", "--port", "0", "--api-key", KEY,
         "--domain", "example.com", "--admin-key", ADMIN],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"the sandbox did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def configure(base_url: str, **settings: object) -> None:
    request = urllib.request.Request(
        base_url + "/_sandbox/config",
        data=json.dumps(settings).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "reconcile-bench"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def write_campaign(folder: Path, rows: int, provider: str, base_url: str) -> Path:
    folder.mkdir(parents=True)
    with (folder / "recipients.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "first"])
        writer.writerows([f"user{n}@example.org", f"First{n}"] for n in range(1, rows + 1))
    send = "concurrency = 16\nmax_attempts = 1\n"
    if provider == "tosend":
        send += "batch_size = 100\n"
    path = folder / "campaign.toml"
    path.write_text(
        f'provider = "{provider}"\nbase_url = "{base_url}"\n\n[source]\npath = "recipients.csv"\n\n'
        '[sender]\nemail = "news@example.com"\n\n'
        '[message]\nsubject = "Hello {{ first }}"\ntext = "Hi {{ first }}."\n\n'
        f"[send]\n{send}",
        encoding="utf-8",
    )
    return path


def faulty_run(folder: Path, rows: int, provider: str, base_url: str) -> tuple[Path, str]:
    """A run of ``rows`` rows that ends with every row unknown; returns its db and id."""
    campaign = write_campaign(folder / provider, rows, provider, base_url)
    db = folder / f"{provider}.db"
    configure(base_url, fail_rate=0.5, drop_rate=1.0, seed=1)
    summary = run_campaign(campaign, db_path=db, api_key=KEY, progress=False)
    configure(base_url, fail_rate=0.0, drop_rate=0.0)
    unknown = summary.counts["unknown"]
    if unknown != rows:
        raise SystemExit(f"{provider}: {unknown} of {rows} rows unknown, expected all")
    return db, summary.run_id


HEADER = (
    f"{'provider':8} {'conc':>4} {'messages':>8} {'requests':>8} {'sent':>6} {'pending':>7} "
    f"{'seconds':>7} {'lookups/s':>9} {'CPU us/lookup':>13}"
)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()
    proc, base_url = start_sandbox()
    os.environ["BATCHSEND_ADMIN_KEY"] = ADMIN
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            os.chdir(folder)  # reports/ lands here
            print(HEADER)
            for provider in ("tosend", "v1"):
                db, run_id = faulty_run(folder, args.rows, provider, base_url)
                pristine = folder / f"{provider}-pristine.db"
                shutil.copy(db, pristine)
                for concurrency in args.concurrency:
                    shutil.copy(pristine, db)
                    start_cpu, start = cpu(), time.perf_counter()
                    result = reconcile_run(
                        run_id,
                        db_path=db,
                        grace=0,
                        api_key=KEY,
                        concurrency=concurrency,
                        rate=1e9,
                        progress=False,
                    )
                    seconds = time.perf_counter() - start
                    used = cpu() - start_cpu
                    if result.still_unknown:
                        raise SystemExit(f"{provider}: {result.still_unknown} rows left unknown")
                    print(
                        f"{provider:8} {concurrency:>4} {result.messages:>8,} "
                        f"{result.requests:>8,} {result.sent:>6,} {result.pending:>7,} "
                        f"{seconds:>7.2f} {result.messages / seconds:>9,.0f} "
                        f"{used / result.messages * 1e6:>13,.0f}"
                    )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
