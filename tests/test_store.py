"""The SQLite store: schema, write-ahead marking, buffered outcomes, durability, no secrets."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.clock import FakeClock

from batchsend.apikeys import remember
from batchsend.errors import StoreError
from batchsend.message import Address, Message
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.states import RecipientState, RunState
from batchsend.store import FLUSH_SECONDS, NewRecipient, RunRecorder, Store, new_run_id

SENDER = Address("news@example.com")


def unit_for(key: str, *row_groups: tuple[int, ...]) -> SendUnit:
    messages = tuple(
        PlannedMessage(
            key=f"{key}-m{i}",
            rows=rows,
            message=Message(
                row=rows[0], sender=SENDER, to=(Address(f"r{rows[0]}@example.org"),), subject="s"
            ),
        )
        for i, rows in enumerate(row_groups)
    )
    return SendUnit(key=key, messages=messages, batch=len(messages) > 1)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "b.db")
    yield s
    s.close()


def new_run(store: Store, rows: int = 10, **kw) -> str:
    run_id = store.create_run(campaign_path="/c/campaign.toml", provider="tosend", **kw)
    store.add_recipients(
        run_id, (NewRecipient(row=i, email=f"r{i}@example.org") for i in range(1, rows + 1))
    )
    return run_id


def other_view(store: Store) -> sqlite3.Connection:
    """A second connection: sees only what is committed."""
    return sqlite3.connect(store.path)


def states(conn: sqlite3.Connection, run_id: str) -> dict[int, str]:
    return dict(conn.execute("SELECT row, state FROM recipients WHERE run_id = ?", (run_id,)))


def test_schema_has_the_columns_the_reports_read(store: Store) -> None:
    expected = {
        "runs": {
            "id", "campaign_path", "campaign_name", "provider", "base_url", "input_path",
            "input_fingerprint", "templates_fingerprint", "settings", "state", "is_test",
            "dry_run", "fatal_error", "started_at", "ended_at", "updated_at", "total_rows",
            "report_path", "metadata_columns", "pid",
        },
        "recipients": {
            "run_id", "row", "email", "name", "state", "reason", "attempts", "message_key",
            "unit_key", "http_status", "error_type", "error_message", "provider_message_id",
            "provider_email_id", "tag", "metadata", "sent_at", "updated_at",
        },
        "units": {"run_id", "key", "composition", "batch", "state", "attempts", "created_at"},
        "attempts": {
            "run_id", "unit_key", "attempt", "at", "elapsed_ms", "http_status", "outcome",
            "messages", "recipients",
        },
    }  # fmt: skip
    for table, columns in expected.items():
        assert columns <= set(store.db[table].columns_dict), table
    assert store.db["recipients"].pks == ["run_id", "row"]
    assert store.db["units"].pks == ["run_id", "key"]
    # No index on state: every state change would rewrite two of its entries.
    assert [ix.columns for ix in store.db["recipients"].indexes if ix.origin != "pk"] == []
    assert "WITHOUT ROWID" in store.db["recipients"].schema
    assert store.db["attempts"].pks == ["run_id", "seq"]
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_of_the_older_layout_is_upgraded_in_place(tmp_path) -> None:
    """A rowid recipients table with a state index, an attempts log without ``seq``."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE recipients (run_id TEXT, row INTEGER, email TEXT, name TEXT, state TEXT,
          reason TEXT, attempts INTEGER, message_key TEXT, unit_key TEXT, http_status INTEGER,
          error_type TEXT, error_message TEXT, provider_message_id TEXT,
          provider_email_id TEXT, tag TEXT, metadata TEXT, sent_at TEXT, updated_at TEXT,
          retryable INTEGER, PRIMARY KEY (run_id, row));
        CREATE INDEX recipients_run_state ON recipients (run_id, state);
        CREATE TABLE attempts (run_id TEXT, unit_key TEXT, attempt INTEGER, at TEXT,
          elapsed_ms FLOAT, http_status INTEGER, outcome TEXT, messages INTEGER,
          recipients INTEGER);
        """
    )
    conn.close()
    with Store(path) as old:
        assert [ix for ix in old.db["recipients"].indexes if ix.origin != "pk"] == []
        assert "seq" in old.db["attempts"].columns_dict
        run_id = new_run(old, rows=3)
        recorder = RunRecorder(old, run_id)
        u = unit_for("u1", (1,), (2,))
        ok = [MessageOutcome(f"u1-m{i}", OutcomeKind.ACCEPTED, 200) for i in range(2)]
        recorder.mark_sending(u)
        recorder.record_attempt(u, 1, ok, 3.0)
        recorder.record_final(u, ok, 1)
        recorder.flush()
        assert [a["seq"] for a in old.attempts(run_id)] == [1]
        assert old.counts(run_id)["sent"] == 2


def test_run_ids_sort_by_time_and_are_unique() -> None:
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    one = next(iter(ids))
    assert len(one) == len("20261121T103455-ab12cd") and one[8] == "T"
    earlier = new_run_id(datetime(2026, 1, 1, 23, 59, 59, tzinfo=UTC))
    later = new_run_id(datetime(2026, 1, 2, 0, 0, 0, tzinfo=UTC))
    assert earlier < later


def test_run_round_trip_and_latest(store: Store) -> None:
    first = store.create_run(
        campaign_path="/c/campaign.toml",
        provider="v1",
        settings={"concurrency": 8, "rate": 10.0},
        metadata_columns=["city"],
        input_fingerprint="abc",
        run_id="20260101T000000-aaaaaa",
    )
    second = store.create_run(campaign_path="/c/campaign.toml", provider="v1")
    run = store.get_run(first)
    assert run.state is RunState.RUNNING
    assert run.settings == {"concurrency": 8, "rate": 10.0}
    assert run.metadata_columns == ["city"]
    assert run.input_fingerprint == "abc"
    assert store.latest_run("/c/campaign.toml").id == second
    assert store.latest_run("/elsewhere.toml") is None
    with pytest.raises(StoreError, match="no run"):
        store.get_run("nope")
    store.set_run_state(first, RunState.FINISHED, ended=True)
    assert store.get_run(first).ended_at is not None
    assert store.get_run(first).counts == {s.value: 0 for s in RecipientState}


def test_no_api_key_reaches_the_file(tmp_path: Path) -> None:
    key = remember("sk_live_store_must_never_see_this_1234")
    store = Store(tmp_path / "k.db")
    run_id = store.create_run(
        campaign_path="/c.toml", provider="tosend", settings={"api_key": key, "rate": 5}
    )
    store.add_recipients(
        run_id, [NewRecipient(row=1, email="a@example.org", error_message=f"bad {key}")]
    )
    rec = RunRecorder(store, run_id)
    unit = unit_for("u1", (1,))
    rec.mark_sending(unit)
    rec.record_final(
        unit,
        [MessageOutcome("u1-m0", OutcomeKind.PERMANENT, 400, "bad", f"rejected key {key}")],
        1,
    )
    rec.flush()
    store.set_run_state(run_id, RunState.FATAL, fatal_error=f"key {key} refused", ended=True)
    assert store.get_run(run_id).settings == {"rate": 5}
    store.close()
    for path in tmp_path.iterdir():  # the database and its WAL / shm files
        assert key.encode() not in path.read_bytes(), path.name


def test_mark_sending_is_committed_before_it_returns(store: Store) -> None:
    run_id = new_run(store, 5)
    rec = RunRecorder(store, run_id)
    rec.mark_sending(unit_for("u1", (1,), (2, 3)))
    seen = states(other_view(store), run_id)
    assert [seen[r] for r in (1, 2, 3, 4)] == ["sending", "sending", "sending", "pending"]
    unit = store.unit(run_id, "u1")
    assert unit.composition == ((1,), (2, 3)) and unit.batch


def test_outcomes_are_buffered_then_flushed(store: Store) -> None:
    run_id = new_run(store, 5)
    clock = FakeClock()
    rec = RunRecorder(store, run_id, monotonic=clock)
    unit = unit_for("u1", (1,), (2,), (3,))
    rec.mark_sending(unit)
    rec.record_attempt(unit, 1, [MessageOutcome("u1-m0", OutcomeKind.RETRYABLE, 503)], 12.5)
    rec.record_final(
        unit,
        [
            MessageOutcome("u1-m0", OutcomeKind.ACCEPTED, 200, provider_message_id="<m@x>"),
            MessageOutcome("u1-m1", OutcomeKind.PERMANENT, 422, "validation_error", "bad to"),
            MessageOutcome("u1-m2", OutcomeKind.RETRYABLE, 503, "internal_error", "down"),
        ],
        attempts=2,
    )
    view = other_view(store)
    assert states(view, run_id)[1] == "sending"  # not committed yet
    clock.t += FLUSH_SECONDS  # the next record call finds the buffer old enough
    rec.record_attempt(unit, 2, [MessageOutcome("u1-m0", OutcomeKind.ACCEPTED, 200)], 3.0)
    assert states(view, run_id) == {1: "sent", 2: "failed", 3: "failed", 4: "pending", 5: "pending"}
    row1, row2, row3 = (store.recipient(run_id, r) for r in (1, 2, 3))
    assert row1["provider_message_id"] == "<m@x>" and row1["sent_at"] and row1["attempts"] == 2
    assert row2["reason"] == "validation_error" and row2["retryable"] == 0
    assert row3["reason"] == "internal_error" and row3["retryable"] == 1
    assert store.rows_in_state(run_id, [RecipientState.FAILED], retryable_only=True) == [3]
    assert [a["outcome"] for a in store.attempts(run_id)] == ["retryable", "accepted"]
    assert store.unit(run_id, "u1").state == "mixed"
    assert rec.sent == 1 and rec.failed == 2


def keyed_run(store: Store, rows: int, unkeyed: tuple[int, ...] = ()) -> str:
    """A run whose rows carry their message keys from preflight, as a fresh run's do."""
    run_id = store.create_run(campaign_path="/c/campaign.toml", provider="tosend")
    store.add_recipients(
        run_id,
        (
            NewRecipient(
                row=i,
                email=f"r{i}@example.org",
                message_key=None if i in unkeyed else f"key{i}",
            )
            for i in range(1, rows + 1)
        ),
    )
    return run_id


