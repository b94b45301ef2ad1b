"""What a run's rows that did not end ``sent`` need next, as the exact commands to type.

A run that ends with ``failed`` or ``unknown`` rows says so wherever it is shown: its
state reads ``finished with N failed / M unknown`` (:func:`state_label`; the stored
:class:`~batchsend.states.RunState` stays ``finished``), ``batchsend run``/``resume``
exit with :data:`EXIT_ROWS_NOT_SENT`, and :func:`next_steps` gives one step per kind of
row left behind:

* ``unknown`` -- the provider may have accepted them. :func:`settle_unknown_step` is the
  one place that says how to settle them: ``batchsend reconcile``, which asks the
  provider (found: ``sent``; never accepted: back to ``pending`` for a resume), and, as
  the fallback when the provider cannot be asked, ``resume --resend-unknown`` with the
  warning that it may email those people twice;
* ``failed_retryable`` -- certainly not accepted, refused for a reason that may pass
  (429, connection refused...): ``resume --retry-failed``;
* ``failed_permanent`` -- certainly not accepted and never will be as they are: no
  command, the report says why.

Never suggest feeding a report of failed rows back in as a new campaign: those rows
would go out under new keys, and a row whose answer was lost is then emailed twice.

Everything here is pure: counts and ids in, text out.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsend.states import RecipientState, RunState

__all__ = [
    "EXIT_ROWS_NOT_SENT",
    "NextStep",
    "next_steps",
    "reconcile_command",
    "report_command",
    "resume_command",
    "settle_unknown_step",
    "state_label",
]

#: ``batchsend run``/``resume``: the run ended, but some rows are failed or unknown.
EXIT_ROWS_NOT_SENT = 3

UNKNOWN = "unknown"
FAILED_RETRYABLE = "failed_retryable"
FAILED_PERMANENT = "failed_permanent"


def _db(db_path: str | Path | None) -> str:
    return "" if db_path is None else f" --db {shlex.quote(str(db_path))}"


def resume_command(run_id: str, db_path: str | Path | None) -> str:
    """The shell command that resumes ``run_id`` from the database at ``db_path`` (None:
    the one batchsend finds for the run without ``--db``, see :mod:`batchsend.dblocation`)."""
    return f"batchsend resume {shlex.quote(run_id)}{_db(db_path)}"


def reconcile_command(run_id: str, db_path: str | Path | None) -> str:
    """The shell command that asks the provider about the unknown rows of ``run_id``."""
    return f"batchsend reconcile {shlex.quote(run_id)}{_db(db_path)}"


def report_command(run_id: str, db_path: str | Path | None, state: str) -> str:
    """The shell command that writes the rows of ``run_id`` in ``state`` to a CSV file."""
    out = shlex.quote(f"{run_id}-{state}.csv")
    return f"batchsend report {shlex.quote(run_id)}{_db(db_path)} --state {state} --out {out}"


@dataclass(frozen=True, slots=True)
class NextStep:
    """What to do about ``rows`` rows of one ``kind``: ``command`` (None: nothing to
    send), one line of ``advice``, and a ``warning`` the user must accept to run it.
    ``fallback`` is the command for when ``command`` cannot work, with its own
    ``fallback_warning``."""

    kind: str  # "unknown", "failed_retryable" or "failed_permanent"
    rows: int
    command: str | None
    advice: str
    warning: str | None = None
    fallback: str | None = None
    fallback_warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the ``next_steps`` of ``--json`` summaries and listings)."""
        return {
            "kind": self.kind,
            "rows": self.rows,
            "command": self.command,
            "advice": self.advice,
            "warning": self.warning,
            "fallback": self.fallback,
            "fallback_warning": self.fallback_warning,
        }

    def describe(self) -> str:
        """One line: how many rows, the advice, the command and its warning, the fallback."""
        line = f"{self.rows:,} {self.advice}"
        if self.command:
            line += f" {self.command}"
        if self.warning:
            line += f" (WARNING: {self.warning})"
        if self.fallback:
            line += (
                "; if the provider cannot be asked and you accept the risk, send them "
                f"again with: {self.fallback}"
            )
            if self.fallback_warning:
                line += f" (WARNING: {self.fallback_warning})"
        return line


