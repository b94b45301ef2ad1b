"""A run that ends with failed or unknown rows says so: exit 3, "finished with N failed /
M unknown" everywhere its state is shown, and the exact next command for each kind of
row (retryable failures, permanent failures, unknown rows).

Failed rows come from refusals that do not depend on how the client classifies 5xx:
disposable addresses (ToSend refuses them permanently) and a storm of 429 answers with
``max_attempts = 1`` (retryable, retries exhausted). A provider that refuses every
connection is not that: nothing reached it, so its rows stay pending
(tests/test_run_unreachable.py). Unknown rows come from a
``kill -9`` right after a unit's ``sending`` commit, before its request left.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.campaigns import KEY as CRASH_KEY
from support.campaigns import recipients_in, write_campaign
from support.clock import SteppingClock
from support.processes import run_batchsend
from support.runs import Person, build_run

from batchsend.cli import main
from batchsend.crashpoints import ENV_VAR
from batchsend.history import list_runs
from batchsend.next_steps import EXIT_ROWS_NOT_SENT, next_steps, state_label
from batchsend.report import write_report
from batchsend.report_html import _RUN_STATE_COLOURS
from batchsend.resume import resume_run
from batchsend.sandbox import Sandbox
from batchsend.sending import RunResult
from batchsend.states import RunState
from batchsend.store import Store

KEY = "sk-test"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports/ lands in the test's folder


def run_hint(command: str, *extra: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    """Run a hint exactly as printed (``batchsend ...``), plus ``extra`` options."""
    words = shlex.split(command)
    assert words[0] == "batchsend", command
    return run_batchsend(*words[1:], *extra, key=key)


def with_disposable(campaign: Path, rows: tuple[int, ...]) -> None:
    """Give ``rows`` addresses on a disposable domain: ToSend refuses them for good."""
    source = campaign.parent / "recipients.csv"
    lines = source.read_text("utf-8").splitlines()
    for n in rows:
        lines[n] = lines[n].replace("@example.org", "@mailinator.com")
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the exit code, as a table ----------------------------------------------------------


def _summary(state: RunState, *, interrupted: bool = False, dry_run: bool = False, **n: int):
    counts = {"pending": 0, "sending": 0, "sent": 5, "failed": 0, "skipped": 0, "unknown": 0}
    counts.update({k: v for k, v in n.items() if k in counts})
    return RunResult(
        run_id="r1",
        state=state,
        counts=counts,
        duration_s=1.0,
        db_path="b.db",
        report_path=None,
        interrupted=interrupted,
        dry_run=dry_run,
        failed_retryable=n.get("failed_retryable", 0),
    )


@pytest.mark.parametrize(
    ("summary", "code"),
    [
        (_summary(RunState.FINISHED), 0),
        (_summary(RunState.FINISHED, skipped=3), 0),
        (_summary(RunState.FINISHED, failed=2), 3),
        (_summary(RunState.FINISHED, failed=2, failed_retryable=2), 3),
        (_summary(RunState.FINISHED, unknown=1), 3),
        (_summary(RunState.INTERRUPTED, pending=4), 0),  # --limit left rows pending
        (_summary(RunState.INTERRUPTED, pending=4, failed=1), 3),  # --limit, with failures
        (_summary(RunState.INTERRUPTED, pending=4, failed=1, interrupted=True), 130),
        (_summary(RunState.FATAL, pending=4, unknown=2), 1),
        (_summary(RunState.FINISHED, skipped=5, dry_run=True), 0),
    ],
)
def test_exit_code(summary: RunResult, code: int) -> None:
    assert summary.exit_code == code
    assert summary.to_dict()["exit_code"] == code
    assert EXIT_ROWS_NOT_SENT == 3


def test_state_label_and_steps_are_pure() -> None:
    counts = {"sent": 10, "failed": 3, "unknown": 2, "pending": 0}
    assert state_label(RunState.FINISHED, counts) == "finished with 3 failed / 2 unknown"
    assert state_label(RunState.FINISHED, {"sent": 10}) == "finished"
    assert state_label(RunState.INTERRUPTED, counts) == "interrupted"
    steps = next_steps("r 1", "my db.db", counts, failed_retryable=1)
    assert [(s.kind, s.rows) for s in steps] == [
        ("unknown", 2), ("failed_retryable", 1), ("failed_permanent", 2)
    ]  # fmt: skip
    unknown, retryable, permanent = steps
    # ask the provider first; sending again, which may email twice, is only the fallback
    assert unknown.command == "batchsend reconcile 'r 1' --db 'my db.db'"
    assert unknown.warning is None
    assert unknown.fallback == "batchsend resume 'r 1' --db 'my db.db' --resend-unknown"
    assert unknown.fallback_warning and "twice" in unknown.fallback_warning
    assert unknown.describe().index("reconcile") < unknown.describe().index("--resend-unknown")
    assert "twice" in unknown.describe()
    assert retryable.command == "batchsend resume 'r 1' --db 'my db.db' --retry-failed"
    assert permanent.command is None and "see the report" in permanent.advice
    assert "--resend-unknown" not in permanent.advice and "--retry-failed" not in permanent.advice
    assert next_steps("r", "b.db", {"sent": 3, "skipped": 1}, failed_retryable=0) == ()


# -- real runs through the CLI, against the sandbox -------------------------------------


def test_permanent_failures_exit_3_and_point_to_the_report(tmp_path: Path, sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=12, base_url=sandbox.base_url)
    with_disposable(campaign, (3, 8))
    done = run_batchsend("run", str(campaign), "--db", "b.db", "--json")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["exit_code"] == 3
    assert summary["state"] == "finished"  # the stored state is unchanged
    assert summary["state_label"] == "finished with 2 failed / 0 unknown"
    assert summary["counts"]["sent"] == 10 and summary["counts"]["failed"] == 2
    assert (summary["failed_retryable"], summary["failed_permanent"]) == (0, 2)
    assert summary["resent_unknown"] == 0
    [step] = summary["next_steps"]
    assert step["kind"] == "failed_permanent" and step["rows"] == 2
    assert step["command"] is None and "see the report" in step["advice"]
    # nothing offers to send these rows again, in any form
    assert "--retry-failed" not in done.stdout + done.stderr
    assert "--resend-unknown" not in done.stdout + done.stderr

    # the text summary and the listing say the same
    text = run_batchsend("resume", summary["run_id"], "--db", "b.db")
    assert text.returncode == 3, text.stderr
    assert f"run {summary['run_id']}: finished with 2 failed / 0 unknown" in text.stderr
    listed = run_batchsend("runs", "--db", "b.db")
    assert listed.returncode == 0, listed.stderr
    assert f"{summary['run_id']}  finished with 2 failed / 0 unknown" in listed.stdout
    assert "2 failed permanently" in listed.stdout and "see the report" in listed.stdout


def test_retryable_failures_name_the_retry_command_which_then_sends_them(
    tmp_path: Path, sandbox
) -> None:
    sandbox.configure(refuse_next=6)  # every request of the run: 429, certainly not taken
    campaign = write_campaign(
        tmp_path / "c",
        rows=6,
        provider="v1",
        base_url=sandbox.base_url,
        send={"max_attempts": 1},
    )
    db = tmp_path / "b.db"
    done = run_batchsend("run", str(campaign), "--db", str(db), "--json")
    assert done.returncode == 3, done.stderr
    summary = json.loads(done.stdout)
    run_id = summary["run_id"]
    assert summary["state_label"] == "finished with 6 failed / 0 unknown"
    assert (summary["failed_retryable"], summary["failed_permanent"]) == (6, 0)
    [step] = summary["next_steps"]
    assert step["kind"] == "failed_retryable" and step["rows"] == 6
    assert step["command"] == f"batchsend resume {run_id} --db {db} --retry-failed"
    assert step["warning"] is None
    with Store(db) as store:  # the store agrees: every failure is retryable
        assert store.failed_retryable(run_id) == 6

    listing = json.loads(run_batchsend("runs", "--db", str(db), "--json").stdout)[0]
    assert listing["state_label"] == "finished with 6 failed / 0 unknown"
    assert [s["command"] for s in listing["next_steps"]] == [step["command"]]

    # the hint, as printed, once the provider is reachable: everyone gets one message
    again = run_hint(step["command"], "--json")
    assert again.returncode == 0, again.stderr
    after = json.loads(again.stdout)
    assert after["counts"]["sent"] == 6 and after["state_label"] == "finished"
    assert after["next_steps"] == [] and after["exit_code"] == 0
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered == Counter({f"user{n}@example.org": 1 for n in range(1, 7)})


def badge(run_id: str, db: Path) -> str:
    """The state badge of the run's HTML report (written next to the database)."""
    page = write_report(db, run_id, db.parent / f"{run_id}.html", format="html")
    html = page.read_text("utf-8")
    start = html.index('<span class="state"')
    return html[start : html.index("</span>", start)]


