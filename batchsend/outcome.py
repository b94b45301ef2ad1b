"""What became of a sent message: the contract between providers, engine and store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from batchsend.plan import SendUnit


class OutcomeKind(StrEnum):
    """What one answer (or its absence) says about one message.

    The first five come from a provider's classification of an answer; ``UNSENT`` is the
    engine's verdict for a message it stopped trying to send (the run stopped).
    """

    ACCEPTED = "accepted"  # the provider took it: the rows are sent
    RETRYABLE = "retryable"  # NOT processed (429, refused, connect timeout): may go again
    UNKNOWN = "unknown"  # MAYBE processed (read timeout, connection lost, 5xx): never again
    PERMANENT = "permanent"  # other 4xx, spam: this message will never be accepted
    FATAL = "fatal"  # stop the whole run (bad key, no credits, sender domain)
    UNSENT = "unsent"  # never delivered, and the run stopped: back to where it was


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """The provider's answer for one planned message (one entry of a batch, or a single send)."""

    key: str  # PlannedMessage.key
    kind: OutcomeKind
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    provider_message_id: str | None = None
    provider_email_id: str | None = None
    retry_after: float | None = None  # seconds, when the provider said so


class Recorder(Protocol):
    """What the engine needs from the store. ``batchsend.store`` implements it.

    The engine calls :meth:`mark_sending` and awaits nothing before it returns: the
    rows must be durably ``sending`` (committed) before the request leaves. Outcomes
    may be buffered and committed in small batches; :meth:`flush` commits them.

    Optional: ``mark_sending_many(units)``, the same for several units in one commit;
    when a recorder has it, the engine uses it to share one commit between the workers
    that are ready at the same moment (group commit).
    """

    def mark_sending(self, unit: SendUnit) -> None: ...

    def record_attempt(
        self, unit: SendUnit, attempt: int, outcomes: Sequence[MessageOutcome], elapsed_ms: float
    ) -> None:
        """Log one HTTP attempt (for the report's rate and retries chart)."""

    def record_final(
        self, unit: SendUnit, outcomes: Sequence[MessageOutcome], attempts: int
    ) -> None:
        """Give each message of ``unit`` its state from its outcome.

        accepted -> sent; permanent -> failed; retryable (retries exhausted) -> failed,
        kept retryable; unknown -> unknown; unsent -> pending, or for a unit rebuilt by a
        resume (``unit.prior``) the state its rows had before.
        """

    def mark_split(self, parent: SendUnit, unit: SendUnit) -> None:
        """Commit ``unit`` (some messages of ``parent``, in flight) as a request of its own.

        Its rows are ``sending`` under ``parent``; when this returns they are ``sending``
        under ``unit``, whose composition is recorded: the request may then leave.
        """

    def flush(self) -> None: ...
