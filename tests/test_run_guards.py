"""Two commands at once, and a campaign run again: exactly one sends, nobody gets two.

Concurrency is tested with two real ``batchsend`` processes started together against
an in-process sandbox (slowed by ``latency_ms`` so that the two overlap); deliveries
are counted from the sandbox's own record, so the assertions hold against a provider
that does not de-duplicate.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.campaigns import recipients_in, write_campaign
from support.processes import batchsend_command, query

import batchsend.store.database
from batchsend.cli import main
from batchsend.errors import (
    CampaignError,
    CampaignSentError,
    ConcurrentCommandError,
    UnfinishedRunError,
)
from batchsend.process import this_process
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.states import RunState
from batchsend.store import Store

KEY = "sk-test"
SEND = {"concurrency": 1, "batch_size": 2}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def env() -> dict[str, str]:
    return {**os.environ, "BATCHSEND_API_KEY": KEY}


def both(a: list[str], b: list[str]) -> list[subprocess.CompletedProcess]:
    """Start the two commands at the same instant; wait (bounded) for both."""
    procs = [
        subprocess.Popen(c, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in (a, b)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def delivered(sandbox: Sandbox) -> Counter[str]:
    return Counter(recipients_in(sandbox.messages()))


def lib_run(campaign: Path, sandbox: Sandbox, **kw):
    return run_campaign(
        campaign, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False, **kw
    )


def assert_one_proceeded(results: list[subprocess.CompletedProcess], *refusals: str) -> None:
    for r in results:
        assert "Traceback" not in r.stderr, r.stderr
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [(r.returncode, r.stderr) for r in results]
    refused = next(r for r in results if r.returncode == 2)
    assert any(text in refused.stderr for text in refusals), refused.stderr


@pytest.mark.parametrize("attempt", range(3))
def test_two_runs_of_one_campaign_at_once(tmp_path: Path, make_sandbox, attempt: int) -> None:
    sandbox = make_sandbox(latency_ms=50)
    campaign = write_campaign(tmp_path / "c", rows=8, base_url=sandbox.base_url, send=SEND)
    command = batchsend_command("run", str(campaign), "--db", "b.db")
    results = both(command, command)
    # Which message depends on timing: the other is still sending, or it finished first.
    assert_one_proceeded(results, "right now", "was sent already")
    assert delivered(sandbox) == Counter({f"user{n}@example.org": 1 for n in range(1, 9)})
    assert query(tmp_path / "b.db", "SELECT count(*) FROM runs") == [(1,)]


@pytest.mark.parametrize("attempt", range(3))
def test_two_resumes_of_one_run_at_once(tmp_path: Path, make_sandbox, attempt: int) -> None:
    sandbox = make_sandbox(latency_ms=150)
    campaign = write_campaign(tmp_path / "c", rows=12, base_url=sandbox.base_url, send=SEND)
    first = lib_run(campaign, sandbox, limit=2)
    command = batchsend_command("resume", first.run_id, "--db", "b.db")
    results = both(command, command)
    assert_one_proceeded(results, "right now")
    assert delivered(sandbox) == Counter({f"user{n}@example.org": 1 for n in range(1, 13)})


@pytest.mark.parametrize("attempt", range(2))
def test_a_run_and_a_resume_at_once(tmp_path: Path, make_sandbox, attempt: int) -> None:
    """``--skip-sent`` would start a new run beside the unfinished one; not while it is
    being resumed (either may win, and then nobody gets two)."""
    sandbox = make_sandbox(latency_ms=150)
    campaign = write_campaign(tmp_path / "c", rows=12, base_url=sandbox.base_url, send=SEND)
    first = lib_run(campaign, sandbox, limit=2)
    results = both(
        batchsend_command("resume", first.run_id, "--db", "b.db"),
        batchsend_command("run", str(campaign), "--db", "b.db", "--skip-sent"),
    )
    assert_one_proceeded(results, "right now")
    assert delivered(sandbox) == Counter({f"user{n}@example.org": 1 for n in range(1, 13)})


def test_a_lock_held_past_the_timeout_names_its_holder(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "database is locked" becomes one exit-2 message naming the other command."""
    campaign = write_campaign(tmp_path / "c", rows=3, base_url=sandbox.base_url)
    Store("b.db").close()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        conn = sqlite3.connect("b.db", isolation_level=None)
        me = this_process()
        conn.execute(
            "INSERT INTO claims VALUES ('t', '/elsewhere/campaign.toml', 'R1',"
            " 'batchsend run /elsewhere/campaign.toml', 1, ?, ?, NULL, 'T')",
            (me.host, holder.pid),
        )
        conn.execute("BEGIN IMMEDIATE")  # held, like a long preflight of another campaign
        monkeypatch.setattr(batchsend.store.database, "BUSY_TIMEOUT", 0.2)
        monkeypatch.setenv("BATCHSEND_API_KEY", KEY)
        result = CliRunner().invoke(main, ["run", str(campaign), "--db", "b.db"])
        conn.execute("ROLLBACK")
        conn.close()
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "stayed locked" in result.output
    assert f"batchsend run /elsewhere/campaign.toml` (process {holder.pid}" in result.output
    assert sandbox.messages() == []


