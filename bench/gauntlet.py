"""The reliability gauntlet, long form: crashes, faults and a fatal error mid-run.

Run from the repository root (the scenarios live in ``tests/support/gauntlet.py``, shared
with the test suite's short form)::

    python -m bench.gauntlet                 # everything, long form (a few minutes)
    python -m bench.gauntlet crash --rows 10000 --kills 50
    python -m bench.gauntlet faults --rows 2000
    python -m bench.gauntlet fatal --rows 5000
    python -m bench.gauntlet inputs          # hostile recipient files at full size
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support.gauntlet import (
    FAULT_CELLS,
    HOSTILE_FILES,
    GauntletFailure,
    crash_campaign,
    fatal_mid_run,
    fault_cell,
    hostile_file,
)

# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    # Benchmarks send the same generated campaigns again and again: a register of sends
    # of their own, so they neither refuse themselves nor touch the user's.
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="batchsend-bench-state-")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what",
        nargs="*",
        default=[],  # nothing named: all three
        choices=["crash", "faults", "fatal", "inputs", []],
        metavar="crash|faults|fatal|inputs",
    )
    parser.add_argument("--rows", type=int, default=None, help="recipients per campaign")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--provider", choices=["tosend", "v1"], default="tosend")
    args = parser.parse_args(argv)
    what = args.what or ["crash", "faults", "fatal", "inputs"]
    failures = 0

    def attempt(label: str, scenario: Callable[[], object]) -> None:
        nonlocal failures
        try:
            scenario()
        except GauntletFailure as exc:
            failures += 1
            print(f"FAIL {label}: {exc}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gauntlet-") as tmp:
        root = Path(tmp)
        if "crash" in what:
            print(f"== crash campaign: {args.kills} SIGKILLs", flush=True)
            attempt("crash", lambda: crash_campaign(
                root / "crash", rows=args.rows or 10_000, kills=args.kills,
                provider=args.provider, seed=args.seed,
            ))  # fmt: skip
        if "faults" in what:
            print("== fault matrix", flush=True)
            for provider in ("tosend", "v1"):
                for name in FAULT_CELLS:
                    rows = args.rows or 1000
                    if name == "provider_hangs":  # every attempt waits for the timeout
                        rows = min(rows, 200)
                    attempt(f"{provider} {name}", lambda n=name, p=provider, r=rows: fault_cell(
                        n, root / f"faults-{p}", rows=r, provider=p,
                    ))  # fmt: skip
        if "fatal" in what:
            print("== fatal error mid-run", flush=True)
            for provider in ("tosend", "v1"):
                attempt(f"fatal {provider}", lambda p=provider: fatal_mid_run(
                    root / f"fatal-{p}", rows=args.rows or 5000, provider=p, concurrency=8,
                ))  # fmt: skip
        if "inputs" in what:
            print("== hostile recipient files, full size", flush=True)
            for name in HOSTILE_FILES:
                attempt(f"inputs {name}", lambda n=name: hostile_file(n, root / "inputs"))
    print("gauntlet: all promises kept" if not failures else f"gauntlet: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