def encoded_unit(key: str, rows: range) -> SendUnit:
    planned = tuple(PlannedMessage(f"key{r}", (r,), None, b"{}", 1) for r in rows)
    return SendUnit(key=key, messages=planned, batch=True)


def accepted(unit: SendUnit, status: int = 200) -> list[MessageOutcome]:
    return [
        MessageOutcome(pm.key, OutcomeKind.ACCEPTED, status, provider_message_id=pm.key)
        for pm in unit.messages
    ]


@pytest.mark.parametrize("unkeyed", [(), (3,)])
def test_an_accepted_batch_keyed_in_preflight_is_recorded_whole(store: Store, unkeyed) -> None:
    # One range statement for the batch; a row missing its key falls back to row by row,
    # and every row ends with the very same record either way.
    run_id = keyed_run(store, 6, unkeyed)
    rec = RunRecorder(store, run_id)
    unit = encoded_unit("u1", range(2, 6))
    rec.mark_sending(unit)
    rec.record_final(unit, accepted(unit, 207), attempts=2)
    rec.flush()
    view = other_view(store)
    assert states(view, run_id) == {
        1: "pending", 2: "sent", 3: "sent", 4: "sent", 5: "sent", 6: "pending"
    }  # fmt: skip
    for r in range(2, 6):
        row = store.recipient(run_id, r)
        assert row["provider_message_id"] == row["message_key"] == f"key{r}"
        assert row["attempts"] == 2 and row["http_status"] == 207 and row["sent_at"]
        assert row["unit_key"] == "u1" and row["provider_email_id"] is None
    assert store.unit(run_id, "u1").state == "sent" and rec.sent == 4


