"""Packing rendered messages into requests (send units).

The types here are the contract between the planner, the providers, the engine and
the store. A :class:`PlannedMessage` is one email as the provider will receive it,
covering one row or, when merging, several rows with identical content. A
:class:`SendUnit` is one HTTP request: one message on the single-send endpoints, up to
100 on ToSend's batch endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchsend.message import Message


@dataclass(frozen=True, slots=True)
class PlannedMessage:
    """One email as sent: ``message`` already carries every recipient of ``rows``."""

    key: str  # stable id: ToSend message_hash; the idempotency key of a single send
    rows: tuple[int, ...]
    message: Message


@dataclass(frozen=True, slots=True)
class SendUnit:
    """One HTTP request. ``key`` is its Idempotency-Key, stable across retries and resumes."""

    key: str
    messages: tuple[PlannedMessage, ...]
    batch: bool  # True: ToSend's /v2/emails/batch; False: a single-send endpoint

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(r for m in self.messages for r in m.rows)
