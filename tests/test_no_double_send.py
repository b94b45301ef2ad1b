"""Nobody emailed twice, against a sandbox that behaves like the real providers.

The sandbox runs in its default mode: it does NOT de-duplicate (the same request twice is
two messages), as neither provider documents any idempotency. Each scenario runs a real
campaign over HTTP and then holds every row's recorded state against the sandbox's own
record of what it delivered:

* ``sent``: delivered exactly once;
* ``failed``: never delivered (the provider certainly did not take it);
* ``unknown``: delivered at most once (only the provider knows);
* ``pending``: never delivered;

and nobody, in any scenario, got two messages.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.campaigns import recipients_in, write_campaign

from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.store import Store

KEY = "sk-test"
ROWS = 60


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def settle(sandbox: Sandbox, timeout: float = 10.0) -> None:
    """Wait until the sandbox has finished the requests it holds (slow ones deliver late)."""
    deadline = time.monotonic() + timeout
    while sandbox.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)


def states_of(run_id: str) -> dict[str, tuple[str, str | None]]:
    with Store("b.db") as store:
        return {r["email"]: (r["state"], r["reason"]) for r in store.recipients(run_id)}


def assert_truthful(run_id: str, sandbox: Sandbox) -> dict[str, int]:
    """Every row's state agrees with what the sandbox delivered; returns counts by state."""
    settle(sandbox)
    delivered = Counter(recipients_in(sandbox.messages()))
    twice = [a for a, n in delivered.items() if n > 1]
    assert not twice, f"{len(twice)} recipients got two messages, e.g. {twice[:3]}"
    states = states_of(run_id)
    for email, (state, reason) in states.items():
        got = delivered.get(email, 0)
        if state == "sent":
            assert got == 1, (email, state, reason)
        elif state in ("failed", "pending", "skipped"):
            assert got == 0, (email, state, reason)
        else:
            assert state == "unknown" and got <= 1, (email, state, reason)
    assert not set(delivered) - set(states), "a message to an address not in the file"
    return dict(Counter(state for state, _ in states.values()))


def campaign(tmp_path: Path, sandbox: Sandbox, **send: Any) -> Path:
    settings = {"concurrency": 4, "batch_size": 10, "max_attempts": 4, "max_retry_time": 10}
    settings.update(send)
    return write_campaign(tmp_path / "c", rows=ROWS, send=settings, base_url=sandbox.base_url)


def run(path: Path, **kw: Any):
    return run_campaign(path, db_path="b.db", api_key=KEY, progress=False, **kw)


def resume(run_id: str, **kw: Any):
    return resume_run(run_id, db_path="b.db", api_key=KEY, progress=False, **kw)


def test_a_batch_with_spam_entries_fails_only_those_and_sends_nothing_twice(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    path = campaign(tmp_path, sandbox)
    source = path.parent / "recipients.csv"
    with source.open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    for n in (3, 14, 25):  # one per batch: every recipient of the message is disposable
        rows[n][0] = f"throwaway{n}@mailinator.com"
    with source.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    summary = run(path)
    counts = assert_truthful(summary.run_id, sandbox)
    assert counts == {"sent": ROWS - 3, "failed": 3}
    reasons = {r for s, r in states_of(summary.run_id).values() if s == "failed"}
    assert reasons == {"disposable"}
    assert sandbox.stats()["requests"] == 1 + ROWS // 10  # /v2/info, then each batch once


def test_an_answer_slower_than_the_timeout_leaves_rows_unknown_delivered_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.configure(slow_rate=1.0, slow_ms=1500, seed=1)
    summary = run(campaign(tmp_path, sandbox, timeout=0.3))
    counts = assert_truthful(summary.run_id, sandbox)
    assert counts == {"unknown": ROWS}
    assert len(sandbox.messages()) == ROWS  # the provider did deliver each, once
    assert sandbox.stats()["requests"] == 1 + ROWS // 10  # and nothing was sent again


def test_accepted_then_500_leaves_rows_unknown_and_the_rest_sent(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.configure(fail_after_accept_rate=0.3, seed=1)
    summary = run(campaign(tmp_path, sandbox))
    counts = assert_truthful(summary.run_id, sandbox)
    assert counts["unknown"] > 0 and counts["sent"] + counts["unknown"] == ROWS
    assert summary.exit_code == 3  # finished, with rows the provider may have taken


def test_dropped_connections_leave_rows_unknown_delivered_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.configure(drop_rate=0.3, seed=3)
    summary = run(campaign(tmp_path, sandbox))
    counts = assert_truthful(summary.run_id, sandbox)
    assert counts["unknown"] > 0 and counts["sent"] + counts["unknown"] == ROWS
    assert len(sandbox.messages()) == ROWS  # the dropped ones were delivered too


def test_refusals_before_processing_are_unknown_until_the_user_resends_them(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.configure(fail_rate=0.2, seed=2)
    summary = run(campaign(tmp_path, sandbox))
    counts = assert_truthful(summary.run_id, sandbox)
    assert counts["unknown"] > 0 and counts["sent"] + counts["unknown"] == ROWS
    plain = resume(summary.run_id)  # never on its own
    assert plain.counts["unknown"] == counts["unknown"]
    sandbox.configure(fail_rate=0.0)
    again = resume(summary.run_id, resend_unknown=True)  # the user accepts the risk
    assert assert_truthful(summary.run_id, sandbox) == {"sent": ROWS}
    assert again.exit_code == 0


def test_a_429_storm_is_retried_to_the_end_with_nobody_twice(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.configure(schedule=((2, {"refuse_next": 12}),))  # after GET /v2/info
    summary = run(campaign(tmp_path, sandbox, max_attempts=10, max_retry_time=60))
    assert assert_truthful(summary.run_id, sandbox) == {"sent": ROWS}
    assert sandbox.stats()["faults"]["429"] == 12