def state_label(state: RunState, counts: Mapping[str, int]) -> str:
    """The run's state as shown to people: ``finished with 3 failed / 2 unknown`` when a
    finished run left rows failed or unknown; otherwise the state's own name."""
    failed = counts.get(RecipientState.FAILED.value, 0)
    unknown = counts.get(RecipientState.UNKNOWN.value, 0)
    if state is RunState.FINISHED and (failed or unknown):
        return f"finished with {failed:,} failed / {unknown:,} unknown"
    return state.value


#: The report's state for a test run's row whose proof copy the provider accepted. The
#: store keeps ``sent`` (a message went), but it went to the test address, never to the
#: row's own: a report, a summary or a listing never shows such a row as ``sent``.
PROOF_SENT = "proof_sent"


def proof_note(test_to: str | None) -> str:
    """What a test run did, in one sentence, for every place that shows one."""
    return (
        f"test run: proof copies went to {test_to or 'the test address'} only; "
        "no one on the recipient list was emailed"
    )


def describe_counts(
    counts: Mapping[str, int], *, is_test: bool = False, test_to: str | None = None
) -> str:
    """``1,200 sent, 3 failed``, or ``no rows``; in a test run the rows sent read
    ``1 proof copy sent to me@example.com``, never ``sent`` (they went there, not to
    their own address)."""
    parts = []
    for state, n in counts.items():
        if not n:
            continue
        if is_test and state == RecipientState.SENT.value:
            copies = "copy" if n == 1 else "copies"
            parts.append(f"{n:,} proof {copies} sent to {test_to or 'the test address'}")
        else:
            parts.append(f"{n:,} {state}")
    return ", ".join(parts) or "no rows"


def settle_unknown_step(run_id: str, db_path: str | Path | None, rows: int) -> NextStep:
    """How to settle ``rows`` unknown rows: the one place that says so.

    First ask the provider (``batchsend reconcile``): what it accepted becomes ``sent``,
    what it never accepted goes back to ``pending`` for a resume. Only when it cannot be
    asked (no admin key, no Events API), the user's explicit acceptance of a possible
    duplicate: ``resume --resend-unknown``.
    """
    return NextStep(
        kind=UNKNOWN,
        rows=rows,
        command=reconcile_command(run_id, db_path),
        advice="unknown: the provider may already have accepted them; ask it which it "
        "did (accepted: sent; never accepted: pending, for a resume to send) with:",
        fallback=f"{resume_command(run_id, db_path)} --resend-unknown",
        fallback_warning="this may email those people twice",
    )


def next_steps(
    run_id: str,
    db_path: str | Path | None,
    counts: Mapping[str, int],
    *,
    failed_retryable: int,
) -> tuple[NextStep, ...]:
    """One step per kind of row a run left failed or unknown (none when there is none).

    ``counts`` are the run's rows by state; ``failed_retryable`` how many of its
    ``failed`` rows failed with a retryable error (the rest are permanent); ``db_path``
    the ``--db`` the commands carry (None: none, the run is found without it).

    Example::

        for step in next_steps(run_id, "batchsend.db", counts, failed_retryable=2):
            print(step.describe())
    """
    steps = []
    unknown = counts.get(RecipientState.UNKNOWN.value, 0)
    failed = counts.get(RecipientState.FAILED.value, 0)
    permanent = failed - failed_retryable
    if unknown:
        steps.append(settle_unknown_step(run_id, db_path, unknown))
    if failed_retryable:
        steps.append(
            NextStep(
                kind=FAILED_RETRYABLE,
                rows=failed_retryable,
                command=f"{resume_command(run_id, db_path)} --retry-failed",
                advice="failed with a retryable error (certainly not accepted); once the "
                "cause is gone, send them again with:",
            )
        )
    if permanent > 0:
        steps.append(
            NextStep(
                kind=FAILED_PERMANENT,
                rows=permanent,
                command=None,
                advice="failed permanently: they will never be accepted as they are, so "
                "there is nothing to send again; see the report for why: "
                f"{report_command(run_id, db_path, RecipientState.FAILED.value)}",
            )
        )
    return tuple(steps)
