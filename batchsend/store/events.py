"""Provider events and the suppression list: their tables and every query on them.

``events`` holds each event once (its ``key``: the provider's event id, or a digest of
a payload that has none), normalised to batchsend's vocabulary with the raw payload
kept. An event is linked to a run's row by ``message_key`` -- batchsend's own id of the
message, which ToSend returns as ``message_id`` and MailerLogic echoes in its metadata
-- when it is read, not when it is stored: ``recipients`` carries no index on that key
(one would slow every run's intake several times over), while ``events`` does, so the
join walks a run's rows in key order and looks each one up in ``events``. An event
matching no row of any run is kept all the same, as unmatched.

``suppressions`` is keyed by the address's comparison key
(:func:`~batchsend.addresses.suppression_key`, built as preflight builds a row's). A
hard bounce, a complaint or an unsubscribe enters it in the same transaction that stores
the event, so an acknowledged event has already taken effect. ``event_cursors`` remembers
where a pull from an Events API stopped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsend.addresses import suppression_key
from batchsend.events.model import Event
from batchsend.store.database import Store

EVENT_COLUMNS = (
    "key",
    "provider",
    "type",
    "bounce_type",
    "reason",
    "recipient",
    "message_key",
    "provider_message_id",
    "provider_email_id",
    "occurred_at",
    "received_at",
    "source",
    "raw",
    "deliveries",
)


@dataclass(frozen=True, slots=True)
class Stored:
    """What one :func:`record_events` call did."""

    new: int
    duplicates: int
    suppressed: int


_INSERT_EVENT = (
    f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)
_AGAIN = "UPDATE events SET deliveries = deliveries + 1 WHERE key = ?"
_SUPPRESS = (
    "INSERT OR IGNORE INTO suppressions "
    "(address, email, reason, source, event_key, first_seen, note) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def record_events(conn: sqlite3.Connection, events: Iterable[Event], received_at: str) -> Stored:
    """Store ``events`` (inside the caller's transaction): each new one once, a repeat
    counted on the first, and the addresses they bar added to the suppression list."""
    new = duplicates = suppressed = 0
    for e in events:
        cur = conn.execute(
            _INSERT_EVENT,
            (
                e.key,
                e.provider,
                e.type,
                e.bounce_type,
                e.reason,
                e.recipient,
                e.message_key,
                e.provider_message_id,
                e.provider_email_id,
                e.occurred_at,
                received_at,
                e.source,
                e.raw,
                1,
            ),
        )
        if cur.rowcount == 0:
            duplicates += 1
            conn.execute(_AGAIN, (e.key,))
            continue
        new += 1
        reason = e.suppression_reason
        if reason and e.recipient:
            cur = conn.execute(
                _SUPPRESS,
                (
                    suppression_key(e.recipient),
                    e.recipient,
                    reason,
                    "event",
                    e.key,
                    e.occurred_at or received_at,
                    e.reason,
                ),
            )
            suppressed += cur.rowcount
    return Stored(new, duplicates, suppressed)


# -- suppressions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    email: str
    reason: str
    source: str
    first_seen: str
    event_key: str | None = None
    note: str | None = None


def suppressions(store: Store) -> Iterator[Suppression]:
    """Every address on the list, in address order."""
    cur = store.conn.execute(
        "SELECT address, email, reason, source, first_seen, event_key, note "
        "FROM suppressions ORDER BY address"
    )
    for row in cur:
        yield Suppression(*row)


def suppression_details(conn: sqlite3.Connection) -> dict[str, str]:
    """What every preflight consults: comparison key -> why (``hard bounce on 2026-12-03``)."""
    try:
        cur = conn.execute("SELECT address, reason, first_seen FROM suppressions")
    except sqlite3.OperationalError:  # a file from before the list existed (read-only)
        return {}
    return {
        address: f"{reason} on {first_seen[:10]}" if first_seen else str(reason)
        for address, reason, first_seen in cur
    }


def read_suppression_details(db_path: str | Path) -> dict[str, str]:
    """:func:`suppression_details` of a database file, read-only; empty when there is none
    (``batchsend check`` must not create a database to find that out)."""
    path = Path(db_path)
    if not path.exists():
        return {}
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return suppression_details(conn)
    except sqlite3.DatabaseError:  # not a database: run and resume say so with the fix
        return {}
    finally:
        conn.close()


def suppressed_addresses(store: Store) -> list[str]:
    """Every comparison key on the list."""
    return [a for (a,) in store.conn.execute("SELECT address FROM suppressions")]


def add_suppressions(store: Store, entries: Iterable[Suppression]) -> int:
    """Add entries not on the list yet (an address keeps its first reason); how many."""
    added = 0
    with store.transaction() as conn:
        for s in entries:
            cur = conn.execute(
                _SUPPRESS,
                (s.address, s.email, s.reason, s.source, s.event_key, s.first_seen, s.note),
            )
            added += cur.rowcount
    return added


def remove_suppressions(store: Store, addresses: Sequence[str]) -> int:
    """Take addresses (comparison keys) off the list; how many were on it."""
    removed = 0
    with store.transaction() as conn:
        for address in addresses:
            removed += conn.execute(
                "DELETE FROM suppressions WHERE address = ?", (address,)
            ).rowcount
    return removed


# -- reading events ----------------------------------------------------------------------


def event_counts(store: Store) -> dict[str, int]:
    """Events stored, by type (and ``unmatched`` is not computed here: see below)."""
    return dict(store.conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())


def list_events(
    store: Store, *, types: Sequence[str] = (), limit: int | None = None
) -> list[dict[str, Any]]:
    """Stored events, oldest received first, once each, with the run and row it belongs
    to: the row of its message whose address is the event's, else the message's first row
    (a cc or bcc recipient's event); ``run_id`` and ``row`` are None for an event no run
    knows (what :func:`unmatched_count` counts)."""
    sql = (
        "SELECT e.*, COALESCE(MIN(mine.run_id), MIN(any.run_id)) AS run_id,"
        " COALESCE(MIN(mine.row), MIN(any.row)) AS row FROM events e"
        " LEFT JOIN recipients mine ON mine.message_key = e.message_key"
        " AND lower(mine.email) = lower(e.recipient)"
        " LEFT JOIN recipients any ON any.message_key = e.message_key"
    )
    params: list[Any] = []
    if types:
        sql += f" WHERE e.type IN ({','.join('?' * len(types))})"
        params.extend(types)
    sql += " GROUP BY e.key ORDER BY e.rowid"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    cur = store.conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


#: The report columns :func:`run_outcomes` yields after the row number.
OUTCOME_COLUMNS = (
    "delivery",
    "bounce_type",
    "bounce_reason",
    "complained_at",
    "first_open_at",
    "first_click_at",
    "unsubscribed_at",
)


def run_has_events(conn: sqlite3.Connection, run_id: str) -> bool:
    """Whether any stored event belongs to a row of the run."""
    try:
        if conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
            return False
    except sqlite3.OperationalError:  # a file from before events existed
        return False
    found = conn.execute(
        "SELECT 1 FROM recipients r WHERE r.run_id = ? AND EXISTS "
        "(SELECT 1 FROM events e WHERE e.message_key = r.message_key) LIMIT 1",
        (run_id,),
    ).fetchone()
    return found is not None


def run_outcomes(
    conn: sqlite3.Connection, run_id: str, first_row: int, last_row: int
) -> list[tuple[Any, ...]]:
    """Per row of the run between ``first_row`` and ``last_row`` that has events:
    ``(row, *OUTCOME_COLUMNS)``, in row order.

    ``delivery`` is the furthest the provider reported: ``bounced`` over ``delivered``
    over nothing. A row is matched by its message key and its own address (a message
    with several recipients has one event per recipient).
    """
    cur = conn.execute(
        """
        SELECT r.row,
               CASE WHEN MAX(e.type = 'bounced') THEN 'bounced'
                    WHEN MAX(e.type = 'delivered') THEN 'delivered' END,
               CASE WHEN MAX(e.type = 'bounced' AND e.bounce_type = 'hard') THEN 'hard'
                    WHEN MAX(e.type = 'bounced') THEN 'soft' END,
               COALESCE(
                   MAX(CASE WHEN e.type = 'bounced' AND e.bounce_type = 'hard' THEN e.reason END),
                   MAX(CASE WHEN e.type = 'bounced' THEN e.reason END)
               ),
               MIN(CASE WHEN e.type = 'complained' THEN COALESCE(e.occurred_at, e.received_at) END),
               MIN(CASE WHEN e.type = 'opened' THEN COALESCE(e.occurred_at, e.received_at) END),
               MIN(CASE WHEN e.type = 'clicked' THEN COALESCE(e.occurred_at, e.received_at) END),
               MIN(CASE WHEN e.type = 'unsubscribed'
                        THEN COALESCE(e.occurred_at, e.received_at) END)
        FROM recipients r
        JOIN events e ON e.message_key = r.message_key
             AND (e.recipient IS NULL OR lower(e.recipient) = lower(r.email))
        WHERE r.run_id = ? AND r.row BETWEEN ? AND ? AND r.message_key IS NOT NULL
        GROUP BY r.row
        ORDER BY r.row
        """,
        (run_id, first_row, last_row),
    )
    return cur.fetchall()


def run_engagement(conn: sqlite3.Connection, run_id: str, top: int = 5) -> tuple[Any, ...]:
    """The run's funnel from its events: ``(rows with events, delivered, hard bounces,
    soft bounces, complained, opened, clicked, unsubscribed, [(bounce reason, rows)...])``.
    Each counts rows (a recipient opening three times is one open)."""
    per_row = """
        SELECT r.row AS row,
               MAX(e.type = 'delivered') AS delivered,
               MAX(e.type = 'bounced' AND e.bounce_type = 'hard') AS hard,
               MAX(e.type = 'bounced') AND NOT MAX(e.type = 'bounced' AND e.bounce_type = 'hard')
                   AS soft,
               MAX(e.type = 'complained') AS complained,
               MAX(e.type = 'opened') AS opened,
               MAX(e.type = 'clicked') AS clicked,
               MAX(e.type = 'unsubscribed') AS unsubscribed
        FROM recipients r
        JOIN events e ON e.message_key = r.message_key
             AND (e.recipient IS NULL OR lower(e.recipient) = lower(r.email))
        WHERE r.run_id = ? AND r.message_key IS NOT NULL
        GROUP BY r.row
    """
    totals = conn.execute(
        "SELECT COUNT(*), TOTAL(delivered), TOTAL(hard), TOTAL(soft), TOTAL(complained),"
        f" TOTAL(opened), TOTAL(clicked), TOTAL(unsubscribed) FROM ({per_row})",
        (run_id,),
    ).fetchone()
    reasons = conn.execute(
        "SELECT COALESCE(e.reason, 'unspecified') AS why, COUNT(DISTINCT r.row) AS n "
        "FROM recipients r JOIN events e ON e.message_key = r.message_key "
        "AND (e.recipient IS NULL OR lower(e.recipient) = lower(r.email)) "
        "WHERE r.run_id = ? AND e.type = 'bounced' GROUP BY why ORDER BY n DESC, why LIMIT ?",
        (run_id, top),
    ).fetchall()
    return (*(int(v or 0) for v in totals), [(str(w), int(n)) for w, n in reasons])


def unmatched_count(store: Store) -> int:
    """Events whose message no run in this file knows."""
    return int(
        store.conn.execute(
            "SELECT COUNT(*) FROM events e WHERE e.message_key IS NULL OR NOT EXISTS "
            "(SELECT 1 FROM recipients r WHERE r.message_key = e.message_key)"
        ).fetchone()[0]
    )


# -- pull cursors ---------------------------------------------------------------------


def cursor(store: Store, source: str) -> str | None:
    row = store.conn.execute(
        "SELECT position FROM event_cursors WHERE source = ?", (source,)
    ).fetchone()
    return None if row is None else str(row[0])


def save_cursor(conn: sqlite3.Connection, source: str, position: str, now: str) -> None:
    conn.execute(
        "INSERT INTO event_cursors (source, position, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(source) DO UPDATE SET position = excluded.position, "
        "updated_at = excluded.updated_at",
        (source, position, now),
    )