def _crash_at_first_sending(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, str]:
    """A run killed right after its first unit was committed ``sending`` (5 rows)."""
    campaign = write_campaign(
        tmp_path / "c",
        rows=15,
        base_url=sandbox.base_url,
        send={"concurrency": 1, "batch_size": 5},
    )
    db = tmp_path / "b.db"
    killed = run_batchsend(
        "run", str(campaign), "--db", str(db), key=CRASH_KEY, env={ENV_VAR: "sending:1"}
    )
    assert killed.returncode == -9, killed.stderr
    assert sandbox.messages() == []  # killed before the request left
    with Store(db) as store:
        [run] = store.list_runs()
        assert store.counts(run.id)["sending"] == 5
    return db, run.id


def test_unknown_rows_name_reconcile_then_the_resend_command_with_its_warning(
    tmp_path: Path, make_sandbox
) -> None:
    sandbox = make_sandbox(api_keys=(CRASH_KEY,))
    db, run_id = _crash_at_first_sending(tmp_path, sandbox)

    resumed = run_batchsend("resume", run_id, "--db", str(db), "--json", key=CRASH_KEY)
    assert resumed.returncode == 3, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["state"] == "finished"
    assert summary["state_label"] == "finished with 0 failed / 5 unknown"
    assert summary["counts"]["sent"] == 10 and summary["counts"]["unknown"] == 5
    [step] = summary["next_steps"]
    assert step["kind"] == "unknown" and step["rows"] == 5
    assert step["command"] == f"batchsend reconcile {run_id} --db {db}"
    assert step["fallback"] == f"batchsend resume {run_id} --db {db} --resend-unknown"
    assert "twice" in step["fallback_warning"]
    assert summary["resume"] is None and summary["resent_unknown"] == 0
    assert "may email those people twice" in run_batchsend("runs", "--db", str(db)).stdout

    # the HTML report's badge is not green and carries the same advice
    assert badge(run_id, db).endswith(">finished with 0 failed / 5 unknown")
    assert f"background:{_RUN_STATE_COLOURS['finished']}" not in badge(run_id, db)
    page = (tmp_path / f"{run_id}.html").read_text("utf-8")
    assert step["command"] in page and step["fallback"] in page and "twice" in page

    # the user accepts the risk: said on stderr before sending, counted after
    resent = run_hint(step["fallback"], "--json", key=CRASH_KEY)
    assert resent.returncode == 0, resent.stderr
    warning = [line for line in resent.stderr.splitlines() if "--resend-unknown" in line]
    assert len(warning) == 1, resent.stderr
    assert "5 row(s)" in warning[0] and "may already have delivered" in warning[0]
    assert "twice" in warning[0]
    after = json.loads(resent.stdout)
    assert after["resent_unknown"] == 5 and after["counts"]["sent"] == 15
    assert any("5 row(s) of unknown outcome sent again" in n for n in after["notes"])
    assert after["next_steps"] == [] and after["state_label"] == "finished"
    # those requests had never left: one message each, whatever the provider de-duplicates
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered == Counter({f"user{n}@example.org": 1 for n in range(1, 16)})


