"""The database before anything is sent: ours or not, whole or not.

- ``--db`` at another application's SQLite file is refused, and the file is unchanged;
  a file of an older batchsend (unmarked) is recognised and upgraded; a new path starts
  a new database.
- A run's ``-wal`` lost after a crash (deleted, or the ``.db`` copied alone) is detected
  from the sending mark (``generation``/``witness``) and refused; putting the ``-wal``
  back is the fix, and then nobody gets two.
- A database deleted, or replaced by an older copy, is detected from the ledger beside
  it, and refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from support.campaigns import recipients_in, write_campaign
from support.processes import batchsend_command, run_batchsend

import batchsend.store.database
from batchsend.errors import DatabaseFileError, LostRecordError
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.store import APPLICATION_ID, SCHEMA_VERSION, NewRecipient, RunRecorder, Store

KEY = "sk-test"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- ours or not ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE runs (id TEXT PRIMARY KEY, started REAL, owner TEXT)",  # a 'runs' table
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
        "PRAGMA application_id = 1234; CREATE TABLE runs (id, campaign_path, provider, state,"
        " settings)",  # marked by another application
    ],
)
def test_another_applications_file_is_refused_unchanged(
    tmp_path: Path, sandbox: Sandbox, schema: str
) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.executescript(schema)
    conn.execute("INSERT INTO " + ("notes" if "notes" in schema else "runs") + " (id) VALUES (1)")
    conn.commit()
    conn.close()
    before = digest(other)
    campaign = write_campaign(tmp_path / "c", rows=2, base_url=sandbox.base_url)
    result = run_batchsend("run", str(campaign), "--db", str(other))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a batchsend database" in result.stderr and "did not change it" in result.stderr
    assert "fix:" in result.stderr
    assert digest(other) == before
    assert not Path(f"{other}-wal").exists()
    assert sandbox.messages() == []
    assert run_batchsend("runs", "--db", str(other)).returncode == 2


def test_a_newer_batchsend_file_is_refused(tmp_path: Path) -> None:
    Store("b.db").close()
    with closing(sqlite3.connect("b.db")) as conn, conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseFileError, match="newer batchsend"):
        Store("b.db")


def test_an_older_unmarked_batchsend_file_is_upgraded_and_marked(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3, base_url=sandbox.base_url)
    first = run_campaign(
        campaign, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False, limit=1
    )
    with closing(sqlite3.connect("b.db")) as conn, conn:  # as an earlier batchsend left it
        conn.executescript(
            "DROP TABLE claims; DROP TABLE sending_marks;"
            " PRAGMA application_id = 0; PRAGMA user_version = 0;"
        )
    resumed = resume_run(
        first.run_id, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False
    )
    assert resumed.counts["sent"] == 3
    with closing(sqlite3.connect("b.db")) as conn, conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_new_path_starts_a_marked_database(tmp_path: Path) -> None:
    Store(tmp_path / "fresh.db").close()
    with closing(sqlite3.connect(tmp_path / "fresh.db")) as conn, conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


# --- a lost -wal -----------------------------------------------------------------------------


def crashed_run(tmp_path: Path, sandbox: Sandbox) -> Path:
    """A real run SIGKILLed after its third answer arrived (before it was recorded)."""
    campaign = write_campaign(
        tmp_path / "c", rows=12, base_url=sandbox.base_url, send={"concurrency": 1, "batch_size": 2}
    )
    died = run_batchsend(
        "run",
        str(campaign),
        "--db",
        "b.db",
        env={"BATCHSEND_TEST_ONLY_SIGKILL_AT": "response:3"},
    )
    assert died.returncode == -9, died.stderr
    assert Path("b.db-wal").stat().st_size > 0
    return campaign


def test_a_lost_wal_is_refused_and_putting_it_back_is_the_fix(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = crashed_run(tmp_path, sandbox)
    assert len(sandbox.messages()) == 6
    shutil.move("b.db-wal", tmp_path / "saved-wal")
    Path("b.db-shm").unlink(missing_ok=True)
    before = digest(Path("b.db"))

    again = run_batchsend("run", str(campaign), "--db", "b.db")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "b.db-wal" in again.stderr and "is missing" in again.stderr
    assert "12 pending or in flight" in again.stderr  # the main file: as at the start
    assert "--accept-lost-record" in again.stderr and "put b.db-wal back" in again.stderr
    run_id = again.stderr.split("  run ", 1)[1].split(" ", 1)[0]
    refused = run_batchsend("resume", run_id, "--db", "b.db")
    assert refused.returncode == 2 and "is missing" in refused.stderr
    assert digest(Path("b.db")) == before  # nothing written: the -wal can still go back
    assert len(sandbox.messages()) == 6

    Path("b.db-shm").unlink(missing_ok=True)
    shutil.move(tmp_path / "saved-wal", "b.db-wal")
    done = run_batchsend("resume", run_id, "--db", "b.db", "--base-url", sandbox.base_url)
    # the record is whole again: the batch answered but unrecorded is unknown (exit 3)
    assert done.returncode == 3, done.stderr
    assert "10 sent, 2 unknown" in done.stderr
    delivered = Counter(recipients_in(sandbox.messages()))
    assert len(delivered) == 12 and max(delivered.values()) == 1


def test_accept_lost_record_goes_on_and_says_so(tmp_path: Path, sandbox: Sandbox) -> None:
    crashed_run(tmp_path, sandbox)
    Path("b.db-wal").unlink()
    Path("b.db-shm").unlink(missing_ok=True)
    with pytest.raises(LostRecordError) as info:
        Store("b.db")
    run_id = str(info.value).split("  run ", 1)[1].split(" ", 1)[0]
    resumed = resume_run(
        run_id,
        db_path="b.db",
        api_key=KEY,
        base_url=sandbox.base_url,
        progress=False,
        accept_lost_record=True,
    )
    assert resumed.counts["sent"] == 12
    assert any("--accept-lost-record" in note for note in resumed.notes)
    Store("b.db").close()  # accepted: no longer refused


def test_a_crash_read_by_another_program_is_not_a_lost_wal(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """An sqlite3 reader closing last checkpoints the -wal into the file and deletes it."""
    crashed_run(tmp_path, sandbox)
    conn = sqlite3.connect("b.db")
    run_id = conn.execute("SELECT id FROM runs").fetchone()[0]
    conn.close()
    assert not Path("b.db-wal").exists()
    resumed = resume_run(
        run_id, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False
    )
    assert resumed.counts["unknown"] == 2 and resumed.counts["sent"] == 10
    delivered = Counter(recipients_in(sandbox.messages()))
    assert len(delivered) == 12 and max(delivered.values()) == 1


def unit(key: str, rows: tuple[int, ...]) -> SendUnit:
    messages = tuple(PlannedMessage(f"{key}-{r}", (r,), None, b"{}", 1) for r in rows)
    return SendUnit(key=key, messages=messages, batch=True)


@pytest.mark.parametrize("checkpoints", [False, True])
def test_a_db_copied_without_its_wal_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoints: bool
) -> None:
    """``checkpoints``: the sending connection checkpoints after every commit, raising the
    mark each time; a copy taken after any of them is still detected."""
    if checkpoints:
        monkeypatch.setattr(batchsend.store.database, "_WAL_CHECK_COMMITS", 1)
        monkeypatch.setattr(batchsend.store.database, "_WAL_CHECKPOINT_BYTES", 0)
    store = Store("b.db")
    with store.creating_run(campaign_path="/c/campaign.toml", provider="tosend") as run_id:
        store.add_recipients(
            run_id, [NewRecipient(row=n, email=f"u{n}@example.org") for n in range(1, 7)]
        )
    store.mark_sending_started(run_id)
    recorder = RunRecorder(store, run_id)
    for first in (1, 3):
        u = unit(f"k{first}", (first, first + 1))
        recorder.mark_sending(u)
        ok = [MessageOutcome(m.key, OutcomeKind.ACCEPTED, 200) for m in u.messages]
        recorder.record_final(u, ok, 1)
        recorder.flush()
    shutil.copy("b.db", "copy.db")  # the .db alone, while the run sends
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    conn = sqlite3.connect("copy.db")  # ... whose process has died since
    conn.execute("UPDATE sending_marks SET pid = ?", (gone.pid,))
    conn.commit()
    conn.close()
    with pytest.raises(LostRecordError, match=r"copy\.db-wal"):
        Store("copy.db")
    if checkpoints:  # the copy holds the checkpointed sends, and still knows it is behind
        conn = sqlite3.connect("copy.db")
        assert conn.execute("SELECT generation FROM sending_marks").fetchone()[0] > 1
        conn.close()
    store.clear_sending_mark(run_id)
    store.close()
    with Store("b.db") as whole:  # the original, closed cleanly, is whole
        assert whole.counts(run_id)["sent"] == 4


# --- a lost database: the ledger ---------------------------------------------------------------


def test_a_deleted_database_is_refused_from_the_ledger(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=4, base_url=sandbox.base_url)
    first = run_batchsend("run", str(campaign), "--db", "b.db")
    assert first.returncode == 0, first.stderr
    for leftover in Path().glob("b.db*"):
        leftover.unlink()
    again = run_batchsend("run", str(campaign), "--db", "b.db")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "does not hold it" in again.stderr and ".batchsend-ledger" in again.stderr
    assert "ended with 4 sent" in again.stderr
    assert len(sandbox.messages()) == 4
    accepted = run_batchsend("run", str(campaign), "--db", "b.db", "--accept-lost-record")
    assert accepted.returncode == 0 and "--accept-lost-record" in accepted.stderr
    assert len(sandbox.messages()) == 8  # accepted, explicitly
    assert run_batchsend("run", str(campaign), "--db", "b.db", "--dry-run").returncode == 0


def test_an_older_copy_of_the_database_is_refused(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=6, base_url=sandbox.base_url)
    first = run_campaign(
        campaign, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False, limit=2
    )
    shutil.copy("b.db", "backup.db")  # closed cleanly: the .db is whole
    resume_run(first.run_id, db_path="b.db", api_key=KEY, base_url=sandbox.base_url)
    shutil.copy("backup.db", "b.db")
    refused = run_batchsend("resume", first.run_id, "--db", "b.db")
    assert refused.returncode == 2 and "ended with 6 sent" in refused.stderr
    assert "shows 2" in refused.stderr
    assert len(sandbox.messages()) == 6


def test_a_database_deleted_mid_run_stops_the_run_with_a_clear_error(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """SQLite writes on into an unlinked file: the run must stop, not end "finished"."""
    sandbox.configure(latency_ms=20)
    campaign = write_campaign(
        tmp_path / "c", rows=400, provider="v1", base_url=sandbox.base_url,
        send={"concurrency": 2},
    )  # fmt: skip
    proc = subprocess.Popen(
        batchsend_command("run", str(campaign), "--db", "b.db", "--json"),
        env={**os.environ, "BATCHSEND_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(sandbox.messages()) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    for name in ("b.db", "b.db-wal", "b.db-shm"):
        Path(name).unlink(missing_ok=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "deleted or replaced" in err and "Traceback" not in err
    assert len(sandbox.messages()) < 400  # it stopped sending
