"""How fast the store records: run-start inserts, and the per-request write-ahead marks.

    python bench/store_bench.py [ROWS]

Prints rows/s for inserting ROWS rows at run start (one transaction, as a run does),
and the cost per request of ``mark_sending`` (a committed transaction) + buffered
``record_final``, for single-message requests (v1) and 100-message batches (ToSend).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from batchsend.message import Address, Message
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.store import NewRecipient, RunRecorder, Store

SENDER = Address("news@example.com")


def units(first_row: int, count: int, per_unit: int) -> list[SendUnit]:
    out = []
    row = first_row
    for u in range(count):
        messages = []
        for _ in range(per_unit):
            msg = Message(row=row, sender=SENDER, to=(Address(f"r{row}@example.org"),), subject="s")
            messages.append(PlannedMessage(f"m{row}", (row,), msg))
            row += 1
        out.append(SendUnit(f"u{first_row}-{u}", tuple(messages), per_unit > 1))
    return out


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        started = time.perf_counter()
        with store.creating_run(campaign_path="/bench.toml", provider="tosend") as run_id:
            store.add_recipients(
                run_id,
                (
                    NewRecipient(row=i, email=f"r{i}@example.org", metadata={"id": str(i)})
                    for i in range(1, rows + 1)
                ),
            )
        took = time.perf_counter() - started
        print(f"insert {rows:,} rows at run start: {took:.2f} s ({rows / took:,.0f} rows/s)")

        recorder = RunRecorder(store, run_id)
        next_row = 1
        for per_unit, count in ((1, 5_000), (100, 500)):
            batch = units(next_row, count, per_unit)
            next_row += per_unit * count
            started = time.perf_counter()
            for unit in batch:
                recorder.mark_sending(unit)
                recorder.record_final(
                    unit,
                    [MessageOutcome(pm.key, OutcomeKind.ACCEPTED, 200) for pm in unit.messages],
                    1,
                )
            recorder.flush()
            took = time.perf_counter() - started
            print(
                f"{per_unit:>3} message(s) per request: {took / count * 1e6:,.0f} us per request,"
                f" {took / (count * per_unit) * 1e6:,.1f} us per row"
            )
        store.close()


if __name__ == "__main__":
    main()