def test_a_resume_forgets_the_keys_of_rows_not_sent(store: Store) -> None:
    run_id = keyed_run(store, 4)
    rec = RunRecorder(store, run_id)
    unit = encoded_unit("u1", range(1, 3))
    rec.mark_sending(unit)
    rec.record_final(unit, accepted(unit), attempts=1)
    rec.flush()
    store.forget_planned_keys(run_id)
    keys = {r["row"]: r["message_key"] for r in store.recipients(run_id)}
    assert keys == {1: "key1", 2: "key2", 3: None, 4: None}


def test_a_batch_with_any_other_answer_is_recorded_row_by_row(store: Store) -> None:
    run_id = keyed_run(store, 4)
    rec = RunRecorder(store, run_id)
    unit = encoded_unit("u1", range(1, 5))
    outcomes = accepted(unit)
    outcomes[1] = MessageOutcome("key2", OutcomeKind.PERMANENT, 422, "validation_error", "bad")
    # a provider that names its own ids, not the keys: those are what the store keeps
    outcomes[2] = MessageOutcome("key3", OutcomeKind.ACCEPTED, 200, provider_message_id="<p3>")
    rec.mark_sending(unit)
    rec.record_final(unit, outcomes, attempts=1)
    rec.flush()
    assert states(other_view(store), run_id) == {1: "sent", 2: "failed", 3: "sent", 4: "sent"}
    assert store.recipient(run_id, 3)["provider_message_id"] == "<p3>"
    assert store.recipient(run_id, 4)["provider_message_id"] == "key4"
    assert store.recipient(run_id, 2)["reason"] == "validation_error"
    assert store.unit(run_id, "u1").state == "mixed"


