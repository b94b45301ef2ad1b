"""RunRecorder: the engine's write-ahead record of one run's sends."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from batchsend.apikeys import redact
from batchsend.errors import StoreError
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import SendUnit
from batchsend.states import RecipientState
from batchsend.store.statements import (
    INSERT_ATTEMPTS_SQL,
    MARK_RANGE_SQL,
    MARK_SENDING_SQL,
    MARK_SPLIT_SQL,
    OUTCOME_SQL,
    SENT_RANGE_SQL,
    SENT_SQL,
    UNIT_SENDING_SQL,
    VALUES_CHUNK,
    VALUES_MIN,
    mark_sending_sql,
    outcome_sql,
    sent_sql,
)

if TYPE_CHECKING:
    from batchsend.store.database import Store

FLUSH_ROWS = 512
FLUSH_SECONDS = 0.25


def _recorded(unit: SendUnit) -> bool:
    """Whether the unit needs a ``units`` row: not for one message on a single-send endpoint.

    Such a unit (every v1 request) is fully described by its rows' ``unit_key``: its
    composition is those rows, in one message, and its state and attempts are theirs
    (the rows of one message always share them). Not writing the row saves a random
    B-tree insert and an update per request in the commit that precedes it.
    """
    return unit.batch or len(unit.messages) != 1


def _consecutive(messages: Sequence[Any], first: int) -> bool:
    """Whether the messages' rows are exactly ``first, first + 1, ...`` in order."""
    expected = first
    for m in messages:
        for row in m.rows:
            if row != expected:
                return False
            expected += 1
    return True


def _composition(unit: SendUnit) -> str:
    # orjson, as for request bodies: written for every request (compact, same meaning)
    return orjson.dumps([m.rows for m in unit.messages]).decode()


def _settled(outcome: MessageOutcome, attempts: int) -> tuple[RecipientState, str, int | None]:
    """(state, reason, retryable) of a row whose message ended with ``outcome``."""
    kind = outcome.kind
    reason = outcome.error_type or f"http_{outcome.http_status or 'error'}"
    if kind is OutcomeKind.UNKNOWN:
        return RecipientState.UNKNOWN, reason, None
    if kind is OutcomeKind.UNSENT or (kind is OutcomeKind.FATAL and attempts == 1):
        # Nothing of it was delivered and the run stopped: a resume sends it.
        return RecipientState.PENDING, outcome.error_type or "stopped", None
    if kind is OutcomeKind.PERMANENT:
        return RecipientState.FAILED, reason, 0
    # retryable with its retries spent (or a fatal answer after a retry): certainly not
    # accepted, and kept retryable for ``resume --retry-failed``
    return RecipientState.FAILED, reason, 1


def _aggregate(outcomes: Sequence[MessageOutcome]) -> str:
    kinds = {o.kind for o in outcomes}
    if len(kinds) == 1:
        return next(iter(kinds)).value
    return "mixed" if kinds else "retryable"


