"""``batchsend runs``: every run, its real state, its counts and how to resume it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from support.campaigns import write_campaign
from support.clock import SteppingClock
from support.runs import TRICKY, Person, build_run

from batchsend.cli import main
from batchsend.history import effective_state, list_runs
from batchsend.report import iter_report
from batchsend.run import run_campaign
from batchsend.states import RunState
from batchsend.store import Store

PEOPLE = [Person(f"p{n}@example.com", f"P{n}") for n in range(1, 4)]


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A database with a finished, an interrupted, a crashed, a fatal and a live run."""
    db = tmp_path / "history.db"
    clock = SteppingClock()
    with Store(db, now=clock) as store:
        ids = {
            "finished": build_run(store, TRICKY),
            "interrupted": build_run(
                store, [*PEOPLE, Person("q@example.com", plan="pending")],
                final=RunState.INTERRUPTED,
            ),
            "crashed": build_run(
                store, [*PEOPLE, Person("u@example.com", plan="unknown")], final=RunState.RUNNING
            ),
            "fatal": build_run(
                store,
                [Person("f@example.com", plan="pending")] * 2,
                final=RunState.FATAL,
                fatal_error="403 invalid_api_key: the API key is not valid",
            ),
            "live": build_run(store, PEOPLE[:1], final=RunState.RUNNING),
        }  # fmt: skip
        # "live": recorded by this very process, which is alive
        store.conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (os.getpid(), ids["live"]))
    return db, ids


def test_every_run_listed_with_its_real_state(history) -> None:
    db, ids = history
    listed = {item.run.id: item for item in list_runs(db)}
    assert set(listed) == set(ids.values())
    state = {name: listed[run_id].state for name, run_id in ids.items()}
    assert state == {
        "finished": RunState.FINISHED,
        "interrupted": RunState.INTERRUPTED,
        "crashed": RunState.INTERRUPTED,  # stored "running", but its process is gone
        "fatal": RunState.FATAL,
        "live": RunState.RUNNING,
    }
    assert listed[ids["crashed"]].run.state is RunState.RUNNING  # the store is not rewritten
    assert list_runs(db)[0].run.id == ids["live"]  # newest first


def test_counts_and_resume_commands(history) -> None:
    db, ids = history
    listed = {item.run.id: item for item in list_runs(db)}
    finished = listed[ids["finished"]]
    assert finished.run.counts == {
        "pending": 0, "sending": 0, "sent": 3, "failed": 2, "skipped": 2, "unknown": 1
    }  # fmt: skip
    assert finished.resume is None and listed[ids["live"]].resume is None
    for name in ("interrupted", "crashed", "fatal"):
        assert listed[ids[name]].resume == f"batchsend resume {ids[name]} --db {db}"
    assert listed[ids["crashed"]].run.counts["unknown"] == 0  # not yet resumed: "sending"
    assert listed[ids["crashed"]].run.counts["sending"] == 1
    assert "invalid_api_key" in listed[ids["fatal"]].run.fatal_error


def test_a_run_recorded_on_another_host_is_not_running_here(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db", now=SteppingClock()) as store:
        run_id = build_run(
            store, PEOPLE, final=RunState.RUNNING, settings={"host": "some-other-machine"}
        )
        store.conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (os.getpid(), run_id))
        assert effective_state(store.get_run(run_id)) is RunState.INTERRUPTED


