"""The row pass's checked chunks, kept across a kill: a file beside the database.

A run's preflight checks every row before anything is sent, and records the run's rows
in ONE transaction at its end (a refusal records nothing). On ten million rows that
pass takes minutes; a kill in its middle would lose all of it. So each chunk the pass
has checked is also written here, committed on its own, as the pass goes: the next
``batchsend run`` of the same campaign, on the same inputs, takes those chunks from
here instead of checking them again (:func:`batchsend.preflight.iter_rows`).

This is a cache, never a record: nothing here says anything was sent, and deleting the
file at any moment only costs time. A pass is known by a key
(:func:`batchsend.preflight.checkpoint_key`) made of everything its results depend on:
the recipient file's and the campaign's fingerprints, the campaign's settings as loaded
(command-line overrides included), the database's suppression list, the chunk size. A
different key is a different pass: one campaign's older passes are deleted when a new
one starts, and a pass is deleted when the run it was for has recorded its rows.

The file is ``<database>-preflight`` (SQLite, WAL). One process writes it, chunk after
chunk, the main process of the run; the workers never touch it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["Checkpoint", "checkpoint_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS passes (
    pass TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE TABLE IF NOT EXISTS chunks (
    pass TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    first_row INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (pass, chunk)
) WITHOUT ROWID;
"""


def checkpoint_path(db_path: str | Path) -> Path:
    """Where the checkpoint of the database at ``db_path`` lives."""
    return Path(f"{db_path}-preflight")


class Checkpoint:
    """The chunks of one pass (``key``) of one campaign, in the file beside ``db_path``.

    Example::

        with Checkpoint(db_path, campaign_path, key) as kept:
            data = kept.get(0)        # None: check chunk 0
            kept.put(0, 1, 2000, data)
            kept.finish()             # the run recorded its rows: forget the pass
    """

    def __init__(self, db_path: str | Path, campaign: str, key: str) -> None:
        self.path = checkpoint_path(db_path)
        self.campaign = campaign
        self.key = key
        self.kept_rows = 0  # rows this pass took from the file instead of checking them
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a cache: a lost last chunk is fine
        self._db.executescript(_SCHEMA)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            older = [
                p
                for (p,) in self._db.execute(
                    "SELECT pass FROM passes WHERE campaign = ? AND pass != ?", (campaign, key)
                )
            ]
            for p in older:  # the inputs changed since: those chunks can never be used
                self._db.execute("DELETE FROM chunks WHERE pass = ?", (p,))
                self._db.execute("DELETE FROM passes WHERE pass = ?", (p,))
            self._db.execute(
                "INSERT OR IGNORE INTO passes (pass, campaign) VALUES (?, ?)", (key, campaign)
            )

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stored_rows(self) -> int:
        """Rows in this pass's stored chunks."""
        (n,) = self._db.execute(
            "SELECT COALESCE(SUM(rows), 0) FROM chunks WHERE pass = ?", (self.key,)
        ).fetchone()
        return int(n)

    def get(self, chunk: int, first_row: int, rows: int) -> bytes | None:
        """Chunk ``chunk``'s stored results, if it was checked with these bounds."""
        found = self._db.execute(
            "SELECT data FROM chunks WHERE pass = ? AND chunk = ? AND first_row = ? AND rows = ?",
            (self.key, chunk, first_row, rows),
        ).fetchone()
        if found is None:
            return None
        self.kept_rows += rows
        return bytes(found[0])

    def put(self, chunk: int, first_row: int, rows: int, data: bytes) -> None:
        """Keep chunk ``chunk``'s results (committed at once)."""
        self._db.execute(
            "INSERT OR REPLACE INTO chunks (pass, chunk, first_row, rows, data)"
            " VALUES (?, ?, ?, ?, ?)",
            (self.key, chunk, first_row, rows, data),
        )

    def finish(self) -> None:
        """Forget this pass: the run it was for has recorded its rows."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM chunks WHERE pass = ?", (self.key,))
            self._db.execute("DELETE FROM passes WHERE pass = ?", (self.key,))
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._db.close()