def test_a_dead_process_claim_is_taken_over(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3, base_url=sandbox.base_url)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with Store("b.db") as store:
        store.conn.execute(
            "INSERT INTO claims VALUES ('t', ?, NULL, 'batchsend run x', 1, ?, ?, NULL, 'T')",
            (str(campaign.resolve()), this_process().host, gone.pid),
        )
    assert lib_run(campaign, sandbox).counts["sent"] == 3
    assert query(tmp_path / "b.db", "SELECT count(*) FROM claims") == [(0,)]


def test_a_live_claim_refuses_at_once(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3, base_url=sandbox.base_url)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with Store("b.db") as store:
            store.conn.execute(
                "INSERT INTO claims VALUES ('t', ?, NULL, 'batchsend run c', 1, ?, ?, NULL, 'T')",
                (str(campaign.resolve()), this_process().host, holder.pid),
            )
        with pytest.raises(ConcurrentCommandError, match="sending this campaign right now"):
            lib_run(campaign, sandbox)
        # a proof copy and a dry run are not sends to the list: not refused
        assert lib_run(campaign, sandbox, dry_run=True).dry_run
        assert lib_run(campaign, sandbox, test_to="me@example.com").counts["sent"] == 1
    finally:
        holder.kill()
        holder.wait()
    assert recipients_in(sandbox.messages()) == ["me@example.com"]


# --- a campaign that already finished ------------------------------------------------------