def test_fatal_answer_leaves_rows_pending_for_a_later_resume(store: Store) -> None:
    run_id = new_run(store, 2)
    rec = RunRecorder(store, run_id)
    unit = unit_for("u1", (1,))
    rec.mark_sending(unit)
    rec.record_final(unit, [MessageOutcome("u1-m0", OutcomeKind.FATAL, 403, "forbidden")], 1)
    rec.flush()
    assert store.recipient(run_id, 1)["state"] == "pending"
    rec.mark_sending(unit)  # the same request may go again later
    assert store.recipient(run_id, 1)["state"] == "sending"


def test_fatal_answer_on_a_retry_keeps_rows_for_retry_failed(store: Store) -> None:
    """Attempt 1 may have been delivered unanswered (a timeout); if attempt 2 is refused
    as fatal, pending would let a resume re-plan the rows under a new key: a second send.
    They end failed and retryable, for --retry-failed to repeat the same request."""
    run_id = new_run(store, 2)
    rec = RunRecorder(store, run_id)
    unit = unit_for("u1", (1,))
    rec.mark_sending(unit)
    rec.record_final(unit, [MessageOutcome("u1-m0", OutcomeKind.FATAL, 403, "forbidden")], 2)
    rec.flush()
    row = store.recipient(run_id, 1)
    assert row["state"] == "failed" and row["retryable"] == 1 and row["attempts"] == 2
    assert store.rows_in_state(run_id, [RecipientState.PENDING]) == [2]
    assert store.rows_in_state(run_id, [RecipientState.FAILED], retryable_only=True) == [1]


@pytest.mark.parametrize("state", ["sent", "sending", "skipped"])
def test_mark_sending_refuses_rows_not_sendable(store: Store, state: str) -> None:
    run_id = new_run(store, 3)
    store.conn.execute("UPDATE recipients SET state = ? WHERE row = 2", (state,))
    rec = RunRecorder(store, run_id)
    with pytest.raises(StoreError, match="refusing to send"):
        rec.mark_sending(unit_for("u1", (1,), (2,)))
    # all or nothing: row 1 was not marked either, and no unit was recorded
    assert store.recipient(run_id, 1)["state"] == "pending"
    with pytest.raises(StoreError):
        store.unit(run_id, "u1")


def test_sending_becomes_unknown_and_keeps_its_unit(store: Store) -> None:
    run_id = new_run(store, 4)
    rec = RunRecorder(store, run_id)
    rec.mark_sending(unit_for("u1", (1, 2)))
    rec.mark_sending(unit_for("u2", (3,)))
    assert store.sending_to_unknown(run_id) == [1, 2, 3]
    assert store.rows_in_state(run_id, [RecipientState.UNKNOWN]) == [1, 2, 3]
    units = store.units_with_rows_in(run_id, [RecipientState.UNKNOWN])
    assert [(u.key, u.composition, u.state) for u in units] == [
        ("u1", ((1, 2),), "unknown"),
        ("u2", ((3,),), "unknown"),
    ]
    # a resend marks the same unit sending again, from unknown
    rec.mark_sending(unit_for("u1", (1, 2)))
    assert store.recipient(run_id, 1)["state"] == "sending"


def test_bulk_insert_in_chunks(store: Store) -> None:
    run_id = store.create_run(campaign_path="/c.toml", provider="v1")
    n = store.add_recipients(
        run_id,
        (
            NewRecipient(
                row=i,
                email=f"r{i}@example.org",
                state=RecipientState.SKIPPED if i % 10 == 0 else RecipientState.PENDING,
                reason="invalid" if i % 10 == 0 else None,
                metadata={"city": "Oslo"},
            )
            for i in range(1, 25_001)
        ),
        chunk=7_000,
    )
    assert n == 25_000 and store.get_run(run_id).total_rows == 25_000
    counts = store.counts(run_id)
    assert counts["pending"] == 22_500 and counts["skipped"] == 2_500
    assert json.loads(store.recipient(run_id, 7)["metadata"]) == {"city": "Oslo"}


def test_a_sending_mark_survives_kill_9(tmp_path: Path) -> None:
    """The commit of mark_sending is in the file even if the process dies right after."""
    db = tmp_path / "k9.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from test_store import unit_for
        from batchsend.store import NewRecipient, RunRecorder, Store
        s = Store({str(db)!r})
        run = s.create_run(campaign_path="/c.toml", provider="v1", run_id="r1")
        s.add_recipients(run, [NewRecipient(row=1, email="a@example.org")])
        RunRecorder(s, run).mark_sending(unit_for("u1", (1,)))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, check=False)
    assert proc.returncode == -9
    store = Store(db)
    assert store.recipient("r1", 1)["state"] == "sending"
    assert store.integrity_check() == "ok"