def test_the_resend_warning_comes_before_any_request(
    tmp_path: Path, make_sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = make_sandbox(api_keys=(CRASH_KEY,))
    db, run_id = _crash_at_first_sending(tmp_path, sandbox)
    seen: list[tuple[str, int]] = []  # (text written to stderr, messages accepted by then)

    class Spy:
        def write(self, text: str) -> int:
            seen.append((text, len(sandbox.messages())))
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stderr", Spy())
    summary = resume_run(run_id, db_path=db, api_key=CRASH_KEY, resend_unknown=True, progress=False)
    monkeypatch.undo()
    said = [(text, n) for text, n in seen if "--resend-unknown" in text]
    assert said and said[0][1] == 0, seen  # printed before anything was sent
    assert "5 row(s)" in said[0][0]
    assert summary.resent_unknown == 5 and summary.counts["sent"] == 15
    assert summary.exit_code == 0


# -- listings and the HTML badge, from recorded runs ---------------------------------


def test_listing_and_badge_of_recorded_runs(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    with Store(db, now=SteppingClock()) as store:
        clean = build_run(store, [Person("a@example.com"), Person("b@example.com")])
        mixed = build_run(
            store,
            [
                Person("s@example.com"),
                Person("f@example.com", plan="failed"),
                Person("e@example.com", plan="exhausted"),
                Person("u@example.com", plan="unknown"),
            ],
        )
    listed = {item.run.id: item for item in list_runs(db)}
    assert listed[clean].label == "finished" and listed[clean].next_steps == ()
    item = listed[mixed]
    assert item.state is RunState.FINISHED  # stored and effective state stay "finished"
    assert item.run.counts["unknown"] == 1 and item.run.counts["failed"] == 2
    assert item.label == "finished with 2 failed / 1 unknown"
    assert [s.kind for s in item.next_steps] == ["unknown", "failed_retryable", "failed_permanent"]
    data = item.to_dict()
    assert (data["failed_retryable"], data["failed_permanent"]) == (1, 1)
    assert data["next_steps"][1]["command"] == f"batchsend resume {mixed} --db {db} --retry-failed"

    text = CliRunner().invoke(main, ["runs", "--db", str(db)])
    assert text.exit_code == 0, text.output
    assert f"{mixed}  finished with 2 failed / 1 unknown" in text.stdout
    assert f"{clean}  finished  " in text.stdout
    assert f"batchsend resume {mixed} --db {db} --retry-failed" in text.stdout
    assert f"batchsend reconcile {mixed} --db {db}" in text.stdout
    assert f"batchsend resume {mixed} --db {db} --resend-unknown" in text.stdout

    green = _RUN_STATE_COLOURS["finished"]
    assert f"background:{green}" in badge(clean, db) and badge(clean, db).endswith(">finished")
    assert f"background:{green}" not in badge(mixed, db)
    assert badge(mixed, db).endswith(">finished with 2 failed / 1 unknown")


# -- help texts and the README ------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "resume"])
def test_run_and_resume_help_document_the_exit_codes(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for code in ("0", "1", "2", "3", "130"):
        assert f" {code} " in text
    assert "3 finished but some rows failed or are unknown" in text.replace(",", "")


def test_no_help_or_readme_suggests_running_failed_rows_as_a_new_campaign() -> None:
    out = CliRunner().invoke(main, ["report", "--help"]).output
    flat = " ".join(out.split())
    assert "can run again" not in flat and "run again" not in flat
    assert "--retry-failed" in flat and "--resend-unknown" in flat and "twice" in flat
    readme = (REPO / "README.md").read_text("utf-8")
    assert "| 3 |" in readme and "| 130 |" in readme
    assert "can run again" not in readme
    resend_help = " ".join(CliRunner().invoke(main, ["resume", "--help"]).output.split())
    assert "may get the message twice" in resend_help
