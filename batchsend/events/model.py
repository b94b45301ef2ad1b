"""One provider event in batchsend's vocabulary, whichever provider and payload it came from.

Providers name the same things differently (ToSend's ``bounced``/``complaint`` with
``Permanent``/``Transient`` bounce types in three payload generations; MailerLogic's
``email.bounced`` with ``hard``/``soft``). Everything downstream -- the events table,
the suppression list, reports -- sees only :class:`Event`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from batchsend.errors import EventPayloadError

#: The vocabulary. ``other`` keeps an event type batchsend does not know (stored, not dropped).
__all__ = ["EVENT_TYPES", "Event", "EventPayloadError", "content_key"]

EVENT_TYPES = (
    "queued",
    "sent",
    "delivered",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "unsubscribed",
    "failed",
    "other",
)

#: Event types that put an address on the suppression list, with the reason written there.
SUPPRESSING = {"complained": "complaint", "unsubscribed": "unsubscribe"}
HARD_BOUNCE = "hard bounce"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the provider says happened to one message for one recipient.

    ``key`` identifies the event for de-duplication (providers retry webhooks, and the
    same event may be both posted and pulled): the provider's own event id where it has
    one, else a digest of the payload's content. ``message_key`` is batchsend's id of
    the message (ToSend returns it as ``message_id``; MailerLogic echoes it in
    ``metadata.batchsend_id``): the link to the run's row.
    """

    key: str
    provider: str
    type: str
    recipient: str | None
    message_key: str | None
    provider_message_id: str | None = None
    provider_email_id: str | None = None
    bounce_type: str | None = None  # "hard" | "soft" for a bounce
    reason: str | None = None
    occurred_at: str | None = None
    raw: str = "{}"
    source: str = "webhook"  # "webhook" | "events-api"

    @property
    def suppression_reason(self) -> str | None:
        """Why this event bars its address from later campaigns, or None."""
        if self.type == "bounced" and self.bounce_type == "hard":
            return HARD_BOUNCE
        return SUPPRESSING.get(self.type)


def content_key(provider: str, payload: Any) -> str:
    """A stable id for a payload that carries none: the same content gives the same key."""
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return f"{provider}:sha256:{hashlib.sha256(canonical).hexdigest()[:32]}"


def text(value: Any) -> str | None:
    """A payload field as text: None for absent or empty, str() of numbers."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def dumps(payload: Any) -> str:
    return orjson.dumps(payload).decode()
