"""The gauntlet's crash campaign, short form: SIGKILL at the exact moments that matter.

``tests/test_crash.py`` kills from outside at random points; here the process kills
itself right after a unit's ``sending`` commit and right after a response arrives
(``BATCHSEND_TEST_ONLY_SIGKILL_AT``), then resumes; an unknown row is never sent again,
since the sandbox, like the real providers, does not de-duplicate. The long form
(10,000 recipients, 50 kills, the random mode too) is ``python -m bench.gauntlet
crash``: the same function with bigger numbers.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import gauntlet
from support.campaigns import DOMAIN, KEY
from support.processes import batchsend_command, query

from batchsend.crashpoints import ENV_VAR, _parse


def test_kill_9_at_the_sending_commit_and_at_the_answer_never_sends_twice(
    tmp_path: Path,
) -> None:
    # 480 rows (24 requests): the engine's group commit marks every worker's unit of one
    # turn at once (4 units at the start), so a kill can leave more rows in flight than
    # its count suggests; 240 rows could run out before the fourth kill point came.
    result = gauntlet.crash_campaign(
        tmp_path, rows=480, kills=4, modes=("sending", "response"), seed=7, log=lambda _: None
    )
    assert result["kills_by_mode"] == {"sending": 2, "response": 2}
    assert result["processes_that_finished_before_their_kill"] == 0
    assert result["rows_left_sending_by_kills"] > 0  # the kills did catch rows in flight
    assert result["unknown_before_last_resume"] > 0
    assert result["recipients_with_two_messages"] == 0
    assert result["rows_without_terminal_state"] == 0
    counts = result["final_counts"]
    assert counts["sent"] + counts["unknown"] == 480 and counts["unknown"] > 0
    # The "response" kills had answers in hand: those unknown rows were delivered (once);
    # the "sending" kills died before their request left: those were never delivered.
    assert 0 < result["unknown_that_were_delivered"] < counts["unknown"]
    assert result["recipients_without_a_message"] == (
        counts["unknown"] - result["unknown_that_were_delivered"]
    )


def test_a_process_killed_right_after_the_answer_leaves_its_rows_sending(tmp_path: Path) -> None:
    """The ``response`` crash point fires after the provider accepted, before the record."""
    from batchsend.sandbox import Sandbox

    with Sandbox(api_keys=(KEY,), domains=(DOMAIN,)) as sandbox:
        campaign = gauntlet.write_campaign(
            tmp_path / "c", rows=30, send={"concurrency": 1}, base_url=sandbox.base_url
        )
        db = tmp_path / "k.db"
        env = {**os.environ, "BATCHSEND_API_KEY": KEY, ENV_VAR: "response:1"}
        proc = subprocess.run(
            batchsend_command("run", str(campaign), "--db", str(db)),
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == -9
        assert len(sandbox.messages()) == 20  # the first batch was accepted...
        states = query(db, "SELECT state, count(*) FROM recipients GROUP BY state")
        assert dict(states) == {"sending": 20, "pending": 10}  # ...and never recorded
        assert query(db, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize("spec", ["sending", "sending:0", "answer:3", "sending:x"])
def test_a_malformed_crash_point_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=ENV_VAR):
        _parse(spec)


def test_crash_points_are_off_without_the_variable() -> None:
    assert _parse(None) is None and _parse("") is None


def test_a_changed_unknown_request_is_refused_cleanly_before_sending(tmp_path: Path) -> None:
    """``--resend-unknown --force`` after a template edit: the recorded request cannot be
    rebuilt, so its rows stay unknown -- said in one line, exit 2, nothing sent.

    Flaw found: the refusal was raised from inside the engine's task group and came out
    as an exception-group traceback (seen when the templates changed under a crash test).
    """
    from batchsend.sandbox import Sandbox

    with Sandbox(api_keys=(KEY,), domains=(DOMAIN,)) as sandbox:
        campaign = gauntlet.write_campaign(
            tmp_path / "c", rows=30, send={"concurrency": 1}, base_url=sandbox.base_url
        )
        db = str(tmp_path / "k.db")
        env = {**os.environ, "BATCHSEND_API_KEY": KEY}
        killed = subprocess.run(
            batchsend_command("run", str(campaign), "--db", db),
            env={**env, ENV_VAR: "sending:1"},
            capture_output=True,
            timeout=60,
        )
        assert killed.returncode == -9
        [(run_id,)] = query(Path(db), "SELECT id FROM runs")
        campaign.write_text(campaign.read_text().replace("News for", "Tidings for"))
        again = subprocess.run(
            batchsend_command("resume", run_id, "--db", db, "--force", "--resend-unknown"),
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 2, again.stderr
        assert "cannot be rebuilt identically" in again.stderr
        assert "Traceback" not in again.stderr
        assert sandbox.stats()["requests"] <= 1  # the account check, no send
        states = dict(query(Path(db), "SELECT state, count(*) FROM recipients GROUP BY 1"))
        assert states == {"unknown": 20, "pending": 10}
