"""MailerLogic (v1) events: its webhook body and its Events API.

v1's event types are ``email.sent``, ``email.delivered``, ``email.opened``,
``email.clicked``, ``email.bounced``, ``email.complained``, ``email.unsubscribed`` and
``email.failed``. The webhook body's shape is not published; batchsend reads the one
docs/providers.md records::

    {"id", "type": "email.bounced", "created_at",
     "data": {"email_id", "message_id", "to", "tag", "metadata", "headers",
              "bounce": {"type": "hard"|"soft", "reason"}, "url"}}

and, since no signature is documented, a receiver authenticates v1 webhooks by a secret
token in the URL path. The Events API (``GET /api/v1/events``, an enterprise feature)
answers ``{events: [{id, email_id, event_type, recipient, timestamp, event_data, ...}],
pagination: {page, limit, total, pages}}``; an event read there and the same event posted
to a webhook share their ``id``, so the store keeps it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from batchsend.events.model import EVENT_TYPES, Event, EventPayloadError, dumps, text

PROVIDER = "v1"


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _kind(name: Any) -> str:
    kind = str(name or "").strip().lower().removeprefix("email.")
    return kind if kind in EVENT_TYPES else "other"


def _batchsend_id(data: Mapping[str, Any]) -> str | None:
    metadata = data.get("metadata")
    if isinstance(metadata, str):  # some senders' metadata arrives as JSON text
        try:
            metadata = orjson.loads(metadata)
        except orjson.JSONDecodeError:
            return None
    return text(metadata.get("batchsend_id")) if isinstance(metadata, dict) else None


def _recipient(value: Any) -> str | None:
    if isinstance(value, list):
        return text(value[0]) if value else None
    return text(value)


def _key(event_id: Any, payload: Any) -> str:
    ident = text(event_id)
    if ident is None:
        raise EventPayloadError("a v1 event has no id")
    return f"{PROVIDER}:{ident}"


def _bounce(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    bounce = data.get("bounce")
    if not isinstance(bounce, dict):
        return None, None
    kind = str(bounce.get("type") or "").strip().lower()
    return ("hard" if kind in ("hard", "permanent") else "soft"), text(bounce.get("reason"))


def _event(
    payload: dict[str, Any],
    data: dict[str, Any],
    *,
    kind: str,
    recipient: Any,
    email_id: Any,
    occurred_at: Any,
    source: str,
) -> Event:
    bounce_type, reason = _bounce(data) if kind == "bounced" else (None, None)
    return Event(
        key=_key(payload.get("id"), payload),
        provider=PROVIDER,
        type=kind,
        recipient=_recipient(recipient),
        message_key=_batchsend_id(data),
        provider_message_id=text(data.get("message_id")),
        provider_email_id=text(email_id),
        bounce_type=bounce_type,
        reason=reason or text(data.get("reason")),
        occurred_at=text(occurred_at),
        raw=dumps(payload),
        source=source,
    )


def parse_webhook_one(payload: Any) -> Event:
    """The :class:`Event` in one decoded v1 webhook body."""
    if not isinstance(payload, dict):
        raise EventPayloadError("a v1 event must be a JSON object")
    data = _object(payload.get("data"))
    return _event(
        payload,
        data,
        kind=_kind(payload.get("type")),
        recipient=data.get("to"),
        email_id=data.get("email_id"),
        occurred_at=payload.get("created_at"),
        source="webhook",
    )


def parse_webhook(body: bytes) -> list[Event]:
    """Every event in a webhook body: one object, or an array of them."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EventPayloadError("the body is not JSON") from None
    items = payload if isinstance(payload, list) else [payload]
    return [parse_webhook_one(item) for item in items]


def parse_api_event(item: Any) -> Event:
    """One event of an Events API page."""
    if not isinstance(item, dict):
        raise EventPayloadError("an Events API event must be a JSON object")
    return _event(
        item,
        _object(item.get("event_data")),
        kind=_kind(item.get("event_type")),
        recipient=item.get("recipient"),
        email_id=item.get("email_id"),
        occurred_at=item.get("timestamp") or item.get("created_at"),
        source="events-api",
    )


def parse_api_page(body: bytes) -> tuple[list[Event], int, int]:
    """(events, page, pages) of one Events API answer."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EventPayloadError("the Events API answer is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise EventPayloadError("the Events API answer has no events list")
    paging = _object(payload.get("pagination"))
    page = int(paging.get("page") or 1)
    pages = int(paging.get("pages") or page)
    return [parse_api_event(item) for item in payload["events"]], page, pages
