"""``resume_run``: unknown rows, same-request resends, retries, and the refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.campaigns import recipients_in, write_campaign
from support.sandboxes import ScriptedToSend

from batchsend.errors import ResumeRefusedError, RunNotFoundError
from batchsend.providers import get_provider
from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.sending import units_for_pending
from batchsend.states import RecipientState, RunState
from batchsend.store import RunRecorder, Store
from batchsend.transport import make_transport

KEY = "sk-test"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run(campaign: Path, sandbox: Sandbox, **kw):
    return run_campaign(
        campaign, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False, **kw
    )


def resume(run_id: str, sandbox: Sandbox, **kw):
    return resume_run(
        run_id, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False, **kw
    )


def assert_each_once(sandbox: Sandbox, rows: int) -> None:
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered == Counter({f"user{n}@example.org": 1 for n in range(1, rows + 1)})


def test_resume_refuses_changed_inputs_unless_forced(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=10)
    first = run(campaign, sandbox, limit=3)
    source = tmp_path / "c" / "recipients.csv"
    source.write_text(source.read_text().replace("First9", "Nine"))
    with pytest.raises(ResumeRefusedError, match="recipient file") as info:
        resume(first.run_id, sandbox)
    assert info.value.exit_code == 2 and "--force" in str(info.value)
    assert len(sandbox.messages()) == 3
    (tmp_path / "c" / "campaign.toml").write_text(
        (tmp_path / "c" / "campaign.toml").read_text().replace("News for", "Tidings for")
    )
    with pytest.raises(ResumeRefusedError, match="templates"):
        resume(first.run_id, sandbox)
    forced = resume(first.run_id, sandbox, force=True)
    assert forced.counts["sent"] == 10
    assert "Tidings for Nine" in {m["body"]["subject"] for m in sandbox.messages()}


def test_in_flight_rows_become_unknown_and_resend_repeats_the_same_request(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A crash after one request left (answer lost) and before another left.

    Against a provider that honours Idempotency-Key (the sandbox's --idempotency-keys),
    --resend-unknown delivers nobody twice; the next test shows the default provider.
    """
    sandbox.configure(idempotency_keys=True)
    campaign = write_campaign(tmp_path / "c", rows=40)
    first = run(campaign, sandbox, limit=10)
    with Store("b.db") as store:
        from batchsend.campaign import load_campaign

        provider = get_provider("tosend", base_url=sandbox.base_url, api_key=KEY, batch_size=10)
        units = list(
            units_for_pending(store, load_campaign(campaign), first.run_id, provider, None, None)
        )
        left, never_left = units[0], units[1]
        recorder = RunRecorder(store, first.run_id)
        recorder.mark_sending(left)
        recorder.mark_sending(never_left)

        async def send_one() -> int:
            async with make_transport("aiohttp", concurrency=1) as transport:
                response = await transport.send(provider.build_request(left))
            return response.status

        assert asyncio.run(send_one()) == 200  # accepted; the process "dies" before recording
    in_flight = set(left.rows) | set(never_left.rows)

    resumed = resume(first.run_id, sandbox)
    assert resumed.state is RunState.FINISHED  # unknown is terminal
    assert resumed.counts["unknown"] == 20 and resumed.counts["sent"] == 20
    with Store("b.db") as store:
        unknown = set(store.rows_in_state(first.run_id, [RecipientState.UNKNOWN]))
        assert unknown == in_flight
        assert store.recipient(first.run_id, min(unknown))["reason"] == "in_flight_at_crash"
    assert len(recipients_in(sandbox.messages())) == 40 - len(never_left.rows)

    duplicates_before = sandbox.stats()["duplicates"]
    again = resume(first.run_id, sandbox, resend_unknown=True)
    assert again.counts["sent"] == 40 and again.counts["unknown"] == 0
    assert_each_once(sandbox, 40)  # the request that had left was recognised, not redelivered
    assert sandbox.stats()["duplicates"] == duplicates_before + 1
    keys = {m["idempotency_key"] for m in sandbox.messages() if m["to"][0] in
            {f"user{r}@example.org" for r in never_left.rows}}  # fmt: skip
    assert keys == {never_left.key}


