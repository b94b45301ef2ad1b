"""An unreachable provider stops the run early, says where it tried and what to check,
and leaves every row pending for a resume: nothing reached it, so nothing is failed."""

from __future__ import annotations

import asyncio
import json
import shlex
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support.campaigns import recipients_in, write_campaign
from support.processes import query, run_batchsend
from support.sandboxes import TEST_KEY, closed_port

from batchsend.errors import FatalSendError
from batchsend.providers import get_provider
from batchsend.resume import resume_run
from batchsend.retry import RetryPolicy
from batchsend.run import run_campaign
from batchsend.states import RunState


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports/ lands in the test's folder


def test_a_closed_port_is_one_fatal_unreachable_error_with_every_row_pending(
    tmp_path: Path, sandbox
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    campaign = write_campaign(
        tmp_path / "c", rows=40, provider="v1", base_url=url, send={"max_attempts": 2}
    )
    db = tmp_path / "b.db"
    done = run_batchsend("run", str(campaign), "--db", str(db), "--json")
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "fatal" and summary["counts"]["pending"] == 40
    assert url in summary["fatal_error"] and "unreachable" in summary["fatal_error"]
    assert "is `batchsend sandbox` (or your local provider) running?" in summary["fatal_error"]
    # told at the first failure, once, not once per row
    assert done.stderr.count(f"cannot connect to {url}") == 1, done.stderr
    assert query(db, "SELECT state, COUNT(*) FROM recipients GROUP BY state") == [("pending", 40)]

    # the resume command, as printed, sends everyone once the provider is there
    words = shlex.split(summary["resume"])
    again = run_batchsend(*words[1:], "--base-url", sandbox.base_url, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"]["sent"] == 40
    assert Counter(recipients_in(sandbox.messages())) == Counter(
        {f"user{n}@example.org": 1 for n in range(1, 41)}
    )


def test_the_summary_names_the_url_and_the_resume_command(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    campaign = write_campaign(tmp_path / "c", rows=3, provider="v1", base_url=url,
                              send={"max_attempts": 1})  # fmt: skip
    done = run_batchsend("run", str(campaign), "--db", "b.db")
    assert done.returncode == 1
    assert f"stopped: the provider at {url} is unreachable" in done.stderr
    assert "resume: batchsend resume " in done.stderr
    assert "Traceback" not in done.stderr


def test_a_sandbox_stopped_mid_run_leaves_the_rest_pending_and_resumable(
    tmp_path: Path, make_sandbox
) -> None:
    sandbox = make_sandbox()
    campaign = write_campaign(
        tmp_path / "c",
        rows=80,
        provider="v1",
        base_url=sandbox.base_url,
        send={"concurrency": 2, "max_attempts": 2, "rate": 100},
    )

    def stop_after_some() -> None:
        while len(sandbox.messages()) < 15:
            time.sleep(0.005)
        sandbox.stop()

    stopper = threading.Thread(target=stop_after_some)
    stopper.start()
    first = run_campaign(campaign, db_path="b.db", api_key=TEST_KEY, progress=False)
    stopper.join()
    assert first.state is RunState.FATAL and first.exit_code == 1
    assert first.fatal_error and "stopped answering" in first.fatal_error
    assert sandbox.base_url in first.fatal_error
    delivered = Counter(recipients_in(sandbox.messages()))
    counts = first.counts
    assert counts["failed"] == 0  # nothing that could not connect is failed
    assert counts["sent"] == len(delivered) >= 15
    assert counts["pending"] == 80 - counts["sent"] - counts["unknown"] > 0
    assert first.resume and first.resume.startswith(f"batchsend resume {first.run_id}")

    sandbox.start()  # back on the same port
    second = resume_run(first.run_id, db_path="b.db", api_key=TEST_KEY, progress=False)
    assert second.counts["sent"] + second.counts["unknown"] == 80
    delivered = Counter(recipients_in(sandbox.messages()))
    assert set(delivered.values()) == {1}  # nobody twice
    assert len(delivered) >= second.counts["sent"]


def test_tosends_account_check_says_the_provider_is_unreachable() -> None:
    # The first request of a ToSend run: nothing is recorded if it fails.
    url = f"http://127.0.0.1:{closed_port()}"
    provider = get_provider("tosend", base_url=url, api_key=TEST_KEY)
    with pytest.raises(FatalSendError) as info:
        asyncio.run(provider.account_info(retry=RetryPolicy(max_attempts=1)))
    assert info.value.error_type == "unreachable"
    assert f"cannot connect to {url}" in str(info.value) and "check base_url" in str(info.value)
