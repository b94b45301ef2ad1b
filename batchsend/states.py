"""The persisted states of a recipient and of a run, stored as readable text."""

from __future__ import annotations

from enum import StrEnum


class RecipientState(StrEnum):
    """Where one input row stands. See docs/design.md, "States of a recipient"."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {RecipientState.SENT, RecipientState.FAILED, RecipientState.SKIPPED, RecipientState.UNKNOWN}
)


class RunState(StrEnum):
    """Where a run stands."""

    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FINISHED = "finished"
    FATAL = "fatal"  # stopped on an error that concerns the whole run (key, credits, domain)