def test_retry_failed_repeats_the_whole_request_under_its_key(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A request the provider certainly did not take failed retryable; --retry-failed
    sends it. (A provider never reached at all leaves the rows pending instead:
    tests/test_run_unreachable.py.)"""
    # v1: no account check first; every request of the run is refused as rate limited
    # (all four in flight at once: one pause of the rate limiter, not one per request)
    sandbox.configure(refuse_next=4, retry_after=False)
    campaign = write_campaign(tmp_path / "c", rows=4, provider="v1", send={"max_attempts": 1})
    first = run_campaign(
        campaign, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False
    )
    assert first.counts["failed"] == 4
    with Store("b.db") as store:
        assert (
            len(store.rows_in_state(first.run_id, [RecipientState.FAILED], retryable_only=True))
            == 4
        )
        keys = {r["unit_key"] for r in store.recipients(first.run_id)}
    plain = resume(first.run_id, sandbox)  # without the flag, failures stay failed
    assert plain.counts["failed"] == 4 and sandbox.messages() == []
    retried = resume(first.run_id, sandbox, retry_failed=True)
    assert retried.counts["sent"] == 4 and retried.counts["failed"] == 0
    assert_each_once(sandbox, 4)
    assert {m["idempotency_key"] for m in sandbox.messages()} == keys


@pytest.mark.parametrize("fault", ["fail_rate", "drop_rate"])
def test_a_maybe_processed_request_is_unknown_and_only_an_explicit_resend_sends_it(
    tmp_path: Path, sandbox: Sandbox, fault: str
) -> None:
    """fail_rate: refused before processing; drop_rate: delivered, answer lost. The client
    cannot tell the two apart, so neither is ever sent again without --resend-unknown."""
    campaign = write_campaign(tmp_path / "c", rows=20, send={"max_attempts": 3})
    sandbox.configure(**{fault: 1.0})
    first = run(campaign, sandbox)
    assert first.counts["unknown"] == 20 and first.counts["failed"] == 0
    delivered = len(sandbox.messages())
    assert delivered == (20 if fault == "drop_rate" else 0)
    assert sandbox.stats()["requests"] == 3  # GET /v2/info and two batches, no retry
    sandbox.configure(**{fault: 0.0})
    plain = resume(first.run_id, sandbox, retry_failed=True)  # unknown is not failed
    assert plain.counts["unknown"] == 20 and len(sandbox.messages()) == delivered
    if fault == "fail_rate":  # the user knows these were not delivered, and says so
        again = resume(first.run_id, sandbox, resend_unknown=True)
        assert again.counts["sent"] == 20
    assert_each_once(sandbox, 20)


def test_resume_with_nothing_to_do_sends_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5)
    first = run(campaign, sandbox)
    requests = sandbox.stats()["requests"]
    again = resume(first.run_id, sandbox, retry_failed=True, resend_unknown=True)
    assert again.state is RunState.FINISHED and again.counts["sent"] == 5
    assert sandbox.stats()["requests"] == requests


def test_resume_refuses_a_dry_run_and_an_unknown_id(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5)
    dry = run(campaign, sandbox, dry_run=True)
    with pytest.raises(ResumeRefusedError, match="dry run"):
        resume(dry.run_id, sandbox)
    with pytest.raises(RunNotFoundError, match="no run"):
        resume("20990101T000000-000000", sandbox)


def test_resume_refuses_a_run_another_live_process_is_sending(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5)
    first = run(campaign, sandbox, limit=2)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with Store("b.db") as store:
            store.conn.execute(
                "UPDATE runs SET state = 'running', pid = ? WHERE id = ?", (other.pid, first.run_id)
            )
        with pytest.raises(ResumeRefusedError, match=f"process {other.pid}"):
            resume(first.run_id, sandbox)
    finally:
        other.kill()
        other.wait()
    assert resume(first.run_id, sandbox).counts["sent"] == 5  # the process is gone now


def test_a_fatal_answer_to_a_resent_request_keeps_its_rows_failed_or_unknown(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A key revoked before --retry-failed / --resend-unknown: the rebuilt requests are
    refused on their first attempt, and their rows keep the state they had (a plain resume
    then must not send them: an unknown row may have been delivered)."""
    campaign = write_campaign(tmp_path / "c", rows=6, provider="v1", send={"max_attempts": 1})
    sandbox.configure(refuse_next=3, retry_after=False)
    first = run_campaign(
        campaign, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False,
        limit=3,
    )  # fmt: skip
    assert first.counts["failed"] == 3  # rows 1-3: refused as rate limited, retryable
    sandbox.configure(fail_rate=1.0)
    second = resume(first.run_id, sandbox)  # rows 4-6 meet a 5xx: unknown
    assert second.counts["unknown"] == 3 and sandbox.messages() == []
    sandbox.configure(fail_rate=0.0, api_keys=("sk-other",))  # our key is revoked
    refused = resume(first.run_id, sandbox, retry_failed=True, resend_unknown=True)
    assert refused.state is RunState.FATAL
    assert (refused.counts["failed"], refused.counts["unknown"]) == (3, 3)
    assert refused.counts["pending"] == 0
    sandbox.configure(api_keys=(KEY,))
    plain = resume(first.run_id, sandbox)
    assert (plain.counts["failed"], plain.counts["unknown"]) == (3, 3)
    assert sandbox.messages() == []


def test_resend_unknown_after_a_partial_207_sends_only_the_unknown_message(
    tmp_path: Path,
) -> None:
    """Row 5 of a batch of 10 got a per-message 500 (and was delivered); the other 9
    were accepted. --resend-unknown must send row 5 alone, never the 9 again."""

    def batch(emails, n):
        def success(e):
            return {"status": "success", "message_id": e["message_hash"]}

        if n == 1:
            failed = {"status": "error", "status_code": 500, "error_type": "internal_error",
                      "message": "oops", "delivered": True}  # fmt: skip
            return 207, [failed if i == 4 else success(e) for i, e in enumerate(emails)]
        return 200, [success(e) for e in emails]

    provider = ScriptedToSend(batch).start()
    try:
        campaign = write_campaign(tmp_path / "c", rows=10, base_url=provider.base_url)
        first = run_campaign(campaign, db_path="b.db", api_key=KEY, progress=False)
        assert (first.counts["sent"], first.counts["unknown"]) == (9, 1)
        again = resume_run(
            first.run_id, db_path="b.db", api_key=KEY, progress=False, resend_unknown=True
        )
        assert again.counts["sent"] == 10
        assert provider.requests[1] == ["user5@example.org"]  # alone, in a new request
        # the user accepted the risk for row 5; nobody else got a second message
        assert Counter(provider.delivered) == Counter(
            {f"user{n}@example.org": 2 if n == 5 else 1 for n in range(1, 11)}
        )
    finally:
        provider.stop()