class RunRecorder:
    """Records one run's sends: implements :class:`batchsend.outcome.Recorder`.

    ``mark_sending`` commits before returning. Outcomes and attempts are buffered and
    committed by :meth:`flush`, which runs on its own when the buffer holds
    :data:`FLUSH_ROWS` rows or is :data:`FLUSH_SECONDS` old, and as part of every
    ``mark_sending`` transaction (one commit then serves both).
    """

    def __init__(
        self, store: Store, run_id: str, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.run_id = run_id
        self._monotonic = monotonic
        self._outcome_rows: list[tuple[Any, ...]] = []
        self._sent_rows: list[tuple[Any, ...]] = []
        # accepted consecutive ranges: (first, last, attempts, status, now, the unit)
        self._sent_ranges: list[tuple[int, int, int, int | None, str, SendUnit]] = []
        self._range_rows = 0
        self._unit_states: list[tuple[Any, ...]] = []
        self._attempt_rows: list[tuple[Any, ...]] = []
        self._attempt_seq: int = store.conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM attempts WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        self._oldest: float | None = None
        # Rows this recorder has settled as sent / failed: a tally for callers (and tests)
        # that want one without a query. The progress display keeps its own counts.
        self.sent = 0
        self.failed = 0

    # -- Recorder protocol ---------------------------------------------------------

    def mark_sending(self, unit: SendUnit) -> None:
        """Commit the unit's rows as ``sending`` (and any buffered outcomes) -- then return.

        Refuses (:class:`StoreError`, nothing changed) if any row is already ``sent``,
        ``sending`` or ``skipped``: batchsend never sends a row twice by its own doing.
        """
        self.mark_sending_many((unit,))

    def mark_sending_many(self, units: Sequence[SendUnit]) -> None:
        """:meth:`mark_sending` for several units in ONE transaction (the engine's group commit).

        All or nothing: if any unit is refused, none is marked and :class:`StoreError`
        names it.
        """
        store = self.store
        conn = store.conn
        now = store.now()
        run_id = self.run_id
        spans: list[tuple[SendUnit, int, int]] = []  # (unit, first, last): consecutive rows
        rows: list[tuple[int, str, str]] = []  # (row, unit, message): any other row
        expected = 0
        for unit in units:
            messages = unit.messages
            # The range form writes no message key, so it marks only the rows whose key
            # went in with them (a run's messages planned in preflight); the others (a
            # resume's, the rows a full spool refused) are marked one by one below with
            # their key, so that a row left in flight keeps it and can be looked up.
            if len(messages) > 1 and all(m.message is None for m in messages):
                first = messages[0].rows[0]
                last = messages[-1].rows[-1]
                n = sum(len(m.rows) for m in messages)
                if last - first + 1 == n and _consecutive(messages, first):
                    spans.append((unit, first, last))
                    expected += n
                    continue
            for m in messages:
                for row in m.rows:
                    rows.append((row, unit.key, m.key))
        expected += len(rows)
        with store.transaction():
            self._write_buffers()
            marked = 0
            for unit, first, last in spans:
                done = conn.execute(MARK_RANGE_SQL, (unit.key, now, run_id, first, last)).rowcount
                marked += done
                if done != last - first + 1:  # rows without their key: marked with it below
                    rows.extend((row, unit.key, m.key) for m in unit.messages for row in m.rows)
            if len(rows) < VALUES_MIN:
                if rows:
                    marked += conn.executemany(
                        MARK_SENDING_SQL, [(u, m, now, run_id, row) for row, u, m in rows]
                    ).rowcount
            else:
                for i in range(0, len(rows), VALUES_CHUNK):
                    chunk = rows[i : i + VALUES_CHUNK]
                    params: list[Any] = [now]
                    for r in chunk:
                        params.extend(r)
                    params.append(run_id)
                    marked += conn.execute(mark_sending_sql(len(chunk)), params).rowcount
            if marked != expected:
                for unit in units:  # which one? (rare: a bug or a second process)
                    n = conn.execute(
                        "SELECT COUNT(*) FROM recipients WHERE run_id = ? AND unit_key = ?"
                        " AND state = ?",
                        (run_id, unit.key, RecipientState.SENDING.value),
                    ).fetchone()[0]
                    if n != len(unit.rows):
                        break
                raise StoreError(
                    f"run {run_id}: refusing to send request {unit.key}: some of rows "
                    f"{list(unit.rows)[:10]} are unknown to the run or already sending, sent "
                    "or skipped"
                )
            recorded = [
                (run_id, unit.key, _composition(unit), int(unit.batch), now)
                for unit in units
                if _recorded(unit)
            ]
            if recorded:
                conn.executemany(UNIT_SENDING_SQL, recorded)

    def mark_split(self, parent: SendUnit, unit: SendUnit) -> None:
        """Commit ``unit``, part of ``parent`` still in flight, as a request of its own.

        The rows move from ``parent``'s key to ``unit``'s and its composition is
        recorded, in one transaction with every buffered outcome (the part of ``parent``
        that was settled): then the request may leave. All or nothing: a row not in
        flight under ``parent`` refuses the whole split (:class:`StoreError`).
        """
        store = self.store
        conn = store.conn
        now = store.now()
        params = [
            (unit.key, m.key, now, self.run_id, row, parent.key)
            for m in unit.messages
            for row in m.rows
        ]
        with store.transaction():
            self._write_buffers()
            moved = conn.executemany(MARK_SPLIT_SQL, params).rowcount
            if moved != len(params):
                raise StoreError(
                    f"run {self.run_id}: refusing to send request {unit.key}: some of rows "
                    f"{list(unit.rows)[:10]} are not in flight under {parent.key}"
                )
            if _recorded(unit):
                conn.execute(
                    UNIT_SENDING_SQL,
                    (self.run_id, unit.key, _composition(unit), int(unit.batch), now),
                )

    def record_attempt(
        self,
        unit: SendUnit,
        attempt: int,
        outcomes: Sequence[MessageOutcome],
        elapsed_ms: float,
    ) -> None:
        """Log one HTTP attempt (buffered)."""
        statuses = [o.http_status for o in outcomes if o.http_status is not None]
        kind = _aggregate(outcomes)
        self._attempt_seq += 1
        self._attempt_rows.append(
            (
                self.run_id,
                self._attempt_seq,
                unit.key,
                attempt,
                self.store.now(),
                float(elapsed_ms),
                max(statuses) if statuses else None,
                kind,
                len(unit.messages),
                len(unit.rows),
            )
        )
        self._touch()

    def record_final(
        self, unit: SendUnit, outcomes: Sequence[MessageOutcome], attempts: int
    ) -> None:
        """Give every row of the unit its terminal state (buffered; see :meth:`flush`).

        accepted -> ``sent``; retryable (retries exhausted) -> ``failed`` with
        ``retryable = 1``; permanent -> ``failed``; unknown (the provider may have taken
        it) -> ``unknown``; unsent -> back to ``pending``: nothing was delivered and the
        run stopped, so a resume sends those rows. (The engine decides which of these a
        message ends as; see :mod:`batchsend.engine`.)
        """
        now = self.store.now()
        if self._record_range(unit, outcomes, attempts, now):
            return
        by_key = {o.key: o for o in outcomes}
        kinds: set[OutcomeKind] = set()
        for message in unit.messages:
            outcome = by_key.get(message.key)
            if outcome is None:  # a provider answered fewer results than messages
                outcome = MessageOutcome(
                    key=message.key,
                    kind=OutcomeKind.UNKNOWN,  # it may have been processed
                    error_type="missing_result",
                    error_message="the provider's answer had no result for this message",
                )
            kinds.add(outcome.kind)
            if outcome.kind is OutcomeKind.ACCEPTED:
                # the common case has its own narrower statement: 7 values a row, not 13
                self.sent += len(message.rows)
                for row in message.rows:
                    self._sent_rows.append(
                        (
                            row,
                            attempts,
                            outcome.http_status,
                            outcome.provider_message_id,
                            outcome.provider_email_id,
                            now,
                            message.key,
                        )
                    )
                continue
            state, reason, retryable = _settled(outcome, attempts)
            sent_at = None
            if state is RecipientState.FAILED:
                self.failed += len(message.rows)
            error_message = redact(outcome.error_message) if outcome.error_message else None
            for row in message.rows:
                self._outcome_rows.append(
                    (
                        row,
                        state.value,
                        reason,
                        attempts,
                        outcome.http_status,
                        outcome.error_type,
                        error_message,
                        outcome.provider_message_id,
                        outcome.provider_email_id,
                        sent_at,
                        now,
                        retryable,
                        message.key,
                    )
                )
        if kinds == {OutcomeKind.ACCEPTED}:
            unit_state = "sent"
        elif kinds == {OutcomeKind.UNSENT} or (kinds == {OutcomeKind.FATAL} and attempts == 1):
            unit_state = "pending"
        elif len(kinds) > 1:
            unit_state = "mixed"
        elif kinds == {OutcomeKind.UNKNOWN}:
            unit_state = "unknown"
        else:
            unit_state = "failed"
        if _recorded(unit):
            self._unit_states.append((unit_state, attempts, self.run_id, unit.key))
        self._touch()

    def flush(self) -> None:
        """Commit every buffered outcome and attempt now."""
        if not (
            self._sent_rows
            or self._sent_ranges
            or self._outcome_rows
            or self._attempt_rows
            or self._unit_states
        ):
            return
        store = self.store
        with store.transaction():
            self._write_buffers()

    # -- internals -----------------------------------------------------------------

    def _record_range(
        self, unit: SendUnit, outcomes: Sequence[MessageOutcome], attempts: int, now: str
    ) -> bool:
        """Buffer an accepted batch as one range, when it qualifies (see SENT_RANGE_SQL).

        It qualifies when every message was planned in preflight (its key stored with its
        row: ``message`` is None), covers one row, the rows are consecutive, and every
        outcome is an acceptance whose provider id is that key, with no second id.
        """
        messages = unit.messages
        n = len(messages)
        if n < 2 or len(outcomes) != n:
            return False
        first = messages[0].rows[0]
        status = outcomes[0].http_status
        accepted = OutcomeKind.ACCEPTED
        row = first
        for pm, o in zip(messages, outcomes, strict=True):
            if (
                pm.message is not None
                or pm.rows != (row,)
                or o.kind is not accepted
                or o.key != pm.key
                or o.provider_message_id != pm.key
                or o.provider_email_id is not None
                or o.http_status != status
            ):
                return False
            row += 1
        self._sent_ranges.append((first, row - 1, attempts, status, now, unit))
        self._range_rows += n
        self.sent += n
        if _recorded(unit):
            self._unit_states.append(("sent", attempts, self.run_id, unit.key))
        self._touch()
        return True

    def _touch(self) -> None:
        now = self._monotonic()
        if self._oldest is None:
            self._oldest = now
        if (
            len(self._sent_rows) + len(self._outcome_rows) + self._range_rows >= FLUSH_ROWS
            or now - self._oldest >= FLUSH_SECONDS
        ):
            self.flush()

    def _update(self, rows: list[tuple[Any, ...]], one: str, many: Callable[[int], str]) -> None:
        """Run an outcome statement over buffered ``(row, values...)`` tuples.

        Only rows still ``sending`` take an outcome: a late answer never overwrites a
        state decided since (defence in depth; the engine answers each unit once).
        """
        conn = self.store.conn
        run_id = self.run_id
        if len(rows) < VALUES_MIN:
            conn.executemany(one, [(*r[1:], run_id, r[0]) for r in rows])
            return
        for i in range(0, len(rows), VALUES_CHUNK):
            chunk = rows[i : i + VALUES_CHUNK]
            params: list[Any] = []
            for r in chunk:
                params.extend(r)
            params.append(run_id)
            conn.execute(many(len(chunk)), params)

    def _write_buffers(self) -> None:
        """Write the buffers inside the caller's open transaction, then empty them."""
        conn = self.store.conn
        for first, last, attempts, status, now, unit in self._sent_ranges:
            done = conn.execute(
                SENT_RANGE_SQL, (attempts, status, now, now, self.run_id, first, last, unit.key)
            ).rowcount
            if done != last - first + 1:  # a row without its key: write those one by one
                for pm in unit.messages:
                    row = pm.rows[0]
                    self._sent_rows.append((row, attempts, status, pm.key, None, now, pm.key))
        if self._sent_rows:
            self._update(self._sent_rows, SENT_SQL, sent_sql)
        if self._outcome_rows:
            self._update(self._outcome_rows, OUTCOME_SQL, outcome_sql)
        if self._unit_states:
            conn.executemany(
                "UPDATE units SET state = ?, attempts = attempts + ? WHERE run_id = ? AND key = ?",
                self._unit_states,
            )
        if self._attempt_rows:
            conn.executemany(
                INSERT_ATTEMPTS_SQL,
                self._attempt_rows,
            )
        self._outcome_rows = []
        self._sent_rows = []
        self._sent_ranges = []
        self._range_rows = 0
        self._unit_states = []
        self._attempt_rows = []
        self._oldest = None
