"""Where the database lives without --db (README, "Where the database lives"): the
campaign's folder for a command on a campaign, found again from any folder for a command
on a run, and named in every printed command that would not find it otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.campaigns import write_campaign
from support.sandboxes import TEST_KEY

from batchsend import dblocation, ledger
from batchsend.cli import main
from batchsend.errors import InputError
from batchsend.store import Store


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's current folder: not the campaign's, and with no batchsend.db."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"BATCHSEND_API_KEY": TEST_KEY})


def start(campaign: Path, *extra: str) -> dict:
    """``batchsend run CAMPAIGN --limit 2 --json``: a run left with rows pending."""
    result = invoke("run", str(campaign), "--limit", "2", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_run_lives_in_its_campaign_folder_and_is_found_from_any_folder(
    tmp_path: Path, elsewhere: Path, sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    summary = start(campaign)
    db = campaign.parent / "batchsend.db"
    assert summary["db_path"] == str(db) and db.is_file()
    assert not (elsewhere / "batchsend.db").exists()
    run_id = summary["run_id"]
    assert summary["resume"] == f"batchsend resume {run_id}"  # no --db needed

    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    listed = invoke("runs")
    assert listed.exit_code == 0, listed.output
    assert f"{run_id}  interrupted" in listed.stdout and f"database: {db}" in listed.stdout
    assert json.loads(invoke("runs", "--json").stdout)[0]["db_path"] == str(db)
    report = invoke("report", run_id, "--out", "r.csv")
    assert report.exit_code == 0, report.output
    assert (other / "r.csv").is_file()
    resumed = invoke("resume", run_id, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["counts"]["sent"] == 5
    assert len(sandbox.messages()) == 5

    # the campaign's own database is the one `run` consults, from any folder
    again = invoke("run", str(campaign))
    assert again.exit_code == 2 and f"run {run_id} finished" in again.output


def test_an_unfinished_run_names_its_resume_command_without_db(
    tmp_path: Path, elsewhere: Path, sandbox
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    run_id = start(campaign)["run_id"]
    refused = invoke("run", str(campaign))
    assert refused.exit_code == 2
    assert f"  batchsend resume {run_id}\n" in refused.output


def test_a_batchsend_db_in_the_current_folder_that_has_the_campaign_is_kept(
    tmp_path: Path, elsewhere: Path, sandbox
) -> None:
    # The default before: ./batchsend.db. Its runs of this campaign stay where they are.
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    run_id = start(campaign, "--db", "batchsend.db")["run_id"]
    ledger.index_path().unlink()  # a run from before the index
    refused = invoke("run", str(campaign))
    assert refused.exit_code == 2 and f"batchsend resume {run_id}" in refused.output
    assert not (campaign.parent / "batchsend.db").exists()
    resumed = invoke("resume", run_id, "--json")  # found in ./batchsend.db
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["db_path"] == str(elsewhere / "batchsend.db")
    # ...and now indexed, so the next hint needs no --db
    assert ledger.indexed_db(run_id) == (elsewhere / "batchsend.db").resolve()


def test_batchsend_db_names_the_database_of_every_command(
    tmp_path: Path, elsewhere: Path, sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "shared.db"
    monkeypatch.setenv(dblocation.ENV_VAR, str(db))
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    summary = start(campaign)
    assert summary["db_path"] == str(db) and not (campaign.parent / "batchsend.db").exists()
    # a database the user chose is named back in the hint
    assert summary["resume"] == f"batchsend resume {summary['run_id']} --db {db}"
    assert summary["run_id"] in invoke("runs").stdout
    added = invoke("suppressions", "add", "user5@example.org")
    assert added.exit_code == 0, added.output
    with Store(db) as store:
        assert store.conn.execute("SELECT COUNT(*) FROM suppressions").fetchone() == (1,)


def test_a_hint_names_the_database_when_the_index_cannot_be_written(
    tmp_path: Path, elsewhere: Path, sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "state-is-a-file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    summary = start(campaign)
    db = campaign.parent / "batchsend.db"
    assert summary["resume"] == f"batchsend resume {summary['run_id']} --db {db}"


def test_an_unknown_run_says_where_it_looked(elsewhere: Path) -> None:
    for command in (["resume", "20260101T000000-abcdef"], ["report", "20260101T000000-abcdef"]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert "no run '20260101T000000-abcdef' found" in result.output
        assert str(ledger.index_path()) in result.output and "--db" in result.output
        assert "Traceback" not in result.output
    assert not (elsewhere / "batchsend.db").exists()  # looking created nothing


def test_runs_with_no_database_anywhere_says_so(elsewhere: Path) -> None:
    result = invoke("runs")
    assert result.exit_code == 0 and "no runs in no database batchsend knows of" in result.output


def test_check_consults_the_suppression_list_of_the_campaigns_database(
    tmp_path: Path, elsewhere: Path
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3)
    db = campaign.parent / "batchsend.db"
    assert invoke("suppressions", "add", "user2@example.org", "--db", str(db)).exit_code == 0
    checked = invoke("check", str(campaign))
    assert "sendable 2, skipped: suppressed 1" in checked.output, checked.output
    assert not (elsewhere / "batchsend.db").exists()


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        ("x.db", "env.db", "x.db"),  # --db always wins
        (None, "env.db", "env.db"),
        (None, None, "c/batchsend.db"),
    ],
)
def test_the_rule_for_a_campaign(
    tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch, given, env, expected
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=1)
    if env:
        monkeypatch.setenv(dblocation.ENV_VAR, env)
    found = dblocation.for_campaign(campaign, given)
    want = (
        Path(expected) if expected.endswith("x.db") or expected == "env.db" else tmp_path / expected
    )
    assert found.path == want and found.chosen == (given is not None or env is not None)
    assert dblocation.for_campaign(campaign.parent, given).path == want  # the folder alike


def test_for_run_raises_input_error_naming_a_moved_database(
    tmp_path: Path, elsewhere: Path
) -> None:
    ledger.index_run("r-1", tmp_path / "gone.db", campaign="c")
    with pytest.raises(InputError, match=r"recorded in .*gone\.db, which no longer holds it"):
        dblocation.for_run("r-1")
