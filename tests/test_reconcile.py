"""``batchsend reconcile``: unknown rows settled from the provider's own log, over real HTTP.

The sandbox runs in its default mode (no de-duplication, as at both providers) with the
faults that leave rows unknown: a dropped connection after acceptance, a 500 after
acceptance, an answer slower than the client's timeout (all three delivered), and a
500 before processing (not delivered). Every check counts deliveries from the sandbox's
own record (``/_sandbox/messages``): after reconcile and resume every row is ``sent``
exactly once or ``failed``, and nobody got two messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from runkit import recipients_in, write_campaign

from batchsend.crashpoints import ENV_VAR as CRASH_ENV
from batchsend.errors import ReconcileError, SecretError
from batchsend.reconcile import parse_grace, reconcile_run
from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.store import Store

KEY = "sk-test"
ADMIN = "tsend_admin_test"
ROWS = 40
FAULTS = {"drop_rate": 0.15, "fail_after_accept_rate": 0.15, "fail_rate": 0.15, "seed": 3}
CLEAN = {"drop_rate": 0.0, "fail_after_accept_rate": 0.0, "fail_rate": 0.0, "slow_rate": 0.0}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHSEND_ADMIN_KEY", raising=False)


def settle(sandbox: Sandbox, timeout: float = 10.0) -> None:
    """Wait until the sandbox has answered what it holds (a slow answer delivers late)."""
    deadline = time.monotonic() + timeout
    while sandbox.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)


def campaign(tmp_path: Path, sandbox: Sandbox, provider: str, **send: Any) -> Path:
    settings: dict[str, Any] = {"concurrency": 4, "max_attempts": 2, "max_retry_time": 5}
    if provider == "tosend":
        settings["batch_size"] = 5
    settings.update(send)
    return write_campaign(
        tmp_path / "c", rows=ROWS, provider=provider, send=settings, base_url=sandbox.base_url
    )


def rows(run_id: str) -> dict[str, dict[str, Any]]:
    with Store("b.db") as store:
        return {r["email"]: r for r in store.recipients(run_id)}


def delivered(sandbox: Sandbox) -> Counter[str]:
    settle(sandbox)
    return Counter(recipients_in(sandbox.messages()))


def assert_consistent(run_id: str, sandbox: Sandbox) -> Counter[str]:
    """Each row's state agrees with the sandbox's record; returns the counts by state."""
    got = delivered(sandbox)
    assert not [a for a, n in got.items() if n > 1], "someone got two messages"
    states: Counter[str] = Counter()
    for email, row in rows(run_id).items():
        states[row["state"]] += 1
        if row["state"] == "sent":
            assert got[email] == 1, row
        elif row["state"] in ("pending", "failed"):
            assert got[email] == 0, row
        else:
            assert row["state"] == "unknown" and got[email] <= 1, row
    return states


def faulty_run(tmp_path: Path, sandbox: Sandbox, provider: str, **faults: Any) -> str:
    sandbox.configure(**(faults or FAULTS))
    summary = run_campaign(
        campaign(tmp_path, sandbox, provider, timeout=1.0),
        db_path="b.db",
        api_key=KEY,
        progress=False,
    )
    sandbox.configure(**CLEAN)
    states = assert_consistent(summary.run_id, sandbox)
    assert states["unknown"] > 0, states
    return summary.run_id


def reconcile(run_id: str, **kw: Any):
    with Store("b.db") as store:
        tosend = store.get_run(run_id).provider == "tosend"
    kw.setdefault("admin_key", ADMIN if tosend else None)
    kw.setdefault("grace", 0)
    kw.setdefault("rate", 1000)
    return reconcile_run(run_id, db_path="b.db", api_key=KEY, progress=False, **kw)


def batchsend(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchsend", *args],
        env={**os.environ, "BATCHSEND_API_KEY": KEY, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_reconcile_then_resume_sends_everyone_exactly_once(
    tmp_path: Path, sandbox: Sandbox, provider: str
) -> None:
    run_id = faulty_run(tmp_path, sandbox, provider)
    before = rows(run_id)
    unknown = {e for e, r in before.items() if r["state"] == "unknown"}
    got = delivered(sandbox)
    accepted = {e for e in unknown if got[e]}  # dropped, 500 after accepting
    never = unknown - accepted  # refused with a 500 before processing
    assert accepted and never

    result = reconcile(run_id)
    assert (result.sent, result.pending, result.still_unknown) == (len(accepted), len(never), 0)
    assert result.exit_code == 0 and "resume" in result.next_commands
    after = rows(run_id)
    for email in accepted:
        row = after[email]
        assert (row["state"], row["reason"]) == ("sent", "reconciled")
        assert row["provider_message_id"] and row["sent_at"]
    for email in never:  # a 404 / no event: never accepted, back to pending, history kept
        row = after[email]
        assert (row["state"], row["reason"]) == ("pending", "not_accepted")
        assert row["attempts"] == before[email]["attempts"] >= 1
    assert assert_consistent(run_id, sandbox)["unknown"] == 0

    resumed = resume_run(run_id, db_path="b.db", api_key=KEY, progress=False)
    assert resumed.exit_code == 0, resumed.describe()
    assert assert_consistent(run_id, sandbox) == Counter({"sent": ROWS})
    assert delivered(sandbox) == Counter({f"user{n}@example.org": 1 for n in range(1, ROWS + 1)})


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_timed_out_answers_are_found_and_resume_reconcile_does_both(
    tmp_path: Path, sandbox: Sandbox, provider: str
) -> None:
    run_id = faulty_run(
        tmp_path, sandbox, provider, slow_rate=0.3, slow_ms=1500, fail_rate=0.1, seed=2
    )
    resumed = resume_run(
        run_id,
        db_path="b.db",
        api_key=KEY,
        progress=False,
        reconcile=True,
        grace=0,
        admin_key=ADMIN if provider == "tosend" else None,
    )
    assert resumed.exit_code == 0, resumed.describe()
    assert resumed.reconciled is not None and resumed.reconciled["sent"] > 0
    assert any(note.startswith("reconcile: ") for note in resumed.notes)
    assert assert_consistent(run_id, sandbox) == Counter({"sent": ROWS})


def test_a_message_too_young_to_judge_stays_unknown_with_when_to_try_again(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    first = reconcile(run_id, grace=600)
    assert first.sent > 0 and first.pending == 0  # found is found, however young
    assert first.too_young == first.still_unknown > 0 and first.exit_code == 3
    assert first.retry_at is not None and first.retry_at > time.time() + 500
    assert "try again after" in first.describe()
    assert first.to_dict()["try_again_after"]
    assert first.to_dict()["next"] == {"reconcile": f"batchsend reconcile {run_id} --db b.db"}
    second = reconcile(run_id, grace=0)
    assert second.pending == first.too_young and second.still_unknown == 0


def test_the_cli_reconciles_with_the_admin_key_from_the_environment(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    done = batchsend(
        "reconcile", run_id, "--db", "b.db", "--grace", "0", "--json", BATCHSEND_ADMIN_KEY=ADMIN
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["still_unknown"] == 0 and summary["sent"] + summary["pending"] > 0
    assert summary["next"] == {"resume": f"batchsend resume {run_id} --db b.db"}
    assert ADMIN not in done.stdout + done.stderr
    text = batchsend("reconcile", run_id, "--db", "b.db", BATCHSEND_ADMIN_KEY=ADMIN)
    assert text.returncode == 0 and "0 message(s) looked up" in text.stderr


def snapshot(run_id: str) -> list[tuple]:
    with Store("b.db") as store:
        return [tuple(r.values()) for r in store.recipients(run_id)]


@pytest.mark.parametrize(
    ("env", "args", "said"),
    [
        ({}, (), "BATCHSEND_ADMIN_KEY is not set"),
        ({"BATCHSEND_ADMIN_KEY": KEY}, (), "not a ToSend admin key"),
        ({"BATCHSEND_ADMIN_KEY": "tsend_admin_unknown"}, (), "refused the admin key"),
        ({"BATCHSEND_ADMIN_KEY": "tsend_admin_noscope"}, (), "insufficient_scope"),
        ({}, ("--admin-key-file", "missing.txt"), "cannot read the API key file"),
    ],
)
def test_no_usable_admin_key_is_exit_2_and_changes_nothing(
    tmp_path: Path, make_sandbox, env: dict[str, str], args: tuple[str, ...], said: str
) -> None:
    sandbox = make_sandbox(
        admin_keys=(ADMIN, "tsend_admin_noscope"), admin_scopes={"tsend_admin_noscope": ()}
    )
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    before = snapshot(run_id)
    refused = batchsend("reconcile", run_id, "--db", "b.db", "--grace", "0", *args, **env)
    assert refused.returncode == 2, refused.stderr
    assert said in refused.stderr and "Traceback" not in refused.stderr
    for value in env.values():
        assert value not in refused.stderr
    assert snapshot(run_id) == before


def test_a_v1_account_without_the_events_api_changes_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "v1")
    sandbox.configure(events_api=False)
    before = snapshot(run_id)
    with pytest.raises(ReconcileError, match="event_api_disabled") as caught:
        reconcile(run_id, admin_key=None)
    assert "not available" in str(caught.value) and caught.value.exit_code == 2
    assert snapshot(run_id) == before
    refused = batchsend("reconcile", run_id, "--db", "b.db")
    assert refused.returncode == 2 and "Events API is not enabled" in refused.stderr


def test_v1_takes_no_admin_key(tmp_path: Path, sandbox: Sandbox) -> None:
    run_id = faulty_run(tmp_path, sandbox, "v1")
    with pytest.raises(ReconcileError, match="no admin keys"):
        reconcile(run_id, admin_key=ADMIN)


def test_a_kill_during_reconcile_leaves_rows_unknown_or_rightly_settled(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend", slow_rate=1.0, slow_ms=1500)
    unknown = assert_consistent(run_id, sandbox)["unknown"]
    assert unknown == ROWS  # every answer timed out, every message was delivered
    killed = batchsend(
        "reconcile", run_id, "--db", "b.db", "--grace", "0", "--rate", "1000",
        BATCHSEND_ADMIN_KEY=ADMIN, **{CRASH_ENV: "response:36"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    states = assert_consistent(run_id, sandbox)  # each row unknown or truly sent
    assert 0 < states["sent"] < ROWS and states["sent"] + states["unknown"] == ROWS
    again = reconcile(run_id)
    assert again.sent == states["unknown"] and again.still_unknown == 0
    assert assert_consistent(run_id, sandbox) == Counter({"sent": ROWS})


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600), ("90s", 90), ("1h", 3600), ("0", 0), ("2.5m", 150)]
)
def test_grace_durations(text: str, seconds: float) -> None:
    assert parse_grace(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1m", "m"])
def test_bad_grace_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_grace(text)


def test_no_secret_error_for_a_key_given_in_python(tmp_path: Path, sandbox: Sandbox) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    with pytest.raises(SecretError, match="not a ToSend admin key"):
        reconcile(run_id, admin_key=KEY)
