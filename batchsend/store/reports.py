"""The read-only queries behind reports and the one-page summary.

Set-based and read-only: a report's rows, streamed in row order on a connection of the
caller's (so a report may be read while a run writes, WAL), the failure reasons grouped
with their counts, and the attempts log cut into time buckets. Callers turn the rows
into frames and pages; no SQL is written outside this package.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from batchsend.store.database import Store


def recipient_columns(store: Store) -> set[str]:
    """The columns the file's ``recipients`` table has (older files lack some)."""
    return set(store.db.table("recipients").columns_dict)


def report_query(
    store: Store,
    run_id: str,
    columns: Sequence[str],
    *,
    metadata: bool,
    states: Sequence[str] | None,
    optional: Sequence[str] = (),
) -> tuple[str, list[Any]]:
    """The SQL (and parameters) yielding ``columns`` of run ``run_id``'s rows, in row order.

    An ``optional`` column the file does not have (a file from before it existed) comes
    out NULL.
    ``metadata`` adds the row's metadata JSON, whole, as the last column. ``states``
    keeps only rows in those states.
    """
    missing = set(optional) - recipient_columns(store) if optional else set()
    exprs = ["NULL" if c in missing else c for c in columns]
    if metadata:
        exprs.append("metadata")
    sql = f"SELECT {', '.join(exprs)} FROM recipients WHERE run_id = ?"
    params: list[Any] = [run_id]
    if states is not None:
        sql += f" AND state IN ({','.join('?' * len(states))})"
        params.extend(states)
    sql += " ORDER BY row"
    return sql, params


def connect_read_only(db_path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the file, usable from another thread (close it after)."""
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def row_chunks(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any], chunk_rows: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The query's rows, ``chunk_rows`` at a time; always at least one list (maybe empty)."""
    cursor = conn.execute(sql, params)
    yielded = False
    while True:
        rows = cursor.fetchmany(chunk_rows)
        if not rows and yielded:
            return
        yielded = True
        yield rows
        if not rows:
            return


def failure_reasons(store: Store, run_id: str, limit: int) -> list[tuple[Any, ...]]:
    """The commonest reasons rows ended failed, skipped or unknown, most frequent first.

    Each is ``(state, reason, error_type, http_status, example message, count)``; the
    reason is the error type, or ``unspecified``, when the row has none.
    """
    return store.conn.execute(
        "SELECT state, COALESCE(reason, error_type, 'unspecified') AS why, error_type,"
        " http_status, MAX(error_message), COUNT(*) AS n FROM recipients"
        " WHERE run_id = ? AND state IN ('failed', 'skipped', 'unknown')"
        " GROUP BY state, why, error_type, http_status ORDER BY n DESC, why LIMIT ?",
        (run_id, limit),
    ).fetchall()


def rows_with_reason(store: Store, run_id: str, state: str, reason: str) -> int:
    """How many of the run's rows are in ``state`` for ``reason``."""
    (n,) = store.conn.execute(
        "SELECT COUNT(*) FROM recipients WHERE run_id = ? AND state = ? AND reason = ?",
        (run_id, state, reason),
    ).fetchone()
    return int(n)


def attempts_span(store: Store, run_id: str) -> tuple[str | None, str | None, int, float]:
    """``(first, last, count, seconds between them)`` of the run's attempts log."""
    first, last, total = store.conn.execute(
        "SELECT MIN(at), MAX(at), COUNT(*) FROM attempts WHERE run_id = ?", (run_id,)
    ).fetchone()
    if not total:
        return None, None, 0, 0.0
    (span,) = store.conn.execute(
        "SELECT (julianday(?) - julianday(?)) * 86400.0", (last, first)
    ).fetchone()
    return first, last, int(total), float(span or 0.0)


def attempt_buckets(
    store: Store, run_id: str, first: str, width: float, buckets: int
) -> dict[int, tuple[Any, ...]]:
    """The attempts log in ``buckets`` slices of ``width`` seconds from ``first``.

    By bucket number (only those with attempts): ``(bucket, attempts, recipients
    accepted, retries, attempts not accepted)``.
    """
    rows = store.conn.execute(
        "SELECT MIN(CAST((julianday(at) - julianday(?)) * 86400.0 / ? AS INTEGER), ? - 1) AS b,"
        " COUNT(*),"
        " SUM(CASE WHEN outcome = 'accepted' THEN recipients ELSE 0 END),"
        " SUM(CASE WHEN attempt > 1 THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN outcome != 'accepted' THEN 1 ELSE 0 END)"
        " FROM attempts WHERE run_id = ? GROUP BY b ORDER BY b",
        (first, width, buckets, run_id),
    ).fetchall()
    return {int(r[0]): r for r in rows}