def test_cli_runs_json(history) -> None:
    db, ids = history
    result = CliRunner().invoke(main, ["runs", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    data = {r["id"]: r for r in json.loads(result.stdout)}
    crashed = data[ids["crashed"]]
    assert crashed["state"] == "interrupted" and crashed["stored_state"] == "running"
    assert crashed["resume"] == f"batchsend resume {ids['crashed']} --db {db}"
    assert data[ids["finished"]]["counts"]["sent"] == 3
    assert data[ids["finished"]]["campaign"] == "Autumn newsletter"
    assert data[ids["fatal"]]["state"] == "fatal" and data[ids["fatal"]]["ended_at"]


def test_cli_runs_text(history) -> None:
    db, ids = history
    result = CliRunner().invoke(main, ["runs", "--db", str(db)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{ids['crashed']}  interrupted" in out
    assert f"resume: batchsend resume {ids['fatal']} --db {db}" in out
    assert "3 sent, 2 failed, 2 skipped, 1 unknown" in out
    assert "fatal error: 403 invalid_api_key" in out


@pytest.mark.parametrize(
    "args",
    [["runs"], ["report", "20261121T103455-ab12cd"], ["resume", "20261121T103455-ab12cd"]],
)
def test_cli_without_a_database_names_the_file_exits_2_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    missing = tmp_path / "none.db"
    result = CliRunner().invoke(main, [*args, "--db", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"{missing}: no batchsend database" in result.stderr and "--db" in result.stderr
    assert "Traceback" not in result.output
    assert not missing.exists()  # looking did not create an empty one


def test_cli_report_writes_and_prints_the_path(history, tmp_path: Path) -> None:
    db, ids = history
    runner = CliRunner()
    out = tmp_path / "failed.csv"
    args = ["report", ids["finished"], "--db", str(db), "--out", str(out), "--state", "failed"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert pl.read_csv(out)["row"].to_list() == [3, 5]
    # the format follows the extension; two --state options combine
    pq = tmp_path / "r.parquet"
    result = runner.invoke(
        main,
        ["report", ids["finished"], "--db", str(db), "--out", str(pq), "--state", "sent",
         "--state", "unknown"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(pq)["row"].to_list() == [1, 2, 6, 8]


def test_cli_report_default_path_and_errors(history, tmp_path: Path, monkeypatch) -> None:
    db, ids = history
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["report", ids["finished"], "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == Path("reports") / f"{ids['finished']}.json" and path.is_file()
    assert isinstance(json.loads(path.read_text("utf-8")), list)
    bad = runner.invoke(main, ["report", "no-such-run", "--db", str(db)])
    assert bad.exit_code == 2 and "no run 'no-such-run'" in bad.stderr
    bad_state = runner.invoke(main, ["report", ids["finished"], "--db", str(db), "--state", "x"])
    assert bad_state.exit_code == 2


def test_real_runs_against_the_sandbox_are_listed_and_reported(
    tmp_path: Path, sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fatal run (bad key), an interrupted one (--limit) and a finished one, for real."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "b.db"

    def run(folder: str, **kw):
        campaign = write_campaign(tmp_path / folder, rows=6, provider="v1")
        kw.setdefault("api_key", "sk-test")
        return run_campaign(campaign, db_path=db, base_url=sandbox.base_url, progress=False, **kw)

    fatal = run("a", api_key="sk-wrong")  # reached nobody: does not count as sent
    interrupted = run("b", limit=2)
    finished = run("c", again=True)  # the same campaign from a third folder: said so
    listed = {item.run.id: item for item in list_runs(db)}
    assert listed[fatal.run_id].state is RunState.FATAL
    assert "403" in listed[fatal.run_id].run.fatal_error
    assert listed[fatal.run_id].run.counts["pending"] == 6
    assert listed[interrupted.run_id].state is RunState.INTERRUPTED
    assert listed[interrupted.run_id].run.counts["sent"] == 2
    assert (
        listed[finished.run_id].state is RunState.FINISHED
        and listed[finished.run_id].resume is None
    )
    for summary in (fatal, interrupted):
        assert listed[summary.run_id].resume == f"batchsend resume {summary.run_id} --db {db}"
    # the report of the interrupted run lists all six rows, two sent with provider ids
    frame = pl.concat(list(iter_report(db, interrupted.run_id)))
    assert frame["row"].to_list() == [1, 2, 3, 4, 5, 6]
    assert frame["state"].to_list() == ["sent", "sent", "pending", "pending", "pending", "pending"]
    assert frame["provider_message_id"].null_count() == 4
    assert frame["first"].to_list() == [f"First{n}" for n in range(1, 7)]  # input columns
    # and the runs command shows the same
    result = CliRunner().invoke(main, ["runs", "--db", str(db), "--json"])
    states = {r["id"]: r["state"] for r in json.loads(result.stdout)}
    assert states == {fatal.run_id: "fatal", interrupted.run_id: "interrupted",
                      finished.run_id: "finished"}  # fmt: skip


@pytest.mark.parametrize("command", [["runs"], ["report", "some-run"], ["resume", "some-run"]])
def test_a_corrupt_database_file_is_bad_input_and_left_alone(
    command: list[str], tmp_path: Path
) -> None:
    bad = tmp_path / "garbage.db"
    content = b"this is not an SQLite file\n" * 200
    bad.write_bytes(content)
    result = CliRunner().invoke(main, [*command, "--db", str(bad)])
    assert result.exit_code == 2, result.output
    assert "garbage.db" in result.stderr and "not a usable batchsend database" in result.stderr
    assert "fix:" in result.stderr
    assert bad.read_bytes() == content