def test_a_finished_campaign_is_refused_with_the_earlier_run(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    first = lib_run(campaign, sandbox)
    assert first.state is RunState.FINISHED
    result = subprocess.run(
        batchsend_command("run", str(campaign), "--db", "b.db"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"run {first.run_id} finished" in result.stderr
    assert "5 sent" in result.stderr and "--again" in result.stderr
    assert "--skip-sent" in result.stderr
    with pytest.raises(CampaignSentError):
        lib_run(campaign, sandbox, new_run=True)  # --new-run is for an unfinished run
    assert len(sandbox.messages()) == 5
    # proof copies and dry runs are not real sends: not refused
    assert lib_run(campaign, sandbox, test_to="me@example.com").counts["sent"] == 1
    assert lib_run(campaign, sandbox, dry_run=True).dry_run
    again = lib_run(campaign, sandbox, again=True)
    assert again.run_id != first.run_id and again.counts["sent"] == 5
    assert delivered(sandbox)["user1@example.org"] == 2  # asked for, explicitly


def test_again_also_starts_over_an_unfinished_run(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    lib_run(campaign, sandbox, limit=2)
    with pytest.raises(UnfinishedRunError, match="--skip-sent"):
        lib_run(campaign, sandbox)
    assert lib_run(campaign, sandbox, again=True).counts["sent"] == 5


def test_skip_sent_sends_only_to_the_addresses_a_list_gained(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    folder = tmp_path / "c"
    campaign = write_campaign(folder, rows=6, base_url=sandbox.base_url)
    first = lib_run(campaign, sandbox, limit=5)
    with closing(sqlite3.connect("b.db")) as conn, conn:  # as if row 6's request had been in flight
        conn.execute("UPDATE recipients SET state = 'unknown' WHERE row = 6")
    source = folder / "recipients.csv"
    lines = source.read_text().splitlines()
    # the list grew: two new people, one of them at the top; an old one's case changed
    lines[1:1] = ["new1@example.org,New1,101"]
    lines.append("new2@example.org,New2,102")
    lines = [line.replace("user3@", "USER3@") for line in lines]
    source.write_text("\n".join(lines) + "\n")

    grown = lib_run(campaign, sandbox, skip_sent=True)
    assert grown.counts["sent"] == 2 and grown.counts["skipped"] == 6
    assert delivered(sandbox) == Counter(
        {f"user{n}@example.org": 1 for n in range(1, 6)}
        | {"new1@example.org": 1, "new2@example.org": 1}
    )
    with Store("b.db") as store:
        rows = {r["email"].lower(): r for r in store.recipients(grown.run_id)}
    assert rows["user1@example.org"]["reason"] == "already_sent"
    assert first.run_id in rows["user1@example.org"]["error_message"]
    assert rows["user3@example.org"]["reason"] == "already_sent"
    assert rows["user6@example.org"]["reason"] == "maybe_sent"
    assert any("already_sent" in note for note in grown.notes)
    # nothing left to send: a second --skip-sent sends nobody
    assert lib_run(campaign, sandbox, skip_sent=True).counts["sent"] == 0
    with pytest.raises(CampaignError, match="contradict"):
        lib_run(campaign, sandbox, skip_sent=True, again=True)


@pytest.mark.parametrize("how", ["another_folder", "moved", "copied"])
def test_a_campaign_sent_from_another_database_or_path_is_refused(
    tmp_path: Path, sandbox: Sandbox, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command run from another folder (so another batchsend.db), the campaign folder
    moved, or copied: each would have emailed everyone again."""
    import shutil

    campaign = write_campaign(tmp_path / "c", rows=4, base_url=sandbox.base_url)
    first = run_campaign(campaign, db_path="b.db", api_key=KEY, progress=False)
    assert first.counts["sent"] == 4
    if how == "another_folder":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        again_path, db = campaign, "b.db"  # a new database in the new folder
    elif how == "moved":
        shutil.move(tmp_path / "c", tmp_path / "c-moved")
        again_path, db = tmp_path / "c-moved" / "campaign.toml", "b.db"
    else:
        shutil.copytree(tmp_path / "c", tmp_path / "c-copy")
        again_path, db = tmp_path / "c-copy" / "campaign.toml", str(tmp_path / "copy.db")
    with pytest.raises(CampaignSentError) as info:
        run_campaign(again_path, db_path=db, api_key=KEY, progress=False)
    assert first.run_id in str(info.value) and "--again" in str(info.value)
    assert info.value.exit_code == 2
    assert len(sandbox.messages()) == 4  # nobody emailed twice
    again = run_campaign(again_path, db_path=db, api_key=KEY, progress=False, again=True)
    assert again.counts["sent"] == 4 and len(sandbox.messages()) == 8  # asked for, so sent


def test_runs_to_the_embedded_sandbox_are_no_earlier_sends(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A --sandbox run reaches no one: running the quick start again, from another copy of
    the campaign or with another database, is not refused; nor is the first real run of
    a campaign rehearsed against the sandbox. Real runs are still refused (above)."""
    first = write_campaign(tmp_path / "a", rows=3, base_url=sandbox.base_url)
    copy = write_campaign(tmp_path / "b", rows=3, base_url=sandbox.base_url)  # same content
    for campaign, db in ((first, "a.db"), (copy, "b.db"), (first, "a.db")):
        out = run_campaign(campaign, db_path=tmp_path / db, sandbox=True, progress=False)
        assert out.exit_code == 0, out.describe()
    assert sandbox.messages() == []  # the embedded sandboxes took them
    real = run_campaign(first, db_path=tmp_path / "a.db", api_key=KEY, progress=False)
    assert real.exit_code == 0, real.describe()
    assert sorted(recipients_in(sandbox.messages())) == [
        "user1@example.org", "user2@example.org", "user3@example.org",
    ]  # fmt: skip
    with pytest.raises(CampaignSentError):
        run_campaign(first, db_path=tmp_path / "a.db", api_key=KEY, progress=False)
    with pytest.raises(CampaignSentError):  # the register still knows the real send
        run_campaign(copy, db_path=tmp_path / "b.db", api_key=KEY, progress=False)
