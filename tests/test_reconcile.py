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
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.campaigns import deliveries, write_campaign
from support.processes import run_batchsend

from batchsend.crashpoints import ENV_VAR as CRASH_ENV
from batchsend.errors import ReconcileError, RetryableSendError, SecretError
from batchsend.providers import LookupKind, LookupTarget, get_provider
from batchsend.reconcile import parse_grace, reconcile_run
from batchsend.resume import resume_run
from batchsend.retry import RetryPolicy
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
    return deliveries(sandbox.messages())


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
    """``batchsend ARGS`` in a child process with the sending key, and ``env``."""
    return run_batchsend(*args, key=KEY, env=env, stdin=stdin)


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


def test_lookups_retry_their_own_429s(tmp_path: Path, sandbox: Sandbox) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    sandbox.configure(refuse_next=3)  # the next three lookups are rate limited
    result = reconcile(run_id, retry=RetryPolicy(max_attempts=5, max_time=20))
    assert result.still_unknown == 0 and result.lookup_failed == 0
    assert result.requests == result.messages + 3
    assert sandbox.stats()["faults"]["429"] == 3


def test_a_lookup_that_keeps_failing_leaves_its_rows_unknown(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "v1")
    before = snapshot(run_id)
    sandbox.configure(refuse_next=10_000, retry_after=False)
    result = reconcile(run_id, retry=RetryPolicy(max_attempts=2, max_time=5, initial_wait=0.01))
    assert result.sent == result.pending == 0
    assert result.lookup_failed == result.still_unknown > 0 and result.exit_code == 3
    assert "lookup failed" in result.describe() and "429" in result.failures[0]
    assert snapshot(run_id) == before


