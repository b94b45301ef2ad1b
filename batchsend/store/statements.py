"""The hot path's SQL: the statements that insert a run's rows and write their states.

Plain SQL on purpose: these run millions of times a campaign, grouped into multi-row
``INSERT`` and ``UPDATE ... FROM (VALUES ...)`` statements."""

from __future__ import annotations

import functools

from batchsend.store.records import SENDABLE_STATES

# Rows per UPDATE ... FROM (VALUES ...) statement: one statement for a whole group of
# rows costs less than executemany's row-by-row statements (the table is walked in
# row order once); 300 rows x 12 values stays far below SQLite's 32,766 bound
# parameters.
VALUES_CHUNK = 300
# Below this many rows the statement's fixed cost (a materialised VALUES table, a
# two-pass update) outweighs the gain: a few single sends use executemany.
VALUES_MIN = 16
SENDABLE_IN = ",".join(f"'{s.value}'" for s in SENDABLE_STATES)
# One request's rows when they are consecutive (a batch of a file's rows): one range,
# for rows whose message key went in with them in preflight (a batch's messages each
# have their own, which a range cannot bind). ``message_key IS NOT NULL``: a row without
# one is left for MARK_SENDING_SQL, which writes it, so that a row left in flight by a
# kill always has the key the provider can be asked about.
MARK_RANGE_SQL = (
    "UPDATE recipients SET state = 'sending', unit_key = ?, updated_at = ?, reason = NULL,"
    " retryable = NULL WHERE run_id = ? AND row BETWEEN ? AND ?"
    f" AND state IN ({SENDABLE_IN}) AND message_key IS NOT NULL"
)
MARK_SENDING_SQL = (
    "UPDATE recipients SET state = 'sending', unit_key = ?, message_key = ?, updated_at = ?,"
    f" reason = NULL, retryable = NULL WHERE run_id = ? AND row = ? AND state IN ({SENDABLE_IN})"
)
MARK_SPLIT_SQL = (
    "UPDATE recipients SET unit_key = ?, message_key = ?, updated_at = ?"
    " WHERE run_id = ? AND row = ? AND state = 'sending' AND unit_key = ?"
)
OUTCOME_SQL = (
    "UPDATE recipients SET state = ?, reason = ?, attempts = attempts + ?,"
    " http_status = ?, error_type = ?, error_message = ?,"
    " provider_message_id = ?, provider_email_id = ?, sent_at = ?, updated_at = ?,"
    " retryable = ?, message_key = ? WHERE run_id = ? AND row = ? AND state = 'sending'"
)
SENT_SQL = (
    "UPDATE recipients SET state = 'sent', reason = NULL, attempts = attempts + ?1,"
    " http_status = ?2, error_type = NULL, error_message = NULL, provider_message_id = ?3,"
    " provider_email_id = ?4, sent_at = ?5, updated_at = ?5, retryable = NULL,"
    " message_key = ?6 WHERE run_id = ?7 AND row = ?8 AND state = 'sending'"
)
# An accepted request whose rows are consecutive and whose messages were keyed in
# preflight (the key stored with each row, and the provider's id = that key, as ToSend's
# message_hash makes it): one statement for the whole range, with no per-row values to
# bind at all. The rows must still be this request's (``unit_key``), and
# ``message_key IS NOT NULL`` guards the assumption: a row without its key is left
# ``sending`` and written row by row instead (see _write_buffers).
SENT_RANGE_SQL = (
    "UPDATE recipients SET state = 'sent', reason = NULL, attempts = attempts + ?,"
    " http_status = ?, error_type = NULL, error_message = NULL,"
    " provider_message_id = message_key, provider_email_id = NULL, sent_at = ?,"
    " updated_at = ?, retryable = NULL"
    " WHERE run_id = ? AND row BETWEEN ? AND ? AND state = 'sending'"
    " AND unit_key = ? AND message_key IS NOT NULL"
)
INSERT_ATTEMPTS_SQL = (
    "INSERT INTO attempts (run_id, seq, unit_key, attempt, at, elapsed_ms, http_status,"
    " outcome, messages, recipients) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


def placeholders(n: int, width: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return ",".join([one] * n)


@functools.cache
def insert_recipients_sql(n: int) -> str:
    """Insert ``n`` new rows: 11 parameters per row (attempts starts at 0)."""
    one = "(?,?,?,?,?,?,0,?,?,?,?,?)"
    return (
        "INSERT INTO recipients (run_id, row, email, name, state, reason, attempts,"
        " error_message, tag, metadata, message_key, updated_at) VALUES " + ",".join([one] * n)
    )


@functools.cache
def mark_sending_sql(n: int) -> str:
    """Mark ``n`` rows ``sending``: parameters now, (row, unit, message) x n, run_id."""
    return (
        "UPDATE recipients SET state = 'sending', unit_key = v.column2, message_key = v.column3,"
        f" updated_at = ?, reason = NULL, retryable = NULL FROM (VALUES {placeholders(n, 3)}) AS v"
        " WHERE recipients.run_id = ? AND recipients.row = v.column1"
        f" AND recipients.state IN ({SENDABLE_IN})"
    )


@functools.cache
def sent_sql(n: int) -> str:
    """Accepted outcome of ``n`` rows: parameters 7 values per row, then run_id."""
    return (
        "UPDATE recipients SET state = 'sent', reason = NULL,"
        " attempts = recipients.attempts + v.column2, http_status = v.column3,"
        " error_type = NULL, error_message = NULL, provider_message_id = v.column4,"
        " provider_email_id = v.column5, sent_at = v.column6, updated_at = v.column6,"
        f" retryable = NULL, message_key = v.column7 FROM (VALUES {placeholders(n, 7)}) AS v"
        " WHERE recipients.run_id = ? AND recipients.row = v.column1"
        " AND recipients.state = 'sending'"
    )


@functools.cache
def outcome_sql(n: int) -> str:
    """Terminal outcome of ``n`` rows: parameters 13 values per row, then run_id."""
    return (
        "UPDATE recipients SET state = v.column2, reason = v.column3,"
        " attempts = recipients.attempts + v.column4, http_status = v.column5,"
        " error_type = v.column6, error_message = v.column7,"
        " provider_message_id = v.column8, provider_email_id = v.column9,"
        " sent_at = v.column10, updated_at = v.column11, retryable = v.column12,"
        f" message_key = v.column13 FROM (VALUES {placeholders(n, 13)}) AS v"
        " WHERE recipients.run_id = ? AND recipients.row = v.column1"
        " AND recipients.state = 'sending'"
    )


UNIT_SENDING_SQL = (
    "INSERT INTO units (run_id, key, composition, batch, state, attempts, created_at)"
    " VALUES (?,?,?,?,'sending',0,?) ON CONFLICT(run_id, key) DO UPDATE SET state = 'sending'"
)
