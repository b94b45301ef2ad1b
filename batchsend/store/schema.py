"""The file's layout: its mark, its tables, how an existing file is recognised."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from batchsend.errors import DatabaseFileError

DB_FIX = "point --db at a batchsend database, or at a new file name to start one"

# The file's mark (``PRAGMA application_id``, "bSnd") and its schema version
# (``PRAGMA user_version``). Files written before the mark are recognised by their tables.
APPLICATION_ID = 0x62536E64
SCHEMA_VERSION = 1
_OUR_COLUMNS = {
    "runs": frozenset({"id", "campaign_path", "provider", "state", "settings"}),
    "recipients": frozenset({"run_id", "row", "email", "state"}),
    "units": frozenset({"run_id", "key", "composition"}),
    "attempts": frozenset({"run_id", "unit_key", "attempt"}),
    "claims": frozenset({"token", "campaign_path", "pid"}),
    "sending_marks": frozenset({"run_id", "pid", "generation", "witness"}),
    "events": frozenset({"key", "provider", "type", "message_key"}),
    "suppressions": frozenset({"address", "reason"}),
    "event_cursors": frozenset({"source", "position"}),
}
_RECIPIENTS_TABLE = """CREATE TABLE IF NOT EXISTS recipients (
    run_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    email TEXT,
    name TEXT,
    state TEXT,
    reason TEXT,
    attempts INTEGER,
    message_key TEXT,
    unit_key TEXT,
    http_status INTEGER,
    error_type TEXT,
    error_message TEXT,
    provider_message_id TEXT,
    provider_email_id TEXT,
    tag TEXT,
    metadata TEXT,
    sent_at TEXT,
    updated_at TEXT,
    retryable INTEGER,
    PRIMARY KEY (run_id, row)
) WITHOUT ROWID"""

_CLAIMS_TABLE = """CREATE TABLE IF NOT EXISTS claims (
    token TEXT PRIMARY KEY,
    campaign_path TEXT,
    run_id TEXT,
    command TEXT,
    exclusive INTEGER,
    host TEXT,
    pid INTEGER,
    pid_start TEXT,
    since TEXT
)"""

_SENDING_MARKS_TABLE = """CREATE TABLE IF NOT EXISTS sending_marks (
    run_id TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    pid_start TEXT,
    since TEXT,
    generation INTEGER NOT NULL,
    witness INTEGER NOT NULL
)"""

_ATTEMPTS_TABLE = """CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    unit_key TEXT,
    attempt INTEGER,
    at TEXT,
    elapsed_ms REAL,
    http_status INTEGER,
    outcome TEXT,
    messages INTEGER,
    recipients INTEGER,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID"""


def recognise(db: sqlite_utils.Database, path: Path) -> str:
    """ "current" (marked), "older" (batchsend's tables, unmarked) or "new" (empty).

    Raises :class:`DatabaseFileError` for another application's file or a newer
    batchsend's, having changed nothing.
    """
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {
        name: set(db.table(name).columns_dict)
        for name in db.table_names()
        if not name.lower().startswith("sqlite_")  # SQLite's own (sqlite_sequence...)
    }
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise DatabaseFileError(
                f"{path}: written by a newer batchsend (database schema {version}; "
                f"this one reads up to {SCHEMA_VERSION}); batchsend did not change it\n"
                "  fix: upgrade batchsend, or point --db at another file"
            )
        return "current"
    if app_id == 0 and not tables:
        return "new"
    # Files written before the mark: only our tables, each with batchsend's columns.
    ours = app_id == 0 and all(
        name in _OUR_COLUMNS and columns >= _OUR_COLUMNS[name] for name, columns in tables.items()
    )
    if not ours:
        what = (
            f"application id {app_id:#x}"
            if app_id
            else "tables " + ", ".join(sorted(tables)[:6]) + (", ..." * (len(tables) > 6))
        )
        raise DatabaseFileError(
            f"{path}: not a batchsend database: it belongs to another application "
            f"({what}); batchsend did not change it\n  fix: {DB_FIX}"
        )
    return "older"


def create_schema(db: sqlite_utils.Database) -> None:
    """Create what is missing of the tables (idempotent), migrating an older file's."""
    db.table("runs").create(
        {
            "id": str,
            "campaign_path": str,
            "campaign_name": str,
            "provider": str,
            "base_url": str,
            "input_path": str,
            "input_fingerprint": str,
            "templates_fingerprint": str,
            "settings": str,
            "state": str,
            "is_test": int,
            "dry_run": int,
            "fatal_error": str,
            "started_at": str,
            "ended_at": str,
            "updated_at": str,
            "total_rows": int,
            "report_path": str,
            "metadata_columns": str,
            "pid": int,
            "counts": str,  # additive: final counts by state, JSON
        },
        pk="id",
        if_not_exists=True,
    )
    # recipients: WITHOUT ROWID, clustered on (run_id, row). Every hot statement
    # finds its rows by that key, so the rows live in the key's own B-tree: a sending
    # mark or an outcome dirties one page where a rowid table dirtied two (table +
    # key index). There is deliberately NO index on state: every row changes state at
    # least twice, and each change would rewrite two entries of it; the few queries by
    # state (counts, pending rows at a resume) scan the run's rows by key, once per run.
    db.execute(_RECIPIENTS_TABLE)
    db.execute("DROP INDEX IF EXISTS recipients_run_state")  # older files
    db.table("units").create(
        {
            "run_id": str,
            "key": str,
            "composition": str,
            "batch": int,
            "state": str,
            "attempts": int,
            "created_at": str,
        },
        pk=("run_id", "key"),
        if_not_exists=True,
    )
    # attempts: appended in time order under a per-run sequence number, so the
    # log's own key orders it and a commit dirties only its last page (a rowid table
    # with a (run_id, at) index dirtied two).
    db.execute(_ATTEMPTS_TABLE)
    if "seq" not in db.table("attempts").columns_dict:  # written before the sequence existed
        db.table("attempts").add_column("seq", int)
    # Who is at work on the file right now, and which runs are mid-send: the guards
    # against two commands at once and against a lost write-ahead log.
    db.execute(_CLAIMS_TABLE)
    db.execute(_SENDING_MARKS_TABLE)
    _create_event_tables(db)


def _create_event_tables(db: sqlite_utils.Database) -> None:
    """The provider events, the suppression list and the Events API pull positions."""
    db.table("events").create(
        {
            "key": str,
            "provider": str,
            "type": str,
            "bounce_type": str,
            "reason": str,
            "recipient": str,
            "message_key": str,
            "provider_message_id": str,
            "provider_email_id": str,
            "occurred_at": str,
            "received_at": str,
            "source": str,
            "raw": str,
            "deliveries": int,  # how many times it arrived (providers retry)
        },
        pk="key",
        if_not_exists=True,
    )
    db.execute("CREATE INDEX IF NOT EXISTS events_message_key ON events (message_key)")
    db.table("suppressions").create(
        {
            "address": str,  # the comparison key: what a recipient row is matched by
            "email": str,  # as the source wrote it
            "reason": str,  # hard bounce | complaint | unsubscribe | manual | provider list
            "source": str,  # event | manual | import | sync:<provider>
            "event_key": str,
            "first_seen": str,
            "note": str,
        },
        pk="address",
        if_not_exists=True,
    )
    db.table("event_cursors").create(
        {"source": str, "position": str, "updated_at": str}, pk="source", if_not_exists=True
    )