def test_rows_back_to_pending_make_the_run_unfinished_with_its_resume_command(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    with Store("b.db") as store:
        assert store.get_run(run_id).state.value == "finished"
    result = reconcile(run_id)
    assert result.pending > 0
    with Store("b.db") as store:
        run = store.get_run(run_id)
    assert run.state.value == "interrupted" and run.counts == result.counts
    listed = batchsend("runs", "--db", "b.db")
    assert f"batchsend resume {run_id} --db b.db" in listed.stdout
    report = Path(run.report_path or "").read_text("utf-8")
    assert "reconciled" in report and "not_accepted" in report


# -- request building and answer reading, without the network ----------------------------

FOUND, NOT_FOUND, MORE = LookupKind.FOUND, LookupKind.NOT_FOUND, LookupKind.MORE
FAILED, REFUSED = LookupKind.FAILED, LookupKind.REFUSED
DISABLED = {"error": "event_api_disabled", "reason": "event_api_disabled"}
TARGET = LookupTarget(key="bs-1/a b", recipient="ann@example.org", since=1.7e9, until=1.7e9 + 60)


def answer(provider: str, status: int, body: Any, page: int = 1, **headers: str):
    p = get_provider(provider, base_url="http://127.0.0.1:1", api_key="k")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return p.parse_lookup(TARGET, status, headers, raw, page)


def test_lookup_requests() -> None:
    tosend = get_provider("tosend", base_url="http://127.0.0.1:1/", api_key=ADMIN)
    request = tosend.lookup_request(TARGET)
    assert (request.method, request.url) == ("GET", "http://127.0.0.1:1/v2/emails/bs-1%2Fa%20b")
    assert request.headers["Authorization"] == f"Bearer {ADMIN}" and request.body is None
    v1 = get_provider("v1", base_url="http://127.0.0.1:1", api_key="k")
    request = v1.lookup_request(TARGET, page=2)
    assert request.url.startswith("http://127.0.0.1:1/api/v1/events?recipient=ann%40example.org")
    assert "from_timestamp=2023-11-14T22%3A13%3A20.000Z" in request.url
    assert "page=2" in request.url and "limit=100" in request.url
    assert request.headers["Authorization"] == "Bearer k" and "X-API-Key" not in request.headers


def event(key: str) -> dict[str, Any]:
    return {
        "email_id": "e-1",
        "event_type": "queued",
        "timestamp": "2023-11-14T22:13:21.000Z",
        "event_data": {"message_id": "<m@x>", "metadata": {"batchsend_id": key}},
    }


@pytest.mark.parametrize(
    ("provider", "status", "body", "kind"),
    [
        ("tosend", 200, {"data": {"message_id": TARGET.key, "status": "sent"}}, FOUND),
        ("tosend", 200, {"data": {"message_id": "other"}}, FAILED),
        ("tosend", 404, {"status_code": 404, "errors": {"code": "not_found"}}, NOT_FOUND),
        ("tosend", 404, {"errors": {"endpoint": {"not_found": "No endpoint"}}}, REFUSED),
        ("tosend", 404, b"<html>not here</html>", FAILED),  # a proxy: proves nothing
        ("tosend", 403, {"errors": {"code": "insufficient_scope"}}, REFUSED),
        ("tosend", 401, {"message": "API Key is missing"}, REFUSED),
        ("tosend", 418, {}, FAILED),
        ("v1", 200, {"events": [event("x"), event(TARGET.key)]}, FOUND),
        ("v1", 200, {"events": [event("x")], "pagination": {"pages": 1}}, NOT_FOUND),
        ("v1", 200, {"events": [event("x")], "pagination": {"pages": 3}}, MORE),
        ("v1", 200, {"nothing": []}, FAILED),
        ("v1", 403, DISABLED, REFUSED),
        ("v1", 403, {"error": "forbidden", "reason": "invalid_api_key"}, REFUSED),
    ],
)  # fmt: skip
def test_lookup_answers(provider: str, status: int, body: Any, kind: LookupKind) -> None:
    assert answer(provider, status, body).kind is kind


def test_found_answers_carry_the_providers_ids() -> None:
    found = answer("v1", 200, {"events": [event(TARGET.key)]})
    assert (found.provider_message_id, found.provider_email_id) == ("<m@x>", "e-1")
    assert found.accepted_at == "2023-11-14T22:13:21.000Z"
    assert answer("v1", 200, {"events": [], "pagination": {"pages": 2}}).next_page == 2


@pytest.mark.parametrize("provider", ["tosend", "v1"])
@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_lookup_answers_are_retryable(provider: str, status: int) -> None:
    with pytest.raises(RetryableSendError) as caught:
        answer(provider, status, {"message": "busy"}, **{"Retry-After": "7"})
    assert caught.value.status == status and caught.value.retry_after == 7


def test_rows_a_dead_process_left_sending_are_looked_up_as_just_sent(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    path = campaign(tmp_path, sandbox, "tosend", concurrency=1)
    killed = batchsend("run", str(path), "--db", "b.db", **{CRASH_ENV: "sending:2"})
    assert killed.returncode == -9, killed.stderr  # the second request never left
    with Store("b.db") as store:
        [run] = store.list_runs()
        assert store.counts(run.id)["sending"] == 5
    young = reconcile(run.id, grace=600)  # a dead process: its rows count as just sent
    assert young.too_young == 5 and young.pending == 0
    assert "5 row(s) were in flight when the run stopped" in young.describe()
    assert rows(run.id)["user6@example.org"]["state"] == "unknown"
    judged = reconcile(run.id)
    assert judged.pending == 5 and judged.still_unknown == 0
    resumed = batchsend("resume", run.id, "--db", "b.db", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert assert_consistent(run.id, sandbox) == Counter({"sent": ROWS})


def test_resume_reconcile_on_the_command_line_with_the_admin_key_on_stdin(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    done = batchsend(
        "resume", run_id, "--db", "b.db", "--reconcile", "--grace", "0", "--admin-key-stdin",
        "--json", stdin=ADMIN + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["reconciled"]["still_unknown"] == 0 and summary["counts"]["sent"] == ROWS
    assert ADMIN not in done.stdout + done.stderr
    assert assert_consistent(run_id, sandbox) == Counter({"sent": ROWS})
    both = batchsend(
        "resume", run_id, "--db", "b.db", "--reconcile", "--admin-key-stdin", "--api-key-stdin",
        stdin="x\n",
    )  # fmt: skip
    assert both.returncode == 2 and "only one key" in both.stderr


def test_a_bad_grace_is_a_usage_error(tmp_path: Path) -> None:
    bad = batchsend("reconcile", "r", "--grace", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_a_key_revoked_mid_reconcile_stops_it_keeping_what_was_settled(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend", slow_rate=1.0, slow_ms=1500)
    settle(sandbox)
    revoke_at = sandbox.stats()["requests"] + 6
    sandbox.configure(schedule=((revoke_at, {"admin_keys": ["tsend_admin_other"]}),))
    with pytest.raises(ReconcileError, match="stopped answering lookups") as caught:
        reconcile(run_id, concurrency=1)
    assert "refused the admin key" in str(caught.value)
    states = assert_consistent(run_id, sandbox)
    assert states == Counter({"sent": 5, "unknown": ROWS - 5})


def test_the_campaign_may_name_the_admin_key_file(tmp_path: Path, sandbox: Sandbox) -> None:
    run_id = faulty_run(tmp_path, sandbox, "tosend")
    campaign_file = tmp_path / "c" / "campaign.toml"
    (tmp_path / "c" / "admin.key").write_text(ADMIN + "\n", encoding="utf-8")
    text = campaign_file.read_text("utf-8")
    campaign_file.write_text(text.replace("[source]", 'admin_key_file = "admin.key"\n\n[source]'))
    done = batchsend("reconcile", run_id, "--db", "b.db", "--grace", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["still_unknown"] == 0


def test_admin_key_file_is_for_tosend_campaigns_only(tmp_path: Path) -> None:
    path = write_campaign(tmp_path / "c", provider="v1")
    path.write_text(
        path.read_text("utf-8").replace("[source]", 'admin_key_file = "a.key"\n[source]')
    )
    checked = batchsend("check", str(path))
    assert checked.returncode == 2 and "admin_key_file: only provider 'tosend'" in checked.stderr


@pytest.mark.parametrize("point", ["sending:2", "response:2"])
def test_rows_a_resume_left_in_flight_can_be_looked_up(
    tmp_path: Path, sandbox: Sandbox, point: str
) -> None:
    """The rows a resume renders (here: past a first run's --limit) carry their message
    key from the moment they are marked sending, as a run's spooled rows do: killed with a
    request in flight, they are settled by asking the provider, never left to a resend."""
    path = campaign(tmp_path, sandbox, "tosend", concurrency=1)
    first = batchsend("run", str(path), "--db", "b.db", "--limit", "10", "--json")
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    killed = batchsend("resume", run_id, "--db", "b.db", **{CRASH_ENV: point})
    assert killed.returncode == -9, killed.stderr
    with Store("b.db") as store:
        assert store.counts(run_id)["sending"] == 5
    with Store("b.db") as store:
        in_flight = [r for r in store.recipients(run_id) if r["state"] == "sending"]
    assert all(r["message_key"] for r in in_flight), in_flight
    settled = reconcile(run_id)
    assert settled.still_unknown == 0
    resumed = batchsend("resume", run_id, "--db", "b.db", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert assert_consistent(run_id, sandbox) == Counter({"sent": ROWS})
