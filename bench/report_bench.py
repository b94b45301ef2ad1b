"""How fast, and in how much memory, a big run's report is written.

Builds a run of ``--rows`` recipients (default 5,000,000) directly with sqlite
``executemany`` in the store's schema (80% sent, 10% failed, 7% skipped, 3% unknown;
two metadata columns), then exports it in a fresh subprocess per format and reads the
subprocess's own peak resident memory as the kernel counts it (``ru_maxrss``). Goal: under
30 s and under 500 MB for 5 million rows.

    python bench/report_bench.py                   # 5M rows, csv parquet json
    python bench/report_bench.py --rows 1000000 --formats csv

The database is kept in bench/out/ and reused when it already holds that many rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RUN_ID = "20261121T090000-bench0"

EXPORT = """
import resource, sys, time
from batchsend.report import write_report
t = time.perf_counter()
write_report(sys.argv[1], sys.argv[2], sys.argv[3], format=sys.argv[4])
u = resource.getrusage(resource.RUSAGE_SELF)
print(time.perf_counter() - t, u.ru_maxrss, u.ru_utime + u.ru_stime)
"""


def build(db: Path, rows: int) -> None:
    from batchsend.store import Store

    if db.exists():
        with sqlite3.connect(db) as conn:
            found = conn.execute(
                "SELECT COUNT(*) FROM recipients WHERE run_id = ?", (RUN_ID,)
            ).fetchone()[0]
        if found == rows:
            print(f"reusing {db} ({rows:,} rows)")
            return
        db.unlink()
    Store(db).close()  # the store's own schema and indexes
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(
        "INSERT INTO runs (id, campaign_path, campaign_name, provider, settings, state,"
        " is_test, dry_run, started_at, ended_at, updated_at, total_rows, metadata_columns)"
        " VALUES (?, 'bench/campaign.toml', 'bench', 'tosend', '{}', 'finished', 0, 0,"
        " '2026-11-21T09:00:00.000Z', '2026-11-21T10:00:00.000Z',"
        " '2026-11-21T10:00:00.000Z', ?, ?)",
        (RUN_ID, rows, json.dumps(["customer_id", "segment"])),
    )

    def recipients():
        for i in range(1, rows + 1):
            kind = i % 100
            meta = json.dumps(
                {"customer_id": f"C{i:08d}", "segment": "=retail" if i % 7 else "b2b"}
            )
            key = f"{i:040x}"
            common = (RUN_ID, i, f"user{i}@example.com", f"User Number {i}")
            if kind < 80:
                yield (
                    *common,
                    "sent",
                    None,
                    1,
                    key,
                    f"u{i // 100:039x}",
                    200,
                    None,
                    None,
                    f"<{key}@example.com>",
                    f"{i:032x}",
                    "autumn",
                    meta,
                    "2026-11-21T09:30:00.000Z",
                    "2026-11-21T09:30:00.000Z",
                    None,
                )
            elif kind < 90:
                yield (
                    *common,
                    "failed",
                    "validation_error",
                    1,
                    key,
                    f"u{i // 100:039x}",
                    422,
                    "validation_error",
                    'Domain "example.com", not verified',
                    None,
                    None,
                    "autumn",
                    meta,
                    None,
                    "2026-11-21T09:30:00.000Z",
                    0,
                )
            elif kind < 97:
                yield (
                    *common,
                    "skipped",
                    "duplicate",
                    0,
                    None,
                    None,
                    None,
                    None,
                    "same address as an earlier row",
                    None,
                    None,
                    "autumn",
                    meta,
                    None,
                    "2026-11-21T09:00:00.000Z",
                    None,
                )
            else:
                yield (
                    *common,
                    "unknown",
                    "in_flight_at_crash",
                    0,
                    key,
                    f"u{i // 100:039x}",
                    None,
                    None,
                    None,
                    None,
                    None,
                    "autumn",
                    meta,
                    None,
                    "2026-11-21T09:30:00.000Z",
                    None,
                )

    with conn:
        conn.executemany(
            "INSERT INTO recipients (run_id, row, email, name, state, reason, attempts,"
            " message_key, unit_key, http_status, error_type, error_message,"
            " provider_message_id, provider_email_id, tag, metadata, sent_at, updated_at,"
            " retryable) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            recipients(),
        )
    conn.close()
    size = db.stat().st_size / 1e6
    print(f"built {db}: {rows:,} rows, {size:,.0f} MB in {time.perf_counter() - started:.1f} s")


def export(db: Path, fmt: str) -> tuple[float, float, float, float, float]:
    """(seconds in write_report, wall seconds with start-up, CPU seconds, peak MB, file MB).

    CPU seconds (user + system, all threads) tell how much work it was when other
    programs share the machine and the wall clock says little.
    """
    suffix = {"json": "jsonl"}.get(fmt, fmt)
    out = OUT / f"report.{suffix}"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", EXPORT, str(db), RUN_ID, str(out), fmt],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    inside, peak_kb, cpu = done.stdout.split()
    return float(inside), wall, float(cpu), int(peak_kb) / 1024, out.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet", "json"])
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    db = OUT / f"report-bench-{args.rows}.db"
    build(db, args.rows)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    head = ("format", "export s", "wall s", "CPU s", "peak MB", "file MB", "rows/s")
    print("{:8} {:>9} {:>7} {:>7} {:>8} {:>8} {:>10}".format(*head))
    for fmt in args.formats:
        inside, wall, cpu, peak, size = export(db, fmt)
        rate = args.rows / inside
        print(f"{fmt:8} {inside:9.1f} {wall:7.1f} {cpu:7.1f} {peak:8.0f} {size:8.0f} {rate:10,.0f}")


if __name__ == "__main__":
    main()
