"""Recorded runs for the report and history tests, through the store's own API (no SQL).

:func:`build_run` records a run the way the engine would: rows added pending or
skipped, each sent row marked ``sending`` before its attempts are logged and its
outcome recorded, in-flight rows left ``sending`` and turned ``unknown`` as a resume
would, and the run ended in the state asked for. The store's clock is a fake one that
moves 100 ms per reading, so attempts spread over time without any real waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from batchsend.message import Address, Message, message_key
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.states import RecipientState, RunState
from batchsend.store import NewRecipient, RunRecorder, Store

from .processes import dead_pid


@dataclass(frozen=True)
class Person:
    """One input row and what should become of it.

    ``plan``: ``sent``, ``retried`` (429 twice, then sent), ``failed`` (a permanent
    422), ``exhausted`` (500 until retries run out), ``skipped`` (``reason`` given),
    ``unknown`` (in flight when the process died), ``pending`` (never reached).
    """

    email: str
    name: str | None = None
    plan: str = "sent"
    metadata: dict[str, str] = field(default_factory=dict)
    reason: str = "invalid"
    error: str = "the provider refused it"


def _unit(run_id: str, row: int, person: Person) -> SendUnit:
    message = Message(
        row=row,
        sender=Address("news@example.com", "News"),
        to=(Address(person.email, person.name),),
        subject="Hello",
        text="Hello there",
        metadata=person.metadata,
    )
    key = message_key(run_id, message)
    return SendUnit(key=key, messages=(PlannedMessage(key, (row,), message),), batch=False)


def build_run(
    store: Store,
    people: Sequence[Person],
    *,
    final: RunState = RunState.FINISHED,
    campaign_path: str = "campaign.toml",
    campaign_name: str = "Autumn newsletter",
    metadata_columns: Sequence[str] = ("customer_id",),
    settings: dict | None = None,
    fatal_error: str | None = None,
    input_path: str | None = None,
    input_fingerprint: str | None = None,
    tag: str | None = "autumn",
) -> str:
    """Record one run of ``people`` in ``store`` and return its id."""
    run_id = store.create_run(
        campaign_path=campaign_path,
        campaign_name=campaign_name,
        provider="v1",
        base_url="http://127.0.0.1:1",
        input_path=input_path,
        input_fingerprint=input_fingerprint,
        settings=settings or {},
        metadata_columns=metadata_columns,
    )
    store.add_recipients(
        run_id,
        [
            NewRecipient(
                row=i,
                email=p.email,
                name=p.name,
                state=RecipientState.SKIPPED if p.plan == "skipped" else RecipientState.PENDING,
                reason=p.reason if p.plan == "skipped" else None,
                error_message=p.error if p.plan == "skipped" else None,
                tag=tag,
                metadata=p.metadata,
            )
            for i, p in enumerate(people, start=1)
        ],
    )
    recorder = RunRecorder(store, run_id)
    for row, person in enumerate(people, start=1):
        if person.plan in ("skipped", "pending"):
            continue
        unit = _unit(run_id, row, person)
        key = unit.messages[0].key
        recorder.mark_sending(unit)
        if person.plan == "unknown":
            continue
        answers: list[MessageOutcome] = []
        if person.plan == "retried":
            answers += [MessageOutcome(key, OutcomeKind.RETRYABLE, 429, "rate_limit_exceeded")] * 2
        if person.plan == "exhausted":
            answers += [MessageOutcome(key, OutcomeKind.RETRYABLE, 500, "internal_error")] * 3
        elif person.plan == "failed":
            answers.append(
                MessageOutcome(key, OutcomeKind.PERMANENT, 422, "validation_error", person.error)
            )
        else:
            answers.append(
                MessageOutcome(
                    key,
                    OutcomeKind.ACCEPTED,
                    200,
                    provider_message_id=f"<{row}@example.com>",
                    provider_email_id=f"e-{row:06d}",
                )
            )
        for attempt, answer in enumerate(answers, start=1):
            recorder.record_attempt(unit, attempt, [answer], elapsed_ms=12.5)
        recorder.record_final(unit, [answers[-1]], attempts=len(answers))
    recorder.flush()
    if any(p.plan == "unknown" for p in people) and final is not RunState.RUNNING:
        store.sending_to_unknown(run_id)
    if final is RunState.RUNNING:
        # A crashed process: the row stays "running" with a pid that no longer exists.
        store.conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead_pid(), run_id))
    else:
        store.set_run_state(
            run_id, final, fatal_error=fatal_error, ended=final is not RunState.INTERRUPTED
        )
    return run_id


TRICKY = [
    Person("ann@example.com", 'Ann, the "first"', "sent", {"customer_id": 'C-1, "x"'}),
    Person("bob@example.com", "Bob\nNewline", "retried", {"customer_id": "=SUM(A1:A2)"}),
    Person(
        "chloé@exämple.com",
        "Chloé 東京 🎉",
        "failed",
        {"customer_id": "+33 1 23"},
        error='Domain "exämple.com", not verified;\r\nsee docs',
    ),
    Person(
        "not-an-address",
        "@mallory",
        "skipped",
        {"customer_id": "@cmd"},
        reason="invalid",
        error="no @ in the address",
    ),
    Person("dave@example.com", "\tTabby", "exhausted", {"customer_id": "-12"}),
    Person("eve@example.com", None, "unknown", {}),
    Person(
        "ann@example.com",
        "Ann again",
        "skipped",
        {"customer_id": "C-1"},
        reason="duplicate",
        error="same address as row 1",
    ),
    Person("-frank@example.com", "Frank", "sent", {"customer_id": "'quoted"}),
]
