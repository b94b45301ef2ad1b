"""The file's layout: its mark, its tables, how an existing file is recognised."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

_DB_FIX = "point --db at a batchsend database, or at a new file name to start one"

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
}
# Seconds a statement waits for another process's write lock before it gives up.
BUSY_TIMEOUT = 30.0
_WAL_AUTOCHECKPOINT_PAGES = 8192  # 32 MB of 4 KB pages
# While a run sends, its connection checkpoints itself: it looks at the log's size every
# _WAL_CHECK_COMMITS commits and checkpoints past _WAL_CHECKPOINT_BYTES (as SQLite would).
_WAL_CHECK_COMMITS = 256
# While a run sends, every this many commits the file is checked to be still ours
# (Store.check_file), so a database deleted mid-run stops it within a few requests.
_FILE_CHECK_COMMITS = 8
_WAL_CHECKPOINT_BYTES = 32 << 20


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
