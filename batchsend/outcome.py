"""What became of a sent message: the contract between providers, engine and store."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OutcomeKind(StrEnum):
    ACCEPTED = "accepted"  # the provider took it: the rows are sent
    RETRYABLE = "retryable"  # 429, 500-504, timeout, connection error: try again later
    PERMANENT = "permanent"  # other 4xx: this message will never be accepted
    FATAL = "fatal"  # stop the whole run (bad key, no credits, sender domain)


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
