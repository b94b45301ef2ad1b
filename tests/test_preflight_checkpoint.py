"""A kill in a long preflight loses none of the rows already checked.

``batchsend run`` is SIGKILLed (the test-only crash point, exactly ``kill -9``) right
after the row pass kept its second chunk; nothing may have been sent or recorded. The
same command again takes those chunks from the checkpoint beside the database, says so,
and ends as a run that was never interrupted would: the same rows, the same states,
every address emailed once (counted from the sandbox's own record).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from support.campaigns import recipients_in, write_campaign
from support.processes import query, run_batchsend

from batchsend.sandbox import Sandbox
from batchsend.store.checkpoint import checkpoint_path

CHUNK_ROWS = 60  # in the child, by BATCHSEND_TEST_ONLY_CHUNK_ROWS
ROWS = 3 * CHUNK_ROWS + 25  # four chunks: two kept before the kill, two checked after
KILL_AFTER = "checkpoint:2"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run(
    campaign: Path, sandbox: Sandbox, db: Path, *extra: str, crash: str | None = None, workers=2
):
    env = {"BATCHSEND_TEST_ONLY_CHUNK_ROWS": str(CHUNK_ROWS)}
    if crash:
        env["BATCHSEND_TEST_ONLY_SIGKILL_AT"] = crash
    return run_batchsend(
        "run", str(campaign), "--db", str(db), "--base-url", sandbox.base_url,
        "--workers", str(workers), *extra, key="sk-test", env=env, timeout=300,
    )  # fmt: skip


def kept_chunks(db: Path) -> list[tuple[int, int]]:
    path = checkpoint_path(db)
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT chunk, rows FROM chunks ORDER BY chunk").fetchall()


def states(db: Path) -> list[tuple]:
    return query(db, "SELECT row, email, state, reason FROM recipients ORDER BY row")


def test_a_killed_preflight_goes_on_from_its_checkpoint(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=ROWS, bad_rows=(5, CHUNK_ROWS + 9))
    db = tmp_path / "c" / "batchsend.db"
    killed = run(campaign, sandbox, db, "--skip-invalid", crash=KILL_AFTER)
    assert killed.returncode == -9, killed.stderr
    assert sandbox.stats()["requests"] == 0  # nothing leaves before the whole input passed
    assert query(db, "SELECT count(*) FROM runs") in ([(0,)], [])  # nothing recorded
    assert kept_chunks(db) == [(0, CHUNK_ROWS), (1, CHUNK_ROWS)]

    again = run(campaign, sandbox, db, "--skip-invalid")
    assert again.returncode == 0, again.stderr
    assert f"{2 * CHUNK_ROWS:,} row(s) it had checked were not checked again" in again.stderr
    delivered = Counter(recipients_in(sandbox.messages()))
    assert len(delivered) == ROWS - 2 and set(delivered.values()) == {1}
    assert kept_chunks(db) == []  # the run recorded its rows: the pass is forgotten

    # A run never interrupted records exactly the same rows, states and reasons.
    with Sandbox() as other:
        clean_db = tmp_path / "clean.db"
        clean = run(campaign, other, clean_db, "--skip-invalid", "--again", workers=1)
        assert clean.returncode == 0, clean.stderr
    assert states(db) == states(clean_db)
    assert Counter(s for _, _, s, _ in states(db)) == {"sent": ROWS - 2, "skipped": 2}


def test_a_checkpoint_of_other_inputs_is_never_used(tmp_path: Path, sandbox: Sandbox) -> None:
    """The recipients changed between the kill and the next run: every row is checked
    again, and the old chunks are dropped (they can never be used)."""
    campaign = write_campaign(tmp_path / "c", rows=ROWS)
    db = tmp_path / "c" / "batchsend.db"
    assert run(campaign, sandbox, db, crash=KILL_AFTER, workers=1).returncode == -9
    assert len(kept_chunks(db)) == 2
    source = tmp_path / "c" / "recipients.csv"
    text = source.read_text().replace("user7@example.org", "user7-new@example.org")
    source.write_text(text)

    again = run(campaign, sandbox, db, workers=1)
    assert again.returncode == 0, again.stderr
    assert "not checked again" not in again.stderr
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered["user7-new@example.org"] == 1 and "user7@example.org" not in delivered
    assert len(delivered) == ROWS and set(delivered.values()) == {1}
    with sqlite3.connect(checkpoint_path(db)) as conn:
        assert conn.execute("SELECT count(*) FROM passes").fetchone() == (0,)


def test_a_bad_file_is_refused_as_fast_the_second_time(tmp_path: Path, sandbox: Sandbox) -> None:
    """A refusal records nothing in the database; the checked chunks stay, so the same
    refusal comes again without checking them again, and nothing is ever sent."""
    campaign = write_campaign(tmp_path / "c", rows=ROWS, bad_rows=(ROWS - 1,))
    db = tmp_path / "c" / "batchsend.db"
    for _ in range(2):
        refused = run(campaign, sandbox, db, workers=1)
        assert refused.returncode == 2
        assert f"row {ROWS - 1}" in refused.stderr and "--skip-invalid" in refused.stderr
    assert sandbox.stats()["requests"] == 0
    assert query(db, "SELECT count(*) FROM runs") in ([(0,)], [])
    assert len(kept_chunks(db)) == 4


@pytest.mark.parametrize(
    ("killed_with", "then", "emails"),
    [
        (("--limit", "70"), ("--limit", "70"), 70),
        (("--dry-run",), (), ROWS - 1),
        ((), ("--dry-run",), 0),
        ((), ("--test-to", "proof@example.org", "--limit", "3"), 3),
    ],
    ids=["limit", "dry-run-then-real", "real-then-dry-run", "real-then-proof"],
)
def test_what_goes_on_from_a_checkpoint_is_what_a_clean_run_does(
    tmp_path: Path,
    sandbox: Sandbox,
    killed_with: tuple[str, ...],
    then: tuple[str, ...],
    emails: int,
) -> None:
    """The options that are not part of the pass's key (--limit, --dry-run, --test-to)
    decide nothing a kept chunk holds: the run that takes the chunks records and sends
    exactly what the same command does on a database that never saw the kill."""
    campaign = write_campaign(tmp_path / "c", rows=ROWS, bad_rows=(5,))
    db = tmp_path / "c" / "batchsend.db"
    killed = run(campaign, sandbox, db, "--skip-invalid", *killed_with, crash=KILL_AFTER)
    assert killed.returncode == -9, killed.stderr
    assert sandbox.stats()["requests"] == 0
    assert len(kept_chunks(db)) == 2

    again = run(campaign, sandbox, db, "--skip-invalid", *then)
    assert again.returncode == 0, again.stderr
    assert f"{2 * CHUNK_ROWS:,} row(s) it had checked were not checked again" in again.stderr
    with Sandbox() as other:
        clean_db = tmp_path / "clean.db"
        again_anyway = ("--again",) if "--test-to" not in then else ()
        clean = run(campaign, other, clean_db, "--skip-invalid", *then, *again_anyway, workers=1)
        assert clean.returncode == 0, clean.stderr
        expected = Counter(recipients_in(other.messages()))
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered == expected and sum(delivered.values()) == emails
    assert set(delivered.values()) <= {1} or "--test-to" in then
    assert states(db) == states(clean_db)
