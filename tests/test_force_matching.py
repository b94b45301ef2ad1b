"""``resume --force`` after the recipient file was edited: rows are matched by address.

Before, rows were matched by position: after a row was inserted, one person got two
emails, two got none, and the store said all were sent. Deliveries are counted from the
sandbox's own record (the assertions hold against a provider that does not
de-duplicate); every ``sent`` row's address must have been delivered to.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from support.campaigns import recipients_in, write_campaign

from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.store import Store

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


def edit(source: Path, change) -> None:
    lines = source.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    source.write_text("\n".join([header, *change(rows)]) + "\n")


def assert_sent_rows_were_delivered(run_id: str, delivered: Counter[str]) -> None:
    with Store("b.db") as store:
        for r in store.recipients(run_id):
            if r["state"] == "sent":
                assert delivered[r["email"]] == 1, r


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_inserted_and_deleted_rows_are_matched_by_address(
    tmp_path: Path, sandbox: Sandbox, provider: str
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=10, provider=provider)
    first = run(campaign, sandbox, limit=4)  # user1..4 sent, 5..10 pending
    # a new person at the top, user6 (pending) deleted, user2 (sent) moved to the end
    edit(
        tmp_path / "c" / "recipients.csv",
        lambda rows: (
            ["new@example.org,New,0"]
            + [r for r in rows if not r.startswith(("user6@", "user2@"))]
            + [r for r in rows if r.startswith("user2@")]
        ),
    )
    resumed = resume(first.run_id, sandbox, force=True)
    delivered = Counter(recipients_in(sandbox.messages()))
    expected = {f"user{n}@example.org": 1 for n in range(1, 11) if n != 6}
    assert delivered == Counter(expected | {"new@example.org": 1})
    assert resumed.counts["sent"] == 10 and resumed.counts["pending"] == 0
    with Store("b.db") as store:
        rows = {r["email"]: r for r in store.recipients(first.run_id)}
    assert rows["user6@example.org"]["state"] == "skipped"
    assert rows["user6@example.org"]["reason"] == "removed_from_input"
    assert rows["new@example.org"]["row"] == 11 and rows["new@example.org"]["state"] == "sent"
    assert rows["user2@example.org"]["row"] == 2  # its record, where it was
    assert_sent_rows_were_delivered(first.run_id, delivered)
    note = next(n for n in resumed.notes if n.startswith("--force matched"))
    assert "1 new" in note and "1 removed" in note and "moved" in note


def test_force_never_sends_again_to_an_address_sent_unknown_or_in_flight(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=8)
    first = run(campaign, sandbox, limit=3)  # user1..3 sent
    with closing(sqlite3.connect("b.db")) as conn, conn:  # user4 in flight when the process died
        conn.execute("UPDATE recipients SET state = 'sending' WHERE row = 4")
        conn.execute("UPDATE recipients SET state = 'unknown' WHERE row = 5")
    # reversed: every row moved; the message text changed too (forced)
    edit(tmp_path / "c" / "recipients.csv", lambda rows: list(reversed(rows)))
    (tmp_path / "c" / "campaign.toml").write_text(
        (tmp_path / "c" / "campaign.toml").read_text().replace("News for", "Tidings for")
    )
    resumed = resume(first.run_id, sandbox, force=True)
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered == Counter(
        {f"user{n}@example.org": 1 for n in (1, 2, 3, 6, 7, 8)}
    )  # user4 and user5 may have been sent: never again by --force
    assert resumed.counts["unknown"] == 2 and resumed.counts["sent"] == 6
    assert_sent_rows_were_delivered(first.run_id, delivered)
    with Store("b.db") as store:
        row6 = store.recipient(first.run_id, 6)
    assert row6["email"] == "user6@example.org" and row6["state"] == "sent"


def test_force_with_nothing_changed_sends_the_rest_once(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=6)
    first = run(campaign, sandbox, limit=2)
    resumed = resume(first.run_id, sandbox, force=True)
    assert Counter(recipients_in(sandbox.messages())) == Counter(
        {f"user{n}@example.org": 1 for n in range(1, 7)}
    )
    assert "0 moved, 0 new" in resumed.notes[0] and "0 removed" in resumed.notes[0]
